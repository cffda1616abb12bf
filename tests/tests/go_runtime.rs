//! Go runtime metrics against the runtime's own figures: a Go program (tests/apps/goruntime)
//! reports its runtime/metrics and is driven through phases (10,000 goroutines spawned and
//! exited, forced GC cycles, panics recovered); at each quiescent point the agent's
//! `go_goroutines`, `go_gc_cycles_total`, `go_gc_pause_seconds_count`, heap figures and
//! goroutine/panic counts by function equal the program's own, for default and stripped
//! builds (whose runtime globals are found from code) in every build mode. Also: attaching
//! to a process that has been running for a while, and a process that dies of an unrecovered
//! panic.

use std::{collections::BTreeMap, thread::sleep, time::Duration};

use obs_integration_tests::{
    go_build, metrics::Samples, toolchain, toolchains, wait_for, Agent, BuildMode, GoServer,
    GoVersion, Toolchain,
};
use serde_json::Value;

/// One request on a fresh connection, closed after (so no connection goroutine outlives it).
fn get(app: &GoServer, path: &str) {
    ureq::get(&app.url(path))
        .set("Connection", "close")
        .timeout(Duration::from_secs(60))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
}

/// Asks the program for a sample of its own figures, taken once this request's goroutines
/// are gone; returns when it has been taken.
fn take_sample(app: &GoServer) {
    get(app, "/sample");
    sleep(Duration::from_millis(600));
}

/// The latest sample (fetching it starts goroutines: after the agent's scrape).
fn fetch_sample(app: &GoServer) -> BTreeMap<String, Value> {
    let body = ureq::get(&app.url("/stats"))
        .set("Connection", "close")
        .call()
        .expect("GET /stats")
        .into_string()
        .unwrap();
    serde_json::from_str(&body).expect("stats JSON")
}

/// Figures only a GC cycle changes.
fn gc_figures(stats: &BTreeMap<String, Value>) -> Vec<Option<&Value>> {
    [
        "/gc/cycles/total:gc-cycles",
        "/gc/pauses:seconds#count",
        "/gc/heap/goal:bytes",
        "/gc/heap/live:bytes",
    ]
    .iter()
    .map(|k| stats.get(*k))
    .collect()
}

/// The program's own figures and the agent's scrape in the same quiescent state: nothing
/// runs between the sample and the scrape, and a later sample shows that no GC cycle (which
/// the runtime may start on its own) completed in between; else another try.
fn quiescent(app: &GoServer, agent: &Agent) -> (BTreeMap<String, Value>, Samples) {
    for _ in 0..5 {
        take_sample(app);
        // The agent reads the runtime's state on its own timer; a scrape shows the last read.
        std::thread::sleep(3 * obs_agent::agent::PACE_INTERVAL);
        let samples = agent.scrape();
        let stats = fetch_sample(app);
        take_sample(app);
        if gc_figures(&fetch_sample(app)) == gc_figures(&stats) {
            return (stats, samples);
        }
    }
    panic!("the program's GC did not settle");
}

fn own(stats: &BTreeMap<String, Value>, name: &str) -> f64 {
    stats
        .get(name)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{name} missing from {stats:?}"))
}

struct Checked<'a> {
    agent: &'a Agent,
    pid: String,
    service: &'a str,
    minor: u32,
}

