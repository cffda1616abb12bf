//! `cargo xtask bench`: a hello-world Go net/http server under wrk, with and without the agent
//! attached, alternating over several rounds in one run (these machines are shared and
//! noisy, so only side-by-side ratios mean anything). Reports throughput and latency ratios,
//! the agent's CPU per 1,000 requests, its peak RSS, events lost, and whether the agent's
//! request count equals what the server answered. With `--unwatched`, what the agent costs
//! a process it does not watch, in nanoseconds per syscall.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    build::build,
    go::{go_build, version_of},
    test::install_test_tools,
    tools::{output, workspace_root},
};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Rounds of (with, without) pairs.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 8)]
    seconds: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Which Go release builds the server (major.minor, e.g. 1.19 or 1.27).
    #[arg(long, default_value = "1.19")]
    go: String,
    /// Pin the server to CPU 0 and wrk to CPU 1 (less noise; the agent runs where it can);
    /// with --unwatched, the syscall loop to CPU 1.
    #[arg(long)]
    pin: bool,
    /// Traced variant: the server makes one outgoing HTTP call per request to a second
    /// server (tests/apps/gochain), and the agent watches both (server and client spans,
    /// linked across the two processes).
    #[arg(long)]
    traced: bool,
    /// Unwatched variant: what the agent costs a process it does not watch. This process
    /// (xtask) times a loop of cheap syscalls (getpid; 1-byte reads of /dev/zero, a syscall
    /// the socket program looks at) with and without the agent (watching another process),
    /// and reports nanoseconds per syscall.
    #[arg(long)]
    unwatched: bool,
    /// Microseconds of CPU work each request of the plain variant does before answering (a
    /// stand-in for a real handler; 0: hello world, the worst case for the agent's share).
    #[arg(long, default_value_t = 0)]
    handler_us: u32,
    /// Pins the agent to these CPUs (taskset list, e.g. 1): to see where its cost lands.
    /// Unpinned by default, as it runs in production.
    #[arg(long)]
    agent_cpus: Option<String>,
    /// Goroutine-heavy variant: tests/apps/gospawn spawns short goroutines in a loop
    /// (batches of 256, waited for); throughput is goroutines per second.
    #[arg(long)]
    goroutines: bool,
    /// With --goroutines: rounds of a small computation each goroutine does (0: none, the
    /// cost of a goroutine alone). Repeatable: one measurement series per value.
    #[arg(long = "work", default_values_t = [0u32, 100, 1000, 10000])]
    work: Vec<u32>,
    /// Each request on a new connection (wrk sends `Connection: close`): the cost of the
    /// agent's connection tracking (accept, close, the TCP-handshake program) rather than of
    /// its per-request data path.
    #[arg(long)]
    new_connections: bool,
    /// More arguments for the agent (e.g. --agent-arg=--trace-sample-ratio=0 to measure
    /// metrics without spans). Repeatable.
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

struct Load {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// The servers' own CPU time (user + system, where the kernel side of the agent lands)
    /// per request, in microseconds.
    server_us: f64,
    /// Their CPU time over the run's wall time: below 1 (per server CPU), they waited for
    /// requests.
    server_busy: f64,
}

