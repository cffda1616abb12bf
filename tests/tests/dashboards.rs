//! deploy/grafana/dashboards: Grafana dashboards as Grafana's own types read them (PyPI
//! grafana-foundation-sdk; no Grafana server can be had here), every panel bound to the
//! `$datasource` variable; and, against a real Prometheus scraping the real agent while real Go
//! services take traffic with errors, outgoing calls, GC cycles and panics, every query of every
//! panel, written as Grafana sends it (variables, `$__rate_interval`, `$__range`), returns data.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::TcpStream,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use obs_integration_tests::{
    go_app,
    grafana::{metric_names, read_dashboards, Context, Dashboard, DataSource, Selection},
    load::{drive, Call},
    prometheus::Prometheus,
    wait_for, Agent, GoServer, GoVersion,
};

/// Every dashboard, by uid.
const DASHBOARDS: [&str; 4] = [
    "obs-agent-health",
    "obs-agent-go-runtime",
    "obs-agent-service-graph",
    "obs-agent-service-red",
];

/// Windows a query may use: Grafana's, never a fixed one that ignores the scrape interval.
const WINDOWS: [&str; 2] = ["[$__rate_interval]", "[$__range]"];

const BUILTINS: [&str; 5] = [
    "__interval",
    "__interval_ms",
    "__rate_interval",
    "__range",
    "__range_s",
];

const NO_SUCH_PID: u32 = 4_194_305; // above any pid_max: an attach failure to show

fn datasource_variable() -> Option<DataSource> {
    Some(DataSource {
        kind: Some("prometheus".into()),
        uid: Some("${datasource}".into()),
    })
}

/// The `$name` and `${name}` references of an expression (not `$1` of label_replace).
fn variable_references(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in expr.match_indices('$') {
        let after = expr[at + 1..].trim_start_matches('{');
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !name.chars().all(|c| c.is_ascii_digit()) {
            names.insert(name);
        }
    }
    names
}

