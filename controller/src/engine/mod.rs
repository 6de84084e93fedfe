//! Runs scenarios on agents: binds roles to agents, plays each case's
//! timeline, checks what happened against the expectations for each host's
//! OS, and turns it all into a [`RunReport`].
//!
//! Every step waits for the one before it (a barrier across hosts), except
//! steps released together (`with`), which are sent ahead and act at one
//! moment. The controller's clock is the run clock, and each agent's
//! monotonic clock is mapped onto it through an offset measured at the
//! start (NTP-style, the sample with the shortest round trip wins), so times
//! from different hosts line up. A case that loses an agent or runs out of
//! time ends alone; the run goes on.
//!
//! - this module: agents, plans, the run, and each case's timeline;
//! - `step`: one step as the agent call that performs it;
//! - `wire`: the captures of a case and the wire expectations;
//! - `judge`: outcomes against expectations, observations for the report.

use crate::agents::{self, AgentsError};
use crate::report::{
    AgentReport, CaseReport, ObservationReport, RunReport, SCHEMA, Summary, Verdict, WireReport,
};
use crate::scenario::{
    Action, CloseMode, Expect, ExpectedOutcome, Options, Payload, Scenario, Step,
};
use crate::targets::Target;
use faultlab_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument as _, Span};

mod judge;
mod step;
mod wire;

use judge::{judge, observations};
use step::{prepare, process_target, release_lead};
use wire::{collect_wire, start_wire};

/// Clock samples taken per agent to measure its offset.
const CLOCK_SAMPLES: usize = 8;
/// How long cleanup of one case's holders may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait of a `wait-end` step.
const DEFAULT_WAIT_MS: u32 = 30_000;
/// Steps released together are sent this long, plus two round trips of the
/// slowest agent, plus [`RELEASE_PER_STEP`] each, before they act.
const RELEASE_MARGIN: Duration = Duration::from_millis(2);
/// What one more step of a release costs until it reaches its holder. With
/// 256 agents and the controller on one 2-core machine, 100 µs let the last
/// requests arrive just after the moment; from 300 µs on, all of them came
/// ≥ 54 ms early and the skew did not change (it is the wake-up, not the
/// delivery).
const RELEASE_PER_STEP: Duration = Duration::from_micros(200);

/// Nanoseconds since the run started, on the controller.
#[derive(Clone, Copy, Debug)]
pub struct RunClock {
    start: Instant,
    start_wall: SystemTime,
}

impl RunClock {
    /// Start now.
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            start_wall: SystemTime::now(),
        }
    }

    /// Now, in ns since the start.
    pub fn now_ns(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    /// The controller's wall clock at run-clock time `t_ns`.
    pub fn wall(&self, t_ns: i64) -> SystemTime {
        let offset = Duration::from_nanos(t_ns.unsigned_abs());
        if t_ns >= 0 {
            self.start_wall + offset
        } else {
            self.start_wall - offset
        }
    }
}

/// An agent of the run: its client, host and clock.
pub struct AgentHandle {
    /// Name in the inventory.
    pub name: String,
    /// gRPC address.
    pub address: String,
    /// Address listeners bind to and peers connect to.
    pub test_ip: IpAddr,
    /// Client (cheap to clone).
    pub client: agents::Client,
    /// What it said about its host.
    pub info: pb::HostInfoReply,
    /// Agent monotonic ns minus run-clock ns.
    pub clock_offset_ns: i64,
    /// Round trip of the sample the offset came from.
    pub clock_rtt_ns: u64,
}

impl AgentHandle {
    /// Connect, ask for host info, and measure the clock offset.
    pub async fn connect(
        connector: &agents::Connector,
        name: &str,
        address: &str,
        test_ip: Option<IpAddr>,
        clock: &RunClock,
    ) -> Result<Self, AgentsError> {
        let mut client = connector.connect(address).await?;
        let failed = |status| AgentsError::Call {
            address: address.to_owned(),
            status,
        };
        let mut best: Option<(u64, i64, pb::HostInfoReply)> = None;
        for _ in 0..CLOCK_SAMPLES {
            let sent = clock.now_ns();
            let info = client
                .host_info(pb::HostInfoRequest {})
                .await
                .map_err(failed)?
                .into_inner();
            let received = clock.now_ns();
            let rtt = u64::try_from(received - sent).unwrap_or(0);
            let midpoint = sent + (received - sent) / 2;
            let offset = i64::try_from(info.mono_ns).unwrap_or(i64::MAX) - midpoint;
            if best.as_ref().is_none_or(|(best_rtt, _, _)| rtt < *best_rtt) {
                best = Some((rtt, offset, info));
            }
        }
        let Some((clock_rtt_ns, clock_offset_ns, info)) = best else {
            return Err(failed(tonic::Status::internal("no clock sample")));
        };
        let test_ip = test_ip
            .or_else(|| {
                address
                    .rsplit_once(':')
                    .and_then(|(host, _)| host.trim_matches(['[', ']']).parse().ok())
            })
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Ok(Self {
            name: name.to_owned(),
            address: address.to_owned(),
            test_ip,
            client,
            info,
            clock_offset_ns,
            clock_rtt_ns,
        })
    }

