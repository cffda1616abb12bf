//! Which processes to watch: the `--pid` list, or every Go process on the machine; and what
//! each one is (executable, binary identity, service name, start time to detect pid reuse).

pub mod go_mux;
pub mod go_runtime;
pub mod memory;
pub mod process;
pub mod sockets;

pub use process::{BinaryId, Process, ProcessError};

/// How the user chose what to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Exactly these pids (`--pid`); a pid that exits is not replaced.
    Pids(Vec<u32>),
    /// Every Go process on the machine, now and as they start.
    AllGo,
}

/// All pids currently in /proc, except our own.
pub fn all_pids() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .collect()
}
