//! The built-in view of traces: the most recent sampled spans, grouped by trace, bounded by a
//! span count (whole traces are evicted, least recently updated first), so that someone with
//! nothing else installed can list slow requests and read one as an indented tree.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    hash::BuildHasher,
    sync::Mutex,
};

use hashbrown::HashTable;
use serde::Serialize;

use crate::spans::trace::{hex, Span, SpanId, SpanKind, TraceId, Value};

/// The index of a span slot or a trace entry; `NIL` for none.
type Index = u32;
const NIL: Index = Index::MAX;

pub struct TraceStore {
    max_spans: usize,
    inner: Mutex<Inner>,
}

/// Spans live in `slots`, which never grows past the bound: a slot is reused once its trace
/// is evicted, so steady operation allocates nothing here. Each trace is an entry of `traces`
/// (reused the same way) holding a chain of its slots and its place in a list ordered by last
/// update; the index maps trace ids to entries. Inserting a span and evicting a trace are
/// O(1) plus the evicted trace's spans.
struct Inner {
    slots: Vec<Slot>,
    free_slots: Vec<Index>,
    traces: Vec<Trace>,
    free_traces: Vec<Index>,
    /// Trace entries by the hash of their id. It holds only entry numbers (small, so it
    /// stays in cache): ids are compared in the entries, and removing an evicted trace, whose
    /// entry is at hand, compares numbers only.
    index: HashTable<Index>,
    hasher: foldhash::fast::RandomState,
    /// The least recently updated trace (evicted first) and the most recently updated.
    oldest: Index,
    newest: Index,
    spans: usize,
    admission: Admission,
}

/// Which new traces enter the store. Past `max_spans` spans a second (a saturated server
/// makes 100,000), storing them all would only cycle the store every few milliseconds, at a
/// cost per span (the agent's largest user-space item in the hello-world profile). So a new
/// trace enters if its id's hash is under a bar set once a second from the previous second's
/// spans: about `max_spans` spans a second get in, the store keeps at least the last second,
/// and the spans of one trace (children finish first) get the same answer. Error spans always
/// enter.
struct Admission {
    bar: u64,
    /// None before the first span.
    window_start_nanos: Option<u64>,
    offered: u64,
}

const ADMISSION_WINDOW_NANOS: u64 = 1_000_000_000;

impl Admission {
    fn new() -> Self {
        Self {
            bar: u64::MAX,
            window_start_nanos: None,
            offered: 0,
        }
    }

    /// Counts a span ending at `now_nanos` (wall clock); whether its trace may enter.
    fn offer(&mut self, hash: u64, now_nanos: u64, per_window: u64) -> bool {
        let start = *self.window_start_nanos.get_or_insert(now_nanos);
        // Spans do not come in end-time order (several processes, CPUs): one a little
        // earlier than the window's start counts in it. Only a clock step back of more than
        // a window, or a quiet spell, starts afresh.
        let stepped_back = now_nanos.saturating_add(ADMISSION_WINDOW_NANOS) < start;
        let elapsed = now_nanos.saturating_sub(start);
        if stepped_back || elapsed >= ADMISSION_WINDOW_NANOS {
            let quiet = stepped_back || elapsed >= 2 * ADMISSION_WINDOW_NANOS;
            self.bar = if quiet || self.offered <= per_window {
                u64::MAX
            } else {
                (u128::from(u64::MAX) * u128::from(per_window) / u128::from(self.offered)) as u64
            };
            self.window_start_nanos = Some(now_nanos);
            self.offered = 0;
        }
        self.offered += 1;
        hash <= self.bar
    }
}

struct Slot {
    span: Option<Span>,
    /// The next span of the same trace, in arrival order.
    next: Index,
}

struct Trace {
    id: TraceId,
    hash: u64,
    first: Index,
    last: Index,
    len: usize,
    /// Neighbours in update order.
    older: Index,
    newer: Index,
}

impl TraceStore {
    pub fn new(max_spans: usize) -> Self {
        Self {
            // Slots are numbered with `Index`.
            max_spans: max_spans.clamp(1, NIL as usize),
            inner: Mutex::new(Inner {
                slots: Vec::new(),
                free_slots: Vec::new(),
                traces: Vec::new(),
                free_traces: Vec::new(),
                index: HashTable::new(),
                hasher: foldhash::fast::RandomState::default(),
                oldest: NIL,
                newest: NIL,
                spans: 0,
                admission: Admission::new(),
            }),
        }
    }

