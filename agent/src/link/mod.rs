//! Link down/up: a pulled cable on one interface, with a deadline.
//!
//! The kernel cannot hold a deadline for a link as it does for a firewall
//! entry, so each "down" arms a watchdog: a small process, detached from the
//! agent, that brings the link back up at the deadline. If the agent dies,
//! the watchdog still does its job. The privileged part is [`LinkControl`].

#[cfg(unix)]
pub mod iproute;

use crate::timed::{Timed, TimedBook, Watchdog, armed_first};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Longest interface name (Linux IFNAMSIZ - 1).
pub const MAX_INTERFACE_CHARS: usize = 15;

/// Whether `name` can be an interface name (and is safe to pass on).
pub fn valid_interface(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INTERFACE_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// The privileged side: the host's interfaces.
pub trait LinkControl: Send + Sync {
    /// Set the link administratively down, writing down what bringing it
    /// up must put back and its deadline, `left` from now.
    fn set_down(&self, interface: &str, left: Duration) -> Result<(), LinkError>;
    /// Set it up again with what was written down, and check it is back.
    fn set_up(&self, interface: &str) -> Result<(), LinkError>;
    /// Links an earlier life of the agent took down and did not bring up,
    /// each with the time left until its deadline.
    fn leftovers(&self) -> Vec<(String, Duration)>;
    /// The interface that holds `address`, if any.
    fn interface_of(&self, address: IpAddr) -> Result<Option<String>, LinkError>;
    /// Start a watchdog that brings `interface` up after `after`.
    fn arm(&self, interface: &str, after: Duration) -> Result<Box<dyn Watchdog>, LinkError>;
    /// What the kernel says of `interface` now.
    fn state(&self, interface: &str) -> Result<LinkState, LinkError>;
}

/// An interface as the host's kernel sees it: what tells a cable plugged
/// back at the far end (the carrier) from one still out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// A carrier: the other end of the cable is there and up.
    pub carrier: bool,
    /// The kernel's operational state (RFC 2863: "up", "down",
    /// "lowerlayerdown", ...).
    pub operstate: String,
}

/// Why a link request failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The name is not an interface name.
    #[error("interface {0:?} is not a valid interface name")]
    BadName(String),
    /// The interface carries the control channel.
    #[error(
        "interface {0} carries this agent's control channel; set allow_control_interface to take it down anyway"
    )]
    ControlInterface(String),
    /// It is already down by our hand.
    #[error("interface {0} is already down; bring it up first")]
    AlreadyDown(String),
    /// No interface holds the address.
    #[error("no interface holds address {0}")]
    NoInterface(String),
    /// We did not take it down.
    #[error("interface {0} was not taken down by this agent")]
    NotDown(String),
    /// The OS refused.
    #[error("{0}")]
    System(String),
}

/// The book of links this agent took down.
pub struct Links {
    control: Box<dyn LinkControl>,
    /// By interface name (its own id).
    down: TimedBook<()>,
}

impl Links {
    /// Keep the book for `control`, with the links an earlier life of the
    /// agent left down: each kept down until its deadline under a new
    /// watchdog, or brought up now when that has passed.
    pub fn new(control: Box<dyn LinkControl>) -> Self {
        let down = TimedBook::default();
        for (interface, left) in control.leftovers() {
            let arm = |(): &(), left| control.arm(&interface, left);
            let set_up = |(): &()| control.set_up(&interface);
            down.take_over(interface.clone(), (), left, "a link down", arm, set_up);
        }
        Self { control, down }
    }

    /// Take `interface` down until `deadline`, unless it carries the control
    /// channel (`control_address` is where this request arrived) and that is
    /// not allowed. Returns when it comes back up.
    pub fn take_down(
        &self,
        interface: &str,
        deadline: Duration,
        control_address: Option<IpAddr>,
        allow_control_interface: bool,
    ) -> Result<Instant, LinkError> {
        if !valid_interface(interface) {
            return Err(LinkError::BadName(interface.to_owned()));
        }
        if !allow_control_interface
            && let Some(address) = control_address
            && self.control.interface_of(address)?.as_deref() == Some(interface)
        {
            return Err(LinkError::ControlInterface(interface.to_owned()));
        }
        let mut down = self.down.open();
        if down.contains_key(interface) {
            return Err(LinkError::AlreadyDown(interface.to_owned()));
        }
        let ((), watchdog) = armed_first(
            || self.control.arm(interface, deadline),
            || self.control.set_down(interface, deadline),
        )?;
        tracing::warn!(%interface, deadline_ms = deadline.as_millis(), "link down");
        let down_now = Timed::watched((), deadline, watchdog);
        let expires = down_now.expires;
        down.insert(interface.to_owned(), down_now);
        Ok(expires)
    }

    /// How many links this agent holds down.
    pub fn count(&self) -> usize {
        self.down.count()
    }

    /// The interface that holds `address`.
    pub fn interface_of(&self, address: IpAddr) -> Result<String, LinkError> {
        self.control
            .interface_of(address)?
            .ok_or_else(|| LinkError::NoInterface(address.to_string()))
    }

    /// What the kernel says of `interface` now.
    pub fn state(&self, interface: &str) -> Result<LinkState, LinkError> {
        if !valid_interface(interface) {
            return Err(LinkError::BadName(interface.to_owned()));
        }
        self.control.state(interface)
    }

    /// Bring `interface` back up now. It leaves the book only once it reads
    /// back up with its routes and addresses; until then a watchdog keeps
    /// its deadline.
    pub fn bring_up(&self, interface: &str) -> Result<(), LinkError> {
        self.down
            .undo(
                interface,
                |()| self.control.set_up(interface),
                |(), left| self.control.arm(interface, left),
            )
            .ok_or_else(|| LinkError::NotDown(interface.to_owned()))?
            .map_err(|failed| failed.into_error(LinkError::System))
    }

    /// Bring every link this agent took down back up: how many came up,
    /// and what did not, with why.
    pub fn bring_all_up(&self) -> (usize, Vec<String>) {
        self.down
            .undo_all("link", |interface| self.bring_up(interface))
    }
}
