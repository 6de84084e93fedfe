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

use crate::timed::{Timed, TimedBook};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
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

/// Which TCP connections of the traffic: all of them, only those being
/// opened, or only those already open.
///
/// Told apart by TCP flags, not by connection tracking: a SYN without ACK
/// opens a connection, every other TCP segment belongs to one. Conntrack
/// would need to be on before the connections it spares were opened (a
/// flow it meets mid-stream counts as `new`: measured, an open connection
/// stalled when a `ct state new drop` rule appeared in its namespace), and
/// turning it on for the cut would track every connection of a lab host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Connections {
    /// Every packet, TCP or not.
    #[default]
    All,
    /// Connection attempts: TCP segments with SYN and without ACK.
    New,
    /// Open connections: every TCP segment but those of [`Connections::New`]
    /// (a new connection's SYN passes, its SYN-ACK does not).
    Established,
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
    /// All traffic, or only TCP connections being opened or already open.
    pub connections: Connections,
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
        Connections,
        bool,
    ) {
        (
            self.mode,
            self.peer,
            self.port,
            self.peer_port,
            self.direction,
            self.connections,
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
    /// Another isolation's entry already covers part of this one (a
    /// whole-host cut while a one-peer cut is active, in one set).
    #[error(
        "another active isolation already cuts part of this traffic; heal it first (the firewall said: {0})"
    )]
    Overlaps(String),
}

/// The privileged side: the host's packet filter.
///
/// Nothing here is trusted to have worked because a command said so: the
/// book reads the filter back ([`Firewall::in_place`]) before and after each
/// undo and compares.
pub trait Firewall: Send + Sync {
    /// Remove every trace of an earlier agent; returns what was removed (for the log).
    fn clean_up(&self) -> Result<Option<String>, FirewallError>;
    /// Set up faultlab's own rules, exempting the agent's `control_port`.
    fn prepare(&self, control_port: u16) -> Result<(), FirewallError>;
    /// Cut traffic as `isolation` says, until its deadline (enforced by the kernel).
    fn add(&self, isolation: &Isolation) -> Result<(), FirewallError>;
    /// The entries `isolation` consists of, named as [`Firewall::in_place`] names them.
    fn entries(&self, isolation: &Isolation) -> Vec<String>;
    /// Every entry faultlab's rules hold now, read back from the filter.
    fn in_place(&self) -> Result<BTreeSet<String>, FirewallError>;
    /// [`Firewall::in_place`], each entry with what it matched (and
    /// dropped or rejected) while in place; `None` where the filter does
    /// not count.
    fn in_place_counted(&self) -> Result<BTreeMap<String, Option<Matched>>, FirewallError> {
        Ok(self
            .in_place()?
            .into_iter()
            .map(|entry| (entry, None))
            .collect())
    }
    /// [`Firewall::in_place_counted`], of the parts of the filter that
    /// could hold `isolation`'s entries (all of it, unless the filter can
    /// read a part alone): a heal reads less than the whole filter.
    fn in_place_of(
        &self,
        _isolation: &Isolation,
    ) -> Result<BTreeMap<String, Option<Matched>>, FirewallError> {
        self.in_place_counted()
    }
    /// Whether `entry` (one of [`Firewall::entries`]) cuts what arrives.
    fn cuts_arriving(&self, entry: &str) -> bool;
    /// Try to remove each entry of `isolation`; one already gone is no error
    /// (the caller reads back what is left).
    fn remove(&self, isolation: &Isolation) -> Result<(), FirewallError>;
    /// Remove every entry of `isolation` in one transaction, which the
    /// filter refuses whole unless each was in place: true when done (so
    /// each was), false when nothing was removed. A filter without such
    /// transactions says false.
    fn remove_at_once(&self, _isolation: &Isolation) -> bool {
        false
    }
    /// Remove every entry faultlab holds, booked or not.
    fn remove_all(&self) -> Result<(), FirewallError>;
}

/// Packets an isolation's entries matched: each one dropped or rejected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Matched {
    /// Packets.
    pub packets: u64,
    /// Their bytes (IP headers included).
    pub bytes: u64,
}

impl std::ops::Add for Matched {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            packets: self.packets.saturating_add(other.packets),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

/// What lifting one isolation found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lifted {
    /// Its entries that were still in place and are gone now.
    pub removed: Vec<String>,
    /// Its entries that were gone already (expired, or removed by hand).
    pub already_gone: Vec<String>,
    /// What it cut of the traffic arriving, and of the traffic leaving, as
    /// the filter counted it (read just before the heal); `None` where the
    /// filter does not count.
    pub cut: Option<(Matched, Matched)>,
}

