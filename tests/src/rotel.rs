//! rotel (PyPI's `rotel-agent`), a real OTLP collector: it listens on OTLP/gRPC and
//! OTLP/HTTP and forwards what it gets over gRPC, so a test can put it between an exporter and
//! an in-test receiver (`otlp::Receiver`).

use std::{net::SocketAddr, process::Command, process::Stdio, time::Duration};

use tokio::time::sleep;

use crate::{free_port, rotel_bin, tempdir, Proc};

/// A running rotel, killed when dropped.
pub struct Rotel {
    _proc: Proc,
    /// Its OTLP/gRPC port.
    pub grpc: u16,
    /// Its OTLP/HTTP port.
    pub http: u16,
}

impl Rotel {
    /// Starts rotel forwarding to an OTLP/gRPC receiver on 127.0.0.1:`forward_to`, and waits
    /// until it listens on both its ports.
    pub async fn start(forward_to: u16) -> Self {
        let (grpc, http) = (free_port(), free_port());
        let dir = tempdir();
        let child = Command::new(rotel_bin())
            .args(["start", "--otlp-grpc-endpoint"])
            .arg(format!("127.0.0.1:{grpc}"))
            .arg("--otlp-http-endpoint")
            .arg(format!("127.0.0.1:{http}"))
            .args(["--exporter", "otlp", "--otlp-exporter-protocol", "grpc"])
            .arg("--otlp-exporter-endpoint")
            .arg(format!("http://127.0.0.1:{forward_to}"))
            .args(["--batch-timeout", "50ms"])
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.join("rotel.log"))
            .args(["--debug-log", "traces"])
            .stdout(std::fs::File::create(dir.join("rotel.out")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", rotel_bin().display()));
        eprintln!("rotel output: {}", dir.join("rotel.out").display());
        let rotel = Self {
            _proc: Proc { child },
            grpc,
            http,
        };
        for port in [grpc, http] {
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut tries = 0;
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tries += 1;
                assert!(tries < 200, "rotel does not listen on {addr}");
                sleep(Duration::from_millis(50)).await;
            }
        }
        rotel
    }
}
