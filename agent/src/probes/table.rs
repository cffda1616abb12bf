//! Every probe the agent has, as data: its program in the eBPF object, where it attaches,
//! whether the agent can run without it and what is lost then, and what it serves. Loading
//! and attaching (`Probes`), detaching, `obs-agent inspect` and the README's list of probes
//! all read this table; adding a probe family is a kernel module plus rows here.

use obs_common::names;

use crate::symbols::{
    go_binary::{MUX_SERVE_HTTP, NEWPROC_CLOSURE, ROUND_TRIP},
    go_runtime::{FATALPANIC, GOPANIC, RECOVERY},
};

/// One probe of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    SockRecvLength,
    SockSendLength,
    TcpDestroySock,
    SysExit,
    SysEnterClose,
    InetSockSetState,
    GoMuxServeHttp,
    GoNewproc,
    GoRoundTrip,
    GoPanic,
    GoRecovery,
    GoFatalPanic,
}

/// Where a probe attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A raw tracepoint, once for the whole machine.
    RawTracepoint(&'static str),
    /// A tracepoint (`category:name` in tracefs), once for the whole machine.
    Tracepoint(&'static str, &'static str),
    /// A uprobe per watched process, on an instruction of this Go function that
    /// `symbols` finds in the process's binary.
    Uprobe { function: &'static str, site: Site },
}

/// Which instruction of a function a uprobe goes on (see environment facts: an instruction
/// the kernel emulates costs ~1 µs a hit, one it must single-step ~20 µs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// The conditional jump of the stack check every growable Go function starts with
    /// (emulated; the argument registers are still untouched there).
    StackCheckJump,
    /// The call to this function inside it (emulated).
    CallTo(&'static str),
    /// The first instruction (single-stepped; for a function hit once per process).
    Entry,
}

/// Whether the agent can run without the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The agent does not start without it.
    Required,
    /// Required on this data path, optional on the other.
    RequiredOn(DataPath),
    /// Left out with a warning (machine-wide probes) or a log line (per process).
    Optional,
}

impl Need {
    /// Whether the agent cannot run without the probe on data path `path`.
    pub fn required(self, path: DataPath) -> bool {
        match self {
            Need::Required => true,
            Need::RequiredOn(p) => p == path,
            Need::Optional => false,
        }
    }
}

/// Where the agent sees socket reads and writes: one of two sets of machine-wide probes,
/// chosen at start (`--data-path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataPath {
    /// The `sock_recv_length` and `sock_send_length` tracepoints (Linux 6.3+): run on socket
    /// reads and writes only.
    Sockets,
    /// The syscall tracepoints: run on every syscall of every task of the machine (the
    /// kernel flags every task once a program is on them). The fallback.
    Syscalls,
}

impl DataPath {
    pub fn as_str(self) -> &'static str {
        match self {
            DataPath::Sockets => "sockets",
            DataPath::Syscalls => "syscalls",
        }
    }
}

/// What the agent does with what a probe sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Requests and responses of any language, from socket syscalls.
    SocketData,
    /// Links of short connections across processes (a client's own address).
    TcpHandshakes,
    /// `http_route` from Go's ServeMux patterns.
    Routes,
    /// Goroutine creations by start function; goroutine ancestry for spans.
    Goroutines,
    /// Which request an outgoing Go HTTP call is made for.
    CallParents,
    /// `go_panics_total`.
    Panics,
}

impl Feature {
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::SocketData => "socket_data",
            Feature::TcpHandshakes => "tcp_handshakes",
            Feature::Routes => "routes",
            Feature::Goroutines => "goroutines",
            Feature::CallParents => "call_parents",
            Feature::Panics => "panics",
        }
    }
}

/// A row of the table.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    pub probe: Probe,
    /// The program's name in the eBPF object.
    pub program: &'static str,
    pub attach: Attach,
    /// The data path it belongs to (machine-wide probes attached on that path only), or
    /// `None` for a probe of both.
    pub path: Option<DataPath>,
    pub need: Need,
    pub feature: Feature,
    /// What it sees, as a log line says it ("not watching TCP handshakes (...)").
    pub sees: &'static str,
    /// When it is attached, for the per-process probes.
    pub when: &'static str,
    /// What is lost without it.
    pub without: &'static str,
}

