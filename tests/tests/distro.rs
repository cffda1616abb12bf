//! A Go program as a distribution ships it: Debian's Prometheus (/usr/bin/prometheus: built by
//! Debian's Go 1.19, stripped, cgo, 50 MB). Requests driven at it are counted by the agent
//! exactly as Prometheus counts them itself (`prometheus_http_requests_total{handler, code}`),
//! and its runtime's figures, read at globals found from code, are those its own Go client
//! library reports.

use std::{collections::BTreeMap, time::Duration};

use obs_integration_tests::{
    load::{drive, Call},
    metrics::{parse, Samples},
    prometheus::{Prometheus, PROMETHEUS},
    wait_for, Agent,
};

/// Prometheus's own counts: "ROUTE STATUS" -> n, from its /metrics.
fn own_counts(base: &str) -> BTreeMap<String, u64> {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()
        .expect("GET /metrics")
        .into_string()
        .unwrap();
    let mut counts = BTreeMap::new();
    for s in parse(&text).matching("prometheus_http_requests_total", &[]) {
        let key = format!("{} {}", s.labels["handler"], s.labels["code"]);
        *counts.entry(key).or_default() += s.value as u64;
    }
    counts
}

/// Prometheus's own view of its runtime (client_golang): GC cycles completed
/// (`ReadGCStats`) and the heap goal (`MemStats.NextGC`).
fn own_runtime(base: &str) -> (f64, f64) {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()
        .expect("GET /metrics")
        .into_string()
        .unwrap();
    let samples = parse(&text);
    let value = |name: &str| {
        samples
            .matching(name, &[])
            .next()
            .unwrap_or_else(|| panic!("{name} missing from Prometheus's /metrics"))
            .value
    };
    (
        value("go_gc_duration_seconds_count"),
        value("go_memstats_next_gc_bytes"),
    )
}

#[test]
fn debian_prometheus_is_counted_as_it_counts_itself() {
    let file = std::process::Command::new("file")
        .arg(PROMETHEUS)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        file.contains("stripped") && !file.contains("not stripped"),
        "{PROMETHEUS} is expected to be a stripped distribution binary: {file}"
    );

    let prometheus = Prometheus::start(
        "global:\n  scrape_interval: 1h\nscrape_configs: []\n",
        &[("OTEL_SERVICE_NAME", "debian-prometheus")],
    );
    let base = prometheus.url("");
    let ready = wait_for(Duration::from_secs(30), || {
        ureq::get(&format!("{base}/-/ready")).call().ok()
    });
    assert!(ready.is_some(), "prometheus did not become ready");

    let agent = Agent::for_pids(&[prometheus.proc.pid()]);
    let before = own_counts(&base);

    let mut calls = Vec::new();
    for n in 0..40 {
        calls.push(Call::new(
            "GET",
            format!("/api/v1/query?query=up+%2B+{n}"),
            "/api/v1/query",
            200,
        ));
        calls.push(Call::new("GET", "/-/healthy", "/-/healthy", 200));
        calls.push(Call::new("GET", "/api/v1/labels", "/api/v1/labels", 200));
        // No `query` parameter: Prometheus answers 400 (bad_data).
        calls.push(Call::new("GET", "/api/v1/query", "/api/v1/query", 400));
        calls.push(Call::new(
            "GET",
            "/api/v1/status/buildinfo",
            "/api/v1/status/buildinfo",
            200,
        ));
    }
    let client = drive(&base, &calls, 4);
    assert!(client.failures.is_empty(), "{:?}", client.failures);
    let after = own_counts(&base);

    // Prometheus counts a request after answering it: `after` includes the first /metrics
    // request but not itself; the agent saw both.
    let mut own: BTreeMap<String, u64> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    *own.entry("/metrics 200".into()).or_default() += 1;
    let total: u64 = own.values().sum();

    let counted = agent
        .scrape_when_counted(total, |s| s.server_counts("debian-prometheus"))
        .server_counts("debian-prometheus");
    // The agent's keys are "METHOD ROUTE STATUS"; Prometheus's have no method.
    let mut by_route = BTreeMap::new();
    for (key, n) in counted {
        let (_, route_status) = key.split_once(' ').unwrap();
        *by_route.entry(route_status.to_owned()).or_default() += n;
    }
    assert_eq!(
        by_route,
        own,
        "agent vs Prometheus's own counters; agent log:\n{}",
        agent.log()
    );
    // And both agree with the client (plus the test's two /metrics requests).
    assert_eq!(total, client.total() + 2);

    let samples = agent.scrape();
    let with = [("service_name", "debian-prometheus")];
    let info = samples.target_info("debian-prometheus");
    assert_eq!(info.len(), 1);
    assert!(info[0].labels["go_version"].starts_with("go1."));
    // Debian builds in GOPATH mode: a main package, no module.
    assert_eq!(
        info[0].labels["package"],
        "github.com/prometheus/prometheus/cmd/prometheus"
    );
    assert_eq!(info[0].labels["module"], "");

    // Its runtime's figures (no symbol table: the globals come from code) as it reports them,
    // from a scrape of the agent between two of Prometheus's own that agree (no GC cycle in
    // between).
    let (own, samples): ((f64, f64), Samples) = (0..5)
        .find_map(|_| {
            let first = own_runtime(&base);
            // The agent reads the runtime's state on its own timer; a scrape shows the last
            // read.
            std::thread::sleep(3 * obs_agent::agent::PACE_INTERVAL);
            let samples = agent.scrape();
            (own_runtime(&base) == first).then_some((first, samples))
        })
        .expect("Prometheus's GC did not settle");
    let agent_value = |name: &str| samples.sum(name, &with);
    assert_eq!(agent_value("go_gc_cycles_total"), own.0, "GC cycles");
    assert_eq!(agent_value("go_gc_heap_goal_bytes"), own.1, "heap goal");
}
