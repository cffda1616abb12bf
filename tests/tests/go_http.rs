//! Exact RED metrics for unmodified Go net/http servers, for Go 1.19 and a Go 1.22+ release:
//! the agent's per (method, route, status) counts equal what the client sent and what the
//! server itself counted; slow requests land in the right buckets; sums agree with the
//! client's timings.

use std::time::Duration;

use obs_integration_tests::{
    load::{drive, Call},
    Agent, GoServer, GoVersion,
};

const SLOW_MS: u64 = 120;
const SLOW_CALLS: usize = 16;

/// The mix: routes with and without ids, GET/POST/PUT/DELETE, 200/201/404/500, a handler
/// that never calls WriteHeader, one that writes nothing, a slow route, and (Go 1.22+) a
/// ServeMux pattern route.
fn mix(version: GoVersion) -> Vec<Call> {
    // With Go 1.22+ every ServeMux registration is a pattern: "/items/" matches /items/N.
    let items = if version.has_patterns() {
        "/items/"
    } else {
        "/items/{id}"
    };
    let mut calls = Vec::new();
    for n in 0..100 {
        for _ in 0..6 {
            calls.push(Call::new("GET", "/hello", "/hello", 200));
        }
        for k in 0..4 {
            calls.push(Call::new(
                "GET",
                format!("/items/{}", n * 10 + k),
                items,
                200,
            ));
        }
        for k in 0..3 {
            calls.push(Call::new(
                "PUT",
                format!("/items/{}", n * 7 + k),
                items,
                201,
            ));
        }
        calls.push(Call::new("DELETE", format!("/items/{n}"), items, 404));
        for _ in 0..3 {
            calls.push(Call::new("POST", "/create", "/create", 201));
        }
        calls.push(Call::new("GET", format!("/missing?n={n}"), "/missing", 404));
        calls.push(Call::new("GET", "/missing", "/missing", 404));
        calls.push(Call::new("GET", "/fail", "/fail", 500));
        calls.push(Call::new("GET", "/fail", "/fail", 500));
        calls.push(Call::new("GET", "/implicit", "/implicit", 200));
        calls.push(Call::new("GET", "/empty", "/empty", 200));
        if version.has_patterns() {
            for k in 0..3 {
                calls.push(Call::new(
                    "GET",
                    format!("/v2/items/widget-{n}-{k}"),
                    "/v2/items/{name}",
                    200,
                ));
            }
        }
    }
    for _ in 0..SLOW_CALLS {
        calls.push(Call::new(
            "GET",
            format!("/slow?ms={SLOW_MS}"),
            "/slow",
            200,
        ));
    }
    calls
}

