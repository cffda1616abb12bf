//! What a connection's first bytes look like when no decoder takes them: the reason a
//! connection is counted in `obs_agent_non_http_connections_total` and then left alone.

/// Another protocol, as far as its first bytes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unrecognised {
    /// A TLS record (handshake, version 3.x).
    Tls,
    /// The HTTP/2 connection preface.
    Http2,
    /// Anything else: a database protocol, a binary stream, garbage.
    Other,
}

impl Unrecognised {
    pub const ALL: [Unrecognised; 3] = [Self::Tls, Self::Http2, Self::Other];

    /// The label value (`reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::Http2 => "http2",
            Self::Other => "other",
        }
    }

    /// What the first bytes of a connection look like.
    pub fn of(first_bytes: &[u8]) -> Self {
        if first_bytes.len() >= 2 && first_bytes[0] == 0x16 && first_bytes[1] == 0x03 {
            Self::Tls
        } else if first_bytes.starts_with(b"PRI * HTTP/2.0") {
            Self::Http2
        } else {
            Self::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_of_other_protocols() {
        assert_eq!(Unrecognised::of(b"\x16\x03\x01\x02\x00"), Unrecognised::Tls);
        assert_eq!(
            Unrecognised::of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Unrecognised::Http2
        );
        assert_eq!(
            Unrecognised::of(b"SSH-2.0-OpenSSH_9.2"),
            Unrecognised::Other
        );
        assert_eq!(Unrecognised::of(b"\x16"), Unrecognised::Other);
        assert_eq!(Unrecognised::of(b""), Unrecognised::Other);
    }
}