    /// Connect to every agent of `inventory`, in its order.
    pub async fn connect_all(
        connector: &agents::Connector,
        inventory: &crate::inventory::Inventory,
        clock: &RunClock,
    ) -> Result<Vec<Arc<Self>>, AgentsError> {
        let mut handles = Vec::new();
        for entry in &inventory.agents {
            let handle =
                Self::connect(connector, &entry.name, &entry.address, entry.test_ip, clock)
                    .await
                    .map_err(|error| AgentsError::Agent {
                        name: entry.name.clone(),
                        error: Box::new(error),
                    })?;
            handles.push(Arc::new(handle));
        }
        Ok(handles)
    }

    /// An agent's monotonic time on the run clock.
    fn run_ns(&self, mono_ns: u64) -> i64 {
        i64::try_from(mono_ns).unwrap_or(i64::MAX) - self.clock_offset_ns
    }

    fn report(&self) -> AgentReport {
        AgentReport {
            name: self.name.clone(),
            address: self.address.clone(),
            test_ip: self.test_ip.to_string(),
            hostname: self.info.hostname.clone(),
            os_family: self.info.os_family.clone(),
            os_version: self.info.os_version.clone(),
            kernel_version: self.info.kernel_version.clone(),
            arch: self.info.arch.clone(),
            agent_version: self.info.agent_version.clone(),
            boot_id: self.info.boot_id.clone(),
            capabilities: self.info.capabilities.clone(),
            clock_offset_ns: self.clock_offset_ns,
            clock_rtt_ns: self.clock_rtt_ns,
        }
    }
}

/// An application under test, placed in the lab.
pub struct TargetHandle {
    /// What it is.
    pub target: Target,
    /// Where clients reach it.
    pub address: SocketAddr,
    /// The agent on its host, if any.
    pub host: Option<Arc<AgentHandle>>,
}

impl TargetHandle {
    /// Place `target` among the lab's `agents` (its host may be named by an agent's name).
    pub fn place(target: Target, agents: &[Arc<AgentHandle>]) -> Result<Self, String> {
        let by_name = |name: &str| agents.iter().find(|agent| agent.name == name);
        let address = target
            .address(|name| by_name(name).map(|agent| agent.test_ip))
            .ok_or_else(|| {
                format!(
                    "target {:?}: no agent {:?} in the lab to take the address of",
                    target.name,
                    match &target.host {
                        crate::targets::TargetHost::Agent(name) => name.as_str(),
                        crate::targets::TargetHost::Ip(_) => "",
                    }
                )
            })?;
        let host = match &target.agent {
            Some(name) => Some(Arc::clone(by_name(name).ok_or_else(|| {
                format!(
                    "target {:?}: no agent {name:?} in the lab (its host's agent)",
                    target.name
                )
            })?)),
            None => None,
        };
        Ok(Self {
            target,
            address,
            host,
        })
    }

    fn label(&self) -> String {
        if self.target.name == self.address.to_string()
            || self
                .target
                .name
                .ends_with(&format!(":{}", self.address.port()))
        {
            format!("app {}", self.address)
        } else {
            format!("app {} ({})", self.target.name, self.address)
        }
    }
}

/// Told as cases start and finish (the terminal's progress bars).
pub trait Progress: Send + Sync {
    /// A case began.
    fn started(&self, _case: &Scenario, _agents: &[String]) {}
    /// A case ended.
    fn finished(&self, _report: &CaseReport) {}
}

/// No progress output.
pub struct Quiet;

impl Progress for Quiet {}

/// What to run, where, how wide.
pub struct Plan {
    /// The run's id ([`new_run_id`]).
    pub run_id: String,
    /// Suite name or file list, for the report.
    pub suite: String,
    /// The cases.
    pub cases: Vec<Scenario>,
    /// The agents.
    pub agents: Vec<Arc<AgentHandle>>,
    /// Run each case on every ordered choice of distinct agents for its
    /// roles, instead of only the first ones.
    pub all_bindings: bool,
    /// Roles bound to named agents, for every case that has the role.
    pub pinned: BTreeMap<String, String>,
    /// Roles played by applications under test, for every case that has the role.
    pub targets: BTreeMap<String, Arc<TargetHandle>>,
    /// Cases at once.
    pub parallel: usize,
}

impl Plan {
    /// The bindings a case runs on: agents for the roles no application
    /// plays, in role order. Pinned roles (`--bind role=agent`) always get
    /// their agent; the others get the first free agents (not the agents on
    /// an application's host), or every ordered choice of distinct agents
    /// when `all_bindings`.
    pub fn bindings(&self, case: &Scenario) -> Vec<Vec<Arc<AgentHandle>>> {
        let mut found = Vec::new();
        let mut chosen = Vec::new();
        self.choose(case, &mut chosen, &mut found);
        found
    }

