//! The ports of this agent's own sockets: what its listeners listen on,
//! what its connections connect to, and those of the connections it
//! aborts. A capture keeps the segments of these (and of the ports it was
//! asked for), so that agents sharing a host (many on one loopback) each
//! keep their own pairs' traffic, as a real host's capture would. Every
//! segment of a connection the agent made or accepted carries one of them,
//! and each is marked before the first such segment (before the connect;
//! when the listener is bound; before the abort).

use std::sync::atomic::{AtomicU64, Ordering};

/// A set of ports, one bit each (8 KiB), read by the capture's reader
/// without a lock.
pub struct OwnPorts {
    bits: Box<[AtomicU64]>,
}

impl Default for OwnPorts {
    fn default() -> Self {
        Self {
            bits: (0..1024).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl OwnPorts {
    fn at(port: u16) -> (usize, u64) {
        (usize::from(port / 64), 1 << (port % 64))
    }

    /// This agent's sockets use `port` from now on.
    pub fn mark(&self, port: u16) {
        let (word, bit) = Self::at(port);
        if let Some(word) = self.bits.get(word) {
            word.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// Whether this agent's sockets use `port`.
    pub fn has(&self, port: u16) -> bool {
        let (word, bit) = Self::at(port);
        self.bits
            .get(word)
            .is_some_and(|word| word.load(Ordering::Relaxed) & bit != 0)
    }

    /// Forget every port (the agent was reset: its sockets are gone).
    pub fn clear(&self) {
        for word in self.bits.iter() {
            word.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_marked_one_by_one_and_forgotten_together() {
        let own = OwnPorts::default();
        for port in [0, 1, 63, 64, 7000, u16::MAX] {
            assert!(!own.has(port));
            own.mark(port);
            assert!(own.has(port));
        }
        assert!(!own.has(7001));
        own.clear();
        assert!(!own.has(7000) && !own.has(u16::MAX));
    }
}
