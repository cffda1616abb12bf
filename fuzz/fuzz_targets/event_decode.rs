//! Ring-buffer records from arbitrary bytes, through to a request.
#![no_main]
use obs_agent::{
    events::{decode, Event},
    spans::ServerRequest,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Event::GoHttpServer(e)) = decode(data) {
        let _ = ServerRequest::from_go(&e);
    }
});
