//! The built-in view of traces: the most recent sampled spans, grouped by trace, bounded by a
//! span count (whole traces are evicted, least recently updated first), so that someone with
//! nothing else installed can list slow requests and read one as an indented tree.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    sync::Mutex,
};

use serde::Serialize;

use crate::spans::trace::{hex, Span, SpanId, SpanKind, TraceId, Value};

pub struct TraceStore {
    max_spans: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    traces: HashMap<TraceId, Stored>,
    /// Last update (a sequence number) to trace id: the first entry is evicted first.
    by_update: BTreeMap<u64, TraceId>,
    next_seq: u64,
    spans: usize,
}

struct Stored {
    seq: u64,
    spans: Vec<Span>,
}

impl TraceStore {
    pub fn new(max_spans: usize) -> Self {
        Self {
            max_spans: max_spans.max(1),
            inner: Mutex::default(),
        }
    }

    pub fn insert(&self, span: Span) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let inner = &mut *inner;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let trace_id = span.trace_id;
        // Make room, never evicting the trace this span belongs to.
        while inner.spans >= self.max_spans {
            let Some((&oldest_seq, &oldest)) =
                inner.by_update.iter().find(|(_, id)| **id != trace_id)
            else {
                // This trace alone fills the store: keep its first spans.
                return;
            };
            inner.by_update.remove(&oldest_seq);
            if let Some(t) = inner.traces.remove(&oldest) {
                inner.spans -= t.spans.len();
            }
        }
        let stored = inner.traces.entry(trace_id).or_insert(Stored {
            seq,
            spans: Vec::new(),
        });
        inner.by_update.remove(&stored.seq);
        stored.seq = seq;
        stored.spans.push(span);
        inner.by_update.insert(seq, trace_id);
        inner.spans += 1;
    }

    pub fn span_count(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.spans)
    }

    pub fn trace_count(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.traces.len())
    }

    /// One trace's spans, by start time.
    pub fn trace(&self, id: &TraceId) -> Option<Vec<Span>> {
        let inner = self.inner.lock().ok()?;
        let mut spans = inner.traces.get(id)?.spans.clone();
        spans.sort_by_key(|s| (s.start_unix_nanos, s.end_unix_nanos));
        Some(spans)
    }

    /// Summaries of the stored traces lasting at least `min_duration_nanos`, newest (latest
    /// start) first, at most `limit`.
    pub fn summaries(&self, limit: usize, min_duration_nanos: u64) -> Vec<TraceSummary> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        let mut all: Vec<TraceSummary> = inner
            .traces
            .iter()
            .map(|(id, t)| TraceSummary::of(id, &t.spans))
            .filter(|s| s.duration_nanos >= min_duration_nanos)
            .collect();
        drop(inner);
        all.sort_by(|a, b| {
            b.start_unix_nanos
                .cmp(&a.start_unix_nanos)
                .then_with(|| a.trace_id.cmp(&b.trace_id))
        });
        all.truncate(limit);
        all
    }
}

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
    fn of(id: &TraceId, spans: &[Span]) -> Self {
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
            root_name: root.map_or_else(String::new, |s| s.name.clone()),
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
fn roots(spans: &[Span]) -> Vec<&Span> {
    let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let mut roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_none_or(|p| !ids.contains(&p)))
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
            name: s.name.clone(),
            start_unix_nanos: s.start_unix_nanos,
            end_unix_nanos: s.end_unix_nanos,
            duration_ms: millis(duration_of(s)),
            status: status(s),
            attributes: s
                .attributes
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Str(v) => serde_json::Value::from(v.as_str()),
                        Value::Int(v) => serde_json::Value::from(*v),
                    };
                    (*k, v)
                })
                .collect(),
            resource: BTreeMap::from([
                ("service.name", r.service_name.as_str().into()),
                ("service.instance.id", r.instance_id.as_str().into()),
                ("process.pid", r.pid.into()),
                ("process.executable.name", r.executable_name.as_str().into()),
                ("host.name", r.host_name.as_str().into()),
            ]),
        }
    }
}

