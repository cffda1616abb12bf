//! deploy/helm/obs-agent, the Helm chart: Helm 4 (helm-python-sdk: Helm's own Go SDK, driven
//! by deploy/helm/helm-sdk.py) lints it strictly and renders it with default and overridden
//! values; every object it renders passes yamllint and is valid for Kubernetes 1.30
//! (kubernetes-validate --strict; the Prometheus Operator's objects, whose schemas
//! kubernetes-validate lacks, are checked field by field here, and their rules by promtool);
//! each value changes what it says and the schema refuses what the chart cannot honour;
//! deploy/kubernetes/daemonset.yaml is the chart rendered with its defaults; the PrometheusRule
//! holds every rule file of deploy/prometheus/rules. tests/tests/deploy.rs runs the agent with
//! the capabilities of the DaemonSet rendered here.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use obs_integration_tests::{
    manifests::{
        agent_args, agent_help, chart_dir, check, container, deploy_dir, helm_lint, helm_template,
        manifest_tool, outcome, strings, try_helm_template, yaml_documents, Rendered, NAMESPACE,
        RELEASE,
    },
    tempdir,
};
use serde_json::{json, Value};

/// The oldest Kubernetes the chart supports (`securityContext.appArmorProfile` is 1.30+) and
/// the newest the pinned kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// The Prometheus Operator's API: kubernetes-validate has no schema for it.
const OPERATOR_API: &str = "monitoring.coreos.com/v1";
/// The group the chart adds to the rule files' (values.yaml, slo).
const OBJECTIVES_GROUP: &str = "obs-agent-slo-objectives";

/// Every value set otherwise than by default at once, but the ServiceMonitor (the chart refuses
/// it beside the PodMonitor).
fn overridden() -> Value {
    json!({
        "image": {
            "repository": "registry.example.com/observability/obs-agent",
            "tag": "9.9.9-rc1",
            "pullPolicy": "Always",
        },
        "resources": {"requests": {"cpu": "100m", "memory": "96Mi"}, "limits": {"memory": "1Gi"}},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"},
        ],
        "nodeSelector": {"pool": "edge"},
        "priorityClassName": "observability-critical",
        "otlp": {"endpoint": "http://otel-collector.monitoring:4318"},
        "extraArgs": ["--log-level", "debug", "--trace-sample-ratio=0.1"],
        "kubernetes": {"api": false},
        "podMonitor": {"enabled": true, "labels": {"release": "prometheus"}, "interval": "15s"},
        "prometheusRule": {"enabled": true, "labels": {"release": "prometheus"}},
        "slo": {
            "availability": {"objective": 0.995},
            "services": {
                "checkout": {
                    "availability": {"objective": 0.9995},
                    "latency": {"threshold_seconds": 0.25, "objective": 0.95},
                },
                "search \"beta\"": {"latency": {"objective": 0.9}},
            },
        },
    })
}

/// The ServiceMonitor (and its Service), names of its own, the Namespace object.
fn with_service_monitor() -> Value {
    json!({
        "fullnameOverride": "node-agent",
        "namespace": {"create": true},
        "serviceMonitor": {"enabled": true, "labels": {"team": "sre"}},
    })
}

/// Every rendering the tests check: (what, release, namespace, values).
fn renderings() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        ("defaults", RELEASE, NAMESPACE, json!({})),
        (
            "the plain manifest's",
            RELEASE,
            NAMESPACE,
            json!({"namespace": {"create": true}}),
        ),
        ("overridden", "edge", "monitoring", overridden()),
        (
            "with a ServiceMonitor",
            "obs",
            "observability",
            with_service_monitor(),
        ),
    ]
}

fn render(values: &Value) -> Rendered {
    helm_template(&chart_dir(), RELEASE, NAMESPACE, values)
}

fn is_operators(doc: &Value) -> bool {
    doc["apiVersion"] == OPERATOR_API
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Asserts that `v`'s keys are among `allowed` (what the object's schema knows).
fn only_keys(v: &Value, allowed: &[&str], what: &str) {
    let unknown: Vec<&str> = keys(v)
        .into_iter()
        .filter(|k| !allowed.contains(k))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what}: unknown fields {unknown:?} in {v}"
    );
}

