//! Which request an outgoing call of a Go process is made for, by goroutine.
//!
//! The kernel reports the goroutine of every socket syscall of a Go process, and, for each
//! call made through net/http's transport, the calling goroutine with its ancestors and the
//! socket the call goes out on (`obs_common::go_trace`). A server request is served by the
//! goroutine that read it; a call belongs to the nearest ancestor (the caller itself first)
//! serving a request. So concurrent requests never share calls, and calls made from
//! goroutines a handler started, or their descendants, still find their request.

use std::collections::HashMap;

use obs_common::go_trace::{GoClientCall, MAX_GOROUTINE_CHAIN};

use crate::protocols::trace_context::SpanContext;

/// Bounds, against a process that never finishes what it starts.
pub const MAX_SERVING: usize = 65_536;
pub const MAX_CALLS: usize = 65_536;

/// The calling goroutine and its known ancestors, nearest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    goids: [u64; MAX_GOROUTINE_CHAIN],
    depth: usize,
}

impl Chain {
    pub fn new(goids: &[u64]) -> Self {
        let depth = goids.len().min(MAX_GOROUTINE_CHAIN);
        let mut all = [0; MAX_GOROUTINE_CHAIN];
        all[..depth].copy_from_slice(&goids[..depth]);
        Self { goids: all, depth }
    }

    pub fn goids(&self) -> &[u64] {
        &self.goids[..self.depth]
    }
}

impl From<&GoClientCall> for Chain {
    fn from(c: &GoClientCall) -> Self {
        Self::new(&c.goids[..(c.depth as usize).min(MAX_GOROUTINE_CHAIN)])
    }
}

/// One Go process's goroutine links.
#[derive(Debug, Default)]
pub struct Goroutines {
    /// Server requests in flight, by the goroutine serving them.
    serving: HashMap<u64, SpanContext, foldhash::fast::RandomState>,
    /// Calls about to be written, by socket.
    calls: HashMap<u32, Chain, foldhash::fast::RandomState>,
}

/// What is known of the caller of a client request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Made for this server request.
    Request(SpanContext),
    /// Made by a goroutine serving no request (a background job): a trace of its own.
    NoRequest,
    /// Not reported (no goroutine tracking for this call): the caller cannot be told.
    Unknown,
}

impl Goroutines {
    /// A server request started, read by goroutine `goid` (0: unknown).
    pub fn serving(&mut self, goid: u64, span: SpanContext) {
        if goid == 0 {
            return;
        }
        if self.serving.len() >= MAX_SERVING && !self.serving.contains_key(&goid) {
            self.serving.clear();
        }
        self.serving.insert(goid, span);
    }

    /// A server request finished: it no longer takes calls. `goid` is the goroutine that
    /// answered it, usually the one that read it.
    pub fn served(&mut self, goid: u64, span: &SpanContext) {
        match self.serving.get(&goid) {
            Some(s) if s.span_id == span.span_id => {
                self.serving.remove(&goid);
            }
            _ => self.serving.retain(|_, s| s.span_id != span.span_id),
        }
    }

    /// The request with span `span_id` got a new identity (see `Tracer::adopt`).
    pub fn relink(&mut self, span: SpanContext) {
        for s in self.serving.values_mut() {
            if s.span_id == span.span_id {
                *s = span;
            }
        }
    }

    /// The transport is about to write a call on socket `fd` for this chain of goroutines.
    pub fn call(&mut self, fd: u32, chain: Chain) {
        if self.calls.len() >= MAX_CALLS && !self.calls.contains_key(&fd) {
            self.calls.clear();
        }
        self.calls.insert(fd, chain);
    }

    /// The caller of the client request that just started on `fd`.
    pub fn caller(&mut self, fd: u32) -> Caller {
        let Some(chain) = self.calls.remove(&fd) else {
            return Caller::Unknown;
        };
        chain
            .goids()
            .iter()
            .find_map(|g| self.serving.get(g))
            .map_or(Caller::NoRequest, |s| Caller::Request(*s))
    }

    /// The socket was closed: a call reported on it and never written is forgotten.
    pub fn closed(&mut self, fd: u32) {
        self.calls.remove(&fd);
    }

    pub fn is_empty(&self) -> bool {
        self.serving.is_empty() && self.calls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(n: u8) -> SpanContext {
        SpanContext {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_id: None,
            sampled: true,
        }
    }

    #[test]
    fn concurrent_requests_keep_their_calls() {
        let mut g = Goroutines::default();
        g.serving(10, span(1));
        g.serving(20, span(2));
        // Handler of request 2 calls on socket 7; a goroutine started by request 1's handler
        // (goid 11, child of 10) calls on socket 8; a grandchild of 20 on socket 9.
        g.call(7, Chain::new(&[20, 1]));
        g.call(8, Chain::new(&[11, 10, 1]));
        g.call(9, Chain::new(&[31, 30, 20, 1]));
        assert_eq!(g.caller(8), Caller::Request(span(1)));
        assert_eq!(g.caller(7), Caller::Request(span(2)));
        assert_eq!(g.caller(9), Caller::Request(span(2)));
        // Reported once: the next request on the socket needs its own report.
        assert_eq!(g.caller(7), Caller::Unknown);
    }

    #[test]
    fn calls_outside_requests() {
        let mut g = Goroutines::default();
        g.serving(10, span(1));
        g.call(5, Chain::new(&[40, 1]));
        assert_eq!(g.caller(5), Caller::NoRequest);
        // Finished requests take no more calls, whichever goroutine answered.
        g.served(99, &span(1));
        g.call(5, Chain::new(&[10, 1]));
        assert_eq!(g.caller(5), Caller::NoRequest);
        assert!(g.is_empty());
    }

    #[test]
    fn keep_alive_reuses_the_goroutine() {
        let mut g = Goroutines::default();
        g.serving(10, span(1));
        g.served(10, &span(1));
        g.serving(10, span(2));
        g.call(3, Chain::new(&[10]));
        assert_eq!(g.caller(3), Caller::Request(span(2)));
        // Unknown goroutines are not recorded; closing forgets a pending call.
        g.serving(0, span(3));
        g.call(4, Chain::new(&[10]));
        g.closed(4);
        assert_eq!(g.caller(4), Caller::Unknown);
    }

    #[test]
    fn chain_from_event_is_bounded() {
        let mut e = GoClientCall {
            kind: 5,
            tgid: 1,
            fd: 3,
            depth: 200,
            goids: [7; MAX_GOROUTINE_CHAIN],
        };
        assert_eq!(Chain::from(&e).goids().len(), MAX_GOROUTINE_CHAIN);
        e.depth = 2;
        assert_eq!(Chain::from(&e).goids(), &[7, 7]);
    }
}
