//! OTLP export. End to end: the real agent watching two Go services exports their spans to
//! an in-test receiver (`obs_integration_tests::otlp`), the same the built-in store shows. Then
//! the export module as a library (no kernel, no span builder): spans go to that receiver over
//! gRPC and HTTP/protobuf, which checks every field, through a real collector (rotel) over both
//! protocols, and to a collector that stops mid-run and comes back, while memory stays bounded
//! and drops are counted.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use obs_agent::{
    export::{
        otlp::Protocol,
        traces::{
            start, OtlpConfig, TraceConfig, Traces, DROPPED_EXPORT_FAILED, DROPPED_QUEUE_FULL,
        },
    },
    metrics::{self_metrics_labels::reason, SelfMetrics},
    spans::trace::{hex, HttpAttributes, Resource, Span, SpanKind, SpanSink, Value},
};
use obs_integration_tests::{
    free_port,
    otlp::{attributes, span_count, spans, Receiver, Requests},
    rotel::Rotel,
    tempdir,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    trace::v1::{span::SpanKind as ProtoKind, status::StatusCode},
};
use tokio::time::sleep;

fn process(pid: u32, service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        service_name: service.into(),
        instance_id: format!("testhost-{pid}-12345"),
        pid,
        executable_name: format!("{service}-bin"),
        host_name: "testhost".into(),
        k8s: None,
    })
}

/// One request through two services: a server span in `front` (its caller outside), the call
/// it made, and the server span in `back` that failed.
fn request_spans(n: u32) -> Vec<Span> {
    let front = process(100, "front");
    let back = process(200, "back");
    let mut trace_id = [0xab; 16];
    trace_id[..4].copy_from_slice(&n.to_be_bytes());
    let base = 1_760_000_000_000_000_000 + u64::from(n) * 1_000_000_000;
    let span =
        |id: u8, parent: Option<[u8; 8]>, kind, route: Option<&str>, start, end, error, r| Span {
            trace_id,
            span_id: [id, 2, 3, 4, 5, 6, 7, (n % 251) as u8],
            parent_span_id: parent,
            sampled: true,
            kind,
            start_unix_nanos: base + start,
            end_unix_nanos: base + end,
            error,
            http: HttpAttributes {
                method: "GET",
                status_code: if error { 503 } else { 200 },
                path: format!("/users/{n}"),
                route: route.map(Arc::from),
                server: Some("127.0.0.1:8080".parse().unwrap()),
                client: (kind == SpanKind::Server).then(|| "127.0.0.1:40000".parse().unwrap()),
            },
            resource: Arc::clone(r),
        };
    let a = span(
        1,
        Some([9; 8]),
        SpanKind::Server,
        Some("/users/{id}"),
        0,
        9_000_000,
        false,
        &front,
    );
    let b = span(
        2,
        Some(a.span_id),
        SpanKind::Client,
        None,
        1_000_000,
        8_000_000,
        true,
        &front,
    );
    let c = span(
        3,
        Some(b.span_id),
        SpanKind::Server,
        Some("/u/{id}"),
        1_500_000,
        7_500_000,
        true,
        &back,
    );
    vec![a, b, c]
}

fn expected_resource(r: &Resource) -> BTreeMap<String, Value> {
    let s = |v: &str| Value::Str(v.to_owned());
    BTreeMap::from([
        ("service.name".into(), s(&r.service_name)),
        ("service.instance.id".into(), s(&r.instance_id)),
        ("process.pid".into(), Value::Int(r.pid.into())),
        ("process.executable.name".into(), s(&r.executable_name)),
        ("host.name".into(), s(&r.host_name)),
        ("telemetry.sdk.name".into(), s("obs-agent")),
        ("telemetry.sdk.language".into(), s("rust")),
        ("telemetry.sdk.version".into(), s(env!("CARGO_PKG_VERSION"))),
    ])
}