    fn choose(
        &self,
        case: &Scenario,
        chosen: &mut Vec<usize>,
        found: &mut Vec<Vec<Arc<AgentHandle>>>,
    ) {
        if !self.all_bindings && !found.is_empty() {
            return;
        }
        let agent_roles: Vec<&String> = case
            .roles
            .iter()
            .filter(|role| !self.targets.contains_key(*role))
            .collect();
        let Some(role) = agent_roles.get(chosen.len()) else {
            found.push(
                chosen
                    .iter()
                    .map(|&index| Arc::clone(&self.agents[index]))
                    .collect(),
            );
            return;
        };
        let pinned = self.pinned.get(*role);
        let hosts_an_application = |agent: &AgentHandle| {
            self.targets.values().any(|target| {
                target
                    .host
                    .as_ref()
                    .is_some_and(|host| host.name == agent.name)
            })
        };
        for index in 0..self.agents.len() {
            let fits = match pinned {
                Some(name) => &self.agents[index].name == name,
                None => !hosts_an_application(&self.agents[index]),
            };
            if fits && !chosen.contains(&index) {
                chosen.push(index);
                self.choose(case, chosen, found);
                chosen.pop();
            }
        }
    }
}

impl Plan {
    /// The applications that play roles of `case`.
    pub fn targets_of(&self, case: &Scenario) -> BTreeMap<String, Arc<TargetHandle>> {
        self.targets
            .iter()
            .filter(|(role, _)| case.roles.contains(role))
            .map(|(role, target)| (role.clone(), Arc::clone(target)))
            .collect()
    }
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// A run id: wall-clock time plus process id, readable and unique per host.
pub fn new_run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!(
        "{:x}-{:x}",
        nanos / 1_000_000,
        (nanos % 1_000_000) ^ u128::from(std::process::id())
    )
}

