//! The sink's bounds, the batcher's batches, retries and shutdown, and the configuration.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
};

use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use super::*;
use crate::{
    export::otlp::Protocol,
    spans::trace::{fixtures, Resource, Span},
};

pub(crate) fn resource(pid: u32) -> Arc<Resource> {
    Arc::new(Resource {
        service_name: format!("svc-{pid}"),
        instance_id: format!("host-{pid}-1"),
        pid,
        executable_name: "svc".into(),
        host_name: "host".into(),
        k8s: None,
    })
}

fn span(n: u8, resource: &Arc<Resource>) -> Span {
    Span {
        resource: resource.clone(),
        ..fixtures::span(n, n, 0, 0)
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

#[derive(Debug, thiserror::Error)]
#[error("collector down")]
struct CollectorDown;

impl BatchExporter for Recorder {
    type Error = CollectorDown;

    fn export(
        &mut self,
        resource: &Resource,
        spans: &[Span],
    ) -> impl Future<Output = Result<(), CollectorDown>> + Send {
        *self.attempts.lock().unwrap() += 1;
        let result = if self.down.load(Ordering::SeqCst) {
            Err(CollectorDown)
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
    let c =
        TraceConfig::from_flags_and_env(Some("http://flag:4318"), Some("http/protobuf"), env(&all))
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
