//! The agent's own process, as every Prometheus client library exports it (`process_*`):
//! CPU time, memory, open descriptors, threads, start time. Read from `/proc/self` by the
//! agent's pacing timer (at most once a second), never on a scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::{Registry, Unit},
};

#[derive(Clone, Default)]
pub struct ProcessMetrics {
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    start_time_seconds: Gauge<f64, AtomicU64>,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    /// CPU seconds already counted.
    cpu_seen: std::sync::Arc<std::sync::Mutex<f64>>,
}

impl ProcessMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        r.register_with_unit(
            "process_cpu",
            "Total user and system CPU time spent by the agent",
            Unit::Seconds,
            m.cpu_seconds.clone(),
        );
        r.register_with_unit(
            "process_resident_memory",
            "Resident memory of the agent",
            Unit::Bytes,
            m.resident_bytes.clone(),
        );
        r.register_with_unit(
            "process_virtual_memory",
            "Virtual memory of the agent",
            Unit::Bytes,
            m.virtual_bytes.clone(),
        );
        r.register_with_unit(
            "process_start_time",
            "Start time of the agent since the Unix epoch",
            Unit::Seconds,
            m.start_time_seconds.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors of the agent",
            m.open_fds.clone(),
        );
        r.register(
            "process_max_fds",
            "Most file descriptors the agent may open",
            m.max_fds.clone(),
        );
        r.register("process_threads", "Threads of the agent", m.threads.clone());
        m
    }

    /// Reads `/proc/self` (what cannot be read stays as it was).
    pub fn refresh(&self) {
        // SAFETY: sysconf has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if let Some(stat) = Stat::read() {
            if ticks > 0 {
                let cpu = (stat.utime + stat.stime) as f64 / ticks as f64;
                let mut seen = self.cpu_seen.lock().unwrap_or_else(|e| e.into_inner());
                if cpu > *seen {
                    self.cpu_seconds.inc_by(cpu - *seen);
                    *seen = cpu;
                }
                if let Some(boot) = boot_time() {
                    self.start_time_seconds
                        .set(boot as f64 + stat.start_ticks as f64 / ticks as f64);
                }
            }
            self.resident_bytes.set(stat.rss_pages * page.max(0));
            self.virtual_bytes.set(stat.vsize);
            self.threads.set(stat.threads);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            self.max_fds
                .set(i64::try_from(limit.rlim_cur).unwrap_or(i64::MAX));
        }
    }
}

/// The fields of `/proc/self/stat` used here.
struct Stat {
    utime: u64,
    stime: u64,
    threads: i64,
    start_ticks: u64,
    vsize: i64,
    rss_pages: i64,
}

impl Stat {
    fn read() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after `(comm)`, which may hold spaces: the first is field 3 (state).
        let rest = &text[text.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3)?.parse::<i64>().ok();
        Some(Self {
            utime: field(14)? as u64,
            stime: field(15)? as u64,
            threads: field(20)?,
            start_ticks: field(22)? as u64,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

/// The machine's boot time (`btime` of `/proc/stat`), in seconds since the epoch.
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_figures() {
        let mut registry = Registry::default();
        let m = ProcessMetrics::register(&mut registry);
        m.refresh();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
                .parse()
                .unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started > now - 3600.0 && started <= now + 1.0,
            "{started} vs {now}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0);
    }
}
