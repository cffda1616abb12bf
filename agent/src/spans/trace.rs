//! Spans: one per HTTP request served (server) or made (client) by a watched process, with
//! OpenTelemetry semantic-convention attributes, linked into traces. Finished spans go to a
//! [`SpanSink`] (the exporters: OTLP and the built-in trace store), which must never block the
//! event reader.

use std::sync::Arc;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// The process a span comes from: OpenTelemetry resource attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// `service.name`
    pub service_name: String,
    /// `service.instance.id`: host name, pid and process start time, unique per process.
    pub instance_id: String,
    /// `process.pid`
    pub pid: u32,
    /// `process.executable.name`
    pub executable_name: String,
    /// `host.name`
    pub host_name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's span: from an incoming `traceparent`, the client span of the same
    /// connection in another watched process, or the server span this call was made for.
    pub parent_span_id: Option<SpanId>,
    /// W3C `sampled` flag: unsampled spans are not exported, but their ids still propagate.
    pub sampled: bool,
    pub kind: SpanKind,
    /// `METHOD ROUTE` for server spans with a route, else `METHOD`.
    pub name: String,
    /// Wall-clock times (Unix epoch nanoseconds).
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Error status: 5xx for server spans, 4xx and 5xx for client spans (OpenTelemetry's
    /// HTTP conventions).
    pub error: bool,
    /// Semantic-convention attributes: `http.request.method`, `http.route`,
    /// `http.response.status_code`, `url.path`, `server.address`, `server.port`,
    /// `client.address`, `client.port`, `network.protocol.version`, ...
    pub attributes: Vec<(&'static str, Value)>,
    pub resource: Arc<Resource>,
}

impl Span {
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// Where finished spans go. `submit` is called on the event-reading path: it must not block
/// (queue, drop and count when full).
pub trait SpanSink: Send + Sync {
    fn submit(&self, span: Span);
}

/// Lowercase hex, as W3C trace context writes ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
