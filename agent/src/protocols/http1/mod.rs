//! HTTP/1.x, on either end of a connection. On a server connection (accepted), requests read
//! by the process are queued and paired, in order, with the status lines it writes; on a
//! client connection (connected), requests written are paired with the status lines read. A
//! socket found open at attach gets its role from the first request line or status line seen
//! on it.
//!
//! - Several requests in one read (pipelining) are each queued, as far as the captured prefix
//!   shows them; a request body of known length (`Content-Length`) is skipped, in this read
//!   or later ones, so body bytes are never taken for requests. A body that cannot be
//!   followed (chunked, or behind a head longer than the capture) makes the server end read
//!   nothing as a request until the response starts.
//! - A response lasts from its status line to the last byte of it seen: later writes (server)
//!   or reads (client) without a status line, `sendfile` included, extend it. It is complete
//!   when the next response starts on the connection, the client sends its next request, the
//!   connection closes, or the connection table finds it quiet ([`Decoder::finish_response`]).
//!   Interim (1xx) responses do not complete a request; `101 Switching Protocols` does, and
//!   the decoder takes nothing more after it.
//! - The first bytes of a connection seen from its start (accept, connect) tell whether it
//!   speaks HTTP/1.x at all; one that does not (TLS, HTTP/2, a binary protocol, garbage) is
//!   reported once ([`Issue::NotThisProtocol`]).
//!
//! Bounded: at most [`MAX_PENDING`] requests in flight per connection.

pub mod parse;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use self::parse::{
    classify_request, parse_request_head, parse_status, request_start_prefix, BodyFraming,
    RequestParse, RequestStart,
};
use super::{
    Chunk, Decoder, Direction, Exchange, Issue, NewRequest, Records, RequestId, Role, MAX_PENDING,
};

/// A request read (server) or written (client) and not yet answered.
#[derive(Clone, Debug)]
struct Pending {
    id: RequestId,
    request: RequestStart,
    start_ns: u64,
}

/// One HTTP/1.x connection's decoder.
#[derive(Debug, Default)]
pub struct Http1 {
    /// `None` until known (a socket found open at attach).
    role: Option<Role>,
    /// Seen from its start (accept, connect): its first bytes tell whether it is HTTP.
    from_start: bool,
    /// Its first bytes were HTTP/1.x.
    judged: bool,
    /// Switched to another protocol (101), or found not to be HTTP/1.x: nothing more.
    done: bool,
    next_id: RequestId,
    pending: VecDeque<Pending>,
    /// The response being written (server) or read (client): its status line was seen.
    responding: Option<Exchange>,
    /// The start of a request line whose rest has not been read yet, with the time of its
    /// first byte.
    head: Vec<u8>,
    head_ns: u64,
    /// Bytes of a request body (known length) still to be read (server end).
    body_left: u64,
    /// A request whose body cannot be followed (its head was longer than the capture, or
    /// its body is chunked) is being read: nothing read is a new request until its response
    /// starts (server end). Body bytes never become requests; a request pipelined behind
    /// such a one is not seen.
    body_unknown: bool,
}

impl Http1 {
    /// A decoder for a connection whose process is at `role` (`None`: told by the first
    /// request or status line), seen `from_start` (accept, connect) or found open at attach.
    pub fn new(role: Option<Role>, from_start: bool) -> Self {
        Self {
            role,
            from_start,
            ..Self::default()
        }
    }

    /// The first bytes of a connection seen from its start decide whether it is HTTP; those
    /// of other connections (found open at attach) may be mid-message and decide nothing.
    fn judge(&mut self, is_http: bool) -> Result<(), Issue> {
        if self.judged {
            return Ok(());
        }
        if is_http {
            self.judged = true;
            return Ok(());
        }
        if !self.from_start {
            return Ok(());
        }
        self.done = true;
        self.pending.clear();
        self.responding = None;
        Err(Issue::NotThisProtocol)
    }

