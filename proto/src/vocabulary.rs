//! Words both sides of the contract use beyond the generated messages: how
//! a connection is closed and the framed messages' header. Defined once
//! here, where the controller and the agent meet; the agent's domain, its
//! holder pipe and the scenario language all speak these types.

use serde::{Deserialize, Serialize};

/// Size of a framed message's header: the smallest message there is.
pub const MESSAGE_HEADER_BYTES: u32 = 8;

/// How a connection is ended (or half-ended). Scenarios write it in
/// kebab-case (`mode = "shutdown-write"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloseMode {
    /// close(): FIN after queued data (RST if unread data is pending).
    Graceful,
    /// SO_LINGER {on, 0} then close(): RST.
    Abort,
    /// shutdown(SHUT_WR): FIN, the socket still receives.
    ShutdownWrite,
    /// shutdown(SHUT_RD).
    ShutdownRead,
    /// shutdown(SHUT_RDWR).
    ShutdownBoth,
    /// Wait until unread data sits in the receive buffer, then close(): RST.
    WithUnread,
}

impl CloseMode {
    /// Whether this mode releases the socket (as opposed to a shutdown).
    pub fn releases_socket(self) -> bool {
        matches!(self, Self::Graceful | Self::Abort | Self::WithUnread)
    }

    /// How traces name it.
    pub fn call_name(self) -> &'static str {
        match self {
            Self::Graceful => "close",
            Self::Abort => "close-abort",
            Self::ShutdownWrite => "shutdown-write",
            Self::ShutdownRead => "shutdown-read",
            Self::ShutdownBoth => "shutdown-both",
            Self::WithUnread => "close-with-unread",
        }
    }

    /// The mode a request's `mode` field names, if it names one.
    pub fn from_wire(mode: i32) -> Option<Self> {
        use crate::v1::CloseMode as Wire;
        Some(match Wire::try_from(mode).ok()? {
            Wire::Graceful => Self::Graceful,
            Wire::Abort => Self::Abort,
            Wire::ShutdownWrite => Self::ShutdownWrite,
            Wire::ShutdownRead => Self::ShutdownRead,
            Wire::ShutdownBoth => Self::ShutdownBoth,
            Wire::WithUnread => Self::WithUnread,
            Wire::Unspecified => return None,
        })
    }
}

impl From<CloseMode> for crate::v1::CloseMode {
    fn from(mode: CloseMode) -> Self {
        match mode {
            CloseMode::Graceful => Self::Graceful,
            CloseMode::Abort => Self::Abort,
            CloseMode::ShutdownWrite => Self::ShutdownWrite,
            CloseMode::ShutdownRead => Self::ShutdownRead,
            CloseMode::ShutdownBoth => Self::ShutdownBoth,
            CloseMode::WithUnread => Self::WithUnread,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_survives_the_wire() {
        for mode in [
            CloseMode::Graceful,
            CloseMode::Abort,
            CloseMode::ShutdownWrite,
            CloseMode::ShutdownRead,
            CloseMode::ShutdownBoth,
            CloseMode::WithUnread,
        ] {
            let wire = crate::v1::CloseMode::from(mode) as i32;
            assert_eq!(CloseMode::from_wire(wire), Some(mode));
        }
        assert_eq!(CloseMode::from_wire(0), None);
        assert_eq!(CloseMode::from_wire(99), None);
    }
}
