//! The Prometheus registry: RED metrics of served requests (OpenTelemetry names, as their
//! Prometheus translation), the cardinality guard on routes, and the agent's own metrics.

pub mod go_runtime;
pub mod k8s;
pub mod process;
pub mod reasons;
mod route_guard;
mod self_metrics;
mod series;
pub mod service_graph;

use std::{net::SocketAddr, sync::Mutex, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

pub use k8s::K8sLabels;
pub use route_guard::{RouteGuard, OVERFLOW_ROUTE};
pub use self_metrics::{
    labels as self_metrics_labels, DataPathLabels, ModuleLabels, SelfMetrics, TargetLabels,
};
pub use series::ProcessSeries;

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
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpClientLabels {
    pub service_name: String,
    pub http_request_method: &'static str,
    pub http_response_status_code: u16,
    /// The server's IP address ("" when unknown, `_OTHER` past the per-service cap).
    pub server_address: String,
    pub server_port: u16,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service_name: String,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

/// Whose series: a service, and the pod of the process when it runs in Kubernetes.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub k8s: K8sLabels,
}

impl Service {
    pub fn new(name: &str, k8s: K8sLabels) -> Self {
        Self {
            name: name.to_owned(),
            k8s,
        }
    }

    /// `http_server_active_requests`' labels.
    pub fn labels(&self) -> ServiceLabels {
        ServiceLabels {
            service_name: self.name.clone(),
            k8s: self.k8s.clone(),
        }
    }
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
    /// The agent's own process (`process_*`).
    pub process: process::ProcessMetrics,
    pub service_graph: service_graph::ServiceGraphMetrics,
    /// The same cap on distinct addresses a service's graph edges name.
    edge_peers: Mutex<RouteGuard>,
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
        let process = process::ProcessMetrics::register(&mut registry);
        let service_graph = service_graph::ServiceGraphMetrics::register(&mut registry);
        Self {
            go,
            process,
            service_graph,
            edge_peers: Mutex::new(RouteGuard::new(max_routes_per_service)),
            registry,
            server_duration,
            server_active,
            client_duration,
            agent,
            routes: Mutex::new(RouteGuard::new(max_routes_per_service)),
            peers: Mutex::new(RouteGuard::new(max_routes_per_service)),
        }
    }

    /// Records a call without the process's cached series (what [`Metrics::record_client`]
    /// falls back to past its cache's bounds).
    fn record_client_uncached(
        &self,
        service: &Service,
        server: Option<SocketAddr>,
        method: &'static str,
        status: u16,
        duration: Duration,
    ) {
        let (server_address, server_port) = self.admit_peer(&service.name, server);
        self.observe_client(
            HttpClientLabels {
                service_name: service.name.clone(),
                http_request_method: method,
                http_response_status_code: status,
                server_address,
                server_port,
                k8s: service.k8s.clone(),
            },
            duration,
        );
    }

    /// Records a served request without the process's cached series (what
    /// [`Metrics::record_server`] falls back to past its cache's bounds).
    fn record_server_uncached(
        &self,
        service: &Service,
        route: &str,
        method: &'static str,
        status: u16,
        duration: Duration,
    ) {
        let admitted = self.admit_route(&service.name, route);
        if admitted == OVERFLOW_ROUTE && route != OVERFLOW_ROUTE {
            self.agent.routes_overflowed.inc();
        }
        self.observe_server(service, admitted, method, status, duration);
    }

    /// The route to label a request of `service_name` with: itself, or `_OTHER` past the cap.
    fn admit_route<'a>(&self, service_name: &str, route: &'a str) -> &'a str {
        let mut guard = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        guard.admit(service_name, route)
    }

    /// `server_address` and `server_port` for a call to `server`: "" and 0 when unknown,
    /// `_OTHER` and 0 past the cap.
    fn admit_peer(&self, service_name: &str, server: Option<SocketAddr>) -> (String, u16) {
        match server {
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
        }
    }

    fn observe_server(
        &self,
        service: &Service,
        route: &str,
        method: &'static str,
        status: u16,
        duration: Duration,
    ) {
        let labels = HttpServerLabels {
            service_name: service.name.clone(),
            http_request_method: method,
            http_response_status_code: status,
            http_route: route.to_owned(),
            k8s: service.k8s.clone(),
        };
        self.server_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    fn observe_client(&self, labels: HttpClientLabels, duration: Duration) {
        self.client_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
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
        let d = Duration::from_millis(30);
        let svc = Service::new("svc", K8sLabels::default());
        for route in ["/a", "/a", "/b", "/c"] {
            m.record_server_uncached(&svc, route, "GET", 200, d);
        }
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

    #[test]
    fn cached_series_are_the_uncached_ones() {
        let cached = Metrics::new(2);
        let plain = Metrics::new(2);
        let svc = Service::new("svc", K8sLabels::default());
        let mut p = ProcessSeries::new(svc.clone());
        let d = Duration::from_millis(30);
        let served = [
            ("/a", "GET", 200),
            ("/a", "GET", 200),
            ("/b", "POST", 201),
            ("/c", "GET", 200),
            ("/a", "GET", 500),
            ("/c", "GET", 404),
            ("_OTHER", "GET", 200),
        ];
        for (route, method, status) in served {
            let shared = cached.record_server(&mut p, route, method, status, d);
            assert_eq!(&**shared, route);
            plain.record_server_uncached(&svc, route, method, status, d);
        }
        let peer = |s: &str| Some(s.parse().unwrap());
        let called = [
            (peer("10.0.0.1:80"), 200),
            (peer("10.0.0.2:8080"), 503),
            (peer("10.0.0.3:80"), 200),
            (peer("10.0.0.1:80"), 404),
            (None, 200),
            (peer("[::1]:9000"), 200),
        ];
        for (server, status) in called {
            cached.record_client(&mut p, server, "GET", status, d);
            plain.record_client_uncached(&svc, server, "GET", status, d);
        }
        let text = cached.encode().unwrap();
        assert!(text.contains("http_route=\"_OTHER\"} 2"), "{text}");
        assert!(
            text.contains("obs_agent_routes_overflowed_total 2"),
            "{text}"
        );
        assert!(text.contains("server_address=\"_OTHER\""), "{text}");
        // Series come out in hash order: compare them as sets.
        let sorted = |t: &str| {
            let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(&text), sorted(&plain.encode().unwrap()));
    }
}
