//! OTLP export through the opentelemetry-otlp crate, over gRPC (tonic) or HTTP/protobuf.
//! Spans come from eBPF with their own ids and times, so they are turned into the SDK's
//! `SpanData` directly and handed to its `SpanExporter`; no SDK tracer is involved. Each call
//! exports one process's spans under its own resource. The crate's own retries are off: the
//! batcher retries, so that every attempt and every drop is counted in one place.

use std::{
    borrow::Cow,
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
use rustls::pki_types::pem;

use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue, StringValue,
};
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{
    error::OTelSdkError,
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
};

use super::traces::{BatchExporter, OtlpConfig};
use crate::{
    https::{self, CaError},
    spans::trace::{AttributeValue, Resource, Span, SpanKind},
};

/// `telemetry.sdk.name` of everything the agent exports.
pub const SDK_NAME: &str = "obs-agent";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// The values `OTEL_EXPORTER_OTLP_PROTOCOL` takes (case-insensitive); http/json is not
    /// supported.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        })
    }
}

/// Why the OTLP exporter could not be built. The messages hold the underlying error's (it is
/// not also a `source`, so that a chain of causes does not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum OtlpBuildError {
    #[error("reading the collector's CA certificate {path}: {error}")]
    CaCertificateUnreadable { path: String, error: std::io::Error },
    #[error("the collector's CA certificate {path}: {error}")]
    CaCertificateNotPem { path: String, error: pem::Error },
    #[error("the collector's CA certificate {path}: {error}")]
    CaCertificateRejected { path: String, error: rustls::Error },
    #[error("the collector's CA certificate {path}: no PEM certificate in it")]
    CaCertificateEmpty { path: String },
    /// The TLS library offers no protocol version it considers safe.
    #[error("{0}")]
    TlsVersions(rustls::Error),
    #[error("{0}")]
    Exporter(opentelemetry_otlp::ExporterBuildError),
}

pub struct OtlpExporter {
    inner: opentelemetry_otlp::SpanExporter,
    endpoint: String,
}

impl OtlpExporter {
    /// Builds the crate's exporter; it reads `OTEL_EXPORTER_OTLP_[TRACES_]{ENDPOINT,HEADERS,
    /// TIMEOUT,COMPRESSION}` itself when the configuration leaves them open.
    pub fn new(config: &OtlpConfig) -> Result<Self, OtlpBuildError> {
        let endpoint = config
            .endpoint
            .as_deref()
            .map(|e| endpoint_url(e, config.protocol));
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let inner = match config.protocol {
            Protocol::Grpc => {
                let mut b = builder
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                    .with_retry_policy(RetryPolicy::disabled());
                if let Some(e) = &endpoint {
                    b = b.with_endpoint(e.clone());
                }
                if effective_endpoint(endpoint.as_deref()).is_some_and(|e| is_https(&e)) {
                    let mut tls = ClientTlsConfig::new().with_native_roots();
                    if let Some((_, pem)) = collector_ca()? {
                        tls = tls.ca_certificate(Certificate::from_pem(pem));
                    }
                    b = b.with_tls_config(tls);
                }
                b.build()
            }
            Protocol::HttpProtobuf => {
                let mut b = builder
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_retry_policy(RetryPolicy::disabled())
                    .with_http_client(http_client()?);
                if let Some(e) = &endpoint {
                    b = b.with_endpoint(e.clone());
                }
                b.build()
            }
        }
        .map_err(OtlpBuildError::Exporter)?;
        Ok(Self {
            inner,
            endpoint: endpoint.unwrap_or_else(|| "the OTEL_EXPORTER_OTLP_* endpoint".to_owned()),
        })
    }

    pub fn endpoint_description(&self) -> &str {
        &self.endpoint
    }
}

impl BatchExporter for OtlpExporter {
    type Error = OTelSdkError;

    async fn export(&mut self, resource: &Resource, spans: &[Span]) -> Result<(), OTelSdkError> {
        self.inner.set_resource(&sdk_resource(resource));
        let data = spans.iter().map(span_data).collect();
        self.inner.export(data).await
    }
}

