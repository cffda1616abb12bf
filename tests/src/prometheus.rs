//! Debian's Prometheus as a test server: a Go program as a distribution ships it, and a real
//! scraper of the agent.

use std::process::{Command, Stdio};

use crate::{free_port, tempdir, Proc};

/// Debian's build (`cargo xtask test` installs the package).
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A running Prometheus, killed when dropped.
pub struct Prometheus {
    pub proc: Proc,
    pub port: u16,
}

impl Prometheus {
    /// Starts Prometheus with the configuration `config` (prometheus.yml's text) and the
    /// environment `env`, its data in a new temporary directory, listening on a free loopback
    /// port. Does not wait for it to be ready.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempdir();
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (installed by cargo xtask test)");
        Self {
            proc: Proc { child },
            port,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}