/// Run every case of the plan on its bindings, `parallel` at a time, until
/// done or `stop` turns true (then unfinished cases are reported as errors
/// and every agent is reset).
///
/// The caller's current span is the run's span (see [`run_span`]): each
/// case's span, and through the agents every host's spans, hang under it.
pub async fn run(
    plan: Plan,
    clock: RunClock,
    progress: Arc<dyn Progress>,
    mut stop: watch::Receiver<bool>,
) -> RunReport {
    let started_unix_ms = wall_ms();
    // Wire evidence needs quiet hosts: a neighbour's flood (S4 moves hundreds
    // of MB) makes the kernel drop packets meant for a capture, and a verdict
    // on a partial capture would be wrong. With captures, one case at a time.
    let capturing = !plan.agents.is_empty()
        && plan
            .agents
            .iter()
            .all(|agent| agent.info.capabilities.iter().any(|c| c == "capture"));
    let parallel = if capturing { 1 } else { plan.parallel.max(1) };
    let gate = Arc::new(Semaphore::new(parallel));
    // Cases that cut hosts off or reboot them run alone: they would disturb
    // any other case on the same hosts.
    let alone = Arc::new(tokio::sync::RwLock::new(()));
    let mut tasks = JoinSet::new();
    let mut slots = Vec::new();
    // A task that fails (a bug) must still end as its own case's error.
    let mut slot_of_task = HashMap::new();
    let mut failures: HashMap<usize, String> = HashMap::new();
    let run_span = Span::current();
    for case in &plan.cases {
        let targets = plan.targets_of(case);
        for binding in plan.bindings(case) {
            let index = slots.len();
            slots.push(None);
            let case = case.clone();
            let targets = targets.clone();
            let gate = Arc::clone(&gate);
            let alone = Arc::clone(&alone);
            let progress = Arc::clone(&progress);
            let run_span = run_span.clone();
            let task = tasks.spawn(
                async move {
                    // So do cases with an application: its probe counts
                    // every socket of its port.
                    let exclusive = !targets.is_empty()
                        || case
                            .needs
                            .iter()
                            .any(|need| need == "isolate" || need == "reboot");
                    let (_shared, _sole) = if exclusive {
                        (None, Some(alone.write_owned().await))
                    } else {
                        (Some(alone.read_owned().await), None)
                    };
                    let _permit = gate.acquire_owned().await;
                    let names: Vec<String> =
                        binding.iter().map(|agent| agent.name.clone()).collect();
                    progress.started(&case, &names);
                    let report = run_case_on(&case, &binding, &targets, clock).await;
                    progress.finished(&report);
                    (index, report)
                }
                .instrument(run_span),
            );
            slot_of_task.insert(task.id(), index);
        }
    }
    let mut interrupted = false;
    while !tasks.is_empty() {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok((index, report))) => slots[index] = Some(report),
                Some(Err(error)) if !error.is_cancelled() => {
                    if let Some(index) = slot_of_task.get(&error.id()) {
                        failures.insert(*index, format!("the case's task failed: {error}"));
                    }
                }
                Some(Err(_)) => {}
                None => break,
            },
            changed = stop.changed(), if !interrupted => {
                if changed.is_err() || *stop.borrow() {
                    interrupted = true;
                    tasks.abort_all();
                }
            }
        }
    }
    if interrupted {
        for agent in &plan.agents {
            let mut client = agent.client.clone();
            let _ = tokio::time::timeout(CLEANUP_TIMEOUT, client.reset(pb::ResetRequest {})).await;
        }
    }
    let mut cases = Vec::new();
    let mut index = 0;
    for case in &plan.cases {
        let bindings = plan.bindings(case);
        let targets = plan.targets_of(case);
        if bindings.is_empty() {
            let mut report = empty_report(case, &[], &targets);
            report.verdict = Verdict::Skipped;
            report.reason = Some(format!(
                "no way to bind roles {:?} to the lab's {} agents{}",
                case.roles,
                plan.agents.len(),
                if plan.pinned.is_empty() {
                    ""
                } else {
                    " as --bind asks"
                }
            ));
            cases.push(report);
        }
        for binding in bindings {
            let report = slots[index].take().unwrap_or_else(|| {
                let mut report = empty_report(case, &binding, &targets);
                report.verdict = Verdict::Error;
                report.reason = Some(
                    failures
                        .remove(&index)
                        .unwrap_or_else(|| "interrupted before it finished".to_owned()),
                );
                report
            });
            cases.push(report);
            index += 1;
        }
    }
    let summary = Summary::of(&cases);
    faultlab_telemetry::annotate(
        &run_span,
        [
            faultlab_telemetry::Attribute::new("faultlab.cases", count(summary.total)),
            faultlab_telemetry::Attribute::new("faultlab.expected", count(summary.expected)),
            faultlab_telemetry::Attribute::new(
                "faultlab.failed",
                count(summary.differs + summary.error + summary.agent_lost + summary.timeout),
            ),
            faultlab_telemetry::Attribute::new("faultlab.skipped", count(summary.skipped)),
        ],
    );
    RunReport {
        schema: SCHEMA.to_owned(),
        run_id: plan.run_id,
        started_unix_ms,
        finished_unix_ms: wall_ms(),
        suite: plan.suite,
        agents: plan.agents.iter().map(|agent| agent.report()).collect(),
        summary,
        cases,
        trace_id: faultlab_telemetry::trace_id(&run_span),
        trace_url: None,
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The span of a whole run: enter it (or instrument with it) before
/// connecting to the agents and calling [`run`], so that every request of
/// the run is in one trace.
pub fn run_span(run_id: &str, suite: &str) -> Span {
    tracing::info_span!(
        "run",
        otel.name = %format!("faultlab run {suite}"),
        faultlab.run.id = %run_id,
        faultlab.suite = %suite,
    )
}

/// Who plays each role: an agent (by name and OS) or an application.
fn cast(
    case: &Scenario,
    binding: &[Arc<AgentHandle>],
    targets: &BTreeMap<String, Arc<TargetHandle>>,
) -> Vec<(String, String, String)> {
    let mut agents = binding.iter();
    case.roles
        .iter()
        .filter_map(|role| match targets.get(role) {
            Some(target) => Some((role.clone(), target.label(), "app".to_owned())),
            None => agents.next().map(|agent| {
                (
                    role.clone(),
                    agent.name.clone(),
                    agent.info.os_family.clone(),
                )
            }),
        })
        .collect()
}

fn empty_report(
    case: &Scenario,
    binding: &[Arc<AgentHandle>],
    targets: &BTreeMap<String, Arc<TargetHandle>>,
) -> CaseReport {
    let cast = cast(case, binding, targets);
    CaseReport {
        id: case.id.clone(),
        name: case.name.clone(),
        title: case.title.clone(),
        seed: case.seed.clone(),
        roles: cast
            .iter()
            .map(|(role, player, _)| (role.clone(), player.clone()))
            .collect(),
        os_pair: cast
            .iter()
            .map(|(_, _, os)| os.as_str())
            .collect::<Vec<_>>()
            .join("/"),
        verdict: Verdict::Skipped,
        reason: None,
        differences: Vec::new(),
        observations: Vec::new(),
        wire_evidence: false,
        wire: Vec::new(),
        duration_ms: 0,
        span_id: None,
        trace_url: None,
        probes: Vec::new(),
        unchecked: Vec::new(),
    }
}

/// Why a step could not be carried out.
#[derive(Debug)]
enum StepError {
    /// The agent did not answer.
    AgentLost(String),
    /// The request failed.
    Failed(String),
}

/// What a step's call returned, on the run clock.
#[derive(Clone, Debug)]
struct Outcome {
    call: String,
    outcome: ExpectedOutcome,
    bytes: u64,
    errno: i32,
    errno_name: String,
    sigpipe: bool,
    unread_bytes: u64,
    start_ns: i64,
    end_ns: i64,
}

impl Outcome {
    fn ok(call: &str, start_ns: i64, end_ns: i64) -> Self {
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
        }
    }

    fn observed(agent: &AgentHandle, observation: &pb::Observation) -> Self {
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
        }
    }
}

