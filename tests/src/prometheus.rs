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

/// Prometheus' HTTP API, as Grafana and the tests use it.
impl Prometheus {
    /// The `data` of a successful answer to GET `path` (e.g. `/api/v1/query`) with `params`, or
    /// why it failed: Prometheus' own error for a query it refuses (a syntax error, a
    /// many-to-many match), or the transport's.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<serde_json::Value, String> {
        let mut request = ureq::get(&self.url(path));
        for (name, value) in params {
            request = request.query(name, value);
        }
        let body = match request.call() {
            Ok(response) => response.into_string().map_err(|e| e.to_string())?,
            Err(ureq::Error::Status(code, response)) => {
                let body = response.into_string().unwrap_or_default();
                let error = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(body);
                return Err(format!("HTTP {code}: {error}"));
            }
            Err(e) => return Err(e.to_string()),
        };
        let answer: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        Ok(answer["data"].clone())
    }

    /// An instant query at `time` (seconds since the epoch): its `result`.
    pub fn query(&self, expr: &str, time: f64) -> Result<Vec<serde_json::Value>, String> {
        let data = self.api(
            "/api/v1/query",
            &[("query", expr), ("time", &time.to_string())],
        )?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// A range query from `start` to `end` every `step` seconds: its `result` (one matrix row
    /// per series).
    pub fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<Vec<serde_json::Value>, String> {
        let (start, end, step) = (start.to_string(), end.to_string(), step.to_string());
        let data = self.api(
            "/api/v1/query_range",
            &[
                ("query", expr),
                ("start", &start),
                ("end", &end),
                ("step", &step),
            ],
        )?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The values `label` takes in the series `selector` selects between `start` and `end`
    /// (what Grafana's `label_values(selector, label)` lists).
    pub fn label_values(
        &self,
        selector: &str,
        label: &str,
        start: f64,
        end: f64,
    ) -> Result<Vec<String>, String> {
        let (start, end) = (start.to_string(), end.to_string());
        let data = self.api(
            &format!("/api/v1/label/{label}/values"),
            &[("match[]", selector), ("start", &start), ("end", &end)],
        )?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }
}
