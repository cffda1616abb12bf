//! Tracepoints are found through tracefs: mounted where aya looks if nothing has mounted it.

use super::ProbeError;

const TRACEFS: &str = "/sys/kernel/tracing";

pub fn ensure_mounted() -> Result<(), ProbeError> {
    for dir in [TRACEFS, "/sys/kernel/debug/tracing"] {
        if std::path::Path::new(dir).join("events").exists() {
            return Ok(());
        }
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL");
    let source = std::ffi::CString::new("nodev").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::NoTracefs(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    log::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}