/// What is wrong with one dashboard, in sentences.
fn problems(d: &Dashboard) -> Vec<String> {
    let mut out = Vec::new();
    let mut problem = |what: String| out.push(format!("{} ({}): {what}", d.title, d.file));
    if d.schema_version < 39 {
        problem(format!(
            "schemaVersion {} predates Grafana 11",
            d.schema_version
        ));
    }
    if !d.tags.iter().any(|t| t == "obs-agent") {
        problem("no obs-agent tag (the dashboards link to each other by it)".into());
    }
    // Grafana writes a query variable's query text as `definition` too; its schema has no
    // such key. Any other key the SDK drops is one Grafana's schema does not know.
    for key in &d.dropped {
        let is_definition = key.starts_with(".templating.list[") && key.ends_with("].definition");
        if !is_definition {
            problem(format!("{key} is not in Grafana's dashboard schema"));
        }
    }

    let variable = |name: &str| d.variables.iter().find(|v| v.name == name);
    match variable("datasource") {
        Some(v) if v.kind == "datasource" && v.query.as_deref() == Some("prometheus") => {}
        other => problem(format!(
            "no Prometheus data source variable `datasource`: {other:?}"
        )),
    }
    match variable("namespace") {
        Some(v)
            if v.include_all
                && v.all_value.as_deref() == Some(".*")
                && v.query
                    .as_deref()
                    .is_some_and(|q| q.contains("k8s_namespace_name")) => {}
        other => problem(format!(
            "no `namespace` variable over k8s_namespace_name whose All (.*) matches series \
             without the label: {other:?}"
        )),
    }
    match variable("service") {
        Some(v)
            if v.include_all
                && v.query.as_deref().is_some_and(|q| {
                    q.contains("service_name") && q.contains(r#"k8s_namespace_name=~"$namespace""#)
                }) => {}
        other => problem(format!(
            "no `service` variable of the selected namespaces: {other:?}"
        )),
    }
    for v in d.variables.iter().filter(|v| v.kind == "query") {
        if v.datasource != datasource_variable() {
            problem(format!(
                "variable {} queries {:?}, not $datasource",
                v.name, v.datasource
            ));
        }
    }
    let defined: BTreeSet<&str> = d
        .variables
        .iter()
        .map(|v| v.name.as_str())
        .chain(BUILTINS)
        .collect();

    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(i64, i64), String> = BTreeMap::new();
    for p in &d.panels {
        let name = format!("panel {:?} ({})", p.title, p.kind);
        if !p.known_type {
            problem(format!("{name}: no Grafana plugin has this panel type"));
        }
        match p.id {
            Some(id) if ids.insert(id) => {}
            id => problem(format!("{name}: id {id:?} missing or not unique")),
        }
        match p.grid {
            Some([x, y, w, h]) if x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 24 => {
                for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
                    if let Some(other) = cells.insert(cell, p.title.clone()) {
                        problem(format!("{name} overlaps panel {other:?}"));
                        break;
                    }
                }
            }
            grid => problem(format!("{name}: bad gridPos {grid:?}")),
        }
        if p.kind == "row" {
            continue;
        }
        if p.datasource != datasource_variable() {
            problem(format!(
                "{name}: data source {:?}, not $datasource",
                p.datasource
            ));
        }
        if p.targets.is_empty() {
            problem(format!("{name}: no query"));
        }
        let mut refs = BTreeSet::new();
        for t in &p.targets {
            let query = format!("{name} query {}", t.ref_id);
            if !t.prometheus || t.datasource != datasource_variable() {
                problem(format!(
                    "{query}: not a Prometheus query on $datasource ({:?})",
                    t.datasource
                ));
            }
            if !refs.insert(&t.ref_id) || t.expr.trim().is_empty() {
                problem(format!("{query}: empty, or its refId repeats"));
            }
            for (at, _) in t.expr.match_indices('[') {
                if !WINDOWS.iter().any(|w| t.expr[at..].starts_with(w)) {
                    problem(format!(
                        "{query}: a window other than $__rate_interval or $__range: {}",
                        &t.expr[at..(at + 20).min(t.expr.len())]
                    ));
                }
            }
            for v in variable_references(&t.expr) {
                if !defined.contains(v.as_str()) {
                    problem(format!("{query}: ${v} is no variable of the dashboard"));
                }
            }
            // Tables and the node graph show one value per series: instant queries, as
            // tables. Graphs need a range.
            let instant = matches!(p.kind.as_str(), "table" | "nodeGraph");
            if t.instant != instant
                || (instant && t.format.as_deref() != Some("table"))
                || (p.kind == "heatmap" && t.format.as_deref() != Some("heatmap"))
            {
                problem(format!(
                    "{query}: instant {} format {:?} for a {} panel",
                    t.instant, t.format, p.kind
                ));
            }
        }
        if p.kind == "nodeGraph" {
            // Grafana's node graph takes the frame with a `source` field for edges, the
            // other for nodes, and finds fields by name: labels `id`, `title`, `source`,
            // `target` (a renaming transformation would not do: it only changes display names).
            let has = |label: &str| p.targets.iter().any(|t| t.expr.contains(label));
            for label in [r#""id""#, r#""title""#, r#""source""#, r#""target""#] {
                if !has(label) {
                    problem(format!("{name}: no query makes the label {label}"));
                }
            }
        }
    }
    out
}

