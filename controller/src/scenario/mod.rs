//! Scenarios: what a case does, step by step, across its roles, and what
//! each OS is expected to answer.
//!
//! A scenario is a TOML file (see `parse`). Its steps form one timeline:
//! each step starts when the one before it has finished, on whichever host
//! its role is bound to, so every step boundary is a barrier across hosts.
//! A step marked `background` runs on while later steps go on (a flat-out
//! send that a kill interrupts); `join` waits for it. Steps marked
//! `with = "<step>"` start at the same moment as that step, on whatever
//! hosts they run (a scheduled start: see the agent's `schedule` module),
//! and the timeline goes on once all of them have ended.
//!
//! - this module: the model of a case, its steps and expectations;
//! - `actions`: what a step can do, one file per family of actions;
//! - `parse`: files in, a checked [`Scenario`] or every error out;
//! - `lower`: steps on many hosts at once (a partition) written as the
//!   one-host steps the engine plays.

mod actions;
mod lower;
pub(crate) mod parse;

pub use actions::{
    AcceptQueueOverflow, Action, CloseMode, Impairment, IsolatedConnections, IsolationDirection,
    IsolationMode, NetworkFault, Options, PartitionShape, Payload, ProcessFault, Reference,
    SocketCall, Timing, keywords,
};
pub use parse::{ScenarioError, ScenarioErrors, parse};

use faultlab_proto::Capability;
use std::collections::BTreeMap;

/// OS families an expectation can be written for (as agents report them).
pub const KNOWN_OS: &[&str] = &["linux", "windows", "macos", "freebsd"];

/// One case.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Short id, e.g. "S2".
    pub id: String,
    /// Slug, e.g. "graceful-close".
    pub name: String,
    /// One line for people.
    pub title: String,
    /// What the seed article observed, for the report.
    pub seed: Option<String>,
    /// Capabilities the case's steps need (each role's agent must offer
    /// those its own steps use).
    pub needs: Vec<String>,
    /// A role only an application under test can play (`--target`): its
    /// steps are faults done to the application, not socket calls.
    pub application: Option<String>,
    /// The whole case must end within this.
    pub timeout_ms: u64,
    /// Role names, in the order they are bound to agents.
    pub roles: Vec<String>,
    /// The timeline.
    pub steps: Vec<Step>,
    /// Where it came from (file name).
    pub source: String,
}

impl Scenario {
    /// The capabilities it needs (`needs`, checked when it was read: every
    /// name is one of [`Capability::NEEDED_BY_SCENARIOS`]).
    pub fn needed(&self) -> impl Iterator<Item = Capability> + '_ {
        self.needs
            .iter()
            .filter_map(|need| Capability::from_name(need))
    }
}

/// One step of the timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Unique in the scenario; given, or `<index>-<action>`.
    pub name: String,
    /// The role that acts (none for `sleep` and `join`).
    pub role: Option<String>,
    /// What it does.
    pub action: Action,
    /// Run on while the next steps start.
    pub background: bool,
    /// Start at the same moment as this earlier step (the first of a run of
    /// steps released together).
    pub with: Option<String>,
    /// Expectations by OS family ("linux", "windows").
    pub expect: BTreeMap<String, Expect>,
    /// Line in the file.
    pub line: usize,
}

/// How a call is expected to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedOutcome {
    /// Success.
    Ok,
    /// recv returned 0.
    Eof,
    /// An OS error.
    Error,
    /// Nothing before the deadline.
    Timeout,
    /// The call was cut short because its process died.
    HolderGone,
}

impl ExpectedOutcome {
    /// As written in scenarios and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Eof => "eof",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::HolderGone => "holder-gone",
        }
    }
}

