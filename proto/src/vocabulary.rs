//! Words both sides of the contract use beyond the generated messages: how
//! a connection is closed, the framed messages' header, what a host can do. Defined once
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

/// What a host can do for a scenario: what an agent reports it offers
/// (`HostInfo.capabilities`), what a scenario needs (`needs = [...]`), what
/// an agent's `--allow` grants (the dangerous ones, off unless allowed).
/// On the wire and in files it is its name ([`Capability::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Holders and their sockets.
    Connections,
    /// Cutting the host (or one peer) off the network; simulated reboots.
    Isolate,
    /// Pulling the host's cable (by its agent, or its lab at the switch).
    Link,
    /// Really rebooting the host.
    Reboot,
    /// Rebooting it through its service manager (programs stopped first).
    OrderlyReboot,
    /// Making what the host sends bad (delay, loss, ...).
    Degrade,
    /// Losing what the host receives.
    Loss,
    /// Capturing the host's TCP segments (wire evidence).
    Capture,
    /// Acting on the host's other programs (kill, stop, restart, abort
    /// their connections).
    Process,
    /// Cutting the host's power (only a VM lab can).
    Power,
    /// Changing the host's TCP settings for a case (what a full accept
    /// queue does with a handshake's last ACK).
    Tune,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Self; 11] = [
        Self::Connections,
        Self::Isolate,
        Self::Link,
        Self::Reboot,
        Self::OrderlyReboot,
        Self::Degrade,
        Self::Loss,
        Self::Capture,
        Self::Process,
        Self::Power,
        Self::Tune,
    ];

    /// Those an agent's `--allow` (its config's `[allow]`) grants.
    pub const ALLOWED_BY_NAME: [Self; 6] = [
        Self::Isolate,
        Self::Link,
        Self::Reboot,
        Self::Degrade,
        Self::Process,
        Self::Tune,
    ];

    /// Those a scenario may need (every case has connections; capture is
    /// used when all its hosts offer it, never needed).
    pub const NEEDED_BY_SCENARIOS: [Self; 9] = [
        Self::Isolate,
        Self::Link,
        Self::Reboot,
        Self::OrderlyReboot,
        Self::Process,
        Self::Power,
        Self::Degrade,
        Self::Loss,
        Self::Tune,
    ];

    /// Its name, on the wire and in files.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Isolate => "isolate",
            Self::Link => "link",
            Self::Reboot => "reboot",
            Self::OrderlyReboot => "orderly-reboot",
            Self::Degrade => "degrade",
            Self::Loss => "loss",
            Self::Capture => "capture",
            Self::Process => "process",
            Self::Power => "power",
            Self::Tune => "tune",
        }
    }

    /// The capability named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|capability| capability.name() == name)
    }

    /// Whether a case that needs it needs its hosts to itself whatever the
    /// lab: it cuts them off, pulls their cables, cuts their power, reboots
    /// them or degrades their network.
    pub fn disrupts_hosts(self) -> bool {
        !matches!(self, Self::Connections | Self::Capture | Self::Process)
    }

    /// The capability access rules name it by: `orderly-reboot` goes with
    /// `reboot`, every other is its own.
    pub const fn ruled_as(self) -> Self {
        match self {
            Self::OrderlyReboot => Self::Reboot,
            other => other,
        }
    }

    /// Names, comma-separated (as `--allow` takes them).
    pub fn names(capabilities: &[Self]) -> String {
        capabilities
            .iter()
            .map(|capability| capability.name())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod capability_tests {
    use super::Capability;

    #[test]
    fn every_capability_is_found_by_its_name_and_names_are_distinct() {
        for capability in Capability::ALL {
            assert_eq!(Capability::from_name(capability.name()), Some(capability));
        }
        let mut names: Vec<_> = Capability::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Capability::ALL.len());
        assert_eq!(Capability::from_name("everything"), None);
    }
}