    /// A server read: requests, the rest of one (headers beyond the first read), or a body.
    fn server_read(
        &mut self,
        ts_ns: u64,
        data: &[u8],
        bytes: u64,
        out: &mut Records,
    ) -> Result<(), Issue> {
        let (mut data, mut bytes) = (data, bytes.max(data.len() as u64));
        if self.body_left > 0 {
            let skip = self.body_left.min(bytes);
            self.body_left -= skip;
            bytes -= skip;
            // What follows the body beyond the captured bytes, if anything, is not seen.
            if skip >= data.len() as u64 {
                self.head.clear();
                return Ok(());
            }
            data = &data[skip as usize..];
        }
        if self.body_unknown {
            return Ok(());
        }
        let head = std::mem::take(&mut self.head);
        let joined;
        let (buf, first_ns, mut total) = if head.is_empty() {
            (data, ts_ns, bytes)
        } else {
            joined = [head.as_slice(), data].concat();
            (joined.as_slice(), self.head_ns, bytes + head.len() as u64)
        };
        let mut offset = 0usize;
        let mut found = false;
        let mut overflow = false;
        while offset < buf.len() {
            let rest = &buf[offset..];
            let start_ns = if offset == 0 { first_ns } else { ts_ns };
            if let Some(head) = parse_request_head(rest) {
                overflow |= !self.push_request(head.start, start_ns, &mut found, out)?;
                offset += head.head_len;
                total = total.saturating_sub(head.head_len as u64);
                match head.body {
                    BodyFraming::None => continue,
                    BodyFraming::Length(n) if total >= n => {
                        total -= n;
                        match offset.checked_add(n as usize) {
                            Some(end) if end <= buf.len() => offset = end,
                            // The body ends beyond the capture: what follows it is not seen.
                            _ => break,
                        }
                    }
                    BodyFraming::Length(n) => {
                        self.body_left = n - total;
                        break;
                    }
                    // Chunks and unknown framing are not followed: what is read next is
                    // body until the response starts.
                    BodyFraming::Chunked | BodyFraming::Unknown => {
                        self.body_unknown = true;
                        break;
                    }
                }
            } else {
                match classify_request(rest) {
                    // The request line, with the head cut by the read or the capture: where
                    // its body starts, and how long it is, are not seen.
                    RequestParse::Start(r) => {
                        overflow |= !self.push_request(r, start_ns, &mut found, out)?;
                        self.body_unknown = true;
                    }
                    // A request line cut by the read: joined with the next one (only when
                    // every byte read so far was captured).
                    RequestParse::Incomplete if rest.len() as u64 == total => {
                        self.head = rest.to_vec();
                        self.head_ns = start_ns;
                    }
                    RequestParse::Incomplete => {}
                    // A body, the rest of a long head, or another protocol.
                    RequestParse::NotRequest if offset == 0 => self.judge(false)?,
                    RequestParse::NotRequest => {}
                }
                break;
            }
        }
        if overflow {
            return Err(Issue::Overflow);
        }
        Ok(())
    }

    /// A client write: a request (its line possibly cut by the capture: `cut`), or a body.
    fn client_write(
        &mut self,
        ts_ns: u64,
        data: &[u8],
        cut: bool,
        out: &mut Records,
    ) -> Result<(), Issue> {
        if data.is_empty() {
            return Ok(());
        }
        let request = if cut {
            request_start_prefix(data)
        } else {
            match classify_request(data) {
                RequestParse::Start(r) => Some(r),
                _ => None,
            }
        };
        let Some(request) = request else {
            return self.judge(false);
        };
        self.judge(true)?;
        // The client asks again: the previous response has been read.
        out.completed.extend(self.responding.take());
        if !self.push_request(request, ts_ns, &mut false, out)? {
            return Err(Issue::Overflow);
        }
        Ok(())
    }

