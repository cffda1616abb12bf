//! Grafana, as far as the tests can have it (no Grafana server can be had here): the dashboards
//! in deploy/grafana/dashboards read with Grafana's own types (PyPI `grafana-foundation-sdk`,
//! through tests/src/dashboards.py), and their queries written out as Grafana would send them to
//! Prometheus: template variables substituted as its Prometheus data source does, and
//! `$__interval`, `$__rate_interval` and `$__range` computed for a time range.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{env_path, servers::python3, workspace_root};

pub fn dashboards_dir() -> PathBuf {
    workspace_root().join("deploy/grafana/dashboards")
}

/// A dashboard as grafana-foundation-sdk read it.
#[derive(Debug)]
pub struct Dashboard {
    pub file: String,
    pub uid: String,
    pub title: String,
    pub schema_version: u64,
    pub tags: Vec<String>,
    /// Keys of the JSON the SDK does not write back: keys Grafana's schema does not know.
    pub dropped: Vec<String>,
    pub variables: Vec<Variable>,
    /// Every panel, rows included (a collapsed row's panels follow it).
    pub panels: Vec<Panel>,
}

#[derive(Clone, Debug)]
pub struct Variable {
    pub name: String,
    /// `query`, `datasource`, `custom`, ...
    pub kind: String,
    /// A query variable's query (`label_values(...)`); a data source variable's plugin type.
    pub query: Option<String>,
    pub datasource: Option<DataSource>,
    pub include_all: bool,
    pub all_value: Option<String>,
    pub multi: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSource {
    pub kind: Option<String>,
    pub uid: Option<String>,
}

#[derive(Debug)]
pub struct Panel {
    pub id: Option<u64>,
    pub title: String,
    pub kind: String,
    /// A panel type one of Grafana's own plugins registers (or a row).
    pub known_type: bool,
    pub datasource: Option<DataSource>,
    /// x, y, w, h.
    pub grid: Option<[i64; 4]>,
    pub targets: Vec<Target>,
}

#[derive(Debug)]
pub struct Target {
    /// Read as a Prometheus query (the SDK reads an unknown data source's as a bag of keys).
    pub prometheus: bool,
    pub ref_id: String,
    pub expr: String,
    pub instant: bool,
    pub format: Option<String>,
    pub hide: bool,
    pub datasource: Option<DataSource>,
}

/// Every dashboard in deploy/grafana/dashboards, read by grafana-foundation-sdk (installed by
/// `cargo xtask test`, its folder in OBS_DASHBOARD_TOOLS).
pub fn read_dashboards() -> Vec<Dashboard> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .expect("deploy/grafana/dashboards")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no dashboards in deploy/grafana/dashboards"
    );
    let out = Command::new(python3())
        .arg(workspace_root().join("tests/src/dashboards.py"))
        .args(&files)
        .env("PYTHONPATH", env_path("OBS_DASHBOARD_TOOLS"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/src/dashboards.py");
    assert!(
        out.status.success(),
        "grafana-foundation-sdk could not read the dashboards"
    );
    let all: Value = serde_json::from_slice(&out.stdout).expect("dashboards.py's JSON");
    all.as_array().unwrap().iter().map(dashboard).collect()
}

fn string(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(string).collect()
}

fn optional(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

fn datasource(v: &Value) -> Option<DataSource> {
    v.is_object().then(|| DataSource {
        kind: optional(&v["type"]),
        uid: optional(&v["uid"]),
    })
}

fn dashboard(d: &Value) -> Dashboard {
    Dashboard {
        file: string(&d["file"]),
        uid: string(&d["uid"]),
        title: string(&d["title"]),
        schema_version: d["schema_version"].as_u64().unwrap_or(0),
        tags: strings(&d["tags"]),
        dropped: strings(&d["dropped"]),
        variables: d["variables"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| Variable {
                name: string(&v["name"]),
                kind: string(&v["type"]),
                query: optional(&v["query"]),
                datasource: datasource(&v["datasource"]),
                include_all: v["include_all"].as_bool().unwrap_or(false),
                all_value: optional(&v["all_value"]),
                multi: v["multi"].as_bool().unwrap_or(false),
            })
            .collect(),
        panels: d["panels"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| Panel {
                id: p["id"].as_u64(),
                title: string(&p["title"]),
                kind: string(&p["type"]),
                known_type: p["known_type"].as_bool().unwrap_or(false),
                datasource: datasource(&p["datasource"]),
                grid: p["grid"]
                    .is_object()
                    .then(|| ["x", "y", "w", "h"].map(|k| p["grid"][k].as_i64().unwrap_or(-1))),
                targets: p["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| Target {
                        prometheus: t["kind"] == "prometheus",
                        ref_id: string(&t["ref_id"]),
                        expr: string(&t["expr"]),
                        instant: t["instant"].as_bool().unwrap_or(false),
                        format: optional(&t["format"]),
                        hide: t["hide"].as_bool().unwrap_or(false),
                        datasource: datasource(&t["datasource"]),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// What a variable is set to on the dashboard.
#[derive(Clone, Debug)]
pub enum Selection {
    /// "All": the variable's `allValue` if it has one, else every value it offers.
    All(Vec<String>),
    Values(Vec<String>),
}

/// A dashboard's time range and variables, as Grafana holds them when it runs the queries.
pub struct Context {
    /// Seconds since the epoch.
    pub start: f64,
    pub end: f64,
    /// The data source's scrape interval ("Scrape interval" in its settings; Grafana's floor
    /// for `$__interval`).
    pub scrape_interval: f64,
    /// Points a panel asks for at most (Grafana's default is the panel's width in pixels).
    pub max_data_points: f64,
    pub variables: BTreeMap<String, (Variable, Selection)>,
}

impl Context {
    /// `$__interval`, the step of range queries: the range over `max_data_points`, at least the
    /// scrape interval (Grafana also rounds it to a "nice" value; whole seconds here).
    pub fn interval(&self) -> f64 {
        ((self.end - self.start) / self.max_data_points)
            .ceil()
            .max(self.scrape_interval)
    }

    /// `$__rate_interval`: max(`$__interval` + scrape interval, 4 x scrape interval), so that
    /// each window holds enough samples for `rate()` and consecutive windows overlap.
    pub fn rate_interval(&self) -> f64 {
        (self.interval() + self.scrape_interval).max(4.0 * self.scrape_interval)
    }

    /// `expr` as Grafana's Prometheus data source sends it. Unknown names (`$1` in a
    /// `label_replace`) are left as they are, as Grafana leaves them; `[[name]]`, the
    /// deprecated syntax, is refused.
    pub fn interpolate(&self, expr: &str) -> String {
        assert!(
            !expr.contains("[["),
            "deprecated [[variable]] syntax in {expr}"
        );
        let builtins: BTreeMap<&str, String> = [
            ("__interval", format!("{}s", self.interval())),
            ("__interval_ms", format!("{}", self.interval() * 1000.0)),
            ("__rate_interval", format!("{}s", self.rate_interval())),
            ("__range", format!("{}s", (self.end - self.start).round())),
            ("__range_s", format!("{}", (self.end - self.start).round())),
        ]
        .into();
        let mut out = String::new();
        let mut rest = expr;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, format, len) = if let Some(braced) = after.strip_prefix('{') {
                let end = braced.find('}').expect("unclosed ${");
                let (name, format) = match braced[..end].split_once(':') {
                    Some((n, f)) => (n, Some(f)),
                    None => (&braced[..end], None),
                };
                (name, format, end + 2)
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], None, end)
            };
            let replaced = match (builtins.get(name), self.variables.get(name)) {
                (Some(value), _) => Some(value.clone()),
                (None, Some((variable, selection))) => {
                    Some(format_value(variable, selection, format))
                }
                (None, None) => None,
            };
            match replaced {
                Some(value) => out.push_str(&value),
                None => out.push_str(&rest[at..at + 1 + len]),
            }
            rest = &rest[at + 1 + len..];
        }
        out.push_str(rest);
        out
    }
}

/// A variable's value as the Prometheus data source writes it into a query (its
/// `interpolateQueryExpr`): a single-valued variable verbatim (backslashes and quotes escaped);
/// one that may be multi-valued or All regex-escaped, several values as `(a|b)`; All as the
/// variable's `allValue` when it has one, unescaped.
fn format_value(variable: &Variable, selection: &Selection, format: Option<&str>) -> String {
    assert!(
        format.is_none() || format == Some("raw"),
        "variable format {format:?} of ${} is not modelled here",
        variable.name
    );
    let values = match selection {
        Selection::All(_) if variable.all_value.is_some() => {
            return variable.all_value.clone().unwrap();
        }
        Selection::All(values) | Selection::Values(values) => values,
    };
    if format == Some("raw") {
        return values.join(",");
    }
    if !variable.multi && !variable.include_all {
        return values
            .first()
            .map(|v| regular_escape(v))
            .unwrap_or_default();
    }
    let escaped: Vec<String> = values.iter().map(|v| special_regex_escape(v)).collect();
    match escaped.len() {
        1 => escaped[0].clone(),
        _ => format!("({})", escaped.join("|")),
    }
}

/// The Prometheus data source's `prometheusRegularEscape`.
fn regular_escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\\\'")
}

/// The Prometheus data source's `prometheusSpecialRegexEscape`: a regex metacharacter gets two
/// backslashes, one for the PromQL string and one for the regex.
fn special_regex_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\\\\\"),
            '$' | '^' | '*' | '{' | '}' | '[' | ']' | '\'' | '+' | '?' | '.' | '(' | ')' | '|' => {
                out.push_str("\\\\");
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// The metric names a query reads (every name followed by a `{` selector: the dashboards and
/// rules select every metric so).
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    for (i, _) in expr.match_indices('{') {
        let start = bytes[..i]
            .iter()
            .rposition(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b':'))
            .map_or(0, |p| p + 1);
        let name = &expr[start..i];
        // `${variable}` is a variable, not a metric.
        if !name.is_empty() && !expr[..start].ends_with('$') && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variable(name: &str, multi: bool, all_value: Option<&str>) -> Variable {
        Variable {
            name: name.into(),
            kind: "query".into(),
            query: None,
            datasource: None,
            include_all: true,
            all_value: all_value.map(Into::into),
            multi,
        }
    }

    fn context(selections: &[(Variable, Selection)]) -> Context {
        Context {
            start: 1000.0,
            end: 1300.0,
            scrape_interval: 1.0,
            max_data_points: 1000.0,
            variables: selections
                .iter()
                .map(|(v, s)| (v.name.clone(), (v.clone(), s.clone())))
                .collect(),
        }
    }

    #[test]
    fn variables_are_written_as_the_prometheus_data_source_writes_them() {
        let ctx = context(&[
            (
                variable("namespace", true, Some(".*")),
                Selection::All(vec![]),
            ),
            (
                variable("service", true, None),
                Selection::Values(vec!["a.b".into(), "c".into()]),
            ),
            (
                variable("job", true, None),
                Selection::All(vec!["obs-agent".into()]),
            ),
        ]);
        assert_eq!(
            ctx.interpolate(
                r#"rate(x{ns=~"$namespace", s=~"${service}", job=~"$job"}[$__rate_interval]) $1"#
            ),
            r#"rate(x{ns=~".*", s=~"(a\\.b|c)", job=~"obs-agent"}[4s]) $1"#
        );
        assert_eq!(ctx.interpolate("[$__range] $__interval"), "[300s] 1s");
    }

    #[test]
    fn metric_names_are_the_selected_ones() {
        assert_eq!(
            metric_names(r#"sum(rate(a_b{x="${y}"}[1m])) / on () c:d:e{} or vector(0)"#),
            ["a_b", "c:d:e"]
        );
    }
}
