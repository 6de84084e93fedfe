//! What a run found, in the shape every output shares: the terminal table,
//! JSON (`faultlab.run/1`, documented in docs/reports.md), JUnit XML and the history.

pub mod html;
pub mod junit;
pub mod ladder;
pub mod terminal;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Identifies the JSON layout; bump when a field changes meaning.
pub const SCHEMA: &str = "faultlab.run/1";

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Unique id of the run.
    pub run_id: String,
    /// Wall clock at the start, ms since the Unix epoch.
    pub started_unix_ms: i64,
    /// Wall clock at the end.
    pub finished_unix_ms: i64,
    /// Which suite or files ran.
    pub suite: String,
    /// The agents, with their hosts.
    pub agents: Vec<AgentReport>,
    /// One entry per case and agent binding.
    pub cases: Vec<CaseReport>,
    /// Counts by verdict.
    pub summary: Summary,
    /// The run's OpenTelemetry trace id (hex), when traces were exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The run's trace in a trace viewer ([`RunReport::link_traces`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_url: Option<String>,
}

/// An agent as the run saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    /// Name in the inventory.
    pub name: String,
    /// gRPC address.
    pub address: String,
    /// Address used for test traffic.
    pub test_ip: String,
    /// Host name.
    pub hostname: String,
    /// "linux", "windows", ...
    pub os_family: String,
    /// Distribution / product and version.
    pub os_version: String,
    /// Kernel version.
    pub kernel_version: String,
    /// CPU architecture.
    pub arch: String,
    /// Agent version.
    pub agent_version: String,
    /// Boot id.
    pub boot_id: String,
    /// Capabilities offered.
    pub capabilities: Vec<String>,
    /// Agent monotonic clock minus the run clock, ns (t_ns = agent mono − offset).
    pub clock_offset_ns: i64,
    /// Round trip of the best clock sample, ns (the offset's uncertainty is half of it).
    pub clock_rtt_ns: u64,
    /// How fast its clock drifted from the run clock over the run, in parts
    /// per billion (+: ran fast): from this boot's first offset to its
    /// latest (offsets older than 30 s are measured again before a case).
    /// Absent when measured once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_drift_ppb: Option<i64>,
    /// How far `clock_drift_ppb` can be off: the two offsets' errors over
    /// the time between them (a 1 ms round trip over 30 s is ±33 ppm; over
    /// 10 minutes ±1.7 ppm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_drift_error_ppb: Option<u64>,
}

/// The verdict on one case.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Everything matched the expectations for the hosts' OSes.
    Expected,
    /// Something differed; `differences` says what.
    Differs,
    /// The case could not be carried out (a request failed).
    Error,
    /// Not run: its needs are not met (`reason`).
    #[default]
    Skipped,
    /// An agent stopped answering during the case.
    AgentLost,
    /// The case ran out of time.
    Timeout,
}

impl Verdict {
    /// As written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expected => "expected",
            Self::Differs => "differs",
            Self::Error => "error",
            Self::Skipped => "skipped",
            Self::AgentLost => "agent-lost",
            Self::Timeout => "timeout",
        }
    }
}

/// One case run on one binding of roles to agents (by default: skipped,
/// with nothing seen).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CaseReport {
    /// Case id, e.g. "S2".
    pub id: String,
    /// Slug.
    pub name: String,
    /// One line.
    pub title: String,
    /// What the seed article saw.
    pub seed: Option<String>,
    /// Role → agent name.
    pub roles: BTreeMap<String, String>,
    /// OS families in role order, joined by "/": "linux/windows".
    pub os_pair: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why it was skipped, errored, lost or timed out.
    pub reason: Option<String>,
    /// What differed from the expectations.
    pub differences: Vec<String>,
    /// What each step's call returned, in order.
    pub observations: Vec<ObservationReport>,
    /// Whether the agents captured the case's packets (wire expectations are
    /// checked only then).
    pub wire_evidence: bool,
    /// The TCP segments each host saw on the case's connections, by time.
    pub wire: Vec<WireReport>,
    /// Hosts whose capture missed packets, and how many (the kernel had no
    /// room while the capture fell behind a flood, or the capture's cap of
    /// 100 000 segments was reached): their wire evidence is incomplete.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wire_missed: BTreeMap<String, u64>,
    /// For a case that ended `agent-lost` or `timeout`, by agent: where
    /// its lab keeps the host's logs (a VM's console and agent log) and
    /// their last lines.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_logs: BTreeMap<String, String>,
    /// What the case's cleanup could not confirm undone: each line names
    /// the fault, its host, why, and the `faultlab heal` command to run.
    /// Never empty for a case that says so in its verdict (`error` or
    /// `agent-lost`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_in_place: Vec<String>,
    /// When the case began, in ms after the run's clock started (cases on
    /// disjoint hosts may overlap).
    #[serde(default)]
    pub started_ms: u64,
    /// The hosts' clocks checked against the wire: segments seen leaving
    /// one host and arriving at another must arrive after they left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_check: Option<ClockCheck>,
    /// Wall time of the case.
    pub duration_ms: u64,
    /// The case's span id (hex) in the run's trace, when traces were exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The case in a trace viewer ([`RunReport::link_traces`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_url: Option<String>,
    /// Health probes of the applications under test, after the case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeReport>,
    /// Steps whose expectations were not checked, and why (an application
    /// played a role: what it did is its own business, and the probe judges it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchecked: Vec<String>,
}

