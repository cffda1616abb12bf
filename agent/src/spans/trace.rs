//! Spans: one per HTTP request served (server) or made (client) by a watched process, with
//! OpenTelemetry semantic-convention attributes, linked into traces. Finished spans go to a
//! [`SpanSink`] (the exporters: OTLP and the built-in trace store), which must never block the
//! event reader.
//!
//! A span is built for every sampled request, tens of thousands a second, so it holds its
//! attributes as typed values (the method a `&'static str`, the route shared with the
//! process's route table, addresses as `SocketAddr`) and allocates nothing of its own: the
//! path is the request's own string, moved in. Names and attribute strings are made only when
//! a span is exported or shown ([`Span::name`], [`Span::attributes`]).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::target::kubernetes::PodIdentity;

pub use crate::protocols::trace_context::{SpanId, TraceId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Server,
    Client,
}

/// An attribute's value as exported.
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
    /// `k8s.namespace.name`, `k8s.pod.name`, ... when the process runs in Kubernetes.
    pub k8s: Option<Arc<PodIdentity>>,
}

/// The HTTP/1.1 request of a span, as OpenTelemetry's HTTP semantic conventions describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAttributes {
    /// `http.request.method` (`_OTHER` for methods outside the standard set).
    pub method: &'static str,
    /// `http.response.status_code`
    pub status_code: u16,
    /// `url.path`: the request target without its query or fragment.
    pub path: String,
    /// `http.route`: the matched pattern or the collapsed path (server spans).
    pub route: Option<Arc<str>>,
    /// `server.address` and `server.port`: this end for server spans, the peer for client
    /// spans.
    pub server: Option<SocketAddr>,
    /// `client.address` and `client.port` (server spans).
    pub client: Option<SocketAddr>,
}

/// `network.protocol.version`: the agent parses HTTP/1.x.
pub const PROTOCOL_VERSION: &str = "1.1";

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
    /// Wall-clock times (Unix epoch nanoseconds).
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Error status: 5xx for server spans, 4xx and 5xx for client spans (OpenTelemetry's
    /// HTTP conventions).
    pub error: bool,
    pub http: HttpAttributes,
    pub resource: Arc<Resource>,
}

impl Span {
    /// `METHOD ROUTE` for server spans with a route, else `METHOD`.
    pub fn name(&self) -> String {
        self.display_name().to_string()
    }

    /// The name, written where it is needed without building it first.
    pub fn display_name(&self) -> impl fmt::Display + '_ {
        SpanName(self)
    }

    /// The semantic-convention attributes, in a fixed order: `http.request.method`,
    /// `http.response.status_code`, `url.path`, `network.protocol.version`, then for server
    /// spans `http.route`, `server.address`, `server.port`, `client.address`, `client.port`,
    /// for client spans `server.address`, `server.port` (addresses only when known). Each is
    /// given as borrowed as it is stored, for exporters to convert without copying twice.
    pub fn for_each_attribute(&self, mut f: impl FnMut(&'static str, AttributeValue<'_>)) {
        let h = &self.http;
        f("http.request.method", AttributeValue::Static(h.method));
        f(
            "http.response.status_code",
            AttributeValue::Int(h.status_code.into()),
        );
        f("url.path", AttributeValue::Str(&h.path));
        f(
            "network.protocol.version",
            AttributeValue::Static(PROTOCOL_VERSION),
        );
        if let Some(route) = &h.route {
            f("http.route", AttributeValue::Shared(route));
        }
        let mut addr = |address, port, addr: Option<SocketAddr>| {
            if let Some(addr) = addr {
                f(address, AttributeValue::Ip(addr.ip()));
                f(port, AttributeValue::Int(addr.port().into()));
            }
        };
        addr("server.address", "server.port", h.server);
        addr("client.address", "client.port", h.client);
    }

    /// The attributes as exported values, in [`Span::for_each_attribute`]'s order.
    pub fn attributes(&self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::with_capacity(9);
        self.for_each_attribute(|k, v| out.push((k, v.to_value())));
        out
    }

    /// One attribute by its name.
    pub fn attribute(&self, key: &str) -> Option<Value> {
        self.attributes()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// An attribute's value as a span holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttributeValue<'a> {
    Static(&'static str),
    Str(&'a str),
    Shared(&'a Arc<str>),
    Ip(IpAddr),
    Int(i64),
}

impl AttributeValue<'_> {
    pub fn to_value(self) -> Value {
        match self {
            Self::Static(s) => Value::Str(s.to_owned()),
            Self::Str(s) => Value::Str(s.to_owned()),
            Self::Shared(s) => Value::Str(s.to_string()),
            Self::Ip(ip) => Value::Str(ip.to_string()),
            Self::Int(i) => Value::Int(i),
        }
    }
}

struct SpanName<'a>(&'a Span);

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        match (&s.http.route, s.kind) {
            (Some(route), SpanKind::Server) => write!(f, "{} {route}", s.http.method),
            _ => f.write_str(s.http.method),
        }
    }
}

