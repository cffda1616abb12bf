//! `cargo xtask bench`: a hello-world Go net/http server under wrk, with and without the agent
//! attached, alternating over several rounds in one run (these machines are shared and
//! noisy, so only side-by-side ratios mean anything). Reports throughput and latency ratios,
//! the agent's CPU per 1,000 requests, its peak RSS, events lost, and whether the agent's
//! request count equals what the server answered. With `--baseline-agent`, a second agent
//! binary (e.g. an older build) is measured in the same rounds, and the report sets the two
//! side by side. With `--unwatched`, what the agent costs a process it does not watch, in
//! nanoseconds per syscall.

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
    /// Rounds of (with, without) pairs (with --baseline-agent: of three measurements).
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
    /// Another obs-agent binary to measure beside this tree's (e.g. one built from an older
    /// commit): each round then measures without an agent, with this one and with the new
    /// build (same agent args, pinning and servers), in rotating order, and the report gives
    /// each agent its column and adds new/baseline (median of per-round ratios). For the
    /// plain, --traced, --new-connections and --handler-us variants; not with --unwatched or
    /// --goroutines.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["unwatched", "goroutines"]
    )]
    baseline_agent: Option<PathBuf>,
    /// The baseline agent's name in the report (default: its path as given).
    #[arg(long, value_name = "TEXT", requires = "baseline_agent")]
    baseline_label: Option<String>,
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

/// One measurement with an agent attached: the load, and what the agent cost and counted.
struct AgentRound {
    load: Load,
    cost: AgentCost,
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
    let baseline = baseline_agent(&args)?;
    let tools = install_test_tools()?;
    let agent = build()?;
    if args.unwatched {
        return bench_unwatched(&agent, &args);
    }
    // The baseline first, so that the report's columns read before -> after.
    let new_label = if baseline.is_some() { "new" } else { "agent" };
    let mut agents: Vec<AgentRuns> = baseline
        .into_iter()
        .chain([AgentRuns::new(new_label, agent)])
        .collect();
    let go = tools.go(&args.go)?;
    let app = if args.traced { "gochain" } else { "gohello" };
    let server_bin = build_go_app(go, app)?;
    let (servers, url) = start_servers(&server_bin, app, &args)?;
    let pids: Vec<u32> = servers.iter().map(|s| s.0.id()).collect();
    // Warm up the server (and the Go runtime's heap) once.
    wrk(&url, 2, &args, &pids)?;
    let without = measure_rounds(&mut agents, &pids, &url, &args)?;
    drop(servers);

    print_report(&args, &version_of(go)?, &without, &agents);
    Ok(())
}

/// The rounds: in each, without an agent and with each of `agents` (added to its rounds), in
/// an order rotated every round. Returns the loads without an agent.
fn measure_rounds(
    agents: &mut [AgentRuns],
    pids: &[u32],
    url: &str,
    args: &BenchArgs,
) -> Result<Vec<Load>> {
    let mut without = Vec::new();
    let subjects: Vec<Subject> = (0..agents.len())
        .map(Subject::Agent)
        .chain([Subject::Without])
        .collect();
    let name_width = agents
        .iter()
        .map(|a| a.round_name.chars().count())
        .chain(["without agent".len()])
        .max()
        .unwrap_or(0)
        + 1;
    for round in 0..args.rounds {
        for subject in rotated(&subjects, round) {
            match subject {
                Subject::Agent(i) => {
                    let a = &mut agents[i];
                    let run = with_agent(&a.binary, pids, url, args)?;
                    log_round(round, &a.round_name, name_width, &run.load, Some(&run.cost));
                    a.rounds.push(run);
                }
                Subject::Without => {
                    let load = wrk(url, args.seconds, args, pids)?;
                    log_round(round, "without agent", name_width, &load, None);
                    without.push(load);
                }
            }
        }
    }
    Ok(without)
}

/// The heading and the figures of the report, on stdout.
fn print_report(args: &BenchArgs, go_version: &str, without: &[Load], agents: &[AgentRuns]) {
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
    if let [base, new] = agents {
        let binary = base.binary.display().to_string();
        let baseline = if base.label == binary {
            binary
        } else {
            format!("{} ({binary})", base.label)
        };
        println!(
            "  agents: baseline = {baseline}, new = {} (this tree); each round measures without, baseline and new, in rotating order",
            new.binary.display()
        );
    }
    for line in table(&report_rows(args, without, agents), agents) {
        println!("{line}");
    }
}