/// Every probe, in the order machine-wide probes are attached.
pub const PROBES: [ProbeSpec; 12] = [
    ProbeSpec {
        probe: Probe::SockRecvLength,
        program: names::PROG_SOCK_RECV_LENGTH,
        attach: Attach::RawTracepoint("sock_recv_length"),
        path: Some(DataPath::Sockets),
        need: Need::Required,
        feature: Feature::SocketData,
        sees: "socket reads",
        when: "on the socket data path (Linux 6.3+, the default there): on every socket read \
               of the machine; returns after one bitmap test for unwatched processes",
        without: "the agent uses the syscall data path",
    },
    ProbeSpec {
        probe: Probe::SockSendLength,
        program: names::PROG_SOCK_SEND_LENGTH,
        attach: Attach::RawTracepoint("sock_send_length"),
        path: Some(DataPath::Sockets),
        need: Need::Required,
        feature: Feature::SocketData,
        sees: "socket writes",
        when: "on the socket data path: on every socket write of the machine; returns after \
               one bitmap test for unwatched processes",
        without: "the agent uses the syscall data path",
    },
    ProbeSpec {
        probe: Probe::TcpDestroySock,
        program: names::PROG_TCP_DESTROY_SOCK,
        attach: Attach::RawTracepoint("tcp_destroy_sock"),
        path: Some(DataPath::Sockets),
        need: Need::Required,
        feature: Feature::SocketData,
        sees: "closed TCP sockets",
        when: "on the socket data path: when a TCP socket is freed, for the ends not seen in \
               a `close` (shut down or reset before)",
        without: "the agent uses the syscall data path",
    },
    ProbeSpec {
        probe: Probe::SysExit,
        program: names::PROG_SYS_EXIT,
        attach: Attach::RawTracepoint("sys_exit"),
        path: Some(DataPath::Syscalls),
        need: Need::Required,
        feature: Feature::SocketData,
        sees: "socket syscalls",
        when: "on the syscall data path (kernels before 6.3, or `--data-path syscalls`): on \
               every syscall of the machine; returns after one bitmap test for unwatched \
               processes",
        without: "nothing can be seen: the agent does not start",
    },
    ProbeSpec {
        probe: Probe::SysEnterClose,
        program: names::PROG_SYS_ENTER_CLOSE,
        attach: Attach::Tracepoint("syscalls", "sys_enter_close"),
        path: Some(DataPath::Syscalls),
        need: Need::Required,
        feature: Feature::SocketData,
        sees: "closed descriptors",
        when: "on the syscall data path",
        without: "connections would never end: the agent does not start",
    },
    ProbeSpec {
        probe: Probe::InetSockSetState,
        program: names::PROG_INET_SOCK_SET_STATE,
        attach: Attach::RawTracepoint("inet_sock_set_state"),
        path: None,
        need: Need::RequiredOn(DataPath::Sockets),
        feature: Feature::TcpHandshakes,
        sees: "TCP handshakes",
        when: "always, when the kernel's BTF gives `struct sock_common`'s address fields; on \
               the socket data path it also sees connects and closes",
        without: "calls on short connections of processes that never ask for their own \
                  address (most but Go) will not be linked to the server span at the other end",
    },
    ProbeSpec {
        probe: Probe::GoMuxServeHttp,
        program: names::PROG_GO_MUX_SERVE_HTTP,
        attach: Attach::Uprobe {
            function: MUX_SERVE_HTTP,
            site: Site::StackCheckJump,
        },
        path: None,
        need: Need::Optional,
        feature: Feature::Routes,
        sees: "ServeMux instances",
        when: "Go 1.22+ processes, while their muxes are being discovered",
        without: "routes are collapsed paths",
    },
    ProbeSpec {
        probe: Probe::GoNewproc,
        program: names::PROG_GO_NEWPROC,
        attach: Attach::Uprobe {
            function: NEWPROC_CLOSURE,
            site: Site::CallTo("runtime.runqput"),
        },
        path: None,
        need: Need::Optional,
        feature: Feature::Goroutines,
        sees: "goroutine creations",
        when: "every watched Go process, while its creation rate allows",
        without: "no creations by function, no runtime metrics for the process; spans fall \
                  back to the sole request in flight",
    },
    ProbeSpec {
        probe: Probe::GoRoundTrip,
        program: names::PROG_GO_ROUND_TRIP,
        attach: Attach::Uprobe {
            function: ROUND_TRIP,
            site: Site::StackCheckJump,
        },
        path: None,
        need: Need::Optional,
        feature: Feature::CallParents,
        sees: "net/http client calls",
        when: "Go processes with net/http's client, while spans are made",
        without: "calls are linked to the sole request in flight",
    },
    ProbeSpec {
        probe: Probe::GoPanic,
        program: names::PROG_GO_PANIC,
        attach: Attach::Uprobe {
            function: GOPANIC,
            site: Site::StackCheckJump,
        },
        path: None,
        need: Need::Optional,
        feature: Feature::Panics,
        sees: "panics",
        when: "every watched Go process whose goroutines are followed",
        without: "panics are not counted",
    },
    ProbeSpec {
        probe: Probe::GoRecovery,
        program: names::PROG_GO_RECOVERY,
        attach: Attach::Uprobe {
            function: RECOVERY,
            site: Site::StackCheckJump,
        },
        path: None,
        need: Need::Optional,
        feature: Feature::Panics,
        sees: "recovered panics",
        when: "every watched Go process whose goroutines are followed",
        without: "panics are not counted",
    },
    ProbeSpec {
        probe: Probe::GoFatalPanic,
        program: names::PROG_GO_FATAL_PANIC,
        attach: Attach::Uprobe {
            function: FATALPANIC,
            site: Site::Entry,
        },
        path: None,
        need: Need::Optional,
        feature: Feature::Panics,
        sees: "fatal panics",
        when: "every watched Go process whose goroutines are followed (hit once, as it dies)",
        without: "panics are not counted",
    },
];

