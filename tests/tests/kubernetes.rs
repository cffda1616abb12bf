//! Kubernetes identity on a node emulated as kubelet and the container runtime lay it out
//! (tests/src/kubernetes.rs): real Go servers started in pod cgroups, kubelet's directories,
//! and an API server answering the documented list and watch JSON. Every series and span of
//! a process in a pod carries its pod, container, node and owner; its service name follows
//! OpenTelemetry's precedence; odd paths give no labels and a counted reason.

use std::{collections::BTreeMap, time::Duration};

use obs_integration_tests::{
    go_app,
    kubernetes::{pod_json, start_in, ApiServer, Container, Layout, Node, NODE},
    metrics::Samples,
    wait_for, Agent, GoServer, GoVersion,
};
use serde_json::json;

/// Starts the goserver test app in `c`'s cgroup (`layout`), with `env`.
fn server_in(node: &mut Node, c: &Container, layout: Layout, env: &[(&str, &str)]) -> GoServer {
    let procs = node.container(c, layout);
    GoServer::start_configured(&go_app("goserver", GoVersion::New), &[], env, |cmd| {
        start_in(cmd, &procs)
    })
}

/// Three requests that succeed and two that fail.
fn traffic(s: &GoServer) {
    for _ in 0..3 {
        ureq::get(&s.url("/hello")).call().expect("GET /hello");
    }
    for _ in 0..2 {
        let _ = ureq::get(&s.url("/fail")).call();
    }
}

/// The labels of the agent's `http_server_request_duration_seconds_count` series of
/// `service` for `/hello`, once it has counted all five requests.
fn counted(agent: &Agent, service: &str) -> (Samples, BTreeMap<String, String>) {
    let s = agent
        .wait_for_sum(
            "http_server_request_duration_seconds_count",
            &[("service_name", service)],
            5.0,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("{service}'s requests not counted; log:\n{}", agent.log()));
    let labels = s
        .matching(
            "http_server_request_duration_seconds_count",
            &[("service_name", service), ("http_route", "/hello")],
        )
        .next()
        .unwrap()
        .labels
        .clone();
    (s, labels)
}

