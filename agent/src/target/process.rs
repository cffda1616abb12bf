//! One process as seen through /proc.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::kubernetes::PodIdentity;

/// A binary's identity: the (device, inode) of the file the process runs, which is what
/// uprobes attach to and what analysis is cached by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BinaryId {
    pub dev: u64,
    pub ino: u64,
}

#[derive(Clone, Debug)]
pub struct Process {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat): a pid that is
    /// reused by a new process gets a different one.
    pub start_time: u64,
    pub binary: BinaryId,
    /// `/proc/PID/exe`: opens the running binary even if its file was replaced or deleted.
    pub exe_link: PathBuf,
    /// The executable's path as the kernel reports it (may end in " (deleted)").
    pub exe_path: PathBuf,
    pub service_name: String,
    /// Whether the service name is the process's own `OTEL_SERVICE_NAME` (which wins over
    /// what Kubernetes says).
    pub service_name_from_env: bool,
    /// Its pod, container and owner, when it runs in Kubernetes.
    pub k8s: Option<Arc<PodIdentity>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no process with pid {0}")]
    NotFound(u32),
    #[error("pid {0} is a kernel thread or has no executable")]
    NoExecutable(u32),
    #[error("cannot inspect pid {pid}: {source} (obs-agent must run as root)")]
    Permission { pid: u32, source: std::io::Error },
    #[error("cannot inspect pid {pid}: {source}")]
    Io { pid: u32, source: std::io::Error },
}

impl Process {
    /// How long the process has been running (None if the clock cannot be read).
    pub fn age(&self) -> Option<std::time::Duration> {
        let uptime: f64 = fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks <= 0 {
            return None;
        }
        let started = self.start_time as f64 / ticks as f64;
        Some(std::time::Duration::from_secs_f64(
            (uptime - started).max(0.0),
        ))
    }

    pub fn inspect(pid: u32) -> Result<Self, ProcessError> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let map_err = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => ProcessError::NotFound(pid),
            std::io::ErrorKind::PermissionDenied => ProcessError::Permission { pid, source },
            _ => ProcessError::Io { pid, source },
        };
        let start_time = start_time(pid).map_err(map_err)?;
        let exe_link = proc_dir.join("exe");
        let exe_path = match fs::read_link(&exe_link) {
            Ok(p) => p,
            // Kernel threads have no exe link.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && proc_dir.exists() => {
                return Err(ProcessError::NoExecutable(pid))
            }
            Err(e) => return Err(map_err(e)),
        };
        let meta = fs::metadata(&exe_link).map_err(map_err)?;
        let binary = BinaryId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let from_env = otel_service_name(pid);
        Ok(Self {
            pid,
            start_time,
            binary,
            exe_link,
            service_name: from_env.clone().unwrap_or_else(|| exe_name(&exe_path)),
            service_name_from_env: from_env.is_some(),
            exe_path,
            k8s: None,
        })
    }

    /// Places the process in its pod: its identity, and the service name OpenTelemetry's
    /// precedence gives it (its own `OTEL_SERVICE_NAME`, else what the pod says).
    pub fn set_pod(&mut self, identity: PodIdentity) {
        if !self.service_name_from_env {
            self.service_name = identity.service_name().to_owned();
        }
        self.k8s = Some(Arc::new(identity));
    }

    /// Whether this very process (not a later one with the same pid) still runs.
    pub fn is_alive(&self) -> bool {
        start_time(self.pid).is_ok_and(|t| t == self.start_time) && !is_zombie(self.pid)
    }

    pub fn exe_name(&self) -> String {
        exe_name(&self.exe_path)
    }
}

fn exe_name(exe_path: &Path) -> String {
    let name = exe_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(" (deleted)").unwrap_or(&name).to_owned()
}

/// OTEL_SERVICE_NAME from the process's environment.
fn otel_service_name(pid: u32) -> Option<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .ok()
        .and_then(|env| {
            env.split(|&b| b == 0).find_map(|var| {
                let value = var.strip_prefix(b"OTEL_SERVICE_NAME=")?;
                let value = String::from_utf8_lossy(value).trim().to_owned();
                (!value.is_empty()).then_some(value)
            })
        })
}

fn stat_fields(pid: u32) -> std::io::Result<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // comm (field 2) may contain spaces and parentheses: split after its last ')'.
    let after_comm = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| std::io::Error::other("malformed /proc/PID/stat"))?;
    Ok(after_comm.split_whitespace().map(str::to_owned).collect())
}

fn start_time(pid: u32) -> std::io::Result<u64> {
    // Fields after comm start at field 3 (state); starttime is field 22.
    stat_fields(pid)?
        .get(22 - 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed /proc/PID/stat"))
}

fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).is_ok_and(|f| f.first().is_some_and(|s| s == "Z" || s == "X"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspects_itself() {
        let me = Process::inspect(std::process::id()).unwrap();
        assert!(me.is_alive());
        assert!(!me.service_name.is_empty());
    }

    #[test]
    fn missing_pid_is_not_found() {
        // pid_max is at most 2^22.
        assert!(matches!(
            Process::inspect(4_194_305),
            Err(ProcessError::NotFound(4_194_305))
        ));
    }

    #[test]
    fn exe_name_strips_deleted() {
        assert_eq!(exe_name(Path::new("/usr/bin/server (deleted)")), "server");
    }
}
