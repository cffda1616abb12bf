//! Go net/http: which ServeMux a server routes with. A uprobe on the stack-check jump of
//! `(*ServeMux).ServeHTTP` (an emulated instruction; RAX = the mux, Go register ABI) reports
//! each (process, mux) once. User space attaches it only while discovering, then detaches it:
//! requests themselves are seen through socket syscalls, so no uprobe stays on the request path.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::uprobe, programs::ProbeContext};
use obs_common::{
    go_http::{GoMuxSeen, MuxKey},
    EventKind,
};

use crate::maps::{output, GO_MUXES};

#[uprobe]
pub fn go_mux_serve_http(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let mux = unsafe { (*ctx.regs).rax };
    let key = MuxKey { tgid, _pad: 0, mux };
    if unsafe { GO_MUXES.get(key) }.is_some() {
        return 0;
    }
    let _ = GO_MUXES.insert(key, 0u8, 0);
    let event = GoMuxSeen {
        kind: EventKind::GoMuxSeen as u32,
        tgid,
        mux,
    };
    output(&event);
    0
}
