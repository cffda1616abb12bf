//! The agent's built-in trace store as the tests read it: `/traces/<id>` (one trace's spans,
//! as JSON) and `/traces?limit=N` (the list of traces).

use std::time::Duration;

use serde_json::Value;

use crate::{wait_for, Agent};

impl Agent {
    /// The spans the store holds for `trace_id` now (`None`: no answer, or not JSON).
    pub fn trace_spans(&self, trace_id: &str) -> Option<Vec<Value>> {
        let body = self.get(&format!("/traces/{trace_id}"))?;
        let trace: Value = serde_json::from_str(&body).ok()?;
        trace["spans"].as_array().cloned()
    }

    /// Waits (10 s at most) until the store holds at least `spans` spans of `trace_id` and
    /// returns them; panics with what it holds and the agent's log if it does not.
    pub fn wait_trace(&self, trace_id: &str, spans: usize) -> Vec<Value> {
        wait_for(Duration::from_secs(10), || {
            self.trace_spans(trace_id).filter(|got| got.len() >= spans)
        })
        .unwrap_or_else(|| {
            let got = self.get(&format!("/traces/{trace_id}")).unwrap_or_default();
            panic!(
                "trace {trace_id}: fewer than {spans} spans: {got}\nagent log:\n{}",
                self.log()
            )
        })
    }

    /// The store's list of traces, the `limit` newest (`None`: no answer, or not JSON).
    pub fn traces(&self, limit: usize) -> Option<Value> {
        serde_json::from_str(&self.get(&format!("/traces?limit={limit}"))?).ok()
    }

    /// The body of the agent's answer to GET `path`, if it answered 200.
    fn get(&self, path: &str) -> Option<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        ureq::get(&url).call().ok()?.into_string().ok()
    }
}