/// Names a case's steps gave to listeners and connections, and its holders.
#[derive(Default)]
struct Names {
    holders: HashMap<String, u64>,
    listeners: HashMap<String, (u64, SocketAddr, String)>,
    /// Connection name → (id, role, its local address).
    conns: HashMap<String, (u64, String, Option<SocketAddr>)>,
    /// Isolations this case made and has not healed: (role, id).
    isolations: Vec<(String, String)>,
    /// Roles whose test link this case took down and has not brought up.
    links_down: Vec<String>,
    /// Connection name → the listener address it connected to.
    dialed: HashMap<String, SocketAddr>,
    /// Roles whose application this case froze and has not thawed.
    frozen: Vec<String>,
    /// Sends whose payload became a target's messages: (bytes the scenario
    /// meant, bytes actually sent), so "all of it" expectations still hold.
    byte_rewrites: Vec<(u64, u64)>,
}

/// One case on one binding: what the steps share.
struct CaseRun<'a> {
    case_id: String,
    /// The capture running on every agent of the case, when they all can.
    capture: Option<String>,
    /// What the captures saw on the case's connections.
    wire: Vec<WireReport>,
    /// Each role's agent (for a role an application plays: the agent on its host, if any).
    agents: HashMap<String, Arc<AgentHandle>>,
    /// Roles played by applications.
    targets: BTreeMap<String, Arc<TargetHandle>>,
    /// Steps not judged, and why.
    unchecked: BTreeMap<String, String>,
    names: Names,
    clock: RunClock,
    results: Vec<(&'a Step, Outcome)>,
    /// Steps released together → the moment they were to act (run clock).
    released: HashMap<String, i64>,
    background: HashMap<String, tokio::task::JoinHandle<Result<Outcome, StepError>>>,
}

fn lost_or_failed(agent: &AgentHandle, status: &tonic::Status) -> StepError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
            StepError::AgentLost(format!(
                "agent {} ({}) stopped answering: {}",
                agent.name,
                agent.address,
                status.message()
            ))
        }
        _ => StepError::Failed(format!(
            "agent {}: {}: {}",
            agent.name,
            code_name(status.code()),
            status.message()
        )),
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

fn holder_gone(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get("faultlab-error")
        .and_then(|value| value.to_str().ok())
        == Some("holder-gone")
}

fn socket_options(options: &Options) -> Option<pb::SocketOptions> {
    if options == &Options::default() {
        return None;
    }
    Some(pb::SocketOptions {
        linger: options.linger.map(|linger| pb::Linger {
            enabled: linger.is_some(),
            seconds: linger.unwrap_or(0),
        }),
        keepalive: options
            .keepalive
            .map(|(idle_ms, interval_ms, count)| pb::Keepalive {
                enabled: true,
                idle_ms,
                interval_ms,
                count,
            }),
        user_timeout_ms: options.user_timeout_ms,
        nodelay: options.nodelay,
        send_buffer_bytes: options.send_buffer_bytes,
        recv_buffer_bytes: options.recv_buffer_bytes,
    })
}

fn close_mode(mode: CloseMode) -> pb::CloseMode {
    match mode {
        CloseMode::Graceful => pb::CloseMode::Graceful,
        CloseMode::Abort => pb::CloseMode::Abort,
        CloseMode::ShutdownWrite => pb::CloseMode::ShutdownWrite,
        CloseMode::ShutdownRead => pb::CloseMode::ShutdownRead,
        CloseMode::ShutdownBoth => pb::CloseMode::ShutdownBoth,
        CloseMode::WithUnread => pb::CloseMode::WithUnread,
    }
}

/// Run one case on one binding (agents in role order), in a span of its
/// own under the current one.
pub async fn run_case(
    case: &Scenario,
    binding: &[Arc<AgentHandle>],
    clock: RunClock,
) -> CaseReport {
    run_case_on(case, binding, &BTreeMap::new(), clock).await
}

/// [`run_case`] with some roles played by applications (`targets`);
/// `binding` holds agents for the other roles, in role order.
pub async fn run_case_on(
    case: &Scenario,
    binding: &[Arc<AgentHandle>],
    targets: &BTreeMap<String, Arc<TargetHandle>>,
    clock: RunClock,
) -> CaseReport {
    let span = tracing::info_span!(
        "case",
        otel.name = %format!("{} {}", case.id, case.name),
        faultlab.case.id = %case.id,
        faultlab.case.title = %case.title,
    );
    let mut unfinished = Unfinished(Some(span.clone()));
    let mut report = play_case(case, binding, targets, clock)
        .instrument(span.clone())
        .await;
    unfinished.0 = None;
    report.span_id = faultlab_telemetry::span_id(&span);
    let agents: Vec<&str> = report.roles.values().map(String::as_str).collect();
    faultlab_telemetry::annotate(
        &span,
        [
            faultlab_telemetry::Attribute::new("faultlab.os_pair", report.os_pair.clone()),
            faultlab_telemetry::Attribute::new("faultlab.agents", agents.join(",")),
            faultlab_telemetry::Attribute::new("faultlab.verdict", report.verdict.as_str()),
        ],
    );
    if !matches!(report.verdict, Verdict::Expected | Verdict::Skipped) {
        let why = report
            .reason
            .clone()
            .unwrap_or_else(|| report.differences.join("; "));
        faultlab_telemetry::fail(&span, &format!("{}: {why}", report.verdict.as_str()));
    }
    report
}

