//! The trace pipeline's configuration: the collector to export to and the bounds, from the
//! command line's flags and the standard `OTEL_*` variables.

use std::time::Duration;

use crate::export::otlp::{OtlpBuildError, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name} is {value:?}: the agent exports OTLP as grpc or http/protobuf")]
    Protocol { source_name: String, value: String },
    #[error("the OTLP exporter could not be built: {0}")]
    Build(OtlpBuildError),
}

/// The collector to export to; `None` in [`TraceConfig::otlp`] means the built-in store only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    pub protocol: Protocol,
    /// From `--otlp-endpoint`, as a base URL (`/v1/traces` is added for http/protobuf when the
    /// URL has no path). `None`: the exporter reads `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` itself, with their own rules.
    pub endpoint: Option<String>,
}

/// How spans are exported and kept. Headers, timeout and compression come from the standard
/// `OTEL_EXPORTER_OTLP_*` variables, read by the exporter when it is built.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    pub otlp: Option<OtlpConfig>,
    /// Spans waiting for export at most; beyond this they are dropped (`queue_full`).
    pub queue_capacity: usize,
    /// Spans sent in one export at most.
    pub max_batch: usize,
    /// A batch that is not full is sent this long after its first span arrived.
    pub batch_timeout: Duration,
    /// Attempts per batch (the first one included) before its spans count as `export_failed`.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Spans the built-in store keeps (whole traces evicted, least recently updated first).
    pub store_max_spans: usize,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            otlp: None,
            queue_capacity: 4096,
            max_batch: 512,
            batch_timeout: Duration::from_secs(1),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            store_max_spans: 10_000,
        }
    }
}

impl TraceConfig {
    /// The configuration from the command line's flags and the environment (`env` looks a
    /// variable up; empty values count as unset). A flag wins over
    /// `OTEL_EXPORTER_OTLP_TRACES_*`, which wins over `OTEL_EXPORTER_OTLP_*`. OTLP is on when
    /// an endpoint is given by either, unless `OTEL_TRACES_EXPORTER=none`; the protocol
    /// defaults to http/protobuf, as the OpenTelemetry specification says.
    pub fn from_flags_and_env(
        endpoint_flag: Option<&str>,
        protocol_flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let exporter_off = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
        let has_endpoint = endpoint_flag.is_some_and(|e| !e.trim().is_empty())
            || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let protocol = match protocol_flag {
            Some(p) => Some(parse_protocol("--otlp-protocol", p)?),
            None => match (
                env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
                env("OTEL_EXPORTER_OTLP_PROTOCOL"),
            ) {
                (Some(p), _) => Some(parse_protocol("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", &p)?),
                (None, Some(p)) => Some(parse_protocol("OTEL_EXPORTER_OTLP_PROTOCOL", &p)?),
                (None, None) => None,
            },
        };
        let otlp = (has_endpoint && !exporter_off).then(|| OtlpConfig {
            protocol: protocol.unwrap_or(Protocol::HttpProtobuf),
            endpoint: endpoint_flag
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned),
        });
        Ok(Self {
            otlp,
            ..Self::default()
        })
    }
}

fn parse_protocol(source_name: &str, value: &str) -> Result<Protocol, ConfigError> {
    Protocol::parse(value).ok_or_else(|| ConfigError::Protocol {
        source_name: source_name.to_owned(),
        value: value.to_owned(),
    })
}
