//! The goroutine-heavy variant.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::{
    median, rotated,
    run::{
        build_go_app, on_cpus, scrape_sum, start_agent, unsafe_kill_term, wait_http, ChildGuard,
    },
    AgentRuns, BenchArgs,
};
use crate::{build::build, go::version_of, test::install_test_tools, tools::output};

/// The goroutine-heavy variant: goroutines spawned per second by gospawn, with and without
/// the agent watching it, alternating, per amount of work per goroutine.
pub(super) fn goroutine_bench(args: &BenchArgs) -> Result<()> {
    let tools = install_test_tools()?;
    let agent = AgentRuns::new("agent", build()?);
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