    /// Queues a request, judging the connection HTTP on its first one (`judged`: this read's
    /// requests already did); Ok(false) if the queue is full.
    fn push_request(
        &mut self,
        request: RequestStart,
        start_ns: u64,
        judged: &mut bool,
        out: &mut Records,
    ) -> Result<bool, Issue> {
        if !*judged {
            self.judge(true)?;
            *judged = true;
        }
        if self.pending.len() >= MAX_PENDING {
            return Ok(false);
        }
        let id = self.next_id;
        self.next_id += 1;
        out.started.push(NewRequest {
            id,
            traceparent: request.traceparent,
        });
        self.pending.push_back(Pending {
            id,
            request,
            start_ns,
        });
        Ok(true)
    }

    /// Response bytes going one way: a status line answers the oldest waiting request; other
    /// bytes extend the response in progress.
    fn response_bytes(&mut self, ts_ns: u64, data: &[u8], out: &mut Records) -> Result<(), Issue> {
        let Some(status) = parse_status(data) else {
            match self.responding.as_mut() {
                Some(r) => r.end_ns = ts_ns,
                // The server spoke first: not HTTP.
                None if !data.is_empty() => self.judge(false)?,
                None => {}
            }
            return Ok(());
        };
        if (100..200).contains(&status) && status != 101 {
            return Ok(());
        }
        out.completed.extend(self.responding.take());
        if self.role == Some(Role::Server) {
            // The server answers: it has read the request it answers.
            self.body_unknown = false;
        }
        let Some(pending) = self.pending.pop_front() else {
            return Err(Issue::UnmatchedResponse);
        };
        let completed = Exchange {
            id: pending.id,
            method: pending.request.method,
            path: pending.request.path,
            truncated: pending.request.truncated,
            status,
            start_ns: pending.start_ns,
            end_ns: ts_ns,
        };
        if status == 101 {
            // What follows is another protocol (WebSocket, h2c): leave the connection alone.
            out.completed.push(completed);
            self.done = true;
            let unanswered = self.pending.len();
            self.pending.clear();
            if unanswered > 0 {
                return Err(Issue::Unanswered(unanswered));
            }
        } else {
            self.responding = Some(completed);
        }
        Ok(())
    }
}

impl Decoder for Http1 {
    fn data(
        &mut self,
        direction: Direction,
        chunk: Chunk<'_>,
        out: &mut Records,
    ) -> Result<(), Issue> {
        if self.done {
            return Ok(());
        }
        let data = chunk.data;
        match direction {
            Direction::Ingress => {
                if data.is_empty() {
                    return Ok(());
                }
                if self.role.is_none() {
                    self.role = infer_role(data, Role::Server, Role::Client);
                }
                match self.role {
                    Some(Role::Server) => {
                        self.server_read(chunk.ts_ns, data, chunk.bytes.max(0) as u64, out)
                    }
                    Some(Role::Client) => self.response_bytes(chunk.ts_ns, data, out),
                    None => Ok(()),
                }
            }
            Direction::Egress => {
                if self.role.is_none() {
                    self.role = infer_role(data, Role::Client, Role::Server);
                }
                match self.role {
                    Some(Role::Server) => self.response_bytes(chunk.ts_ns, data, out),
                    Some(Role::Client) => self.client_write(chunk.ts_ns, data, chunk.cut(), out),
                    None => Ok(()),
                }
            }
        }
    }

    fn response_in_progress(&self) -> Option<u64> {
        self.responding.as_ref().map(|r| r.end_ns)
    }

    fn finish_response(&mut self, out: &mut Records) {
        out.completed.extend(self.responding.take());
    }

    fn close(&mut self, out: &mut Records) -> usize {
        out.completed.extend(self.responding.take());
        let unanswered = self.pending.len();
        self.pending.clear();
        unanswered
    }

    fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn role(&self) -> Option<Role> {
        self.role
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

/// The role a socket of unknown role turns out to have, from the first data on it: a request
/// start going this way means `if_request`, a status line `if_status`.
fn infer_role(data: &[u8], if_request: Role, if_status: Role) -> Option<Role> {
    if parse_status(data).is_some() {
        Some(if_status)
    } else if matches!(classify_request(data), RequestParse::Start(_))
        || request_start_prefix(data).is_some()
    {
        Some(if_request)
    } else {
        None
    }
}
