//! `cargo xtask bench`: a hello-world Go net/http server under wrk, with and without the agent
//! attached, alternating over several rounds in one run (these machines are shared and
//! noisy, so only side-by-side ratios mean anything). Reports throughput and latency ratios,
//! the agent's CPU per 1,000 requests, its peak RSS, events lost, and whether the agent's
//! request count equals what the server answered. With `--baseline-agent`, a second agent
//! binary (e.g. an older build) is measured in the same rounds, and the report sets the two
//! side by side. With `--data-paths`, the agent on each data path (socket tracepoints,
//! syscall tracepoints), side by side; with `--floors`, each path's hooks alone (programs
//! that return at once) beside it. With `--unwatched`, what the agent costs a process it
//! does not watch, in nanoseconds per syscall. `--suite` runs every workload, each path.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use self::{
    goroutines::goroutine_bench,
    report::print_report,
    run::{build_go_app, start_servers, with_agent, wrk},
    unwatched::bench_unwatched,
};
use crate::{build::build, go::version_of, test::install_test_tools};

mod goroutines;
mod report;
mod run;
mod unwatched;

#[derive(Clone, clap::Args)]
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
    /// Both data paths in the same rounds: the agent with `--data-path syscalls` and with
    /// `--data-path sockets`; the report adds sockets/syscalls (median of per-round ratios).
    /// Also with --unwatched.
    #[arg(long, conflicts_with_all = ["baseline_agent", "goroutines"])]
    data_paths: bool,
    /// The floor of each data path: its programs returning at once (the hooks alone), beside
    /// the agent on that path, in the same rounds.
    #[arg(long, conflicts_with_all = ["baseline_agent", "goroutines", "unwatched"])]
    floors: bool,
    /// Every workload, both data paths, one report each: kept alive, a new connection per
    /// request, 50 µs handlers, traced (one outgoing call per request), and an unwatched
    /// process's syscalls.
    #[arg(long, conflicts_with_all = ["baseline_agent", "goroutines", "unwatched", "traced", "new_connections", "handler_us"])]
    suite: bool,
}

impl BenchArgs {
    /// The agents this run measures, in report order (before -> after).
    fn agents(&self, agent: PathBuf) -> Result<Vec<AgentRuns>> {
        let path = |label: &str, p: &str| {
            AgentRuns::new(label, agent.clone()).with_args(&["--data-path", p])
        };
        let empty = |label: &str, p: &str| path(label, p).with_args(&["--bench-empty-programs"]);
        Ok(if self.floors {
            vec![
                empty("syscalls, empty", "syscalls"),
                empty("sockets, empty", "sockets"),
                path("syscalls", "syscalls"),
                path("sockets", "sockets"),
            ]
        } else if self.data_paths || self.suite {
            vec![path("syscalls", "syscalls"), path("sockets", "sockets")]
        } else {
            match baseline_agent(self)? {
                Some(baseline) => vec![baseline, AgentRuns::new("new", agent)],
                None => vec![AgentRuns::new("agent", agent)],
            }
        })
    }

    /// The heading of the direct ratio column, when two agents are compared.
    fn direct_heading(&self) -> &'static str {
        if self.data_paths || self.suite {
            "sockets/syscalls (median of per-round ratios)"
        } else {
            "new/baseline (median of per-round ratios)"
        }
    }
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
    let tools = install_test_tools()?;
    let agent = build()?;
    if args.suite {
        return suite(&args, &tools, agent);
    }
    if args.unwatched {
        return bench_unwatched(&args.agents(agent)?, &args);
    }
    let go = tools.go(&args.go)?;
    let mut agents = args.agents(agent)?;
    let without = workload(&args, go, &mut agents)?;
    print_report(&args, &version_of(go)?, &without, &agents);
    Ok(())
}

/// How a workload of the suite changes the bench's arguments.
type Variant = fn(&mut BenchArgs);

/// Every workload with both data paths, one report each, then the unwatched process.
fn suite(args: &BenchArgs, tools: &crate::test::TestTools, agent: PathBuf) -> Result<()> {
    let go = tools.go(&args.go)?;
    let go_version = version_of(go)?;
    let variants: [(&str, Variant); 4] = [
        ("kept alive", |_| {}),
        ("a new connection per request", |a| a.new_connections = true),
        ("50 µs handlers", |a| a.handler_us = 50),
        ("traced, one outgoing call per request", |a| a.traced = true),
    ];
    let mut reports = Vec::new();
    for (name, set) in variants {
        eprintln!("== {name}");
        let mut variant = args.clone();
        variant.suite = false;
        variant.data_paths = true;
        set(&mut variant);
        let mut agents = variant.agents(agent.clone())?;
        let without = workload(&variant, go, &mut agents)?;
        reports.push((variant, without, agents));
    }
    for (variant, without, agents) in &reports {
        print_report(variant, &go_version, without, agents);
    }
    let mut unwatched = args.clone();
    unwatched.suite = false;
    unwatched.data_paths = true;
    unwatched.unwatched = true;
    bench_unwatched(&unwatched.agents(agent)?, &unwatched)
}

/// One workload: its servers started, warmed up, and measured in rounds without an agent and
/// with each of `agents`. Returns the loads without an agent.
fn workload(args: &BenchArgs, go: &std::path::Path, agents: &mut [AgentRuns]) -> Result<Vec<Load>> {
    let app = if args.traced { "gochain" } else { "gohello" };
    let server_bin = build_go_app(go, app)?;
    let (servers, url) = start_servers(&server_bin, app, args)?;
    let pids: Vec<u32> = servers.iter().map(|s| s.0.id()).collect();
    // Warm up the server (and the Go runtime's heap) once.
    wrk(&url, 2, args, &pids)?;
    let without = measure_rounds(agents, &pids, &url, args)?;
    drop(servers);
    Ok(without)
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
                    let run = with_agent(a, pids, url, args)?;
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

/// What one measurement of a round loads the server with.
#[derive(Clone, Copy)]
enum Subject {
    Without,
    /// The agent at this index of the bench's agents.
    Agent(usize),
}

/// One agent under test (a binary, and arguments of its own), and its measurements, one
/// per round.
struct AgentRuns {
    /// Its column's heading in the report.
    label: String,
    /// Its name in the per-round lines.
    round_name: String,
    binary: PathBuf,
    /// Arguments for this agent alone (before the bench's `--agent-arg`s).
    args: Vec<String>,
    rounds: Vec<AgentRound>,
}

impl AgentRuns {
    fn new(label: &str, binary: PathBuf) -> Self {
        AgentRuns {
            label: label.to_owned(),
            round_name: format!("with {label}"),
            binary,
            args: Vec::new(),
            rounds: Vec::new(),
        }
    }

    fn with_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
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

#[cfg(test)]
mod tests {
    use super::{
        report::{report_rows, table},
        *,
    };
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
        let lines = table(
            &report_rows(&args(&[]), &without, &agents),
            &agents,
            "new/baseline",
        );
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
        let lines = table(
            &report_rows(&args(&[]), &without, &agents),
            &agents,
            "new/baseline",
        );
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
