//! Network isolation: cut the host, one peer or one port off the network
//! until a deadline.
//!
//! Safety first: every isolation has a deadline that the *kernel* enforces
//! (the backend stores it with the rule), so it lifts even if the agent is
//! killed; the agent's own gRPC port stays reachable unless a request says
//! otherwise; and at start the agent removes whatever an earlier life left.
//!
//! The privileged part is the [`Firewall`] trait; [`nftables`] is the Linux
//! backend, [`windows_firewall`] the Windows one (compiled everywhere so its
//! scripts are tested on Linux too; chosen in `platform/windows.rs`). [`Isolations`] keeps the book of what is active, by the ids the
//! controller chose.

pub mod nftables;
pub mod windows_firewall;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Drop (silence) or reject (RST / ICMP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Packets vanish.
    Drop,
    /// TCP gets RST, the rest ICMP admin-prohibited.
    Reject,
}

/// Which traffic of this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Arriving.
    In,
    /// Leaving.
    Out,
    /// Both.
    Both,
}

impl Direction {
    /// Whether inbound traffic is cut.
    pub fn inbound(self) -> bool {
        matches!(self, Self::In | Self::Both)
    }

    /// Whether outbound traffic is cut.
    pub fn outbound(self) -> bool {
        matches!(self, Self::Out | Self::Both)
    }
}

/// An address with a prefix length (a CIDR block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The address.
    pub address: IpAddr,
    /// Prefix length (0..=32 or 0..=128).
    pub prefix: u8,
}

impl Cidr {
    /// Parse "198.18.0.3" (a single host) or "198.18.0.0/24".
    pub fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address.parse().ok()?, Some(prefix.parse().ok()?)),
            None => (text.parse().ok()?, None),
        };
        let max = match address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { address, prefix })
    }

    /// The block's first address: host bits cleared ("198.18.1.5/24" is
    /// 198.18.1.0/24).
    pub fn network(self) -> Self {
        let address = match self.address {
            IpAddr::V4(address) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::from((u32::from(address) & mask).to_be_bytes())
            }
            IpAddr::V6(address) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::from((u128::from(address) & mask).to_be_bytes())
            }
        };
        Self { address, ..self }
    }

    /// Whether it is an IPv6 block.
    pub fn is_v6(self) -> bool {
        self.address.is_ipv6()
    }

    /// Every address of a family.
    pub fn everything(v6: bool) -> Self {
        Self {
            address: if v6 {
                IpAddr::from([0u16; 8])
            } else {
                IpAddr::from([0u8; 4])
            },
            prefix: 0,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// One isolation as requested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// The caller's name for it.
    pub id: String,
    /// Drop or reject.
    pub mode: Mode,
    /// Only this peer; `None` = every peer.
    pub peer: Option<Cidr>,
    /// Only this local port; `None` = all traffic.
    pub port: Option<u16>,
    /// Only this port at the peer's end (with one peer address and `port`:
    /// exactly one flow, a 4-tuple).
    pub peer_port: Option<u16>,
    /// In, out or both.
    pub direction: Direction,
    /// Lifts by itself after this.
    pub deadline: Duration,
    /// Cut the agent's gRPC port too.
    pub include_control_channel: bool,
}

impl Isolation {
    /// What it matches, without its id and deadline: two isolations with the
    /// same scope would share firewall entries, so only one may be active.
    fn scope(
        &self,
    ) -> (
        Mode,
        Option<Cidr>,
        Option<u16>,
        Option<u16>,
        Direction,
        bool,
    ) {
        (
            self.mode,
            self.peer,
            self.port,
            self.peer_port,
            self.direction,
            self.include_control_channel,
        )
    }
}

/// What the firewall backend reports.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The backend's tool is missing or refused (not root, no nft).
    #[error("the firewall is not usable here: {0}")]
    Unavailable(String),
    /// The backend refused a change.
    #[error("the firewall refused the change: {0}")]
    Refused(String),
}

/// The privileged side: the host's packet filter.
pub trait Firewall: Send + Sync {
    /// Remove every trace of an earlier agent; returns what was removed (for the log).
    fn clean_up(&self) -> Result<Option<String>, FirewallError>;
    /// Set up faultlab's own rules, exempting the agent's `control_port`.
    fn prepare(&self, control_port: u16) -> Result<(), FirewallError>;
    /// Cut traffic as `isolation` says, until its deadline (enforced by the kernel).
    fn add(&self, isolation: &Isolation) -> Result<(), FirewallError>;
    /// Lift it (an already expired isolation is not an error).
    fn remove(&self, isolation: &Isolation) -> Result<(), FirewallError>;
}

/// Why an isolation request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IsolateError {
    /// The id is in use.
    #[error("isolation {0:?} is already active; heal it first or use another id")]
    IdInUse(String),
    /// Another isolation cuts the same traffic.
    #[error("isolation {0:?} already cuts the same traffic")]
    SameScope(String),
    /// No such isolation is active.
    #[error("no active isolation {0:?}")]
    Unknown(String),
    /// The firewall failed.
    #[error(transparent)]
    Firewall(#[from] FirewallError),
}

struct Active {
    isolation: Isolation,
    expires: Instant,
}

/// The book of active isolations.
pub struct Isolations {
    firewall: Box<dyn Firewall>,
    active: Mutex<HashMap<String, Active>>,
}

