//! Which processes to watch: the `--pid` list, or node-wide every Go process and every other
//! process with a TCP socket listening or connected; and what
//! each one is (executable, binary identity, service name, start time to detect pid reuse).

pub mod go_mux;
pub mod go_runtime;
pub mod kubernetes;
pub mod memory;
pub mod process;
pub mod sockets;

pub use process::{BinaryId, Process, ProcessError};

/// How the user chose what to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Exactly these pids (`--pid`); a pid that exits is not replaced.
    Pids(Vec<u32>),
    /// Node-wide: every Go process on the machine, and every other process with a TCP
    /// socket listening or connected, now and as they start.
    Node,
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