impl CaseReport {
    /// The observation that carries the case's point, for one-line
    /// summaries: of the checked steps, a socket call's (what the
    /// application would see) before a fault's or a timer's (a `restore`
    /// checked for its counters is not the point of D1, its connect is),
    /// and of those the one that ended last (a read blocked since before a
    /// close ends with the EOF the case is about, after that close).
    pub fn telling_observation(&self) -> Option<&ObservationReport> {
        let socket_call = |observation: &&ObservationReport| {
            matches!(
                observation.call.as_str(),
                "connect" | "accept" | "send" | "recv" | "close" | "shutdown" | "watch"
            )
        };
        let ended = |observation: &&ObservationReport| {
            observation
                .t_ns
                .saturating_add(i64::try_from(observation.duration_ns).unwrap_or(i64::MAX))
        };
        let checked = || {
            self.observations
                .iter()
                .filter(|observation| observation.checked.is_some())
        };
        checked()
            .filter(socket_call)
            .max_by_key(ended)
            .or_else(|| checked().max_by_key(ended))
    }
}

/// Whether an application survived a case and freed its connections.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The role the application played.
    pub role: String,
    /// The target's name.
    pub target: String,
    /// Its address.
    pub address: String,
    /// The agent that made the fresh connection.
    pub from: String,
    /// Whether the fresh connection (and request/reply, if any) succeeded.
    pub healthy: bool,
    /// How long connecting took, ms.
    pub connect_ms: Option<u64>,
    /// The reply received (text, at most 200 characters).
    pub reply: Option<String>,
    /// The probe's own end of its connection (left out of the socket counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_address: Option<String>,
    /// Sockets of the application's port by state (listeners left out),
    /// from the agent on its host, once within bounds or at the time bound.
    pub sockets: BTreeMap<String, u32>,
    /// What was wrong; empty when the probe passed.
    pub problems: Vec<String>,
    /// How long the probe took, ms.
    pub duration_ms: u64,
}

/// What one step's call returned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservationReport {
    /// The step's name.
    pub step: String,
    /// The agent (host) that acted.
    pub host: String,
    /// The role.
    pub role: String,
    /// The call: connect, accept, send, recv, close, shutdown, watch, listen, exit, kill, ...
    pub call: String,
    /// Bytes moved.
    pub bytes: u64,
    /// ok, eof, error, timeout, holder-gone.
    pub outcome: String,
    /// Raw OS error code (0 if none).
    pub errno: i32,
    /// Portable name ("ECONNRESET").
    pub errno_name: String,
    /// SIGPIPE would have been raised.
    pub sigpipe: bool,
    /// Unread bytes at close.
    pub unread_bytes: u64,
    /// Start of the call on the run clock (ns since the run started).
    pub t_ns: i64,
    /// How long the call took.
    pub duration_ns: u64,
    /// Which expectation was checked ("linux (measured)"), if any.
    pub checked: Option<String>,
    /// What that expectation asked, in words.
    pub expected: Option<String>,
    /// For a step released together with others (`with`): the moment they
    /// were all to act, on the run clock. `t_ns` minus this is how late
    /// this one really acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_ns: Option<i64>,
    /// What a fault really did, as the host reported it: a degradation's
    /// qdiscs as read back from the kernel, its counters when restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Send and recv: CRC-32 of the bytes the call moved (a reader's equals
    /// its sender's when the stream arrived intact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_crc32: Option<u32>,
    /// A restore: packets its degradations sent on (duplicates included),
    /// as the kernel counted them (a heal: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_sent_packets: Option<u64>,
    /// ... and packets they dropped; a heal: packets its isolations
    /// dropped or rejected, both ways, by the firewall's own counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_dropped_packets: Option<u64>,
    /// A call that was waiting when the FIN (EOF) or RST (ECONNRESET) that
    /// ended it reached its host: how long after that arrival it ended, and
    /// how far that can be off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<Detection>,
    /// How far `t_ns` can be off as a time on the run's axis, next to other
    /// hosts' times: the host's clock-offset error (± half the round trip of
    /// the sample the offset came from), in ns. Times of one host compared
    /// with each other do not carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_uncertainty_ns: Option<u64>,
}

/// How long after a FIN or RST reached a host the call waiting for it there
/// ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detection {
    /// From the segment's arrival to the call's end, in ns. Never negative
    /// when the times are right (beyond `uncertainty_ns`).
    pub after_arrival_ns: i64,
    /// How far `after_arrival_ns` can be off, in ns.
    pub uncertainty_ns: u64,
    /// Which clocks the two times come from.
    pub clocks: DetectionClocks,
}

/// Where a detection's arrival time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetectionClocks {
    /// The reader's own host's capture: one clock, no offset involved; the
    /// uncertainty is the stamps' own (see [`SAME_HOST_UNCERTAINTY_NS`]).
    SameHost,
    /// The reader's host captured nothing (it lost its capture): the
    /// segment leaving its sender, by the sender's capture, so two clocks
    /// (their offsets' errors together) and the time on the wire.
    CrossHost,
}