/// Asserts that every label of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value, what: &str) {
    let selector = selector.as_object().expect("a label selector");
    assert!(
        !selector.is_empty(),
        "{what}: an empty selector selects everything"
    );
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "{what}: label {k} missing from {labels}");
    }
}

fn arg_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_owned)
        }
    })
}

#[test]
fn helm_lints_the_chart_strictly_with_default_and_overridden_values() {
    for (what, _, namespace, values) in renderings() {
        let report = helm_lint(&chart_dir(), namespace, &values, "v1.30.0");
        assert!(report.contains("passed"), "{what}: {report}");
    }
}

#[test]
fn every_rendered_object_passes_yamllint_and_the_kubernetes_schemas() {
    let mut lint = manifest_tool("yamllint");
    lint.arg("--strict")
        .arg("--config-file")
        .arg(deploy_dir().join(".yamllint.yaml"))
        .arg(chart_dir().join("Chart.yaml"))
        .arg(chart_dir().join("values.yaml"));
    check(lint);
    for (what, release, namespace, values) in renderings() {
        let rendered = helm_template(&chart_dir(), release, namespace, &values);
        let mut lint = manifest_tool("yamllint");
        lint.arg("--strict")
            .arg("--config-file")
            .arg(deploy_dir().join(".yamllint.yaml"))
            .arg(&rendered.path);
        check(lint);

        let kubernetes = rendered.docs.iter().filter(|d| !is_operators(d)).count();
        for version in KUBERNETES_VERSIONS {
            let mut validate = manifest_tool("kubernetes-validate");
            validate
                .args(["--strict", "--kubernetes-version", version])
                .arg(&rendered.path);
            let out = check(validate);
            // Every Kubernetes object was checked; the Operator's are skipped, with a warning.
            let passed = out.matches(" passed for resource ").count();
            assert_eq!(passed, kubernetes, "{what}, Kubernetes {version}: {out}");
        }
        operator_objects_are_well_formed(what, &rendered);
    }
}

/// The Prometheus Operator's objects, field by field (kubernetes-validate has no schema for
/// them, and no CRD can be fetched here): only fields of the Operator's v1 API, selecting the
/// agent's pods or Service, scraping its metrics port; the PrometheusRule's groups accepted by
/// `promtool check rules`.
fn operator_objects_are_well_formed(what: &str, rendered: &Rendered) {
    let ds = rendered.one("DaemonSet");
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let namespace = &ds["metadata"]["namespace"];
    let metrics_port = container(ds)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("the agent's metrics port");
    for doc in rendered.docs.iter().filter(|d| is_operators(d)) {
        let kind = doc["kind"].as_str().unwrap();
        let what = format!("{what}: {kind}");
        only_keys(doc, &["apiVersion", "kind", "metadata", "spec"], &what);
        only_keys(&doc["metadata"], &["name", "namespace", "labels"], &what);
        assert_eq!(&doc["metadata"]["namespace"], namespace, "{what}");
        assert!(doc["metadata"]["name"].is_string(), "{what}");
        let spec = &doc["spec"];
        match kind {
            "PodMonitor" | "ServiceMonitor" => {
                let (endpoints, target_labels) = if kind == "PodMonitor" {
                    only_keys(spec, &["selector", "podMetricsEndpoints"], &what);
                    ("podMetricsEndpoints", pod_labels)
                } else {
                    only_keys(spec, &["selector", "endpoints"], &what);
                    let service = rendered.one("Service");
                    assert_eq!(service["spec"]["clusterIP"], "None", "one endpoint per pod");
                    selects(&service["spec"]["selector"], pod_labels, "the Service");
                    let port = &service["spec"]["ports"][0];
                    assert_eq!(port["targetPort"], metrics_port["name"]);
                    assert_eq!(port["name"], "metrics");
                    ("endpoints", &service["metadata"]["labels"])
                };
                only_keys(&spec["selector"], &["matchLabels"], &what);
                selects(&spec["selector"]["matchLabels"], target_labels, &what);
                let endpoints = spec[endpoints].as_array().expect("endpoints");
                assert_eq!(endpoints.len(), 1, "{what}");
                for e in endpoints {
                    only_keys(e, &["port", "path", "interval", "relabelings"], &what);
                    assert_eq!(e["port"], "metrics", "{what}");
                    assert_eq!(e["path"], "/metrics", "{what}");
                    for r in e["relabelings"].as_array().into_iter().flatten() {
                        only_keys(r, &["sourceLabels", "targetLabel"], &what);
                    }
                }
            }
            "PrometheusRule" => {
                only_keys(spec, &["groups"], &what);
                let groups = spec["groups"].as_array().expect("groups");
                let names: BTreeSet<&str> =
                    groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
                assert_eq!(names.len(), groups.len(), "{what}: group names repeat");
                for group in groups {
                    only_keys(group, &["name", "interval", "limit", "rules"], &what);
                    for rule in group["rules"].as_array().expect("rules") {
                        only_keys(
                            rule,
                            &[
                                "record",
                                "alert",
                                "expr",
                                "for",
                                "keep_firing_for",
                                "labels",
                                "annotations",
                            ],
                            &what,
                        );
                        assert!(
                            rule.get("record").is_some() != rule.get("alert").is_some(),
                            "{what}: a rule records or alerts: {rule}"
                        );
                    }
                }
                promtool_check_rules(spec);
            }
            other => panic!("{what}: the chart renders no {other}"),
        }
    }
}