impl Checked<'_> {
    fn value(&self, samples: &Samples, name: &str, extra: &[(&str, &str)]) -> f64 {
        let mut with = vec![("pid", self.pid.as_str()), ("service_name", self.service)];
        with.extend_from_slice(extra);
        let found: Vec<_> = samples.matching(name, &with).collect();
        assert_eq!(
            found.len(),
            1,
            "{name}{extra:?}: {found:?}; agent log:\n{}",
            self.agent.log()
        );
        found[0].value
    }

    /// The agent's figures equal the runtime's own in this quiescent state.
    fn runtime_figures_match(&self, phase: &str, app: &GoServer) {
        let (stats, s) = quiescent(app, self.agent);
        let goroutines = self.value(&s, "go_goroutines", &[]);
        assert_eq!(
            goroutines,
            own(&stats, "num_goroutine"),
            "{phase}: go_goroutines vs runtime.NumGoroutine"
        );
        // From Go 1.26 /sched/goroutines counts system goroutines too (gcount(true)).
        if self.minor < 26 {
            assert_eq!(
                goroutines,
                own(&stats, "/sched/goroutines:goroutines"),
                "{phase}: go_goroutines vs /sched/goroutines:goroutines"
            );
        }
        // (agent's series, the runtime's own metric, the first release that has it)
        let same = [
            ("go_gc_cycles_total", "/gc/cycles/total:gc-cycles", 19),
            ("go_gc_pause_seconds_count", "/gc/pauses:seconds#count", 19),
            ("go_gc_heap_goal_bytes", "/gc/heap/goal:bytes", 19),
            ("go_gc_heap_live_bytes", "/gc/heap/live:bytes", 21),
            ("go_gc_gogc_percent", "/gc/gogc:percent", 21),
            ("go_gc_gomemlimit_bytes", "/gc/gomemlimit:bytes", 21),
        ];
        for (series, runtime_metric, since) in same {
            if self.minor >= since {
                assert_eq!(
                    self.value(&s, series, &[]),
                    own(&stats, runtime_metric),
                    "{phase}: {series} vs {runtime_metric}"
                );
            }
        }
        // Every goroutine created either lives or has exited (system goroutines included in
        // both, which /sched/goroutines counts from Go 1.26, with its own creation count).
        let created = s.sum(
            "go_goroutines_created_total",
            &[("pid", &self.pid), ("service_name", self.service)],
        );
        let exited = self.value(&s, "go_goroutines_exited_total", &[]);
        if self.minor >= 26 {
            // Goroutine ids also go to the goroutine the runtime sets up for each C thread that
            // calls into Go (one at start in a cgo build); the runtime's count of creations
            // leaves those out.
            let extra = created - own(&stats, "/sched/goroutines-created:goroutines");
            assert!(
                (0.0..=2.0).contains(&extra),
                "{phase}: created {created}, {extra} more than the runtime's count"
            );
            assert_eq!(
                created - exited,
                own(&stats, "/sched/goroutines:goroutines"),
                "{phase}: created - exited"
            );
        } else {
            let system = created - exited - goroutines;
            assert!(
                (1.0..=64.0).contains(&system),
                "{phase}: created - exited - live = {system} system goroutines?"
            );
        }
    }
}

fn panics(s: &Samples, service: &str, function: &str, recovered: &str) -> f64 {
    s.sum(
        "go_panics_total",
        &[
            ("service_name", service),
            ("function", function),
            ("recovered", recovered),
        ],
    )
}

fn phases(minor: &str) {
    phases_with(&toolchain(minor), BuildMode::Default, 500, 10_000);
}

fn phases_with(tc: &Toolchain, mode: BuildMode, before_attach: u32, spawned: u32) {
    let mut service = format!("goruntime-{}", tc.minor.replace('.', "-"));
    if mode != BuildMode::Default {
        service = format!("{service}-{}", mode.name());
    }
    let app = GoServer::start_bin(
        &go_build("goruntime", tc, mode),
        &[("OTEL_SERVICE_NAME", &service)],
    );
    // Some history before the agent attaches: goroutines alive, GC cycles done.
    get(&app, &format!("/spawn?n={before_attach}"));
    get(&app, "/gc?n=3");
    // No rate limit on the creation probe: bursts of thousands of goroutines are counted
    // by function (the limit has its own test).
    let agent = Agent::for_pids_with(&[app.proc.pid()], &["--goroutine-probe-max-rate", "0"]);
    let c = Checked {
        agent: &agent,
        pid: app.proc.pid().to_string(),
        service: &service,
        minor: tc.minor_number(),
    };
    c.runtime_figures_match("attached after goroutines and 3 GCs", &app);
    let before = c.value(
        &agent.scrape(),
        "go_goroutines_created_total",
        &[("function", "_UNATTRIBUTED")],
    );
    assert!(
        before >= f64::from(before_attach),
        "created before attach: {before}"
    );

    get(&app, &format!("/spawn?n={spawned}"));
    c.runtime_figures_match("goroutines spawned", &app);
    let s = agent.scrape();
    assert_eq!(
        c.value(
            &s,
            "go_goroutines_created_total",
            &[("function", "main.blocker")]
        ),
        f64::from(spawned),
        "creations by start function"
    );

    get(&app, "/release");
    c.runtime_figures_match("all blockers exited", &app);
    get(&app, "/gc?n=7");
    c.runtime_figures_match("7 forced GC cycles", &app);

    get(&app, "/panic?n=13");
    get(&app, "/indexpanic?n=4");
    let (stats, s) = quiescent(&app, &agent);
    assert_eq!(own(&stats, "recovered_panics"), 17.0);
    assert_eq!(panics(&s, &service, "main.explicitPanic", "true"), 13.0);
    // An index out of range panics in runtime helpers called from main.indexPanic.
    assert_eq!(
        panics(&s, &service, "main.indexPanic", "true"),
        4.0,
        "{:?}",
        s.matching("go_panics_total", &[]).collect::<Vec<_>>()
    );
    assert_eq!(
        s.sum("go_panics_total", &[("service_name", &service)]),
        17.0
    );
    c.runtime_figures_match("after panics", &app);
    assert_eq!(
        agent.scrape().sum("obs_agent_kernel_errors_total", &[]),
        0.0
    );
}

