//! What the agent costs a process it does not watch, per syscall: this process times loops
//! of cheap syscalls with no agent and with each agent running (watching a `sleep`, so that
//! its programs are loaded and attached), in rotating order.

use std::{io::Read, os::unix::net::UnixDatagram, process::Command, time::Instant};

use anyhow::{Context, Result};

use super::{
    median, median_of_ratios, rotated,
    run::{start_agent, unsafe_kill_term, ChildGuard},
    AgentRuns, BenchArgs,
};
use crate::tools::output;

/// Syscalls per timed loop.
const UNWATCHED_SYSCALLS: u32 = 2_000_000;

/// The loops, in report order.
const LOOPS: [&str; 3] = [
    "getpid",
    "read (1 byte of /dev/zero)",
    "socket send/recv (1 byte, Unix datagram)",
];

/// Nanoseconds per syscall of this (unwatched) process, per loop of `LOOPS`: getpid (no
/// socket, no file), 1-byte reads of /dev/zero (a read, not of a socket), and 1-byte sends
/// and receives on a Unix datagram pair (socket I/O, which the socket data path's programs
/// run on).
fn syscall_loops() -> Result<[f64; 3]> {
    let per_call =
        |started: Instant, calls: u32| started.elapsed().as_nanos() as f64 / f64::from(calls);
    let started = Instant::now();
    let mut sum = 0u64;
    for _ in 0..UNWATCHED_SYSCALLS {
        // std calls getpid(2) each time (glibc does not cache it).
        sum = sum.wrapping_add(u64::from(std::process::id()));
    }
    let getpid = per_call(started, UNWATCHED_SYSCALLS);
    std::hint::black_box(sum);
    let mut zero = std::fs::File::open("/dev/zero")?;
    let mut byte = [0u8; 1];
    let started = Instant::now();
    for _ in 0..UNWATCHED_SYSCALLS {
        zero.read_exact(&mut byte)?;
    }
    let read = per_call(started, UNWATCHED_SYSCALLS);
    let (a, b) = UnixDatagram::pair().context("socketpair")?;
    let started = Instant::now();
    for _ in 0..UNWATCHED_SYSCALLS / 2 {
        a.send(&byte)?;
        b.recv(&mut byte)?;
    }
    let socket = per_call(started, UNWATCHED_SYSCALLS);
    Ok([getpid, read, socket])
}

/// The unwatched variant: the loops without an agent and with each of `agents`.
pub(super) fn bench_unwatched(agents: &[AgentRuns], args: &BenchArgs) -> Result<()> {
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
    syscall_loops()?;
    let mut with: Vec<Vec<[f64; 3]>> = vec![Vec::new(); agents.len()];
    let mut without = Vec::new();
    let subjects: Vec<Option<usize>> = (0..agents.len()).map(Some).chain([None]).collect();
    let log = |round: u32, name: &str, ns: &[f64; 3]| {
        eprintln!(
            "round {round}: {name:<20} getpid {:>6.1} ns  read {:>6.1} ns  socket {:>6.1} ns",
            ns[0], ns[1], ns[2]
        )
    };
    for round in 0..args.rounds {
        for subject in rotated(&subjects, round) {
            match subject {
                Some(i) => {
                    let (mut child, _) = start_agent(&agents[i], &[sleeper.0.id()], args)?;
                    let ns = syscall_loops()?;
                    log(round, &agents[i].round_name, &ns);
                    with[i].push(ns);
                    unsafe_kill_term(child.0.id());
                    let _ = child.0.wait();
                }
                None => {
                    let ns = syscall_loops()?;
                    log(round, "without agent", &ns);
                    without.push(ns);
                }
            }
        }
    }
    println!();
    println!(
        "obs-agent benchmark: an unwatched process's syscalls ({UNWATCHED_SYSCALLS} per loop), {} rounds, the agent watching another process{}",
        args.rounds,
        if args.pin { ", loop pinned to CPU 1" } else { "" }
    );
    for (l, name) in LOOPS.iter().enumerate() {
        let wo = median(without.iter().map(|ns| ns[l]).collect());
        println!("  {name}: without an agent {wo:.1} ns");
        for (agent, with) in agents.iter().zip(&with) {
            let w = median(with.iter().map(|ns| ns[l]).collect());
            let ratio = median_of_ratios(with.iter().zip(&without).map(|(a, b)| (a[l], b[l])));
            println!(
                "    with {:<18} {w:>6.1} ns: {:+.1} ns per syscall, ratio {ratio:.3} (median of rounds)",
                agent.label,
                w - wo
            );
        }
    }
    Ok(())
}