#[test]
fn dashboards_are_grafana_dashboards_bound_to_the_datasource_variable() {
    let dashboards = read_dashboards();
    let uids: BTreeSet<&str> = dashboards.iter().map(|d| d.uid.as_str()).collect();
    assert_eq!(uids, BTreeSet::from(DASHBOARDS), "dashboard uids");
    let all: Vec<String> = dashboards.iter().flat_map(problems).collect();
    assert!(all.is_empty(), "{}", all.join("\n"));
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Whether a query's result holds a number (NaN, e.g. a quantile of no requests, draws
/// nothing).
fn has_data(result: &[serde_json::Value]) -> bool {
    let number = |point: &serde_json::Value| point[1].as_str().is_some_and(|v| v != "NaN");
    result.iter().any(|series| {
        series["values"]
            .as_array()
            .map_or(number(&series["value"]), |points| points.iter().any(number))
    })
}

/// `label_values(selector, label)` or `label_values(label)`.
fn label_values_query(query: &str) -> (String, String) {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values query: {query}"));
    match inner.rsplit_once(',') {
        Some((selector, label)) => (selector.trim().to_owned(), label.trim().to_owned()),
        None => ("{__name__=~\".+\"}".to_owned(), inner.trim().to_owned()),
    }
}

/// Sets the dashboard's variables to All in order (a later one's query may use an earlier
/// one), with the values their queries list from Prometheus; then applies `chosen`.
fn context_for(
    d: &Dashboard,
    prometheus: &Prometheus,
    start: f64,
    end: f64,
    chosen: &[(&str, &str)],
) -> (Context, BTreeMap<String, Vec<String>>) {
    let mut ctx = Context {
        start,
        end,
        scrape_interval: 1.0,
        max_data_points: 1000.0,
        variables: BTreeMap::new(),
    };
    let mut listed = BTreeMap::new();
    for v in d.variables.iter().filter(|v| v.kind == "query") {
        let (selector, label) = label_values_query(v.query.as_deref().unwrap());
        let values = prometheus
            .label_values(&ctx.interpolate(&selector), &label, start, end)
            .unwrap_or_else(|e| panic!("{}: variable {}: {e}", d.title, v.name));
        listed.insert(v.name.clone(), values.clone());
        ctx.variables
            .insert(v.name.clone(), (v.clone(), Selection::All(values)));
    }
    for (name, value) in chosen {
        if let Some((_, selection)) = ctx.variables.get_mut(*name) {
            *selection = Selection::Values(vec![value.to_string()]);
        }
    }
    (ctx, listed)
}

/// One query's outcome.
enum Outcome {
    Data,
    NoData,
    Error(String),
}

/// Runs every query of every panel of `d` as Grafana would; one line per query.
fn run_panels(d: &Dashboard, ctx: &Context, prometheus: &Prometheus) -> Vec<(String, Outcome)> {
    let mut out = Vec::new();
    for p in d.panels.iter().filter(|p| p.kind != "row") {
        for t in p.targets.iter().filter(|t| !t.hide) {
            let expr = ctx.interpolate(&t.expr);
            let result = if t.instant {
                prometheus.query(&expr, ctx.end)
            } else {
                prometheus.query_range(&expr, ctx.start, ctx.end, ctx.interval())
            };
            let outcome = match result {
                Err(e) => Outcome::Error(format!("{e}\n      {expr}")),
                Ok(result) if has_data(&result) => Outcome::Data,
                Ok(_) => Outcome::NoData,
            };
            out.push((format!("{} / {} / {}", d.title, p.title, t.ref_id), outcome));
        }
    }
    out
}

/// Requests to the test services until `stop`: a mix with 404s and 500s to `shop`, chained
/// calls (`front` -> `middle` -> `back`, one of the two back calls failing), GC cycles and
/// recovered panics in `gort`, and a connection that is not HTTP now and then.
fn traffic(shop: &GoServer, front: &GoServer, gort: &GoServer, stop: &AtomicBool) {
    let mut calls = Vec::new();
    for n in 0..20 {
        calls.push(Call::new("GET", "/hello", "/hello", 200));
        calls.push(Call::new("PUT", format!("/items/{n}"), "/items/{id}", 201));
        calls.push(Call::new("GET", "/slow?ms=30", "/slow", 200));
    }
    calls.push(Call::new("GET", "/missing", "/missing", 404));
    calls.push(Call::new("GET", "/fail", "/fail", 500));
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let view = drive(&shop.url(""), &calls, 2);
                assert!(view.failures.is_empty(), "{:?}", view.failures);
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                ureq::get(&front.url("/work")).call().expect("front /work");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                ureq::get(&gort.url("/gc?n=1")).call().expect("gort /gc");
                ureq::get(&gort.url("/panic?n=1"))
                    .call()
                    .expect("gort /panic");
                // The first bytes of a TLS handshake: a connection the agent counts as not
                // HTTP, then ignores.
                if let Ok(mut c) = TcpStream::connect(("127.0.0.1", shop.port)) {
                    let _ = c.write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03");
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        std::thread::sleep(Duration::from_secs(25));
        stop.store(true, Ordering::Relaxed);
    });
}

