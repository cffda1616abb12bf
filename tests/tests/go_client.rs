//! Go HTTP clients (net/http Client and Transport): the agent's
//! `http_client_request_duration_seconds` counts per (method, status, server address, port)
//! equal what the client itself received, over keep-alive and fresh connections, from
//! several goroutines, to two servers, including a request line longer than the bytes the
//! kernel side copies of writes.

use std::collections::BTreeMap;

use obs_integration_tests::{Agent, GoServer, GoVersion};

fn client_counts_match(version: GoVersion) {
    let service = format!("client-{version:?}").to_lowercase();
    let a = GoServer::start("goserver", version, &[]);
    let b = GoServer::start("goserver", version, &[]);
    let client = GoServer::named("goclient", version, &service);
    let agent = Agent::for_pids(&[client.proc.pid()]);

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (server, rounds) in [(&a, 40), (&b, 12)] {
        let url = client.url(&format!(
            "/run?target=http://127.0.0.1:{}&n={rounds}",
            server.port
        ));
        let body = ureq::get(&url)
            .call()
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .into_string()
            .unwrap();
        let got: BTreeMap<String, u64> = serde_json::from_str(&body).expect("counts JSON");
        expected.extend(got);
    }
    let total: u64 = expected.values().sum();
    assert_eq!(total, (40 + 12) * 5);

    let counted = agent
        .scrape_when_counted(total, |s| s.client_counts(&service))
        .client_counts(&service);
    assert_eq!(
        counted,
        expected,
        "agent vs the client's own counts; agent log:\n{}",
        agent.log()
    );

    // The control requests are the client process's only served requests.
    let served = agent.scrape().server_counts(&service);
    assert_eq!(
        served,
        BTreeMap::from([("GET /run 200".to_owned(), 2)]),
        "server side of the client process"
    );
    let samples = agent.scrape();
    assert_eq!(samples.sum("obs_agent_decode_errors_total", &[]), 0.0);
    assert_eq!(samples.sum("obs_agent_events_lost_total", &[]), 0.0);
}

#[test]
fn client_calls_counted_go_1_19() {
    client_counts_match(GoVersion::Old);
}

#[test]
fn client_calls_counted_newest_go() {
    client_counts_match(GoVersion::New);
}
