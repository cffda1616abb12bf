//! The export task: drains the queue in batches (by size and by time), one export call per
//! process, each retried a bounded number of times with exponential backoff.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{SpanDrop, TraceConfig};
use crate::{
    metrics::SelfMetrics,
    spans::trace::{Resource, Span},
};

/// Sends one process's spans somewhere; the batcher retries a failed call.
pub trait BatchExporter: Send + 'static {
    /// Why a call failed (logged; the spans are retried, then counted as dropped).
    type Error: std::error::Error + Send;

    fn export(
        &mut self,
        resource: &Resource,
        spans: &[Span],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The batching task and the signal that makes it drain its queue and end.
pub struct ExportTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl ExportTask {
    pub async fn finish(self, timeout: Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            log::warn!("spans still queued for OTLP export after {timeout:?} are not sent");
            task.abort();
        }
    }
}

/// Starts the batching task for `exporter`; returns the sending side of its queue.
pub fn spawn_export<E: BatchExporter>(
    config: &TraceConfig,
    metrics: SelfMetrics,
    exporter: E,
) -> (mpsc::Sender<Span>, ExportTask) {
    let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
    let (stop, stopped) = oneshot::channel();
    let batcher = Batcher {
        config: config.clone(),
        metrics,
        exporter,
        rx,
        stop: Some(stopped),
    };
    let task = tokio::spawn(batcher.run());
    (tx, ExportTask { stop, task })
}

struct Batcher<E> {
    config: TraceConfig,
    metrics: SelfMetrics,
    exporter: E,
    rx: mpsc::Receiver<Span>,
    /// Fires at shutdown: the queue is closed, drained, and the task ends.
    stop: Option<oneshot::Receiver<()>>,
}

impl<E: BatchExporter> Batcher<E> {
    async fn run(mut self) {
        let max_batch = self.config.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch);
        loop {
            let open = self.fill(&mut batch, max_batch).await;
            self.metrics.spans_queued.dec_by(batch.len() as i64);
            if !batch.is_empty() {
                self.send(&mut batch).await;
            }
            if !open {
                return;
            }
        }
    }

    /// Waits for a first span, then collects more until the batch is full or its time is up.
    /// False once every sender is gone and the queue is empty.
    async fn fill(&mut self, batch: &mut Vec<Span>, max_batch: usize) -> bool {
        if self.receive(batch, max_batch).await == 0 {
            return false;
        }
        let deadline = tokio::time::Instant::now() + self.config.batch_timeout;
        while batch.len() < max_batch {
            let wanted = max_batch - batch.len();
            match tokio::time::timeout_at(deadline, self.receive(batch, wanted)).await {
                Ok(0) => return false,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        true
    }

    /// `recv_many`, and on the stop signal: close the queue so that what is in it is received
    /// without waiting and then 0 says it is empty.
    async fn receive(&mut self, batch: &mut Vec<Span>, wanted: usize) -> usize {
        loop {
            let Some(stop) = &mut self.stop else {
                return self.rx.recv_many(batch, wanted).await;
            };
            tokio::select! {
                n = self.rx.recv_many(batch, wanted) => return n,
                _ = stop => {}
            }
            self.stop = None;
            self.rx.close();
        }
    }

    /// Exports the batch, one call per process (resource), each retried with backoff.
    async fn send(&mut self, batch: &mut Vec<Span>) {
        for (resource, spans) in group_by_resource(std::mem::take(batch)) {
            let n = spans.len() as u64;
            if self.export_with_retries(&resource, &spans).await {
                self.metrics.spans_exported.inc_by(n);
            } else {
                self.metrics.span_dropped(SpanDrop::ExportFailed, n);
            }
        }
    }

    async fn export_with_retries(&mut self, resource: &Resource, spans: &[Span]) -> bool {
        let mut backoff = self.config.initial_backoff;
        let attempts = self.config.max_attempts.max(1);
        for attempt in 1..=attempts {
            let started = Instant::now();
            match self.exporter.export(resource, spans).await {
                Ok(()) => return true,
                Err(e) if attempt == attempts => log::warn!(
                    "dropping {} spans of {} after {attempt} failed exports: {e}",
                    spans.len(),
                    resource.service_name
                ),
                Err(e) => {
                    log::debug!(
                        "OTLP export of {} spans failed after {:?} (attempt {attempt}, next in \
                         {backoff:?}): {e}",
                        spans.len(),
                        started.elapsed()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
        false
    }
}

/// Splits a batch by process, keeping each process's spans in arrival order; processes in
/// order of their first span.
pub fn group_by_resource(spans: Vec<Span>) -> Vec<(Arc<Resource>, Vec<Span>)> {
    let mut groups: Vec<(Arc<Resource>, Vec<Span>)> = Vec::new();
    for span in spans {
        match groups
            .iter_mut()
            .find(|(r, _)| Arc::ptr_eq(r, &span.resource) || **r == *span.resource)
        {
            Some((_, group)) => group.push(span),
            None => groups.push((span.resource.clone(), vec![span])),
        }
    }
    groups
}
