//! obs-agent's kernel programs. One module per probe family; all maps live in `maps`.
#![no_std]
#![no_main]

mod go_http;
mod go_runtime;
mod go_trace;
mod maps;
mod sockets;
mod user_mem;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
