//! Scraping and reading the agent's text exposition, and waiting for the figures in it.

use std::{collections::BTreeMap, time::Duration};

use crate::{wait_for, Agent};

/// One sample: metric name, labels (sorted), value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<Sample>);

pub fn scrape(url: &str) -> Samples {
    let body = ureq::get(url)
        .call()
        .expect("scrape")
        .into_string()
        .unwrap();
    parse(&body)
}

pub fn parse(text: &str) -> Samples {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value: value.parse().unwrap_or(f64::NAN),
        });
    }
    Samples(out)
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = &after[end..];
    }
    labels
}

impl Samples {
    /// Samples of `name` whose labels include every pair in `with`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.matching(name, with).map(|s| s.value).sum()
    }

    /// Request counts by "METHOD ROUTE STATUS" for one service.
    pub fn server_counts(&self, service: &str) -> BTreeMap<String, u64> {
        self.counts("http_server_request_duration_seconds_count", service, |l| {
            format!(
                "{} {} {}",
                l["http_request_method"], l["http_route"], l["http_response_status_code"]
            )
        })
    }

    /// `server_counts` without the test's own requests for the server's counts (`GET /_stats`).
    pub fn server_counts_without_stats(&self, service: &str) -> BTreeMap<String, u64> {
        let mut counts = self.server_counts(service);
        counts.retain(|key, _| !key.starts_with("GET /_stats "));
        counts
    }

    /// The agent's client-side counts for a service: "METHOD STATUS ADDRESS:PORT" -> n.
    pub fn client_counts(&self, service: &str) -> BTreeMap<String, u64> {
        self.counts("http_client_request_duration_seconds_count", service, |l| {
            format!(
                "{} {} {}:{}",
                l["http_request_method"],
                l["http_response_status_code"],
                l["server_address"],
                l["server_port"]
            )
        })
    }

    /// The samples of `name` for `service`, added up by `key` of their labels.
    fn counts(
        &self,
        name: &str,
        service: &str,
        key: impl Fn(&BTreeMap<String, String>) -> String,
    ) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in self.matching(name, &[("service_name", service)]) {
            *out.entry(key(&s.labels)).or_default() += s.value as u64;
        }
        out
    }

    /// The `obs_agent_target_info` samples of a service: one per process watched.
    pub fn target_info(&self, service: &str) -> Vec<&Sample> {
        let of_service =
            |s: &&Sample| s.labels.get("service_name").map(String::as_str) == Some(service);
        self.0
            .iter()
            .filter(|s| s.name == "obs_agent_target_info")
            .filter(of_service)
            .collect()
    }
}

/// Counts as the tests write what they expect: `counts(&[("GET /hello 200", 5)])`.
pub fn counts(expected: &[(&str, u64)]) -> BTreeMap<String, u64> {
    expected
        .iter()
        .map(|(key, n)| ((*key).to_owned(), *n))
        .collect()
}

impl Agent {
    /// Scrapes until the `counts` of a scrape add up to `total` or more (events reach the
    /// metrics within the reader's drain interval), 10 s at most; returns that scrape, or then
    /// a last one.
    pub fn scrape_when_counted(
        &self,
        total: u64,
        counts: impl Fn(&Samples) -> BTreeMap<String, u64>,
    ) -> Samples {
        wait_for(Duration::from_secs(10), || {
            let s = self.scrape();
            (counts(&s).values().sum::<u64>() >= total).then_some(s)
        })
        .unwrap_or_else(|| self.scrape())
    }

    /// Scrapes until the samples of `name` with the labels `with` add up to `value`; returns
    /// that scrape, or `None` after `timeout`.
    pub fn wait_for_sum(
        &self,
        name: &str,
        with: &[(&str, &str)],
        value: f64,
        timeout: Duration,
    ) -> Option<Samples> {
        wait_for(timeout, || {
            let s = self.scrape();
            (s.sum(name, with) == value).then_some(s)
        })
    }

    /// Waits (10 s at most) for the agent to report `pid` as watched (`obs_agent_target_info`);
    /// panics with `what` and the agent's log if it does not.
    pub fn wait_watched(&self, pid: u32, what: &str) {
        let pid = pid.to_string();
        wait_for(Duration::from_secs(10), || {
            self.scrape()
                .matching("obs_agent_target_info", &[("pid", &pid)])
                .next()
                .map(|_| ())
        })
        .unwrap_or_else(|| panic!("{what} (pid {pid}) is not watched; log:\n{}", self.log()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let s = parse("# HELP x y\nm_count{a=\"1\",b=\"x\\\"y\"} 3\nn 4.5\n# EOF\n");
        assert_eq!(s.0.len(), 2);
        assert_eq!(s.0[0].labels["b"], "x\"y");
        assert_eq!(s.sum("m_count", &[("a", "1")]), 3.0);
        assert_eq!(s.sum("n", &[]), 4.5);
    }
}
