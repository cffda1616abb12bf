//! Go net/http: discovering the ServeMux instances a server routes with, so user space can
//! read their registered patterns (Go 1.22+) and match request paths to routes.

/// `(*ServeMux).ServeHTTP` ran with this mux: the first time per (process, mux) only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoMuxSeen {
    pub kind: u32,
    pub tgid: u32,
    pub mux: u64,
}

/// Key of the kernel's set of muxes already reported.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MuxKey {
    pub tgid: u32,
    pub _pad: u32,
    pub mux: u64,
}

const _: () = assert!(core::mem::size_of::<GoMuxSeen>() == 16);
const _: () = assert!(core::mem::size_of::<MuxKey>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for GoMuxSeen {}
    unsafe impl aya::Pod for MuxKey {}
}
