//! HTTP/1.x on the wire: request lines and heads (with `httparse`), how a request's body is
//! framed, status lines. What the HTTP/1 decoder reads the captured bytes with.

use crate::protocols::{http::normalize_method, trace_context::TraceParent};

/// The start of an HTTP/1.x request: method and path (query dropped later, by the route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestStart {
    pub method: &'static str,
    pub path: String,
    /// The request line was longer than what was captured: `path` is its beginning.
    pub truncated: bool,
    /// A valid W3C `traceparent` header among the headers captured with the request line.
    pub traceparent: Option<TraceParent>,
}

/// The `traceparent` header among the complete header lines of a captured request head.
fn find_traceparent(head: &[u8]) -> Option<TraceParent> {
    head.split(|&b| b == b'\n')
        .skip(1)
        // The last piece may be cut by the capture: only whole lines count.
        .take_while(|line| !line.is_empty() && *line != b"\r")
        .filter(|line| line.ends_with(b"\r"))
        .find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            name.eq_ignore_ascii_case(b"traceparent")
                .then(|| TraceParent::parse(&value[1..]))?
        })
}

/// What the start of some bytes a server read is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestParse {
    Start(RequestStart),
    /// Could be the beginning of a request line, cut short by the read (Go's server reads the
    /// first byte of the next request on its own): join it with what is read next.
    Incomplete,
    /// Not the start of an HTTP/1.x request (a body, TLS, a binary protocol, garbage).
    NotRequest,
}

/// Longest request-line head kept while waiting for the rest of it.
pub const MAX_INCOMPLETE: usize = 64;

/// Classifies the bytes at the start of a read.
pub fn classify_request(data: &[u8]) -> RequestParse {
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    // TooManyHeaders only means the request line parsed and headers follow.
    let partial = match req.parse(data) {
        Ok(httparse::Status::Partial) => true,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => false,
        Err(_) => return RequestParse::NotRequest,
    };
    if let (Some(method), Some(path)) = (req.method, req.path) {
        return RequestParse::Start(RequestStart {
            method: normalize_method(method.as_bytes()),
            path: path.to_owned(),
            truncated: false,
            traceparent: find_traceparent(data),
        });
    }
    if let Some(start) = truncated_request_line(data) {
        return RequestParse::Start(start);
    }
    if partial && !data.is_empty() && data.len() <= MAX_INCOMPLETE {
        RequestParse::Incomplete
    } else {
        RequestParse::NotRequest
    }
}

/// The request line at the start of `data`, if it is one, complete.
pub fn parse_request_start(data: &[u8]) -> Option<RequestStart> {
    match classify_request(data) {
        RequestParse::Start(r) => Some(r),
        _ => None,
    }
}

/// A request line cut by the capture limit: `METHOD /path-start` with no end in sight. Only a
/// known method followed by an origin-form path counts, so other protocols are not taken for
/// HTTP.
fn truncated_request_line(data: &[u8]) -> Option<RequestStart> {
    if data.len() < 64 {
        return None;
    }
    request_line_head(data)
}

/// The start of a request written by a client when the capture kept only its first bytes
/// (the request line may be cut anywhere after the method): a complete request line, or a
/// known method, a space and the beginning of an origin-form path.
pub fn request_start_prefix(data: &[u8]) -> Option<RequestStart> {
    match classify_request(data) {
        RequestParse::Start(r) => Some(r),
        _ => request_line_head(data),
    }
}

fn request_line_head(data: &[u8]) -> Option<RequestStart> {
    if data.contains(&b'\n') {
        return None;
    }
    let space = data.iter().position(|&b| b == b' ')?;
    let method = normalize_method(&data[..space]);
    let path = &data[space + 1..];
    if method == "_OTHER" || !path.starts_with(b"/") || !path.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some(RequestStart {
        method,
        path: String::from_utf8_lossy(path).into_owned(),
        truncated: true,
        traceparent: None,
    })
}

/// How a request's body is delimited, from its headers (RFC 9112, section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// Neither `Content-Length` nor `Transfer-Encoding`: no body.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Framing the agent cannot follow (conflicting or malformed lengths, other codings).
    Unknown,
}

/// A request whose whole head (request line and headers) is in the bytes parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub start: RequestStart,
    /// Bytes of the head, through the blank line.
    pub head_len: usize,
    pub body: BodyFraming,
    /// `Expect: 100-continue`: the client waits for an interim response before the body.
    pub expect_continue: bool,
}

/// Headers looked at per request head; a head with more is taken as cut (framing unknown).
const MAX_HEADERS: usize = 64;

