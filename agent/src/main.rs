//! `obs-agent`: parse the command line, load the probes, pick targets, then serve metrics
//! while events flow; or, with `inspect`, only analyse a binary (no root, no eBPF). Edges use
//! anyhow; the library's errors say what went wrong.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context};
use clap::Parser;
use obs_agent::{
    agent::{Agent, PACE_INTERVAL},
    cli::{Args, Command, InspectArgs, KubernetesApi},
    events,
    export::{self, traces::TraceConfig},
    inspect,
    metrics::{DataPathLabels, Metrics},
    probes::{error_chain, LoadOptions, Probes},
    target::{
        kubernetes::{
            api::{self, ApiConfig, ApiPods},
            Kubernetes, KubernetesConfig,
        },
        Selection,
    },
};

fn main() {
    let args = Args::parse();
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();
    match &args.command {
        Some(Command::Inspect(inspect_args)) => {
            if let Err(e) = inspect_binary(inspect_args) {
                eprintln!("obs-agent: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        Some(Command::Probes) => return print!("{}", obs_agent::probes::table::markdown()),
        None => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("obs-agent: {e:#}");
        std::process::exit(1);
    }
}

fn inspect_binary(args: &InspectArgs) -> anyhow::Result<()> {
    // The error names the file already.
    let report = inspect::inspect(&args.binary).map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("obs-agent must run as root (it loads eBPF programs and reads other processes' /proc entries): try sudo");
    }
    let mut probes = Probes::load(LoadOptions {
        data_path: args.data_path,
        empty_programs: args.bench_empty_programs,
    })?;
    let ring = probes.take_events()?;
    let selection = if args.pids.is_empty() {
        Selection::Node
    } else {
        Selection::Pids(args.pids.clone())
    };
    let metrics = Arc::new(Metrics::new(args.max_routes));
    metrics
        .agent
        .data_path_info
        .get_or_create(&DataPathLabels {
            path: probes.data_path().as_str().to_owned(),
        })
        .set(1);
    let mut trace_config = TraceConfig::from_flags_and_env(
        args.otlp_endpoint.as_deref(),
        args.otlp_protocol.as_deref(),
        |name| std::env::var(name).ok(),
    )?;
    trace_config.store_max_spans = args.max_stored_spans;
    let traces = export::traces::start(&trace_config, &metrics.agent)?;
    let kubernetes = Kubernetes::new(
        KubernetesConfig {
            node: args.node_name.clone(),
            pod_logs: args.pod_logs.clone(),
            container_logs: args.container_logs.clone(),
        },
        watch_pods(&args, &metrics).await,
    );
    let agent = Arc::new(Agent::new(
        probes,
        metrics.clone(),
        selection.clone(),
        args.goroutine_probe_max_rate,
        kubernetes,
    ));
    agent.enable_tracing(traces.sink(), args.trace_sample_ratio);

    match &selection {
        Selection::Pids(pids) => {
            let mut problems = Vec::new();
            for &pid in pids {
                if let Err(e) = agent.watch(pid) {
                    log::warn!("not watching {}", error_chain(&e));
                    agent.metrics.agent.attach_failure(e.reason());
                    problems.push(error_chain(&e));
                }
            }
            if agent.watched_count() == 0 {
                bail!("nothing to watch:\n  {}", problems.join("\n  "));
            }
        }
        Selection::Node => {
            agent.reconcile();
            log::info!(
                "watching every Go process and every process with a TCP socket on this machine ({} now)",
                agent.watched_count()
            );
        }
    }

    // Gauges before the first scrape; then every PACE_INTERVAL.
    agent.pace();
    let reader_agent = agent.clone();
    let reader = tokio::spawn(events::read_forever(ring, move |e| reader_agent.handle(e)));
    let lifecycle_agent = agent.clone();
    let rescan = Duration::from_millis(args.rescan_ms.max(50));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(rescan);
        loop {
            tick.tick().await;
            let a = lifecycle_agent.clone();
            // /proc scans and binary analysis block: keep them off the event loop.
            let _ = tokio::task::spawn_blocking(move || a.reconcile()).await;
        }
    });
    let pace_agent = agent.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PACE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let a = pace_agent.clone();
            // Reads of target memory block: off the event loop.
            let _ = tokio::task::spawn_blocking(move || a.pace()).await;
        }
    });
    let server = export::serve(args.listen, metrics, traces.store.clone());

    let outcome: anyhow::Result<()> = tokio::select! {
        r = server => r.with_context(|| format!("serving metrics on {}", args.listen)),
        r = reader => r
            .context("event reader stopped")
            .and_then(|r| r.context("reading events")),
        _ = shutdown_signal() => {
            log::info!("shutting down; detaching probes");
            Ok(())
        }
    };
    // Before the process exits, not in its exit path (see `Probes::detach_all`); spans are
    // flushed meanwhile.
    let detaching = agent.detach_all();
    if outcome.is_ok() {
        traces.shutdown(Duration::from_secs(5)).await;
    }
    let _ = tokio::task::spawn_blocking(move || detaching.wait()).await;
    outcome
}

/// Starts listing and watching this node's pods on the Kubernetes API server, when there is
/// one to ask (see `--kubernetes-api`), and waits a little for the first list, so that the
/// processes watched at start get their pods' names from it.
async fn watch_pods(args: &Args, metrics: &Arc<Metrics>) -> Option<Arc<ApiPods>> {
    let config = match &args.kubernetes_api {
        KubernetesApi::Off => return None,
        KubernetesApi::Auto => ApiConfig::in_cluster()?,
        KubernetesApi::Url(url) => ApiConfig::at(url),
    };
    let Some(node) = args.node_name.clone() else {
        log::warn!(
            "the Kubernetes API server is not asked: no node name (--node-name or NODE_NAME) to \
             ask for this node's pods"
        );
        return None;
    };
    log::info!(
        "asking the Kubernetes API server at {} for node {node}'s pods",
        config.base
    );
    let pods = Arc::new(ApiPods::default());
    let errors = metrics.agent.k8s_api_errors.clone();
    tokio::spawn(api::watch_pods(config, node, pods.clone(), move |e| {
        errors.inc();
        log::warn!("Kubernetes API: {}", error_chain(e));
    }));
    let listed = tokio::time::timeout(FIRST_LIST_WAIT, async {
        while !pods.synced() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    if listed.await.is_err() {
        log::warn!(
            "no pod list from the Kubernetes API server within {FIRST_LIST_WAIT:?}: pods are \
             named from kubelet's directories until it answers"
        );
    }
    Some(pods)
}

/// How long the agent waits for the API server's first pod list before it starts watching.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(3);

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
