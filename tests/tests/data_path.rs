//! The two data paths: the agent takes the socket tracepoints where the kernel has them
//! (Linux 6.3+), the syscall tracepoints otherwise or when told; each attaches only its own
//! programs (so on the socket path no program sits on the syscall tracepoints, which would
//! make every syscall of every task pay), and says which in `obs_agent_data_path_info` and
//! its log. (Every other test runs once on each path: `cargo xtask test`.)

use std::{collections::BTreeSet, process::Command};

use obs_integration_tests::{kernel_has_socket_path, Agent, Proc};

/// The tracepoints the agent's raw-tracepoint links are attached to (from /proc fdinfo).
fn raw_tracepoints(agent: &Agent) -> BTreeSet<String> {
    let dir = format!("/proc/{}/fdinfo", agent.proc.pid());
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("link_type:\traw_tracepoint"))
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("tp_name:"))
                .map(|n| n.trim().to_owned())
        })
        .collect()
}

fn agent_on(path: &str, sleeper: &Proc) -> Agent {
    Agent::start(&[
        "--data-path".into(),
        path.into(),
        "--pid".into(),
        sleeper.pid().to_string(),
    ])
}

fn sleeper() -> Proc {
    Proc {
        child: Command::new("sleep").arg("60").spawn().unwrap(),
    }
}

#[test]
fn each_path_attaches_its_own_programs_and_says_which() {
    let sleeper = sleeper();
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    let mut paths = vec![(
        "syscalls",
        // sys_enter_close is a perf tracepoint, not a raw one.
        set(&["inet_sock_set_state", "sys_exit"]),
    )];
    if kernel_has_socket_path() {
        paths.push((
            "sockets",
            set(&[
                "inet_sock_set_state",
                "sock_recv_length",
                "sock_send_length",
                "tcp_destroy_sock",
            ]),
        ));
    }
    for (path, programs) in paths {
        let agent = agent_on(path, &sleeper);
        assert_eq!(raw_tracepoints(&agent), programs, "{path}");
        let s = agent.scrape();
        assert_eq!(s.sum("obs_agent_data_path_info", &[("path", path)]), 1.0);
        assert_eq!(s.sum("obs_agent_data_path_info", &[]), 1.0, "one path");
        assert!(agent.log().contains(&format!("data path: {path}")));
    }
}

#[test]
fn auto_takes_the_socket_path_where_the_kernel_has_it() {
    let sleeper = sleeper();
    let agent = agent_on("auto", &sleeper);
    let want = if kernel_has_socket_path() {
        "sockets"
    } else {
        "syscalls"
    };
    assert_eq!(
        agent
            .scrape()
            .sum("obs_agent_data_path_info", &[("path", want)]),
        1.0
    );
}

#[test]
fn an_unknown_data_path_is_a_clear_error() {
    let (code, log) = Agent::spawn(&["--data-path".into(), "kprobes".into()])
        .wait_exit(std::time::Duration::from_secs(10));
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("invalid value 'kprobes'") && log.contains("auto, sockets, syscalls"),
        "{log}"
    );
}