/// The `--baseline-agent`, if any, under its label; it must be a file.
fn baseline_agent(args: &BenchArgs) -> Result<Option<AgentRuns>> {
    let Some(path) = &args.baseline_agent else {
        return Ok(None);
    };
    let canonical = std::fs::canonicalize(path)
        .with_context(|| format!("--baseline-agent {}", path.display()))?;
    if !canonical.is_file() {
        bail!("--baseline-agent {}: not a file", path.display());
    }
    let label = match &args.baseline_label {
        Some(label) => label.clone(),
        None => path.display().to_string(),
    };
    Ok(Some(AgentRuns::new(&label, canonical)))
}

/// Starts the server (and, traced, its leaf) pinned as asked; returns them and the URL to load.
fn start_servers(
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

/// What one measurement of a round loads the server with.
#[derive(Clone, Copy)]
enum Subject {
    Without,
    /// The agent at this index of the bench's agents.
    Agent(usize),
}

/// One agent binary under test, and its measurements, one per round.
struct AgentRuns {
    /// Its column's heading in the report.
    label: String,
    /// Its name in the per-round lines.
    round_name: String,
    binary: PathBuf,
    rounds: Vec<AgentRound>,
}

impl AgentRuns {
    fn new(label: &str, binary: PathBuf) -> Self {
        AgentRuns {
            label: label.to_owned(),
            round_name: format!("with {label}"),
            binary,
            rounds: Vec::new(),
        }
    }

    fn total(&self, f: fn(&AgentRound) -> f64) -> f64 {
        self.rounds.iter().map(f).sum()
    }

    fn median(&self, f: fn(&Load) -> f64) -> f64 {
        median(self.rounds.iter().map(|r| f(&r.load)).collect())
    }
}

/// The per-round line on stderr: the load, and what the agent (if any) cost and counted.
fn log_round(round: u32, name: &str, width: usize, load: &Load, cost: Option<&AgentCost>) {
    let agent = cost.map_or(String::new(), |c| {
        format!(
            "  agent cpu {:.1} ms, counted {} of {}",
            c.cpu_ms, c.counted, load.requests
        )
    });
    eprintln!(
        "round {round}: {name:<width$}{:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs{agent}",
        load.rps, load.p50_us, load.p99_us
    );
}

/// One line of the report: a label, and a cell per agent (then, with a baseline, new/baseline).
struct Row {
    label: &'static str,
    cells: Vec<String>,
}

/// What a report line compares new/baseline by (per round), and how it shows the ratio.
type Direct = (fn(&AgentRound) -> f64, fn(f64) -> String);

/// The report's lines: per agent, its ratios against no agent and its own costs; with a
/// baseline, also the direct ratio new/baseline where one means something.
fn report_rows(args: &BenchArgs, without: &[Load], agents: &[AgentRuns]) -> Vec<Row> {
    // A cell per agent, plus one for new/baseline (median of per-round ratios) if there is a
    // baseline and `direct` is given.
    let row = |label: &'static str, cell: &dyn Fn(&AgentRuns) -> String, direct: Option<Direct>| {
        let mut cells: Vec<String> = agents.iter().map(cell).collect();
        if let [base, new] = agents {
            cells.push(direct.map_or(String::new(), |(f, show)| {
                show(median_of_ratios(
                    new.rounds
                        .iter()
                        .zip(&base.rounds)
                        .map(|(n, b)| (f(n), f(b))),
                ))
            }));
        }
        Row { label, cells }
    };
    let vs_without = |a: &AgentRuns, f: fn(&Load) -> f64| {
        median_of_ratios(
            a.rounds
                .iter()
                .zip(without)
                .map(|(r, wo)| (f(&r.load), f(wo))),
        )
    };
    let without_median = |f: fn(&Load) -> f64| median(without.iter().map(f).collect());
    let change = |r: f64| format!("{r:.3}  ({:+.1}%)", (r - 1.0) * 100.0);
    let ratio = |r: f64| format!("{r:.3}");
    let requests = |a: &AgentRuns| a.rounds.iter().map(|r| r.load.requests).sum::<u64>();
    let mut rows = vec![
        row(
            "throughput ratio (with/without, median of rounds):",
            &|a| change(vs_without(a, |l| l.rps)),
            Some((|r| r.load.rps, change)),
        ),
        row(
            "p50 latency ratio:",
            &|a| ratio(vs_without(a, |l| l.p50_us)),
            Some((|r| r.load.p50_us, ratio)),
        ),
        row(
            "p99 latency ratio:",
            &|a| ratio(vs_without(a, |l| l.p99_us)),
            Some((|r| r.load.p99_us, ratio)),
        ),
        row(
            "server CPU per request (without -> with, median):",
            &|a| {
                format!(
                    "{:.2} -> {:.2} µs",
                    without_median(|l| l.server_us),
                    a.median(|l| l.server_us)
                )
            },
            Some((|r| r.load.server_us, ratio)),
        ),
        row(
            "server busy (CPU time / wall time, median):",
            &|a| {
                format!(
                    "{:.1}% -> {:.1}%",
                    without_median(|l| l.server_busy) * 100.0,
                    a.median(|l| l.server_busy) * 100.0
                )
            },
            None,
        ),
        row(
            "agent CPU per 1,000 requests:",
            &|a| {
                format!(
                    "{:.3} ms",
                    a.total(|r| r.cost.cpu_ms) / (requests(a) as f64 / 1000.0)
                )
            },
            Some((|r| r.cost.cpu_ms / r.load.requests as f64, ratio)),
        ),
        row(
            "agent peak RSS:",
            &|a| {
                let peak = a.rounds.iter().map(|r| r.cost.peak_rss_kb).max();
                format!("{:.1} MiB", peak.unwrap_or(0) as f64 / 1024.0)
            },
            Some((|r| r.cost.peak_rss_kb as f64, ratio)),
        ),
        row(
            "events lost:",
            &|a| (a.total(|r| r.cost.lost) + 0.0).to_string(),
            None,
        ),
    ];
    let counted = |a: &AgentRuns| a.total(|r| r.cost.counted);
    if args.traced {
        // Each request is served twice (front and leaf) and made once (front's call).
        rows.push(row(
            "server requests counted / 2 x answered to wrk:",
            &|a| format!("{} / {}", counted(a), 2 * requests(a)),
            None,
        ));
        rows.push(row(
            "spans made (sampled, to the built-in store):",
            &|a| a.total(|r| r.cost.spans).to_string(),
            None,
        ));
    } else {
        rows.push(row(
            "requests counted by the agent / answered to wrk:",
            &|a| format!("{} / {}", counted(a), requests(a)),
            None,
        ));
    }
    rows
}

