//! `cargo xtask`: the one entry to set up, build, run, test and benchmark obs-agent.
//!
//!   cargo xtask setup            install what the kernel-side build needs
//!   cargo xtask build            build the eBPF object and the agent (release)
//!   cargo xtask run -- ARGS      build, then run the agent as root with ARGS
//!   cargo xtask test             install test dependencies, build, run every test
//!   cargo xtask bench            throughput/latency/CPU of a Go server with and without the agent
//!   cargo xtask go-offsets       regenerate the Go struct offsets table (--check: compare)
//!   cargo xtask manifest         render deploy/kubernetes/daemonset.yaml from the Helm chart
//!                                (--check: compare)

mod bench;
mod build;
mod dashboard_tools;
mod go;
mod go_offsets;
mod manifest_tools;
mod setup;
mod test;
mod tools;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install rust-src and bpf-linker (built against the toolchain's own LLVM).
    Setup,
    /// Build the eBPF object and the agent that embeds it (release).
    Build,
    /// Build, then run the agent as root. Arguments after `--` go to the agent.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install test dependencies (Go toolchains, Prometheus, wrk), build, run all tests.
    Test(test::TestArgs),
    /// Measure the agent's overhead on a Go HTTP server, side by side in one run.
    Bench(bench::BenchArgs),
    /// Regenerate agent/data/go-offsets.json (struct offsets for binaries without DWARF) from
    /// probe programs built with every supported Go release; --check only compares.
    GoOffsets(go_offsets::GoOffsetsArgs),
    /// Render deploy/kubernetes/daemonset.yaml from the Helm chart deploy/helm/obs-agent
    /// (--check: compare instead of writing).
    Manifest(manifest_tools::ManifestArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::setup().map(|_| ()),
        Command::Build => build::build().map(|_| ()),
        Command::Run { args } => build::build().and_then(|agent| build::run_as_root(&agent, &args)),
        Command::Test(args) => test::test(args),
        Command::Bench(args) => bench::bench(args),
        Command::GoOffsets(args) => go_offsets::go_offsets(args),
        Command::Manifest(args) => manifest_tools::manifest(args),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
