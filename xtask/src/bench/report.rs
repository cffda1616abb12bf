//! The bench's report: a line per figure, a column per agent (and the direct ratio of two).

use super::{median, median_of_ratios, AgentRound, AgentRuns, BenchArgs, Load};

/// The heading and the figures of the report, on stdout.
pub(super) fn print_report(
    args: &BenchArgs,
    go_version: &str,
    without: &[Load],
    agents: &[AgentRuns],
) {
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
    if let ([base, new], Some(_)) = (agents, &args.baseline_agent) {
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
    if agents.len() > 1 && args.baseline_agent.is_none() {
        let each: Vec<String> = agents
            .iter()
            .map(|a| format!("{} ({})", a.label, a.args.join(" ")))
            .collect();
        println!(
            "  agents: {}; each round measures each and none, in rotating order",
            each.join(", ")
        );
    }
    for line in table(
        &report_rows(args, without, agents),
        agents,
        args.direct_heading(),
    ) {
        println!("{line}");
    }
}

/// One line of the report: a label, and a cell per agent (then, with a baseline, new/baseline).
pub(super) struct Row {
    label: &'static str,
    cells: Vec<String>,
}

/// What a report line compares new/baseline by (per round), and how it shows the ratio.
pub(super) type Direct = (fn(&AgentRound) -> f64, fn(f64) -> String);

/// The report's lines: per agent, its ratios against no agent and its own costs; with a
/// baseline, also the direct ratio new/baseline where one means something.
pub(super) fn report_rows(args: &BenchArgs, without: &[Load], agents: &[AgentRuns]) -> Vec<Row> {
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
/// agents' labels and, for two, `direct` (the heading of the second over the first), each
/// column as wide as its widest cell.
pub(super) fn table(rows: &[Row], agents: &[AgentRuns], direct: &str) -> Vec<String> {
    const LABEL_WIDTH: usize = 52;
    let mut heading: Vec<String> = agents.iter().map(|a| a.label.clone()).collect();
    if agents.len() == 2 {
        heading.push(direct.to_owned());
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
