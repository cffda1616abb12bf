//! Turns decoded events into requests: one [`ServerRequest`] per served HTTP request, with
//! its labels already in their exported, low-cardinality form except the route, which the
//! metrics stage caps per service.

pub mod http1;

use std::time::Duration;

use obs_common::go_http::{GoHttpServerRequest, FLAG_PATH_TRUNCATED, FLAG_READ_ERROR};

use crate::protocols::http::{collapse_path, normalize_method, route_from_pattern};

/// One HTTP request a watched process served.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerRequest {
    pub pid: u32,
    pub method: &'static str,
    /// The matched route pattern, else the collapsed path.
    pub route: String,
    pub status: u16,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpanError {
    #[error("the probe could not read the request from the target's memory")]
    TargetRead,
    #[error("implausible status code {0}")]
    BadStatus(u32),
}

impl ServerRequest {
    /// A request seen on a socket: the route is the path with its ids collapsed.
    pub fn from_exchange(pid: u32, e: &http1::Exchange) -> Self {
        Self {
            pid,
            method: e.method,
            route: collapse_truncated(&e.path, e.truncated),
            status: e.status,
            duration: Duration::from_nanos(e.end_ns.saturating_sub(e.start_ns)),
        }
    }

    pub fn from_go(e: &GoHttpServerRequest) -> Result<Self, SpanError> {
        if e.flags & FLAG_READ_ERROR != 0 {
            return Err(SpanError::TargetRead);
        }
        if !(100..=999).contains(&e.status) {
            return Err(SpanError::BadStatus(e.status));
        }
        let method = normalize_method(bytes(&e.method, e.method_len));
        let pattern = String::from_utf8_lossy(bytes(&e.route, e.route_len));
        let route = route_from_pattern(&pattern).unwrap_or_else(|| {
            let path = String::from_utf8_lossy(bytes(&e.path, e.path_len));
            collapse_truncated(&path, e.flags & FLAG_PATH_TRUNCATED != 0)
        });
        Ok(Self {
            pid: e.tgid,
            method,
            route,
            status: e.status as u16,
            duration: Duration::from_nanos(e.end_ns.saturating_sub(e.start_ns)),
        })
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

fn bytes(buf: &[u8], len: u8) -> &[u8] {
    &buf[..(len as usize).min(buf.len())]
}

#[cfg(test)]
mod tests {
    use obs_common::go_http::{METHOD_MAX, PATH_MAX, ROUTE_MAX};

    use super::*;

    fn event(method: &str, path: &str, route: &str, status: u32) -> GoHttpServerRequest {
        let mut e = GoHttpServerRequest {
            kind: 1,
            tgid: 7,
            start_ns: 1_000,
            end_ns: 5_000_000,
            status,
            method_len: method.len() as u8,
            path_len: path.len().min(PATH_MAX) as u8,
            route_len: route.len() as u8,
            flags: 0,
            method: [0; METHOD_MAX],
            path: [0; PATH_MAX],
            route: [0; ROUTE_MAX],
        };
        e.method[..method.len()].copy_from_slice(method.as_bytes());
        let n = path.len().min(PATH_MAX);
        e.path[..n].copy_from_slice(&path.as_bytes()[..n]);
        e.route[..route.len()].copy_from_slice(route.as_bytes());
        e
    }

    #[test]
    fn pattern_wins_over_path() {
        let r = ServerRequest::from_go(&event("GET", "/v2/items/9", "GET /v2/items/{id}", 200))
            .unwrap();
        assert_eq!(r.route, "/v2/items/{id}");
        assert_eq!(r.method, "GET");
        assert_eq!(r.duration, Duration::from_nanos(4_999_000));
    }

    #[test]
    fn path_is_collapsed_without_pattern() {
        let r = ServerRequest::from_go(&event("PUT", "/items/77", "", 201)).unwrap();
        assert_eq!(r.route, "/items/{id}");
        assert_eq!(r.status, 201);
    }

    #[test]
    fn truncated_path_ends_in_wildcard() {
        let long = format!("/a/{}", "x".repeat(300));
        let mut e = event("GET", &long, "", 200);
        e.flags |= FLAG_PATH_TRUNCATED;
        assert_eq!(ServerRequest::from_go(&e).unwrap().route, "/a/*");
    }

    #[test]
    fn rejects_bad_events() {
        assert_eq!(
            ServerRequest::from_go(&event("GET", "/", "", 0)),
            Err(SpanError::BadStatus(0))
        );
        let mut e = event("GET", "/", "", 200);
        e.flags = FLAG_READ_ERROR;
        assert_eq!(ServerRequest::from_go(&e), Err(SpanError::TargetRead));
        // Lengths beyond the buffers are clamped, never panic.
        let mut e = event("GET", "/", "", 200);
        e.method_len = 255;
        e.route_len = 255;
        assert!(ServerRequest::from_go(&e).is_ok());
    }
}
