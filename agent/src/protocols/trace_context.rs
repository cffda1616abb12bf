//! W3C Trace Context: the `traceparent` a request may carry, and the identity a span gets
//! when its request starts. Shared by every protocol that carries the header (HTTP/1 now;
//! HTTP/2 and gRPC metadata next) and by the span machinery.

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// A W3C trace context `traceparent` header: `00-<trace id>-<parent span id>-<flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

/// A span's identity, given when its request starts (children made while it runs need it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_id: Option<SpanId>,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a header value; invalid values (wrong lengths, non-hex, all-zero ids, version
    /// ff) are ignored, as the W3C spec says.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let value = value.trim_ascii();
        let mut parts = value.split(|&b| b == b'-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four fields; later versions may append more.
        if version.len() != 2 || version == b"ff" || (version == b"00" && parts.next().is_some()) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        let mut flag = [0u8; 1];
        decode_hex(trace, &mut trace_id)?;
        decode_hex(parent, &mut parent_id)?;
        decode_hex(flags, &mut flag)?;
        decode_hex(version, &mut [0u8; 1])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flag[0] & 1 == 1,
        })
    }
}

/// Lowercase hex only, exactly `out.len() * 2` digits.
fn decode_hex(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (o, pair) in out.iter_mut().zip(s.chunks(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_headers() {
        let tp = TraceParent::parse(b" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .unwrap();
        assert_eq!(tp.trace_id[..2], [0x4b, 0xf9]);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert!(tp.sampled);
        let bad: [&[u8]; 7] = [
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"",
        ];
        for b in bad {
            assert_eq!(
                TraceParent::parse(b),
                None,
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }
}
