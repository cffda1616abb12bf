//! Span identities and links: which trace a request belongs to and who its parent is.
//!
//! - A server request carrying a W3C `traceparent` continues that trace.
//! - Otherwise, a server request on a connection whose client end is a request in flight from
//!   another watched process on this machine (same pair of addresses) is that client span's
//!   child: the agent sees both ends, and writes nothing into either process.
//! - A client request made while exactly one server request is in flight in the process is
//!   that request's child. With several in flight, socket data alone cannot tell which
//!   handler made the call; the call then starts its own trace (a goroutine-aware link is a
//!   later step).
//! - Anything else starts a new trace, sampled with the configured ratio; children inherit
//!   their parent's decision.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use rand::{rngs::SmallRng, Rng, SeedableRng};

use super::{
    service_graph::{Edge, Pairs},
    trace::{HttpAttributes, Resource, Span, SpanKind},
};
use crate::{
    connections::{Finished, Started},
    protocols::{
        http::collapse_path,
        trace_context::{SpanContext, SpanId, TraceId},
        Role,
    },
};

/// Client requests in flight remembered for linking, at most (oldest forgotten first).
pub const MAX_CLIENT_LINKS: usize = 65_536;
/// Server requests from this machine waiting for their client's event, at most.
pub const MAX_ORPHANS: usize = 65_536;

/// A server request that started with no client span to link to although its client is on
/// this machine: the client's write event may still be on its way. The kernel records a
/// write's event when the syscall returns, and on loopback the reader on another CPU can
/// return from its read first. When the client's event comes, the server span is adopted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Orphan {
    pub pid: u32,
    pub fd: u32,
    pub span_id: SpanId,
    /// The trace it started in, and whether an incoming `traceparent` chose it (then only a
    /// client span of the same trace adopts it).
    pub trace_id: TraceId,
    pub continued: bool,
}

pub struct Tracer {
    rng: SmallRng,
    sample_ratio: f64,
    /// Wall clock minus the kernel's monotonic clock (event timestamps), in nanoseconds.
    clock_offset_ns: i128,
    /// Client requests in flight by client address (unique on this machine while the
    /// connection lasts), with the server address they went to and their process.
    client_links: AddrMap<(SocketAddr, SpanContext, Arc<Resource>)>,
    /// Server requests waiting for their client, by client address, with the server's own
    /// address when known (processes that never ask for it: not known).
    orphans: AddrMap<(Option<SocketAddr>, Orphan)>,
    /// Requests seen from both ends, for the service graph.
    pairs: Pairs,
}

/// Maps looked up on every request: a fast hash seeded per process (peers choose their
/// ports, not the seed; the maps are bounded besides).
type AddrMap<V> = HashMap<SocketAddr, V, foldhash::fast::RandomState>;

impl Tracer {
    pub fn new(sample_ratio: f64) -> Self {
        Self {
            rng: SmallRng::from_os_rng(),
            sample_ratio: sample_ratio.clamp(0.0, 1.0),
            clock_offset_ns: clock_offset_ns(),
            client_links: AddrMap::default(),
            orphans: AddrMap::default(),
            pairs: Pairs::default(),
        }
    }