/// `promtool check rules` on a PrometheusRule's groups, as a Prometheus rule file.
fn promtool_check_rules(spec: &Value) -> PathBuf {
    let file = tempdir().join("rules.yaml");
    std::fs::write(&file, json!({"groups": spec["groups"]}).to_string()).unwrap();
    let mut promtool = Command::new("promtool");
    promtool.args(["check", "rules"]).arg(&file);
    check(promtool);
    file
}

/// Documents keyed by kind and name, for comparing two files whatever their order.
fn by_identity(docs: &[Value]) -> BTreeMap<(String, String), &Value> {
    let map: BTreeMap<_, _> = docs
        .iter()
        .map(|d| {
            let id = (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            (id, d)
        })
        .collect();
    assert_eq!(map.len(), docs.len(), "two objects of one kind and name");
    map
}

#[test]
fn the_plain_manifest_is_the_chart_rendered_with_its_defaults() {
    let rendered = render(&json!({"namespace": {"create": true}}));
    let path = deploy_dir().join("kubernetes").join("daemonset.yaml");
    let committed = yaml_documents(&path);
    let (chart, plain) = (by_identity(&rendered.docs), by_identity(&committed));
    let regenerate = "deploy/kubernetes/daemonset.yaml is rendered from the Helm chart: run \
                      `cargo xtask manifest` (helm template obs-agent deploy/helm/obs-agent \
                      -n observability --set namespace.create=true) and commit it";
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>(),
        "{regenerate}"
    );
    for (id, doc) in &chart {
        assert_eq!(
            doc, &plain[id],
            "{id:?} differs: {regenerate}\nchart: {doc}\nplain: {}",
            plain[id]
        );
    }
    // And so do the comments giving the reasons: the file is the rendering under a header.
    let text = std::fs::read_to_string(&path).unwrap();
    let body = text
        .find("\n---\n")
        .map(|at| &text[at + 1..])
        .expect("documents");
    assert_eq!(
        body,
        std::fs::read_to_string(&rendered.path).unwrap(),
        "{regenerate}"
    );
}

