//! deploy/prometheus: the rule files pass `promtool check rules`, yamllint and the repository's
//! own promtool unit tests (deploy/prometheus/tests); and a real Prometheus loads them, evaluates
//! every rule without error over the real agent's metrics of a Go service, and its page alerts go
//! pending on a real burst of 5xx and on a real burst of slow requests, its agent-down alert when
//! the agent stops.
//!
//! The live run loads a copy of the rule files with shorter windows (5m -> 5s, 1h -> 20s, ...,
//! see `TEST_WINDOWS`), made by substitution from the real files; their `for:` durations are
//! kept, which is what leaves the alerts pending. With the real windows the burst would have to
//! last about five minutes, the hour's share of errors needing that long to reach 14.4 x 0.1%.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use obs_integration_tests::{
    manifests::check, prometheus::Prometheus, tempdir, wait_for, workspace_root, Agent, GoServer,
    GoVersion,
};

/// Each window of the rule files and what the live run uses instead (in the same order, so
/// that a longer window stays longer).
const TEST_WINDOWS: [(&str, &str); 8] = [
    ("[5m]", "[5s]"),
    ("[10m]", "[8s]"),
    ("[30m]", "[10s]"),
    ("[1h]", "[20s]"),
    ("[2h]", "[30s]"),
    ("[6h]", "[40s]"),
    ("[1d]", "[60s]"),
    ("[3d]", "[90s]"),
];

fn rules_dir() -> PathBuf {
    workspace_root().join("deploy/prometheus/rules")
}

fn rule_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(rules_dir())
        .expect("deploy/prometheus/rules")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule files");
    files
}

#[test]
fn promtool_accepts_the_rule_files() {
    let mut promtool = Command::new("promtool");
    promtool.args(["check", "rules"]).args(rule_files());
    let out = check(promtool);
    assert_eq!(out.matches("SUCCESS").count(), rule_files().len(), "{out}");
}

#[test]
fn the_rules_pass_their_promtool_unit_tests() {
    let mut tests: Vec<PathBuf> =
        std::fs::read_dir(workspace_root().join("deploy/prometheus/tests"))
            .expect("deploy/prometheus/tests")
            .map(|e| e.unwrap().path())
            .collect();
    tests.sort();
    let mut promtool = Command::new("promtool");
    promtool.args(["test", "rules"]).args(&tests);
    let out = check(promtool);
    assert_eq!(out.matches("SUCCESS").count(), tests.len(), "{out}");
}

#[test]
fn the_rule_files_pass_yamllint() {
    let tools = PathBuf::from(std::env::var_os("OBS_MANIFEST_TOOLS").expect(
        "OBS_MANIFEST_TOOLS is not set: run the integration tests through `cargo xtask test`",
    ));
    let mut yamllint = Command::new(tools.join("bin/yamllint"));
    yamllint
        .env("PYTHONPATH", &tools)
        .arg("--strict")
        .arg("--config-file")
        .arg(workspace_root().join("deploy/.yamllint.yaml"))
        .args(rule_files());
    check(yamllint);
}

/// The rule files with `TEST_WINDOWS`' windows, written into `dir`. Every window of the files
/// must be one of them (else the copy would keep a real one).
fn shortened_rules(dir: &Path) {
    for file in rule_files() {
        let mut text = std::fs::read_to_string(&file).unwrap();
        for (real, short) in TEST_WINDOWS {
            text = text.replace(real, short);
        }
        for (at, _) in text.match_indices('[') {
            let window = &text[at..at + text[at..].find(']').unwrap() + 1];
            assert!(
                TEST_WINDOWS.iter().any(|(_, short)| *short == window),
                "{}: window {window} is not in TEST_WINDOWS",
                file.display()
            );
        }
        std::fs::write(dir.join(file.file_name().unwrap()), text).unwrap();
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The one value of an instant query, if it returns exactly one series.
fn value(prometheus: &Prometheus, expr: &str) -> Option<f64> {
    match prometheus.query(expr, now()).ok()?.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// Active alerts: (name, state, labels).
fn alerts(prometheus: &Prometheus) -> Vec<(String, String, serde_json::Value)> {
    let data = prometheus.api("/api/v1/alerts", &[]).expect("alerts");
    data["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                a["state"].as_str().unwrap_or("").to_owned(),
                a["labels"].clone(),
            )
        })
        .collect()
}

/// Waits for alert `name` to be pending (or firing) with `labels`; panics with what is active.
fn wait_pending(prometheus: &Prometheus, name: &str, labels: &[(&str, &str)], within: Duration) {
    let found = wait_for(within, || {
        alerts(prometheus).into_iter().find(|(n, state, l)| {
            n == name
                && (state == "pending" || state == "firing")
                && labels.iter().all(|(k, v)| l[k] == *v)
        })
    });
    let (_, state, labels) = found.unwrap_or_else(|| {
        panic!(
            "{name} {labels:?} did not go pending within {within:?}; active: {:?}",
            alerts(prometheus)
        )
    });
    println!("{name} {state}: {labels}");
}

/// Requests `path` from `threads` threads, each waiting `pause` between requests, until
/// `stop`.
fn load(server: &GoServer, path: &str, threads: usize, pause: Duration, stop: &AtomicBool) {
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build();
                while !stop.load(Ordering::Relaxed) {
                    // 5xx come back as errors: expected here.
                    let _ = agent.get(&server.url(path)).call();
                    std::thread::sleep(pause);
                }
            });
        }
    });
}

