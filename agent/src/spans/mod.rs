//! Turns decoded events into requests: one [`ServerRequest`] per served HTTP request and one
//! [`ClientRequest`] per HTTP call made, with their labels already in their exported,
//! low-cardinality form except the route and the peer, which the metrics stage caps per
//! service.

pub mod goroutines;
pub mod http1;
pub mod trace;
pub mod tracer;

use std::{borrow::Cow, time::Duration};

use crate::protocols::http::collapse_path;

/// One HTTP request a watched process served.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerRequest {
    pub method: &'static str,
    /// The matched route pattern, else the collapsed path.
    pub route: String,
    pub status: u16,
    pub duration: Duration,
}

impl ServerRequest {
    /// A request seen on a socket; `route` is the pattern it matched, if the process's router
    /// is known, else the path with its ids collapsed.
    pub fn from_exchange(e: &http1::Exchange, route: Option<String>) -> Self {
        Self {
            method: e.method,
            route: route.unwrap_or_else(|| collapse_truncated(&e.path, e.truncated)),
            status: e.status,
            duration: Duration::from_nanos(e.end_ns.saturating_sub(e.start_ns)),
        }
    }
}

/// One HTTP call a watched process made (client side).
#[derive(Clone, Debug, PartialEq)]
pub struct ClientRequest {
    pub method: &'static str,
    pub status: u16,
    /// The server's IP address as connected to (no DNS name is seen on the socket), and port;
    /// `None` for a connection whose peer the agent never learned.
    pub server: Option<std::net::SocketAddr>,
    pub duration: Duration,
}

impl ClientRequest {
    pub fn from_exchange(e: &http1::Exchange) -> Self {
        Self {
            method: e.method,
            status: e.status,
            server: e.peer,
            duration: Duration::from_nanos(e.end_ns.saturating_sub(e.start_ns)),
        }
    }
}

/// The route of a request: the pattern it matched (if the process's router is known), else
/// its path with ids collapsed.
pub fn route_of<'a>(e: &http1::Exchange, pattern: Option<&'a str>) -> Cow<'a, str> {
    match pattern {
        Some(p) => Cow::Borrowed(p),
        None => Cow::Owned(collapse_truncated(&e.path, e.truncated)),
    }
}

/// The route of a path; a path whose tail was cut loses its last (partial) segment to `*`.
fn collapse_truncated(path: &str, truncated: bool) -> String {
    let mut route = collapse_path(path);
    if truncated {
        if let Some(i) = route.rfind('/') {
            route.truncate(i + 1);
        }
        route.push('*');
    }
    route
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(path: &str, truncated: bool) -> http1::Exchange {
        http1::Exchange {
            role: http1::Role::Server,
            peer: None,
            local: None,
            span: None,
            method: "GET",
            path: path.to_owned(),
            truncated,
            status: 200,
            start_ns: 1_000,
            end_ns: 5_000_000,
        }
    }

    #[test]
    fn pattern_wins_over_path() {
        let r = ServerRequest::from_exchange(
            &exchange("/v2/items/9", false),
            Some("/v2/items/{name}".into()),
        );
        assert_eq!(r.route, "/v2/items/{name}");
        assert_eq!(r.duration, Duration::from_nanos(4_999_000));
    }

    #[test]
    fn path_is_collapsed_without_pattern() {
        let r = ServerRequest::from_exchange(&exchange("/items/77?x=1", false), None);
        assert_eq!(r.route, "/items/{id}");
    }

    #[test]
    fn truncated_path_ends_in_wildcard() {
        let long = format!("/a/{}", "x".repeat(300));
        let r = ServerRequest::from_exchange(&exchange(&long, true), None);
        assert_eq!(r.route, "/a/*");
    }
}
