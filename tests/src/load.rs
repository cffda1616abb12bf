//! Load with known counts: many threads, a fixed mix of requests, keep-alive and fresh
//! connections. Returns what the client itself saw, per "METHOD ROUTE STATUS".

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// One kind of request in the mix, with the route and status the server will give it.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub route: &'static str,
    pub status: u16,
}

impl Call {
    pub fn new(
        method: &'static str,
        path: impl Into<String>,
        route: &'static str,
        status: u16,
    ) -> Self {
        Self {
            method,
            path: path.into(),
            route,
            status,
        }
    }
    pub fn key(&self) -> String {
        format!("{} {} {}", self.method, self.route, self.status)
    }
}

#[derive(Default, Debug)]
pub struct ClientView {
    pub counts: BTreeMap<String, u64>,
    /// Total seconds the client waited, per key.
    pub seconds: BTreeMap<String, f64>,
    pub failures: Vec<String>,
}

impl ClientView {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Sends every call in `calls` (cycled by `threads` threads), each thread on keep-alive or
/// fresh connections alternately. The status must match the call's expectation.
pub fn drive(base: &str, calls: &[Call], threads: usize) -> ClientView {
    let view = Arc::new(Mutex::new(ClientView::default()));
    let calls = Arc::new(calls.to_vec());
    std::thread::scope(|s| {
        for t in 0..threads {
            let view = view.clone();
            let calls = calls.clone();
            let base = base.to_owned();
            s.spawn(move || {
                let keepalive = t % 2 == 0;
                let shared = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .build();
                for call in calls.iter().skip(t).step_by(threads) {
                    let agent = if keepalive {
                        shared.clone()
                    } else {
                        ureq::AgentBuilder::new()
                            .max_idle_connections(0)
                            .timeout(Duration::from_secs(30))
                            .build()
                    };
                    let url = format!("{base}{}", call.path);
                    let started = Instant::now();
                    let req = agent.request(call.method, &url);
                    let result = if matches!(call.method, "POST" | "PUT") {
                        req.send_string("some body bytes")
                    } else {
                        req.call()
                    };
                    let status = match result {
                        Ok(r) => {
                            let s = r.status();
                            let _ = r.into_string();
                            s
                        }
                        Err(ureq::Error::Status(s, r)) => {
                            let _ = r.into_string();
                            s
                        }
                        Err(e) => {
                            view.lock()
                                .unwrap()
                                .failures
                                .push(format!("{} {url}: {e}", call.method));
                            continue;
                        }
                    };
                    let elapsed = started.elapsed().as_secs_f64();
                    let mut v = view.lock().unwrap();
                    if status != call.status {
                        v.failures.push(format!(
                            "{} {url}: status {status}, expected {}",
                            call.method, call.status
                        ));
                    }
                    *v.counts.entry(call.key()).or_default() += 1;
                    *v.seconds.entry(call.key()).or_default() += elapsed;
                }
            });
        }
    });
    Arc::try_unwrap(view).unwrap().into_inner().unwrap()
}
