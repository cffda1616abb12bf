//! Ring-buffer records from arbitrary bytes, through the HTTP/1 pairing of socket data.
#![no_main]
use obs_agent::{
    events::{decode, Event},
    spans::{http1::ServerConnections, ServerRequest},
};
use obs_common::sockets::DIR_INGRESS;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut conns = ServerConnections::default();
    conns.add_socket(3);
    // The input is cut into record-sized chunks; most will not decode, some will.
    for chunk in data.chunks(320) {
        let Ok(Event::SockData(d)) = decode(chunk) else {
            continue;
        };
        let fd = d.fd % 4;
        conns.add_socket(fd);
        if d.direction == DIR_INGRESS {
            let _ = conns.ingress(fd, d.ts_ns, d.prefix());
        } else if let Ok(Some(e)) = conns.egress(fd, d.ts_ns, d.prefix()) {
            let _ = ServerRequest::from_exchange(&e, None);
        }
    }
    // The parsers directly, on the raw bytes.
    let _ = conns.ingress(3, 0, data);
    let _ = conns.egress(3, 1, data);
});
