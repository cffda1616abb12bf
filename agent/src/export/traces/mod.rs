//! Where finished spans go: the [`SpanSink`] the span builder submits to. Every sampled span
//! lands in the built-in [`TraceStore`]; with a collector configured it also enters a bounded
//! queue that one task drains in batches (by size and by time) to OTLP, retrying each batch a
//! bounded number of times with exponential backoff. The queue is the only buffer: when it is
//! full (the collector slow or down), new spans are dropped and counted, never held.

mod batcher;
mod config;
mod sink;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

pub use batcher::{group_by_resource, spawn_export, BatchExporter, ExportTask};
pub use config::{ConfigError, OtlpConfig, TraceConfig};
pub use sink::TraceSink;

use super::{otlp::OtlpExporter, trace_store::TraceStore};
pub use crate::metrics::reasons::SpanDrop;
use crate::{metrics::SelfMetrics, spans::trace::SpanSink};

/// The drop reasons' labels, for readers of the metric.
pub const DROPPED_QUEUE_FULL: &str = SpanDrop::QueueFull.as_str();
pub const DROPPED_EXPORT_FAILED: &str = SpanDrop::ExportFailed.as_str();
pub const DROPPED_EXPORTER_STOPPED: &str = SpanDrop::ExporterStopped.as_str();

/// The running trace pipeline: the sink to give the span builder, and the store the HTTP
/// endpoint reads.
pub struct Traces {
    pub sink: Arc<TraceSink>,
    pub store: Arc<TraceStore>,
    export: Option<ExportTask>,
}

impl Traces {
    pub fn sink(&self) -> Arc<dyn SpanSink> {
        self.sink.clone()
    }

    /// At shutdown: stop taking spans for export (later ones count as `exporter_stopped`) and
    /// send what is queued, waiting at most `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        if let Some(export) = self.export {
            export.finish(timeout).await;
        }
    }
}

/// Builds the store and, with a collector configured, the OTLP exporter and its task.
/// Must run inside a tokio runtime.
pub fn start(config: &TraceConfig, metrics: &SelfMetrics) -> Result<Traces, ConfigError> {
    let store = Arc::new(TraceStore::new(config.store_max_spans));
    let (queue, export) = match &config.otlp {
        Some(otlp) => {
            let exporter = OtlpExporter::new(otlp).map_err(ConfigError::Build)?;
            log::info!(
                "exporting sampled spans over OTLP ({}) to {}",
                otlp.protocol,
                exporter.endpoint_description()
            );
            let (queue, export) = spawn_export(config, metrics.clone(), exporter);
            (Some(queue), Some(export))
        }
        None => {
            log::info!("no OTLP collector configured: traces are kept in memory only (/traces)");
            (None, None)
        }
    };
    Ok(Traces {
        sink: Arc::new(TraceSink {
            store: store.clone(),
            queue,
            metrics: metrics.clone(),
        }),
        store,
        export,
    })
}
