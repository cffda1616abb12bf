//! Whole traces across three unmodified Go services on loopback, stitched by the agent alone:
//! front -> middle -> back, the middle fanning out to the back from three goroutines (one
//! call failing with 500, one slow). Requests are sent one at a time, some carrying the
//! test's own `traceparent`. For each, the exact span tree is checked: every parent id, the
//! trace id continued from the test's header, kinds, services, statuses, and durations
//! nested in their parents'.

use std::{collections::BTreeMap, time::Duration};

use obs_integration_tests::{go_app, wait_for, Agent, GoServer, GoVersion};
use serde_json::Value;

const SLOW_MS: u64 = 40;

fn by_id(spans: &[Value]) -> BTreeMap<String, Value> {
    spans
        .iter()
        .map(|s| (s["span_id"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

fn service(s: &Value) -> &str {
    s["resource"]["service.name"].as_str().unwrap()
}

fn children<'a>(spans: &'a [Value], parent: &Value) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["parent_span_id"] == parent["span_id"])
        .collect()
}

/// The service's own handler time, from its `Server-Timing: handler;dur=MS` header.
fn server_timing_ms(response: &ureq::Response) -> f64 {
    let header = response
        .header("server-timing")
        .expect("Server-Timing header");
    header
        .split_once("dur=")
        .and_then(|(_, ms)| ms.parse().ok())
        .unwrap_or_else(|| panic!("Server-Timing: {header}"))
}

/// `child` runs within `parent` (1 ms of slack for the two processes' event timestamps).
fn nested(parent: &Value, child: &Value) -> bool {
    let t = |s: &Value, k: &str| s[k].as_u64().unwrap();
    t(child, "start_unix_nanos") + 1_000_000 >= t(parent, "start_unix_nanos")
        && t(child, "end_unix_nanos") <= t(parent, "end_unix_nanos") + 1_000_000
}

/// The exact tree of one front request (9 spans) continuing the test's `traceparent`
/// (`trace_id`, `caller`): front server -> front client -> middle server -> three middle
/// clients (one failing, one slow) -> a back server under each. Returns the front server span.
fn assert_chain_tree(spans: &[Value], trace_id: &str, caller: &str, middle_port: u16) -> Value {
    assert_eq!(spans.len(), 9, "{spans:#?}");
    assert!(spans.iter().all(|s| s["trace_id"] == trace_id));
    let ids = by_id(spans);
    assert_eq!(ids.len(), 9, "span ids are unique");

    // front: the server span continues the test's trace, under the test's span.
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s["parent_span_id"] == caller)
        .collect();
    assert_eq!(roots.len(), 1, "{spans:#?}");
    let front_server = roots[0];
    assert_eq!(
        (service(front_server), front_server["kind"].as_str()),
        ("front", Some("server"))
    );
    assert_eq!(front_server["name"], "GET /work");
    assert_eq!(front_server["attributes"]["http.route"], "/work");
    assert_eq!(front_server["status"], "OK");

    // front -> middle: one client span, and the middle's server span under it.
    let front_calls = children(spans, front_server);
    assert_eq!(front_calls.len(), 1, "{spans:#?}");
    let front_client = front_calls[0];
    assert_eq!(
        (service(front_client), front_client["kind"].as_str()),
        ("front", Some("client"))
    );
    assert_eq!(
        front_client["attributes"]["server.port"],
        u64::from(middle_port)
    );
    let middle_servers = children(spans, front_client);
    assert_eq!(middle_servers.len(), 1, "{spans:#?}");
    let middle_server = middle_servers[0];
    assert_eq!(
        (service(middle_server), middle_server["kind"].as_str()),
        ("middle", Some("server"))
    );

    // middle -> back, from three goroutines: three client spans, each with its own
    // server span in the back.
    let middle_calls = children(spans, middle_server);
    assert_eq!(middle_calls.len(), 3, "{spans:#?}");
    let mut statuses = Vec::new();
    for call in &middle_calls {
        assert_eq!(
            (service(call), call["kind"].as_str()),
            ("middle", Some("client"))
        );
        let served = children(spans, call);
        assert_eq!(served.len(), 1, "{spans:#?}");
        let back_server = served[0];
        assert_eq!(service(back_server), "back");
        let status = call["attributes"]["http.response.status_code"].as_u64();
        assert_eq!(
            back_server["attributes"]["http.response.status_code"].as_u64(),
            status
        );
        let error = status == Some(500);
        let want = if error { "ERROR" } else { "OK" };
        assert_eq!(call["status"], want);
        assert_eq!(back_server["status"], want);
        assert!(nested(call, back_server), "{call:#?}\n{back_server:#?}");
        assert!(nested(middle_server, call));
        statuses.push((status, back_server["duration_ms"].as_f64().unwrap()));
    }
    statuses.sort_by(|a, b| a.1.total_cmp(&b.1));
    assert_eq!(statuses.iter().filter(|(s, _)| *s == Some(500)).count(), 1);
    // The slow call is the longest, and at least its sleep.
    assert!(statuses[2].1 >= SLOW_MS as f64, "{statuses:?}");
    assert!(nested(front_server, front_client));
    assert!(nested(front_client, middle_server));
    // The front request took at least as long as the slow call.
    assert!(front_server["duration_ms"].as_f64().unwrap() >= SLOW_MS as f64);
    front_server.clone()
}