#[test]
fn runtime_figures_equal_the_runtimes_own_go_1_19() {
    phases("1.19");
}

#[test]
fn runtime_figures_equal_the_runtimes_own_newest_go() {
    phases(&GoVersion::New.toolchain().minor);
}

/// Every supported release (their runtimes differ: free-goroutine counts, where the pause
/// histogram lives and its buckets), default builds.
#[test]
fn runtime_figures_equal_the_runtimes_own_every_release() {
    for tc in toolchains() {
        phases_with(&tc, BuildMode::Default, 100, 2_000);
    }
}

/// Stripped builds in every build mode, of the oldest and the newest release: without a
/// symbol table the runtime's globals are found from the code that uses them, and every
/// figure is as exact as with symbols.
#[test]
fn runtime_figures_equal_the_runtimes_own_stripped() {
    for tc in [GoVersion::Old.toolchain(), GoVersion::New.toolchain()] {
        for mode in [
            BuildMode::Stripped,
            BuildMode::Pie,
            BuildMode::CgoExternal,
            BuildMode::PieExternal,
        ] {
            phases_with(&tc, mode, 100, 1_000);
        }
    }
}

/// The GC settings as the process was started with them (GOGC, GOMEMLIMIT), and their
/// defaults (100; no limit, `math.MaxInt64`), on the oldest and the newest Go.
#[test]
fn gc_settings_are_the_processs_own() {
    for tc in [GoVersion::Old.toolchain(), GoVersion::New.toolchain()] {
        for (env, gogc, limit) in [
            (
                vec![("GOGC", "50"), ("GOMEMLIMIT", "1GiB")],
                50.0,
                1_073_741_824.0,
            ),
            (vec![("GOGC", "off")], -1.0, i64::MAX as f64),
            (vec![], 100.0, i64::MAX as f64),
        ] {
            let service = format!("goruntime-gc-{}", tc.minor.replace('.', "-"));
            let mut env = env;
            env.push(("OTEL_SERVICE_NAME", service.as_str()));
            let app = GoServer::start_bin(&go_build("goruntime", &tc, BuildMode::Stripped), &env);
            let agent = Agent::for_pids(&[app.proc.pid()]);
            let s = agent.scrape();
            let pid = app.proc.pid().to_string();
            let labels = [("pid", pid.as_str()), ("service_name", service.as_str())];
            assert_eq!(
                s.sum("go_gc_gogc_percent", &labels),
                gogc,
                "Go {} {env:?}",
                tc.minor
            );
            assert_eq!(
                s.sum("go_gc_gomemlimit_bytes", &labels),
                limit,
                "Go {} {env:?}",
                tc.minor
            );
        }
    }
}

