//! Bad networks that always heal: delay (with jitter), loss, duplication,
//! reordering, corruption and a rate limit on one interface, for all its
//! traffic or only towards one peer or from one local port, until a
//! deadline.
//!
//! A degradation replaces the interface's root queueing discipline; healing
//! puts back the one it had before (written down first, in a file, since
//! the watchdog that may heal it is another process), and checks that it
//! is back: never a blind delete. It also makes TCP forget the round trips
//! it cached for the degraded path (`ip tcp_metrics`), which would
//! otherwise slow the first retransmissions of every later connection. The
//! privileged part is [`Shaper`]; the kernel's side is really tried at
//! start, so a host that cannot (no `sch_netem`) says so instead of doing
//! nothing.
//!
//! What a host *sends* is degraded by its queueing (netem): a packet netem
//! drops is lost to the sender's TCP as on a wire. What it *receives* can
//! be lost through its firewall (nftables), which needs no netem. The
//! firewall cannot drop what leaves: its drop is reported to the sending
//! socket, and TCP sends the segment again at once, so nothing is lost on
//! the wire (measured: 6 of 63 segments dropped, 0 retransmissions, every
//! byte arrived).

#[cfg(unix)]
pub mod nft;
#[cfg(unix)]
pub mod tc;

pub use crate::isolate::Cidr;
use crate::link::valid_interface;
use crate::timed::{Timed, TimedBook, Watchdog, armed_first};
pub use faultlab_proto::impairment::{DISTRIBUTIONS, Impairment};
use std::net::IpAddr;
use std::time::Duration;

/// Its netem arguments.
pub fn netem_arguments(impairment: &Impairment) -> Vec<String> {
    let mut args = Vec::new();
    let us = |duration: Duration| format!("{}us", duration.as_micros());
    if !impairment.delay.is_zero() {
        args.extend(["delay".to_owned(), us(impairment.delay)]);
        if !impairment.jitter.is_zero() {
            args.push(us(impairment.jitter));
            if let Some(distribution) = &impairment.distribution {
                args.extend(["distribution".to_owned(), distribution.clone()]);
            }
        }
    }
    let percent = |value: f64| format!("{value}%");
    if impairment.loss_percent > 0.0 && impairment.loss_burst_packets >= 1.0 {
        let (good_to_bad, bad_to_good) = impairment.gilbert();
        // netem's four-parameter model with its defaults for the rest:
        // all lost in the bad state, none in the good.
        let rounded = |value: f64| format!("{:.4}%", value);
        args.extend([
            "loss".to_owned(),
            "gemodel".to_owned(),
            rounded(good_to_bad),
            rounded(bad_to_good),
        ]);
    } else if impairment.loss_percent > 0.0 {
        args.extend(["loss".to_owned(), percent(impairment.loss_percent)]);
        if impairment.loss_correlation_percent > 0.0 {
            args.push(percent(impairment.loss_correlation_percent));
        }
    }
    for (name, value) in [
        ("duplicate", impairment.duplicate_percent),
        ("reorder", impairment.reorder_percent),
        ("corrupt", impairment.corrupt_percent),
    ] {
        if value > 0.0 {
            args.extend([name.to_owned(), percent(value)]);
        }
    }
    if impairment.rate_bits_per_second > 0 {
        args.extend([
            "rate".to_owned(),
            format!("{}bit", impairment.rate_bits_per_second),
        ]);
    }
    args
}

/// Which packets of the interface it touches (all when nothing is said).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Those arriving instead of those leaving.
    pub inbound: bool,
    /// Only those going to (arriving from) this address or network.
    pub peer: Option<Cidr>,
    /// Only those leaving from (arriving at) this local port.
    pub local_port: Option<u16>,
    /// Only those going to (arriving from) this port of the peer: with
    /// the rest, one flow.
    pub peer_port: Option<u16>,
    /// Only connection attempts: TCP segments with SYN and without ACK (a
    /// slow or lossy connection open; what is open is left alone).
    pub connection_attempts: bool,
}

/// What a degradation did to the interface as soon as it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The kernel's own words, read back after (qdiscs or rules).
    pub report: String,
    /// How it was made (e.g. "tc netem (prio + u32 filter)").
    pub mechanism: &'static str,
}

/// A host's ways of degrading, each found by really trying it; why not,
/// when one is missing.
pub struct Shapers {
    /// For what the host sends (netem).
    pub outbound: Result<Box<dyn Shaper>, String>,
    /// For what it receives (loss only, by a firewall).
    pub inbound: Result<Box<dyn Shaper>, String>,
}

