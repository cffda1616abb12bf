//! The service graph: which service called which. A request seen from both ends (a client
//! span in one watched process, the server span of the same connection in another) is one
//! edge between their services, counted once, where the client span ends, as Tempo's
//! service-graph processor pairs spans; its server and client durations each go with their
//! own span. A request with only one end watched is an edge to the other end's address.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use super::trace::{Resource, SpanId};
use crate::{connections::Finished, protocols::Role};

/// Pairs remembered at most, per direction (oldest forgotten wholesale when full).
const MAX_PAIRS: usize = 65_536;

/// The other end of an edge, seen from the process that ended a span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A watched process (the span at its end was seen).
    Watched(Arc<Resource>),
    /// An address the agent does not watch: a server's address and port, or a client's
    /// address (port 0: a client's port changes with every connection).
    Address(SocketAddr),
}

/// What one finished span adds to the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// Which end this process is.
    pub role: Role,
    pub peer: Peer,
    /// Whether this span counts the request (`request_total`, `request_failed_total`): the
    /// client's span when the client is watched, else the server's.
    pub counts_request: bool,
}

type SpanMap<V> = HashMap<SpanId, V, foldhash::fast::RandomState>;

/// Requests seen from both ends, waiting for each end's span to finish.
#[derive(Default)]
pub struct Pairs {
    /// Server spans whose client span is known: the client's process.
    client_of: SpanMap<Arc<Resource>>,
    /// Client spans whose server span is known: the server's process.
    server_of: SpanMap<Arc<Resource>>,
}

impl Pairs {
    /// The client span `client_span` of `client` is the caller of the server span
    /// `server_span` of `server`.
    pub fn link(
        &mut self,
        client_span: SpanId,
        client: &Arc<Resource>,
        server_span: SpanId,
        server: &Arc<Resource>,
    ) {
        for map in [&mut self.client_of, &mut self.server_of] {
            if map.len() >= MAX_PAIRS {
                map.clear();
            }
        }
        self.client_of.insert(server_span, client.clone());
        self.server_of.insert(client_span, server.clone());
    }

    /// The edge a finished exchange makes (none without a span, or without a peer address
    /// when its other end was not seen).
    pub fn edge(&mut self, f: &Finished) -> Option<Edge> {
        let span = f.span?.span_id;
        let (waiting, unpaired) = match f.role {
            Role::Client => (&mut self.server_of, f.peer),
            Role::Server => (
                &mut self.client_of,
                f.peer.map(|p| SocketAddr::new(p.ip(), 0)),
            ),
        };
        // Most requests have one end watched only: no pair to look for.
        let paired = if waiting.is_empty() {
            None
        } else {
            waiting.remove(&span)
        };
        let (peer, counts_request) = match (paired, unpaired) {
            (Some(resource), _) => (Peer::Watched(resource), f.role == Role::Client),
            (None, Some(address)) => (Peer::Address(address), true),
            (None, None) => return None,
        };
        Some(Edge {
            role: f.role,
            peer,
            counts_request,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        protocols::{trace_context::SpanContext, Exchange},
        spans::trace::fixtures::resource,
    };

    fn finished(role: Role, span: u8, peer: &str) -> Finished {
        Finished {
            role,
            peer: Some(peer.parse().unwrap()),
            local: None,
            span: Some(SpanContext {
                trace_id: [1; 16],
                span_id: [span; 8],
                parent_id: None,
                sampled: true,
            }),
            exchange: Exchange {
                id: 0,
                method: "GET",
                path: "/".into(),
                truncated: false,
                status: 200,
                start_ns: 0,
                end_ns: 1,
            },
        }
    }

    #[test]
    fn a_request_seen_from_both_ends_counts_once_where_the_client_span_ends() {
        let (front, back) = (resource("front"), resource("back"));
        let mut pairs = Pairs::default();
        pairs.link([1; 8], &front, [2; 8], &back);
        // The server's span ends first: its duration, not the request.
        let server = pairs
            .edge(&finished(Role::Server, 2, "127.0.0.1:50000"))
            .unwrap();
        assert_eq!(server.peer, Peer::Watched(front.clone()));
        assert!(!server.counts_request);
        let client = pairs
            .edge(&finished(Role::Client, 1, "127.0.0.1:8080"))
            .unwrap();
        assert_eq!(client.peer, Peer::Watched(back));
        assert!(client.counts_request);
        // Forgotten once ended.
        let again = pairs
            .edge(&finished(Role::Client, 1, "127.0.0.1:8080"))
            .unwrap();
        assert_eq!(again.peer, Peer::Address("127.0.0.1:8080".parse().unwrap()));
    }

    #[test]
    fn one_end_watched_is_an_edge_to_the_others_address() {
        let mut pairs = Pairs::default();
        let server = pairs
            .edge(&finished(Role::Server, 3, "10.0.0.9:41234"))
            .unwrap();
        assert_eq!(server.peer, Peer::Address("10.0.0.9:0".parse().unwrap()));
        assert!(server.counts_request);
        let client = pairs
            .edge(&finished(Role::Client, 4, "10.0.0.8:443"))
            .unwrap();
        assert_eq!(client.peer, Peer::Address("10.0.0.8:443".parse().unwrap()));
        let mut no_peer = finished(Role::Client, 5, "10.0.0.8:443");
        no_peer.peer = None;
        assert_eq!(pairs.edge(&no_peer), None);
    }
}
