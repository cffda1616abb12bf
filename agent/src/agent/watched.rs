//! One watched process's state on the data path: its connections, goroutine links, routes,
//! Go runtime figures, and the series and labels it is exported under.

use std::{collections::HashMap, sync::Arc, time::Instant};

use prometheus_client::metrics::gauge::Gauge;

use crate::{
    connections::Connections,
    metrics::{K8sLabels, ModuleLabels, ProcessSeries, Service, TargetLabels},
    protocols::trace_context::{SpanContext, SpanId},
    spans::{
        goroutines::Goroutines,
        trace::Resource,
        tracer::{Orphan, Tracer},
    },
    target::Process,
};

use super::{go_process::GoProcess, routes::Routes};

/// The watched processes by pid, looked up on every event: a fast hash (pids are not
/// chosen by peers).
pub type WatchedMap = HashMap<u32, Watched, foldhash::fast::RandomState>;

pub struct Watched {
    pub process: Process,
    /// What its spans say of it (OpenTelemetry resource).
    pub resource: Arc<Resource>,
    /// Its request series, resolved once per route and server.
    pub series: ProcessSeries,
    /// Its `obs_agent_target_info` and `obs_agent_target_module_info` series, removed at exit.
    pub target: TargetLabels,
    pub modules: Vec<ModuleLabels>,
    /// When its exit was seen: its state is kept a while for the events it left in the ring.
    pub exited_at: Option<Instant>,
    pub connections: Connections,
    /// Go processes with goroutine tracking: which request each call is made for.
    pub goroutines: Goroutines,
    pub routes: Routes,
    /// Its Go runtime's figures (goroutines, GC, panics), when its goroutines are followed.
    pub go: Option<GoProcess>,
    /// Its service's `http_server_active_requests`, shared with the service's other
    /// processes, and what this process adds to it now.
    pub active: Gauge,
    pub active_added: i64,
}

impl Watched {
    pub fn is_alive(&self) -> bool {
        self.exited_at.is_none()
    }

    /// Brings the service's requests-in-flight gauge up to date with this process's
    /// connections (after every event: the gauge is exact whenever it is scraped).
    pub fn sync_active(&mut self) {
        let now = self.connections.in_flight() as i64;
        if now != self.active_added {
            self.active.inc_by(now - self.active_added);
            self.active_added = now;
        }
    }
}

/// The service a process's series are labelled with: its name, and its pod.
pub fn service_of(process: &Process) -> Service {
    Service::new(&process.service_name, K8sLabels(process.k8s.clone()))
}

/// A server request that started before the client request of the same connection was
/// seen (usually in another watched process), found when the client's started.
pub struct Adoption {
    pub orphan: Orphan,
    /// Its new identity, as the client's child (none: a `traceparent` keeps its own trace).
    pub span: Option<SpanContext>,
    pub client_span: SpanId,
    /// The client's process.
    pub client: Arc<Resource>,
}

/// Adopted server requests: now their clients' children, and each the server end of its
/// client's request in the service graph.
pub fn adopt(watched: &mut WatchedMap, tracer: &mut Tracer, adopted: Vec<Adoption>) {
    for a in adopted {
        let Some(server) = watched.get_mut(&a.orphan.pid) else {
            continue;
        };
        tracer.pair(a.client_span, &a.client, a.orphan.span_id, &server.resource);
        if let Some(span) = a.span {
            if server
                .connections
                .relink(a.orphan.fd, a.orphan.span_id, span)
            {
                server.goroutines.relink(span);
            }
        }
    }
}