/// The request head at the start of `data`, if it is complete there (the blank line that ends
/// the headers was captured).
pub fn parse_request_head(data: &[u8]) -> Option<RequestHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let mut length: Option<u64> = None;
    let mut body = BodyFraming::None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut expect_continue = false;
    let mut traceparent = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (parsed, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => body = BodyFraming::Unknown,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides: chunked must be last for a request.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            other_coding |= !chunked;
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if traceparent.is_none() && h.name.eq_ignore_ascii_case("traceparent") {
            traceparent = TraceParent::parse(h.value);
        }
    }
    if body != BodyFraming::Unknown {
        body = match (chunked && !other_coding, other_coding, length) {
            (true, _, _) => BodyFraming::Chunked,
            (_, true, _) => BodyFraming::Unknown,
            (_, _, Some(0)) | (_, _, None) => BodyFraming::None,
            (_, _, Some(n)) => BodyFraming::Length(n),
        };
    }
    Some(RequestHead {
        start: RequestStart {
            method: normalize_method(req.method?.as_bytes()),
            path: req.path?.to_owned(),
            truncated: false,
            traceparent,
        },
        head_len,
        body,
        expect_continue,
    })
}

/// The status code of an HTTP/1.x response starting at `data`, if it is one.
pub fn parse_status(data: &[u8]) -> Option<u16> {
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(data) {
        Ok(_) | Err(httparse::Error::TooManyHeaders) => resp.code,
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_in_request_heads() {
        let head = b"GET /a HTTP/1.1\r\nHost: x\r\nTraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\nAccept: */*\r\n\r\n";
        let r = parse_request_start(head).unwrap();
        assert_eq!(r.traceparent.map(|t| t.sampled), Some(false));
        // Cut by the capture in the middle of the header: not taken.
        let cut = &head[..60];
        assert_eq!(parse_request_start(cut).unwrap().traceparent, None);
        // In the body, not the headers: not taken.
        let body = b"POST /a HTTP/1.1\r\nHost: x\r\n\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
        assert_eq!(parse_request_start(body).unwrap().traceparent, None);
    }

    #[test]
    fn request_starts_cut_by_the_capture() {
        let r = request_start_prefix(b"PUT /items/12345/parts/abc").unwrap();
        assert_eq!(
            (r.method, r.path.as_str(), r.truncated),
            ("PUT", "/items/12345/parts/abc", true)
        );
        let r = request_start_prefix(b"GET /a HTTP/1.1\r\nHost: x").unwrap();
        assert_eq!((r.path.as_str(), r.truncated), ("/a", false));
        assert_eq!(request_start_prefix(b"FOO /x"), None);
        assert_eq!(request_start_prefix(b"GET x"), None);
        assert_eq!(request_start_prefix(b"GET /a\x00b"), None);
        assert_eq!(request_start_prefix(b""), None);
    }

    #[test]
    fn request_lines() {
        let r = parse_request_start(b"GET /items/1?x=2 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!((r.method, r.path.as_str()), ("GET", "/items/1?x=2"));
        // A prefix cut inside the headers still gives the request line.
        let r = parse_request_start(b"PUT /a HTTP/1.1\r\nContent-Le").unwrap();
        assert_eq!(r.method, "PUT");
        // Cut inside the request line: not (yet) a request.
        assert_eq!(parse_request_start(b"GET /very/lo"), None);
        assert_eq!(parse_request_start(b"\x16\x03\x01\x02\x00"), None);
        assert_eq!(parse_request_start(b""), None);
        assert_eq!(parse_request_start(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(classify_request(b"G"), RequestParse::Incomplete);
        assert_eq!(classify_request(b"GET /a"), RequestParse::Incomplete);
        assert_eq!(classify_request(b"{\"a\":1}"), RequestParse::NotRequest);
        assert_eq!(classify_request(b""), RequestParse::NotRequest);
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
            Some(201)
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 500 Internal Server Error\r\nConte"),
            Some(500)
        );
        assert_eq!(parse_status(b"HTTP/1.0 404 Not Found\r\n\r\n"), Some(404));
        assert_eq!(parse_status(b"HTTP/1.1 2"), None);
        assert_eq!(parse_status(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(parse_status(&[0xff; 40]), None);
    }

    #[test]
    fn long_request_lines_cut_by_the_capture() {
        let mut line = b"GET /files/".to_vec();
        line.extend(std::iter::repeat_n(b'a', 300));
        let r = parse_request_start(&line[..256]).unwrap();
        assert!(r.truncated);
        assert_eq!(r.method, "GET");
        assert!(r.path.starts_with("/files/aaa"));
        // Not for unknown methods, non-paths or binary data.
        let mut other = b"FOO /x".to_vec();
        other.extend(std::iter::repeat_n(b'a', 100));
        assert_eq!(parse_request_start(&other), None);
        assert_eq!(parse_request_start(&[b'G'; 100]), None);
    }
}
