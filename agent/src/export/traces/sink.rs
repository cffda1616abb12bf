//! The [`SpanSink`] the span builder submits to: every sampled span into the store, and into
//! the bounded export queue when there is one.

use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TrySendError};

use super::SpanDrop;
use crate::{
    export::trace_store::TraceStore,
    metrics::SelfMetrics,
    spans::trace::{Span, SpanSink},
};

/// The [`SpanSink`]: never blocks, never grows past its bounds.
pub struct TraceSink {
    pub(super) store: Arc<TraceStore>,
    pub(super) queue: Option<mpsc::Sender<Span>>,
    pub(super) metrics: SelfMetrics,
}

impl TraceSink {
    /// A sink over an existing store and export queue (tests; [`start`] builds the usual one).
    pub fn new(
        store: Arc<TraceStore>,
        queue: Option<mpsc::Sender<Span>>,
        metrics: SelfMetrics,
    ) -> Self {
        Self {
            store,
            queue,
            metrics,
        }
    }

    /// Spans in the export queue now.
    pub fn queued(&self) -> usize {
        self.queue
            .as_ref()
            .map_or(0, |q| q.max_capacity() - q.capacity())
    }
}

impl SpanSink for TraceSink {
    fn submit(&self, span: Span) {
        if !span.sampled {
            return;
        }
        let Some(queue) = &self.queue else {
            self.store.insert(span);
            return;
        };
        self.store.insert(span.clone());
        // Counted before it is sent, so that the batcher's decrement never comes first.
        self.metrics.spans_queued.inc();
        let reason = match queue.try_send(span) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => SpanDrop::QueueFull,
            Err(TrySendError::Closed(_)) => SpanDrop::ExporterStopped,
        };
        self.metrics.spans_queued.dec();
        self.metrics.span_dropped(reason, 1);
    }
}