/// What one OS is expected to answer to a step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expect {
    /// How the call ends.
    pub outcome: Option<ExpectedOutcome>,
    /// Portable error name, e.g. "ECONNRESET".
    pub error: Option<String>,
    /// Whether SIGPIPE would have been raised.
    pub sigpipe: Option<bool>,
    /// Exactly this many bytes.
    pub bytes: Option<u64>,
    /// At least this many bytes.
    pub bytes_min: Option<u64>,
    /// Fewer bytes than the named step moved.
    pub bytes_below: Option<String>,
    /// At least this many unread bytes at close.
    pub unread_bytes_min: Option<u64>,
    /// The very bytes the named step moved (as many, and the same CRC-32):
    /// a stream that arrived intact.
    pub same_bytes_as: Option<String>,
    /// A restore: its degradations dropped at least this many packets
    /// (the kernel's count).
    pub dropped_min: Option<u64>,
    /// ... and at most this many.
    pub dropped_max: Option<u64>,
    /// A restore: the share of packets its degradations dropped, in percent
    /// of those that met them, at least ...
    pub dropped_percent_min: Option<f64>,
    /// ... and at most.
    pub dropped_percent_max: Option<f64>,
    /// A `counters` step: these TCP counters of the host rose at least this
    /// much since the `counters_since` step (e.g. "Tcp.InCsumErrors" = 1).
    pub counters_increase_min: BTreeMap<String, u64>,
    /// The earlier `counters` step the increase counts from.
    pub counters_since: Option<String>,
    /// Ends at most this long after step `since` returned (its fault in force).
    pub within_ms: Option<u64>,
    /// The step `within_ms` counts from.
    pub since: Option<String>,
    /// The call itself took at least this long (a delay made it wait).
    pub took_ms_min: Option<u64>,
    /// ... and at most this long.
    pub took_ms_max: Option<u64>,
    /// Whether the role's host sends a RST from this step on (wire evidence).
    pub wire_rst: Option<bool>,
    /// Whether it sends a FIN from this step on.
    pub wire_fin: Option<bool>,
    /// Payload bytes the role's host sent on the case's connections before its first FIN.
    pub wire_bytes_before_fin: Option<u64>,
    /// Whether it sends some payload bytes again from this step on (a
    /// retransmission: what was sent was not acknowledged in time).
    pub wire_retransmits: Option<bool>,
    /// Whether it sends nothing at all from this step on (for a power cut:
    /// until its power is back).
    pub wire_silent: Option<bool>,
    /// Where this expectation comes from ("measured", "seed", ...).
    pub source: Option<String>,
}

/// A range in words: "2–5", "≥ 2", "≤ 5"; none when unbounded.
fn bounds<T: std::fmt::Display>(min: Option<T>, max: Option<T>) -> Option<String> {
    match (min, max) {
        (Some(min), Some(max)) => Some(format!("{min}–{max}")),
        (Some(min), None) => Some(format!("≥ {min}")),
        (None, Some(max)) => Some(format!("≤ {max}")),
        (None, None) => None,
    }
}

impl Expect {
    /// The expectation in a few words, e.g. "error ECONNRESET, 1000 B, no FIN".
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        match (self.outcome, &self.error) {
            (Some(outcome), Some(error)) => parts.push(format!("{} {error}", outcome.as_str())),
            (Some(outcome), None) => parts.push(outcome.as_str().to_owned()),
            (None, Some(error)) => parts.push(error.clone()),
            (None, None) => {}
        }
        if let Some(bytes) = self.bytes {
            parts.push(format!("{bytes} B"));
        }
        if let Some(bytes) = self.bytes_min {
            parts.push(format!("≥ {bytes} B"));
        }
        if let Some(step) = &self.bytes_below {
            parts.push(format!("< bytes of {step}"));
        }
        if let Some(sigpipe) = self.sigpipe {
            parts.push(if sigpipe { "SIGPIPE" } else { "no SIGPIPE" }.to_owned());
        }
        if let Some(bytes) = self.unread_bytes_min {
            parts.push(format!("≥ {bytes} B unread"));
        }
        if let Some(step) = &self.same_bytes_as {
            parts.push(format!("the bytes of {step}"));
        }
        for (name, increase) in &self.counters_increase_min {
            let since = self.counters_since.as_deref().unwrap_or("?");
            parts.push(format!("{name} +≥ {increase} since {since}"));
        }
        parts.extend(
            bounds(self.dropped_min, self.dropped_max).map(|b| format!("{b} packets dropped")),
        );
        parts.extend(
            bounds(self.dropped_percent_min, self.dropped_percent_max)
                .map(|b| format!("{b} % dropped")),
        );
        if let (Some(within), Some(since)) = (self.within_ms, &self.since) {
            parts.push(format!("within {within} ms of {since}"));
        }
        parts.extend(bounds(self.took_ms_min, self.took_ms_max).map(|b| format!("took {b} ms")));
        parts.extend(self.wire_words());
        parts.join(", ")
    }

    /// What it says of the wire, in a few words each.
    fn wire_words(&self) -> Vec<String> {
        let mut parts = Vec::new();
        for (wanted, name) in [(self.wire_rst, "RST"), (self.wire_fin, "FIN")] {
            if let Some(wanted) = wanted {
                parts.push(format!(
                    "{} {name} on the wire",
                    if wanted { "a" } else { "no" }
                ));
            }
        }
        if let Some(bytes) = self.wire_bytes_before_fin {
            parts.push(format!("FIN after {bytes} B"));
        }
        if let Some(silent) = self.wire_silent {
            parts.push(
                if silent {
                    "silent on the wire"
                } else {
                    "not silent on the wire"
                }
                .to_owned(),
            );
        }
        if let Some(again) = self.wire_retransmits {
            parts.push(
                if again {
                    "retransmits"
                } else {
                    "no retransmission"
                }
                .to_owned(),
            );
        }
        parts
    }

    /// Whether it says anything about the wire.
    pub fn checks_wire(&self) -> bool {
        self.wire_rst.is_some()
            || self.wire_fin.is_some()
            || self.wire_bytes_before_fin.is_some()
            || self.wire_retransmits.is_some()
            || self.wire_silent.is_some()
    }
}
