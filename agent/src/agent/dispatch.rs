//! Each event from the kernel, to the process it belongs to: socket events and data go to
//! its connections (and their decoders); what they complete becomes metrics and spans; what
//! starts is given its span identity and links. Go events go to its routes, goroutine links
//! and runtime figures.

use std::time::{Duration, Instant};

use obs_common::sockets::{nr, DIR_INGRESS, EINPROGRESS, SOCK_CLIENT, SOCK_TCP};

use crate::{
    connections::{Dropped, SeenSocket, RESPONSE_QUIET_NS},
    events::{local_address, open_addresses, peer_address, DecodeError, Event},
    metrics::reasons::{DecodeFailure, Lost},
    probes::table::Probe,
    protocols::Role,
    spans::{
        goroutines::{Caller, Chain},
        route_of,
        tracer::Tracer,
    },
    target,
};

use super::{
    kernel::Kernel,
    lock,
    watched::{adopt, Adoption, Watched},
    Agent,
};

impl<K: Kernel> Agent<K> {
    /// One decoded (or undecodable) event from the kernel.
    pub fn handle(&self, event: Result<Event<'_>, DecodeError>) {
        let m = &self.metrics.agent;
        m.events_received.inc();
        let event = match event {
            Ok(e) => e,
            Err(e) => return m.decode_error((&e).into()),
        };
        let mut pipeline = lock(&self.pipeline);
        let pipeline = &mut *pipeline;
        let tgid = event.tgid();
        let Some(w) = pipeline.watched.get_mut(&tgid) else {
            m.lost(Lost::UnknownProcess).inc();
            return;
        };
        let mut adopted = Vec::new();
        match event {
            Event::GoMuxSeen(e) => w.routes.mux_seen(tgid, e.mux),
            Event::GoClientCall(c) => w.goroutines.call(c.fd, Chain::from(&c)),
            Event::GoPanic(p) => {
                if let Some(go) = &mut w.go {
                    go.panic_event(&self.metrics.go, &p);
                }
            }
            Event::GoCreationBurst(_) => {
                // The pipeline is locked first: the one order.
                let mut kernel = lock(&self.kernel);
                if let Some(go) = &mut w.go {
                    if kernel.kernel.detach(tgid, Probe::GoNewproc) {
                        go.probe_paused_at = Some(Instant::now());
                        log::info!(
                            "pid {tgid}: a burst of goroutine creations (over {} per second): \
                             creation probe detached; creations by function and goroutine \
                             ancestry paused",
                            4 * self.goroutine_probe_max_rate
                        );
                    }
                }
            }
            Event::SockConn(c) => {
                let dropped = match u64::from(c.syscall) {
                    nr::ACCEPT | nr::ACCEPT4 => {
                        w.connections
                            .new_connection(c.fd, Role::Server, peer_address(&c))
                    }
                    // Non-blocking sockets (Go's, nginx's, Node's) say "in progress" and
                    // complete later; a connection that then fails simply carries no
                    // requests. Other failures leave no connection.
                    nr::CONNECT if c.ret == 0 || c.ret == -EINPROGRESS => {
                        let dropped =
                            w.connections
                                .new_connection(c.fd, Role::Client, peer_address(&c));
                        if c.sock != 0 {
                            w.connections.connecting(c.fd, c.sock);
                        }
                        dropped
                    }
                    nr::GETSOCKNAME => {
                        if let Some(local) = peer_address(&c) {
                            w.connections.set_local(c.fd, local);
                        }
                        None
                    }
                    // The syscall path's close names the descriptor; the socket path's, the
                    // kernel socket too (its descriptor may already be another's).
                    nr::CLOSE if c.sock == 0 || w.connections.is_socket(c.fd, c.sock) => {
                        w.goroutines.closed(c.fd);
                        w.connections.close(c.fd)
                    }
                    _ => None,
                };
                if let Some(d) = dropped {
                    self.count_dropped(d, &w.process.service_name);
                }
                adopted = self.record_finished(&mut pipeline.tracer, tgid, w, 0);
            }
            Event::SockOpen(o) => {
                let (local, peer) = open_addresses(&o);
                let role = if o.flags & SOCK_CLIENT != 0 {
                    Some(Role::Client)
                } else if o.flags & SOCK_TCP != 0 {
                    Some(Role::Server)
                } else {
                    // A connected UDP socket (a DNS lookup) has a peer; others tell by
                    // their first message.
                    peer.map(|_| Role::Client)
                };
                let seen = SeenSocket { role, local, peer };
                if let Some(d) = w.connections.opened(o.fd, o.sock, seen) {
                    self.count_dropped(d, &w.process.service_name);
                }
                adopted = self.record_finished(&mut pipeline.tracer, tgid, w, 0);
            }
            Event::SockLocal(l) => {
                if let Some(local) = local_address(&l) {
                    w.connections.handshake_done(l.sock, local);
                }
            }
            Event::SockData(d) => {
                let data = d.prefix();
                let result = if d.direction == DIR_INGRESS {
                    w.connections.ingress(d.fd, d.ts_ns, data, d.bytes)
                } else {
                    w.connections.egress(d.fd, d.ts_ns, data, d.bytes)
                };
                if let Err(dropped) = result {
                    self.count_dropped(dropped, &w.process.service_name);
                }
                adopted = self.record_finished(&mut pipeline.tracer, tgid, w, d.goid);
            }
        }
        if !w.is_alive() {
            // An event the process made before it died, still in the ring when its exit was
            // seen: nothing it started can be answered any more.
            self.finish_dead(&mut pipeline.tracer, tgid, w);
        }
        w.sync_active();
        if !adopted.is_empty() {
            adopt(&mut pipeline.watched, &mut pipeline.tracer, adopted);
        }
    }