struct AgentCost {
    cpu_ms: f64,
    peak_rss_kb: u64,
    lost: f64,
    counted: f64,
    spans: f64,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.goroutines {
        return goroutine_bench(&args);
    }
    let tools = install_test_tools()?;
    let agent = build()?;
    if args.unwatched {
        return bench_unwatched(&agent, &args);
    }
    let app = if args.traced { "gochain" } else { "gohello" };
    let server_bin = build_go_app(tools.go(&args.go)?, app)?;
    let port = 18080 + (std::process::id() % 1000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let leaf_addr = format!("127.0.0.1:{}", port + 1);
    let start = |extra: &[&str]| -> Result<ChildGuard> {
        let mut c = on_cpus(args.pin.then_some("0"), &server_bin);
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
    let pids: Vec<u32> = servers.iter().map(|s| s.0.id()).collect();
    // Warm up the server (and the Go runtime's heap) once.
    wrk(&url, 2, &args, &pids)?;

    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut costs = Vec::new();
    for round in 0..args.rounds {
        // Alternate which goes first, so drift in the machine's load cancels out.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for attached in order {
            if attached {
                let (load, cost) = with_agent(&agent, &pids, &url, &args)?;
                eprintln!(
                    "round {round}: with agent    {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  agent cpu {:.1} ms, counted {} of {}",
                    load.rps, load.p50_us, load.p99_us, cost.cpu_ms, cost.counted, load.requests
                );
                with.push(load);
                costs.push(cost);
            } else {
                let load = wrk(&url, args.seconds, &args, &pids)?;
                eprintln!(
                    "round {round}: without agent {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs",
                    load.rps, load.p50_us, load.p99_us
                );
                without.push(load);
            }
        }
    }
    for mut s in servers {
        s.0.kill().ok();
    }

    let median = |v: Vec<f64>| -> f64 {
        let mut v = v;
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let ratio = |f: fn(&Load) -> f64| {
        median(
            with.iter()
                .zip(&without)
                .map(|(w, wo)| f(w) / f(wo))
                .collect(),
        )
    };
    let total_requests: u64 = with.iter().map(|l| l.requests).sum();
    let total_cpu: f64 = costs.iter().map(|c| c.cpu_ms).sum();
    let counted: f64 = costs.iter().map(|c| c.counted).sum();
    let lost: f64 = costs.iter().map(|c| c.lost).sum::<f64>() + 0.0;
    let peak_rss = costs.iter().map(|c| c.peak_rss_kb).max().unwrap_or(0);
    let go_version = version_of(tools.go(&args.go)?)?;
    println!();
    let server = if args.traced {
        "gochain front -> leaf, one outgoing call per request, both watched".to_owned()
    } else if args.handler_us > 0 {
        format!("gohello, {} µs of work per request", args.handler_us)
    } else {
        "gohello".to_owned()
    };
    println!(
        "obs-agent benchmark: {server} ({go_version}), wrk -t1 -c{} -d{}s{}, {} rounds, agent args {:?}",
        args.connections,
        args.seconds,
        if args.new_connections {
            " (a new connection per request)"
        } else {
            ""
        },
        args.rounds,
        args.agent_args
    );
    println!(
        "  throughput ratio (with/without, median of rounds): {:.3}  ({:+.1}%)",
        ratio(|l| l.rps),
        (ratio(|l| l.rps) - 1.0) * 100.0
    );
    println!(
        "  p50 latency ratio:                                  {:.3}",
        ratio(|l| l.p50_us)
    );
    println!(
        "  p99 latency ratio:                                  {:.3}",
        ratio(|l| l.p99_us)
    );
    let med = |v: &[Load], f: fn(&Load) -> f64| median(v.iter().map(f).collect());
    println!(
        "  server CPU per request (without -> with, median):   {:.2} -> {:.2} µs",
        med(&without, |l| l.server_us),
        med(&with, |l| l.server_us)
    );
    println!(
        "  server busy (CPU time / wall time, median):         {:.1}% -> {:.1}%",
        med(&without, |l| l.server_busy) * 100.0,
        med(&with, |l| l.server_busy) * 100.0
    );
    println!(
        "  agent CPU per 1,000 requests:                       {:.3} ms",
        total_cpu / (total_requests as f64 / 1000.0)
    );
    println!(
        "  agent peak RSS:                                     {:.1} MiB",
        peak_rss as f64 / 1024.0
    );
    println!("  events lost:                                        {lost}");
    if args.traced {
        // Each request is served twice (front and leaf) and made once (front's call).
        let spans: f64 = costs.iter().map(|c| c.spans).sum();
        println!(
            "  server requests counted / 2 x answered to wrk:      {counted} / {}",
            2 * total_requests
        );
        println!("  spans made (sampled, to the built-in store):        {spans}");
    } else {
        println!(
            "  requests counted by the agent / answered to wrk:    {counted} / {total_requests}"
        );
    }
    Ok(())
}

/// Syscalls per timed loop of the unwatched variant.
const UNWATCHED_SYSCALLS: u32 = 2_000_000;

/// Nanoseconds per syscall of this (unwatched) process: getpid, and 1-byte reads.
fn syscall_loop() -> Result<(f64, f64)> {
    use std::io::Read;
    let started = Instant::now();
    let mut sum = 0u64;
    for _ in 0..UNWATCHED_SYSCALLS {
        // std calls getpid(2) each time (glibc does not cache it).
        sum = sum.wrapping_add(u64::from(std::process::id()));
    }
    let getpid_ns = started.elapsed().as_nanos() as f64 / f64::from(UNWATCHED_SYSCALLS);
    std::hint::black_box(sum);
    let mut zero = std::fs::File::open("/dev/zero")?;
    let mut byte = [0u8; 1];
    let started = Instant::now();
    for _ in 0..UNWATCHED_SYSCALLS {
        zero.read_exact(&mut byte)?;
    }
    let read_ns = started.elapsed().as_nanos() as f64 / f64::from(UNWATCHED_SYSCALLS);
    Ok((getpid_ns, read_ns))
}

/// The unwatched variant: this process's syscalls, alternately with and without the agent
/// running (watching a `sleep`, so that its programs are loaded and attached).
fn bench_unwatched(agent: &Path, args: &BenchArgs) -> Result<()> {
    let sleeper = ChildGuard(
        Command::new("sleep")
            .arg("100000")
            .spawn()
            .context("starting sleep")?,
    );
    if args.pin {
        // This process (the loop) on CPU 1; the agent runs where it can.
        output(Command::new("taskset").args([
            "-a",
            "-p",
            "-c",
            "1",
            &std::process::id().to_string(),
        ]))
        .context("pinning this process with taskset")?;
    }
    // Warm up.
    syscall_loop()?;
    let mut with = Vec::new();
    let mut without = Vec::new();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for attached in order {
            if attached {
                let (mut child, _) = start_agent(agent, &[sleeper.0.id()], args)?;
                let (getpid, read) = syscall_loop()?;
                eprintln!(
                    "round {round}: with agent    getpid {getpid:>6.1} ns  read {read:>6.1} ns"
                );
                with.push((getpid, read));
                unsafe_kill_term(child.0.id());
                let _ = child.0.wait();
            } else {
                let (getpid, read) = syscall_loop()?;
                eprintln!(
                    "round {round}: without agent getpid {getpid:>6.1} ns  read {read:>6.1} ns"
                );
                without.push((getpid, read));
            }
        }
    }
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let column = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| v.iter().map(f).collect::<Vec<_>>();
    println!();
    println!(
        "obs-agent benchmark: an unwatched process's syscalls ({UNWATCHED_SYSCALLS} per loop), {} rounds, the agent watching another process{}",
        args.rounds,
        if args.pin { ", loop pinned to CPU 1" } else { "" }
    );
    for (name, f) in [
        ("getpid", (|p: &(f64, f64)| p.0) as fn(&(f64, f64)) -> f64),
        ("read (1 byte of /dev/zero)", |p: &(f64, f64)| p.1),
    ] {
        let w = median(column(&with, f));
        let wo = median(column(&without, f));
        let ratios = median(
            with.iter()
                .zip(&without)
                .map(|(a, b)| f(a) / f(b))
                .collect(),
        );
        println!(
            "  {name:<28} without {wo:>6.1} ns, with {w:>6.1} ns: {:+.1} ns per syscall, ratio {ratios:.3} (median of rounds)",
            w - wo
        );
    }
    Ok(())
}

/// The goroutine-heavy variant: goroutines spawned per second by gospawn, with and without
/// the agent watching it, alternating, per amount of work per goroutine.
fn goroutine_bench(args: &BenchArgs) -> Result<()> {
    let tools = install_test_tools()?;
    let agent = build()?;
    let bin = build_go_app(tools.go(&args.go)?, "gospawn")?;
    let port = 18080 + (std::process::id() % 1000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let mut c = on_cpus(args.pin.then_some("0"), &bin);
    let server = ChildGuard(
        c.args(["-addr", &addr])
            .stdout(Stdio::null())
            .spawn()
            .context("starting gospawn")?,
    );
    let run = |work: u32| -> Result<f64> {
        let url = format!("http://{addr}/run?ms={}&work={work}", args.seconds * 1000);
        let n: f64 = output(Command::new("curl").args(["-sf", &url]))?
            .trim()
            .parse()?;
        Ok(n / f64::from(args.seconds))
    };
    wait_http(&format!("http://{addr}/run?ms=1"))?;
    run(0)?;
    let go_version = version_of(tools.go(&args.go)?)?;
    let mut summary = Vec::new();
    for &work in &args.work {
        let mut ratios = Vec::new();
        for round in 0..args.rounds {
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            let (mut with, mut without) = (0.0, 0.0);
            for attached in order {
                if attached {
                    let (mut child, metrics_url) = start_agent(&agent, &[server.0.id()], args)?;
                    with = run(work)?;
                    let created = scrape_sum(&metrics_url, "go_goroutines_created_total")?;
                    unsafe_kill_term(child.0.id());
                    let _ = child.0.wait();
                    eprintln!(
                        "work {work}, round {round}: with agent    {with:>10.0} goroutines/s (agent counted {created} created)"
                    );
                } else {
                    without = run(work)?;
                    eprintln!(
                        "work {work}, round {round}: without agent {without:>10.0} goroutines/s"
                    );
                }
            }
            ratios.push(with / without);
        }
        ratios.sort_by(|a, b| a.total_cmp(b));
        summary.push((work, ratios[ratios.len() / 2]));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!(
        "obs-agent goroutine benchmark: gospawn ({go_version}), {} s per measurement, {} rounds, agent args {:?}, load average {}",
        args.seconds,
        args.rounds,
        args.agent_args,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    for (work, ratio) in summary {
        println!(
            "  work {work:>6} per goroutine: throughput ratio (with/without, median) {ratio:.3}  ({:+.1}%)",
            (ratio - 1.0) * 100.0
        );
    }
    Ok(())
}

/// Starts the agent watching `pids` (with the bench's extra agent arguments) and waits for its
/// metrics endpoint, whose URL it returns.
fn start_agent(agent: &Path, pids: &[u32], args: &BenchArgs) -> Result<(ChildGuard, String)> {
    let port = 19464 + (std::process::id() % 500) as u16;
    let listen = format!("127.0.0.1:{port}");
    let pid_args: Vec<String> = pids
        .iter()
        .flat_map(|p| ["--pid".to_owned(), p.to_string()])
        .collect();
    let mut command = on_cpus(args.agent_cpus.as_deref(), agent);
    let child = ChildGuard(
        command
            .args(&pid_args)
            .args(["--listen", &listen, "--log-level", "warn"])
            .args(&args.agent_args)
            .stdout(Stdio::null())
            .spawn()
            .context("starting obs-agent")?,
    );
    let metrics_url = format!("http://{listen}/metrics");
    wait_http(&metrics_url)?;
    Ok((child, metrics_url))
}

fn with_agent(
    agent: &Path,
    server_pids: &[u32],
    url: &str,
    args: &BenchArgs,
) -> Result<(Load, AgentCost)> {
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
    Ok((
        load,
        AgentCost {
            cpu_ms: (cpu_after - cpu_before) as f64 * tick_ms,
            peak_rss_kb,
            lost,
            counted,
            spans,
        },
    ))
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
fn wrk(url: &str, seconds: u32, args: &BenchArgs, server_pids: &[u32]) -> Result<Load> {
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

fn parse_wrk_latency(s: &str) -> Result<f64> {
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

fn wait_http(url: &str) -> Result<()> {
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

fn scrape_sum(url: &str, metric: &str) -> Result<f64> {
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

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..]
        .split(' ')
        .collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn peak_rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmHWM")
}

/// The kernel's clock ticks per second (`/proc/PID/stat` units), asked of `getconf` once.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        output(Command::new("getconf").arg("CLK_TCK"))
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(100.0)
    })
}

fn unsafe_kill_term(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A command for `program`, run on `cpus` (a taskset list) if given.
fn on_cpus(cpus: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(program);
            c
        }
        None => Command::new(program),
    }
}