/// Marks a case's span as interrupted if the case is dropped before it
/// ends (Ctrl-C aborts the case's task).
struct Unfinished(Option<Span>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(span) = self.0.take() {
            faultlab_telemetry::annotate(
                &span,
                [faultlab_telemetry::Attribute::new(
                    "faultlab.verdict",
                    Verdict::Error.as_str(),
                )],
            );
            faultlab_telemetry::fail(&span, "error: interrupted before it finished");
        }
    }
}

/// Whether the application playing `role` can do that role's steps: its
/// faults need an agent on its host with the capability, and process
/// faults need the target to name its process.
fn application_can_play(case: &Scenario, role: &str, target: &TargetHandle) -> Result<(), String> {
    for step in case
        .steps
        .iter()
        .filter(|step| step.role.as_deref() == Some(role))
    {
        let needs_process = matches!(
            step.action,
            Action::Kill | Action::Stop | Action::Continue | Action::Restart
        );
        let capability = if needs_process {
            Some("process")
        } else {
            step.action.capability()
        };
        if matches!(
            step.action,
            Action::Reboot {
                simulated: true,
                ..
            }
        ) {
            return Err(format!(
                "step {}: a simulated reboot forgets only the agent's own sockets; the application's would survive it (a real reboot needs `reboot`)",
                step.name
            ));
        }
        let Some(capability) = capability else {
            continue;
        };
        let Some(host) = &target.host else {
            return Err(format!(
                "step {} ({}) needs an agent on the host of application {} (agent = ... in its target)",
                step.name,
                step.action.keyword(),
                target.target.name
            ));
        };
        if !host.info.capabilities.iter().any(|c| c == capability) {
            return Err(format!(
                "step {} needs capability {capability:?}, which agent {} (on the application's host) does not offer",
                step.name, host.name
            ));
        }
        if needs_process && target.target.process.is_none() {
            return Err(format!(
                "step {} ({}) needs the application's process: give process = {{ name = ... }} in target {}",
                step.name,
                step.action.keyword(),
                target.target.name
            ));
        }
    }
    Ok(())
}

async fn play_case(
    case: &Scenario,
    binding: &[Arc<AgentHandle>],
    targets: &BTreeMap<String, Arc<TargetHandle>>,
    clock: RunClock,
) -> CaseReport {
    let started = Instant::now();
    let mut report = empty_report(case, binding, targets);
    for (role, target) in targets {
        if let Err(why) = application_can_play(case, role, target) {
            report.verdict = Verdict::Skipped;
            report.reason = Some(why);
            return report;
        }
    }
    if let Some(application) = &case.application
        && !targets.contains_key(application)
    {
        report.verdict = Verdict::Skipped;
        report.reason = Some(format!(
            "role {application} is for an application under test: bind one with --target {application}=..."
        ));
        return report;
    }
    // Each agent must offer what its own role's steps use.
    let agent_roles = case
        .roles
        .iter()
        .filter(|role| !targets.contains_key(*role));
    for (role, agent) in agent_roles.zip(binding) {
        let missing = case
            .steps
            .iter()
            .filter(|step| step.role.as_ref() == Some(role))
            .filter_map(|step| step.action.capability())
            .find(|need| !agent.info.capabilities.iter().any(|c| c == need));
        if let Some(missing) = missing {
            report.verdict = Verdict::Skipped;
            report.reason = Some(format!(
                "needs capability {missing:?}, which agent {} does not offer",
                agent.name
            ));
            return report;
        }
    }
    // Each role's agent: its own, or the agent on its application's host.
    let mut agents = HashMap::new();
    let mut free = binding.iter();
    for role in &case.roles {
        let agent = match targets.get(role) {
            Some(target) => target.host.clone(),
            None => free.next().cloned(),
        };
        if let Some(agent) = agent {
            agents.insert(role.clone(), agent);
        }
    }
    let mut run = CaseRun {
        capture: None,
        wire: Vec::new(),
        case_id: case.id.clone(),
        agents,
        targets: targets.clone(),
        unchecked: BTreeMap::new(),
        names: Names::default(),
        clock,
        results: Vec::new(),
        released: HashMap::new(),
        background: HashMap::new(),
    };
    // What the applications' ports held before: a probe judges what the case left.
    let mut baselines = BTreeMap::new();
    for (role, target) in targets {
        baselines.insert(role.clone(), crate::probe::baseline(target).await);
    }
    let played =
        tokio::time::timeout(Duration::from_millis(case.timeout_ms), play(case, &mut run)).await;
    for (_, task) in run.background.drain() {
        task.abort();
    }
    // Before cleanup: the FINs and RSTs of killing the holders are not evidence.
    collect_wire(&mut run).await;
    cleanup(&run).await;
    // After cleanup: the case's clients are gone, its isolations lifted and
    // its frozen applications thawed; what is left is the application's doing.
    for (role, target) in targets {
        if let Some(from) = binding.first().or(target.host.as_ref()) {
            report
                .probes
                .push(crate::probe::probe(role, target, from, baselines.get(role)).await);
        }
    }
    report.unchecked = run
        .unchecked
        .iter()
        .map(|(step, why)| format!("{step}: {why}"))
        .collect();
    if run.capture.is_some() && !targets.is_empty() {
        for (step, _) in &run.results {
            let agent_role = step
                .role
                .as_ref()
                .is_some_and(|role| !targets.contains_key(role));
            if agent_role
                && !run.unchecked.contains_key(&step.name)
                && step.expect.values().any(Expect::checks_wire)
            {
                report.unchecked.push(format!(
                    "{}: its wire expectation is not checked: facing an application, a FIN or RST depends on what the application sent",
                    step.name
                ));
            }
        }
    }
    report.observations = observations(&run, case);
    report.wire_evidence = run.capture.is_some();
    report.wire = run.wire.clone();
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match played {
        Err(_) => {
            report.verdict = Verdict::Timeout;
            report.reason = Some(format!(
                "the case did not finish within {} ms",
                case.timeout_ms
            ));
        }
        Ok(Err(StepError::AgentLost(reason))) => {
            report.verdict = Verdict::AgentLost;
            report.reason = Some(reason);
        }
        Ok(Err(StepError::Failed(reason))) => {
            report.verdict = Verdict::Error;
            report.reason = Some(reason);
        }
        Ok(Ok(())) => {
            let (mut checked, mut differences) = judge(&run);
            for probe in &report.probes {
                checked += 1;
                differences.extend(probe.problems.iter().map(|problem| {
                    format!("probe of {} ({}): {problem}", probe.role, probe.target)
                }));
            }
            report.differences = differences;
            report.verdict = if !report.differences.is_empty() {
                Verdict::Differs
            } else if checked == 0 {
                report
                    .differences
                    .push(format!("no expectation is written for {}", report.os_pair));
                Verdict::Differs
            } else {
                Verdict::Expected
            };
        }
    }
    report
}