#[test]
fn the_defaults_give_the_agent_what_it_needs() {
    let rendered = render(&json!({}));
    let chart = yaml_documents(&chart_dir().join("Chart.yaml"))[0].clone();
    let ds = rendered.one("DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let c = container(ds);

    // The image is the agent's version, which is the chart's appVersion.
    let version = check({
        let mut c = Command::new(obs_integration_tests::agent_bin());
        c.arg("--version");
        c
    });
    assert_eq!(
        version.trim(),
        format!("obs-agent {}", chart["appVersion"].as_str().unwrap()),
        "Chart.yaml's appVersion (the default image tag) is not the agent's version"
    );
    assert_eq!(
        c["image"],
        format!("obs-agent:{}", chart["appVersion"].as_str().unwrap())
    );
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");

    // Every node, Linux x86_64 ones, no priority over workloads, no OTLP flag.
    assert_eq!(spec["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(
        spec["nodeSelector"],
        json!({"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"})
    );
    assert!(spec.get("priorityClassName").is_none());
    assert_eq!(strings(&c["args"]), ["--listen", "0.0.0.0:9464"]);
    assert_eq!(spec["terminationGracePeriodSeconds"], 120);

    // The node's name from the downward API.
    let env = c["env"].as_array().expect("env");
    let node_name = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );

    // The kubelet's log folders, read-only, at the node's paths (the links in
    // /var/log/containers point into /var/log/pods) and at the agent's default paths.
    let help = agent_help();
    for (path, flag) in [
        ("/var/log/pods", "--pod-logs"),
        ("/var/log/containers", "--container-logs"),
    ] {
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("{path} is not mounted"));
        assert_eq!(mount["readOnly"], true, "{path}");
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(volume["hostPath"]["path"], path);
        // The agent's default is where the chart mounts the folder.
        let at = help
            .find(&format!(" {flag} "))
            .unwrap_or_else(|| panic!("no {flag} in the agent's --help"));
        let line = help[at..].split("\n      --").next().unwrap();
        assert!(
            line.contains(&format!("[default: {path}]")),
            "{flag}'s default is not {path}: {line}"
        );
    }

    // The API path: a token, and exactly what the agent reads.
    let account = rendered.one("ServiceAccount");
    assert_eq!(account["automountServiceAccountToken"], true);
    assert_eq!(spec["automountServiceAccountToken"], true);
    assert_eq!(spec["serviceAccountName"], account["metadata"]["name"]);
    let role = rendered.one("ClusterRole");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
        ])
    );
    let binding = rendered.one("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(
        binding["subjects"],
        json!([{
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": NAMESPACE,
        }])
    );

    // Nothing optional: no Namespace (Helm needs it first), no Operator objects.
    let kinds: BTreeSet<&str> = rendered
        .docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "ServiceAccount"
        ])
    );
}