    /// The identity of a request that just started in the process of `resource`. `parent`
    /// is, for client requests, the server request they are made for, when known.
    pub fn start(
        &mut self,
        started: &Started,
        parent: Option<SpanContext>,
        resource: &Arc<Resource>,
    ) -> SpanContext {
        let span_id = self.span_id();
        let ctx = match started.role {
            Role::Server => {
                let client = self.take_client(started.peer, started.local);
                if let Some((client, client_resource)) = &client {
                    self.pairs
                        .link(client.span_id, client_resource, span_id, resource);
                }
                let client = client.map(|(ctx, _)| ctx);
                // A proxy passes its caller's traceparent on unchanged: when the agent saw the
                // call itself (same trace), that call is the nearer parent.
                let tp = started
                    .traceparent
                    .filter(|tp| client.is_none_or(|c| c.trace_id != tp.trace_id));
                if let Some(tp) = tp {
                    SpanContext {
                        trace_id: tp.trace_id,
                        span_id,
                        parent_id: Some(tp.parent_id),
                        sampled: tp.sampled,
                    }
                } else if let Some(client) = client {
                    SpanContext {
                        trace_id: client.trace_id,
                        span_id,
                        parent_id: Some(client.span_id),
                        sampled: client.sampled,
                    }
                } else {
                    self.root(span_id)
                }
            }
            Role::Client => match parent {
                Some(p) => SpanContext {
                    trace_id: p.trace_id,
                    span_id,
                    parent_id: Some(p.span_id),
                    sampled: p.sampled,
                },
                None => self.root(span_id),
            },
        };
        if started.role == Role::Client {
            if let (Some(local), Some(peer)) = (started.local, started.peer) {
                if self.client_links.len() >= MAX_CLIENT_LINKS {
                    self.client_links.clear();
                }
                self.client_links
                    .insert(local, (peer, ctx, resource.clone()));
            }
        }
        ctx
    }

    /// A server request of process `pid` got a trace of its own (`ctx`, no parent) although
    /// its client is on this machine: remember it, so that the client's span, if its event
    /// comes late, adopts it (`adopt`).
    pub fn orphan(&mut self, pid: u32, started: &Started, ctx: &SpanContext) {
        let (Role::Server, Some(peer)) = (started.role, started.peer) else {
            return;
        };
        // Linked already (a parent that is not the traceparent's): nothing to wait for.
        let continued = started
            .traceparent
            .is_some_and(|tp| ctx.parent_id == Some(tp.parent_id));
        if ctx.parent_id.is_some() && !continued {
            return;
        }
        let same_machine =
            peer.ip().is_loopback() || started.local.is_some_and(|l| l.ip() == peer.ip());
        if !same_machine {
            return;
        }
        if self.orphans.len() >= MAX_ORPHANS {
            self.orphans.clear();
        }
        self.orphans.insert(
            peer,
            (
                started.local,
                Orphan {
                    pid,
                    fd: started.fd,
                    span_id: ctx.span_id,
                    trace_id: ctx.trace_id,
                    continued,
                },
            ),
        );
    }

    /// A client request just started with identity `client`: the server request of the same
    /// connection that started before it, if any (the same request seen from its other end,
    /// for [`Tracer::pair`]), and that request's new identity as the client's child (none
    /// when an incoming `traceparent` keeps it in another trace).
    pub fn adopt(
        &mut self,
        started: &Started,
        client: &SpanContext,
    ) -> Option<(Orphan, Option<SpanContext>)> {
        let (local, peer) = (started.local?, started.peer?);
        let (server, _) = self.orphans.get(&local)?;
        if server.is_some_and(|s| s != peer) {
            return None;
        }
        let (_, orphan) = self.orphans.remove(&local)?;
        let adopted =
            (!orphan.continued || orphan.trace_id == client.trace_id).then_some(SpanContext {
                trace_id: client.trace_id,
                span_id: orphan.span_id,
                parent_id: Some(client.span_id),
                sampled: client.sampled,
            });
        Some((orphan, adopted))
    }

    /// The client span `client_span` of `client` and the server span `server_span` of
    /// `server` are one request (found by adoption), for the service graph.
    pub fn pair(
        &mut self,
        client_span: SpanId,
        client: &Arc<Resource>,
        server_span: SpanId,
        server: &Arc<Resource>,
    ) {
        self.pairs.link(client_span, client, server_span, server);
    }

