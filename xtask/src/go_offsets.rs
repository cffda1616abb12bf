//! `cargo xtask go-offsets [--check]`: the offsets table (`agent/data/go-offsets.json`) the
//! agent reads the memory of binaries without DWARF with. Builds the probe program
//! (xtask/go-offsets-probe) with every supported Go release, asks the agent what their DWARF
//! says (`obs-agent inspect --json`, `dwarf_layouts`: exactly the fields the agent reads) and
//! writes one entry per release. `--check` compares instead of writing: a table that no longer
//! matches what the toolchains build fails, naming the release and field.
//!
//! Adding a Go release: append it to `go::RELEASES`, then run this command.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::{
    build::build,
    go::{self, Toolchain},
    tools::{output, workspace_root},
};

/// The table, relative to the workspace root.
pub const TABLE_PATH: &str = "agent/data/go-offsets.json";
const PROBE_DIR: &str = "xtask/go-offsets-probe";

#[derive(clap::Args)]
pub struct GoOffsetsArgs {
    /// Compare the table with what the toolchains build instead of writing it; fail on any
    /// difference.
    #[arg(long)]
    check: bool,
}

pub fn go_offsets(args: GoOffsetsArgs) -> Result<()> {
    let toolchains = go::install_all()?;
    let agent = build()?;
    if args.check {
        check(&agent, &toolchains)
    } else {
        let path = workspace_root().join(TABLE_PATH);
        std::fs::write(&path, render(&generate(&agent, &toolchains)?)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "xtask: wrote {TABLE_PATH} ({} Go releases)",
            toolchains.len()
        );
        Ok(())
    }
}