#[test]
fn each_value_changes_what_it_says() {
    let values = overridden();
    let rendered = helm_template(&chart_dir(), "edge", "monitoring", &values);
    let ds = rendered.one("DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let c = container(ds);

    // Named for the release, in its namespace.
    for doc in &rendered.docs {
        assert_eq!(doc["metadata"]["name"], "edge-obs-agent", "{doc}");
        assert_eq!(doc["metadata"]["namespace"], "monitoring", "{doc}");
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/instance"],
            "edge"
        );
    }
    assert_eq!(
        c["image"],
        "registry.example.com/observability/obs-agent:9.9.9-rc1"
    );
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["resources"], values["resources"]);
    // A list replaces the default; a map is merged into it (Helm's coalescing): the agent
    // stays on Linux x86_64 nodes unless a key is set to null.
    assert_eq!(spec["tolerations"], values["tolerations"]);
    assert_eq!(
        spec["nodeSelector"],
        json!({"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "pool": "edge"})
    );
    assert_eq!(spec["priorityClassName"], "observability-critical");
    assert_eq!(
        strings(&c["args"]),
        [
            "--listen",
            "0.0.0.0:9464",
            "--otlp-endpoint",
            "http://otel-collector.monitoring:4318",
            "--kubernetes-api",
            "off",
            "--log-level",
            "debug",
            "--trace-sample-ratio=0.1",
        ]
    );

    // kubernetes.api false: no token, no RBAC.
    assert_eq!(
        rendered.one("ServiceAccount")["automountServiceAccountToken"],
        false
    );
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert!(rendered.all("ClusterRole").is_empty());
    assert!(rendered.all("ClusterRoleBinding").is_empty());

    // The Operator's objects, with the labels the Prometheus selects them by.
    let monitor = rendered.one("PodMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["interval"], "15s");
    let rule = rendered.one("PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    assert!(rendered.all("ServiceMonitor").is_empty());
    assert!(rendered.all("Service").is_empty());
    assert!(rendered.all("Namespace").is_empty());

    // The other ones.
    let rendered = render(&with_service_monitor());
    assert_eq!(rendered.one("DaemonSet")["metadata"]["name"], "node-agent");
    let monitor = rendered.one("ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["team"], "sre");
    assert!(monitor["spec"]["endpoints"][0].get("interval").is_none());
    assert_eq!(rendered.one("Service")["metadata"]["name"], "node-agent");
    let namespace = rendered.one("Namespace");
    assert_eq!(namespace["metadata"]["name"], NAMESPACE);
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

#[test]
fn the_agent_accepts_every_rendered_args() {
    let help = agent_help();
    for (what, release, namespace, values) in renderings() {
        let rendered = helm_template(&chart_dir(), release, namespace, &values);
        let args = agent_args(container(rendered.one("DaemonSet")));
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            let name = flag.split('=').next().unwrap();
            assert!(
                help.contains(&format!(" {name} ")),
                "{what}: no {name} in --help"
            );
        }
        assert!(arg_value(&args, "--listen").is_some(), "{what}");
        // The agent's own parser takes them, values included (it stops at --help).
        let mut parse = Command::new(obs_integration_tests::agent_bin());
        parse.args(&args).arg("--help");
        check(parse);
    }
}

#[test]
fn the_chart_refuses_values_it_cannot_honour() {
    for (values, says) in [
        (
            json!({"podMonitor": {"enabled": true}, "serviceMonitor": {"enabled": true}}),
            "choose one",
        ),
        (json!({"imagee": {"tag": "1"}}), "'imagee' not allowed"),
        // A quoted "false" would be true in a template.
        (json!({"kubernetes": {"api": "false"}}), "/kubernetes/api"),
        (json!({"namespace": {"create": "yes"}}), "/namespace/create"),
        (
            json!({"slo": {"latency": {"threshold_seconds": 0.3}}}),
            "/slo/latency/threshold_seconds",
        ),
        (
            json!({"slo": {"services": {"a": {"availability": {"objective": 99.9}}}}}),
            "/slo/services/a/availability/objective",
        ),
        (json!({"otlp": {"url": "http://x"}}), "'url' not allowed"),
    ] {
        match try_helm_template(&chart_dir(), RELEASE, NAMESPACE, &values) {
            Ok(_) => panic!("the chart renders {values}"),
            Err(e) => assert!(e.contains(says), "{values}: {e}"),
        }
    }
}

#[test]
fn latency_thresholds_are_bounds_of_the_agents_histogram() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let allowed: Vec<f64> = schema["definitions"]["threshold"]["enum"]
        .as_array()
        .expect("the thresholds' enum")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(allowed, obs_agent::metrics::DURATION_BUCKETS);
}

/// The groups of a Prometheus rule file.
fn groups_of(file: &Path) -> Vec<Value> {
    let docs = yaml_documents(file);
    assert_eq!(docs.len(), 1, "{}: one document", file.display());
    docs[0]["groups"].as_array().cloned().unwrap_or_default()
}

/// The rule files of a folder, in Helm's order (`.Files.Glob` is sorted by path).
fn rule_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    files
}

/// The groups a PrometheusRule should hold for `files`: theirs, in order, the objectives'
/// replaced by `objectives` (or `objectives` last if no file has them).
fn expected_groups(files: &[PathBuf], objectives: &Value) -> Vec<Value> {
    let mut groups: Vec<Value> = files.iter().flat_map(|f| groups_of(f)).collect();
    match groups.iter_mut().find(|g| g["name"] == OBJECTIVES_GROUP) {
        Some(g) => *g = objectives.clone(),
        None => groups.push(objectives.clone()),
    }
    groups
}

fn rule_groups(rendered: &Rendered) -> Vec<Value> {
    rendered.one("PrometheusRule")["spec"]["groups"]
        .as_array()
        .cloned()
        .expect("groups")
}

/// The objectives group with the chart's default values, as
/// deploy/prometheus/rules/slo-objectives.yaml writes it for plain Prometheus.
fn default_objectives() -> Value {
    json!({
        "name": OBJECTIVES_GROUP,
        "rules": [
            {"record": "slo:availability_objective:ratio", "expr": "vector(0.999)"},
            {"record": "slo:latency_objective:ratio", "expr": "vector(0.99)"},
            {
                "record": "slo:latency_threshold:seconds",
                "expr": "vector(0.5)",
                "labels": {"le": "0.5"},
            },
        ],
    })
}

/// The chart's rules/ is a link to deploy/prometheus/rules (Helm reads only files inside the
/// chart, and follows links when it loads or packages one): one set of files for plain
/// Prometheus and the Operator. The PrometheusRule holds every group of every file, as written
/// (their `{{ $labels }}` are Prometheus' templates, not Helm's), but the objectives' group,
/// rendered from the chart's values, which by default are the file's: with the default values
/// the PrometheusRule holds exactly the files' groups. Checked on the files there (none yet
/// where the rules have not landed: then on the made-up ones only) and on files made here.
#[test]
fn the_prometheus_rule_holds_every_rule_file() {
    let shared = deploy_dir().join("prometheus").join("rules");
    assert_eq!(
        std::fs::read_link(chart_dir().join("rules")).expect("the chart's rules/ is a link"),
        Path::new("../../prometheus/rules")
    );
    assert_eq!(
        chart_dir().join("rules").canonicalize().unwrap(),
        shared.canonicalize().unwrap()
    );
    let on = json!({"prometheusRule": {"enabled": true}});
    let files = rule_files(&shared);
    let rendered = rule_groups(&render(&on));
    assert_eq!(rendered, expected_groups(&files, &default_objectives()));
    let from_files: Vec<Value> = files.iter().flat_map(|f| groups_of(f)).collect();
    if from_files.iter().any(|g| g["name"] == OBJECTIVES_GROUP) {
        assert_eq!(
            rendered, from_files,
            "the chart's defaults are not the rule files'"
        );
    } else {
        eprintln!(
            "deploy/prometheus/rules has {} rule files, none with the objectives: checked \
             against the made-up ones below",
            files.len()
        );
    }

    // A copy of the chart whose rules/ holds files made here.
    let copy = tempdir().join("obs-agent");
    check({
        let mut cp = Command::new("cp");
        cp.arg("-r").arg(chart_dir()).arg(&copy);
        cp
    });
    let rules = copy.join("rules");
    std::fs::remove_file(&rules).unwrap();
    std::fs::create_dir(&rules).unwrap();
    let alerts = "---\n\
        groups:\n  \
          - name: b-alerts\n    \
            rules:\n      \
              # Comments stay.\n      \
              - alert: ManyErrors\n        \
                expr: sum by (service_name) (rate(errors_total[5m])) > 1\n        \
                for: 5m\n        \
                annotations:\n          \
                  summary: \"{{ $labels.service_name }} fails: {{ $value }}\"\n";
    let records = "groups:\n  \
          - name: a-records\n    \
            rules:\n      \
              - record: service:x:rate5m\n        \
                expr: |\n          \
                  sum by (service_name) (\n            \
                    rate(x_total[5m])\n          \
                  )\n\
        \n  \
          - name: a-more\n    \
            rules:\n      \
              - record: service:y:rate5m\n        \
                expr: sum by (service_name) (rate(y_total[5m]))\n";
    let objectives = "groups:\n  \
          - name: obs-agent-slo-objectives\n    \
            rules:\n      \
              - record: slo:availability_objective:ratio\n        \
                expr: vector(0.5)\n";
    std::fs::write(rules.join("b.yaml"), alerts).unwrap();
    std::fs::write(rules.join("a.yaml"), records).unwrap();
    std::fs::write(rules.join("ab-objectives.yaml"), objectives).unwrap();
    std::fs::write(rules.join("README.md"), "not a rule file").unwrap();
    let rendered = helm_template(&copy, RELEASE, NAMESPACE, &on);
    let groups = rule_groups(&rendered);
    assert_eq!(
        groups,
        expected_groups(&rule_files(&rules), &default_objectives())
    );
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a-records", "a-more", OBJECTIVES_GROUP, "b-alerts"]);
    assert_eq!(
        groups[3]["rules"][0]["annotations"]["summary"],
        "{{ $labels.service_name }} fails: {{ $value }}"
    );
    let text = std::fs::read_to_string(&rendered.path).unwrap();
    assert!(text.contains("\n        # Comments stay.\n"), "{text}");
    let mut lint = manifest_tool("yamllint");
    lint.arg("--strict")
        .arg("--config-file")
        .arg(deploy_dir().join(".yamllint.yaml"))
        .arg(&rendered.path);
    check(lint);
    operator_objects_are_well_formed("made-up rule files", &rendered);

    // The objectives' group alone in its file, which the chart replaces whole.
    std::fs::write(
        rules.join("ab-objectives.yaml"),
        format!("{objectives}  - name: other\n    rules: []\n"),
    )
    .unwrap();
    let refused = try_helm_template(&copy, RELEASE, NAMESPACE, &on).err();
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("keep it alone in its file")),
        "{refused:?}"
    );
}

