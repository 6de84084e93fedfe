//! What one case on one binding builds up while it plays: the names its
//! steps gave to listeners and connections, the undo list of its faults, the
//! outcomes of its steps, and why a step could not be carried out.

use super::handles::{AgentHandle, RunClock, TargetHandle};
use super::undo::UndoList;
use crate::report::WireReport;
use crate::scenario::{ExpectedOutcome, Step};
use faultlab_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long undoing one of a case's faults, stopping a capture, or killing
/// one holder may take.
pub(super) const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a step could not be carried out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// The agent did not answer: the case ends as `agent-lost`.
    #[error("{0}")]
    AgentLost(String),
    /// The request failed: the case ends as `error`.
    #[error("{0}")]
    Failed(String),
}

impl StepError {
    /// A request to `agent` ended with `status`: lost when the agent is
    /// gone, failed otherwise.
    pub(super) fn from_status(agent: &AgentHandle, status: &tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                // The transport's causes say which way it was lost ("http2
                // error" alone does not: a keep-alive that timed out, a
                // connection reset).
                Self::AgentLost(format!(
                    "agent {} ({}) stopped answering: {}",
                    agent.name,
                    agent.address,
                    crate::error_chain(
                        std::iter::once(status.message().to_owned()).chain(
                            crate::causes_of(status)
                                .skip(1)
                                .map(|cause| cause.to_string())
                        )
                    )
                ))
            }
            code => Self::Failed(format!(
                "agent {}: {code:?}: {}",
                agent.name,
                status.message()
            )),
        }
    }
}

/// Whether a call failed because the holder process it ran in is gone.
pub(super) fn holder_gone(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get("faultlab-error")
        .and_then(|value| value.to_str().ok())
        == Some("holder-gone")
}

/// What a step's call returned, on the run clock.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub call: String,
    pub outcome: ExpectedOutcome,
    pub bytes: u64,
    pub errno: i32,
    pub errno_name: String,
    pub sigpipe: bool,
    pub unread_bytes: u64,
    pub start_ns: i64,
    pub end_ns: i64,
    /// What the fault really did, as the host reported it (a degradation's
    /// qdiscs and counters).
    pub detail: Option<String>,
    /// Send and recv: CRC-32 of the bytes the call moved.
    pub content_crc32: Option<u32>,
    /// A restore: packets its degradations sent on and dropped (kernel counts).
    pub counted: Option<Counted>,
    /// A `counters` step: the host's TCP counters by `Section.Name`.
    pub tcp_counters: Option<std::collections::BTreeMap<String, u64>>,
}

/// Packets a degradation met, as the kernel counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counted {
    /// Sent on (duplicates included).
    pub sent: u64,
    /// Dropped.
    pub dropped: u64,
}

impl Counted {
    /// Dropped, in percent of all that met it (0 when none did).
    pub fn dropped_percent(self) -> f64 {
        let met = self.sent + self.dropped;
        if met == 0 {
            0.0
        } else {
            self.dropped as f64 * 100.0 / met as f64
        }
    }
}

impl Outcome {
    /// A call that succeeded between `start_ns` and `end_ns`.
    pub(super) fn ok(call: &str, start_ns: i64, end_ns: i64) -> Self {
        Self {
            call: call.to_owned(),
            outcome: ExpectedOutcome::Ok,
            bytes: 0,
            errno: 0,
            errno_name: String::new(),
            sigpipe: false,
            unread_bytes: 0,
            start_ns,
            end_ns,
            detail: None,
            content_crc32: None,
            counted: None,
            tcp_counters: None,
        }
    }

    /// What `agent` observed, on the run clock.
    pub(super) fn observed(agent: &AgentHandle, observation: &pb::Observation) -> Self {
        let call = match observation.call() {
            pb::Call::Connect => "connect",
            pb::Call::Accept => "accept",
            pb::Call::Send => "send",
            pb::Call::Recv => "recv",
            pb::Call::Close => "close",
            pb::Call::Shutdown => "shutdown",
            pb::Call::Watch => "watch",
            pb::Call::Unspecified => "unknown",
        };
        let outcome = match observation.outcome() {
            pb::Outcome::Ok | pb::Outcome::Unspecified => ExpectedOutcome::Ok,
            pb::Outcome::Eof => ExpectedOutcome::Eof,
            pb::Outcome::Error => ExpectedOutcome::Error,
            pb::Outcome::Timeout => ExpectedOutcome::Timeout,
        };
        Self {
            call: call.to_owned(),
            outcome,
            bytes: observation.bytes,
            errno: observation.os_error,
            errno_name: observation.error_name.clone(),
            sigpipe: observation.sigpipe,
            unread_bytes: observation.unread_bytes,
            start_ns: agent.run_ns(observation.start_mono_ns),
            end_ns: agent.run_ns(observation.end_mono_ns),
            detail: None,
            content_crc32: matches!(call, "send" | "recv").then_some(observation.content_crc32),
            counted: None,
            tcp_counters: None,
        }
    }
}

/// A listener a step opened (or an application's listening address).
#[derive(Clone, Debug)]
pub(crate) struct Listener {
    /// The agent's id for it (0 for an application's).
    pub id: u64,
    /// Where it listens.
    pub address: SocketAddr,
    /// The role whose host it is on.
    pub role: String,
}

/// A connection a step opened.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    /// The agent's id for it.
    pub id: u64,
    /// The role whose holder owns it.
    pub role: String,
    /// Its local address, when the agent said.
    pub local: Option<SocketAddr>,
}