    pub fn insert(&self, span: Span) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let inner = &mut *inner;
        let hash = inner.hasher.hash_one(span.trace_id);
        let admitted = inner
            .admission
            .offer(hash, span.end_unix_nanos, self.max_spans as u64);
        // Not even looked up: the trace's other spans got the same answer (but for an error
        // span, which enters, and a bar changed between spans of one trace: rare, and then
        // the trace is stored without them).
        if !admitted && !span.error {
            return;
        }
        let existing = inner.find(hash, &span.trace_id).unwrap_or(NIL);
        // Make room, never evicting the trace this span belongs to.
        while inner.spans >= self.max_spans {
            let mut victim = inner.oldest;
            if victim == existing {
                victim = inner.traces[victim as usize].newer;
            }
            if victim == NIL {
                // This trace alone fills the store: keep its first spans.
                return;
            }
            inner.evict(victim);
        }
        let trace = if existing == NIL {
            inner.new_trace(span.trace_id, hash)
        } else {
            inner.unlink(existing);
            existing
        };
        inner.link_newest(trace);
        let slot = inner.new_slot(span);
        let t = &mut inner.traces[trace as usize];
        let last = std::mem::replace(&mut t.last, slot);
        t.len += 1;
        if last == NIL {
            t.first = slot;
        } else {
            inner.slots[last as usize].next = slot;
        }
        inner.spans += 1;
    }

    pub fn span_count(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.spans)
    }

    pub fn trace_count(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.index.len())
    }

    /// One trace's spans, by start time.
    pub fn trace(&self, id: &TraceId) -> Option<Vec<Span>> {
        let inner = self.inner.lock().ok()?;
        let t = inner.find(inner.hasher.hash_one(id), id)?;
        let mut spans: Vec<Span> = inner.spans_of(t).cloned().collect();
        drop(inner);
        spans.sort_by_key(|s| (s.start_unix_nanos, s.end_unix_nanos));
        Some(spans)
    }

    /// Summaries of the stored traces lasting at least `min_duration_nanos`, newest (latest
    /// start) first, at most `limit`.
    pub fn summaries(&self, limit: usize, min_duration_nanos: u64) -> Vec<TraceSummary> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        // Only times are computed for every trace (the store's lock is held meanwhile, and the
        // event reader waits on it); whole summaries only for those listed.
        let mut chosen: Vec<(u64, &TraceId, Index)> = inner
            .index
            .iter()
            .filter_map(|&t| {
                let (start, end) = inner.spans_of(t).fold((u64::MAX, 0), |(start, end), s| {
                    (start.min(s.start_unix_nanos), end.max(s.end_unix_nanos))
                });
                let end = end.max(start);
                (end - start >= min_duration_nanos)
                    .then(|| (start, &inner.traces[t as usize].id, t))
            })
            .collect();
        chosen.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        chosen.truncate(limit);
        let mut spans = Vec::new();
        chosen
            .into_iter()
            .map(|(_, id, t)| {
                spans.clear();
                spans.extend(inner.spans_of(t));
                TraceSummary::of(id, &spans)
            })
            .collect()
    }

    /// Slots ever used (at most the bound): tests check that memory does not grow.
    #[cfg(test)]
    fn slots_allocated(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.slots.len())
    }
}

impl Inner {
    fn find(&self, hash: u64, id: &TraceId) -> Option<Index> {
        let traces = &self.traces;
        self.index
            .find(hash, |&t| traces[t as usize].id == *id)
            .copied()
    }

    fn spans_of(&self, trace: Index) -> impl Iterator<Item = &Span> {
        let mut at = self.traces[trace as usize].first;
        std::iter::from_fn(move || {
            let slot = self.slots.get(at as usize)?;
            at = slot.next;
            slot.span.as_ref()
        })
    }