/// Fails, naming each difference, unless the table in the repository is what the toolchains
/// build now.
pub fn check(agent: &Path, toolchains: &[Toolchain]) -> Result<()> {
    let path = workspace_root().join(TABLE_PATH);
    let stored_text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let stored: Value = serde_json::from_str(&stored_text)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let built = generate(agent, toolchains)?;
    let (problems, notes) = differences(&stored, &built);
    for note in notes {
        eprintln!("xtask: note: {note}");
    }
    if !problems.is_empty() {
        bail!(
            "{TABLE_PATH} is stale; run `cargo xtask go-offsets`:\n  {}",
            problems.join("\n  ")
        );
    }
    if stored_text != render(&stored)? {
        bail!("{TABLE_PATH} is not formatted as generated; run `cargo xtask go-offsets`");
    }
    eprintln!(
        "xtask: {TABLE_PATH} matches Go {}",
        toolchains
            .iter()
            .map(|t| t.minor)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The table for these toolchains, oldest release first.
fn generate(agent: &Path, toolchains: &[Toolchain]) -> Result<Value> {
    let mut releases = Map::new();
    let mut fields = None;
    for toolchain in toolchains {
        let probe = build_probe(toolchain)?;
        let report: Value = serde_json::from_str(&output(
            Command::new(agent).arg("inspect").arg("--json").arg(&probe),
        )?)
        .context("obs-agent inspect --json printed something else than JSON")?;
        let go_version = report["go_version"]
            .as_str()
            .with_context(|| format!("{} has no Go build info", probe.display()))?;
        if report["go_release"].as_str() != Some(toolchain.minor) {
            bail!(
                "the Go {} toolchain built a {go_version} binary ({})",
                toolchain.minor,
                probe.display()
            );
        }
        let layouts = report["dwarf_layouts"].clone();
        if !layouts.is_object() {
            bail!(
                "{} (built with {go_version}) has no DWARF to read offsets from",
                probe.display()
            );
        }
        fields = Some(report["wanted_fields"].clone());
        releases.insert(
            toolchain.minor.to_owned(),
            json!({ "toolchain": go_version, "layouts": layouts }),
        );
    }
    Ok(json!({
        "generated_by": "cargo xtask go-offsets: the DWARF of xtask/go-offsets-probe built with \
                         each Go release, read by obs-agent inspect --json. Do not edit.",
        "fields": fields.context("no Go toolchain")?,
        "releases": releases,
    }))
}

fn render(table: &Value) -> Result<String> {
    Ok(serde_json::to_string_pretty(table)? + "\n")
}

/// The probe built with `toolchain`, cached under target/ by exact toolchain version while
/// newer than its source.
fn build_probe(toolchain: &Toolchain) -> Result<PathBuf> {
    let version = go::version_of(&toolchain.go)?;
    let src = workspace_root().join(PROBE_DIR);
    let out = workspace_root()
        .join("target/go-offsets-probe")
        .join(&version);
    if !is_newer_than_sources(&out, &src) {
        std::fs::create_dir_all(out.parent().expect("has a parent"))?;
        go::go_build(&toolchain.go, &src, &out, &[], &[])?;
    }
    Ok(out)
}

fn is_newer_than_sources(out: &Path, src: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(out) else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir(src) else {
        return false;
    };
    entries
        .flatten()
        .all(|e| modified(&e.path()).is_some_and(|m| m <= built))
}

/// Differences between the stored and the built table: (problems that make it stale, notes).
/// A toolchain of another patch release with the same layouts is a note only: Debian updates
/// its packages, and patch releases do not change struct layouts.
fn differences(stored: &Value, built: &Value) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if stored["fields"] != built["fields"] {
        problems.push(format!(
            "the fields the agent reads changed: table has {}, agent reads {}",
            stored["fields"], built["fields"]
        ));
    }
    let empty = Map::new();
    let stored_releases = stored["releases"].as_object().unwrap_or(&empty);
    let built_releases = built["releases"].as_object().unwrap_or(&empty);
    for release in stored_releases.keys() {
        if !built_releases.contains_key(release) {
            problems.push(format!(
                "Go {release}: in the table, not a supported release"
            ));
        }
    }
    for (release, b) in built_releases {
        let Some(s) = stored_releases.get(release) else {
            problems.push(format!("Go {release}: missing from the table"));
            continue;
        };
        if s["toolchain"] != b["toolchain"] {
            notes.push(format!(
                "Go {release}: table generated from {}, built with {}",
                s["toolchain"], b["toolchain"]
            ));
        }
        let (sl, bl) = (
            s["layouts"].as_object().unwrap_or(&empty),
            b["layouts"].as_object().unwrap_or(&empty),
        );
        let mut structs: Vec<&String> = sl.keys().chain(bl.keys()).collect();
        structs.sort();
        structs.dedup();
        for strukt in structs {
            let (sm, bm) = (sl.get(strukt), bl.get(strukt));
            let (Some(sm), Some(bm)) =
                (sm.and_then(Value::as_object), bm.and_then(Value::as_object))
            else {
                problems.push(format!(
                    "Go {release}: {strukt}: {} in the table, {} in the build",
                    if sm.is_some() { "present" } else { "absent" },
                    if bm.is_some() { "present" } else { "absent" },
                ));
                continue;
            };
            let mut members: Vec<&String> = sm.keys().chain(bm.keys()).collect();
            members.sort();
            members.dedup();
            for member in members {
                let (a, b) = (sm.get(member), bm.get(member));
                if a != b {
                    let show = |v: Option<&Value>| v.map_or("absent".to_owned(), Value::to_string);
                    problems.push(format!(
                        "Go {release}: {strukt}.{member}: {} in the table, {} in the build",
                        show(a),
                        show(b)
                    ));
                }
            }
        }
    }
    (problems, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(toolchain: &str, tree: u64) -> Value {
        json!({
            "fields": {"net/http.ServeMux": ["tree"]},
            "releases": {"1.22": {"toolchain": toolchain, "layouts": {
                "net/http.ServeMux": {"tree": tree}
            }}}
        })
    }

    #[test]
    fn differences_name_release_and_field() {
        let (problems, notes) = differences(&table("go1.22.1", 24), &table("go1.22.1", 24));
        assert!(problems.is_empty() && notes.is_empty());
        let (problems, _) = differences(&table("go1.22.1", 24), &table("go1.22.1", 32));
        assert_eq!(
            problems,
            ["Go 1.22: net/http.ServeMux.tree: 24 in the table, 32 in the build"]
        );
        let (problems, notes) = differences(&table("go1.22.1", 24), &table("go1.22.2", 24));
        assert!(problems.is_empty());
        assert_eq!(notes.len(), 1);
        let mut extra = table("go1.22.1", 24);
        extra["releases"]["1.23"] = extra["releases"]["1.22"].clone();
        let (problems, _) = differences(&table("go1.22.1", 24), &extra);
        assert_eq!(problems, ["Go 1.23: missing from the table"]);
    }
}
