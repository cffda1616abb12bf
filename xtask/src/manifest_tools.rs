//! The PyPI tools that check deploy/'s manifests and Helm chart offline: yamllint,
//! kubernetes-validate (it carries the Kubernetes API schemas of every release it knows, so no
//! cluster is needed) and helm-python-sdk (Helm 4's Go SDK as a library: lint and render
//! without a helm binary, driven by deploy/helm/helm-sdk.py). Installed once per pinned version
//! into the tool cache with `pip install --target`.
//!
//! `cargo xtask manifest [--check]` renders deploy/kubernetes/daemonset.yaml from the chart.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::tools::{output, pip_install_cached, workspace_root};

/// Pinned so a new release of a tool or of its schemas cannot change a test's verdict.
const PACKAGES: &[&str] = &[
    "helm-python-sdk==0.2.2",
    "kubernetes-validate==1.37.0",
    "yamllint==1.38.0",
];
/// What `PACKAGES` install: programs into `bin/`, helm-python-sdk a module (with Helm as a
/// shared library in it).
const INSTALLED: &[&str] = &[
    "bin/kubernetes-validate",
    "bin/yamllint",
    "helm_python/__init__.py",
];

/// The plain manifest, rendered from the chart; both relative to the workspace root.
const PLAIN_MANIFEST: &str = "deploy/kubernetes/daemonset.yaml";
const CHART: &str = "deploy/helm/obs-agent";
const HELM_SDK: &str = "deploy/helm/helm-sdk.py";

/// Its header: `helm template` starts the documents at their `---`.
const PLAIN_MANIFEST_HEADER: &str = "\
# obs-agent on every Linux x86_64 node: in the host pid namespace (it watches the node's processes
# through /proc), with the four capabilities it needs (not privileged), serving Prometheus
# metrics on the pod's port 9464. The image is built from deploy/Dockerfile.
#   kubectl apply -f deploy/kubernetes/daemonset.yaml
# Rendered by `cargo xtask manifest` from the Helm chart deploy/helm/obs-agent with its default
# values (release obs-agent, namespace observability, and the Namespace object itself): edit
# the chart, not this file, then run that. Checked by tests/tests/helm.rs (the same as the
# chart renders) and tests/tests/deploy.rs (yamllint, kubernetes-validate --strict, the
# invariants); deploy/README.md says why each setting is what it is.
";

#[derive(clap::Args)]
pub struct ManifestArgs {
    /// Compare deploy/kubernetes/daemonset.yaml with what the chart renders instead of writing
    /// it; fail if they differ.
    #[arg(long)]
    check: bool,
}

/// Installs the tools (idempotent; instant when done) and returns their `--target` folder:
/// programs in `bin/`, run with the folder itself as PYTHONPATH.
pub fn install() -> Result<PathBuf> {
    let name = format!("manifest-tools-{}", PACKAGES.join("-").replace("==", "-"));
    let dir = pip_install_cached(&name, PACKAGES, INSTALLED[0], true)?;
    if let Some(missing) = INSTALLED.iter().find(|p| !dir.join(p).exists()) {
        bail!("pip did not install {}", dir.join(missing).display());
    }
    Ok(dir)
}

/// The plain manifest as the chart renders it: `helm template obs-agent deploy/helm/obs-agent
/// -n observability --set namespace.create=true`, under its header.
pub fn render_plain_manifest(tools: &std::path::Path) -> Result<String> {
    let root = workspace_root();
    let rendered = output(
        Command::new("python3")
            .env("PYTHONPATH", tools)
            .arg(root.join(HELM_SDK))
            .args(["template", "obs-agent"])
            .arg(root.join(CHART))
            .args([
                "--namespace",
                "observability",
                "--set",
                "namespace.create=true",
            ]),
    )
    .context("rendering the Helm chart")?;
    Ok(format!("{PLAIN_MANIFEST_HEADER}{rendered}\n"))
}

pub fn manifest(args: ManifestArgs) -> Result<()> {
    let rendered = render_plain_manifest(&install()?)?;
    let path = workspace_root().join(PLAIN_MANIFEST);
    if args.check {
        let committed = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if committed != rendered {
            bail!("{PLAIN_MANIFEST} is not what {CHART} renders: run `cargo xtask manifest`");
        }
        eprintln!("xtask: {PLAIN_MANIFEST} is what {CHART} renders");
        return Ok(());
    }
    std::fs::write(&path, rendered).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: wrote {PLAIN_MANIFEST} from {CHART}");
    Ok(())
}