/// Names a case's steps gave to listeners and connections, its holders,
/// and the faults it has to undo.
#[derive(Default)]
pub(crate) struct Names {
    /// Role → its holder's id.
    pub holders: HashMap<String, u64>,
    /// Listener name → the listener.
    pub listeners: HashMap<String, Listener>,
    /// Connection name → the connection.
    pub conns: HashMap<String, Conn>,
    /// How to undo what this case made and has not undone, in order.
    pub undo: UndoList,
    /// Connection name → the listener address it connected to.
    pub dialed: HashMap<String, SocketAddr>,
    /// Sends whose payload became a target's messages: (bytes the scenario
    /// meant, bytes actually sent), so "all of it" expectations still hold.
    pub byte_rewrites: Vec<(u64, u64)>,
    /// Names a step should have opened and did not, with why: the first
    /// cause of a later step's failure.
    pub unopened: HashMap<String, Cause>,
    /// Role → local addresses of its connects that failed: the SYNs they
    /// sent are that role's on the wire.
    pub tried_from: Vec<(String, SocketAddr)>,
    /// When the case started (run clock), for the times in causes.
    pub started_ns: i64,
}

/// Why a step did not open what it should have.
#[derive(Clone, Debug)]
pub(crate) struct Cause {
    /// The step, its call and how it ended, and when.
    pub said: String,
}

impl Cause {
    /// What `step` ended with, `started_ns` into the case.
    pub(super) fn of(step: &str, outcome: &Outcome, started_ns: i64) -> Self {
        let how = if outcome.errno_name.is_empty() {
            outcome.outcome.as_str().to_owned()
        } else {
            outcome.errno_name.clone()
        };
        let at_ms = (outcome.end_ns - started_ns) as f64 / 1e6;
        Self {
            said: format!("{step}: {} {how} at {at_ms:.0} ms", outcome.call),
        }
    }
}

impl Names {
    /// The connection `name`, which `step` uses.
    pub(super) fn conn(&self, step: &Step, name: &str) -> Result<&Conn, StepError> {
        self.conns
            .get(name)
            .ok_or_else(|| self.never_opened(step, "connection", name))
    }

    /// The error of a step that needs what was never opened: the first
    /// cause first, when an earlier step failed to open it.
    fn never_opened(&self, step: &Step, what: &str, name: &str) -> StepError {
        StepError::Failed(match self.unopened.get(name) {
            Some(cause) => format!(
                "{}, so {what} {name:?} was never opened (needed by step {})",
                cause.said, step.name
            ),
            None => format!("step {}: {what} {name:?} was never opened", step.name),
        })
    }

    /// The listener `name`, which `step` uses.
    pub(super) fn listener(&self, step: &Step, name: &str) -> Result<&Listener, StepError> {
        self.listeners
            .get(name)
            .ok_or_else(|| self.never_opened(step, "listener", name))
    }

    /// The flow of connection `conn` as the host of `role` sees it: (its
    /// end, the other end).
    pub(super) fn flow(
        &self,
        step: &Step,
        role: &str,
        conn: &str,
    ) -> Result<(SocketAddr, SocketAddr), StepError> {
        let opened = self.conn(step, conn)?;
        let (Some(local), Some(listener)) = (opened.local, self.dialed.get(conn)) else {
            return Err(StepError::Failed(format!(
                "the flow of {conn:?} is not known: name the connecting side's connection"
            )));
        };
        Ok(if opened.role == role {
            (local, *listener)
        } else {
            (*listener, local)
        })
    }

    /// The local addresses of the sockets `role` opened.
    pub(super) fn addresses_of(&self, role: &str) -> Vec<String> {
        self.listeners
            .values()
            .filter(|listener| listener.role == role)
            .map(|listener| listener.address.to_string())
            .chain(
                self.conns
                    .values()
                    .filter(|conn| conn.role == role)
                    .filter_map(|conn| conn.local.map(|address| address.to_string())),
            )
            .chain(
                self.tried_from
                    .iter()
                    .filter(|(tried_by, _)| tried_by == role)
                    .map(|(_, address)| address.to_string()),
            )
            .collect()
    }
}

/// One case on one binding: what the steps share.
pub(crate) struct CaseRun<'a> {
    pub case_id: String,
    /// The case's own time limit: a change a step makes with no deadline
    /// of its own (a TCP setting) is put back by then at the latest.
    pub timeout_ms: u64,
    /// The capture running on every agent of the case, when they all can.
    pub capture: Option<String>,
    /// What the captures saw on the case's connections.
    pub wire: Vec<WireReport>,
    /// Hosts whose capture was lost (a reboot, a power cut): what they sent
    /// is what the others saw of it.
    pub wire_lost: Vec<String>,
    /// Hosts whose capture missed packets, and how many.
    pub wire_missed: BTreeMap<String, u64>,
    /// Each role's agent (for a role an application plays: the agent on its host, if any).
    pub agents: HashMap<String, Arc<AgentHandle>>,
    /// Roles played by applications.
    pub targets: BTreeMap<String, Arc<TargetHandle>>,
    /// Steps not judged, and why.
    pub unchecked: BTreeMap<String, String>,
    pub names: Names,
    pub clock: RunClock,
    /// Each step that ran, with its outcome.
    pub results: Vec<(&'a Step, Outcome)>,
    /// Steps released together → the moment they were to act (run clock).
    pub released: HashMap<String, i64>,
    /// Background steps still running.
    pub background: HashMap<String, tokio::task::JoinHandle<Result<Outcome, StepError>>>,
}

impl CaseRun<'_> {
    /// The case's hosts: each agent once (two roles may share one), by name.
    pub fn hosts(&self) -> Vec<Arc<AgentHandle>> {
        let mut hosts: Vec<Arc<AgentHandle>> = self.agents.values().cloned().collect();
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        hosts.dedup_by(|a, b| a.name == b.name);
        hosts
    }
}