/// The lines of `rows` after their labels; with more than one agent, under a heading of the
/// agents' labels and new/baseline, each column as wide as its widest cell.
fn table(rows: &[Row], agents: &[AgentRuns]) -> Vec<String> {
    const LABEL_WIDTH: usize = 52;
    let mut heading: Vec<String> = agents.iter().map(|a| a.label.clone()).collect();
    if agents.len() > 1 {
        heading.push("new/baseline (median of per-round ratios)".to_owned());
    }
    let widths: Vec<usize> = (0..heading.len())
        .map(|i| {
            rows.iter()
                .map(|r| &r.cells[i])
                .chain([&heading[i]])
                .map(|c| c.chars().count() + 3)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |label: &str, cells: &[String]| {
        let mut text = format!("  {label:<LABEL_WIDTH$}");
        for (cell, width) in cells.iter().zip(&widths) {
            text.push_str(&format!("{cell:<width$}"));
        }
        text.trim_end().to_owned()
    };
    let heading = (agents.len() > 1).then(|| line("", &heading));
    heading
        .into_iter()
        .chain(rows.iter().map(|row| line(row.label, &row.cells)))
        .collect()
}

/// The middle value (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The median of `a / b` over the rounds' `(a, b)`.
fn median_of_ratios(pairs: impl Iterator<Item = (f64, f64)>) -> f64 {
    median(pairs.map(|(a, b)| a / b).collect())
}

/// `items` rotated left by `round` places: which goes first changes every round, so that
/// drift in the machine's load falls on each in turn.
fn rotated<T: Copy>(items: &[T], round: u32) -> Vec<T> {
    let mut v = items.to_vec();
    v.rotate_left(round as usize % items.len());
    v
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
        for attached in rotated(&[true, false], round) {
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
        let ratios = median_of_ratios(with.iter().zip(&without).map(|(a, b)| (f(a), f(b))));
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
            let (mut with, mut without) = (0.0, 0.0);
            for attached in rotated(&[true, false], round) {
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
        summary.push((work, median(ratios)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(flags: &[&str]) -> BenchArgs {
        Cli::try_parse_from([&["xtask"], flags].concat())
            .unwrap()
            .bench
    }

    /// Two rounds of an agent whose rounds are `k` times `without`'s, everything else equal.
    fn agent(label: &str, k: f64) -> AgentRuns {
        let mut a = AgentRuns::new(label, PathBuf::from(label));
        a.rounds = (0..2)
            .map(|_| AgentRound {
                load: load(k),
                cost: AgentCost {
                    cpu_ms: 50.0 * k,
                    peak_rss_kb: 1024 * 34,
                    lost: 0.0,
                    counted: 100_000.0,
                    spans: 0.0,
                },
            })
            .collect();
        a
    }

    fn load(k: f64) -> Load {
        Load {
            requests: 100_000,
            rps: 10_000.0 * k,
            p50_us: 200.0 / k,
            p99_us: 400.0 / k,
            server_us: 8.0 / k,
            server_busy: 0.9,
        }
    }

    #[test]
    fn rounds_rotate_who_goes_first() {
        // Two: (with, without), then (without, with), as the bench has always done.
        assert_eq!(rotated(&[true, false], 0), [true, false]);
        assert_eq!(rotated(&[true, false], 1), [false, true]);
        assert_eq!(rotated(&[1, 2, 3], 1), [2, 3, 1]);
        assert_eq!(rotated(&[1, 2, 3], 5), [3, 1, 2]);
    }

    #[test]
    fn one_agent_prints_one_column() {
        let without = [load(1.0), load(1.0)];
        let agents = [agent("agent", 0.8)];
        let lines = table(&report_rows(&args(&[]), &without, &agents), &agents);
        assert_eq!(
            lines[..2],
            [
                "  throughput ratio (with/without, median of rounds):  0.800  (-20.0%)",
                "  p50 latency ratio:                                  1.250",
            ]
        );
        assert_eq!(
            lines.last().unwrap(),
            "  requests counted by the agent / answered to wrk:    200000 / 200000"
        );
    }

    #[test]
    fn a_baseline_adds_a_column_and_new_over_baseline() {
        let without = [load(1.0), load(1.0)];
        let agents = [agent("old", 0.8), agent("new", 0.9)];
        let lines = table(&report_rows(&args(&[]), &without, &agents), &agents);
        let words =
            |i: usize| -> Vec<String> { lines[i].split_whitespace().map(str::to_owned).collect() };
        assert_eq!(words(0)[..3], ["old", "new", "new/baseline"]);
        // Throughput against none for each, then new/baseline: 0.9 / 0.8.
        assert_eq!(
            words(1)[6..],
            ["0.800", "(-20.0%)", "0.900", "(-10.0%)", "1.125", "(+12.5%)"]
        );
        // Agent CPU per 1,000 requests: 0.400 and 0.450 ms.
        assert_eq!(words(6)[5..], ["0.400", "ms", "0.450", "ms", "1.125"]);
    }

    #[test]
    fn baseline_flags_are_checked() {
        assert!(Cli::try_parse_from(["xtask", "--baseline-label", "x"]).is_err());
        for variant in ["--unwatched", "--goroutines"] {
            assert!(Cli::try_parse_from(["xtask", variant, "--baseline-agent", "/x"]).is_err());
        }
        let a = args(&[
            "--traced",
            "--baseline-agent",
            "/x",
            "--baseline-label",
            "main",
        ]);
        assert_eq!(a.baseline_label.as_deref(), Some("main"));
    }
}