async fn play<'a>(case: &'a Scenario, run: &mut CaseRun<'a>) -> Result<(), StepError> {
    start_wire(run).await;
    for role in &case.roles {
        if run.targets.contains_key(role) {
            continue;
        }
        let Some(agent) = run.agents.get(role).cloned() else {
            return Err(StepError::Failed(format!("role {role} is not bound")));
        };
        let mut client = agent.client.clone();
        let spawned = client
            .spawn_holder(pb::SpawnHolderRequest {
                label: format!("{}/{role}", case.id),
            })
            .await
            .map_err(|status| lost_or_failed(&agent, &status))?
            .into_inner();
        run.names.holders.insert(role.clone(), spawned.holder_id);
    }
    let mut released: HashSet<&str> = HashSet::new();
    for (index, step) in case.steps.iter().enumerate() {
        if released.contains(step.name.as_str()) {
            continue;
        }
        let together: Vec<&'a Step> = std::iter::once(step)
            .chain(
                case.steps[index + 1..]
                    .iter()
                    .take_while(|next| next.with.as_deref() == Some(step.name.as_str())),
            )
            .collect();
        // An application's calls are its own: its steps are not released.
        if together.len() > 1
            && together.iter().all(|step| {
                step.role
                    .as_ref()
                    .is_none_or(|role| !run.targets.contains_key(role))
            })
        {
            released.extend(together.iter().map(|step| step.name.as_str()));
            play_together(&together, run).await?;
            continue;
        }
        if let Action::Join { step: joined } = &step.action {
            let task = run
                .background
                .remove(joined)
                .ok_or_else(|| StepError::Failed(format!("{joined} is not running")))?;
            let outcome = task
                .await
                .map_err(|error| StepError::Failed(format!("{joined}: {error}")))??;
            let joined_step = case
                .steps
                .iter()
                .find(|candidate| &candidate.name == joined)
                .ok_or_else(|| StepError::Failed(format!("no step {joined}")))?;
            run.results.push((joined_step, outcome));
            continue;
        }
        if let Some(target) = step.role.as_ref().and_then(|role| run.targets.get(role))
            && let Some(active) = played_by_application(&step.action)
        {
            if let Action::Listen { listener, .. } = &step.action {
                run.names.listeners.insert(
                    listener.clone(),
                    (0, target.address, step.role.clone().unwrap_or_default()),
                );
            }
            if active {
                // From here the scenario needs the server to act as scripted
                // (send, close, stop listening); an application does what it
                // does. The rest of the timeline would observe nothing the
                // scenario means: stop here and let the probe judge.
                run.unchecked.insert(
                    step.name.clone(),
                    format!(
                        "the application plays {} its own way: this step and the ones after it were not played",
                        step.action.keyword()
                    ),
                );
                for (_, task) in run.background.drain() {
                    task.abort();
                }
                return Ok(());
            }
            if !step.expect.is_empty() {
                run.unchecked.insert(
                    step.name.clone(),
                    "played by the application: its calls are its own (the probe judges it)"
                        .to_owned(),
                );
            }
            continue;
        }
        let action = prepare(step, run)?;
        if let Some(rewrite) = action.byte_rewrite {
            run.names.byte_rewrites.push(rewrite);
        }
        if step.background {
            run.background
                .insert(step.name.clone(), tokio::spawn(action.perform()));
        } else if let Some(outcome) = action.perform_and_record(&mut run.names).await? {
            run.results.push((step, outcome));
        }
    }
    let left: Vec<String> = run.background.keys().cloned().collect();
    for name in left {
        if let Some(task) = run.background.remove(&name) {
            let outcome = task
                .await
                .map_err(|error| StepError::Failed(format!("{name}: {error}")))??;
            if let Some(step) = case.steps.iter().find(|step| step.name == name) {
                run.results.push((step, outcome));
            }
        }
    }
    Ok(())
}

