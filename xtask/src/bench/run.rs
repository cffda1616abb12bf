//! Running what the bench measures: the servers, wrk, the agent; and reading their costs
//! from /proc.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{AgentCost, AgentRound, AgentRuns, BenchArgs, Load};
use crate::{
    go::{go_build, version_of},
    tools::{output, workspace_root},
};

/// Starts the server (and, traced, its leaf) pinned as asked; returns them and the URL to load.
pub(super) fn start_servers(
    server_bin: &Path,
    app: &str,
    args: &BenchArgs,
) -> Result<(Vec<ChildGuard>, String)> {
    let port = 18080 + (std::process::id() % 1000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let leaf_addr = format!("127.0.0.1:{}", port + 1);
    let start = |extra: &[&str]| -> Result<ChildGuard> {
        let mut c = on_cpus(args.pin.then_some("0"), server_bin);
        Ok(ChildGuard(
            c.args(extra)
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {app}"))?,
        ))
    };
    let mut servers = Vec::new();
    let url = if args.traced {
        // The leaf first, then the front that calls it once per request.
        servers.push(start(&["-addr", &leaf_addr])?);
        wait_http(&format!("http://{leaf_addr}/work"))?;
        let downstream = format!("http://{leaf_addr}");
        servers.push(start(&[
            "-addr",
            &addr,
            "-downstream",
            &downstream,
            "-calls",
            "a=1",
        ])?);
        format!("http://{addr}/work")
    } else {
        let work = args.handler_us.to_string();
        servers.push(start(&["-addr", &addr, "-work-us", &work])?);
        format!("http://{addr}/")
    };
    wait_http(&url)?;
    Ok((servers, url))
}

/// Starts the agent watching `pids` (with the bench's extra agent arguments) and waits for its
/// metrics endpoint, whose URL it returns.
pub(super) fn start_agent(
    agent: &AgentRuns,
    pids: &[u32],
    args: &BenchArgs,
) -> Result<(ChildGuard, String)> {
    let port = 19464 + (std::process::id() % 500) as u16;
    let listen = format!("127.0.0.1:{port}");
    let pid_args: Vec<String> = pids
        .iter()
        .flat_map(|p| ["--pid".to_owned(), p.to_string()])
        .collect();
    let mut command = on_cpus(args.agent_cpus.as_deref(), &agent.binary);
    let child = ChildGuard(
        command
            .args(&pid_args)
            .args(["--listen", &listen, "--log-level", "warn"])
            .args(&agent.args)
            .args(&args.agent_args)
            .stdout(Stdio::null())
            .spawn()
            .context("starting obs-agent")?,
    );
    let metrics_url = format!("http://{listen}/metrics");
    wait_http(&metrics_url)?;
    Ok((child, metrics_url))
}

pub(super) fn with_agent(
    agent: &AgentRuns,
    server_pids: &[u32],
    url: &str,
    args: &BenchArgs,
) -> Result<AgentRound> {
    let (mut child, metrics_url) = start_agent(agent, server_pids, args)?;
    let before = scrape_sum(&metrics_url, "http_server_request_duration_seconds_count")?;
    let cpu_before = cpu_ticks(child.0.id())?;
    let load = wrk(url, args.seconds, args, server_pids)?;
    // Let the reader drain the ring before counting.
    sleep(Duration::from_millis(300));
    let cpu_after = cpu_ticks(child.0.id())?;
    let counted = scrape_sum(&metrics_url, "http_server_request_duration_seconds_count")? - before;
    let lost = scrape_sum(&metrics_url, "obs_agent_events_lost_total")?;
    let spans = scrape_sum(&metrics_url, "obs_agent_spans_total").unwrap_or(0.0);
    let peak_rss_kb = peak_rss_kb(child.0.id())?;
    unsafe_kill_term(child.0.id());
    let _ = child.0.wait();
    let tick_ms = 1000.0 / clock_ticks_per_second();
    Ok(AgentRound {
        load,
        cost: AgentCost {
            cpu_ms: (cpu_after - cpu_before) as f64 * tick_ms,
            peak_rss_kb,
            lost,
            counted,
            spans,
        },
    })
}

pub fn build_go_app(go: &Path, app: &str) -> Result<PathBuf> {
    let src = workspace_root().join("tests/apps").join(app);
    let tag = version_of(go)?;
    let out = workspace_root()
        .join("target/apps")
        .join(format!("{app}-{tag}"));
    go_build(go, &src, &out, &[], &[])?;
    Ok(out)
}

/// Runs wrk against `url`, timing the CPU of `server_pids` meanwhile.
pub(super) fn wrk(url: &str, seconds: u32, args: &BenchArgs, server_pids: &[u32]) -> Result<Load> {
    let server_ticks = || -> Result<u64> { server_pids.iter().map(|&p| cpu_ticks(p)).sum() };
    let mut cmd = on_cpus(args.pin.then_some("1"), "wrk");
    if args.new_connections {
        cmd.args(["-H", "Connection: close"]);
    }
    let ticks_before = server_ticks()?;
    let started = Instant::now();
    let out = output(cmd.args([
        "-t1",
        &format!("-c{}", args.connections),
        &format!("-d{seconds}s"),
        "--latency",
        url,
    ]))?;
    let wall = started.elapsed().as_secs_f64();
    let server_s = (server_ticks()? - ticks_before) as f64 / clock_ticks_per_second();
    let field = |prefix: &str| -> Option<&str> {
        out.lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix))
            .map(str::trim)
    };
    let rps: f64 = field("Requests/sec:")
        .context("wrk: no Requests/sec")?
        .parse()?;
    let requests: u64 = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .context("wrk: no request count")?
        .parse()?;
    let p50_us = parse_wrk_latency(field("50%").context("wrk: no p50")?)?;
    let p99_us = parse_wrk_latency(field("99%").context("wrk: no p99")?)?;
    Ok(Load {
        requests,
        rps,
        p50_us,
        p99_us,
        server_us: server_s * 1e6 / requests.max(1) as f64,
        server_busy: server_s / wall,
    })
}

pub(super) fn parse_wrk_latency(s: &str) -> Result<f64> {
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e6)
    } else {
        bail!("wrk latency {s:?}")
    };
    Ok(num.parse::<f64>()? * mult)
}

pub(super) fn wait_http(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if Command::new("curl")
            .args(["-sf", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(());
        }
        sleep(Duration::from_millis(100));
    }
    bail!("{url} did not answer within 20 s")
}

pub(super) fn scrape_sum(url: &str, metric: &str) -> Result<f64> {
    let body = output(Command::new("curl").args(["-sf", url]))?;
    Ok(body
        .lines()
        .filter(|l| {
            l.starts_with(metric)
                && (l[metric.len()..].starts_with('{') || l[metric.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

pub(super) fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..]
        .split(' ')
        .collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

pub(super) fn peak_rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmHWM")
}

/// The kernel's clock ticks per second (`/proc/PID/stat` units), asked of `getconf` once.
pub(super) fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        output(Command::new("getconf").arg("CLK_TCK"))
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(100.0)
    })
}

pub(super) fn unsafe_kill_term(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

pub(super) struct ChildGuard(pub(super) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A command for `program`, run on `cpus` (a taskset list) if given.
pub(super) fn on_cpus(cpus: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(program);
            c
        }
        None => Command::new(program),
    }
}
