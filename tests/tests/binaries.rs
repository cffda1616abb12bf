//! Binaries as they are found on real machines: deleted or replaced on disk after the process
//! started (analysed through /proc/PID/exe, probes on the running inode), and many processes
//! of one binary (analysed once).

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use obs_integration_tests::{
    go_app, go_build,
    load::{drive, Call},
    tempdir, wait_for, Agent, BuildMode, GoServer, GoVersion,
};

fn calls() -> Vec<Call> {
    let mut calls = Vec::new();
    for n in 0..50 {
        calls.push(Call::new("GET", "/hello", "/hello", 200));
        calls.push(Call::new("PUT", format!("/items/{n}"), "/items/", 201));
        calls.push(Call::new(
            "GET",
            format!("/v2/items/x{n}"),
            "/v2/items/{name}",
            200,
        ));
    }
    calls
}

fn copy_executable(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The file was deleted, or replaced by another program (a new inode at the same path), while
/// the process ran: the agent reads the running binary, and its route-discovery probe lands in
/// the running inode (ServeMux patterns prove the probe fired).
fn binary_gone_from_disk(replace: bool) {
    let dir = tempdir();
    let path = dir.join("server");
    // Stripped: the replacement case must not be able to succeed from the file at the path.
    copy_executable(
        &go_build("goserver", &GoVersion::New.toolchain(), BuildMode::Stripped),
        &path,
    );
    let service = if replace { "replaced" } else { "deleted" };
    let server = GoServer::start_bin(&path, &[("OTEL_SERVICE_NAME", service)]);
    std::fs::remove_file(&path).unwrap();
    if replace {
        copy_executable(&go_app("gonohttp", GoVersion::Old), &path);
    }
    let exe = std::fs::read_link(format!("/proc/{}/exe", server.proc.pid())).unwrap();
    assert!(exe.to_string_lossy().ends_with(" (deleted)"), "{exe:?}");

    let agent = Agent::for_pids(&[server.proc.pid()]);
    let calls = calls();
    let client = drive(&server.url(""), &calls, 4);
    assert!(client.failures.is_empty(), "{:?}", client.failures);
    let samples = agent.scrape_when_counted(client.total(), |s| s.server_counts(service));
    let counted = samples.server_counts_without_stats(service);
    assert_eq!(counted, client.counts, "agent log:\n{}", agent.log());
    let info = samples.target_info(service);
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].labels["executable"], "server");
}

#[test]
fn deleted_binary_is_analysed_through_the_process() {
    binary_gone_from_disk(false);
}

#[test]
fn replaced_binary_is_analysed_through_the_process() {
    binary_gone_from_disk(true);
}

#[test]
fn ten_processes_of_one_binary_are_analysed_once() {
    let servers: Vec<GoServer> = (0..10)
        .map(|_| GoServer::named("goserver", GoVersion::New, "ten"))
        .collect();
    let pids: Vec<u32> = servers.iter().map(|s| s.proc.pid()).collect();
    let agent = Agent::for_pids(&pids);
    let samples = agent.scrape();
    assert_eq!(samples.sum("obs_agent_processes_watched", &[]), 10.0);
    assert_eq!(
        samples.sum("obs_agent_binary_analysis_seconds_count", &[]),
        1.0,
        "agent log:\n{}",
        agent.log()
    );
    // Every one of them is counted, under one service.
    let mut total = 0;
    for server in &servers {
        let client = drive(&server.url(""), &calls(), 2);
        assert!(client.failures.is_empty(), "{:?}", client.failures);
        total += client.total();
    }
    let samples = agent.scrape_when_counted(total, |s| s.server_counts("ten"));
    let counted = samples.server_counts_without_stats("ten");
    assert_eq!(counted.values().sum::<u64>(), total);
    assert_eq!(samples.target_info("ten").len(), 10);
}

/// A module-mode build: its main module and its dependencies, with versions, as self metrics.
#[test]
fn build_info_modules_are_shown_per_process() {
    let bin = go_build("gomodule", &GoVersion::New.toolchain(), BuildMode::Stripped);
    let server = GoServer::start_bin(&bin, &[("OTEL_SERVICE_NAME", "modules")]);
    let agent = Agent::for_pids(&[server.proc.pid()]);
    let samples = agent.scrape();
    let with = [("service_name", "modules")];
    let info = samples.target_info("modules");
    assert_eq!(info.len(), 1, "agent log:\n{}", agent.log());
    assert_eq!(info[0].labels["module"], "example.com/gomodule");
    assert_eq!(info[0].labels["module_version"], "(devel)");
    let deps: Vec<(String, String)> = samples
        .matching("obs_agent_target_module_info", &with)
        .map(|s| (s.labels["module"].clone(), s.labels["version"].clone()))
        .collect();
    // Replaced by a local directory: the version linked is the directory's, "(devel)".
    assert_eq!(
        deps,
        vec![("example.com/greeting".to_owned(), "(devel)".to_owned())]
    );
    drop(server);
    // Released with the process.
    let gone = wait_for(Duration::from_secs(10), || {
        let s = agent.scrape();
        (s.matching("obs_agent_target_module_info", &with).count() == 0).then_some(())
    });
    assert!(gone.is_some());
}