impl Probe {
    pub fn spec(self) -> &'static ProbeSpec {
        let spec = &PROBES[self as usize];
        debug_assert_eq!(spec.probe, self);
        spec
    }

    /// The uprobe that attaches to `function`, if one does.
    pub fn on_function(function: &str) -> Option<Probe> {
        PROBES.iter().find_map(|s| match s.attach {
            Attach::Uprobe { function: f, .. } if f == function => Some(s.probe),
            _ => None,
        })
    }
}

impl Attach {
    /// Where it attaches, as a person reads it.
    pub fn describe(&self) -> String {
        match self {
            Attach::RawTracepoint(name) => format!("raw tracepoint `{name}`"),
            Attach::Tracepoint(category, name) => format!("tracepoint `{category}:{name}`"),
            Attach::Uprobe { function, site } => {
                let site = match site {
                    Site::StackCheckJump => "its stack-check jump".to_owned(),
                    Site::CallTo(callee) => format!("its `call {callee}`"),
                    Site::Entry => "its first instruction".to_owned(),
                };
                format!("uprobe on `{function}`, at {site}")
            }
        }
    }
}

/// The table as Markdown, as the README shows it.
pub fn markdown() -> String {
    let mut out = String::from(
        "| probe | attaches to | attached | required | serves | without it |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for s in &PROBES {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | `{}` | {} |\n",
            s.program,
            s.attach.describe(),
            s.when,
            match s.need {
                Need::Required => "yes",
                Need::RequiredOn(DataPath::Sockets) => "on the socket data path",
                Need::RequiredOn(DataPath::Syscalls) => "on the syscall data path",
                Need::Optional => "no",
            },
            s.feature.as_str(),
            s.without,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_is_its_own_row_and_every_program_is_named_once() {
        let all = [
            Probe::SockRecvLength,
            Probe::SockSendLength,
            Probe::TcpDestroySock,
            Probe::SysExit,
            Probe::SysEnterClose,
            Probe::InetSockSetState,
            Probe::GoMuxServeHttp,
            Probe::GoNewproc,
            Probe::GoRoundTrip,
            Probe::GoPanic,
            Probe::GoRecovery,
            Probe::GoFatalPanic,
        ];
        assert_eq!(all.len(), PROBES.len());
        for p in all {
            assert_eq!(p.spec().probe, p);
        }
        let mut programs: Vec<_> = PROBES.iter().map(|s| s.program).collect();
        programs.sort_unstable();
        programs.dedup();
        assert_eq!(programs.len(), PROBES.len());
        assert_eq!(Probe::on_function(GOPANIC), Some(Probe::GoPanic));
        assert_eq!(Probe::on_function("main.main"), None);
    }

    /// The README's list of probes is this table; regenerate it with `obs-agent probes`.
    #[test]
    fn the_readme_lists_the_probes_of_the_table() {
        let readme = include_str!("../../../README.md");
        let table = markdown();
        assert!(
            readme.contains(&table),
            "README.md's probe table differs from the agent's; replace it with the output of \
             `obs-agent probes`:\n{table}"
        );
    }
}