    /// The finished span of an exchange, if it was sampled. `route` is the server route
    /// (pattern or collapsed path), shared with the process's route table. The exchange is
    /// taken so that its path moves into the span: a span allocates nothing of its own.
    pub fn finish(
        &mut self,
        f: Finished,
        route: Option<&Arc<str>>,
        resource: &Arc<Resource>,
    ) -> Option<Span> {
        match (f.role, f.local, f.peer, f.span) {
            (Role::Client, Some(local), Some(peer), _)
                if self
                    .client_links
                    .get(&local)
                    .is_some_and(|(s, _, _)| *s == peer) =>
            {
                self.client_links.remove(&local);
            }
            (Role::Server, _, Some(peer), Some(span))
                if self
                    .orphans
                    .get(&peer)
                    .is_some_and(|(_, o)| o.span_id == span.span_id) =>
            {
                self.orphans.remove(&peer);
            }
            _ => {}
        }
        let ctx = f.span?;
        if !ctx.sampled {
            return None;
        }
        let e = f.exchange;
        let (kind, error, route, server, client) = match f.role {
            Role::Server => {
                let route = route.map_or_else(|| Arc::from(collapse_path(&e.path)), Arc::clone);
                (
                    SpanKind::Server,
                    e.status >= 500,
                    Some(route),
                    f.local,
                    f.peer,
                )
            }
            Role::Client => (SpanKind::Client, e.status >= 400, None, f.peer, None),
        };
        let mut path = e.path;
        if let Some(end) = path.find(['?', '#']) {
            path.truncate(end);
        }
        Some(Span {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_span_id: ctx.parent_id,
            sampled: true,
            kind,
            start_unix_nanos: self.wall(e.start_ns),
            end_unix_nanos: self.wall(e.end_ns),
            error,
            http: HttpAttributes {
                method: e.method,
                status_code: e.status,
                path,
                route,
                server,
                client,
            },
            resource: resource.clone(),
        })
    }

