//! Scraping and reading the agent's text exposition.

use std::collections::BTreeMap;

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
        let mut out = BTreeMap::new();
        for s in self.matching(
            "http_server_request_duration_seconds_count",
            &[("service_name", service)],
        ) {
            let key = format!(
                "{} {} {}",
                s.labels["http_request_method"],
                s.labels["http_route"],
                s.labels["http_response_status_code"]
            );
            *out.entry(key).or_default() += s.value as u64;
        }
        out
    }

    /// The agent's client-side counts for a service: "METHOD STATUS ADDRESS:PORT" -> n.
    pub fn client_counts(&self, service: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in self.matching(
            "http_client_request_duration_seconds_count",
            &[("service_name", service)],
        ) {
            let key = format!(
                "{} {} {}:{}",
                s.labels["http_request_method"],
                s.labels["http_response_status_code"],
                s.labels["server_address"],
                s.labels["server_port"]
            );
            *out.entry(key).or_default() += s.value as u64;
        }
        out
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
