//! Go 1.22+ `http.ServeMux` patterns (`[METHOD ][HOST]/PATH` with `{name}`, `{name...}`,
//! `{$}` and trailing-slash subtrees), and which registered pattern a request matches, by
//! ServeMux's own precedence: the most specific path wins (literal over `{name}` over a
//! multi-segment wildcard, segment by segment), then a method-specific pattern over one for
//! every method. Host-specific patterns are not matched (the host is not captured yet).

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: one non-empty segment.
    Single,
    /// `{name...}` or a trailing `/`: the rest of the path.
    Multi,
    /// `{$}`: the path ends here, with a slash.
    End,
}

impl Segment {
    /// Higher is more specific.
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) | Segment::End => 3,
            Segment::Single => 2,
            Segment::Multi => 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    method: Option<String>,
    host: Option<String>,
    segments: Vec<Segment>,
    /// The path part as registered: the `http_route` label.
    route: String,
}

impl Pattern {
    /// Parses a pattern as registered with ServeMux. `None` for anything ServeMux would reject.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (method, rest) = match s.split_once([' ', '\t']) {
            Some((m, rest)) if !m.contains('/') => (Some(m.to_owned()), rest.trim_start()),
            _ => (None, s),
        };
        if let Some(m) = &method {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                return None;
            }
        }
        let slash = rest.find('/')?;
        let host = (slash > 0).then(|| rest[..slash].to_owned());
        let path = &rest[slash..];
        let mut segments = Vec::new();
        let parts: Vec<&str> = path[1..].split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let seg = if part.is_empty() {
                if !last {
                    return None; // "//" in a pattern
                }
                Segment::Multi
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name == "$" {
                    if !last {
                        return None;
                    }
                    Segment::End
                } else if name.ends_with("...") {
                    if !last {
                        return None;
                    }
                    Segment::Multi
                } else {
                    Segment::Single
                }
            } else {
                Segment::Literal(percent_decode(part))
            };
            segments.push(seg);
        }
        Some(Self {
            method,
            host,
            segments,
            route: path.to_owned(),
        })
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    fn matches_method(&self, method: &str) -> bool {
        match self.method.as_deref() {
            None => true,
            Some(m) => m == method || (m == "GET" && method == "HEAD"),
        }
    }

    /// Whether the path (without query) matches.
    fn matches_path(&self, path_segments: &[String]) -> bool {
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                // A subtree needs the slash that opens it: "/items/" does not match "/items".
                Segment::Multi => return i < path_segments.len(),
                Segment::End => return i + 1 == path_segments.len() && path_segments[i].is_empty(),
                Segment::Single => match path_segments.get(i) {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(l) => match path_segments.get(i) {
                    Some(p) if p == l => {}
                    _ => return false,
                },
            }
        }
        self.segments.len() == path_segments.len()
    }

    /// Compares specificity with another pattern that also matched the same request.
    fn more_specific_than(&self, other: &Pattern) -> bool {
        let n = self.segments.len().max(other.segments.len());
        for i in 0..n {
            let a = self.segments.get(i).map_or(0, Segment::rank);
            let b = other.segments.get(i).map_or(0, Segment::rank);
            if a != b {
                return a > b;
            }
        }
        self.method.is_some() && other.method.is_none()
    }
}

/// The patterns of a process's muxes.
#[derive(Clone, Debug, Default)]
pub struct PatternSet {
    patterns: Vec<Pattern>,
}

impl PatternSet {
    pub fn new(patterns: impl IntoIterator<Item = Pattern>) -> Self {
        Self {
            patterns: patterns.into_iter().collect(),
        }
    }

    /// The route of the pattern ServeMux would pick for this request, if any.
    pub fn route_for(&self, method: &str, target: &str) -> Option<&str> {
        if self.patterns.is_empty() {
            return None;
        }
        let path = target.split(['?', '#']).next().unwrap_or("");
        let rest = path.strip_prefix('/')?;
        let segments: Vec<String> = rest.split('/').map(percent_decode).collect();
        let mut best: Option<&Pattern> = None;
        for p in &self.patterns {
            if p.host.is_some() || !p.matches_method(method) || !p.matches_path(&segments) {
                continue;
            }
            if best.is_none_or(|b| p.more_specific_than(b)) {
                best = Some(p);
            }
        }
        best.map(Pattern::route)
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(patterns: &[&str]) -> PatternSet {
        PatternSet::new(patterns.iter().map(|p| Pattern::parse(p).unwrap()))
    }

    #[test]
    fn parses_patterns() {
        assert_eq!(
            Pattern::parse("GET /items/{id}").unwrap().route(),
            "/items/{id}"
        );
        assert_eq!(Pattern::parse("/").unwrap().route(), "/");
        assert!(Pattern::parse("example.com/x").unwrap().host.is_some());
        assert_eq!(Pattern::parse("/a/{x...}/b"), None);
        assert_eq!(Pattern::parse("/a//b"), None);
        assert_eq!(Pattern::parse("GE7 /a"), None);
        assert_eq!(Pattern::parse("nothing"), None);
        assert_eq!(Pattern::parse(""), None);
    }

    #[test]
    fn picks_the_most_specific() {
        let s = set(&[
            "/",
            "/items/",
            "GET /items/{id}",
            "/items/special",
            "/v2/items/{name}",
            "/files/{path...}",
            "/exact/{$}",
            "POST /items/{id}",
        ]);
        assert_eq!(s.route_for("GET", "/items/5"), Some("/items/{id}"));
        assert_eq!(s.route_for("POST", "/items/5"), Some("/items/{id}"));
        assert_eq!(s.route_for("PUT", "/items/5"), Some("/items/"));
        assert_eq!(s.route_for("HEAD", "/items/5"), Some("/items/{id}"));
        assert_eq!(s.route_for("GET", "/items/special"), Some("/items/special"));
        assert_eq!(s.route_for("GET", "/items/5/more"), Some("/items/"));
        assert_eq!(s.route_for("GET", "/items/"), Some("/items/"));
        assert_eq!(
            s.route_for("GET", "/v2/items/w-1?x=1"),
            Some("/v2/items/{name}")
        );
        assert_eq!(s.route_for("GET", "/files/a/b/c"), Some("/files/{path...}"));
        assert_eq!(s.route_for("GET", "/exact/"), Some("/exact/{$}"));
        assert_eq!(s.route_for("GET", "/exact/x"), Some("/"));
        assert_eq!(s.route_for("GET", "/anything"), Some("/"));
        assert_eq!(s.route_for("GET", "relative"), None);
    }

    #[test]
    fn subtrees_need_their_slash() {
        let s = set(&["/items/"]);
        assert_eq!(s.route_for("GET", "/items"), None);
        assert_eq!(s.route_for("GET", "/items/"), Some("/items/"));
        let s = set(&["/hello"]);
        assert_eq!(s.route_for("GET", "/hello/"), None);
        assert_eq!(s.route_for("GET", "/hello"), Some("/hello"));
    }

    #[test]
    fn escaped_segments_match_literals() {
        let s = set(&["/a b/{x}"]);
        assert_eq!(s.route_for("GET", "/a%20b/1"), Some("/a b/{x}"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%é%%"), "%é%%");
    }
}