/// Why a degradation request failed.
#[derive(Debug, thiserror::Error)]
pub enum DegradeError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The interface is degraded already.
    #[error("interface {0} is degraded already; restore it first")]
    AlreadyDegraded(String),
    /// Nothing is degraded under that id.
    #[error("no degradation {0:?} on this agent")]
    NotDegraded(String),
    /// This host's way of degrading cannot do that.
    #[error("{0}")]
    Unsupported(String),
    /// The OS refused, or healing did not put back what was there.
    #[error("{0}")]
    System(String),
}

/// What a degradation did, counted by the kernel until it was healed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Healed {
    /// The kernel's own words (e.g. `tc -s qdisc`), for people.
    pub report: String,
    /// Packets that went through it and were sent on (duplicates included).
    pub sent: u64,
    /// Packets it dropped.
    pub dropped: u64,
}

/// The privileged side: an interface's queueing.
pub trait Shaper: Send + Sync {
    /// How it degrades, for reports (e.g. "tc netem (prio + u32 filter)").
    fn mechanism(&self) -> &'static str;
    /// What it cannot do, if anything (checked before degrading).
    fn cannot(&self, impairment: &Impairment, selection: &Selection) -> Option<String>;
    /// Write down the interface's queueing, then degrade it (until
    /// `deadline`, where the kernel keeps deadlines itself); what the
    /// kernel then reports (qdiscs and counters).
    fn degrade(
        &self,
        id: &str,
        interface: &str,
        impairment: &Impairment,
        selection: &Selection,
        deadline: Duration,
    ) -> Result<String, DegradeError>;
    /// Put back what was written down and check it is back; the counters
    /// of the degradation just before it went.
    fn heal(&self, interface: &str) -> Result<Healed, DegradeError>;
    /// Start a watchdog that heals `interface` after `after`.
    fn arm(&self, interface: &str, after: Duration) -> Result<Box<dyn Watchdog>, DegradeError>;
    /// What an earlier life of the agent left degraded.
    fn leftovers(&self) -> Vec<Earlier>;
    /// The interface that holds `address`, if any.
    fn interface_of(&self, address: IpAddr) -> Result<Option<String>, DegradeError>;
}

/// A degradation an earlier life of the agent made, found by the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Earlier {
    /// Its interface.
    pub interface: String,
    /// The time left until its deadline (zero when unknown or past).
    pub left: Duration,
    /// The id it was asked under, when known: the next agent keeps it under
    /// that id, so the caller's restore finds it.
    pub id: Option<String>,
}

/// A degradation in the book: where it is.
struct Degraded {
    interface: String,
    inbound: bool,
}

/// The book of degradations this agent made.
pub struct Degradations {
    shapers: Shapers,
    active: TimedBook<Degraded>,
}

impl Degradations {
    /// Keep the book for `shapers`, with what an earlier life of the agent
    /// left degraded: each kept until its deadline under a new watchdog, or
    /// healed now when that has passed or is unknown.
    pub fn new(shapers: Shapers) -> Self {
        let active = TimedBook::default();
        for (shaper, inbound) in [(&shapers.outbound, false), (&shapers.inbound, true)] {
            let Ok(shaper) = shaper else { continue };
            for Earlier {
                interface,
                left,
                id,
            } in shaper.leftovers()
            {
                let id = id.unwrap_or_else(|| format!("earlier-{interface}"));
                let arm = |degraded: &Degraded, left| shaper.arm(&degraded.interface, left);
                let heal = |degraded: &Degraded| shaper.heal(&degraded.interface).map(|_| ());
                let degraded = Degraded { interface, inbound };
                active.take_over(id, degraded, left, "a degradation", arm, heal);
            }
        }
        Self { shapers, active }
    }

    /// The way of degrading packets that leave (`inbound`: arrive).
    fn shaper(&self, inbound: bool) -> Result<&dyn Shaper, DegradeError> {
        let (shaper, what) = if inbound {
            (&self.shapers.inbound, "what this host receives")
        } else {
            (&self.shapers.outbound, "what this host sends")
        };
        shaper.as_deref().map_err(|why| {
            DegradeError::Unsupported(format!("this host cannot degrade {what}: {why}"))
        })
    }

