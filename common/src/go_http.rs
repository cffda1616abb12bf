//! Go net/http server probes: per-process field offsets (from DWARF) and the request event.

/// Marks an offset the binary does not have (e.g. `Request.Pattern` before Go 1.23).
pub const NO_OFFSET: u32 = u32::MAX;

pub const METHOD_MAX: usize = 16;
pub const PATH_MAX: usize = 128;
pub const ROUTE_MAX: usize = 96;

/// Where the fields the probes read live, for one Go binary. All offsets in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoHttpOffsets {
    /// `net/http.response.req` (*Request)
    pub response_req: u32,
    /// `net/http.response.status` (int)
    pub response_status: u32,
    /// `net/http.response.wroteHeader` (bool)
    pub response_wrote_header: u32,
    /// `net/http.Request.Method` (string)
    pub request_method: u32,
    /// `net/http.Request.URL` (*url.URL)
    pub request_url: u32,
    /// `net/url.URL.Path` (string)
    pub url_path: u32,
    /// `net/http.Request.Pattern` (string, Go 1.23+), else NO_OFFSET
    pub request_pattern: u32,
    /// `net/http.Request.pat` (*pattern, Go 1.22+), else NO_OFFSET
    pub request_pat: u32,
    /// `net/http.pattern.str` (string, Go 1.22+), else NO_OFFSET
    pub pattern_str: u32,
    pub _reserved: u32,
}

/// Per watched Go process, one copy per CPU: the offsets, and that CPU's share of the
/// process's in-flight requests (user space sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoProcState {
    pub offsets: GoHttpOffsets,
    /// Run-time address of the `*response` → `ResponseWriter` itab, or 0 to skip the check.
    pub response_itab: u64,
    /// started minus finished on this CPU; may be negative on one CPU, never in sum.
    pub active: i64,
}

/// Key of an in-flight server request: the process and its `*http.response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerReqKey {
    pub tgid: u32,
    pub _pad: u32,
    pub response: u64,
}

/// Flags in [`GoHttpServerRequest::flags`].
pub const FLAG_PATH_TRUNCATED: u8 = 1;
pub const FLAG_ROUTE_TRUNCATED: u8 = 2;
pub const FLAG_READ_ERROR: u8 = 4;

/// One served request, emitted when `(*response).finishRequest` is entered.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoHttpServerRequest {
    pub kind: u32,
    pub tgid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub status: u32,
    pub method_len: u8,
    pub path_len: u8,
    pub route_len: u8,
    pub flags: u8,
    pub method: [u8; METHOD_MAX],
    pub path: [u8; PATH_MAX],
    pub route: [u8; ROUTE_MAX],
}

const _: () = assert!(core::mem::size_of::<GoHttpOffsets>() == 40);
const _: () = assert!(core::mem::size_of::<GoProcState>() == 56);
const _: () = assert!(core::mem::size_of::<ServerReqKey>() == 16);
const _: () =
    assert!(core::mem::size_of::<GoHttpServerRequest>() == 32 + METHOD_MAX + PATH_MAX + ROUTE_MAX);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for GoHttpOffsets {}
    unsafe impl aya::Pod for GoProcState {}
    unsafe impl aya::Pod for ServerReqKey {}
    unsafe impl aya::Pod for GoHttpServerRequest {}
}