fn exact_counts(version: GoVersion) {
    let service = format!("goserver-{version:?}").to_lowercase();
    let server = GoServer::named("goserver", version, &service);
    let agent = Agent::for_pids(&[server.proc.pid()]);

    let calls = mix(version);
    let client = drive(&server.url(""), &calls, 16);
    assert!(
        client.failures.is_empty(),
        "client failures: {:?}",
        &client.failures[..client.failures.len().min(5)]
    );
    assert_eq!(client.total(), calls.len() as u64);

    // Events reach the metrics within the reader's drain interval; wait for the total.
    let samples =
        agent.scrape_when_counted(client.total(), |s| s.server_counts_without_stats(&service));
    let counted = samples.server_counts_without_stats(&service);
    assert_eq!(
        counted,
        client.counts,
        "agent vs client, per method/route/status; agent log:\n{}",
        agent.log()
    );

    // The server's own counters (keyed by its own route names) agree in total and per status.
    let served = server.served();
    let served_total: u64 = served
        .iter()
        .filter(|(k, _)| !k.contains("/_stats"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(served_total, client.total(), "server's own count");

    // Slow requests: none at or below 0.1 s, all at or below 0.25 s.
    let slow = [("service_name", service.as_str()), ("http_route", "/slow")];
    let bucket = |le: &str| {
        let mut with = slow.to_vec();
        with.push(("le", le));
        samples.sum("http_server_request_duration_seconds_bucket", &with)
    };
    assert_eq!(
        bucket("0.1"),
        0.0,
        "a {SLOW_MS} ms request fell in the 0.1 s bucket"
    );
    assert_eq!(bucket("0.25"), SLOW_CALLS as f64);
    assert_eq!(bucket("+Inf"), SLOW_CALLS as f64);

    // Sums: the server-side duration of each slow call is at least the sleep and at most what
    // the client waited (which includes connection set-up and transfer).
    let agent_sum = samples.sum("http_server_request_duration_seconds_sum", &slow);
    let client_sum = client.seconds["GET /slow 200"];
    let floor = SLOW_CALLS as f64 * SLOW_MS as f64 / 1000.0;
    assert!(agent_sum >= floor, "agent sum {agent_sum} < {floor}");
    assert!(
        agent_sum <= client_sum,
        "agent sum {agent_sum} > client's {client_sum}"
    );
    // And in total the server-side time is within the client's (tolerance: the client's).
    let all_agent = samples.sum(
        "http_server_request_duration_seconds_sum",
        &[("service_name", &service)],
    );
    let all_client: f64 = client.seconds.values().sum();
    assert!(
        all_agent > 0.0 && all_agent <= all_client,
        "agent total {all_agent} vs client {all_client}"
    );

    // Self metrics: nothing lost, nothing undecodable, one process, two probes.
    assert_eq!(samples.sum("obs_agent_events_lost_total", &[]), 0.0);
    assert_eq!(samples.sum("obs_agent_decode_errors_total", &[]), 0.0);
    assert_eq!(samples.sum("obs_agent_processes_watched", &[]), 1.0);
    // The two shared syscall programs; the mux-discovery uprobe detaches itself.
    assert!(samples.sum("obs_agent_probes_attached", &[]) >= 2.0);
    assert_eq!(
        samples.sum("http_server_active_requests", &[("service_name", &service)]),
        0.0
    );
    let info = samples.target_info(&service);
    assert_eq!(info.len(), 1);
    let want_go = if version == GoVersion::Old {
        "go1.19"
    } else {
        "go1.2"
    };
    assert!(
        info[0].labels["go_version"].starts_with(want_go),
        "{:?}",
        info[0].labels
    );
}

#[test]
fn exact_counts_go_1_19() {
    exact_counts(GoVersion::Old);
}

#[test]
fn exact_counts_newer_go_with_patterns() {
    exact_counts(GoVersion::New);
}

#[test]
fn active_requests_gauge_counts_in_flight_requests() {
    let server = GoServer::named("goserver", GoVersion::Old, "inflight");
    let agent = Agent::for_pids(&[server.proc.pid()]);
    let url = server.url("/slow?ms=1500");
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let u = url.clone();
            std::thread::spawn(move || ureq::get(&u).call().map(|_| ()).map_err(|e| e.to_string()))
        })
        .collect();
    let active = "http_server_active_requests";
    let inflight = [("service_name", "inflight")];
    let seen = agent.wait_for_sum(active, &inflight, 3.0, Duration::from_secs(1));
    for h in handles {
        h.join().unwrap().unwrap();
    }
    assert!(seen.is_some(), "three slow requests in flight");
    let after = agent.wait_for_sum(active, &inflight, 0.0, Duration::from_secs(5));
    assert!(after.is_some(), "no request in flight after");
}

#[test]
fn ids_in_paths_never_become_label_values() {
    let server = GoServer::named("goserver", GoVersion::Old, "ids");
    let agent = Agent::for_pids(&[server.proc.pid()]);
    let calls: Vec<Call> = (0..300)
        .map(|n| {
            Call::new(
                "GET",
                format!("/items/{}", 1_000_000 + n * 7919),
                "/items/{id}",
                200,
            )
        })
        .chain((0..50).map(|n| {
            Call::new(
                "GET",
                format!("/items/9f8e7d6c5b4a{n:04}"),
                "/items/{id}",
                200,
            )
        }))
        .chain((0..20).map(|n| {
            Call::new(
                "GET",
                format!("/items/123e4567-e89b-12d3-a456-4266141740{n:02}"),
                "/items/{id}",
                200,
            )
        }))
        .collect();
    let client = drive(&server.url(""), &calls, 4);
    assert!(client.failures.is_empty());
    let counts = agent
        .scrape_when_counted(370, |s| s.server_counts_without_stats("ids"))
        .server_counts_without_stats("ids");
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts["GET /items/{id} 200"], 370);
}