/// A process already creating goroutines faster than the limit when the agent starts: the
/// creation probe does not go in (judged from one read of the runtime's state, without
/// holding up the agent's start), and goes in once the process calms down.
#[test]
fn creation_probe_not_attached_to_a_busy_process() {
    let service = "goruntime-busy";
    let app = GoServer::named("goruntime", GoVersion::New, service);
    let url = app.url("/churn?n=2500");
    let churn = std::thread::spawn(move || {
        ureq::get(&url)
            .call()
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let agent = Agent::for_pids_with(&[app.proc.pid()], &["--goroutine-probe-max-rate", "5000"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the agent's start was held up"
    );
    assert!(
        agent.log().contains("creation probe not attached for now"),
        "{}",
        agent.log()
    );
    churn.join().unwrap().expect("GET /churn");
    let back = wait_for(Duration::from_secs(10), || {
        agent
            .log()
            .contains("creation probe re-attached")
            .then_some(())
    });
    assert!(back.is_some(), "not attached later; log:\n{}", agent.log());
    let c = Checked {
        agent: &agent,
        pid: app.proc.pid().to_string(),
        service,
        minor: GoVersion::New.toolchain().minor_number(),
    };
    c.runtime_figures_match("after a busy start", &app);
    // Creations while the probe was out are counted, unattributed.
    let s = agent.scrape();
    assert!(
        s.sum(
            "go_goroutines_created_total",
            &[("service_name", service), ("function", "_UNATTRIBUTED")],
        ) > 10_000.0,
        "{:?}",
        s.matching("go_goroutines_created_total", &[("service_name", service)])
            .collect::<Vec<_>>()
    );
}

/// A process creating goroutines faster than the limit: the creation probe is detached
/// (goroutine totals stay exact, from the runtime), and re-attached once it calms down.
#[test]
fn creation_probe_paused_above_its_rate_limit() {
    let service = "goruntime-churn";
    let app = GoServer::named("goruntime", GoVersion::New, service);
    let agent = Agent::for_pids_with(&[app.proc.pid()], &["--goroutine-probe-max-rate", "5000"]);
    get(&app, "/churn?n=1500");
    assert!(
        agent.log().contains("creation probe detached"),
        "{}",
        agent.log()
    );
    let back = wait_for(Duration::from_secs(10), || {
        agent
            .log()
            .contains("creation probe re-attached")
            .then_some(())
    });
    assert!(back.is_some(), "not re-attached; log:\n{}", agent.log());
    let c = Checked {
        agent: &agent,
        pid: app.proc.pid().to_string(),
        service,
        minor: GoVersion::New.toolchain().minor_number(),
    };
    c.runtime_figures_match("after a burst above the limit", &app);
    let s = agent.scrape();
    let churned = s.sum(
        "go_goroutines_created_total",
        &[("service_name", service), ("function", "main.churner")],
    );
    assert!(churned > 0.0, "some creations attributed before the pause");
    // The kernel reports the burst (4 × the limit within 25 ms: 500 creations here) and the
    // probe goes at once, not at the next 100 ms rate check (~100,000 creations later at the
    // churn's pace).
    assert!(
        churned < 10_000.0,
        "{churned} creations went through the probe before it was detached"
    );
    assert!(
        agent.log().contains("a burst of goroutine creations"),
        "{}",
        agent.log()
    );
}

/// A process that dies of an unrecovered panic: counted as not recovered, by function, and
/// its per-process state and series are released.
#[test]
fn unrecovered_panic_is_counted_and_released() {
    let service = "goruntime-crash";
    let mut app = GoServer::named("goruntime", GoVersion::New, service);
    let pid = app.proc.pid().to_string();
    let agent = Agent::for_pids(&[app.proc.pid()]);
    assert_eq!(
        agent
            .scrape()
            .matching("go_goroutines", &[("pid", &pid)])
            .count(),
        1
    );
    get(&app, "/crash");
    let died = wait_for(Duration::from_secs(10), || {
        (!app.proc.is_running()).then_some(())
    });
    assert!(died.is_some(), "the program did not die");
    let s = agent
        .wait_for_sum(
            "obs_agent_processes_watched",
            &[],
            0.0,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("exit not noticed; log:\n{}", agent.log()));
    assert_eq!(
        panics(&s, service, "main.crash", "false"),
        1.0,
        "{}",
        agent.log()
    );
    assert_eq!(s.sum("go_panics_total", &[("service_name", service)]), 1.0);
    assert_eq!(s.matching("go_goroutines", &[("pid", &pid)]).count(), 0);
    assert_eq!(
        s.matching("go_goroutines_created_total", &[("pid", &pid)])
            .count(),
        0
    );
    assert_eq!(
        s.sum("obs_agent_probes_attached", &[]),
        obs_integration_tests::shared_probes_under_test(),
        "only the shared programs (the data path's, TCP states)"
    );
}