/// The slo values become the objectives' series, as deploy/prometheus/rules/slo-objectives.yaml
/// writes them: one without service_name (the default) and one per service of slo.services
/// that sets it; the latency threshold's `le` is the bucket bound as the agent writes it.
/// `promtool test rules` evaluates the rendered rules.
#[test]
fn the_slo_values_become_the_objectives_series() {
    let mut values = overridden();
    values["slo"]["services"]["batch"] = json!({"latency": {"threshold_seconds": 10}});
    let rendered = helm_template(&chart_dir(), "edge", "monitoring", &values);
    let rules = promtool_check_rules(&rendered.one("PrometheusRule")["spec"]);
    let sample = |record: &str, labels: &str, value: f64| json!({"labels": format!("slo:{record}{{{labels}}}"), "value": value});
    let tests = json!({
        "rule_files": [rules],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [],
            "promql_expr_test": [
                {
                    "expr": "slo:availability_objective:ratio",
                    "eval_time": "1m",
                    "exp_samples": [
                        sample("availability_objective:ratio", "", 0.995),
                        sample(
                            "availability_objective:ratio",
                            "service_name=\"checkout\"",
                            0.9995
                        ),
                    ],
                },
                {
                    "expr": "slo:latency_objective:ratio",
                    "eval_time": "1m",
                    "exp_samples": [
                        sample("latency_objective:ratio", "", 0.99),
                        sample("latency_objective:ratio", "service_name=\"checkout\"", 0.95),
                        sample(
                            "latency_objective:ratio",
                            "service_name=\"search \\\"beta\\\"\"",
                            0.9
                        ),
                    ],
                },
                {
                    "expr": "slo:latency_threshold:seconds",
                    "eval_time": "1m",
                    "exp_samples": [
                        sample("latency_threshold:seconds", "le=\"0.5\"", 0.5),
                        sample(
                            "latency_threshold:seconds",
                            "le=\"10.0\",service_name=\"batch\"",
                            10.0
                        ),
                        sample(
                            "latency_threshold:seconds",
                            "le=\"0.25\",service_name=\"checkout\"",
                            0.25
                        ),
                    ],
                },
            ],
        }],
    });
    let file = tempdir().join("objectives_test.yaml");
    std::fs::write(&file, tests.to_string()).unwrap();
    let (ok, out) = outcome(Command::new("promtool").args(["test", "rules"]).arg(&file));
    assert!(
        ok,
        "promtool test rules:\n{out}\nrules:\n{}",
        std::fs::read_to_string(rules).unwrap()
    );
}