/// Every submitted span arrived once, whole, under its own process's resource.
fn check_received(sent: &[Span], requests: &[ExportTraceServiceRequest]) {
    let mut seen = BTreeMap::new();
    for rs in requests.iter().flat_map(|r| &r.resource_spans) {
        let resource = attributes(&rs.resource.as_ref().expect("no resource").attributes);
        for ss in &rs.scope_spans {
            assert_eq!(
                ss.scope.as_ref().map(|s| s.name.as_str()),
                Some("obs-agent")
            );
            for s in &ss.spans {
                let prior = seen.insert(s.span_id.clone(), (resource.clone(), s.clone()));
                assert!(prior.is_none(), "span {} twice", hex(&s.span_id));
            }
        }
    }
    assert_eq!(seen.len(), sent.len(), "spans received");
    for want in sent {
        let (resource, got) = &seen[want.span_id.as_slice()];
        let id = hex(&want.span_id);
        assert_eq!(
            resource,
            &expected_resource(&want.resource),
            "resource of {id}"
        );
        assert_eq!(got.trace_id, want.trace_id, "trace id of {id}");
        assert_eq!(
            got.parent_span_id,
            want.parent_span_id.map_or(Vec::new(), |p| p.to_vec()),
            "parent of {id}"
        );
        assert_eq!(got.name, want.name());
        assert_eq!(
            got.kind,
            match want.kind {
                SpanKind::Server => ProtoKind::Server as i32,
                SpanKind::Client => ProtoKind::Client as i32,
            },
            "kind of {id}"
        );
        assert_eq!(got.start_time_unix_nano, want.start_unix_nanos);
        assert_eq!(got.end_time_unix_nano, want.end_unix_nanos);
        let status = got.status.clone().unwrap_or_default().code;
        let want_status = if want.error {
            StatusCode::Error
        } else {
            StatusCode::Unset
        };
        assert_eq!(status, want_status as i32, "status of {id}");
        let want_attributes: BTreeMap<String, Value> = want
            .attributes()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(
            attributes(&got.attributes),
            want_attributes,
            "attributes of {id}"
        );
    }
}

fn config(protocol: Protocol, endpoint: String) -> TraceConfig {
    TraceConfig {
        otlp: Some(OtlpConfig {
            protocol,
            endpoint: Some(endpoint),
        }),
        batch_timeout: Duration::from_millis(100),
        ..TraceConfig::default()
    }
}

fn dropped(m: &SelfMetrics, why: &str) -> u64 {
    m.spans_dropped.get_or_create(&reason(why)).get()
}

fn submit_all(traces: &Traces, spans: &[Span]) {
    for s in spans {
        traces.sink.submit(s.clone());
    }
}

