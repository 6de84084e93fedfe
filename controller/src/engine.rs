//! Runs scenarios on agents: binds roles to agents, plays each case's
//! timeline, checks what happened against the expectations for each host's
//! OS, and turns it all into a [`RunReport`].
//!
//! Every step waits for the one before it (a barrier across hosts); the
//! controller's clock is the run clock, and each agent's monotonic clock is
//! mapped onto it through an offset measured at the start (NTP-style, the
//! sample with the shortest round trip wins), so times from different hosts
//! line up. A case that loses an agent or runs out of time ends alone; the
//! run goes on.

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

/// Clock samples taken per agent to measure its offset.
const CLOCK_SAMPLES: usize = 8;
/// How long cleanup of one case's holders may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait of a `wait-end` step.
const DEFAULT_WAIT_MS: u32 = 30_000;
/// Steps released together are sent this long, plus two round trips of the
/// slowest agent, plus [`RELEASE_PER_STEP`] each, before they act.
const RELEASE_MARGIN: Duration = Duration::from_millis(2);
/// The controller's own cost of sending one more step of a release.
const RELEASE_PER_STEP: Duration = Duration::from_micros(100);

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

/// Start a capture on every agent of the case, if all of them can capture.
async fn start_wire(run: &mut CaseRun<'_>) {
    let agents: Vec<Arc<AgentHandle>> = run.agents.values().cloned().collect();
    if agents.is_empty()
        || !agents
            .iter()
            .all(|agent| agent.info.capabilities.iter().any(|c| c == "capture"))
    {
        return;
    }
    let id = format!("{}-{:x}", run.case_id, run.clock.now_ns());
    let mut started: Vec<Arc<AgentHandle>> = Vec::new();
    for agent in &agents {
        let mut client = agent.client.clone();
        let request = pb::StartCaptureRequest {
            id: id.clone(),
            ports: Vec::new(),
        };
        if client.start_capture(request).await.is_err() {
            // No partial evidence: stop what started and go without.
            for agent in started {
                let mut client = agent.client.clone();
                let _ = client
                    .stop_capture(pb::StopCaptureRequest { id: id.clone() })
                    .await;
            }
            return;
        }
        started.push(Arc::clone(agent));
    }
    run.capture = Some(id);
}

/// Stop the captures and keep the segments of the case's own connections
/// (its listeners' ports), each on the run clock.
async fn collect_wire(run: &mut CaseRun<'_>) {
    let Some(id) = run.capture.clone() else {
        return;
    };
    let ports: Vec<u16> = run
        .names
        .listeners
        .values()
        .map(|(_, address, _)| address.port())
        .collect();
    let port_of = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
    };
    let mut seen = Vec::new();
    let mut agents: Vec<Arc<AgentHandle>> = run.agents.values().cloned().collect();
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    agents.dedup_by(|a, b| a.name == b.name);
    // Every host stops at once: each stop waits for its capture to drain.
    let mut stopping = JoinSet::new();
    for agent in agents {
        let id = id.clone();
        stopping.spawn(async move {
            let mut client = agent.client.clone();
            let stopped = tokio::time::timeout(
                CLEANUP_TIMEOUT,
                client.stop_capture(pb::StopCaptureRequest { id }),
            )
            .await;
            (agent, stopped)
        });
    }
    while let Some(joined) = stopping.join_next().await {
        let Ok((agent, Ok(Ok(reply)))) = joined else {
            continue;
        };
        for segment in reply.into_inner().segments {
            let ours = [&segment.source, &segment.destination]
                .iter()
                .any(|address| port_of(address).is_some_and(|port| ports.contains(&port)));
            if ours {
                seen.push(WireReport {
                    host: agent.name.clone(),
                    t_ns: agent.run_ns(segment.mono_ns),
                    source: segment.source,
                    destination: segment.destination,
                    flags: segment.flags,
                    seq: segment.seq,
                    ack: segment.ack,
                    payload: segment.payload,
                });
            }
        }
    }
    seen.sort_by_key(|segment| segment.t_ns);
    trace_wire(run, &seen);
    run.wire = seen;
}