/// front -> middle -> back, built with `version`: the front calls the middle once per
/// request, the middle calls the back three times (one failing, one slow), with
/// `middle_args` too. Started back first, each before its caller.
fn chain(version: GoVersion, middle_args: &[&str]) -> [GoServer; 3] {
    let bin = go_app("gochain", version);
    let back = GoServer::chain_link(&bin, "back", None, &[]);
    let calls = format!("a=1,fail=1,sleep={SLOW_MS}");
    let mut args = vec!["-calls", calls.as_str()];
    args.extend(middle_args);
    let middle = GoServer::chain_link(&bin, "middle", Some(&back), &args);
    let front = GoServer::chain_link(&bin, "front", Some(&middle), &["-calls", "x=1"]);
    [front, middle, back]
}

#[test]
fn three_services_make_one_trace_per_request() {
    let [front, middle, back] = chain(GoVersion::New, &[]);
    let agent = Agent::for_pids(&[front.proc.pid(), middle.proc.pid(), back.proc.pid()]);

    for n in 0..4u32 {
        let trace_id = format!("4bf92f3577b34da6a3ce929d0e0e{n:04x}");
        let caller = format!("00f067aa0ba9{n:04x}");
        // The last request's traceparent comes after 700 bytes of other headers: far into
        // the request's head, as behind a browser's cookies.
        let cookie = "c".repeat(if n == 3 { 700 } else { 0 });
        let response = ureq::get(&front.url("/work"))
            .set("cookie", &format!("session={cookie}"))
            .set("traceparent", &format!("00-{trace_id}-{caller}-01"))
            .call()
            .expect("front");
        let own_ms = server_timing_ms(&response);
        assert_eq!(response.into_string().unwrap().trim(), "200");

        let spans = agent.wait_trace(&trace_id, 9);
        let front_server = assert_chain_tree(&spans, &trace_id, &caller, middle.port);
        // The agent's server span (request read to response written) holds the front's own
        // handler time, and not much more.
        let span_ms = front_server["duration_ms"].as_f64().unwrap();
        assert!(
            span_ms >= own_ms && span_ms <= own_ms + 20.0,
            "span {span_ms} ms, the front's own timing {own_ms} ms"
        );
    }

    // Without a traceparent: a new trace rooted at the front's server span.
    ureq::get(&front.url("/work")).call().expect("front");
    let new_trace = wait_for(Duration::from_secs(10), || {
        agent
            .traces(20)?
            .as_array()?
            .iter()
            .filter_map(|t| t["trace_id"].as_str())
            .find(|id| !id.starts_with("4bf92f3577b34da6a3ce929d0e0e"))
            .map(str::to_owned)
    })
    .expect("a trace without the test's trace id");
    let spans = agent.wait_trace(&new_trace, 9);
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s["parent_span_id"].is_null())
        .collect();
    assert_eq!(roots.len(), 1, "{spans:#?}");
    assert_eq!(service(roots[0]), "front");

    // The tree view shows it, the back indented deepest.
    let tree = ureq::get(&format!(
        "http://127.0.0.1:{}/traces/{new_trace}/tree",
        agent.port
    ))
    .call()
    .unwrap()
    .into_string()
    .unwrap();
    assert!(tree.contains("front"), "{tree}");
    assert!(tree.contains("ERROR"), "{tree}");
}