/// What lifting every isolation found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiftedAll {
    /// Isolations the book held.
    pub isolations: usize,
    /// Entries removed from the filter, booked or not.
    pub entries: usize,
    /// Of them, entries no booked isolation accounts for.
    pub unbooked: Vec<String>,
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
    /// An undo left entries in place (read back after it).
    #[error("{what} is not lifted: still in place: {}{}", left.join(", "), why.as_ref().map_or_else(String::new, |why| format!(" (the firewall said: {why})")))]
    NotLifted {
        /// The isolation, or "every isolation".
        what: String,
        /// The entries still there.
        left: Vec<String>,
        /// What the firewall said when asked to remove them.
        why: Option<String>,
    },
}

/// The book of active isolations.
pub struct Isolations {
    firewall: Box<dyn Firewall>,
    /// Their deadlines are kept by the kernel, with their entries.
    active: TimedBook<Isolation>,
}

impl Isolations {
    /// Keep the book for `firewall` (already prepared).
    pub fn new(firewall: Box<dyn Firewall>) -> Self {
        Self {
            firewall,
            active: TimedBook::default(),
        }
    }

    fn clash(
        active: &HashMap<String, Timed<Isolation>>,
        isolation: &Isolation,
    ) -> Result<(), IsolateError> {
        if active.contains_key(&isolation.id) {
            return Err(IsolateError::IdInUse(isolation.id.clone()));
        }
        match active
            .values()
            .find(|entry| entry.fault.scope() == isolation.scope())
        {
            Some(other) => Err(IsolateError::SameScope(other.fault.id.clone())),
            None => Ok(()),
        }
    }

    /// How many isolations are active.
    pub fn count(&self) -> usize {
        self.active.count()
    }

    /// Whether `isolation` could be applied now.
    pub fn check(&self, isolation: &Isolation) -> Result<(), IsolateError> {
        Self::clash(&self.active.open(), isolation)
    }

    /// Apply an isolation; returns when it will lift by itself.
    pub fn isolate(&self, isolation: Isolation) -> Result<Instant, IsolateError> {
        let mut active = self.active.open();
        Self::clash(&active, &isolation)?;
        self.firewall.add(&isolation)?;
        tracing::warn!(id = %isolation.id, mode = ?isolation.mode, peer = ?isolation.peer,
            port = ?isolation.port, direction = ?isolation.direction, connections = ?isolation.connections,
            deadline_ms = isolation.deadline.as_millis(), "isolated");
        let deadline = isolation.deadline;
        let isolated = Timed::kept_by_the_kernel(isolation, deadline);
        let expires = isolated.expires;
        active.insert(isolated.fault.id.clone(), isolated);
        Ok(expires)
    }

    /// Lift one isolation: it leaves the book only once the filter, read
    /// back, no longer holds any of its entries. Entries found gone already
    /// are said, not an error.
    pub fn heal(&self, id: &str) -> Result<Lifted, IsolateError> {
        let lifted = self
            .active
            .undo_kept_by_the_kernel(id, |isolation| self.lift(isolation))
            .ok_or_else(|| IsolateError::Unknown(id.to_owned()))??;
        if lifted.already_gone.is_empty() {
            tracing::warn!(%id, "healed");
        } else {
            tracing::warn!(%id, already_gone = ?lifted.already_gone, "healed; some entries were gone already");
        }
        Ok(lifted)
    }

    /// Read what `isolation`'s entries matched, remove them, and read the
    /// filter back after.
    fn lift(&self, isolation: &Isolation) -> Result<Lifted, IsolateError> {
        let id = &isolation.id;
        let entries = self.firewall.entries(isolation);
        let before = self.firewall.in_place_of(isolation)?;
        // One transaction where the filter has them, each on its own else.
        let tried = if self.firewall.remove_at_once(isolation) {
            Ok(())
        } else {
            self.firewall.remove(isolation)
        };
        let after = self.firewall.in_place_of(isolation)?;
        let left: Vec<String> = entries
            .iter()
            .filter(|entry| after.contains_key(*entry))
            .cloned()
            .collect();
        if !left.is_empty() {
            tracing::error!(%id, left = ?left, "heal left entries in place");
            return Err(IsolateError::NotLifted {
                what: format!("isolation {id:?}"),
                left,
                why: tried.err().map(|error| error.to_string()),
            });
        }
        let mut cut: Option<(Matched, Matched)> = None;
        for entry in &entries {
            if let Some(Some(matched)) = before.get(entry) {
                let (arriving, leaving) = cut.get_or_insert_default();
                if self.firewall.cuts_arriving(entry) {
                    *arriving = *arriving + *matched;
                } else {
                    *leaving = *leaving + *matched;
                }
            }
        }
        let (removed, already_gone) = entries
            .into_iter()
            .partition(|entry| before.contains_key(entry));
        Ok(Lifted {
            removed,
            already_gone,
            cut,
        })
    }

