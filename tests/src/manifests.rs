//! deploy/'s Kubernetes objects as the tests read them: the PyPI tools `cargo xtask test`
//! installs (yamllint, kubernetes-validate, and helm-python-sdk driven by
//! deploy/helm/helm-sdk.py), YAML documents parsed by PyYAML into JSON values, and the Helm
//! chart linted and rendered with given values.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::{agent_bin, tempdir, workspace_root};

/// The release and namespace deploy/kubernetes/daemonset.yaml is rendered for.
pub const RELEASE: &str = "obs-agent";
pub const NAMESPACE: &str = "observability";

pub fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// The Helm chart.
pub fn chart_dir() -> PathBuf {
    deploy_dir().join("helm").join("obs-agent")
}

/// The folder of the PyPI tools `cargo xtask test` installs (`pip install --target`).
pub fn manifest_tools() -> PathBuf {
    PathBuf::from(std::env::var_os("OBS_MANIFEST_TOOLS").unwrap_or_else(|| {
        panic!(
            "OBS_MANIFEST_TOOLS is not set: run the integration tests through `cargo xtask test`"
        )
    }))
}

/// One of those tools' programs.
pub fn manifest_tool(program: &str) -> Command {
    let mut cmd = Command::new(manifest_tools().join("bin").join(program));
    cmd.env("PYTHONPATH", manifest_tools());
    cmd
}

/// python3 with those tools' modules (PyYAML, helm_python).
pub fn python() -> Command {
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", manifest_tools());
    cmd
}

/// Runs a command: whether it succeeded, and its stdout then stderr.
pub fn outcome(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs a command; panics with its output unless it succeeds.
pub fn check(mut cmd: Command) -> String {
    let (ok, text) = outcome(&mut cmd);
    assert!(ok, "{cmd:?} failed:\n{text}");
    text
}

/// The YAML documents of a file, as JSON, parsed by PyYAML (kubernetes-validate's parser).
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let mut cmd = python();
    cmd.args([
        "-c",
        "import json, sys, yaml\n\
         json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], \
         sys.stdout)",
    ])
    .arg(path);
    serde_json::from_str(&check(cmd)).expect("PyYAML's JSON")
}

/// deploy/helm/helm-sdk.py (`helm template`/`helm lint` through Helm's SDK) with `values` (a
/// values file of its own) and the release's namespace.
fn helm_sdk(command: &str, namespace: &str, values: &Value) -> Command {
    let file = tempdir().join("values.json");
    std::fs::write(&file, values.to_string()).unwrap();
    let mut cmd = python();
    cmd.arg(deploy_dir().join("helm").join("helm-sdk.py"))
        .arg(command)
        .args(["--namespace", namespace, "--values"])
        .arg(file);
    cmd
}

/// The chart rendered: the file `helm template` would print, and its documents.
pub struct Rendered {
    pub path: PathBuf,
    pub docs: Vec<Value>,
}

impl Rendered {
    /// The objects of one kind.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        find(&self.docs, kind)
    }

    /// The one object of a kind.
    pub fn one(&self, kind: &str) -> &Value {
        let found = self.all(kind);
        assert_eq!(
            found.len(),
            1,
            "expected one {kind} in {}",
            self.path.display()
        );
        found[0]
    }
}

/// `helm template RELEASE CHART -n NAMESPACE -f VALUES`, or Helm's error.
pub fn try_helm_template(
    chart: &Path,
    release: &str,
    namespace: &str,
    values: &Value,
) -> Result<Rendered, String> {
    let mut cmd = helm_sdk("template", namespace, values);
    let path = tempdir().join("rendered.yaml");
    cmd.arg(release).arg(chart);
    let out = cmd.output().expect("python3");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    std::fs::write(&path, &out.stdout).unwrap();
    let docs = yaml_documents(&path);
    Ok(Rendered { path, docs })
}

pub fn helm_template(chart: &Path, release: &str, namespace: &str, values: &Value) -> Rendered {
    try_helm_template(chart, release, namespace, values)
        .unwrap_or_else(|e| panic!("helm template {} with {values}: {e}", chart.display()))
}

/// `helm lint --strict` (warnings fail too) against Kubernetes `kube_version`: its report.
pub fn helm_lint(chart: &Path, namespace: &str, values: &Value, kube_version: &str) -> String {
    let mut cmd = helm_sdk("lint", namespace, values);
    cmd.arg(chart)
        .args(["--strict", "--kube-version", kube_version]);
    check(cmd)
}

pub fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

pub fn daemonset(docs: &[Value]) -> &Value {
    let sets = find(docs, "DaemonSet");
    assert_eq!(sets.len(), 1, "expected one DaemonSet");
    sets[0]
}

/// The DaemonSet's one container (the agent).
pub fn container(ds: &Value) -> &Value {
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "expected one container (the agent)");
    &containers[0]
}

/// A YAML list of strings.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `obs-agent --help`.
pub fn agent_help() -> String {
    check({
        let mut c = Command::new(agent_bin());
        c.arg("--help");
        c
    })
}

/// The container's args, as the agent is run with them.
pub fn agent_args(container: &Value) -> Vec<String> {
    strings(&container["args"])
}
