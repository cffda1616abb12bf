//! Ring-buffer records from arbitrary bytes, through the connection table (HTTP/1) on
//! both ends of connections (server, client, and role unknown) and span building.
#![no_main]
use obs_agent::{
    connections::Connections,
    events::{decode, local_address, peer_address, Event},
    protocols::Role,
    spans::{
        goroutines::{Caller, Chain, Goroutines},
        route_of,
        trace::Resource,
        tracer::Tracer,
    },
};
use obs_common::sockets::DIR_INGRESS;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut conns = Connections::default();
    let mut tracer = Tracer::new(1.0);
    let resource = std::sync::Arc::new(Resource {
        service_name: "fuzz".into(),
        instance_id: "fuzz".into(),
        pid: 1,
        executable_name: "fuzz".into(),
        host_name: "fuzz".into(),
        k8s: None,
    });
    conns.add_socket(3, Some(Role::Server), None);
    conns.add_socket(4, Some(Role::Client), None);
    conns.add_socket(5, None, None);
    let mut goroutines = Goroutines::default();
    // The input is cut into records, each preceded by its length (2 bytes; records are of
    // varying length, reads as long as their prefix); most will not decode, some will.
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 1200;
        let chunk = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        let d = match decode(chunk) {
            Ok(Event::SockData(d)) => d,
            Ok(Event::SockConn(c)) => {
                let _ = peer_address(&c);
                goroutines.closed(c.fd);
                // A few kernel sockets, so that connects and handshakes meet.
                conns.connecting(3 + c.fd % 3, c.sock % 4);
                continue;
            }
            Ok(Event::SockLocal(l)) => {
                if let Some(local) = local_address(&l) {
                    conns.handshake_done(l.sock % 4, local);
                }
                continue;
            }
            Ok(Event::GoClientCall(c)) => {
                goroutines.call(3 + c.fd % 3, Chain::from(&c));
                continue;
            }
            _ => continue,
        };
        let fd = 3 + d.fd % 3;
        let _ = if d.direction == DIR_INGRESS {
            conns.ingress(fd, d.ts_ns, d.prefix(), d.bytes)
        } else {
            conns.egress(fd, d.ts_ns, d.prefix(), d.bytes)
        };
        for e in conns.drain_finished().collect::<Vec<_>>() {
            if let (Role::Server, Some(span)) = (e.role, &e.span) {
                goroutines.served(d.goid, span);
            }
            let _ = route_of(&e.exchange, None);
            let _ = tracer.edge(&e);
            let _ = tracer.finish(e, None, &resource);
        }
        while let Some(started) = conns.take_started() {
            let parent = match goroutines.caller(started.fd) {
                Caller::Request(s) => Some(s),
                Caller::NoRequest => None,
                Caller::Unknown => conns.sole_server_span(),
            };
            let ctx = tracer.start(&started, parent, &resource);
            conns.set_span(started.fd, started.id, ctx);
            if started.role == Role::Server {
                goroutines.serving(d.goid, ctx);
                tracer.orphan(1, &started, &ctx);
            } else if let Some((orphan, Some(span))) = tracer.adopt(&started, &ctx) {
                if conns.relink(orphan.fd, orphan.span_id, span) {
                    goroutines.relink(span);
                }
            }
        }
    }
    // The parsers directly, on the raw bytes.
    let n = data.len() as i64;
    let _ = conns.ingress(3, 0, data, n);
    let _ = conns.egress(3, 1, data, n);
    let _ = conns.egress(4, 2, data, n + 1);
    let _ = conns.ingress(4, 3, data, n);
});