    /// Lift every isolation, and every entry of faultlab's rules that no
    /// isolation accounts for; the book is emptied only once the filter,
    /// read back, holds nothing.
    pub fn heal_all(&self) -> Result<LiftedAll, IsolateError> {
        let mut active = self.active.open();
        let before = self.firewall.in_place()?;
        let tried = self.firewall.remove_all();
        let after = self.firewall.in_place()?;
        if !after.is_empty() {
            tracing::error!(left = ?after, "heal of every isolation left entries in place");
            return Err(IsolateError::NotLifted {
                what: "every isolation".to_owned(),
                left: after.into_iter().collect(),
                why: tried.err().map(|error| error.to_string()),
            });
        }
        let booked: BTreeSet<String> = active
            .values()
            .flat_map(|entry| self.firewall.entries(&entry.fault))
            .collect();
        let lifted = LiftedAll {
            isolations: active.len(),
            entries: before.len(),
            unbooked: before.difference(&booked).cloned().collect(),
        };
        active.clear();
        if lifted.entries > 0 || lifted.isolations > 0 {
            tracing::warn!(isolations = lifted.isolations, entries = lifted.entries, unbooked = ?lifted.unbooked, "healed all");
        }
        Ok(lifted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex;

    /// A filter in memory: entries named `ID-in` / `ID-out`; the ones in
    /// `stuck` refuse to go; every call is recorded.
    #[derive(Default)]
    struct Filter {
        held: Mutex<BTreeSet<String>>,
        stuck: Mutex<BTreeSet<String>>,
        calls: Mutex<Vec<String>>,
        /// What entries matched; none: this filter does not count.
        hits: Mutex<Option<BTreeMap<String, Matched>>>,
    }

    impl Filter {
        fn record(&self, call: String) {
            crate::sync::lock(&self.calls).push(call);
        }
        fn calls(&self) -> Vec<String> {
            crate::sync::lock(&self.calls).clone()
        }
        fn remove_by_hand(&self, entry: &str) {
            crate::sync::lock(&self.held).remove(entry);
        }
        fn put_by_hand(&self, entry: &str) {
            crate::sync::lock(&self.held).insert(entry.to_owned());
        }
        fn make_stuck(&self, entry: &str, stuck: bool) {
            let mut set = crate::sync::lock(&self.stuck);
            if stuck {
                set.insert(entry.to_owned());
            } else {
                set.remove(entry);
            }
        }
        fn drop_unless_stuck(&self, entry: &str) {
            if !crate::sync::lock(&self.stuck).contains(entry) {
                crate::sync::lock(&self.held).remove(entry);
            }
        }
    }

    impl Firewall for Arc<Filter> {
        fn clean_up(&self) -> Result<Option<String>, FirewallError> {
            Ok(None)
        }
        fn prepare(&self, _: u16) -> Result<(), FirewallError> {
            Ok(())
        }
        fn add(&self, isolation: &Isolation) -> Result<(), FirewallError> {
            self.record(format!("add {}", isolation.id));
            crate::sync::lock(&self.held).extend(self.entries(isolation));
            Ok(())
        }
        fn entries(&self, isolation: &Isolation) -> Vec<String> {
            let mut entries = Vec::new();
            if isolation.direction.inbound() {
                entries.push(format!("{}-in", isolation.id));
            }
            if isolation.direction.outbound() {
                entries.push(format!("{}-out", isolation.id));
            }
            entries
        }
        fn in_place(&self) -> Result<BTreeSet<String>, FirewallError> {
            Ok(crate::sync::lock(&self.held).clone())
        }
        fn in_place_counted(&self) -> Result<BTreeMap<String, Option<Matched>>, FirewallError> {
            let hits = crate::sync::lock(&self.hits);
            Ok(crate::sync::lock(&self.held)
                .iter()
                .map(|entry| {
                    let matched = hits
                        .as_ref()
                        .map(|hits| hits.get(entry).copied().unwrap_or_default());
                    (entry.clone(), matched)
                })
                .collect())
        }
        fn cuts_arriving(&self, entry: &str) -> bool {
            entry.ends_with("-in")
        }
        fn remove(&self, isolation: &Isolation) -> Result<(), FirewallError> {
            self.record(format!("remove {}", isolation.id));
            for entry in self.entries(isolation) {
                self.drop_unless_stuck(&entry);
            }
            Ok(())
        }
        fn remove_at_once(&self, isolation: &Isolation) -> bool {
            self.record(format!("remove at once {}", isolation.id));
            let entries = self.entries(isolation);
            let mut held = crate::sync::lock(&self.held);
            let stuck = crate::sync::lock(&self.stuck);
            // As nftables: refused whole unless each is there (and goes).
            if !entries
                .iter()
                .all(|entry| held.contains(entry) && !stuck.contains(entry))
            {
                return false;
            }
            for entry in &entries {
                held.remove(entry);
            }
            true
        }
        fn remove_all(&self) -> Result<(), FirewallError> {
            self.record("remove all".to_owned());
            let held = crate::sync::lock(&self.held).clone();
            for entry in held {
                self.drop_unless_stuck(&entry);
            }
            Ok(())
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
            connections: Connections::All,
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
        let filter = Arc::new(Filter::default());
        let book = Isolations::new(Box::new(Arc::clone(&filter)));
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
        filter.remove_by_hand("short-in");
        filter.remove_by_hand("short-out");
        assert_eq!(book.heal_all()?.isolations, 1);
        assert_eq!(
            filter.calls(),
            [
                "add a",
                "remove at once a",
                "add short",
                "add again",
                "remove all"
            ]
        );
        Ok(())
    }

    #[test]
    fn an_isolation_partly_gone_is_lifted_and_said_so() -> Result<(), IsolateError> {
        let filter = Arc::new(Filter::default());
        let book = Isolations::new(Box::new(Arc::clone(&filter)));
        book.isolate(isolation("cut", 60_000))?;
        filter.remove_by_hand("cut-in");
        let lifted = book.heal("cut")?;
        assert_eq!(lifted.removed, ["cut-out"]);
        assert_eq!(lifted.already_gone, ["cut-in"]);
        assert_eq!(
            lifted.cut, None,
            "a filter that does not count says nothing"
        );
        assert!(filter.in_place()?.is_empty());
        assert!(matches!(book.heal("cut"), Err(IsolateError::Unknown(_))));
        Ok(())
    }

    #[test]
    fn an_isolation_that_will_not_go_stays_booked_until_it_does() -> Result<(), IsolateError> {
        let filter = Arc::new(Filter::default());
        let book = Isolations::new(Box::new(Arc::clone(&filter)));
        book.isolate(isolation("cut", 60_000))?;
        filter.make_stuck("cut-out", true);
        match book.heal("cut") {
            Err(IsolateError::NotLifted { left, .. }) => assert_eq!(left, ["cut-out"]),
            other => panic!("a heal that left an entry said {other:?}"),
        }
        // Still booked: healing again is not "no such isolation".
        assert!(matches!(
            book.heal("cut"),
            Err(IsolateError::NotLifted { .. })
        ));
        filter.make_stuck("cut-out", false);
        let lifted = book.heal("cut")?;
        assert_eq!(lifted.removed, ["cut-out"]);
        assert_eq!(lifted.already_gone, ["cut-in"]);
        Ok(())
    }

    #[test]
    fn healing_everything_lifts_unbooked_entries_and_reports_what_stays() -> Result<(), IsolateError>
    {
        let filter = Arc::new(Filter::default());
        let book = Isolations::new(Box::new(Arc::clone(&filter)));
        book.isolate(isolation("cut", 60_000))?;
        filter.put_by_hand("stray-in");
        filter.make_stuck("stray-in", true);
        match book.heal_all() {
            Err(IsolateError::NotLifted { what, left, .. }) => {
                assert_eq!(what, "every isolation");
                assert_eq!(left, ["stray-in"]);
            }
            other => panic!("a heal that left an entry said {other:?}"),
        }
        filter.make_stuck("stray-in", false);
        // The book kept "cut" although its entries went: it is counted now.
        let lifted = book.heal_all()?;
        assert_eq!(lifted.isolations, 1);
        assert_eq!(lifted.entries, 1);
        assert_eq!(lifted.unbooked, ["stray-in"]);
        assert_eq!(book.heal_all()?, LiftedAll::default());
        Ok(())
    }

    #[test]
    fn a_heal_says_what_the_isolation_cut_each_way_as_counted() -> Result<(), IsolateError> {
        let filter = Arc::new(Filter::default());
        let hit = |packets, bytes| Matched { packets, bytes };
        *crate::sync::lock(&filter.hits) = Some(BTreeMap::from([
            ("cut-in".to_owned(), hit(5, 300)),
            ("cut-out".to_owned(), hit(2, 120)),
            ("other-in".to_owned(), hit(9, 900)),
        ]));
        let book = Isolations::new(Box::new(Arc::clone(&filter)));
        book.isolate(isolation("cut", 60_000))?;
        book.isolate(Isolation {
            direction: Direction::In,
            port: Some(7000),
            ..isolation("other", 60_000)
        })?;
        assert_eq!(book.heal("cut")?.cut, Some((hit(5, 300), hit(2, 120))));
        assert_eq!(book.heal("other")?.cut, Some((hit(9, 900), hit(0, 0))));
        Ok(())
    }
}