/// Many requests at once through the same three services: every call lands under the request
/// it was made for, never under another one in flight. The middle makes its calls from
/// grandchild goroutines of the handler (descendants, not the handler's own goroutine), and
/// also calls the back every 5 ms from a goroutine of its own, outside any request: those
/// calls start traces of their own. Go 1.19 and the newest Go.
fn concurrent_requests(version: GoVersion) {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 6;
    let [front, middle, back] = chain(version, &["-nested", "-background"]);
    let agent = Agent::for_pids(&[front.proc.pid(), middle.proc.pid(), back.proc.pid()]);
    assert!(
        agent.log().contains("goroutines followed"),
        "{}",
        agent.log()
    );

    let front_url = front.url("/work");
    let sent: Vec<(String, String, f64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let front_url = &front_url;
                scope.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let n = t * PER_THREAD + i;
                            let trace_id = format!("5ce0e9a56015fec5aadfa328ae39{n:04x}");
                            let caller = format!("b7ad6b7169{n:06x}");
                            let response = ureq::get(front_url)
                                .set("traceparent", &format!("00-{trace_id}-{caller}-01"))
                                .call()
                                .expect("front");
                            let own_ms = server_timing_ms(&response);
                            assert_eq!(response.into_string().unwrap().trim(), "200");
                            (trace_id, caller, own_ms)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });

    let mut fronts = Vec::new();
    for (trace_id, caller, own_ms) in &sent {
        let spans = agent.wait_trace(trace_id, 9);
        let front_server = assert_chain_tree(&spans, trace_id, caller, middle.port);
        // Each request's span holds that request's own handler time (a response paired with
        // another request would not, in general).
        let span_ms = front_server["duration_ms"].as_f64().unwrap();
        assert!(
            span_ms >= *own_ms && span_ms <= own_ms + 50.0,
            "span {span_ms} ms, the front's own timing {own_ms} ms"
        );
        fronts.push(front_server);
    }
    // The requests really were in flight together: count overlapping pairs at the front.
    let t = |s: &Value, k: &str| s[k].as_u64().unwrap();
    let overlapping = fronts
        .iter()
        .enumerate()
        .flat_map(|(i, a)| fronts[i + 1..].iter().map(move |b| (a, b)))
        .filter(|(a, b)| {
            t(a, "start_unix_nanos") < t(b, "end_unix_nanos")
                && t(b, "start_unix_nanos") < t(a, "end_unix_nanos")
        })
        .count();
    assert!(
        overlapping >= THREADS * PER_THREAD,
        "only {overlapping} overlapping pairs"
    );

    // The background calls: traces of their own, the middle's client span at the root and
    // the back's server span under it.
    let list = agent.traces(100_000).expect("the agent's list of traces");
    let background = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["root_service"] == "middle" && t["span_count"] == 2)
        .count();
    assert!(background >= 10, "{background} background traces");
}

#[test]
fn concurrent_requests_never_share_calls_go_1_19() {
    concurrent_requests(GoVersion::Old);
}

#[test]
fn concurrent_requests_never_share_calls_newest_go() {
    concurrent_requests(GoVersion::New);
}

/// The service graph of the chain, as Tempo's processor would count it from the spans: each
/// request once per edge, its failures (a client sees 4xx and 5xx, a server 5xx), both ends'
/// durations; the test's own calls (a client the agent does not watch) by their address.
#[test]
fn the_service_graph_counts_each_edge_of_the_chain_once() {
    const REQUESTS: u32 = 6;
    let [front, middle, back] = chain(GoVersion::New, &[]);
    let agent = Agent::for_pids(&[front.proc.pid(), middle.proc.pid(), back.proc.pid()]);
    for _ in 0..REQUESTS {
        ureq::get(&front.url("/work")).call().expect("GET /work");
    }
    let n = f64::from(REQUESTS);
    let edge = |client: &'static str, server: &'static str, kind: &'static str| {
        [
            ("client", client),
            ("server", server),
            ("connection_type", kind),
        ]
    };
    let total = "traces_service_graph_request_total";
    let failed = "traces_service_graph_request_failed_total";
    let server = "traces_service_graph_request_server_seconds_count";
    let client = "traces_service_graph_request_client_seconds_count";
    // Every request reaches back three times (a=1, fail=1, sleep=...). A response is
    // complete once quiet for a while: wait for the last ones of each end.
    let complete = |s: &obs_integration_tests::Samples| {
        s.sum(server, &edge("middle", "back", "")) == 3.0 * n
            && s.sum(client, &edge("middle", "back", "")) == 3.0 * n
            && s.sum(server, &edge("front", "middle", "")) == n
            && s.sum(client, &edge("front", "middle", "")) == n
            && s.sum(server, &edge("127.0.0.1", "front", "virtual_node")) == n
    };
    let s = wait_for(Duration::from_secs(10), || {
        let s = agent.scrape();
        complete(&s).then_some(s)
    })
    .unwrap_or_else(|| agent.scrape());
    let sum = |name: &str, e: &[(&str, &str); 3]| s.sum(name, e);
    assert_eq!(
        sum(total, &edge("front", "middle", "")),
        n,
        "{}",
        agent.log()
    );
    assert_eq!(sum(failed, &edge("front", "middle", "")), 0.0);
    assert_eq!(sum(server, &edge("front", "middle", "")), n);
    assert_eq!(sum(client, &edge("front", "middle", "")), n);
    assert_eq!(sum(total, &edge("middle", "back", "")), 3.0 * n);
    assert_eq!(sum(failed, &edge("middle", "back", "")), n);
    assert_eq!(
        sum(server, &edge("middle", "back", "")),
        3.0 * n,
        "{:#?}",
        s.matching(server, &[]).collect::<Vec<_>>()
    );
    assert_eq!(sum(client, &edge("middle", "back", "")), 3.0 * n);
    // The test's calls: a client by its address, counted at front.
    assert_eq!(
        sum(total, &edge("127.0.0.1", "front", "virtual_node")),
        n,
        "{:?}",
        s.matching(total, &[]).collect::<Vec<_>>()
    );
    // Nothing else: no request is counted twice under an address.
    assert_eq!(s.sum(total, &[]), 5.0 * n);
    drop((front, middle, back));
}
