//! The connection table and its HTTP/1 decoder on arbitrary syscall sequences: each step is one
//! control byte (which socket, which direction or event, how many bytes the call moved
//! beyond those captured) and a slice of the input as the captured bytes. Checks that it never
//! panics, stays bounded, and only reports exchanges of requests it was given.
#![no_main]
use obs_agent::{
    connections::{Connections, RESPONSE_QUIET_NS},
    protocols::{http1::parse::parse_request_head, Role, MAX_PENDING},
};
use obs_common::sockets::{DATA_PREFIX, EGRESS_PREFIX};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut conns = Connections::default();
    let mut rest = data;
    let mut ts = 0u64;
    while let [control, len, tail @ ..] = rest {
        let take = (*len as usize).min(tail.len());
        let (bytes, next) = tail.split_at(take);
        rest = next;
        ts += 1 + u64::from(*control >> 6) * RESPONSE_QUIET_NS / 2;
        let fd = u32::from(control & 3);
        let extra = i64::from((control >> 2) & 3) * 4096;
        let total = bytes.len() as i64 + extra;
        let _ = parse_request_head(bytes);
        match (control >> 4) & 3 {
            0 => {
                let _ = conns.ingress(fd, ts, &bytes[..bytes.len().min(DATA_PREFIX)], total);
            }
            1 => {
                let _ = conns.egress(fd, ts, &bytes[..bytes.len().min(EGRESS_PREFIX)], total);
            }
            2 => {
                let role = if control & 4 == 0 {
                    Role::Server
                } else {
                    Role::Client
                };
                let _ = conns.new_connection(fd, role, None);
            }
            _ => {
                if control & 4 == 0 {
                    let _ = conns.close(fd);
                } else {
                    conns.finish_quiet(ts, RESPONSE_QUIET_NS);
                }
            }
        }
        for e in conns.drain_finished() {
            assert!(e.exchange.start_ns <= e.exchange.end_ns);
            assert!(e.exchange.status >= 100 && e.exchange.status <= 999);
        }
        let mut started = 0;
        while conns.take_started().is_some() {
            started += 1;
        }
        assert!(started <= MAX_PENDING);
        assert!(conns.in_flight_all() <= 4 * MAX_PENDING);
    }
    let _ = conns.finish_all();
});