async fn in_test_receiver_gets_every_field(protocol: Protocol) {
    let port = free_port();
    let receiver = match protocol {
        Protocol::Grpc => Receiver::grpc(port).await,
        Protocol::HttpProtobuf => Receiver::http(port).await,
    };
    let metrics = SelfMetrics::default();
    let traces = start(
        &config(protocol, format!("http://127.0.0.1:{port}")),
        &metrics,
    )
    .unwrap();
    let mut sent: Vec<Span> = (0..20).flat_map(request_spans).collect();
    let mut unsampled = request_spans(99);
    unsampled.iter_mut().for_each(|s| s.sampled = false);
    submit_all(&traces, &sent);
    submit_all(&traces, &unsampled);
    receiver
        .wait_for_spans(sent.len(), Duration::from_secs(10))
        .await;
    sleep(Duration::from_millis(300)).await;
    let requests = receiver.stop().await;
    let requests = requests.lock().unwrap();
    check_received(&sent, &requests);
    // One ResourceSpans per process in each request, never mixed.
    for r in requests.iter() {
        let services: Vec<_> = r
            .resource_spans
            .iter()
            .map(|rs| attributes(&rs.resource.as_ref().unwrap().attributes)["service.name"].clone())
            .collect();
        assert_eq!(services.len(), 1, "one process per export call");
    }
    assert_eq!(metrics.spans_exported.get(), sent.len() as u64);
    // The built-in store has them too.
    sent.sort_by_key(|s| s.trace_id);
    assert_eq!(traces.store.trace_count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_keeps_ids_times_attributes_and_resources() {
    in_test_receiver_gets_every_field(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_keeps_ids_times_attributes_and_resources() {
    in_test_receiver_gets_every_field(Protocol::HttpProtobuf).await;
}

/// An https collector whose certificate is signed by a CA given in
/// `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`: every span arrives, over both protocols. Without
/// that CA the certificate is not trusted, and nothing is exported (spans counted dropped).
async fn https_collector(protocol: Protocol) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let ca_file = tempdir().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    // Not trusted without the CA: export fails, spans are counted as dropped.
    let port = free_port();
    let receiver = Receiver::tls(protocol, port, &leaf.pem(), &leaf_key.serialize_pem()).await;
    let untrusting = TraceConfig {
        max_attempts: 1,
        ..config(protocol, format!("https://127.0.0.1:{port}"))
    };
    let metrics = SelfMetrics::default();
    let traces = start(&untrusting, &metrics).unwrap();
    submit_all(&traces, &request_spans(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dropped(&metrics, "export_failed") < 3 {
        assert!(std::time::Instant::now() < deadline, "no export failure");
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.span_count(), 0);
    drop(traces);

    // Trusted through OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE.
    std::env::set_var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &ca_file);
    let metrics = SelfMetrics::default();
    let traces = start(
        &config(protocol, format!("https://127.0.0.1:{port}")),
        &metrics,
    )
    .unwrap();
    std::env::remove_var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE");
    let sent: Vec<Span> = (0..5).flat_map(request_spans).collect();
    submit_all(&traces, &sent);
    receiver
        .wait_for_spans(sent.len(), Duration::from_secs(10))
        .await;
    let requests = receiver.stop().await;
    check_received(&sent, &requests.lock().unwrap());
    assert_eq!(metrics.spans_exported.get(), sent.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_collector_over_grpc() {
    https_collector(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_collector_over_http_protobuf() {
    https_collector(Protocol::HttpProtobuf).await;
}

/// Configured by the standard variables alone: endpoint, protocol and headers. (The other
/// tests give their endpoint and protocol in code, which wins over these variables.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_variables_configure_the_exporter() {
    let port = free_port();
    let receiver = Receiver::http(port).await;
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        format!("http://127.0.0.1:{port}/v1/traces"),
    );
    std::env::set_var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf");
    std::env::set_var("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-obs-test=from-env");
    let cfg = TraceConfig {
        batch_timeout: Duration::from_millis(100),
        ..TraceConfig::from_flags_and_env(None, None, |name| std::env::var(name).ok()).unwrap()
    };
    assert_eq!(
        cfg.otlp,
        Some(OtlpConfig {
            protocol: Protocol::HttpProtobuf,
            endpoint: None
        })
    );
    let metrics = SelfMetrics::default();
    let traces = start(&cfg, &metrics).unwrap();
    let sent = request_spans(5);
    submit_all(&traces, &sent);
    receiver
        .wait_for_spans(sent.len(), Duration::from_secs(10))
        .await;
    assert!(receiver.test_headers().iter().all(|h| h == "from-env"));
    assert!(!receiver.test_headers().is_empty());
    let requests = receiver.stop().await;
    check_received(&sent, &requests.lock().unwrap());
}

async fn through_rotel(protocol: Protocol) {
    let receiver_port = free_port();
    let receiver = Receiver::grpc(receiver_port).await;
    let rotel = Rotel::start(receiver_port).await;
    let port = match protocol {
        Protocol::Grpc => rotel.grpc,
        Protocol::HttpProtobuf => rotel.http,
    };
    let metrics = SelfMetrics::default();
    let traces = start(
        &config(protocol, format!("http://127.0.0.1:{port}")),
        &metrics,
    )
    .unwrap();
    let sent: Vec<Span> = (0..10).flat_map(request_spans).collect();
    submit_all(&traces, &sent);
    receiver
        .wait_for_spans(sent.len(), Duration::from_secs(15))
        .await;
    sleep(Duration::from_millis(300)).await;
    drop(rotel);
    let requests = receiver.stop().await;
    check_received(&sent, &requests.lock().unwrap());
    assert_eq!(metrics.spans_exported.get(), sent.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_accepts_grpc_export() {
    through_rotel(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_accepts_http_protobuf_export() {
    through_rotel(Protocol::HttpProtobuf).await;
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// While the collector is down the queue is the only buffer: it never passes its bound,
/// every span is either exported or counted as dropped, and export resumes when the
/// collector comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_keeps_memory_bounded_and_counts_drops() {
    const QUEUE: usize = 256;
    const WHILE_DOWN: u32 = 100_000;
    let port = free_port();
    let receiver = Receiver::grpc(port).await;
    let metrics = SelfMetrics::default();
    let cfg = TraceConfig {
        queue_capacity: QUEUE,
        max_batch: 64,
        batch_timeout: Duration::from_millis(50),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        store_max_spans: 1000,
        ..config(Protocol::Grpc, format!("http://127.0.0.1:{port}"))
    };
    let traces = start(&cfg, &metrics).unwrap();
    let before: Vec<Span> = (0..10).flat_map(request_spans).collect();
    submit_all(&traces, &before);
    receiver
        .wait_for_spans(before.len(), Duration::from_secs(10))
        .await;
    let requests = receiver.stop().await;

    let rss_before = rss_bytes();
    let mut submitted = before.len() as u64;
    let mut max_queued = 0;
    for n in 0..WHILE_DOWN {
        for s in request_spans(1000 + n) {
            traces.sink.submit(s);
            submitted += 1;
            max_queued = max_queued.max(traces.sink.queued());
        }
        if n % 2000 == 0 {
            // Let the batcher run its failing attempts meanwhile.
            sleep(Duration::from_millis(5)).await;
        }
    }
    let rss_after = rss_bytes();
    assert!(max_queued <= QUEUE, "queue reached {max_queued}");
    let stored = traces.store.span_count();
    assert!(
        (997..=1000).contains(&stored),
        "the store holds {stored} spans"
    );
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!(
        "{} spans submitted while the collector was down: queue at most {max_queued}, resident \
         memory {} -> {} KiB (+{} KiB), dropped queue_full {}",
        3 * WHILE_DOWN,
        rss_before / 1024,
        rss_after / 1024,
        growth / 1024,
        dropped(&metrics, DROPPED_QUEUE_FULL)
    );
    assert!(growth < 32 << 20, "memory grew by {growth} bytes");
    assert!(dropped(&metrics, DROPPED_QUEUE_FULL) > 0);
    // What was queued fails its attempts and is counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while traces.sink.queued() > 0 || metrics.spans_queued.get() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue does not drain"
        );
        sleep(Duration::from_millis(50)).await;
    }
    sleep(Duration::from_secs(2)).await;
    assert!(dropped(&metrics, DROPPED_EXPORT_FAILED) > 0);
    assert_eq!(
        metrics.spans_exported.get()
            + dropped(&metrics, DROPPED_QUEUE_FULL)
            + dropped(&metrics, DROPPED_EXPORT_FAILED),
        submitted,
        "every span exported or counted as dropped"
    );

    // The collector returns on the same address: export resumes.
    let receiver = Receiver::grpc_into(port, requests).await;
    let exported_before = metrics.spans_exported.get();
    let after = request_spans(7_000_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        submit_all(&traces, &after);
        sleep(Duration::from_millis(300)).await;
        if metrics.spans_exported.get() > exported_before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "export did not resume"
        );
    }
    let requests = receiver.stop().await;
    let got = requests.lock().unwrap();
    let ids: Vec<Vec<u8>> = spans(&got).map(|s| s.span_id.clone()).collect();
    assert!(ids.contains(&after[0].span_id.to_vec()));
}

/// A collector that takes 300 ms per request: the queue fills, stays at its bound, the excess
/// is counted, and what was accepted is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_collector_keeps_the_queue_bounded() {
    const QUEUE: usize = 128;
    let port = free_port();
    let receiver = Receiver::grpc_with(port, Requests::default(), Duration::from_millis(300)).await;
    let metrics = SelfMetrics::default();
    let cfg = TraceConfig {
        queue_capacity: QUEUE,
        max_batch: 32,
        batch_timeout: Duration::from_millis(20),
        ..config(Protocol::Grpc, format!("http://127.0.0.1:{port}"))
    };
    let traces = start(&cfg, &metrics).unwrap();
    let mut submitted = 0u64;
    let mut max_queued = 0;
    for n in 0..2_000 {
        for s in request_spans(n) {
            traces.sink.submit(s);
            submitted += 1;
            max_queued = max_queued.max(traces.sink.queued());
        }
        if n % 100 == 0 {
            sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(max_queued <= QUEUE, "queue reached {max_queued}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let accounted = metrics.spans_exported.get()
            + dropped(&metrics, DROPPED_QUEUE_FULL)
            + dropped(&metrics, DROPPED_EXPORT_FAILED);
        if accounted == submitted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{accounted} of {submitted} spans exported or counted as dropped"
        );
        sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped(&metrics, DROPPED_QUEUE_FULL) > 0);
    assert_eq!(dropped(&metrics, DROPPED_EXPORT_FAILED), 0);
    let exported = metrics.spans_exported.get() as usize;
    assert!(exported > 0);
    let requests = receiver.stop().await;
    let received = span_count(&requests.lock().unwrap());
    assert_eq!(received, exported, "received what was counted as exported");
}

/// End to end: the real agent watching a chain of two Go services exports each request's
/// spans to an OTLP receiver over gRPC, the same spans (ids, parents, names) as its built-in
/// store shows, with each process's resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_exports_traces_of_real_services() {
    use obs_integration_tests::{go_app, Agent, GoServer, GoVersion};

    let port = free_port();
    let receiver = Receiver::grpc(port).await;
    let bin = go_app("gochain", GoVersion::New);
    let back = GoServer::chain_link(&bin, "otlp-back", None, &[]);
    let front = GoServer::chain_link(&bin, "otlp-front", Some(&back), &["-calls", "a=1,fail=1"]);
    let pids = [front.proc.pid(), back.proc.pid()];
    let endpoint = format!("http://127.0.0.1:{port}");
    let agent = tokio::task::spawn_blocking(move || {
        Agent::for_pids_with(
            &pids,
            &["--otlp-endpoint", &endpoint, "--otlp-protocol", "grpc"],
        )
    })
    .await
    .unwrap();
    let trace_id = "5af7651916cd43dd8448eb211c80319c";
    let front_url = front.url("/work");
    tokio::task::spawn_blocking(move || {
        ureq::get(&front_url)
            .set("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))
            .call()
            .expect("front")
    })
    .await
    .unwrap();
    // front server, two front clients, two back servers.
    receiver.wait_for_spans(5, Duration::from_secs(15)).await;
    let requests = receiver.stop().await;
    let requests = requests.lock().unwrap().clone();

    let mut exported = BTreeMap::new();
    for rs in requests.iter().flat_map(|r| &r.resource_spans) {
        let resource = attributes(&rs.resource.as_ref().unwrap().attributes);
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            assert_eq!(hex(&span.trace_id), trace_id);
            exported.insert(
                hex(&span.span_id),
                (
                    hex(&span.parent_span_id),
                    span.name.clone(),
                    resource["service.name"].clone(),
                ),
            );
        }
    }
    let stored = tokio::task::block_in_place(|| agent.trace_spans(trace_id))
        .expect("the agent's stored trace");
    let stored: BTreeMap<String, (String, String, Value)> = stored
        .iter()
        .map(|s| {
            (
                s["span_id"].as_str().unwrap().to_owned(),
                (
                    s["parent_span_id"].as_str().unwrap_or("").to_owned(),
                    s["name"].as_str().unwrap().to_owned(),
                    Value::Str(s["resource"]["service.name"].as_str().unwrap().to_owned()),
                ),
            )
        })
        .collect();
    assert_eq!(exported.len(), 5, "{exported:#?}");
    assert_eq!(exported, stored);
    let services: Vec<_> = exported.values().map(|(_, _, s)| s.clone()).collect();
    assert_eq!(
        services
            .iter()
            .filter(|s| **s == Value::Str("otlp-back".into()))
            .count(),
        2
    );
}
