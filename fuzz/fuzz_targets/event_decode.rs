//! Ring-buffer records from arbitrary bytes, through the HTTP/1 pairing of socket data on
//! both ends of connections (server, client, and role unknown) and span building.
#![no_main]
use obs_agent::{
    events::{decode, peer_address, Event},
    spans::{
        http1::{Connections, Role},
        trace::Resource,
        tracer::Tracer,
        ClientRequest, ServerRequest,
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
    });
    conns.add_socket(3, Some(Role::Server), None);
    conns.add_socket(4, Some(Role::Client), None);
    conns.add_socket(5, None, None);
    // The input is cut into record-sized chunks; most will not decode, some will.
    for chunk in data.chunks(320) {
        let d = match decode(chunk) {
            Ok(Event::SockData(d)) => d,
            Ok(Event::SockConn(c)) => {
                let _ = peer_address(&c);
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
            let _ = ServerRequest::from_exchange(&e, None);
            let _ = ClientRequest::from_exchange(&e);
            let _ = tracer.finish(&e, None, &resource);
        }
        while let Some(started) = conns.take_started() {
            let ctx = tracer.start(&started, conns.sole_server_span());
            conns.set_span(started.fd, ctx);
        }
    }
    // The parsers directly, on the raw bytes.
    let n = data.len() as i64;
    let _ = conns.ingress(3, 0, data, n);
    let _ = conns.egress(3, 1, data, n);
    let _ = conns.egress(4, 2, data, n + 1);
    let _ = conns.ingress(4, 3, data, n);
});