    /// Degrade `interface` until `deadline` (a watchdog heals it even if the
    /// agent dies); what the kernel reports it applied.
    pub fn degrade(
        &self,
        id: &str,
        interface: &str,
        impairment: &Impairment,
        selection: &Selection,
        deadline: Duration,
    ) -> Result<Applied, DegradeError> {
        if !valid_interface(interface) {
            return Err(DegradeError::Invalid(format!(
                "interface {interface:?} is not a valid interface name"
            )));
        }
        if let Some(problem) = impairment.problem() {
            return Err(DegradeError::Invalid(problem.to_string()));
        }
        let shaper = self.shaper(selection.inbound)?;
        if let Some(missing) = shaper.cannot(impairment, selection) {
            return Err(DegradeError::Unsupported(missing));
        }
        let mut active = self.active.open();
        if active.contains_key(id) {
            return Err(DegradeError::Invalid(format!(
                "degradation id {id:?} is in use"
            )));
        }
        if active.values().any(|entry| {
            entry.fault.interface == interface && entry.fault.inbound == selection.inbound
        }) {
            return Err(DegradeError::AlreadyDegraded(interface.to_owned()));
        }
        let (report, watchdog) = armed_first(
            || shaper.arm(interface, deadline),
            || shaper.degrade(id, interface, impairment, selection, deadline),
        )?;
        tracing::warn!(%interface, inbound = selection.inbound, deadline_ms = deadline.as_millis(), "degraded");
        let degraded = Degraded {
            interface: interface.to_owned(),
            inbound: selection.inbound,
        };
        active.insert(id.to_owned(), Timed::watched(degraded, deadline, watchdog));
        Ok(Applied {
            report,
            mechanism: shaper.mechanism(),
        })
    }

    /// How many degradations are active.
    pub fn count(&self) -> usize {
        self.active.count()
    }

    /// The interface named, or the one holding `address` when none is.
    pub fn interface(&self, interface: &str, address: &str) -> Result<String, DegradeError> {
        if !interface.is_empty() {
            return Ok(interface.to_owned());
        }
        let parsed: IpAddr = address.parse().map_err(|_| {
            DegradeError::Invalid(format!(
                "interface or address: give an interface name, or an IP address ({address:?} is neither)"
            ))
        })?;
        let shaper = self.shaper(false).or_else(|_| self.shaper(true))?;
        shaper
            .interface_of(parsed)?
            .ok_or_else(|| DegradeError::Invalid(format!("address: no interface holds {address}")))
    }

    /// Heal the degradation `id` now; its counters just before. It leaves
    /// the book only once the interface reads back as it was; until then a
    /// watchdog keeps its deadline.
    pub fn heal(&self, id: &str) -> Result<Healed, DegradeError> {
        let inbound = self
            .active
            .open()
            .get(id)
            .map(|entry| entry.fault.inbound)
            .ok_or_else(|| DegradeError::NotDegraded(id.to_owned()))?;
        let shaper = self.shaper(inbound)?;
        self.active
            .undo(
                id,
                |degraded| shaper.heal(&degraded.interface),
                |degraded, left| shaper.arm(&degraded.interface, left),
            )
            .ok_or_else(|| DegradeError::NotDegraded(id.to_owned()))?
            .map_err(|failed| failed.into_error(DegradeError::System))
    }

    /// Heal every degradation: how many were healed, and what was not,
    /// with why.
    pub fn heal_all(&self) -> (usize, Vec<String>) {
        self.active.undo_all("degradation", |id| self.heal(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(ms: u64) -> Impairment {
        Impairment {
            delay: Duration::from_millis(ms),
            ..Impairment::default()
        }
    }

    #[test]
    fn netem_gets_what_was_asked_and_nothing_else() {
        let impairment = Impairment {
            jitter: Duration::from_millis(20),
            distribution: Some("normal".to_owned()),
            loss_percent: 10.0,
            loss_correlation_percent: 25.0,
            rate_bits_per_second: 1_000_000,
            ..delay(200)
        };
        assert_eq!(
            netem_arguments(&impairment).join(" "),
            "delay 200000us 20000us distribution normal loss 10% 25% rate 1000000bit"
        );
        assert_eq!(netem_arguments(&delay(5)).join(" "), "delay 5000us");
        // 10 % in runs of 4: a run ends with 25 % per packet, and starts
        // with 25 × 10/90 = 2.7778 %.
        let bursts = Impairment {
            loss_percent: 10.0,
            loss_burst_packets: 4.0,
            ..Impairment::default()
        };
        assert_eq!(bursts.problem(), None);
        assert_eq!(
            netem_arguments(&bursts).join(" "),
            "loss gemodel 2.7778% 25.0000%"
        );
        assert!(!bursts.is_plain_loss());
    }
}
