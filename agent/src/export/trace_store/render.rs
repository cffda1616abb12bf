//! What the HTTP endpoints show of the store: one line per trace (`/traces`), a trace as JSON
//! or as an indented tree (`/traces/{id}`), and the trace id read from the URL.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
};

use serde::Serialize;

use crate::spans::trace::{hex, Span, SpanId, SpanKind, TraceId, Value};

/// One line of `/traces`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub root_service: String,
    pub root_name: String,
    pub start_unix_nanos: u64,
    #[serde(skip)]
    pub duration_nanos: u64,
    pub duration_ms: f64,
    pub span_count: usize,
    /// Whether any span of the trace is an error.
    pub error: bool,
}

impl TraceSummary {
    pub(super) fn of(id: &TraceId, spans: &[&Span]) -> Self {
        let start = spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
        let end = spans
            .iter()
            .map(|s| s.end_unix_nanos)
            .max()
            .unwrap_or(start);
        let root = roots(spans).into_iter().next();
        let duration_nanos = end.saturating_sub(start);
        Self {
            trace_id: hex(id),
            root_service: root.map_or_else(String::new, |s| s.resource.service_name.clone()),
            root_name: root.map_or_else(String::new, |s| s.name()),
            start_unix_nanos: start,
            duration_nanos,
            duration_ms: millis(duration_nanos),
            span_count: spans.len(),
            error: spans.iter().any(|s| s.error),
        }
    }
}

fn millis(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

fn duration_of(s: &Span) -> u64 {
    s.end_unix_nanos.saturating_sub(s.start_unix_nanos)
}

fn status(s: &Span) -> &'static str {
    if s.error {
        "ERROR"
    } else {
        "OK"
    }
}

/// Spans without a parent in `spans` (true roots, and spans whose parent is not stored), by
/// start time.
fn roots<'a>(spans: &[&'a Span]) -> Vec<&'a Span> {
    let ids: HashSet<SpanId> = if spans.len() > 16 {
        spans.iter().map(|s| s.span_id).collect()
    } else {
        HashSet::new()
    };
    let stored = |p: &SpanId| {
        if spans.len() > 16 {
            ids.contains(p)
        } else {
            spans.iter().any(|s| s.span_id == *p)
        }
    };
    let mut roots: Vec<&Span> = spans
        .iter()
        .copied()
        .filter(|s| s.parent_span_id.is_none_or(|p| !stored(&p)))
        .collect();
    roots.sort_by_key(|s| (s.start_unix_nanos, s.parent_span_id.is_some()));
    roots
}

/// `/traces/{id}`: every span with ids in hex, attributes and resource.
#[derive(Debug, Serialize)]
pub struct TraceJson {
    pub trace_id: String,
    pub span_count: usize,
    pub spans: Vec<SpanJson>,
}

#[derive(Debug, Serialize)]
pub struct SpanJson {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub kind: &'static str,
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub duration_ms: f64,
    pub status: &'static str,
    pub attributes: BTreeMap<&'static str, serde_json::Value>,
    pub resource: BTreeMap<&'static str, serde_json::Value>,
}

impl TraceJson {
    pub fn new(id: &TraceId, spans: &[Span]) -> Self {
        Self {
            trace_id: hex(id),
            span_count: spans.len(),
            spans: spans.iter().map(SpanJson::from).collect(),
        }
    }
}

impl From<&Span> for SpanJson {
    fn from(s: &Span) -> Self {
        let r = &s.resource;
        Self {
            trace_id: hex(&s.trace_id),
            span_id: hex(&s.span_id),
            parent_span_id: s.parent_span_id.map(|p| hex(&p)),
            kind: match s.kind {
                SpanKind::Server => "server",
                SpanKind::Client => "client",
            },
            name: s.name(),
            start_unix_nanos: s.start_unix_nanos,
            end_unix_nanos: s.end_unix_nanos,
            duration_ms: millis(duration_of(s)),
            status: status(s),
            attributes: s
                .attributes()
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Str(v) => serde_json::Value::from(v),
                        Value::Int(v) => serde_json::Value::from(v),
                    };
                    (k, v)
                })
                .collect(),
            resource: BTreeMap::from([
                ("service.name", r.service_name.as_str().into()),
                ("service.instance.id", r.instance_id.as_str().into()),
                ("process.pid", r.pid.into()),
                ("process.executable.name", r.executable_name.as_str().into()),
                ("host.name", r.host_name.as_str().into()),
            ])
            .into_iter()
            .chain(
                r.k8s
                    .iter()
                    .flat_map(|id| id.fields())
                    .filter_map(|(attribute, _, value)| Some((attribute?, value.into()))),
            )
            .collect(),
        }
    }
}

/// A trace as text: a heading, then one line per span (service, name, duration, status),
/// indented two spaces per level under its parent; spans whose parent is not in the store
/// stand at the root. Children in start order.
pub fn render_tree(id: &TraceId, spans: &[Span]) -> String {
    let spans: Vec<&Span> = spans.iter().collect();
    let summary = TraceSummary::of(id, &spans);
    let mut out = format!(
        "trace {}: {} span{}, {:.3} ms{}\n",
        summary.trace_id,
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        summary.duration_ms,
        if summary.error { ", with errors" } else { "" }
    );
    let mut children: HashMap<SpanId, Vec<&Span>> = HashMap::new();
    for &s in &spans {
        if let Some(p) = s.parent_span_id {
            children.entry(p).or_default().push(s);
        }
    }
    for c in children.values_mut() {
        c.sort_by_key(|s| s.start_unix_nanos);
    }
    // Depth-first from each root, with a visited set: a parent cycle (colliding ids) must not
    // loop forever, and its spans are shown at the root after the rest.
    let mut by_start = spans.clone();
    by_start.sort_by_key(|s| s.start_unix_nanos);
    let mut seen = HashSet::new();
    for top in roots(&spans).into_iter().chain(by_start) {
        let mut stack = vec![(top, 0)];
        while let Some((s, depth)) = stack.pop() {
            if !seen.insert(s.span_id) {
                continue;
            }
            let _ = writeln!(
                out,
                "{:indent$}{} {} {:.3} ms {}",
                "",
                s.resource.service_name,
                s.display_name(),
                millis(duration_of(s)),
                status(s),
                indent = depth * 2
            );
            if let Some(c) = children.get(&s.span_id) {
                stack.extend(c.iter().rev().map(|c| (*c, depth + 1)));
            }
        }
    }
    out
}

/// A trace id from 32 hex digits (either case).
pub fn parse_trace_id(s: &str) -> Option<TraceId> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}
