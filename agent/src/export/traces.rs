//! Where finished spans go: the [`SpanSink`] the span builder submits to. Every sampled span
//! lands in the built-in [`TraceStore`]; with a collector configured it also enters a bounded
//! queue that one task drains in batches (by size and by time) to OTLP, retrying each batch a
//! bounded number of times with exponential backoff. The queue is the only buffer: when it is
//! full (the collector slow or down), new spans are dropped and counted, never held.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{
        mpsc::{self, error::TrySendError},
        oneshot,
    },
    task::JoinHandle,
};

use super::{
    otlp::{OtlpExporter, Protocol},
    trace_store::TraceStore,
};
use crate::{
    metrics::SelfMetrics,
    spans::trace::{Resource, Span, SpanSink},
};

/// Drop reasons, as the `reason` label of `obs_agent_spans_dropped_total`.
pub const DROPPED_QUEUE_FULL: &str = "queue_full";
pub const DROPPED_EXPORT_FAILED: &str = "export_failed";
pub const DROPPED_EXPORTER_STOPPED: &str = "exporter_stopped";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name} is {value:?}: the agent exports OTLP as grpc or http/protobuf")]
    Protocol { source_name: String, value: String },
    #[error("the OTLP exporter could not be built: {0}")]
    Build(String),
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

/// Sends one process's spans somewhere; the batcher retries a failed call.
pub trait BatchExporter: Send + 'static {
    fn export(
        &mut self,
        resource: &Resource,
        spans: &[Span],
    ) -> impl Future<Output = Result<(), String>> + Send;
}

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