    /// The client request in flight from `peer` to `local`, taken: one client request is
    /// served by one server request, and a link left behind would be found by the next
    /// request on the connection if its server end's event came before its client end's.
    fn take_client(
        &mut self,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> Option<(SpanContext, Arc<Resource>)> {
        let peer = peer?;
        let (server, _, _) = self.client_links.get(&peer)?;
        // The server's own address, when it knows it, must be where the client went.
        if local.is_some_and(|l| l != *server) {
            return None;
        }
        let (_, ctx, resource) = self.client_links.remove(&peer)?;
        Some((ctx, resource))
    }

    /// What a finished exchange adds to the service graph (see `service_graph`); call it
    /// before [`Tracer::finish`], for every exchange, sampled or not.
    pub fn edge(&mut self, f: &Finished) -> Option<Edge> {
        self.pairs.edge(f)
    }

    fn root(&mut self, span_id: [u8; 8]) -> SpanContext {
        let mut trace_id = [0u8; 16];
        while trace_id == [0; 16] {
            self.rng.fill(&mut trace_id);
        }
        SpanContext {
            trace_id,
            span_id,
            parent_id: None,
            sampled: self.sample_ratio >= 1.0 || self.rng.random::<f64>() < self.sample_ratio,
        }
    }

    fn span_id(&mut self) -> [u8; 8] {
        let mut id = [0u8; 8];
        while id == [0; 8] {
            self.rng.fill(&mut id);
        }
        id
    }

    fn wall(&self, monotonic_ns: u64) -> u64 {
        u64::try_from(i128::from(monotonic_ns) + self.clock_offset_ns).unwrap_or(0)
    }
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC (bpf_ktime_get_ns), read back to back.
fn clock_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec we own.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    let mono = read(libc::CLOCK_MONOTONIC);
    let real = read(libc::CLOCK_REALTIME);
    real - mono
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{protocols::trace_context::TraceParent, spans::trace::Value};

    fn resource() -> Arc<Resource> {
        Arc::new(Resource {
            service_name: "svc".into(),
            instance_id: "h:1:2".into(),
            pid: 1,
            executable_name: "svc".into(),
            host_name: "h".into(),
            k8s: None,
        })
    }

    fn started(role: Role, local: &str, peer: &str) -> Started {
        Started {
            fd: 3,
            id: 0,
            role,
            peer: Some(peer.parse().unwrap()),
            local: Some(local.parse().unwrap()),
            traceparent: None,
        }
    }

    fn exchange(role: Role, span: SpanContext, local: &str, peer: &str, status: u16) -> Finished {
        Finished {
            role,
            peer: Some(peer.parse().unwrap()),
            local: Some(local.parse().unwrap()),
            span: Some(span),
            exchange: crate::protocols::Exchange {
                id: 0,
                method: "GET",
                path: "/items/42?x=1".into(),
                truncated: false,
                status,
                start_ns: 1_000,
                end_ns: 2_000,
            },
        }
    }

    #[test]
    fn late_client_event_adopts_the_server_span() {
        let mut t = Tracer::new(1.0);
        // The server's read came first: a trace of its own, remembered as an orphan.
        let server = started(Role::Server, "127.0.0.1:8080", "127.0.0.1:50000");
        let orphan_ctx = t.start(&server, None, &resource());
        assert_eq!(orphan_ctx.parent_id, None);
        t.orphan(7, &server, &orphan_ctx);
        // Then the client's write of the same connection.
        let client = started(Role::Client, "127.0.0.1:50000", "127.0.0.1:8080");
        let client_ctx = t.start(&client, None, &resource());
        let (orphan, adopted) = t.adopt(&client, &client_ctx).expect("adopted");
        let adopted = adopted.expect("in the client's trace");
        assert_eq!((orphan.pid, orphan.fd), (7, 3));
        assert_eq!(adopted.trace_id, client_ctx.trace_id);
        assert_eq!(adopted.span_id, orphan_ctx.span_id);
        assert_eq!(adopted.parent_id, Some(client_ctx.span_id));
        // Once only.
        assert_eq!(t.adopt(&client, &client_ctx), None);
    }

    #[test]
    fn a_client_span_parents_one_server_span() {
        let mut t = Tracer::new(1.0);
        let client = started(Role::Client, "127.0.0.1:50000", "127.0.0.1:8080");
        let first = t.start(&client, None, &resource());
        let server = started(Role::Server, "127.0.0.1:8080", "127.0.0.1:50000");
        assert_eq!(
            t.start(&server, None, &resource()).parent_id,
            Some(first.span_id)
        );
        // The next request on the keep-alive connection, its server end seen before its
        // client end: not the first call's child, but adopted when the call shows up.
        let next = t.start(&server, None, &resource());
        assert_eq!(next.parent_id, None);
        t.orphan(7, &server, &next);
        let second = t.start(&client, None, &resource());
        let (_, adopted) = t.adopt(&client, &second).expect("adopted");
        let adopted = adopted.expect("in the client's trace");
        assert_eq!(adopted.parent_id, Some(second.span_id));
    }

    #[test]
    fn only_local_unlinked_server_requests_wait_for_a_client() {
        let mut t = Tracer::new(1.0);
        // A client on another machine: nothing to wait for.
        let remote = started(Role::Server, "10.0.0.1:8080", "10.0.0.2:50000");
        let ctx = t.start(&remote, None, &resource());
        t.orphan(7, &remote, &ctx);
        assert!(t.orphans.is_empty());
        // A request that finished before any client event: forgotten.
        let local = started(Role::Server, "127.0.0.1:8080", "127.0.0.1:50001");
        let ctx = t.start(&local, None, &resource());
        t.orphan(7, &local, &ctx);
        assert_eq!(t.orphans.len(), 1);
        let e = exchange(Role::Server, ctx, "127.0.0.1:8080", "127.0.0.1:50001", 200);
        t.finish(e, None, &resource());
        assert!(t.orphans.is_empty());
        // Linked already (a client span in flight): no orphan.
        let client = started(Role::Client, "127.0.0.1:50002", "127.0.0.1:8080");
        t.start(&client, None, &resource());
        let linked = started(Role::Server, "127.0.0.1:8080", "127.0.0.1:50002");
        let ctx = t.start(&linked, None, &resource());
        assert!(ctx.parent_id.is_some());
        t.orphan(7, &linked, &ctx);
        assert!(t.orphans.is_empty());
    }

    #[test]
    fn traceparent_is_continued() {
        let mut t = Tracer::new(1.0);
        let mut s = started(Role::Server, "127.0.0.1:80", "127.0.0.1:5000");
        s.traceparent = Some(TraceParent {
            trace_id: [7; 16],
            parent_id: [9; 8],
            sampled: false,
        });
        let ctx = t.start(&s, None, &resource());
        assert_eq!(
            (ctx.trace_id, ctx.parent_id, ctx.sampled),
            ([7; 16], Some([9; 8]), false)
        );
        // Not sampled upstream: not exported.
        let e = exchange(Role::Server, ctx, "127.0.0.1:80", "127.0.0.1:5000", 200);
        assert_eq!(t.finish(e, None, &resource()), None);
    }

    #[test]
    fn server_span_is_the_child_of_the_client_span_of_its_connection() {
        let mut t = Tracer::new(1.0);
        let root = t.start(
            &started(Role::Server, "127.0.0.1:80", "127.0.0.1:5000"),
            None,
            &resource(),
        );
        assert_eq!(root.parent_id, None);
        // The handler calls another service from 127.0.0.1:6000 to 127.0.0.1:81.
        let call = t.start(
            &started(Role::Client, "127.0.0.1:6000", "127.0.0.1:81"),
            Some(root),
            &resource(),
        );
        assert_eq!(
            (call.trace_id, call.parent_id),
            (root.trace_id, Some(root.span_id))
        );
        // The other process serves it: same connection, seen from the other end.
        let served = t.start(
            &started(Role::Server, "127.0.0.1:81", "127.0.0.1:6000"),
            None,
            &resource(),
        );
        assert_eq!(
            (served.trace_id, served.parent_id),
            (root.trace_id, Some(call.span_id))
        );
        let server_span = t
            .finish(
                exchange(Role::Server, served, "127.0.0.1:81", "127.0.0.1:6000", 503),
                Some(&Arc::from("/items/{id}")),
                &resource(),
            )
            .unwrap();
        assert_eq!(server_span.name(), "GET /items/{id}");
        assert!(server_span.error);
        assert_eq!(server_span.attribute("client.port"), Some(Value::Int(6000)));
        assert_eq!(
            server_span.attribute("url.path"),
            Some(Value::Str("/items/42".into()))
        );
        assert_eq!(
            server_span.end_unix_nanos - server_span.start_unix_nanos,
            1_000
        );
        // Once the call is answered the link is forgotten.
        let client_span = t
            .finish(
                exchange(Role::Client, call, "127.0.0.1:6000", "127.0.0.1:81", 404),
                None,
                &resource(),
            )
            .unwrap();
        assert_eq!(
            (client_span.kind, client_span.error),
            (SpanKind::Client, true)
        );
        let again = t.start(
            &started(Role::Server, "127.0.0.1:81", "127.0.0.1:6000"),
            None,
            &resource(),
        );
        assert_eq!(again.parent_id, None);
    }

    #[test]
    fn sampling_ratio_applies_to_roots() {
        let mut never = Tracer::new(0.0);
        let ctx = never.start(
            &started(Role::Server, "127.0.0.1:80", "127.0.0.1:1"),
            None,
            &resource(),
        );
        assert!(!ctx.sampled);
        let child = never.start(
            &started(Role::Client, "127.0.0.1:2", "127.0.0.1:3"),
            Some(ctx),
            &resource(),
        );
        assert!(!child.sampled);
        let mut always = Tracer::new(1.0);
        assert!(
            always
                .start(
                    &started(Role::Server, "127.0.0.1:80", "127.0.0.1:1"),
                    None,
                    &resource()
                )
                .sampled
        );
    }
}
