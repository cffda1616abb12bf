//! The Prometheus registry: RED metrics of served requests (OpenTelemetry names, as their
//! Prometheus translation), the cardinality guard on routes, and the agent's own metrics.

pub mod go_runtime;
mod route_guard;
mod self_metrics;

use std::sync::Mutex;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

pub use route_guard::{RouteGuard, OVERFLOW_ROUTE};
pub use self_metrics::{labels as self_metrics_labels, ModuleLabels, SelfMetrics, TargetLabels};

use crate::spans::{ClientRequest, ServerRequest};

/// OpenTelemetry's recommended buckets for `http.server.request.duration`, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpServerLabels {
    pub service_name: String,
    pub http_request_method: &'static str,
    pub http_response_status_code: u16,
    pub http_route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpClientLabels {
    pub service_name: String,
    pub http_request_method: &'static str,
    pub http_response_status_code: u16,
    /// The server's IP address ("" when unknown, `_OTHER` past the per-service cap).
    pub server_address: String,
    pub server_port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service_name: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

pub struct Metrics {
    pub registry: Registry,
    pub server_duration: Family<HttpServerLabels, Histogram, fn() -> Histogram>,
    pub server_active: Family<ServiceLabels, Gauge>,
    pub client_duration: Family<HttpClientLabels, Histogram, fn() -> Histogram>,
    pub agent: SelfMetrics,
    pub go: go_runtime::GoRuntimeMetrics,
    routes: Mutex<RouteGuard>,
    /// The same cap on distinct servers a service calls.
    peers: Mutex<RouteGuard>,
}

impl Metrics {
    pub fn new(max_routes_per_service: usize) -> Self {
        let mut registry = Registry::default();
        let server_duration = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests, from the handler's start to its end",
            Unit::Seconds,
            server_duration.clone(),
        );
        let server_active = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "http_server_active_requests",
            "HTTP server requests in flight",
            server_active.clone(),
        );
        let client_duration = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "http_client_request_duration",
            "Duration of HTTP client requests, from writing the request to reading the status line",
            Unit::Seconds,
            client_duration.clone(),
        );
        let agent = SelfMetrics::register(registry.sub_registry_with_prefix("obs_agent"));
        let go = go_runtime::GoRuntimeMetrics::register(&mut registry);
        Self {
            go,
            registry,
            server_duration,
            server_active,
            client_duration,
            agent,
            routes: Mutex::new(RouteGuard::new(max_routes_per_service)),
            peers: Mutex::new(RouteGuard::new(max_routes_per_service)),
        }
    }

    pub fn record_client_request(&self, service_name: &str, req: &ClientRequest) {
        let (server_address, server_port) = match req.server {
            None => (String::new(), 0),
            Some(addr) => {
                let key = addr.to_string();
                let mut guard = self.peers.lock().unwrap_or_else(|e| e.into_inner());
                if guard.admit(service_name, &key) == OVERFLOW_ROUTE {
                    (OVERFLOW_ROUTE.to_owned(), 0)
                } else {
                    (addr.ip().to_string(), addr.port())
                }
            }
        };
        let labels = HttpClientLabels {
            service_name: service_name.to_owned(),
            http_request_method: req.method,
            http_response_status_code: req.status,
            server_address,
            server_port,
        };
        self.client_duration
            .get_or_create(&labels)
            .observe(req.duration.as_secs_f64());
    }

    pub fn record_server_request(&self, service_name: &str, req: &ServerRequest) {
        let route = {
            let mut guard = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            let admitted = guard.admit(service_name, &req.route);
            if admitted == OVERFLOW_ROUTE && req.route != OVERFLOW_ROUTE {
                self.agent.routes_overflowed.inc();
            }
            admitted.to_owned()
        };
        let labels = HttpServerLabels {
            service_name: service_name.to_owned(),
            http_request_method: req.method,
            http_response_status_code: req.status,
            http_route: route,
        };
        self.server_duration
            .get_or_create(&labels)
            .observe(req.duration.as_secs_f64());
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn records_and_encodes() {
        let m = Metrics::new(2);
        let req = |route: &str| ServerRequest {
            method: "GET",
            route: route.to_owned(),
            status: 200,
            duration: Duration::from_millis(30),
        };
        m.record_server_request("svc", &req("/a"));
        m.record_server_request("svc", &req("/a"));
        m.record_server_request("svc", &req("/b"));
        m.record_server_request("svc", &req("/c"));
        let text = m.encode().unwrap();
        assert!(text.contains(
            "http_server_request_duration_seconds_count{service_name=\"svc\",http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/a\"} 2"
        ), "{text}");
        assert!(text.contains("http_route=\"_OTHER\"} 1"), "{text}");
        assert!(
            text.contains("obs_agent_routes_overflowed_total 1"),
            "{text}"
        );
        assert!(text.contains("{le=\"0.05\",service_name=\"svc\",http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/a\"} 2"), "{text}");
    }
}
