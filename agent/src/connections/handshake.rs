//! Which local address a connected socket got, from the kernel's TCP handshake: the connect
//! of a descriptor names its kernel socket, and the handshake's completion names that
//! socket's local address. Either may come first (loopback completes the handshake inside
//! connect), so each half waits here for the other, by kernel socket.

use std::{collections::HashMap, net::SocketAddr};

/// Handshakes waiting for their other half, at most: more (their connects never seen) are
/// forgotten.
pub const MAX_HANDSHAKES: usize = 1024;

/// One half of the pair that names a connected socket's own address.
#[derive(Clone, Copy, Debug)]
enum Half {
    Connect(u32),
    Local(SocketAddr),
}

#[derive(Debug, Default)]
pub struct Handshakes(HashMap<u64, Half>);

impl Handshakes {
    /// The connect on `fd` started the handshake of `sock`: its local address if the
    /// handshake completed first.
    pub fn connecting(&mut self, sock: u64, fd: u32) -> Option<SocketAddr> {
        match self.0.remove(&sock) {
            Some(Half::Local(local)) => Some(local),
            _ => {
                self.remember(sock, Half::Connect(fd));
                None
            }
        }
    }

    /// The handshake of `sock` completed with this end at `local`: the descriptor whose
    /// connect started it, if that came first.
    pub fn done(&mut self, sock: u64, local: SocketAddr) -> Option<u32> {
        match self.0.remove(&sock) {
            Some(Half::Connect(fd)) => Some(fd),
            _ => {
                self.remember(sock, Half::Local(local));
                None
            }
        }
    }

    /// The socket closed before its handshake completed.
    pub fn forget(&mut self, sock: u64) {
        self.0.remove(&sock);
    }

    fn remember(&mut self, sock: u64, half: Half) {
        if self.0.len() >= MAX_HANDSHAKES {
            self.0.clear();
        }
        self.0.insert(sock, half);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}
