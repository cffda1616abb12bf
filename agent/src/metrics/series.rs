//! One watched process's request series, resolved once: recording a request is then a small
//! lookup (route, then method and status) and a histogram observation, with no label set
//! built, allocated or hashed per request. The route and peer caps (`--max-routes`) are
//! applied when a route or server is first seen, which gives the same labels as applying them
//! per request: once a service's cap is reached it stays reached. Handles stay valid because
//! request series are never removed from their families.
//!
//! Each cache is bounded; a process with more distinct routes, servers or (method, status)
//! pairs than it holds records the rest through the uncached path, with identical results.

use std::{borrow::Cow, collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::metrics::histogram::Histogram;

use super::{
    service_graph::{EdgeKey, EdgeSeries},
    HttpClientLabels, HttpServerLabels, Metrics, Service, OVERFLOW_ROUTE,
};

/// Routes and servers cached per process, at most.
const MAX_CACHED_KEYS: usize = 1024;
/// (method, status) series cached per route or server, at most.
const MAX_CACHED_SERIES: usize = 64;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The histograms of one route or server, by (method, status).
#[derive(Default)]
struct ByMethodStatus(Vec<(&'static str, u16, Histogram)>);

impl ByMethodStatus {
    fn get_or_insert(
        &mut self,
        method: &'static str,
        status: u16,
        create: impl FnOnce() -> Histogram,
    ) -> Option<&Histogram> {
        let i = match self
            .0
            .iter()
            .position(|(m, s, _)| *s == status && *m == method)
        {
            Some(i) => i,
            None if self.0.len() < MAX_CACHED_SERIES => {
                self.0.push((method, status, create()));
                self.0.len() - 1
            }
            None => return None,
        };
        Some(&self.0[i].2)
    }
}

struct RouteSeries {
    /// The route shared with the spans of its requests.
    route: Arc<str>,
    /// Past the service's route cap: labelled `_OTHER`.
    overflowed: bool,
    series: ByMethodStatus,
}

struct PeerSeries {
    /// `server_address` and `server_port` as labelled (`_OTHER` and 0 past the cap).
    address: String,
    port: u16,
    series: ByMethodStatus,
}

/// A watched process's request series (`http_server_request_duration_seconds` by route,
/// `http_client_request_duration_seconds` by server), for [`Metrics::record_server`] and
/// [`Metrics::record_client`].
pub struct ProcessSeries {
    pub(super) service: Service,
    /// Its service-graph edges' series.
    edges: FastMap<EdgeKey, EdgeSeries>,
    routes: FastMap<Arc<str>, RouteSeries>,
    peers: FastMap<Option<SocketAddr>, PeerSeries>,
}

impl ProcessSeries {
    pub fn new(service: Service) -> Self {
        Self {
            service,
            edges: FastMap::default(),
            routes: FastMap::default(),
            peers: FastMap::default(),
        }
    }
}

impl ProcessSeries {
    /// The cached series of an edge.
    pub(super) fn edge(&self, key: &EdgeKey) -> Option<&EdgeSeries> {
        self.edges.get(key)
    }

    /// Caches an edge's series (while the cache has room) and returns them.
    pub(super) fn cache_edge(&mut self, key: EdgeKey, series: EdgeSeries) -> &EdgeSeries {
        if self.edges.len() >= MAX_CACHED_KEYS {
            self.edges.clear();
        }
        self.edges.entry(key).or_insert(series)
    }
}

impl Metrics {
    /// Records a request the process served on `route` (its pattern or collapsed path) and
    /// returns the route as its spans share it.
    pub fn record_server<'p>(
        &self,
        p: &'p mut ProcessSeries,
        route: &str,
        method: &'static str,
        status: u16,
        duration: Duration,
    ) -> Cow<'p, Arc<str>> {
        if !p.routes.contains_key(route) && p.routes.len() < MAX_CACHED_KEYS {
            let admitted = self.admit_route(&p.service.name, route);
            let route: Arc<str> = Arc::from(route);
            p.routes.insert(
                route.clone(),
                RouteSeries {
                    route,
                    overflowed: admitted == OVERFLOW_ROUTE,
                    series: ByMethodStatus::default(),
                },
            );
        }
        let service = &p.service;
        let Some(r) = p.routes.get_mut(route) else {
            self.record_server_uncached(service, route, method, status, duration);
            return Cow::Owned(Arc::from(route));
        };
        if r.overflowed && route != OVERFLOW_ROUTE {
            self.agent.routes_overflowed.inc();
        }
        let RouteSeries {
            route: shared,
            overflowed,
            series,
        } = r;
        let label = || -> &str {
            if *overflowed {
                OVERFLOW_ROUTE
            } else {
                shared
            }
        };
        match series.get_or_insert(method, status, || {
            self.server_duration
                .get_or_create(&HttpServerLabels {
                    service_name: service.name.clone(),
                    http_request_method: method,
                    http_response_status_code: status,
                    http_route: label().to_owned(),
                    k8s: service.k8s.clone(),
                })
                .clone()
        }) {
            Some(h) => h.observe(duration.as_secs_f64()),
            None => self.observe_server(service, label(), method, status, duration),
        }
        Cow::Borrowed(shared)
    }

    /// Records a call the process made to `server` (`None`: a peer never learned).
    pub fn record_client(
        &self,
        p: &mut ProcessSeries,
        server: Option<SocketAddr>,
        method: &'static str,
        status: u16,
        duration: Duration,
    ) {
        if !p.peers.contains_key(&server) && p.peers.len() < MAX_CACHED_KEYS {
            let (address, port) = self.admit_peer(&p.service.name, server);
            p.peers.insert(
                server,
                PeerSeries {
                    address,
                    port,
                    series: ByMethodStatus::default(),
                },
            );
        }
        let service = &p.service;
        let Some(peer) = p.peers.get_mut(&server) else {
            return self.record_client_uncached(service, server, method, status, duration);
        };
        let PeerSeries {
            address,
            port,
            series,
        } = peer;
        let labels = || HttpClientLabels {
            service_name: service.name.clone(),
            http_request_method: method,
            http_response_status_code: status,
            server_address: address.clone(),
            server_port: *port,
            k8s: service.k8s.clone(),
        };
        match series.get_or_insert(method, status, || {
            self.client_duration.get_or_create(&labels()).clone()
        }) {
            Some(h) => h.observe(duration.as_secs_f64()),
            None => self.observe_client(labels(), duration),
        }
    }
}