/// The `k8s_*` labels among `labels`.
fn k8s(labels: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    labels
        .iter()
        .filter(|(k, _)| k.starts_with("k8s_"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn processes_in_pods_are_labelled_from_their_cgroups_and_kubelets_directories() {
    let mut node = Node::new();
    let checkout = Container::new("shop", "checkout-7d9f8b6c5d-x2k4z", "server", 1);
    let ledger = Container::new("shop", "ledger-0", "app", 2);
    let payments = Container::new("pay", "payments-5c7b9d8f46-bq2zl", "main", 3);
    let odd = Container::new("x", "odd", "odd", 4);
    let s1 = server_in(&mut node, &checkout, Layout::SystemdContainerd, &[]);
    let s2 = server_in(&mut node, &ledger, Layout::CgroupfsCrio, &[]);
    let s3 = server_in(
        &mut node,
        &payments,
        Layout::SystemdContainerd,
        &[("OTEL_SERVICE_NAME", "payments-own")],
    );
    let s4 = server_in(
        &mut node,
        &odd,
        Layout::Odd,
        &[("OTEL_SERVICE_NAME", "odd-svc")],
    );
    let mut args = node.agent_args();
    args.extend(["--kubernetes-api".into(), "off".into()]);
    for s in [&s1, &s2, &s3, &s4] {
        args.extend(["--pid".into(), s.proc.pid().to_string()]);
    }
    let agent = Agent::start(&args);
    for s in [&s1, &s2, &s3, &s4] {
        traffic(s);
    }

    // A Deployment's pod: its owner from its name, the service named for it.
    let (samples, labels) = counted(&agent, "checkout");
    let uid = checkout.uid.as_str();
    let want = BTreeMap::from([
        ("k8s_namespace_name", "shop"),
        ("k8s_pod_name", "checkout-7d9f8b6c5d-x2k4z"),
        ("k8s_pod_uid", uid),
        ("k8s_container_name", "server"),
        ("k8s_node_name", NODE),
        ("k8s_deployment_name", "checkout"),
        ("k8s_replicaset_name", "checkout-7d9f8b6c5d"),
        ("k8s_owner_name", "checkout"),
    ]);
    assert_eq!(k8s(&labels), want, "log:\n{}", agent.log());
    // The same labels on the failures, on the process's info, its Go runtime series and
    // requests in flight.
    let with_uid = [("k8s_pod_uid", uid)];
    assert_eq!(
        samples.sum("http_server_request_duration_seconds_count", &with_uid),
        5.0
    );
    for series in [
        "obs_agent_target_info",
        "go_goroutines",
        "http_server_active_requests",
    ] {
        let found: Vec<_> = samples.matching(series, &with_uid).collect();
        assert_eq!(found.len(), 1, "{series}: {found:?}");
        assert_eq!(k8s(&found[0].labels), want, "{series}");
    }

    // A StatefulSet's pod, by cgroupfs and CRI-O: no owner from its name, the pod's name for
    // the service; the container named by kubelet's link for its id.
    let (_, labels) = counted(&agent, "ledger-0");
    let k = k8s(&labels);
    assert_eq!(k.get("k8s_container_name"), Some(&"app"), "{labels:?}");
    assert_eq!(k.get("k8s_pod_uid"), Some(&ledger.uid.as_str()));
    assert!(!k.contains_key("k8s_owner_name"), "{labels:?}");

    // The process's own OTEL_SERVICE_NAME wins; the pod's labels stay.
    let (_, labels) = counted(&agent, "payments-own");
    assert_eq!(k8s(&labels).get("k8s_deployment_name"), Some(&"payments"));

    // Under kubepods in no shape kubelet makes: no labels, a counted reason.
    let (samples, labels) = counted(&agent, "odd-svc");
    assert!(k8s(&labels).is_empty(), "{labels:?}");
    assert_eq!(
        samples.sum(
            "obs_agent_k8s_identity_failures_total",
            &[("reason", "unrecognised_cgroup")]
        ),
        1.0
    );
    drop((s1, s2, s3, s4, agent));
    drop(node);
}

#[test]
fn the_api_server_names_services_and_owners_and_its_watch_adds_pods() {
    let mut node = Node::new();
    let listed = Container::new("shop", "checkout-7d9f8b6c5d-q8r2x", "server", 11);
    let added = Container::new("bank", "ledger-1", "app", 12);
    let api = ApiServer::start(
        vec![pod_json(
            &listed,
            json!({"app.kubernetes.io/name": "checkout-app", "pod-template-hash": "7d9f8b6c5d"}),
            json!({"resource.opentelemetry.io/service.name": "checkout-api"}),
            ("ReplicaSet", "checkout-7d9f8b6c5d"),
        )],
        vec![json!({"type": "ADDED", "object": pod_json(
            &added,
            json!({"app.kubernetes.io/name": "ledger"}),
            json!({}),
            ("StatefulSet", "ledger"),
        )})],
    );
    let s1 = server_in(&mut node, &listed, Layout::SystemdContainerd, &[]);
    let mut args = node.agent_args();
    args.extend(["--kubernetes-api".into(), api.url.clone()]);
    // Node-wide, so that a process started later is found by a scan.
    let agent = Agent::start(&args);
    // Asked for this node's pods, listed, then watched.
    let watching = wait_for(Duration::from_secs(10), || {
        let asked = api.asked.lock().unwrap().clone();
        asked
            .iter()
            .any(|q| q.contains("watch=true"))
            .then_some(asked)
    })
    .unwrap_or_else(|| panic!("no watch; log:\n{}", agent.log()));
    assert!(
        watching
            .iter()
            .all(|q| q.contains(&format!("fieldSelector=spec.nodeName={NODE}"))),
        "{watching:?}"
    );
    // The watch's pod, started after the agent: found by a scan, named from the event.
    let s2 = server_in(&mut node, &added, Layout::SystemdContainerd, &[]);
    agent.wait_watched(s2.proc.pid(), "the pod added by the watch");
    traffic(&s1);
    traffic(&s2);

    // The annotation names the service; the controller and the hash name the Deployment.
    let (_, labels) = counted(&agent, "checkout-api");
    let k = k8s(&labels);
    assert_eq!(
        k.get("k8s_deployment_name"),
        Some(&"checkout"),
        "{labels:?}"
    );
    assert_eq!(k.get("k8s_replicaset_name"), Some(&"checkout-7d9f8b6c5d"));
    assert_eq!(k.get("k8s_container_name"), Some(&"server"));
    // app.kubernetes.io/name names it; the StatefulSet is its owner.
    let (samples, labels) = counted(&agent, "ledger");
    let k = k8s(&labels);
    assert_eq!(k.get("k8s_statefulset_name"), Some(&"ledger"), "{labels:?}");
    assert_eq!(k.get("k8s_owner_name"), Some(&"ledger"));
    assert_eq!(k.get("k8s_namespace_name"), Some(&"bank"));
    assert_eq!(samples.sum("obs_agent_k8s_api_errors_total", &[]), 0.0);

    // Spans carry the pod as resource attributes (a request continuing a trace of the
    // test's, to find its span).
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    ureq::get(&s2.url("/hello"))
        .set("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .call()
        .expect("GET /hello");
    let spans = agent.wait_trace(trace_id, 1);
    let span = spans
        .iter()
        .find(|s| s["resource"]["service.name"] == "ledger")
        .unwrap_or_else(|| panic!("no span of ledger: {spans:?}"));
    let resource = &span["resource"];
    assert_eq!(resource["k8s.pod.name"], "ledger-1", "{resource}");
    assert_eq!(resource["k8s.statefulset.name"], "ledger");
    assert_eq!(resource["k8s.node.name"], NODE);
    drop((s1, s2, agent));
    drop(node);
}