/// The [`SpanSink`]: never blocks, never grows past its bounds.
pub struct TraceSink {
    store: Arc<TraceStore>,
    queue: Option<mpsc::Sender<Span>>,
    metrics: SelfMetrics,
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
            Err(TrySendError::Full(_)) => DROPPED_QUEUE_FULL,
            Err(TrySendError::Closed(_)) => DROPPED_EXPORTER_STOPPED,
        };
        self.metrics.spans_queued.dec();
        self.metrics.span_dropped(reason, 1);
    }
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
                self.metrics.span_dropped(DROPPED_EXPORT_FAILED, n);
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

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{
            atomic::{AtomicBool, Ordering},
            Mutex,
        },
    };

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::spans::trace::{HttpAttributes, SpanKind};

    pub(crate) fn resource(pid: u32) -> Arc<Resource> {
        Arc::new(Resource {
            service_name: format!("svc-{pid}"),
            instance_id: format!("host-{pid}-1"),
            pid,
            executable_name: "svc".into(),
            host_name: "host".into(),
        })
    }

    fn span(n: u8, resource: &Arc<Resource>) -> Span {
        Span {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: None,
            sampled: true,
            kind: SpanKind::Server,
            start_unix_nanos: 1_000,
            end_unix_nanos: 2_000,
            error: false,
            http: HttpAttributes {
                method: "GET",
                status_code: 200,
                path: "/".into(),
                route: Some("/".into()),
                server: None,
                client: None,
            },
            resource: resource.clone(),
        }
    }

    fn metrics() -> SelfMetrics {
        SelfMetrics::register(&mut Registry::default())
    }

    fn dropped(m: &SelfMetrics, reason: &str) -> u64 {
        m.spans_dropped
            .get_or_create(&crate::metrics::self_metrics_labels::reason(reason))
            .get()
    }

    /// (pid, span ids) of each successful call.
    type Calls = Arc<Mutex<Vec<(u32, Vec<[u8; 8]>)>>>;

    /// Records calls; fails while `down` is set.
    #[derive(Clone, Default)]
    struct Recorder {
        calls: Calls,
        attempts: Arc<Mutex<u32>>,
        down: Arc<AtomicBool>,
    }

    impl BatchExporter for Recorder {
        fn export(
            &mut self,
            resource: &Resource,
            spans: &[Span],
        ) -> impl Future<Output = Result<(), String>> + Send {
            *self.attempts.lock().unwrap() += 1;
            let result = if self.down.load(Ordering::SeqCst) {
                Err("collector down".to_owned())
            } else {
                self.calls
                    .lock()
                    .unwrap()
                    .push((resource.pid, spans.iter().map(|s| s.span_id).collect()));
                Ok(())
            };
            async move { result }
        }
    }

    fn config() -> TraceConfig {
        TraceConfig {
            queue_capacity: 8,
            max_batch: 4,
            batch_timeout: Duration::from_millis(50),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            ..TraceConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_drops_and_counts() {
        let m = metrics();
        let rec = Recorder::default();
        rec.down.store(true, Ordering::SeqCst);
        let cfg = TraceConfig {
            max_attempts: 1000,
            ..config()
        };
        let (tx, _export) = spawn_export(&cfg, m.clone(), rec.clone());
        let sink = TraceSink::new(Arc::new(TraceStore::new(100)), Some(tx), m.clone());
        let r = resource(1);
        for n in 0..100 {
            sink.submit(span(n, &r));
            assert!(
                sink.queued() <= 8,
                "queue above its bound: {}",
                sink.queued()
            );
        }
        // The batcher took at most one batch out; the rest were refused.
        let accepted = 100 - dropped(&m, DROPPED_QUEUE_FULL);
        assert!((8..=12).contains(&accepted), "accepted {accepted}");
        assert_eq!(m.spans_queued.get() as usize, sink.queued());
        // The store keeps them all regardless.
        assert_eq!(sink.store.span_count(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_size_and_time_per_resource() {
        let m = metrics();
        let rec = Recorder::default();
        let (tx, _export) = spawn_export(&config(), m.clone(), rec.clone());
        let sink = TraceSink::new(Arc::new(TraceStore::new(100)), Some(tx), m.clone());
        let (a, b) = (resource(1), resource(2));
        for n in 0..4 {
            sink.submit(span(n, if n % 2 == 0 { &a } else { &b }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A full batch goes at once, one call per process.
        assert_eq!(
            *rec.calls.lock().unwrap(),
            vec![(1, vec![[0; 8], [2; 8]]), (2, vec![[1; 8], [3; 8]])]
        );
        sink.submit(span(9, &a));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(rec.calls.lock().unwrap().len(), 2, "sent before its time");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(rec.calls.lock().unwrap()[2], (1, vec![[9; 8]]));
        assert_eq!(m.spans_exported.get(), 5);
        assert_eq!(m.spans_queued.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_batches_are_retried_then_counted() {
        let m = metrics();
        let rec = Recorder::default();
        rec.down.store(true, Ordering::SeqCst);
        let (tx, _export) = spawn_export(&config(), m.clone(), rec.clone());
        let sink = TraceSink::new(Arc::new(TraceStore::new(100)), Some(tx), m.clone());
        let r = resource(1);
        for n in 0..4 {
            sink.submit(span(n, &r));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*rec.attempts.lock().unwrap(), 3);
        assert_eq!(dropped(&m, DROPPED_EXPORT_FAILED), 4);
        // The collector is back: later spans go through.
        rec.down.store(false, Ordering::SeqCst);
        sink.submit(span(7, &r));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(m.spans_exported.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_what_is_queued_then_refuses() {
        let m = metrics();
        let rec = Recorder::default();
        let (tx, export) = spawn_export(&config(), m.clone(), rec.clone());
        let sink = TraceSink::new(Arc::new(TraceStore::new(100)), Some(tx), m.clone());
        let r = resource(1);
        for n in 0..6 {
            sink.submit(span(n, &r));
        }
        let started = tokio::time::Instant::now();
        export.finish(Duration::from_secs(5)).await;
        // Sent at once, without waiting for a batch to fill or time out.
        assert!(started.elapsed() < config().batch_timeout);
        assert_eq!(m.spans_exported.get(), 6);
        sink.submit(span(7, &r));
        assert_eq!(dropped(&m, DROPPED_EXPORTER_STOPPED), 1);
    }

    #[tokio::test]
    async fn unsampled_spans_are_neither_stored_nor_exported() {
        let m = metrics();
        let rec = Recorder::default();
        let (tx, _export) = spawn_export(&config(), m.clone(), rec.clone());
        let sink = TraceSink::new(Arc::new(TraceStore::new(100)), Some(tx), m.clone());
        let mut s = span(1, &resource(1));
        s.sampled = false;
        sink.submit(s);
        assert_eq!(sink.queued(), 0);
        assert_eq!(sink.store.span_count(), 0);
    }

    #[tokio::test]
    async fn a_stopped_exporter_counts_drops() {
        let m = metrics();
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        let sink = TraceSink::new(Arc::new(TraceStore::new(100)), Some(tx), m.clone());
        sink.submit(span(1, &resource(1)));
        assert_eq!(dropped(&m, DROPPED_EXPORTER_STOPPED), 1);
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn no_endpoint_means_store_only() {
        let c = TraceConfig::from_flags_and_env(None, Some("grpc"), env(&[])).unwrap();
        assert_eq!(c.otlp, None);
        let c = TraceConfig::from_flags_and_env(
            None,
            None,
            env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
        )
        .unwrap();
        assert_eq!(c.otlp, None);
    }

    #[test]
    fn flags_win_over_signal_variables_over_generic_ones() {
        let all = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ];
        let c = TraceConfig::from_flags_and_env(None, None, env(&all)).unwrap();
        assert_eq!(
            c.otlp,
            Some(OtlpConfig {
                protocol: Protocol::Grpc,
                endpoint: None
            })
        );
        let c = TraceConfig::from_flags_and_env(
            Some("http://flag:4318"),
            Some("http/protobuf"),
            env(&all),
        )
        .unwrap();
        assert_eq!(
            c.otlp,
            Some(OtlpConfig {
                protocol: Protocol::HttpProtobuf,
                endpoint: Some("http://flag:4318".into())
            })
        );
        let c = TraceConfig::from_flags_and_env(
            None,
            None,
            env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://t:4318/v1/traces",
            )]),
        )
        .unwrap();
        assert_eq!(c.otlp.unwrap().protocol, Protocol::HttpProtobuf);
    }

    #[test]
    fn exporter_none_and_bad_protocols() {
        let c = TraceConfig::from_flags_and_env(
            Some("http://x:4317"),
            None,
            env(&[("OTEL_TRACES_EXPORTER", "none")]),
        )
        .unwrap();
        assert_eq!(c.otlp, None);
        let e = TraceConfig::from_flags_and_env(
            None,
            None,
            env(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL is \"http/json\": the agent exports OTLP as grpc \
             or http/protobuf"
        );
    }

    #[test]
    fn grouping_keeps_order() {
        let (a, b) = (resource(1), resource(2));
        let groups = group_by_resource(vec![span(1, &b), span(2, &a), span(3, &b)]);
        let got: Vec<_> = groups
            .iter()
            .map(|(r, s)| (r.pid, s.iter().map(|s| s.span_id[0]).collect::<Vec<_>>()))
            .collect();
        assert_eq!(got, vec![(2, vec![1, 3]), (1, vec![2])]);
    }
}