/// Steps released together: each agent is told the same moment on its own
/// clock, ahead of it; the timeline goes on once every step has ended.
async fn play_together<'a>(steps: &[&'a Step], run: &mut CaseRun<'a>) -> Result<(), StepError> {
    let mut actions = Vec::with_capacity(steps.len());
    for step in steps {
        let action = prepare(step, run)?;
        if let Some(rewrite) = action.byte_rewrite {
            run.names.byte_rewrites.push(rewrite);
        }
        actions.push(action);
    }
    let lead = i64::try_from(release_lead(&actions).as_nanos()).unwrap_or(i64::MAX);
    let release_ns = run.clock.now_ns().saturating_add(lead);
    for step in steps {
        run.released.insert(step.name.clone(), release_ns);
    }
    let mut running = Vec::with_capacity(actions.len());
    for mut action in actions {
        action.release_at(release_ns);
        let naming = action.note(&mut run.names);
        running.push((naming, tokio::spawn(action.run())));
    }
    let mut first_error = None;
    for ((naming, task), step) in running.into_iter().zip(steps) {
        let ran = task
            .await
            .map_err(|error| StepError::Failed(format!("{}: {error}", step.name)))
            .and_then(|ran| ran);
        match ran {
            Ok(ran) => {
                if let Some(outcome) = naming.define(&mut run.names, ran) {
                    run.results.push((step, outcome));
                }
            }
            // Every step is awaited before the first failure ends the case.
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// For a role an application plays: whether the step is the application's
/// own socket call (faultlab neither makes nor sees it), and if so whether
/// it is one the application decides to do (`Some(true)`: send, close, ...)
/// rather than one that just happens (`Some(false)`: listen, accept, recv).
/// `None`: a fault the agent on its host carries out.
fn played_by_application(action: &Action) -> Option<bool> {
    match action {
        Action::Listen { .. }
        | Action::Accept { .. }
        | Action::Recv { .. }
        | Action::Watch { .. }
        | Action::WaitEnd { .. } => Some(false),
        Action::Send { .. }
        | Action::Close { .. }
        | Action::SetOptions { .. }
        | Action::StopListening { .. }
        | Action::Exit { .. }
        | Action::Connect { .. } => Some(true),
        _ => None,
    }
}

/// Lift the case's isolations, plug its cables back in, and kill its
/// holders (their sockets close with them).
async fn cleanup(run: &CaseRun<'_>) {
    for role in &run.names.frozen {
        let process = run
            .targets
            .get(role)
            .and_then(|target| target.target.process.clone());
        if let (Some(agent), Some(process)) = (run.agents.get(role), process) {
            let mut client = agent.client.clone();
            let thaw = pb::ProcessFaultRequest {
                target: Some(process_target(&process)),
                action: pb::ProcessAction::Continue as i32,
            };
            let _ = tokio::time::timeout(CLEANUP_TIMEOUT, client.process_fault(thaw)).await;
        }
    }
    for role in &run.names.links_down {
        if let Some(agent) = run.agents.get(role) {
            let mut client = agent.client.clone();
            let up = pb::LinkUpRequest {
                interface: String::new(),
                address: agent.test_ip.to_string(),
            };
            let _ = tokio::time::timeout(CLEANUP_TIMEOUT, client.link_up(up)).await;
        }
    }
    for (role, id) in &run.names.isolations {
        if let Some(agent) = run.agents.get(role) {
            let mut client = agent.client.clone();
            let heal = pb::HealRequest {
                id: id.clone(),
                all: false,
            };
            let _ = tokio::time::timeout(CLEANUP_TIMEOUT, client.heal(heal)).await;
        }
    }
    for (role, holder) in &run.names.holders {
        if let Some(agent) = run.agents.get(role) {
            let mut client = agent.client.clone();
            let _ = tokio::time::timeout(
                CLEANUP_TIMEOUT,
                client.kill_holder(pb::KillHolderRequest { holder_id: *holder }),
            )
            .await;
        }
    }
}
