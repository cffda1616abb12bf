//! What the exchanges of connections become: spans with their identities and links
//! (`tracer`: `traceparent`, the client end of the same connection in another watched
//! process, the goroutine that asked for a call), and the route a server request is
//! labelled with.

pub mod goroutines;
pub mod service_graph;
pub mod trace;
pub mod tracer;

use std::borrow::Cow;

use crate::protocols::{http::collapse_path, Exchange};

/// The route of a request: the pattern it matched (if the process's router is known), else
/// its path with ids collapsed.
pub fn route_of<'a>(e: &Exchange, pattern: Option<&'a str>) -> Cow<'a, str> {
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

    fn exchange(path: &str, truncated: bool) -> Exchange {
        Exchange {
            id: 0,
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
        let e = exchange("/v2/items/9", false);
        assert_eq!(route_of(&e, Some("/v2/items/{name}")), "/v2/items/{name}");
    }

    #[test]
    fn path_is_collapsed_without_pattern() {
        assert_eq!(
            route_of(&exchange("/items/77?x=1", false), None),
            "/items/{id}"
        );
    }

    #[test]
    fn truncated_path_ends_in_wildcard() {
        let long = format!("/a/{}", "x".repeat(300));
        assert_eq!(route_of(&exchange(&long, true), None), "/a/*");
    }
}