/// Where finished spans go. `submit` is called on the event-reading path: it must not block
/// (queue, drop and count when full).
pub trait SpanSink: Send + Sync {
    fn submit(&self, span: Span);
}

/// Lowercase hex, as W3C trace context writes ids.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)].into());
        out.push(DIGITS[usize::from(b & 0xf)].into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(kind: SpanKind, route: Option<&str>) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            sampled: true,
            kind,
            start_unix_nanos: 0,
            end_unix_nanos: 1,
            error: false,
            http: HttpAttributes {
                method: "GET",
                status_code: 200,
                path: "/items/42".into(),
                route: route.map(Arc::from),
                server: Some("10.0.0.1:80".parse().unwrap()),
                client: Some("[::1]:5000".parse().unwrap()),
            },
            resource: Arc::new(Resource {
                service_name: "svc".into(),
                instance_id: "h:1:2".into(),
                pid: 1,
                executable_name: "svc".into(),
                host_name: "h".into(),
                k8s: None,
            }),
        }
    }

    #[test]
    fn names_are_method_and_route_for_server_spans() {
        assert_eq!(
            span(SpanKind::Server, Some("/items/{id}")).name(),
            "GET /items/{id}"
        );
        assert_eq!(span(SpanKind::Server, None).name(), "GET");
        assert_eq!(span(SpanKind::Client, Some("/x")).name(), "GET");
    }

    #[test]
    fn attributes_in_their_order_as_strings_and_ints() {
        let s = span(SpanKind::Server, Some("/items/{id}"));
        let keys: Vec<_> = s.attributes().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "http.request.method",
                "http.response.status_code",
                "url.path",
                "network.protocol.version",
                "http.route",
                "server.address",
                "server.port",
                "client.address",
                "client.port",
            ]
        );
        assert_eq!(
            s.attribute("client.address"),
            Some(Value::Str("::1".into()))
        );
        assert_eq!(s.attribute("server.port"), Some(Value::Int(80)));
        assert_eq!(
            s.attribute("network.protocol.version"),
            Some(Value::Str("1.1".into()))
        );
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x1f]), "00ab1f");
    }
}

/// Spans and resources for the unit tests of every stage that handles spans.
#[cfg(test)]
pub mod fixtures {
    use std::sync::Arc;

    use super::{HttpAttributes, Resource, Span, SpanKind};

    /// The process of service `name`.
    pub fn resource(name: &str) -> Arc<Resource> {
        Arc::new(Resource {
            service_name: name.into(),
            instance_id: format!("h-{name}"),
            pid: 7,
            executable_name: name.into(),
            host_name: "h".into(),
            k8s: None,
        })
    }

    /// A sampled root server span of `GET /` answered 200 by service `front`, with `trace`
    /// and `id` repeated into its ids, from `start_ms` to `end_ms` (Unix epoch).
    pub fn span(trace: u8, id: u8, start_ms: u64, end_ms: u64) -> Span {
        Span {
            trace_id: [trace; 16],
            span_id: [id; 8],
            parent_span_id: None,
            sampled: true,
            kind: SpanKind::Server,
            start_unix_nanos: start_ms * 1_000_000,
            end_unix_nanos: end_ms * 1_000_000,
            error: false,
            http: HttpAttributes {
                method: "GET",
                status_code: 200,
                path: "/".into(),
                route: Some("/".into()),
                server: None,
                client: None,
            },
            resource: resource("front"),
        }
    }
}