    /// A process that died: the responses it was writing are complete, the requests it had
    /// not answered are lost (and counted).
    pub(super) fn finish_dead(&self, tracer: &mut Tracer, pid: u32, w: &mut Watched) {
        let unanswered = w.connections.finish_all();
        // Nothing starts here, so nothing is adopted.
        self.record_finished(tracer, pid, w, 0);
        if unanswered > 0 {
            self.count_dropped(Dropped::Unanswered(unanswered), &w.process.service_name);
        }
    }

    /// Records the exchanges `w` (process `pid`) completed (metrics, spans), then gives the
    /// requests it started their span identities; `goid` is the goroutine of the event that
    /// brought them (0: unknown). In that order: a client's next request on a connection
    /// starts after its previous one finished. Returns the server requests (of any process)
    /// adopted by the client requests that started.
    fn record_finished(
        &self,
        tracer: &mut Tracer,
        pid: u32,
        w: &mut Watched,
        goid: u64,
    ) -> Vec<Adoption> {
        let sink = self.span_sink.get();
        for f in w.connections.drain_finished() {
            let e = &f.exchange;
            let duration = Duration::from_nanos(e.end_ns.saturating_sub(e.start_ns));
            // The service graph first: the route below borrows the process's series.
            if sink.is_some() {
                if let Some(edge) = tracer.edge(&f) {
                    self.metrics
                        .record_edge(&mut w.series, &edge, e.status, duration);
                }
            }
            let route = match f.role {
                Role::Server => {
                    let route = route_of(e, w.routes.pattern(e));
                    Some(self.metrics.record_server(
                        &mut w.series,
                        &route,
                        e.method,
                        e.status,
                        duration,
                    ))
                }
                Role::Client => {
                    self.metrics
                        .record_client(&mut w.series, f.peer, e.method, e.status, duration);
                    None
                }
            };
            if let Some(sink) = sink {
                if let (Role::Server, Some(span)) = (f.role, &f.span) {
                    w.goroutines.served(goid, span);
                }
                if let Some(span) = tracer.finish(f, route.as_deref(), &w.resource) {
                    self.metrics.agent.spans.inc();
                    sink.submit(span);
                }
            }
        }
        let mut adopted = Vec::new();
        while let Some(mut started) = w.connections.take_started() {
            if sink.is_none() {
                continue;
            }
            // A client that never asked for its own address (most runtimes but Go's): read
            // it once per connection from /proc, so the server end in another watched
            // process can find this call.
            if started.role == Role::Client && started.local.is_none() && started.peer.is_some() {
                let local = target::sockets::local_address(pid, started.fd);
                log::debug!("pid {pid} fd {}: local address {local:?}", started.fd);
                if let Some(local) = local {
                    w.connections.set_local(started.fd, local);
                    started.local = Some(local);
                }
            }
            let parent = match started.role {
                Role::Client => match w.goroutines.caller(started.fd) {
                    Caller::Request(span) => Some(span),
                    Caller::NoRequest => None,
                    Caller::Unknown => w.connections.sole_server_span(),
                },
                Role::Server => None,
            };
            let ctx = tracer.start(&started, parent, &w.resource);
            w.connections.set_span(started.fd, started.id, ctx);
            match started.role {
                Role::Server => {
                    w.goroutines.serving(goid, ctx);
                    tracer.orphan(pid, &started, &ctx);
                }
                Role::Client => {
                    if let Some((orphan, span)) = tracer.adopt(&started, &ctx) {
                        adopted.push(Adoption {
                            orphan,
                            span,
                            client_span: ctx.span_id,
                            client: w.resource.clone(),
                        });
                    }
                }
            }
        }
        adopted
    }

    /// Completes responses that have been quiet for [`RESPONSE_QUIET_NS`] and whose socket
    /// has nothing left in flight: their last byte was seen.
    pub(super) fn finish_quiet_responses(&self) {
        let now = monotonic_ns();
        let mut pipeline = lock(&self.pipeline);
        let pipeline = &mut *pipeline;
        let mut adopted = Vec::new();
        for (pid, w) in pipeline.watched.iter_mut() {
            let quiet = w.connections.quiet_responses(now, RESPONSE_QUIET_NS);
            if quiet.is_empty() {
                continue;
            }
            let busy = target::sockets::busy_sockets(*pid, &quiet);
            for fd in quiet.into_iter().filter(|fd| !busy.contains(fd)) {
                w.connections.finish_response(fd);
            }
            adopted.extend(self.record_finished(&mut pipeline.tracer, *pid, w, 0));
            w.sync_active();
        }
        adopt(&mut pipeline.watched, &mut pipeline.tracer, adopted);
    }

    fn count_dropped(&self, d: Dropped, service_name: &str) {
        let m = &self.metrics.agent;
        match d {
            // Data on files, pipes and terminals is expected: not a loss.
            Dropped::NotASocket => {}
            Dropped::UnmatchedResponse => m.decode_error(DecodeFailure::UnmatchedResponse),
            Dropped::Unanswered(n) => {
                m.lost(Lost::UnansweredRequest).inc_by(n as u64);
            }
            Dropped::Overflow => {
                m.lost(Lost::ConnectionTableFull).inc();
            }
            Dropped::NotHttp { role, reason } => {
                m.non_http_connection(service_name, role.as_str(), reason.as_str())
            }
        }
    }
}

/// The kernel's monotonic clock (`bpf_ktime_get_ns`), as event timestamps use it.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}
