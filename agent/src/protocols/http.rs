//! HTTP semantics shared by every source of requests: OpenTelemetry's method normalization
//! and low-cardinality routes.

/// The method as OpenTelemetry records it: a known method, else `_OTHER`.
pub fn normalize_method(method: &[u8]) -> &'static str {
    match method {
        b"GET" => "GET",
        b"POST" => "POST",
        b"PUT" => "PUT",
        b"DELETE" => "DELETE",
        b"HEAD" => "HEAD",
        b"PATCH" => "PATCH",
        b"OPTIONS" => "OPTIONS",
        b"CONNECT" => "CONNECT",
        b"TRACE" => "TRACE",
        _ => "_OTHER",
    }
}

/// The route from a Go ServeMux pattern (`[METHOD ][HOST]/PATH`): the path template, as
/// OpenTelemetry's `http.route` wants it (the method is a label of its own).
pub fn route_from_pattern(pattern: &str) -> Option<String> {
    let pattern = pattern.trim();
    let path_part = match pattern.split_once([' ', '\t']) {
        Some((_method, rest)) => rest.trim_start(),
        None => pattern,
    };
    let slash = path_part.find('/')?;
    Some(path_part[slash..].to_owned())
}

/// A path with its identifier-like segments replaced by `{id}`, so that `/items/42` and
/// `/items/43` share one route. Query strings are dropped.
pub fn collapse_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').skip(1) {
        out.push('/');
        if is_identifier(segment) {
            out.push_str("{id}");
        } else {
            out.push_str(segment);
        }
    }
    out
}

/// Numbers, UUIDs, long hex strings and long mixed letter-digit tokens.
fn is_identifier(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let bytes = segment.as_bytes();
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if digits == bytes.len() {
        return true;
    }
    if is_uuid(bytes) {
        return true;
    }
    let hex = bytes.iter().all(u8::is_ascii_hexdigit);
    if hex && bytes.len() >= 8 && digits > 0 {
        return true;
    }
    // Tokens: long, mostly alphanumeric with digits mixed in (base64/ULID-like ids).
    let alnum = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'.'));
    alnum && bytes.len() >= 16 && digits >= 2
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods() {
        assert_eq!(normalize_method(b"GET"), "GET");
        assert_eq!(normalize_method(b"get"), "_OTHER");
        assert_eq!(normalize_method(b"\xff\x00"), "_OTHER");
        assert_eq!(normalize_method(b""), "_OTHER");
    }

    #[test]
    fn patterns() {
        assert_eq!(
            route_from_pattern("GET /items/{id}").as_deref(),
            Some("/items/{id}")
        );
        assert_eq!(route_from_pattern("/hello").as_deref(), Some("/hello"));
        assert_eq!(
            route_from_pattern("POST example.com/a/{x...}").as_deref(),
            Some("/a/{x...}")
        );
        assert_eq!(route_from_pattern("/").as_deref(), Some("/"));
        assert_eq!(route_from_pattern(""), None);
        assert_eq!(route_from_pattern("garbage"), None);
    }

    #[test]
    fn collapsing() {
        assert_eq!(collapse_path("/items/42"), "/items/{id}");
        assert_eq!(
            collapse_path("/items/42/parts/7?x=1"),
            "/items/{id}/parts/{id}"
        );
        assert_eq!(
            collapse_path("/u/123e4567-e89b-12d3-a456-426614174000"),
            "/u/{id}"
        );
        assert_eq!(collapse_path("/blob/deadbeef01"), "/blob/{id}");
        assert_eq!(collapse_path("/t/AbC9dEf0GhIjK1mN"), "/t/{id}");
        assert_eq!(collapse_path("/hello"), "/hello");
        assert_eq!(collapse_path("/"), "/");
        assert_eq!(collapse_path("/api/v2/users"), "/api/v2/users");
        assert_eq!(collapse_path("/cafe"), "/cafe");
        assert_eq!(collapse_path("relative"), "/");
        assert_eq!(collapse_path(""), "/");
    }
}
