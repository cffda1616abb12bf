//! One decoder per protocol, each in its own folder beside its tests. A decoder takes the
//! bytes a watched process reads and writes on one connection (as the kernel captured them:
//! a bounded prefix of each syscall, and how many bytes it moved), says whether the
//! connection speaks its protocol at all, and emits a record when a request starts and when
//! a request and its response complete. It reports what it could not decode ([`Issue`]).
//!
//! Decoders are pure: no I/O, no clock, no kernel; each is fuzzed. Which connection gets
//! which decoder, and what is known of the connection (addresses, span identities), is the
//! connection table's business (`crate::connections`).
//!
//! Also here, the pieces protocols share: the W3C trace context, HTTP semantics (method
//! normalization, low-cardinality routes), and Go's ServeMux patterns.

pub mod go_mux;
pub mod http;
pub mod http1;
pub mod recognise;
pub mod trace_context;

use std::fmt;

use trace_context::TraceParent;

/// Requests in flight one connection keeps, at most (per decoder); more are counted as lost.
pub const MAX_PENDING: usize = 64;

/// Which end of the connection the watched process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Server,
    Client,
}

impl Role {
    /// The label value (`role`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// Which way bytes went, seen from the watched process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Read by the process.
    Ingress,
    /// Written by the process.
    Egress,
}

/// What one syscall moved: `data` is the captured start of it (empty for `sendfile`),
/// `bytes` how many bytes it moved in all.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// When the syscall returned (the kernel's monotonic clock).
    pub ts_ns: u64,
    pub data: &'a [u8],
    pub bytes: i64,
}

impl Chunk<'_> {
    /// Whether the syscall moved more than was captured.
    pub fn cut(&self) -> bool {
        self.bytes > self.data.len() as i64
    }
}

/// A request's number on its connection, given by its decoder in the order requests start.
pub type RequestId = u64;

/// A request that started: read by a server, written by a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewRequest {
    pub id: RequestId,
    /// A valid W3C `traceparent` the request carried.
    pub traceparent: Option<TraceParent>,
}

/// A request and its response, complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub id: RequestId,
    pub method: &'static str,
    pub path: String,
    /// The request line was longer than what was captured: `path` is its beginning.
    pub truncated: bool,
    pub status: u16,
    /// The first byte of the request (read by a server, written by a client).
    pub start_ns: u64,
    /// The last byte of the response seen (written by a server, read by a client).
    pub end_ns: u64,
}

/// What decoders emit, in the order it happened; the connection table takes it after each
/// call.
#[derive(Debug, Default)]
pub struct Records {
    pub started: Vec<NewRequest>,
    pub completed: Vec<Exchange>,
}

/// What a decoder could not make sense of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issue {
    /// The first bytes of a connection seen from its start are not this protocol: the
    /// decoder takes nothing more from it.
    NotThisProtocol,
    /// A response that answers no request.
    UnmatchedResponse,
    /// More requests in flight than [`MAX_PENDING`]: the extra one is not followed.
    Overflow,
    /// Requests left unanswered when the connection switched protocols.
    Unanswered(usize),
}

/// One connection's decoder.
pub trait Decoder: fmt::Debug + Send {
    /// Bytes the process read ([`Direction::Ingress`]) or wrote on the connection.
    fn data(
        &mut self,
        direction: Direction,
        chunk: Chunk<'_>,
        out: &mut Records,
    ) -> Result<(), Issue>;

    /// When the last byte of the response in progress was seen, if one is in progress: a
    /// response whose end the bytes do not mark completes when it has been quiet for a while.
    fn response_in_progress(&self) -> Option<u64>;

    /// The response in progress is complete.
    fn finish_response(&mut self, out: &mut Records);

    /// The connection closed (or its process exited): a response in progress is complete.
    /// Returns how many requests were never answered.
    fn close(&mut self, out: &mut Records) -> usize;

    /// Requests started and not yet answered.
    fn in_flight(&self) -> usize;

    /// Which end the process is, once known: a socket found open at attach learns it from
    /// its first message.
    fn role(&self) -> Option<Role>;

    /// Whether the connection left this protocol for good (HTTP/1's `101 Switching
    /// Protocols`): it takes no more bytes.
    fn is_done(&self) -> bool;
}
