//! The built-in view of traces: the most recent sampled spans, grouped by trace, bounded by a
//! span count (whole traces are evicted, least recently updated first), so that someone with
//! nothing else installed can list slow requests and read one as an indented tree.

mod admission;
#[cfg(test)]
mod bench;
mod render;
#[cfg(test)]
mod tests;

use std::{hash::BuildHasher, sync::Mutex};

use hashbrown::HashTable;

use crate::spans::trace::{Span, TraceId};
use admission::Admission;
pub use render::{parse_trace_id, render_tree, SpanJson, TraceJson, TraceSummary};

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