/// The collector's endpoint as the exporter will resolve it: the flag, else the standard
/// variables.
fn effective_endpoint(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_owned)
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

fn is_https(url: &str) -> bool {
    url.trim()
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The CA to trust for an https collector besides the system's, from
/// `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` or `OTEL_EXPORTER_OTLP_CERTIFICATE` (a PEM file):
/// its path and contents.
fn collector_ca() -> Result<Option<(String, Vec<u8>)>, OtlpBuildError> {
    let Some(path) = env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
        .or_else(|| env("OTEL_EXPORTER_OTLP_CERTIFICATE"))
    else {
        return Ok(None);
    };
    match std::fs::read(&path) {
        Ok(pem) => Ok(Some((path, pem))),
        Err(error) => Err(OtlpBuildError::CaCertificateUnreadable { path, error }),
    }
}

/// The http/protobuf client: plain http, or https trusting the system's roots and the
/// collector CA. Its timeout is the standard variables' (10 s by default), as the crate's
/// own client would have.
fn http_client() -> Result<HyperClient<HttpsConnector<HttpConnector>>, OtlpBuildError> {
    let ca = collector_ca()?;
    let connector = https::connector(ca.as_ref().map(|(_, pem)| pem.as_slice())).map_err(|e| {
        let path = ca.map(|(path, _)| path).unwrap_or_default();
        match e {
            CaError::NotPem(error) => OtlpBuildError::CaCertificateNotPem { path, error },
            CaError::Rejected(error) => OtlpBuildError::CaCertificateRejected { path, error },
            CaError::Empty => OtlpBuildError::CaCertificateEmpty { path },
            CaError::TlsVersions(error) => OtlpBuildError::TlsVersions(error),
        }
    })?;
    let timeout = env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
    Ok(HyperClient::new(connector, timeout, None))
}

/// OpenTelemetry's default export timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `--otlp-endpoint` is a base URL like `OTEL_EXPORTER_OTLP_ENDPOINT`: for http/protobuf,
/// `/v1/traces` is added when it has no path of its own.
pub fn endpoint_url(base: &str, protocol: Protocol) -> String {
    let base = base.trim();
    if protocol == Protocol::Grpc {
        return base.to_owned();
    }
    let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
    match after_scheme.find('/') {
        Some(i) if after_scheme[i..] != *"/" => base.to_owned(),
        _ => format!("{}/v1/traces", base.trim_end_matches('/')),
    }
}

/// The resource attributes of one watched process.
pub fn sdk_resource(r: &Resource) -> opentelemetry_sdk::Resource {
    let k8s = r
        .k8s
        .iter()
        .flat_map(|id| id.fields())
        .filter_map(|(attribute, _, value)| Some(KeyValue::new(attribute?, value.to_owned())));
    opentelemetry_sdk::Resource::builder_empty()
        .with_attributes(k8s)
        .with_attributes([
            KeyValue::new("service.name", r.service_name.clone()),
            KeyValue::new("service.instance.id", r.instance_id.clone()),
            KeyValue::new("process.pid", i64::from(r.pid)),
            KeyValue::new("process.executable.name", r.executable_name.clone()),
            KeyValue::new("host.name", r.host_name.clone()),
            KeyValue::new("telemetry.sdk.name", SDK_NAME),
            KeyValue::new("telemetry.sdk.language", "rust"),
            KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ])
        .build()
}

fn unix_time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// The SDK's view of a finished span. A server span's parent is remote (an incoming
/// `traceparent` or a client span of another process); a client span's parent is the server
/// span of the same process it was made for.
pub fn span_data(s: &Span) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(s.trace_id),
            SpanId::from_bytes(s.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: s.parent_span_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: s.parent_span_id.is_some() && s.kind == SpanKind::Server,
        span_kind: match s.kind {
            SpanKind::Server => OtelKind::Server,
            SpanKind::Client => OtelKind::Client,
        },
        name: match s.kind {
            SpanKind::Client => Cow::Borrowed(s.http.method),
            SpanKind::Server => Cow::Owned(s.name()),
        },
        start_time: unix_time(s.start_unix_nanos),
        end_time: unix_time(s.end_unix_nanos.max(s.start_unix_nanos)),
        attributes: {
            let mut attributes = Vec::with_capacity(9);
            s.for_each_attribute(|k, v| {
                attributes.push(match v {
                    AttributeValue::Static(v) => KeyValue::new(k, v),
                    AttributeValue::Str(v) => KeyValue::new(k, v.to_owned()),
                    AttributeValue::Shared(v) => KeyValue::new(k, StringValue::from(v.clone())),
                    AttributeValue::Ip(v) => KeyValue::new(k, v.to_string()),
                    AttributeValue::Int(v) => KeyValue::new(k, v),
                })
            });
            attributes
        },
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        // OpenTelemetry's HTTP conventions leave the status unset unless it is an error.
        status: if s.error {
            Status::error("")
        } else {
            Status::Unset
        },
        instrumentation_scope: InstrumentationScope::builder(SDK_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::spans::trace::HttpAttributes;

    #[test]
    fn endpoint_urls() {
        let http = Protocol::HttpProtobuf;
        assert_eq!(
            endpoint_url("http://c:4318", http),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            endpoint_url("http://c:4318/", http),
            "http://c:4318/v1/traces"
        );
        assert_eq!(endpoint_url("http://c:4318/x/y", http), "http://c:4318/x/y");
        assert_eq!(
            endpoint_url("http://c:4317", Protocol::Grpc),
            "http://c:4317"
        );
    }

    #[test]
    fn protocols() {
        assert_eq!(Protocol::parse("GRPC"), Some(Protocol::Grpc));
        assert_eq!(
            Protocol::parse("http/protobuf"),
            Some(Protocol::HttpProtobuf)
        );
        assert_eq!(Protocol::parse("http/json"), None);
    }

    #[test]
    fn span_data_keeps_ids_times_and_status() {
        let s = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            sampled: true,
            kind: SpanKind::Server,
            start_unix_nanos: 1_700_000_000_000_000_001,
            end_unix_nanos: 1_700_000_000_500_000_001,
            error: true,
            http: HttpAttributes {
                method: "GET",
                status_code: 503,
                path: "/users/7".into(),
                route: Some(Arc::from("/users/{id}")),
                server: Some("127.0.0.1:8080".parse().unwrap()),
                client: Some("127.0.0.1:5000".parse().unwrap()),
            },
            resource: Arc::new(Resource {
                service_name: "users".into(),
                instance_id: "h-1-2".into(),
                pid: 1,
                executable_name: "users".into(),
                host_name: "h".into(),
                k8s: None,
            }),
        };
        let d = span_data(&s);
        assert_eq!(d.span_context.trace_id().to_bytes(), [1; 16]);
        assert_eq!(d.span_context.span_id().to_bytes(), [2; 8]);
        assert_eq!(d.parent_span_id.to_bytes(), [3; 8]);
        assert!(d.parent_span_is_remote);
        assert_eq!(d.span_kind, OtelKind::Server);
        assert_eq!(
            d.end_time.duration_since(d.start_time).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(d.status, Status::error(""));
        assert_eq!(d.name, "GET /users/{id}");
        assert_eq!(
            d.attributes,
            [
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.response.status_code", 503),
                KeyValue::new("url.path", "/users/7"),
                KeyValue::new("network.protocol.version", "1.1"),
                KeyValue::new("http.route", "/users/{id}"),
                KeyValue::new("server.address", "127.0.0.1"),
                KeyValue::new("server.port", 8080),
                KeyValue::new("client.address", "127.0.0.1"),
                KeyValue::new("client.port", 5000),
            ]
        );
        let r = sdk_resource(&s.resource);
        assert_eq!(
            r.get(&opentelemetry::Key::new("process.pid")),
            Some(opentelemetry::Value::I64(1))
        );
        assert_eq!(r.len(), 8);
    }
}
