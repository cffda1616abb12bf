//! The real obs-agent binary as a test runs it: started on a port of its own, stopped the
//! way a service manager stops it, its /metrics scraped and its log kept.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{agent_bin, scrape, tempdir, wait_for, Proc, Samples};

/// A running obs-agent.
pub struct Agent {
    pub proc: Proc,
    pub port: u16,
    stderr_path: PathBuf,
}

/// An agent is stopped the way a service manager stops it: SIGTERM (it detaches its probes
/// and flushes its spans), SIGKILL only if it has not exited within 30 s (Kubernetes' default
/// grace period). Detaching takes the kernel ~0.1 s per uprobe on a busy machine, and a
/// SIGKILL that lands while one is being detached makes the kernel leak that uprobe (dmesg:
/// "failed to unregister, leaking uprobe"), leaving its breakpoint in the target.
impl Drop for Agent {
    fn drop(&mut self) {
        if !self.proc.is_running() {
            return;
        }
        self.proc.kill(libc::SIGTERM);
        let _ = wait_for(Duration::from_secs(30), || {
            (!self.proc.is_running()).then_some(())
        });
    }
}

impl Agent {
    /// Starts the agent with `args` (plus `--listen 127.0.0.1:0`: the kernel picks a free
    /// port, so no other test's server can take it first) and waits until /metrics answers.
    pub fn start(args: &[String]) -> Self {
        Self::wait_serving(Self::spawn(args))
    }

    /// Waits for a spawned agent to serve /metrics; panics with its log if it does not.
    fn wait_serving(mut agent: Self) -> Self {
        let port = wait_for(Duration::from_secs(20), || listening_port(&agent.log()));
        agent.port = port
            .unwrap_or_else(|| panic!("agent did not serve /metrics; its log:\n{}", agent.log()));
        let url = agent.metrics_url();
        let ok = wait_for(Duration::from_secs(20), || {
            ureq::get(&url).call().ok().map(|_| ())
        });
        if ok.is_none() {
            panic!("agent did not serve /metrics; its log:\n{}", agent.log());
        }
        agent
    }

    /// Starts the agent without waiting for it (`port` is 0 until `start` learns it).
    pub fn spawn(args: &[String]) -> Self {
        Self::spawn_in(&[], args)
    }

    /// Starts the agent as `start` does, but through `wrapper` (a command that runs the
    /// agent's command line it is given last: e.g. `unshare ... sh -c '...; exec "$@"' sh`).
    pub fn start_in(wrapper: &[&str], args: &[String]) -> Self {
        Self::wait_serving(Self::spawn_in(wrapper, args))
    }

    pub fn spawn_in(wrapper: &[&str], args: &[String]) -> Self {
        let stderr_path = tempdir().join("agent.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        let child = cmd
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--rescan-ms", "200"])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start obs-agent");
        Self {
            proc: Proc { child },
            port: 0,
            stderr_path,
        }
    }

    /// Starts the agent watching `pids`.
    pub fn for_pids(pids: &[u32]) -> Self {
        Self::for_pids_with(pids, &[])
    }

    /// Starts the agent watching `pids`, with the flags `extra`.
    pub fn for_pids_with(pids: &[u32], extra: &[&str]) -> Self {
        let mut args: Vec<String> = pids
            .iter()
            .flat_map(|p| ["--pid".to_owned(), p.to_string()])
            .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::start(&args)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }

    pub fn scrape(&self) -> Samples {
        scrape(&self.metrics_url())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for the agent to exit by itself; returns (exit code, stderr).
    pub fn wait_exit(mut self, timeout: Duration) -> (Option<i32>, String) {
        let status = wait_for(timeout, || self.proc.child.try_wait().ok().flatten());
        let status = status.unwrap_or_else(|| panic!("agent did not exit; log:\n{}", self.log()));
        (status.code(), self.log())
    }
}

/// The port in the agent's "serving metrics on http://127.0.0.1:PORT/metrics" log line.
fn listening_port(log: &str) -> Option<u16> {
    let rest = log.split("serving metrics on http://").nth(1)?;
    let addr = rest.split("/metrics").next()?;
    addr.rsplit(':').next()?.parse().ok()
}