impl Isolations {
    /// Keep the book for `firewall` (already prepared).
    pub fn new(firewall: Box<dyn Firewall>) -> Self {
        Self {
            firewall,
            active: Mutex::new(HashMap::new()),
        }
    }

    fn active(&self) -> MutexGuard<'_, HashMap<String, Active>> {
        let mut active = crate::sync::lock(&self.active);
        let now = Instant::now();
        active.retain(|_, entry| entry.expires > now);
        active
    }

    fn clash(active: &HashMap<String, Active>, isolation: &Isolation) -> Result<(), IsolateError> {
        if active.contains_key(&isolation.id) {
            return Err(IsolateError::IdInUse(isolation.id.clone()));
        }
        match active
            .values()
            .find(|entry| entry.isolation.scope() == isolation.scope())
        {
            Some(other) => Err(IsolateError::SameScope(other.isolation.id.clone())),
            None => Ok(()),
        }
    }

    /// Whether `isolation` could be applied now.
    pub fn check(&self, isolation: &Isolation) -> Result<(), IsolateError> {
        Self::clash(&self.active(), isolation)
    }

    /// Apply an isolation; returns when it will lift by itself.
    pub fn isolate(&self, isolation: Isolation) -> Result<Instant, IsolateError> {
        let mut active = self.active();
        Self::clash(&active, &isolation)?;
        let expires = Instant::now() + isolation.deadline;
        self.firewall.add(&isolation)?;
        tracing::warn!(id = %isolation.id, mode = ?isolation.mode, peer = ?isolation.peer,
            port = ?isolation.port, direction = ?isolation.direction,
            deadline_ms = isolation.deadline.as_millis(), "isolated");
        active.insert(isolation.id.clone(), Active { isolation, expires });
        Ok(expires)
    }

    /// Lift one isolation.
    pub fn heal(&self, id: &str) -> Result<(), IsolateError> {
        let entry = self
            .active()
            .remove(id)
            .ok_or_else(|| IsolateError::Unknown(id.to_owned()))?;
        self.firewall.remove(&entry.isolation)?;
        tracing::warn!(%id, "healed");
        Ok(())
    }

    /// Lift every isolation; returns how many were active.
    pub fn heal_all(&self) -> Result<usize, IsolateError> {
        let entries: Vec<Active> = self.active().drain().map(|(_, entry)| entry).collect();
        for entry in &entries {
            self.firewall.remove(&entry.isolation)?;
        }
        if !entries.is_empty() {
            tracing::warn!(count = entries.len(), "healed all");
        }
        Ok(entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Records what the book asks of the firewall.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
    }

    impl Firewall for Arc<Recorder> {
        fn clean_up(&self) -> Result<Option<String>, FirewallError> {
            Ok(None)
        }
        fn prepare(&self, _: u16) -> Result<(), FirewallError> {
            Ok(())
        }
        fn add(&self, isolation: &Isolation) -> Result<(), FirewallError> {
            self.calls.lock().map_or(Ok(()), |mut calls| {
                calls.push(format!("add {}", isolation.id));
                Ok(())
            })
        }
        fn remove(&self, isolation: &Isolation) -> Result<(), FirewallError> {
            self.calls.lock().map_or(Ok(()), |mut calls| {
                calls.push(format!("remove {}", isolation.id));
                Ok(())
            })
        }
    }

    fn isolation(id: &str, deadline_ms: u64) -> Isolation {
        Isolation {
            id: id.to_owned(),
            mode: Mode::Drop,
            peer: None,
            port: None,
            peer_port: None,
            direction: Direction::Both,
            deadline: Duration::from_millis(deadline_ms),
            include_control_channel: false,
        }
    }

    #[test]
    fn cidrs_parse_hosts_and_blocks() {
        assert_eq!(
            Cidr::parse("198.18.0.3").map(|c| c.to_string()),
            Some("198.18.0.3/32".to_owned())
        );
        assert_eq!(Cidr::parse("198.18.0.0/15").map(|c| c.prefix), Some(15));
        assert_eq!(Cidr::parse("::1").map(|c| c.prefix), Some(128));
        assert!(Cidr::parse("198.18.0.0/33").is_none());
        assert!(Cidr::parse("host").is_none());
    }

    #[test]
    fn the_book_refuses_clashes_and_forgets_what_expired() -> Result<(), IsolateError> {
        let recorder = Arc::new(Recorder::default());
        let book = Isolations::new(Box::new(Arc::clone(&recorder)));
        book.isolate(isolation("a", 60_000))?;
        assert!(matches!(
            book.isolate(isolation("a", 10)),
            Err(IsolateError::IdInUse(_))
        ));
        assert!(matches!(
            book.isolate(isolation("b", 10)),
            Err(IsolateError::SameScope(_))
        ));
        book.heal("a")?;
        assert!(matches!(book.heal("a"), Err(IsolateError::Unknown(_))));
        book.isolate(isolation("short", 1))?;
        std::thread::sleep(Duration::from_millis(5));
        // Expired: the kernel lifted it; the book forgets it and allows the scope again.
        book.isolate(isolation("again", 60_000))?;
        assert_eq!(book.heal_all()?, 1);
        let calls = recorder
            .calls
            .lock()
            .map(|calls| calls.clone())
            .unwrap_or_default();
        assert_eq!(
            calls,
            [
                "add a",
                "remove a",
                "add short",
                "add again",
                "remove again"
            ]
        );
        Ok(())
    }
}