/// A trace as text: a heading, then one line per span (service, name, duration, status),
/// indented two spaces per level under its parent; spans whose parent is not in the store
/// stand at the root. Children in start order.
pub fn render_tree(id: &TraceId, spans: &[Span]) -> String {
    let summary = TraceSummary::of(id, spans);
    let mut out = format!(
        "trace {}: {} span{}, {:.3} ms{}\n",
        summary.trace_id,
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        summary.duration_ms,
        if summary.error { ", with errors" } else { "" }
    );
    let mut children: HashMap<SpanId, Vec<&Span>> = HashMap::new();
    for s in spans {
        if let Some(p) = s.parent_span_id {
            children.entry(p).or_default().push(s);
        }
    }
    for c in children.values_mut() {
        c.sort_by_key(|s| s.start_unix_nanos);
    }
    // Depth-first from each root, with a visited set: a parent cycle (colliding ids) must not
    // loop forever, and its spans are shown at the root after the rest.
    let mut by_start: Vec<&Span> = spans.iter().collect();
    by_start.sort_by_key(|s| s.start_unix_nanos);
    let mut seen = HashSet::new();
    for top in roots(spans).into_iter().chain(by_start) {
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
                s.name,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::spans::trace::Resource;

    fn svc(name: &str) -> Arc<Resource> {
        Arc::new(Resource {
            service_name: name.into(),
            instance_id: format!("h-{name}"),
            pid: 7,
            executable_name: name.into(),
            host_name: "h".into(),
        })
    }

    fn span(trace: u8, id: u8, parent: Option<u8>, start_ms: u64, end_ms: u64) -> Span {
        Span {
            trace_id: [trace; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            sampled: true,
            kind: if parent.is_some() {
                SpanKind::Client
            } else {
                SpanKind::Server
            },
            name: format!("GET /{id}"),
            start_unix_nanos: start_ms * 1_000_000,
            end_unix_nanos: end_ms * 1_000_000,
            error: false,
            attributes: vec![
                ("http.request.method", Value::Str("GET".into())),
                ("http.response.status_code", Value::Int(200)),
            ],
            resource: svc("front"),
        }
    }

    #[test]
    fn evicts_least_recently_updated_traces_by_span_count() {
        let store = TraceStore::new(5);
        for t in 1..=3 {
            store.insert(span(t, 1, None, 0, 1));
            store.insert(span(t, 2, Some(1), 0, 1));
        }
        // 6 spans > 5: trace 1 went whole.
        assert_eq!(store.span_count(), 4);
        assert!(store.trace(&[1; 16]).is_none());
        // Touching trace 2 makes trace 3 the oldest.
        store.insert(span(2, 3, Some(1), 0, 1));
        store.insert(span(4, 1, None, 0, 1));
        assert!(store.trace(&[3; 16]).is_none());
        assert_eq!(store.trace(&[2; 16]).unwrap().len(), 3);
        assert_eq!(store.span_count(), 4);
        // One trace alone never grows past the bound.
        for id in 10..30 {
            store.insert(span(9, id, None, 0, 1));
        }
        assert_eq!(store.span_count(), 5);
        assert_eq!(store.trace_count(), 1);
    }

    #[test]
    fn summaries_newest_first_with_filters() {
        let store = TraceStore::new(100);
        store.insert(span(1, 1, None, 100, 150));
        store.insert(span(2, 1, None, 200, 202));
        let mut failed = span(2, 2, Some(1), 200, 201);
        failed.error = true;
        store.insert(failed);
        let all = store.summaries(10, 0);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].trace_id, hex(&[2; 16]));
        assert_eq!(
            serde_json::to_value(&all[0]).unwrap(),
            serde_json::json!({
                "trace_id": "02020202020202020202020202020202",
                "root_service": "front",
                "root_name": "GET /1",
                "start_unix_nanos": 200_000_000u64,
                "duration_ms": 2.0,
                "span_count": 2,
                "error": true,
            })
        );
        let slow = store.summaries(10, 10_000_000);
        assert_eq!(slow.len(), 1);
        assert_eq!(slow[0].trace_id, hex(&[1; 16]));
        assert_eq!(store.summaries(1, 0).len(), 1);
    }

    #[test]
    fn trace_json_shape() {
        let s = span(1, 2, Some(1), 1, 3);
        let v = serde_json::to_value(TraceJson::new(&[1; 16], &[s])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "trace_id": "01010101010101010101010101010101",
                "span_count": 1,
                "spans": [{
                    "trace_id": "01010101010101010101010101010101",
                    "span_id": "0202020202020202",
                    "parent_span_id": "0101010101010101",
                    "kind": "client",
                    "name": "GET /2",
                    "start_unix_nanos": 1_000_000u64,
                    "end_unix_nanos": 3_000_000u64,
                    "duration_ms": 2.0,
                    "status": "OK",
                    "attributes": {"http.request.method": "GET", "http.response.status_code": 200},
                    "resource": {
                        "service.name": "front",
                        "service.instance.id": "h-front",
                        "process.pid": 7,
                        "process.executable.name": "front",
                        "host.name": "h",
                    },
                }],
            })
        );
    }

    #[test]
    fn tree_indents_children_and_puts_orphans_at_the_root() {
        let mut back = span(1, 3, Some(2), 2, 9);
        back.resource = svc("back");
        back.error = true;
        let spans = vec![
            span(1, 1, None, 0, 10),
            span(1, 2, Some(1), 1, 9),
            back,
            span(1, 4, Some(1), 9, 10),
            // Its parent (0x63) was never seen.
            span(1, 5, Some(0x63), 20, 21),
        ];
        assert_eq!(
            render_tree(&[1; 16], &spans),
            "trace 01010101010101010101010101010101: 5 spans, 21.000 ms, with errors\n\
             front GET /1 10.000 ms OK\n  \
               front GET /2 8.000 ms OK\n    \
                 back GET /3 7.000 ms ERROR\n  \
               front GET /4 1.000 ms OK\n\
             front GET /5 1.000 ms OK\n"
        );
    }

    #[test]
    fn a_parent_cycle_does_not_loop() {
        let spans = vec![span(1, 1, Some(2), 0, 1), span(1, 2, Some(1), 0, 1)];
        // Neither is a root: both shown, once, and no hang.
        assert_eq!(render_tree(&[1; 16], &spans).lines().count(), 3);
    }

    #[test]
    fn trace_ids_parse_from_hex() {
        assert_eq!(
            parse_trace_id("0102030405060708090A0b0c0d0e0f10"),
            Some([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
        );
        assert_eq!(parse_trace_id("01"), None);
        assert_eq!(parse_trace_id("zz02030405060708090a0b0c0d0e0f10"), None);
        assert_eq!(parse_trace_id("ééé030405060708090a0b0c0d0e0f1"), None);
    }
}
