//! The exact-count test across the ways Go services ship: every supported Go release
//! (1.19 … 1.27) × build mode (default; stripped; stripped PIE; stripped cgo with external
//! linking; stripped cgo PIE with external linking). One agent watches every server of a build mode at once; each server gets a known
//! mix, and the agent's per (method, route, status) counts must equal the client's, with
//! ServeMux patterns as routes on Go 1.22+ (read through the offsets table when the binary
//! has no DWARF, with functions found through .gopclntab when it has no symbols).
//!
//! All 40 combinations run in CI: once built (cached under target/test-apps/), the matrix
//! takes about 30 s; from a cold Go build cache about 2 minutes.

use std::time::Duration;

const SLOW_MS: u64 = 120;
const SLOW_CALLS: usize = 3;

use obs_integration_tests::{
    go_build,
    load::{drive, Call},
    toolchains, Agent, BuildMode, GoServer, Toolchain,
};

fn mix(toolchain: &Toolchain) -> Vec<Call> {
    let patterns = toolchain.has_patterns();
    let items = if patterns { "/items/" } else { "/items/{id}" };
    let mut calls = Vec::new();
    for n in 0..30 {
        for _ in 0..3 {
            calls.push(Call::new("GET", "/hello", "/hello", 200));
        }
        calls.push(Call::new("GET", format!("/items/{}", n * 13), items, 200));
        calls.push(Call::new("PUT", format!("/items/{n}"), items, 201));
        calls.push(Call::new("DELETE", format!("/items/{n}"), items, 404));
        calls.push(Call::new("POST", "/create", "/create", 201));
        calls.push(Call::new("GET", "/fail", "/fail", 500));
        calls.push(Call::new("GET", "/implicit", "/implicit", 200));
        if patterns {
            calls.push(Call::new(
                "GET",
                format!("/v2/items/w-{n}"),
                "/v2/items/{name}",
                200,
            ));
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

fn exact_counts_in_mode(mode: BuildMode) {
    let releases = toolchains();
    let servers: Vec<(Toolchain, String, GoServer)> = releases
        .into_iter()
        .map(|t| {
            let service = format!("matrix-go{}-{}", t.minor, mode.name());
            let bin = go_build("goserver", &t, mode);
            let server = GoServer::start_bin(&bin, &[("OTEL_SERVICE_NAME", &service)]);
            (t, service, server)
        })
        .collect();
    let pids: Vec<u32> = servers.iter().map(|(_, _, s)| s.proc.pid()).collect();
    let agent = Agent::for_pids(&pids);
    // Every server is watched (none refused) before load starts.
    let watched = agent.wait_for_sum(
        "obs_agent_processes_watched",
        &[],
        servers.len() as f64,
        Duration::from_secs(20),
    );
    assert!(
        watched.is_some(),
        "{} of {} servers watched; agent log:\n{}",
        agent.scrape().sum("obs_agent_processes_watched", &[]),
        servers.len(),
        agent.log()
    );

    let mut failures = Vec::new();
    for (toolchain, service, server) in &servers {
        let calls = mix(toolchain);
        let client = drive(&server.url(""), &calls, 8);
        assert!(client.failures.is_empty(), "{:?}", &client.failures[..1]);
        let counted = agent
            .scrape_when_counted(client.total(), |s| s.server_counts(service))
            .server_counts(service);
        // The server's own count (its /_stats request is not in it, nor in the agent's yet).
        let served: u64 = server.served().values().sum();
        if served != client.total() {
            failures.push(format!(
                "Go {} {}: server served {served}, client sent {}",
                toolchain.minor,
                mode.name(),
                client.total()
            ));
        }
        if counted != client.counts {
            failures.push(format!(
                "Go {} {}: agent {counted:?}\n  client {:?}",
                toolchain.minor,
                mode.name(),
                client.counts
            ));
        }
        let samples = agent.scrape();
        // Slow requests in the right histogram buckets.
        let bucket = |le: &str| {
            samples.sum(
                "http_server_request_duration_seconds_bucket",
                &[
                    ("service_name", service.as_str()),
                    ("http_route", "/slow"),
                    ("le", le),
                ],
            )
        };
        if (bucket("0.1"), bucket("0.25")) != (0.0, SLOW_CALLS as f64) {
            failures.push(format!(
                "Go {} {}: {SLOW_MS} ms requests in buckets le=0.1: {}, le=0.25: {}",
                toolchain.minor,
                mode.name(),
                bucket("0.1"),
                bucket("0.25")
            ));
        }
        let info = samples.target_info(service);
        let go_version = info.first().map(|s| s.labels["go_version"].clone());
        let want = format!("go{}.", toolchain.minor);
        if !go_version.as_deref().is_some_and(|v| v.starts_with(&want)) {
            failures.push(format!(
                "Go {} {}: target_info go_version {go_version:?}",
                toolchain.minor,
                mode.name()
            ));
        }
    }
    let samples = agent.scrape();
    assert_eq!(samples.sum("obs_agent_events_lost_total", &[]), 0.0);
    assert!(
        failures.is_empty(),
        "{}\nagent log:\n{}",
        failures.join("\n"),
        agent.log()
    );
}

#[test]
fn exact_counts_default_builds() {
    exact_counts_in_mode(BuildMode::Default);
}

#[test]
fn exact_counts_stripped_builds() {
    exact_counts_in_mode(BuildMode::Stripped);
}

#[test]
fn exact_counts_stripped_pie_builds() {
    exact_counts_in_mode(BuildMode::Pie);
}

#[test]
fn exact_counts_stripped_cgo_external_builds() {
    exact_counts_in_mode(BuildMode::CgoExternal);
}

#[test]
fn exact_counts_stripped_pie_external_builds() {
    exact_counts_in_mode(BuildMode::PieExternal);
}