/// How far a same-host detection can be off: the kernel stamps packets in
/// its real-time clock and the agent converts them to the monotonic clock
/// of observations when the kernel hands them over, at most about 2 ms
/// later (measured); at the 500 ppm a clock may be slewed by NTP at most,
/// that conversion is off by at most 1 µs.
pub const SAME_HOST_UNCERTAINTY_NS: u64 = 1_000;

/// Causality on the wire, after each host's clock offset is applied: a
/// segment seen by its sender's capture and by its receiver's must be
/// received after it was sent. By how much that fails (worst segment) says
/// how wrong the offsets are; it should stay within their stated error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockCheck {
    /// Segments seen on both ends.
    pub segments: u64,
    /// The worst segment's receive time before its send time, in ns
    /// (negative: every segment arrived after it left, the worst by this
    /// little).
    pub worst_violation_ns: i64,
    /// The stated error of that segment's two hosts' offsets together (the
    /// sum of their `clock_uncertainty_ns`), in ns.
    pub uncertainty_ns: u64,
}

impl ClockCheck {
    /// Whether the worst violation is within the offsets' stated error.
    pub fn within_uncertainty(&self) -> bool {
        self.worst_violation_ns <= i64::try_from(self.uncertainty_ns).unwrap_or(i64::MAX)
    }
}

/// One TCP segment as one host saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireReport {
    /// The agent (host) whose capture saw it.
    pub host: String,
    /// When, on the run clock.
    pub t_ns: i64,
    /// Sender address:port.
    pub source: String,
    /// Receiver address:port.
    pub destination: String,
    /// tcpdump-style flags: "S", "S.", "P.", "F.", "R" ...
    pub flags: String,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Payload bytes.
    pub payload: u32,
}

#[cfg(test)]
impl WireReport {
    /// A bare segment (seq and ack 1, no payload) as `host` saw it, for tests.
    pub(crate) fn seen(
        host: &str,
        t_ns: i64,
        source: &str,
        destination: &str,
        flags: &str,
    ) -> Self {
        Self {
            host: host.to_owned(),
            t_ns,
            source: source.to_owned(),
            destination: destination.to_owned(),
            flags: flags.to_owned(),
            seq: 1,
            ack: 1,
            payload: 0,
        }
    }
}

/// Counts by verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// All cases.
    pub total: usize,
    /// Verdict `expected`.
    pub expected: usize,
    /// Verdict `differs`.
    pub differs: usize,
    /// Verdict `error`.
    pub error: usize,
    /// Verdict `skipped`.
    pub skipped: usize,
    /// Verdict `agent-lost`.
    pub agent_lost: usize,
    /// Verdict `timeout`.
    pub timeout: usize,
}

impl Summary {
    /// "15 cases: 15 expected, 0 differs, ...", as the reports say it.
    pub fn counts(&self) -> String {
        format!(
            "{} {}: {} expected, {} differs, {} error, {} skipped, {} agent-lost, {} timeout",
            self.total,
            if self.total == 1 { "case" } else { "cases" },
            self.expected,
            self.differs,
            self.error,
            self.skipped,
            self.agent_lost,
            self.timeout
        )
    }

    /// Count the verdicts of `cases`.
    pub fn of(cases: &[CaseReport]) -> Self {
        let mut summary = Self {
            total: cases.len(),
            ..Self::default()
        };
        for case in cases {
            *match case.verdict {
                Verdict::Expected => &mut summary.expected,
                Verdict::Differs => &mut summary.differs,
                Verdict::Error => &mut summary.error,
                Verdict::Skipped => &mut summary.skipped,
                Verdict::AgentLost => &mut summary.agent_lost,
                Verdict::Timeout => &mut summary.timeout,
            } += 1;
        }
        summary
    }
}

impl RunReport {
    /// Point the run and each case at a trace viewer: `template` is a URL
    /// in which `{trace_id}` and `{span_id}` are replaced (for the run,
    /// `{span_id}` is empty), e.g. Jaeger's
    /// `http://localhost:16686/trace/{trace_id}?uiFind={span_id}`.
    /// Nothing changes when the run has no trace id.
    pub fn link_traces(&mut self, template: &str) {
        let Some(trace_id) = self.trace_id.clone() else {
            return;
        };
        let link = |span_id: &str| {
            template
                .replace("{trace_id}", &trace_id)
                .replace("{span_id}", span_id)
        };
        self.trace_url = Some(link(""));
        for case in &mut self.cases {
            case.trace_url = case.span_id.as_deref().map(link);
        }
    }

    /// Whether the run passed: every case `expected`, or `skipped` unless
    /// `strict` (a skipped case needs a capability the lab did not grant;
    /// it says nothing about the software under test).
    pub fn passed(&self, strict: bool) -> bool {
        self.cases.iter().all(|case| {
            case.verdict == Verdict::Expected || (!strict && case.verdict == Verdict::Skipped)
        })
    }
}