/// Runs `burst` beside the baseline until `until` holds or 40 s pass.
fn burst(server: &GoServer, path: &str, threads: usize, pause: Duration, until: impl FnOnce()) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| load(server, path, threads, pause, &stop));
        // Bounded: the burst stops when the alert is seen, or when `until` gives up.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(until));
        stop.store(true, Ordering::Relaxed);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    });
}

#[test]
fn page_alerts_go_pending_on_real_bursts_of_errors_and_slow_requests() {
    let service = "checkout";
    let server = GoServer::named("goserver", GoVersion::New, service);
    let agent = Agent::for_pids(&[server.proc.pid()]);
    let rules = tempdir();
    shortened_rules(&rules);
    let prometheus = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}/*.yaml\n\
             scrape_configs:\n  - job_name: obs-agent\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            rules.display(),
            agent.port
        ),
        &[],
    );

    // Baseline: 40 good requests a second throughout.
    let baseline_stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            load(
                &server,
                "/hello",
                1,
                Duration::from_millis(25),
                &baseline_stop,
            )
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_baseline(&prometheus, &server, service)
        }));
        baseline_stop.store(true, Ordering::Relaxed);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    });

    // The agent stops: Prometheus cannot scrape it, the agent-down alert goes pending (5m).
    let instance = format!("127.0.0.1:{}", agent.port);
    drop(agent);
    wait_pending(
        &prometheus,
        "ObsAgentDown",
        &[("instance", instance.as_str()), ("severity", "ticket")],
        Duration::from_secs(20),
    );
}

fn with_baseline(prometheus: &Prometheus, server: &GoServer, service: &str) {
    let selector = format!(r#"{{service_name="{service}"}}"#);
    // Every window's ratios are recorded: no error, (nearly) no request slower than 0.5 s.
    let steady = wait_for(Duration::from_secs(60), || {
        let ratio = value(
            prometheus,
            &format!("service:http_server_request_errors:ratio_rate3d{selector}"),
        )?;
        let slow = value(
            prometheus,
            &format!("service:http_server_request_slow:ratio_rate3d{selector}"),
        )?;
        (ratio == 0.0 && slow < 0.01).then_some(())
    });
    assert!(
        steady.is_some(),
        "no SLO ratios for {service}; rules: {:?}",
        prometheus.api("/api/v1/rules", &[])
    );
    assert_eq!(
        value(
            prometheus,
            &format!("service:slo_availability_objective:ratio{selector}")
        ),
        Some(0.999)
    );
    assert_eq!(
        value(
            prometheus,
            &format!(
                r#"service:slo_latency_threshold:seconds{{service_name="{service}",le="0.5"}}"#
            )
        ),
        Some(0.5)
    );
    assert_eq!(value(prometheus, "instance:obs_agent_up:max"), Some(1.0));

    // Every rule evaluates without error (a many-to-many match, say, would show here), and
    // every recording rule records something.
    let groups = prometheus.api("/api/v1/rules", &[]).expect("rules");
    let mut problems = Vec::new();
    let mut recorded = 0;
    for group in groups["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap();
            if rule["health"] != "ok" {
                problems.push(format!("{name}: {} {}", rule["health"], rule["lastError"]));
            }
            if rule["type"] == "recording" {
                recorded += 1;
                if prometheus.query(name, now()).map_or(true, |r| r.is_empty()) {
                    problems.push(format!("{name} records nothing"));
                }
            }
        }
    }
    assert!(recorded >= 20, "{recorded} recording rules loaded");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(alerts(prometheus), vec![], "alerts before any burst");

    // 40 requests a second answered 500 beside the 40 good ones: half of them fail, far above
    // 14.4 x 0.1% in both the long and the short window.
    burst(server, "/fail", 1, Duration::from_millis(25), || {
        wait_pending(
            prometheus,
            "SLOAvailabilityFastBurn",
            &[("service_name", service), ("severity", "page")],
            Duration::from_secs(40),
        )
    });

    // About 25 requests a second of 0.6 s beside the 40 quick ones: 40% slower than the 0.5 s
    // threshold, above 14.4 x 1%.
    burst(server, "/slow?ms=600", 16, Duration::ZERO, || {
        wait_pending(
            prometheus,
            "SLOLatencyFastBurn",
            &[("service_name", service), ("severity", "page")],
            Duration::from_secs(40),
        )
    });
}
