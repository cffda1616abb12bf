//! Go net/http server requests, from two uprobes per request, each on the conditional jump of
//! the function's stack check (an instruction the kernel emulates, ~1 µs instead of ~20 µs
//! for a single-stepped one). Argument registers (Go register ABI) are intact there.
//!
//! - `net/http.serverHandler.ServeHTTP(sh, rw ResponseWriter, req *Request)` records the start,
//!   keyed by the `*response` behind `rw` (RBX = itab, RCX = data).
//! - `net/http.(*response).finishRequest(w)` (RAX = w) runs after the handler returned and
//!   before the response is flushed; it reads method, path, route and status from the
//!   target's memory at the offsets user space found in DWARF, and emits one event.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::uprobe,
    programs::ProbeContext,
};
use obs_common::{
    go_http::{
        GoHttpServerRequest, ServerReqKey, FLAG_PATH_TRUNCATED, FLAG_READ_ERROR,
        FLAG_ROUTE_TRUNCATED, NO_OFFSET,
    },
    stats::Stat,
    EventKind,
};

use crate::{
    go_mem::{read, read_string},
    maps::{count, wakeup_flags, EVENTS, GO_PROCS, GO_SERVER_STARTS},
};

#[uprobe]
pub fn go_serve_http(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = GO_PROCS.get_ptr_mut(tgid) else {
        return 0;
    };
    let regs = unsafe { &*ctx.regs };
    // Only requests served through net/http's own *response (not, e.g., its HTTP/2 adapter,
    // which never reaches finishRequest).
    let itab = unsafe { (*state).response_itab };
    if itab != 0 && regs.rbx != itab {
        return 0;
    }
    let key = ServerReqKey {
        tgid,
        _pad: 0,
        response: regs.rcx,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if GO_SERVER_STARTS.insert(key, now, 0).is_err() {
        count(Stat::StartMapErrors);
        return 0;
    }
    unsafe { (*state).active += 1 };
    0
}

#[uprobe]
pub fn go_finish_request(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = GO_PROCS.get_ptr_mut(tgid) else {
        return 0;
    };
    let response = unsafe { (*ctx.regs).rax };
    let key = ServerReqKey {
        tgid,
        _pad: 0,
        response,
    };
    let Some(start) = (unsafe { GO_SERVER_STARTS.get(key) }).copied() else {
        count(Stat::RequestsWithoutStart);
        return 0;
    };
    let _ = GO_SERVER_STARTS.remove(key);
    unsafe { (*state).active -= 1 };
    let end = unsafe { bpf_ktime_get_ns() };

    let Some(mut entry) = EVENTS.reserve::<GoHttpServerRequest>(0) else {
        count(Stat::EventsLostRingFull);
        return 0;
    };
    let event = entry.as_mut_ptr();
    let offsets = unsafe { &(*state).offsets };
    unsafe {
        (*event).kind = EventKind::GoHttpServerRequest as u32;
        (*event).tgid = tgid;
        (*event).start_ns = start;
        (*event).end_ns = end;
        (*event).flags = 0;
        (*event).method_len = 0;
        (*event).path_len = 0;
        (*event).route_len = 0;
        (*event).status = 0;
        if fill_request(&mut *event, response, offsets).is_err() {
            (*event).flags |= FLAG_READ_ERROR;
            count(Stat::TargetReadErrors);
        }
    }
    entry.submit(wakeup_flags());
    0
}

#[inline(always)]
fn fill_request(
    event: &mut GoHttpServerRequest,
    response: u64,
    o: &obs_common::go_http::GoHttpOffsets,
) -> Result<(), i32> {
    let wrote_header: u8 = read(response + o.response_wrote_header as u64)?;
    event.status = if wrote_header != 0 {
        read::<u64>(response + o.response_status as u64)? as u32
    } else {
        // finishRequest writes the implicit 200 itself.
        200
    };
    let request: u64 = read(response + o.response_req as u64)?;
    let (n, _) = read_string(request + o.request_method as u64, &mut event.method)?;
    event.method_len = n as u8;

    let url: u64 = read(request + o.request_url as u64)?;
    let (n, truncated) = read_string(url + o.url_path as u64, &mut event.path)?;
    event.path_len = n as u8;
    if truncated {
        event.flags |= FLAG_PATH_TRUNCATED;
    }

    let route = if o.request_pattern != NO_OFFSET {
        read_string(request + o.request_pattern as u64, &mut event.route)?
    } else if o.request_pat != NO_OFFSET && o.pattern_str != NO_OFFSET {
        let pat: u64 = read(request + o.request_pat as u64)?;
        if pat == 0 {
            (0, false)
        } else {
            read_string(pat + o.pattern_str as u64, &mut event.route)?
        }
    } else {
        (0, false)
    };
    event.route_len = route.0 as u8;
    if route.1 {
        event.flags |= FLAG_ROUTE_TRUNCATED;
    }
    Ok(())
}
