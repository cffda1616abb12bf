//! PyPI's grafana-foundation-sdk, Grafana's own Python types for dashboards: the tests parse
//! deploy/grafana/dashboards/*.json with it (no Grafana server can be had here). Installed once
//! per pinned version into the tool cache with `pip install --target`.

use std::path::PathBuf;

use crate::tools::pip_install_cached;

/// The types generated for Grafana 11.6 (the newest line the SDK publishes besides "next"):
/// every release line is its own version, `<build timestamp>!<Grafana version>`, and an
/// unpinned install would pick Grafana 10.1's types. It has no dependencies.
const SDK: &str = "grafana-foundation-sdk==1769699379!11.6.0";

/// Installs the SDK (idempotent; instant when done) and returns its `--target` folder, to be
/// put on PYTHONPATH.
pub fn install() -> anyhow::Result<PathBuf> {
    pip_install_cached(
        "grafana-foundation-sdk-1769699379-11.6.0",
        &[SDK],
        "grafana_foundation_sdk/models/dashboard.py",
        false,
    )
}
