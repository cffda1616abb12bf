//! A real Prometheus server scrapes the agent; PromQL over its data returns the counts the
//! client sent. `promtool check metrics` accepts the agent's exposition.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use obs_integration_tests::{
    load::{drive, Call},
    prometheus::Prometheus,
    wait_for, Agent, GoServer, GoVersion,
};

#[test]
fn prometheus_query_returns_exact_counts() {
    let server = GoServer::named("goserver", GoVersion::Old, "promsvc");
    let agent = Agent::for_pids(&[server.proc.pid()]);
    let prometheus = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: obs-agent\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            agent.port
        ),
        &[],
    );

    let mut calls = Vec::new();
    for n in 0..200 {
        calls.push(Call::new("GET", "/hello", "/hello", 200));
        calls.push(Call::new("PUT", format!("/items/{n}"), "/items/{id}", 201));
        if n % 4 == 0 {
            calls.push(Call::new("GET", "/fail", "/fail", 500));
        }
    }
    let client = drive(&server.url(""), &calls, 8);
    assert!(client.failures.is_empty());

    let query = "sum by (http_request_method, http_route, http_response_status_code) \
                 (http_server_request_duration_seconds_count{service_name=\"promsvc\"})";
    let api = prometheus.url("/api/v1/query");
    let mut last = None;
    let got = wait_for(Duration::from_secs(60), || {
        let body = ureq::get(&api)
            .query("query", query)
            .call()
            .ok()?
            .into_string()
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let mut counts = std::collections::BTreeMap::new();
        for r in v["data"]["result"].as_array()? {
            let m = &r["metric"];
            let key = format!(
                "{} {} {}",
                m["http_request_method"].as_str()?,
                m["http_route"].as_str()?,
                m["http_response_status_code"].as_str()?
            );
            let value: f64 = r["value"][1].as_str()?.parse().ok()?;
            counts.insert(key, value as u64);
        }
        last = Some(counts.clone());
        (counts == client.counts).then_some(counts)
    });
    assert_eq!(
        got.as_ref(),
        Some(&client.counts),
        "Prometheus last answered {last:?}"
    );
}

#[test]
fn promtool_accepts_the_exposition() {
    let server = GoServer::start("goserver", GoVersion::Old, &[]);
    let agent = Agent::for_pids(&[server.proc.pid()]);
    ureq::get(&server.url("/hello")).call().unwrap();
    ureq::get(&server.url("/fail")).call().err();
    std::thread::sleep(Duration::from_millis(200));
    let body = ureq::get(&agent.metrics_url())
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(body.contains("http_server_request_duration_seconds_bucket"));
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n--- exposition:\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