    fn new_slot(&mut self, span: Span) -> Index {
        let slot = Slot {
            span: Some(span),
            next: NIL,
        };
        match self.free_slots.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as Index
            }
        }
    }

    fn new_trace(&mut self, id: TraceId, hash: u64) -> Index {
        let trace = Trace {
            id,
            hash,
            first: NIL,
            last: NIL,
            len: 0,
            older: NIL,
            newer: NIL,
        };
        let i = match self.free_traces.pop() {
            Some(i) => {
                self.traces[i as usize] = trace;
                i
            }
            None => {
                self.traces.push(trace);
                (self.traces.len() - 1) as Index
            }
        };
        let traces = &self.traces;
        self.index
            .insert_unique(hash, i, |&t| traces[t as usize].hash);
        i
    }

    /// Drops a whole trace; its slots and entry are reused.
    fn evict(&mut self, trace: Index) {
        self.unlink(trace);
        let t = &self.traces[trace as usize];
        if let Ok(entry) = self.index.find_entry(t.hash, |&i| i == trace) {
            entry.remove();
        }
        self.spans -= t.len;
        let mut at = t.first;
        while at != NIL {
            let slot = &mut self.slots[at as usize];
            slot.span = None;
            self.free_slots.push(at);
            at = std::mem::replace(&mut slot.next, NIL);
        }
        self.free_traces.push(trace);
    }

    /// Takes a trace out of the update order.
    fn unlink(&mut self, trace: Index) {
        let Trace { older, newer, .. } = self.traces[trace as usize];
        match older {
            NIL => self.oldest = newer,
            o => self.traces[o as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            n => self.traces[n as usize].older = older,
        }
        let t = &mut self.traces[trace as usize];
        t.older = NIL;
        t.newer = NIL;
    }

    /// Puts a trace (not in the update order) last in it: the most recently updated.
    fn link_newest(&mut self, trace: Index) {
        let newest = self.newest;
        let t = &mut self.traces[trace as usize];
        t.older = newest;
        t.newer = NIL;
        match newest {
            NIL => self.oldest = trace,
            n => self.traces[n as usize].newer = trace,
        }
        self.newest = trace;
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
    fn of(id: &TraceId, spans: &[&Span]) -> Self {
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
            ]),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::spans::trace::{HttpAttributes, Resource};

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
            kind: SpanKind::Server,
            start_unix_nanos: start_ms * 1_000_000,
            end_unix_nanos: end_ms * 1_000_000,
            error: false,
            http: HttpAttributes {
                method: "GET",
                status_code: 200,
                path: format!("/{id}"),
                route: Some(Arc::from(format!("/{id}"))),
                server: None,
                client: None,
            },
            resource: svc("front"),
        }
    }

    #[test]
    fn a_flood_enters_at_about_the_bound_per_second_whole_traces_and_errors_always() {
        const SECOND: u64 = 1_000_000_000;
        let store = TraceStore::new(2000);
        // A trace of two spans (a call, then the request it was made for), ending at `at`.
        let insert_trace = |n: u32, at: u64, error: bool| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&n.to_be_bytes());
            for (span_id, parent) in [(2, Some(1)), (1, None)] {
                let mut s = span(0, span_id, parent, 0, 0);
                s.trace_id = id;
                s.end_unix_nanos = at;
                s.error = error && parent.is_none();
                store.insert(s);
            }
            id
        };
        let t0 = 1_700_000_000 * SECOND;
        // First second: 20,000 spans, all admitted (no rate known yet).
        for n in 0..10_000 {
            insert_trace(n, t0 + u64::from(n) * 1000, false);
        }
        assert_eq!(store.span_count(), 2000);
        // Next second: the bar lets in about 2,000 of the 20,000 offered a second: 10%.
        // End times out of order by up to 50 µs, as spans of several processes come.
        let ids: Vec<_> = (0..2_000)
            .map(|n| {
                let at = t0 + SECOND + 50_000 + u64::from(n) * 1000 - u64::from(n % 7) * 8_000;
                insert_trace(100_000 + n, at, n % 100 == 0)
            })
            .collect();
        let stored: Vec<_> = ids.iter().filter_map(|id| store.trace(id)).collect();
        assert!(
            (140..=260).contains(&stored.len()),
            "{} of 2,000 new traces stored",
            stored.len()
        );
        // Whole traces (both spans or none), but for error spans, which always enter.
        for (n, id) in ids.iter().enumerate() {
            let spans = store.trace(id).map_or(0, |s| s.len());
            if n % 100 == 0 {
                assert!(spans >= 1, "error trace {n} missing");
            } else {
                assert!(spans == 0 || spans == 2, "trace {n} has {spans} spans");
            }
        }
        // After a quiet spell, everything enters again.
        let late = insert_trace(999_999, t0 + 10 * SECOND, false);
        assert_eq!(store.trace(&late).map(|s| s.len()), Some(2));
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
    fn evicts_whole_traces_oldest_update_first() {
        let store = TraceStore::new(6);
        // Traces 1, 2, 3 of 2 spans each: full.
        for t in 1..=3 {
            store.insert(span(t, 1, None, 0, 1));
            store.insert(span(t, 2, Some(1), 0, 1));
        }
        assert_eq!((store.span_count(), store.trace_count()), (6, 3));
        // Updates make 1 the newest: 2 is now the oldest, then 3.
        store.insert(span(1, 3, Some(1), 0, 1));
        assert!(store.trace(&[2; 16]).is_none(), "trace 2 evicted whole");
        assert_eq!(store.trace(&[1; 16]).unwrap().len(), 3);
        assert_eq!(store.trace(&[3; 16]).unwrap().len(), 2);
        // A new trace of 2 spans: 3 goes (the oldest), 1 stays.
        store.insert(span(4, 1, None, 0, 1));
        store.insert(span(4, 2, Some(1), 0, 1));
        assert!(store.trace(&[3; 16]).is_none());
        assert_eq!(store.trace(&[1; 16]).unwrap().len(), 3);
        assert_eq!(store.span_count(), 5);
        // Then 1, the oldest now, goes whole for the next ones (5 + 2 > 6).
        store.insert(span(5, 1, None, 0, 1));
        store.insert(span(5, 2, Some(1), 0, 1));
        assert!(store.trace(&[1; 16]).is_none());
        assert_eq!(store.trace_count(), 2);
        assert_eq!(store.span_count(), 4);
    }

    #[test]
    fn the_bound_holds_and_slots_are_reused() {
        let store = TraceStore::new(100);
        for n in 0..10_000u32 {
            let mut s = span(0, 1, None, 0, 1);
            s.trace_id[..4].copy_from_slice(&n.to_be_bytes());
            s.span_id[..4].copy_from_slice(&n.to_be_bytes());
            store.insert(s.clone());
            if n % 3 == 0 {
                s.span_id[4] = 9;
                s.parent_span_id = Some(s.span_id);
                store.insert(s);
            }
            assert!(store.span_count() <= 100);
        }
        assert!(store.slots_allocated() <= 100);
        assert!(store.span_count() >= 99);
    }

    #[test]
    fn lookups_after_the_slots_wrapped_around_many_times() {
        let store = TraceStore::new(8);
        let id = |n: u32| {
            let mut id = [0xee; 16];
            id[12..].copy_from_slice(&n.to_be_bytes());
            id
        };
        // Traces of 1 to 3 spans, so that slots are freed and reused out of order.
        for n in 0..1_000u32 {
            for k in 0..=(n % 3) {
                let mut s = span(0, k as u8 + 1, (k > 0).then_some(1), n.into(), n as u64 + 1);
                s.trace_id = id(n);
                store.insert(s);
            }
        }
        // The last traces are whole and intact, the older ones gone.
        let last = store.trace(&id(999)).unwrap();
        assert_eq!(last.len(), 1);
        let before = store.trace(&id(998)).unwrap();
        assert_eq!(before.len(), 3);
        assert!(before.iter().all(|s| s.trace_id == id(998)));
        assert_eq!(
            before.iter().map(|s| s.span_id[0]).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(store.trace(&id(997)).unwrap().len(), 2);
        assert!(store.trace(&id(990)).is_none());
        assert_eq!(store.span_count(), 7);
        assert_eq!(store.trace_count(), 4);
        let listed: Vec<_> = store
            .summaries(10, 0)
            .into_iter()
            .map(|s| s.span_count)
            .collect();
        assert_eq!(listed, [1, 3, 2, 1]);
    }

    #[test]
    fn one_trace_alone_keeps_its_first_spans() {
        let store = TraceStore::new(3);
        store.insert(span(1, 1, None, 0, 1));
        for id in 2..10 {
            store.insert(span(2, id, Some(1), 0, 1));
        }
        // Trace 1 made room; trace 2 kept its first three spans.
        assert!(store.trace(&[1; 16]).is_none());
        let kept = store.trace(&[2; 16]).unwrap();
        assert_eq!(
            kept.iter().map(|s| s.span_id[0]).collect::<Vec<_>>(),
            [2, 3, 4]
        );
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
        let mut s = span(1, 2, Some(1), 1, 3);
        s.http.server = Some("127.0.0.1:8080".parse().unwrap());
        s.http.client = Some("[::1]:5000".parse().unwrap());
        let mut call = span(1, 3, Some(2), 2, 3);
        call.kind = SpanKind::Client;
        call.http.route = None;
        call.http.server = Some("10.1.2.3:80".parse().unwrap());
        call.http.status_code = 404;
        call.error = true;
        let v = serde_json::to_value(TraceJson::new(&[1; 16], &[s, call])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "trace_id": "01010101010101010101010101010101",
                "span_count": 2,
                "spans": [{
                    "trace_id": "01010101010101010101010101010101",
                    "span_id": "0202020202020202",
                    "parent_span_id": "0101010101010101",
                    "kind": "server",
                    "name": "GET /2",
                    "start_unix_nanos": 1_000_000u64,
                    "end_unix_nanos": 3_000_000u64,
                    "duration_ms": 2.0,
                    "status": "OK",
                    "attributes": {
                        "http.request.method": "GET",
                        "http.response.status_code": 200,
                        "url.path": "/2",
                        "network.protocol.version": "1.1",
                        "http.route": "/2",
                        "server.address": "127.0.0.1",
                        "server.port": 8080,
                        "client.address": "::1",
                        "client.port": 5000,
                    },
                    "resource": {
                        "service.name": "front",
                        "service.instance.id": "h-front",
                        "process.pid": 7,
                        "process.executable.name": "front",
                        "host.name": "h",
                    },
                }, {
                    "trace_id": "01010101010101010101010101010101",
                    "span_id": "0303030303030303",
                    "parent_span_id": "0202020202020202",
                    "kind": "client",
                    "name": "GET",
                    "start_unix_nanos": 2_000_000u64,
                    "end_unix_nanos": 3_000_000u64,
                    "duration_ms": 1.0,
                    "status": "ERROR",
                    "attributes": {
                        "http.request.method": "GET",
                        "http.response.status_code": 404,
                        "url.path": "/3",
                        "network.protocol.version": "1.1",
                        "server.address": "10.1.2.3",
                        "server.port": 80,
                    },
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

#[cfg(test)]
mod bench {
    use std::{sync::Arc, time::Instant};

    use super::*;
    use crate::spans::trace::{HttpAttributes, Resource};

    /// A long stream of single-span traces keeps the store at its bound and listable; with
    /// `cargo test --release -p obs-agent store_insert_cost -- --nocapture` it also prints
    /// the cost of an insert (a figure, not an assertion).
    #[test]
    fn store_insert_cost() {
        let resource = Arc::new(Resource {
            service_name: "s".into(),
            instance_id: "i".into(),
            pid: 1,
            executable_name: "s".into(),
            host_name: "h".into(),
        });
        let route: Arc<str> = Arc::from("/");
        let store = TraceStore::new(10_000);
        let n: u64 = if cfg!(debug_assertions) {
            50_000
        } else {
            2_000_000
        };
        let server = Some("127.0.0.1:8080".parse().unwrap());
        let client = Some("127.0.0.1:5000".parse().unwrap());
        let t = Instant::now();
        for i in 0..n {
            std::hint::black_box(("/".to_owned(), route.clone(), resource.clone(), i));
        }
        let base = t.elapsed().as_nanos() as f64 / n as f64;
        println!("{base:.1} ns per span to build its parts");
        let t = Instant::now();
        for i in 0..n {
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&i.wrapping_mul(0x9e3779b97f4a7c15).to_le_bytes());
            trace_id[8..].copy_from_slice(&i.to_le_bytes());
            store.insert(Span {
                trace_id,
                span_id: [1; 8],
                parent_span_id: None,
                sampled: true,
                kind: SpanKind::Server,
                start_unix_nanos: i,
                end_unix_nanos: i + 1,
                error: false,
                http: HttpAttributes {
                    method: "GET",
                    status_code: 200,
                    path: "/".to_owned(),
                    route: Some(route.clone()),
                    server,
                    client,
                },
                resource: resource.clone(),
            });
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "{ns:.1} ns per span (size {} bytes)",
            std::mem::size_of::<Span>()
        );
        assert_eq!(store.span_count(), 10_000);
        assert_eq!(store.trace_count(), 10_000);
        let t = Instant::now();
        let listed = store.summaries(100, 0).len();
        println!("{:?} to list {listed} of 10,000 traces", t.elapsed());
        assert_eq!(listed, 100);
    }
}