#[test]
fn every_panel_returns_data_from_prometheus_scraping_the_agent() {
    let go = GoVersion::New;
    let shop = GoServer::named("goserver", go, "shop");
    let chain = go_app("gochain", go);
    let back = GoServer::chain_link(&chain, "back", None, &[]);
    let middle = GoServer::chain_link(&chain, "middle", Some(&back), &["-calls", "a=1,fail=1"]);
    let front = GoServer::chain_link(&chain, "front", Some(&middle), &["-calls", "x=1"]);
    let gort = GoServer::named("goruntime", go, "gort");
    let mut args = vec!["--pid".to_owned(), NO_SUCH_PID.to_string()];
    for server in [&shop, &front, &middle, &back, &gort] {
        args.extend(["--pid".to_owned(), server.proc.pid().to_string()]);
    }
    let agent = Agent::start(&args);
    let prometheus = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: obs-agent\n    \
             static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            agent.port
        ),
        &[],
    );
    let start = now();
    let stop = AtomicBool::new(false);
    traffic(&shop, &front, &gort, &stop);
    // The last requests in a scrape or two.
    let scraped = wait_for(Duration::from_secs(30), || {
        let r = prometheus
            .query(
                r#"sum(http_client_request_duration_seconds_count{service_name="front"})"#,
                now(),
            )
            .ok()?;
        has_data(&r).then_some(())
    });
    assert!(
        scraped.is_some(),
        "Prometheus has no data of the agent; the agent's log:\n{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    let end = now();

    let exported: BTreeSet<String> = prometheus
        .label_values(r#"{job="obs-agent"}"#, "__name__", start, end)
        .expect("metric names")
        .into_iter()
        .collect();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for d in read_dashboards() {
        // Every metric a panel reads is one the agent exports: a misspelled name fails here
        // with its name, not only as a panel without data.
        for p in &d.panels {
            for t in &p.targets {
                for m in metric_names(&t.expr) {
                    if m != "up" && !exported.contains(&m) {
                        failures.push(format!(
                            "{} / {}: {m} is not a metric of the agent",
                            d.title, p.title
                        ));
                    }
                }
            }
        }

        let (ctx, listed) = context_for(&d, &prometheus, start, end, &[]);
        if let Some(services) = listed.get("service") {
            for s in ["shop", "front", "middle", "back", "gort"] {
                if !services.iter().any(|v| v == s) {
                    failures.push(format!(
                        "{}: $service lists {services:?}, without {s}",
                        d.title
                    ));
                }
            }
        }
        for (name, values) in &listed {
            // Outside Kubernetes no series has a namespace: the list is empty, All matches.
            if values.is_empty() && name != "namespace" {
                failures.push(format!("{}: ${name} lists nothing", d.title));
            }
        }
        report.push(format!(
            "{}: variables {listed:?}, $__interval {}s, $__rate_interval {}s, $__range {}s",
            d.title,
            ctx.interval(),
            ctx.rate_interval(),
            (end - start).round()
        ));
        for (query, outcome) in run_panels(&d, &ctx, &prometheus) {
            let line = match outcome {
                Outcome::Data => format!("  data      {query}"),
                Outcome::NoData => {
                    failures.push(format!("no data: {query}"));
                    format!("  NO DATA   {query}")
                }
                Outcome::Error(e) => {
                    failures.push(format!("query refused: {query}: {e}"));
                    format!("  ERROR     {query}: {e}")
                }
            };
            report.push(line);
        }

        // One service chosen rather than All: the queries stay valid (a service has no data
        // in every panel, so only refusals count here).
        let (ctx, _) = context_for(&d, &prometheus, start, end, &[("service", "front")]);
        for (query, outcome) in run_panels(&d, &ctx, &prometheus) {
            if let Outcome::Error(e) = outcome {
                failures.push(format!("query refused with $service=front: {query}: {e}"));
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{}\n\n{}",
        failures.join("\n"),
        report.join("\n")
    );
}