/// Put each FIN and RST the captures saw on the case's span (the current
/// one), at the moment it was seen, naming the step that had last started
/// then: in a trace viewer the packet sits next to the call that caused it.
fn trace_wire(run: &CaseRun<'_>, seen: &[WireReport]) {
    if !faultlab_telemetry::enabled() {
        return;
    }
    let span = Span::current();
    for segment in seen {
        let name = if segment.flags.contains('R') {
            "RST on the wire"
        } else if segment.flags.contains('F') {
            "FIN on the wire"
        } else {
            continue;
        };
        let after_step = run
            .results
            .iter()
            .filter(|(_, outcome)| outcome.start_ns <= segment.t_ns)
            .max_by_key(|(_, outcome)| outcome.start_ns)
            .map_or_else(String::new, |(step, _)| step.name.clone());
        faultlab_telemetry::event_at(
            &span,
            name,
            run.clock.wall(segment.t_ns),
            vec![
                faultlab_telemetry::Attribute::new("faultlab.wire.host", segment.host.clone()),
                faultlab_telemetry::Attribute::new("faultlab.wire.source", segment.source.clone()),
                faultlab_telemetry::Attribute::new(
                    "faultlab.wire.destination",
                    segment.destination.clone(),
                ),
                faultlab_telemetry::Attribute::new("faultlab.wire.flags", segment.flags.clone()),
                faultlab_telemetry::Attribute::new("faultlab.wire.seq", i64::from(segment.seq)),
                faultlab_telemetry::Attribute::new("faultlab.wire.after_step", after_step),
            ],
        );
    }
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
    let mut running = Vec::with_capacity(actions.len());
    for mut action in actions {
        action.start_at = Some(StartAt {
            run_ns: release_ns,
            mono_ns: u64::try_from(release_ns.saturating_add(action.agent.clock_offset_ns))
                .unwrap_or(0),
        });
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

/// The flow of connection `conn` as the host of `role` sees it: (its end, the other end).
fn flow(run: &CaseRun<'_>, role: &str, conn: &str) -> Result<(SocketAddr, SocketAddr), StepError> {
    let (_, owner, local) = run
        .names
        .conns
        .get(conn)
        .ok_or_else(|| StepError::Failed(format!("connection {conn:?} was never opened")))?;
    let (Some(local), Some(listener)) = (local, run.names.dialed.get(conn)) else {
        return Err(StepError::Failed(format!(
            "the flow of {conn:?} is not known: name the connecting side's connection"
        )));
    };
    Ok(if owner == role {
        (*local, *listener)
    } else {
        (*listener, *local)
    })
}

/// An application's process as the contract names it.
fn process_target(process: &crate::targets::ProcessSpec) -> pb::process_fault_request::Target {
    use crate::targets::ProcessSpec;
    use pb::process_fault_request::Target;
    match process {
        ProcessSpec::Name(name) => Target::Name(name.clone()),
        ProcessSpec::Pid(pid) => Target::Pid(*pid),
        ProcessSpec::Unit(unit) => Target::Unit(unit.clone()),
    }
}

/// What a scenario's send puts on the wire, as the contract says it.
fn scenario_payload(payload: &Payload) -> pb::send_request::Payload {
    match payload {
        Payload::Text(text) => pb::send_request::Payload::Data(text.clone().into_bytes()),
        Payload::Bytes(count) => pb::send_request::Payload::ByteCount(*count),
        Payload::Messages {
            count,
            size,
            interval_ms,
        } => pb::send_request::Payload::Messages(pb::Messages {
            count: *count,
            size: *size,
            interval_ms: *interval_ms,
        }),
    }
}

/// A send on a connection to an application with messages of its own:
/// the scenario's messages or filler become that many of the application's.
fn application_payload(
    run: &CaseRun<'_>,
    conn: &str,
    payload: &Payload,
) -> Option<(pb::send_request::Payload, u64, u64)> {
    let dialed = run.names.dialed.get(conn)?;
    let template = run
        .targets
        .values()
        .find(|target| target.address == *dialed)?
        .target
        .payload
        .clone()?;
    let (count, interval_ms, meant) = match payload {
        Payload::Text(_) => return None,
        Payload::Messages {
            count,
            size,
            interval_ms,
        } => (
            u64::from(*count),
            *interval_ms,
            u64::from(*count) * u64::from(*size),
        ),
        Payload::Bytes(bytes) => ((bytes / template.len().max(1) as u64).max(1), 0, *bytes),
    };
    let sent = crate::targets::template_bytes(&template, count);
    Some((
        pb::send_request::Payload::Template(pb::Template {
            text: template,
            count,
            interval_ms,
        }),
        meant,
        sent,
    ))
}

/// A step with its names resolved to ids, ready to run on its own.
struct Prepared {
    agent: Arc<AgentHandle>,
    clock: RunClock,
    role: String,
    call: Call,
    /// The step's span, under the case's.
    span: Span,
    /// A send whose payload became an application's messages: (meant, sent) bytes.
    byte_rewrite: Option<(u64, u64)>,
    /// When released together with other steps: the moment it acts.
    start_at: Option<StartAt>,
}

/// The moment steps released together act: on the run clock, and on the
/// clock of the agent that acts (what it is told).
#[derive(Clone, Copy, Debug)]
struct StartAt {
    run_ns: i64,
    mono_ns: u64,
}

/// `message` as a request that acts at `at` (the agent holds it until then).
fn scheduled<T>(at: Option<StartAt>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(at) = at
        && let Ok(value) = at.mono_ns.to_string().parse()
    {
        request
            .metadata_mut()
            .insert(faultlab_proto::START_AT_METADATA, value);
    }
    request
}

/// How long before the moment steps released together act the controller
/// sends them: enough for every request to arrive first. A request that
/// arrives late acts at once, and its start shows it.
fn release_lead(steps: &[Prepared]) -> Duration {
    let slowest_rtt_ns = steps
        .iter()
        .map(|step| step.agent.clock_rtt_ns)
        .max()
        .unwrap_or(0);
    RELEASE_MARGIN
        + Duration::from_nanos(slowest_rtt_ns.saturating_mul(2))
        + RELEASE_PER_STEP * u32::try_from(steps.len()).unwrap_or(u32::MAX)
}

enum Call {
    Listen {
        name: String,
        holder: u64,
        options: Option<pb::SocketOptions>,
    },
    StopListening {
        listener: u64,
    },
    Connect {
        name: String,
        holder: u64,
        address: SocketAddr,
        options: Option<pb::SocketOptions>,
        timeout_ms: u32,
    },
    Accept {
        name: String,
        listener: u64,
        timeout_ms: u32,
    },
    Send(pb::SendRequest),
    Recv(pb::RecvRequest),
    Close(pb::CloseRequest),
    SetOptions(pb::SetOptionsRequest),
    Watch(u64),
    WaitEnd {
        conn: u64,
        timeout_ms: u32,
    },
    Exit {
        holder: u64,
        code: i32,
    },
    Kill {
        holder: u64,
    },
    Sleep(u64),
    Isolate(pb::IsolateRequest),
    Heal(Vec<String>),
    Reboot {
        simulated: bool,
        down_ms: u32,
    },
    LinkDown(pb::LinkDownRequest),
    LinkUp(pb::LinkUpRequest),
    Abort(pb::AbortConnectionsRequest),
    Process(pb::ProcessFaultRequest),
    Unsupported(&'static str),
}

fn prepare(step: &Step, run: &CaseRun<'_>) -> Result<Prepared, StepError> {
    let role = step.role.clone().unwrap_or_default();
    let agent = match step.role.as_ref() {
        Some(role) => Arc::clone(
            run.agents
                .get(role)
                .ok_or_else(|| StepError::Failed(format!("role {role} is not bound")))?,
        ),
        // Steps without a role (sleep) run on the controller; any agent serves for the clock.
        None => run
            .agents
            .values()
            .next()
            .cloned()
            .ok_or_else(|| StepError::Failed("no agents".to_owned()))?,
    };
    let holder = || run.names.holders.get(&role).copied().unwrap_or(0);
    let conn = |name: &str| {
        run.names
            .conns
            .get(name)
            .map(|(id, _, _)| *id)
            .ok_or_else(|| {
                StepError::Failed(format!(
                    "step {}: connection {name:?} was never opened",
                    step.name
                ))
            })
    };
    let listener = |name: &str| {
        run.names.listeners.get(name).cloned().ok_or_else(|| {
            StepError::Failed(format!(
                "step {}: listener {name:?} was never opened",
                step.name
            ))
        })
    };
    let target = run.targets.get(&role);
    let process_request = |action: pb::ProcessAction| -> Call {
        let which = target
            .and_then(|target| target.target.process.as_ref())
            .map(process_target);
        match which {
            Some(which) => Call::Process(pb::ProcessFaultRequest {
                target: Some(which),
                action: action as i32,
            }),
            None => Call::Unsupported(
                "stop, continue and restart (they act on an application's process)",
            ),
        }
    };
    let mut byte_rewrite = None;
    let call = match &step.action {
        Action::Kill if target.is_some() => process_request(pb::ProcessAction::Kill),
        Action::Stop => process_request(pb::ProcessAction::Stop),
        Action::Continue => process_request(pb::ProcessAction::Continue),
        Action::Restart => process_request(pb::ProcessAction::Restart),
        Action::AbortConnections { conn } => {
            let filter = match (conn, target) {
                (Some(conn), _) => {
                    let (local, remote) = flow(run, &role, conn)?;
                    pb::ConnectionFilter {
                        local: local.to_string(),
                        remote: remote.to_string(),
                        ..pb::ConnectionFilter::default()
                    }
                }
                (None, Some(target)) => pb::ConnectionFilter {
                    local_port: u32::from(target.address.port()),
                    ..pb::ConnectionFilter::default()
                },
                (None, None) => {
                    return Err(StepError::Failed(format!(
                        "step {}: name the connection whose flow to abort (conn = ...)",
                        step.name
                    )));
                }
            };
            Call::Abort(pb::AbortConnectionsRequest {
                filter: Some(filter),
            })
        }
        Action::Listen { listener, options } => Call::Listen {
            name: listener.clone(),
            holder: holder(),
            options: socket_options(options),
        },
        Action::StopListening { listener: name } => Call::StopListening {
            listener: listener(name)?.0,
        },
        Action::Connect {
            to,
            conn,
            options,
            timeout_ms,
        } => Call::Connect {
            name: conn.clone(),
            holder: holder(),
            address: listener(to)?.1,
            options: socket_options(options),
            timeout_ms: *timeout_ms,
        },
        Action::Accept {
            listener: name,
            conn,
            timeout_ms,
        } => Call::Accept {
            name: conn.clone(),
            listener: listener(name)?.0,
            timeout_ms: *timeout_ms,
        },
        Action::Send {
            conn: name,
            payload,
            timeout_ms,
        } => {
            let payload = match application_payload(run, name, payload) {
                Some((theirs, meant, sent)) => {
                    byte_rewrite = Some((meant, sent));
                    theirs
                }
                None => scenario_payload(payload),
            };
            Call::Send(pb::SendRequest {
                conn_id: conn(name)?,
                payload: Some(payload),
                timeout_ms: *timeout_ms,
            })
        }
        Action::Recv {
            conn: name,
            all,
            max_bytes,
            timeout_ms,
        } => Call::Recv(pb::RecvRequest {
            conn_id: conn(name)?,
            mode: if *all {
                pb::RecvMode::All
            } else {
                pb::RecvMode::Once
            } as i32,
            max_bytes: *max_bytes,
            timeout_ms: *timeout_ms,
            return_data: false,
        }),
        Action::Close { conn: name, mode } => Call::Close(pb::CloseRequest {
            conn_id: conn(name)?,
            mode: close_mode(*mode) as i32,
            timeout_ms: 0,
        }),
        Action::SetOptions {
            conn: name,
            options,
        } => Call::SetOptions(pb::SetOptionsRequest {
            target: Some(pb::set_options_request::Target::ConnId(conn(name)?)),
            options: socket_options(options),
        }),
        Action::Watch { conn: name } => Call::Watch(conn(name)?),
        Action::WaitEnd {
            conn: name,
            timeout_ms,
        } => Call::WaitEnd {
            conn: conn(name)?,
            timeout_ms: if *timeout_ms == 0 {
                DEFAULT_WAIT_MS
            } else {
                *timeout_ms
            },
        },
        Action::Exit { code } => Call::Exit {
            holder: holder(),
            code: *code,
        },
        Action::Kill => Call::Kill { holder: holder() },
        Action::Sleep { ms } => Call::Sleep(*ms),
        Action::Join { .. } => Call::Unsupported("join"),
        Action::Isolate {
            mode,
            deadline_ms,
            conn,
        } => {
            let flow = conn
                .as_ref()
                .map(|conn| flow(run, &role, conn))
                .transpose()?;
            Call::Isolate(pb::IsolateRequest {
                id: format!("{}-{}-{:x}", run.case_id, step.name, run.clock.now_ns()),
                mode: if mode == "reject" {
                    pb::IsolationMode::Reject
                } else {
                    pb::IsolationMode::Drop
                } as i32,
                peer: flow.map_or_else(String::new, |(_, remote)| remote.ip().to_string()),
                port: flow.map_or(0, |(local, _)| u32::from(local.port())),
                peer_port: flow.map_or(0, |(_, remote)| u32::from(remote.port())),
                direction: pb::Direction::Both as i32,
                deadline_ms: u32::try_from(*deadline_ms).unwrap_or(u32::MAX),
                include_control_channel: false,
            })
        }
        Action::Heal => Call::Heal(
            run.names
                .isolations
                .iter()
                .filter(|(owner, _)| owner == &role)
                .map(|(_, id)| id.clone())
                .collect(),
        ),
        Action::LinkDown { deadline_ms } => Call::LinkDown(pb::LinkDownRequest {
            interface: String::new(),
            address: agent.test_ip.to_string(),
            deadline_ms: u32::try_from(*deadline_ms).unwrap_or(u32::MAX),
            allow_control_interface: false,
        }),
        Action::LinkUp => Call::LinkUp(pb::LinkUpRequest {
            interface: String::new(),
            address: agent.test_ip.to_string(),
        }),
        Action::Reboot { simulated, down_ms } => Call::Reboot {
            simulated: *simulated,
            down_ms: u32::try_from(*down_ms).unwrap_or(u32::MAX),
        },
    };
    let span = tracing::info_span!(
        "step",
        otel.name = %format!("{}: {} on {}", step.name, step.action.keyword(), agent.name),
        faultlab.step = %step.name,
        faultlab.call = step.action.keyword(),
        faultlab.role = %role,
        faultlab.agent = %agent.name,
        faultlab.background = step.background,
    );
    Ok(Prepared {
        agent,
        clock: run.clock,
        role,
        call,
        span,
        byte_rewrite,
        start_at: None,
    })
}

impl Prepared {
    /// Run, and remember the names a listen/connect/accept defined.
    async fn perform_and_record(self, names: &mut Names) -> Result<Option<Outcome>, StepError> {
        let naming = self.note(names);
        let ran = self.run().await?;
        Ok(naming.define(names, ran))
    }

    /// Book what the step is about to change (isolations, frozen
    /// applications, links down: cleanup must undo them even if it fails),
    /// and say which name it will define.
    fn note(&self, names: &mut Names) -> Naming {
        let role = self.role.clone();
        match &self.call {
            Call::Connect { name, address, .. } => {
                names.dialed.insert(name.clone(), *address);
            }
            Call::Process(request) => {
                names.frozen.retain(|frozen| frozen != &role);
                if request.action == pb::ProcessAction::Stop as i32 {
                    names.frozen.push(role.clone());
                }
            }
            Call::Isolate(request) => names.isolations.push((role.clone(), request.id.clone())),
            Call::Heal(ids) => names.isolations.retain(|(_, id)| !ids.contains(id)),
            Call::LinkDown(_) => names.links_down.push(role.clone()),
            Call::LinkUp(_) => names.links_down.retain(|owner| owner != &role),
            _ => {}
        }
        Naming {
            // A stop-listening keeps the name: its address is what a
            // connect to a closed port needs.
            defined: match &self.call {
                Call::Listen { name, .. }
                | Call::Connect { name, .. }
                | Call::Accept { name, .. } => Some(name.clone()),
                _ => None,
            },
            is_listen: matches!(self.call, Call::Listen { .. }),
            is_sleep: matches!(self.call, Call::Sleep(_)),
            role,
        }
    }

    /// Run on its own (a background step).
    async fn perform(self) -> Result<Outcome, StepError> {
        self.run().await.map(|(outcome, _, _)| outcome)
    }

    /// [`Self::call`] in the step's span, which learns how it ended.
    async fn run(self) -> Result<(Outcome, Option<u64>, Option<SocketAddr>), StepError> {
        let span = self.span.clone();
        let result = self.request().instrument(span.clone()).await;
        match &result {
            Ok((outcome, _, _)) => {
                let mut attributes = vec![
                    faultlab_telemetry::Attribute::new(
                        "faultlab.outcome",
                        outcome.outcome.as_str(),
                    ),
                    faultlab_telemetry::Attribute::new(
                        "faultlab.bytes",
                        i64::try_from(outcome.bytes).unwrap_or(i64::MAX),
                    ),
                ];
                if !outcome.errno_name.is_empty() {
                    attributes.push(faultlab_telemetry::Attribute::new(
                        "faultlab.errno_name",
                        outcome.errno_name.clone(),
                    ));
                }
                faultlab_telemetry::annotate(&span, attributes);
            }
            Err(StepError::AgentLost(why) | StepError::Failed(why)) => {
                faultlab_telemetry::fail(&span, why);
            }
        }
        result
    }

    /// The call, its outcome, the id it created, the address it bound.
    async fn request(self) -> Result<(Outcome, Option<u64>, Option<SocketAddr>), StepError> {
        let agent = &self.agent;
        let mut client = agent.client.clone();
        let failed = |status: tonic::Status| lost_or_failed(agent, &status);
        let at = self.start_at;
        // A step released at a scheduled moment starts then, not when asked.
        let start = at.map_or(self.clock.now_ns(), |at| at.run_ns.max(self.clock.now_ns()));
        let ok = |call: &str, clock: &RunClock| Outcome::ok(call, start, clock.now_ns());
        Ok(match self.call {
            Call::Listen {
                holder, options, ..
            } => {
                let reply = client
                    .listen(scheduled(
                        at,
                        pb::ListenRequest {
                            holder_id: holder,
                            address: SocketAddr::new(agent.test_ip, 0).to_string(),
                            backlog: 128,
                            options,
                        },
                    ))
                    .await
                    .map_err(failed)?
                    .into_inner();
                let address = reply.local_address.parse().map_err(|_| {
                    StepError::Failed(format!(
                        "agent {} listens on {:?}, not an address",
                        agent.name, reply.local_address
                    ))
                })?;
                (
                    ok("listen", &self.clock),
                    Some(reply.listener_id),
                    Some(address),
                )
            }
            Call::StopListening { listener } => {
                client
                    .stop_listening(scheduled(
                        at,
                        pb::StopListeningRequest {
                            listener_id: listener,
                        },
                    ))
                    .await
                    .map_err(failed)?;
                (ok("stop-listening", &self.clock), None, None)
            }
            Call::Connect {
                holder,
                address,
                options,
                timeout_ms,
                ..
            } => {
                let reply = client
                    .dial(scheduled(
                        at,
                        pb::ConnectRequest {
                            holder_id: holder,
                            address: address.to_string(),
                            options,
                            timeout_ms,
                        },
                    ))
                    .await
                    .map_err(failed)?
                    .into_inner();
                connected(agent, reply)?
            }
            Call::Accept {
                listener,
                timeout_ms,
                ..
            } => {
                let reply = client
                    .accept(scheduled(
                        at,
                        pb::AcceptRequest {
                            listener_id: listener,
                            timeout_ms,
                        },
                    ))
                    .await
                    .map_err(failed)?
                    .into_inner();
                connected(agent, reply)?
            }
            Call::Send(request) => observed(
                agent,
                client.send(scheduled(at, request)).await,
                "send",
                start,
                &self.clock,
            )?,
            Call::Recv(request) => observed(
                agent,
                client.recv(scheduled(at, request)).await,
                "recv",
                start,
                &self.clock,
            )?,
            Call::Close(request) => observed(
                agent,
                client.close(scheduled(at, request)).await,
                "close",
                start,
                &self.clock,
            )?,
            Call::SetOptions(request) => {
                client
                    .set_options(scheduled(at, request))
                    .await
                    .map_err(failed)?;
                (ok("set-options", &self.clock), None, None)
            }
            Call::Watch(conn_id) => {
                client
                    .watch(scheduled(at, pb::WatchRequest { conn_id }))
                    .await
                    .map_err(failed)?;
                (ok("watch", &self.clock), None, None)
            }
            Call::WaitEnd { conn, timeout_ms } => (
                wait_end(agent, conn, timeout_ms, start, &self.clock).await?,
                None,
                None,
            ),
            Call::Exit { holder, code } => {
                let exit = client
                    .exit_holder(scheduled(
                        at,
                        pb::ExitHolderRequest {
                            holder_id: holder,
                            exit_code: code,
                        },
                    ))
                    .await
                    .map_err(failed)?
                    .into_inner();
                (
                    Outcome::ok("exit", start, agent.run_ns(exit.mono_ns)),
                    None,
                    None,
                )
            }
            Call::Kill { holder } => {
                let exit = client
                    .kill_holder(scheduled(at, pb::KillHolderRequest { holder_id: holder }))
                    .await
                    .map_err(failed)?
                    .into_inner();
                (
                    Outcome::ok("kill", start, agent.run_ns(exit.mono_ns)),
                    None,
                    None,
                )
            }
            Call::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                (ok("sleep", &self.clock), None, None)
            }
            Call::Isolate(request) => {
                client
                    .isolate(scheduled(at, request))
                    .await
                    .map_err(failed)?;
                (ok("isolate", &self.clock), None, None)
            }
            Call::Heal(ids) => {
                for id in ids {
                    client
                        .heal(scheduled(at, pb::HealRequest { id, all: false }))
                        .await
                        .map_err(failed)?;
                }
                (ok("heal", &self.clock), None, None)
            }
            Call::Reboot { simulated, down_ms } => {
                client
                    .reboot(scheduled(at, pb::RebootRequest { simulated, down_ms }))
                    .await
                    .map_err(failed)?;
                if !simulated {
                    wait_for_new_boot(agent).await?;
                }
                (ok("reboot", &self.clock), None, None)
            }
            Call::LinkDown(request) => {
                client
                    .link_down(scheduled(at, request))
                    .await
                    .map_err(failed)?;
                (ok("link-down", &self.clock), None, None)
            }
            Call::LinkUp(request) => {
                client
                    .link_up(scheduled(at, request))
                    .await
                    .map_err(failed)?;
                (ok("link-up", &self.clock), None, None)
            }
            Call::Abort(request) => {
                let reply = client
                    .abort_connections(scheduled(at, request))
                    .await
                    .map_err(failed)?
                    .into_inner();
                let mut outcome =
                    Outcome::ok("abort-connections", start, agent.run_ns(reply.mono_ns));
                // How many connections went: the scenario can expect it.
                outcome.bytes = reply.aborted.len() as u64;
                (outcome, None, None)
            }
            Call::Process(request) => {
                let call = match pb::ProcessAction::try_from(request.action) {
                    Ok(pb::ProcessAction::Kill) => "kill",
                    Ok(pb::ProcessAction::Stop) => "stop",
                    Ok(pb::ProcessAction::Continue) => "continue",
                    Ok(pb::ProcessAction::Restart) => "restart",
                    _ => "process",
                };
                let reply = client
                    .process_fault(scheduled(at, request))
                    .await
                    .map_err(failed)?
                    .into_inner();
                (
                    Outcome::ok(call, start, agent.run_ns(reply.mono_ns)),
                    None,
                    None,
                )
            }
            Call::Unsupported(what) => {
                return Err(StepError::Failed(format!(
                    "{what} is not available for this role"
                )));
            }
        })
    }
}

type Ran = (Outcome, Option<u64>, Option<SocketAddr>);

/// The name a step defines, known once it has run.
struct Naming {
    role: String,
    defined: Option<String>,
    is_listen: bool,
    is_sleep: bool,
}

impl Naming {
    /// Remember what the step defined; its outcome, unless it was a sleep.
    fn define(self, names: &mut Names, (outcome, new_id, address): Ran) -> Option<Outcome> {
        if let Some(name) = self.defined {
            match (self.is_listen, new_id) {
                (true, Some(id)) => {
                    if let Some(address) = address {
                        names.listeners.insert(name, (id, address, self.role));
                    }
                }
                (false, Some(id)) => {
                    names.conns.insert(name, (id, self.role, address));
                }
                _ => {}
            }
        }
        (!self.is_sleep).then_some(outcome)
    }
}

/// How often a controller asks a rebooting agent whether it is back.
const REBOOT_POLL: Duration = Duration::from_secs(1);

/// After a real reboot: wait until the agent answers with another boot id
/// (the case's timeout bounds the wait).
async fn wait_for_new_boot(agent: &AgentHandle) -> Result<(), StepError> {
    loop {
        tokio::time::sleep(REBOOT_POLL).await;
        let mut client = agent.client.clone();
        if let Ok(info) = client.host_info(pb::HostInfoRequest {}).await
            && info.get_ref().boot_id != agent.info.boot_id
        {
            return Ok(());
        }
    }
}

fn connected(agent: &AgentHandle, reply: pb::ConnectReply) -> Result<Ran, StepError> {
    let observation = reply
        .observation
        .ok_or_else(|| StepError::Failed(format!("agent {} gave no observation", agent.name)))?;
    let id = (reply.conn_id != 0).then_some(reply.conn_id);
    let local = reply.local_address.parse().ok();
    Ok((Outcome::observed(agent, &observation), id, local))
}

fn observed(
    agent: &AgentHandle,
    result: Result<tonic::Response<pb::Observation>, tonic::Status>,
    call: &str,
    start: i64,
    clock: &RunClock,
) -> Result<Ran, StepError> {
    match result {
        Ok(reply) => Ok((Outcome::observed(agent, &reply.into_inner()), None, None)),
        Err(status) if holder_gone(&status) => {
            let mut outcome = Outcome::ok(call, start, clock.now_ns());
            outcome.outcome = ExpectedOutcome::HolderGone;
            Ok((outcome, None, None))
        }
        Err(status) => Err(lost_or_failed(agent, &status)),
    }
}

async fn wait_end(
    agent: &AgentHandle,
    conn_id: u64,
    timeout_ms: u32,
    start: i64,
    clock: &RunClock,
) -> Result<Outcome, StepError> {
    let mut client = agent.client.clone();
    let mut events = client
        .events(pb::EventsRequest { since: 0 })
        .await
        .map_err(|status| lost_or_failed(agent, &status))?
        .into_inner();
    let waited = tokio::time::timeout(Duration::from_millis(u64::from(timeout_ms)), async {
        while let Some(event) = events
            .message()
            .await
            .map_err(|status| lost_or_failed(agent, &status))?
        {
            if let Some(pb::event::Kind::ConnectionEnded(observation)) = event.kind
                && observation.conn_id == conn_id
            {
                return Ok(Some(observation));
            }
        }
        Ok(None)
    })
    .await;
    match waited {
        Ok(Ok(Some(observation))) => Ok(Outcome::observed(agent, &observation)),
        Ok(Ok(None)) => Err(StepError::AgentLost(format!(
            "agent {}: event stream ended",
            agent.name
        ))),
        Ok(Err(error)) => Err(error),
        Err(_) => {
            let mut outcome = Outcome::ok("watch", start, clock.now_ns());
            outcome.outcome = ExpectedOutcome::Timeout;
            Ok(outcome)
        }
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

fn observations(run: &CaseRun<'_>, case: &Scenario) -> Vec<ObservationReport> {
    let mut reports: Vec<ObservationReport> = run
        .results
        .iter()
        .map(|(step, outcome)| {
            let role = step.role.clone().unwrap_or_default();
            let agent = run.agents.get(&role);
            let os = agent
                .map(|agent| agent.info.os_family.clone())
                .unwrap_or_default();
            ObservationReport {
                step: step.name.clone(),
                host: agent.map(|agent| agent.name.clone()).unwrap_or_default(),
                role,
                call: outcome.call.clone(),
                bytes: outcome.bytes,
                outcome: outcome.outcome.as_str().to_owned(),
                errno: outcome.errno,
                errno_name: outcome.errno_name.clone(),
                sigpipe: outcome.sigpipe,
                unread_bytes: outcome.unread_bytes,
                t_ns: outcome.start_ns,
                duration_ns: u64::try_from(outcome.end_ns - outcome.start_ns).unwrap_or(0),
                checked: step.expect.get(&os).map(|expect| {
                    format!("{os} ({})", expect.source.as_deref().unwrap_or("measured"))
                }),
                expected: step.expect.get(&os).map(Expect::summary),
            }
        })
        .collect();
    let order: HashMap<&str, usize> = case
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| (step.name.as_str(), index))
        .collect();
    reports.sort_by_key(|report| {
        order
            .get(report.step.as_str())
            .copied()
            .unwrap_or(usize::MAX)
    });
    reports
}

/// Check every step against the expectation for its host's OS: how many
/// steps were checked, and what differed.
fn judge(run: &CaseRun<'_>) -> (usize, Vec<String>) {
    let by_name: BTreeMap<&str, &Outcome> = run
        .results
        .iter()
        .map(|(step, outcome)| (step.name.as_str(), outcome))
        .collect();
    let mut checked = 0;
    let mut differences = Vec::new();
    for (step, outcome) in &run.results {
        let Some(agent) = step.role.as_ref().and_then(|role| run.agents.get(role)) else {
            continue;
        };
        let os = &agent.info.os_family;
        let Some(expect) = step.expect.get(os) else {
            continue;
        };
        if run.unchecked.contains_key(&step.name) {
            continue;
        }
        let expect = &with_application_bytes(expect, &run.names.byte_rewrites);
        checked += 1;
        let mut found = compare(expect, outcome, &by_name);
        // Facing an application, an agent's FIN or RST depends on what the
        // application sent meanwhile (a close with its unread reply is a
        // RST): the scripted wire expectations hold only between agents.
        let facing_application = !run.targets.is_empty()
            && !step
                .role
                .as_ref()
                .is_some_and(|role| run.targets.contains_key(role));
        if run.capture.is_some() && expect.checks_wire() && !facing_application {
            // What this role's sockets sent, as its own host's capture saw it
            // (by address and port: on loopback every host is 127.0.0.1).
            let role = step.role.as_deref().unwrap_or_default();
            let mine: Vec<String> = run
                .names
                .listeners
                .values()
                .filter(|(_, _, owner)| owner == role)
                .map(|(_, address, _)| address.to_string())
                .chain(
                    run.names
                        .conns
                        .values()
                        .filter(|(_, owner, _)| owner == role)
                        .filter_map(|(_, _, local)| local.map(|address| address.to_string())),
                )
                .collect();
            let sent: Vec<&WireReport> = run
                .wire
                .iter()
                .filter(|segment| segment.host == agent.name && mine.contains(&segment.source))
                .collect();
            found.extend(compare_wire(expect, outcome.start_ns, &sent));
        }
        for difference in found {
            differences.push(format!(
                "{} ({} on {os}): {difference}",
                step.name, outcome.call
            ));
        }
    }
    (checked, differences)
}

/// An expectation of "all of it" (the bytes a scenario's send meant) made
/// to mean all of what was sent when an application's messages replaced
/// the scenario's.
fn with_application_bytes(expect: &Expect, rewrites: &[(u64, u64)]) -> Expect {
    let rewrite = |bytes: Option<u64>| {
        bytes.map(|bytes| {
            rewrites
                .iter()
                .find(|(meant, _)| *meant == bytes)
                .map_or(bytes, |(_, sent)| *sent)
        })
    };
    Expect {
        bytes: rewrite(expect.bytes),
        wire_bytes_before_fin: rewrite(expect.wire_bytes_before_fin),
        ..expect.clone()
    }
}

/// What differs between the wire expectations and the segments the role's
/// host sent (`sent`, in time order); `from_ns` is the step's start.
fn compare_wire(expect: &Expect, from_ns: i64, sent: &[&WireReport]) -> Vec<String> {
    let mut found = Vec::new();
    let since: Vec<&&WireReport> = sent
        .iter()
        .filter(|segment| segment.t_ns >= from_ns)
        .collect();
    for (wanted, flag, name) in [(expect.wire_rst, 'R', "RST"), (expect.wire_fin, 'F', "FIN")] {
        if let Some(wanted) = wanted {
            let seen = since.iter().any(|segment| segment.flags.contains(flag));
            if seen != wanted {
                found.push(if seen {
                    format!("wire: this host sent a {name}, expected none")
                } else {
                    format!("wire: this host sent no {name}, expected one")
                });
            }
        }
    }
    if let Some(wanted) = expect.wire_bytes_before_fin {
        let fin = sent.iter().position(|segment| segment.flags.contains('F'));
        let before: u64 = sent[..fin.map_or(sent.len(), |at| at + 1)]
            .iter()
            .map(|segment| u64::from(segment.payload))
            .sum();
        match fin {
            None => found.push("wire: no FIN from this host".to_owned()),
            Some(_) if before != wanted => found.push(format!(
                "wire: {before} payload bytes before the FIN, expected {wanted}"
            )),
            Some(_) => {}
        }
    }
    found
}

/// What differs between an expectation and an outcome, in words.
fn compare(expect: &Expect, outcome: &Outcome, steps: &BTreeMap<&str, &Outcome>) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(wanted) = expect.outcome
        && wanted != outcome.outcome
    {
        let errno = if outcome.errno_name.is_empty() {
            String::new()
        } else {
            format!(" {}", outcome.errno_name)
        };
        found.push(format!(
            "outcome {}{errno}, expected {}",
            outcome.outcome.as_str(),
            wanted.as_str()
        ));
    }
    if let Some(wanted) = &expect.error
        && wanted != &outcome.errno_name
    {
        let got = if outcome.errno_name.is_empty() {
            "none"
        } else {
            &outcome.errno_name
        };
        found.push(format!("error {got}, expected {wanted}"));
    }
    if let Some(wanted) = expect.sigpipe
        && wanted != outcome.sigpipe
    {
        found.push(format!("sigpipe {}, expected {wanted}", outcome.sigpipe));
    }
    if let Some(wanted) = expect.bytes
        && wanted != outcome.bytes
    {
        found.push(format!("{} bytes, expected {wanted}", outcome.bytes));
    }
    if let Some(minimum) = expect.bytes_min
        && outcome.bytes < minimum
    {
        found.push(format!(
            "{} bytes, expected at least {minimum}",
            outcome.bytes
        ));
    }
    if let Some(other) = &expect.bytes_below
        && let Some(other_outcome) = steps.get(other.as_str())
        && outcome.bytes >= other_outcome.bytes
    {
        found.push(format!(
            "{} bytes, expected fewer than the {} of step {other}",
            outcome.bytes, other_outcome.bytes
        ));
    }
    if let Some(minimum) = expect.unread_bytes_min
        && outcome.unread_bytes < minimum
    {
        found.push(format!(
            "{} unread bytes, expected at least {minimum}",
            outcome.unread_bytes
        ));
    }
    if let (Some(within), Some(since)) = (expect.within_ms, &expect.since)
        && let Some(reference) = steps.get(since.as_str())
    {
        let elapsed_ms = (outcome.end_ns - reference.start_ns) / 1_000_000;
        if elapsed_ms > i64::try_from(within).unwrap_or(i64::MAX) {
            found.push(format!(
                "ended {elapsed_ms} ms after {since}, expected within {within} ms"
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(kind: ExpectedOutcome, errno_name: &str, bytes: u64) -> Outcome {
        Outcome {
            call: "recv".to_owned(),
            outcome: kind,
            bytes,
            errno: 0,
            errno_name: errno_name.to_owned(),
            sigpipe: false,
            unread_bytes: 0,
            start_ns: 0,
            end_ns: 5_000_000,
        }
    }

    #[test]
    fn matching_outcomes_have_no_differences() {
        let expect = Expect {
            outcome: Some(ExpectedOutcome::Error),
            error: Some("ECONNRESET".to_owned()),
            bytes: Some(10),
            ..Expect::default()
        };
        let got = outcome(ExpectedOutcome::Error, "ECONNRESET", 10);
        assert!(compare(&expect, &got, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn each_difference_is_named() {
        let expect = Expect {
            outcome: Some(ExpectedOutcome::Error),
            error: Some("ECONNABORTED".to_owned()),
            bytes_min: Some(100),
            within_ms: Some(1),
            since: Some("kill".to_owned()),
            ..Expect::default()
        };
        let kill = outcome(ExpectedOutcome::Ok, "", 0);
        let steps = BTreeMap::from([("kill", &kill)]);
        let got = outcome(ExpectedOutcome::Eof, "", 10);
        let found = compare(&expect, &got, &steps);
        assert_eq!(
            found,
            [
                "outcome eof, expected error",
                "error none, expected ECONNABORTED",
                "10 bytes, expected at least 100",
                "ended 5 ms after kill, expected within 1 ms"
            ]
        );
    }
}
