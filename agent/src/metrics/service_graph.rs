//! The service graph as Tempo's service-graph processor exports it, which Grafana's service
//! graph reads: `traces_service_graph_request_total`, `..._request_failed_total`, and the
//! server and client durations (`..._request_server_seconds`, `..._request_client_seconds`),
//! by `client` and `server` (service names; a peer the agent does not watch by its address,
//! with `connection_type="virtual_node"`). A request fails as its spans do: 4xx and 5xx seen
//! by a client, 5xx by a server. Distinct addresses per service are capped like routes
//! (`_OTHER` past it). Each process resolves its edges' series once (see `series`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::{duration_histogram, Metrics, ProcessSeries, OVERFLOW_ROUTE};
use crate::{
    protocols::Role,
    spans::{
        service_graph::{Edge, Peer},
        trace::Resource,
    },
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeLabels {
    pub client: String,
    pub server: String,
    /// `""`, or `virtual_node` when one end is an address the agent does not watch.
    pub connection_type: &'static str,
}

#[derive(Clone)]
pub struct ServiceGraphMetrics {
    requests: Family<EdgeLabels, Counter>,
    failed: Family<EdgeLabels, Counter>,
    server_seconds: Family<EdgeLabels, Histogram, fn() -> Histogram>,
    client_seconds: Family<EdgeLabels, Histogram, fn() -> Histogram>,
}

impl ServiceGraphMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            failed: Family::default(),
            server_seconds: Family::new_with_constructor(duration_histogram),
            client_seconds: Family::new_with_constructor(duration_histogram),
        };
        r.register(
            "traces_service_graph_request",
            "Requests between two services (or a service and an address it does not watch)",
            m.requests.clone(),
        );
        r.register(
            "traces_service_graph_request_failed",
            "Failed requests between two services: 4xx and 5xx seen by the client, 5xx by the \
             server",
            m.failed.clone(),
        );
        r.register_with_unit(
            "traces_service_graph_request_server",
            "Duration of requests between two services, as the server saw them",
            Unit::Seconds,
            m.server_seconds.clone(),
        );
        r.register_with_unit(
            "traces_service_graph_request_client",
            "Duration of requests between two services, as the client saw them",
            Unit::Seconds,
            m.client_seconds.clone(),
        );
        m
    }
}

/// One edge's series, seen from one end.
pub struct EdgeSeries {
    requests: Counter,
    failed: Counter,
    /// The server's or the client's durations, as this end is.
    seconds: Histogram,
}

/// An edge as a process's cache knows it: which end it is, and the other (a watched
/// process by identity: its resource is kept alive by the key, so it is never reused).
#[derive(Clone, Debug)]
pub enum EdgeKey {
    Watched(Role, Arc<Resource>),
    Address(Role, SocketAddr),
}

impl PartialEq for EdgeKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Watched(r, a), Self::Watched(s, b)) => r == s && Arc::ptr_eq(a, b),
            (Self::Address(r, a), Self::Address(s, b)) => r == s && a == b,
            _ => false,
        }
    }
}

impl Eq for EdgeKey {}

impl std::hash::Hash for EdgeKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Self::Watched(r, a) => (0u8, r, Arc::as_ptr(a)).hash(state),
            Self::Address(r, a) => (1u8, r, a).hash(state),
        }
    }
}

impl EdgeKey {
    pub fn of(edge: &Edge) -> Self {
        match &edge.peer {
            Peer::Watched(r) => Self::Watched(edge.role, r.clone()),
            Peer::Address(a) => Self::Address(edge.role, *a),
        }
    }
}

impl Metrics {
    /// Records what one finished span of process `p` adds to the service graph.
    pub fn record_edge(&self, p: &mut ProcessSeries, edge: &Edge, status: u16, duration: Duration) {
        let failed = match edge.role {
            Role::Client => status >= 400,
            Role::Server => status >= 500,
        };
        let key = EdgeKey::of(edge);
        let series = match p.edge(&key) {
            Some(series) => series,
            None => {
                let labels = self.edge_labels(&p.service.name, edge);
                let series = EdgeSeries {
                    requests: self.service_graph.requests.get_or_create(&labels).clone(),
                    failed: self.service_graph.failed.get_or_create(&labels).clone(),
                    seconds: match edge.role {
                        Role::Server => &self.service_graph.server_seconds,
                        Role::Client => &self.service_graph.client_seconds,
                    }
                    .get_or_create(&labels)
                    .clone(),
                };
                p.cache_edge(key, series)
            }
        };
        if edge.counts_request {
            series.requests.inc();
            if failed {
                series.failed.inc();
            }
        }
        series.seconds.observe(duration.as_secs_f64());
    }

    /// The labels of an edge of `service`.
    fn edge_labels(&self, service: &str, edge: &Edge) -> EdgeLabels {
        let (peer, connection_type) = match &edge.peer {
            Peer::Watched(r) => (r.service_name.clone(), ""),
            Peer::Address(a) => {
                let text = if a.port() == 0 {
                    a.ip().to_string()
                } else {
                    a.to_string()
                };
                let mut guard = self.edge_peers.lock().unwrap_or_else(|e| e.into_inner());
                let admitted = guard.admit(service, &text).to_owned();
                (admitted, "virtual_node")
            }
        };
        let service = service.to_owned();
        let (client, server) = match edge.role {
            Role::Client => (service, peer),
            Role::Server => (peer, service),
        };
        debug_assert!(client != OVERFLOW_ROUTE || server != OVERFLOW_ROUTE);
        EdgeLabels {
            client,
            server,
            connection_type,
        }
    }
}
