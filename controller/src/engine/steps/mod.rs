//! One step of a timeline as the agent call that performs it. Each family
//! of actions (see `scenario::actions`) has a room here that turns its
//! steps into requests: names resolved to ids, payloads and options
//! converted, and the agent's answer turned into an [`Outcome`]. This
//! module is what they share: the step's agent and span, a scheduled start
//! when steps are released together, and the names a step defines.

mod network;
mod process;
mod socket;
mod timing;

pub(super) use network::{PLUG_BACK_TIMEOUT, by_the_lab, wait_for_new_boot};

use super::handles::{AgentHandle, RunClock, TargetHandle};
use super::state::{CaseRun, Cause, Conn, Listener, Names, Outcome, StepError, holder_gone};
use crate::agents::Client;
use crate::scenario::{Action, ExpectedOutcome, Reference, Step, Timing};
use faultlab_proto::v1 as pb;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{Instrument as _, Span};

/// Steps released together are sent this long, plus two round trips of the
/// slowest agent, plus [`RELEASE_PER_STEP`] each, before they act. A busy
/// host delivers late: with two busy loops per core, 16 agents (debug
/// build) got requests sent 10 ms ahead up to 24 ms late; sent 50 ms ahead
/// they arrived 38–55 ms early. Nothing waits for it but the released
/// steps themselves (and no built-in suite releases steps).
const RELEASE_MARGIN: Duration = Duration::from_millis(50);
/// What one more step of a release costs until it reaches its holder. With
/// 256 agents and the controller on one 2-core machine, 100 µs let the last
/// requests arrive just after the moment when idle, 200 µs did not suffice
/// with two busy loops beside them (p99 67 ms late).
const RELEASE_PER_STEP: Duration = Duration::from_micros(500);

/// The moment steps released together act: on the run clock, and on the
/// clock of the agent that acts (what it is told).
#[derive(Clone, Copy, Debug)]
struct StartAt {
    run_ns: i64,
    mono_ns: u64,
}

/// What a step's call returned: its outcome, and the id and address of
/// what it opened.
pub(super) struct Ran {
    pub outcome: Outcome,
    pub new_id: Option<u64>,
    pub address: Option<SocketAddr>,
}

impl From<Outcome> for Ran {
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            new_id: None,
            address: None,
        }
    }
}

/// What a family needs to turn a step into a request: the step, its role
/// and agent, and what the case has opened so far.
struct Preparing<'r, 'a> {
    step: &'a Step,
    role: &'r str,
    agent: &'r Arc<AgentHandle>,
    run: &'r CaseRun<'a>,
}

impl Preparing<'_, '_> {
    /// The role's holder (0 when the role has none, e.g. an application's).
    fn holder(&self) -> u64 {
        self.run.names.holders.get(self.role).copied().unwrap_or(0)
    }

    /// The application playing the role, if one does.
    fn target(&self) -> Option<&Arc<TargetHandle>> {
        self.run.targets.get(self.role)
    }

    fn names(&self) -> &Names {
        &self.run.names
    }

    /// An id for a fault the step makes: the case, the step, and when
    /// (unique across a run, told apart in the agents' logs).
    fn fault_id(&self) -> String {
        format!(
            "{}-{}-{:x}",
            self.run.case_id,
            self.step.name,
            self.run.clock.now_ns()
        )
    }
}

/// What a family's request runs with: its agent, the run clock, and the
/// moment it is to act.
struct Acting {
    agent: Arc<AgentHandle>,
    clock: RunClock,
    at: Option<StartAt>,
    /// When the step starts (the scheduled moment, or now).
    start: i64,
}

impl Acting {
    fn client(&self) -> Client {
        self.agent.client.clone()
    }

    /// `message` as a request that acts at the step's moment (the agent
    /// holds it until then).
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(at) = self.at
            && let Ok(value) = at.mono_ns.to_string().parse()
        {
            request
                .metadata_mut()
                .insert(faultlab_proto::START_AT_METADATA, value);
        }
        request
    }

    /// The error of a failed request.
    fn failed(&self, status: tonic::Status) -> StepError {
        StepError::from_status(&self.agent, &status)
    }

    /// A call that succeeded, ending now.
    fn ok(&self, call: &str) -> Outcome {
        Outcome::ok(call, self.start, self.clock.now_ns())
    }

    /// A call that succeeded, ending at the agent's `mono_ns`.
    fn ok_until(&self, call: &str, mono_ns: u64) -> Outcome {
        Outcome::ok(call, self.start, self.agent.run_ns(mono_ns))
    }

    /// A socket call's observation; a holder that died during it is an
    /// outcome (`holder-gone`), not a failure.
    fn observed(
        &self,
        result: Result<tonic::Response<pb::Observation>, tonic::Status>,
        call: &str,
    ) -> Result<Ran, StepError> {
        match result {
            Ok(reply) => Ok(Outcome::observed(&self.agent, &reply.into_inner()).into()),
            Err(status) if holder_gone(&status) => {
                let mut outcome = self.ok(call);
                outcome.outcome = ExpectedOutcome::HolderGone;
                Ok(outcome.into())
            }
            Err(status) => Err(self.failed(status)),
        }
    }
}

/// What a step asks its agent for, by family.
enum Request {
    Socket(socket::Request),
    Network(network::Request),
    Process(process::Request),
    Timing(timing::Request),
}

/// A step with its names resolved to ids, ready to run on its own.
pub(super) struct Prepared {
    agent: Arc<AgentHandle>,
    clock: RunClock,
    role: String,
    request: Request,
    /// The step's span, under the case's.
    span: Span,
    /// A send whose payload became an application's messages: (meant, sent) bytes.
    pub byte_rewrite: Option<(u64, u64)>,
    /// When released together with other steps: the moment it acts.
    start_at: Option<StartAt>,
    naming: Naming,
}

/// Turn `step` into its request, with the names the case has defined so far.
pub(super) fn prepare(step: &Step, run: &CaseRun<'_>) -> Result<Prepared, StepError> {
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
    let preparing = Preparing {
        step,
        role: &role,
        agent: &agent,
        run,
    };
    let mut byte_rewrite = None;
    let request = match &step.action {
        Action::Socket(call) => {
            let (request, rewrite) = socket::prepare(call, &preparing)?;
            byte_rewrite = rewrite;
            Request::Socket(request)
        }
        Action::Network(fault) => Request::Network(network::prepare(fault, &preparing)?),
        Action::Process(fault) => Request::Process(process::prepare(fault, &preparing)?),
        Action::Timing(timing) => Request::Timing(timing::prepare(timing, &preparing)?),
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
        naming: Naming::of(step, &role),
        agent,
        clock: run.clock,
        role,
        request,
        span,
        byte_rewrite,
        start_at: None,
    })
}

/// How long before the moment steps released together act the controller
/// sends them: enough for every request to arrive first. A request that
/// arrives late acts at once, and its start shows it.
pub(super) fn release_lead(steps: &[Prepared]) -> Duration {
    let slowest_rtt_ns = steps
        .iter()
        .map(|step| step.agent.clock_rtt_ns())
        .max()
        .unwrap_or(0);
    RELEASE_MARGIN
        + Duration::from_nanos(slowest_rtt_ns.saturating_mul(2))
        + RELEASE_PER_STEP * u32::try_from(steps.len()).unwrap_or(u32::MAX)
}

impl Prepared {
    /// Act at `release_ns` on the run clock: the agent is told that moment
    /// on its own clock.
    pub(super) fn release_at(&mut self, release_ns: i64) {
        self.start_at = Some(StartAt {
            run_ns: release_ns,
            mono_ns: u64::try_from(release_ns.saturating_add(self.agent.clock_offset_ns()))
                .unwrap_or(0),
        });
    }

    /// Run, and remember the names a listen/connect/accept defined.
    pub(super) async fn perform_and_record(
        self,
        names: &mut Names,
    ) -> Result<Option<Outcome>, StepError> {
        let naming = self.note(names);
        let ran = self.run().await?;
        Ok(naming.define(names, ran))
    }

    /// Book what the step is about to change (isolations, frozen
    /// applications, links down: cleanup must undo them even if it fails),
    /// and say which name it will define.
    pub(super) fn note(&self, names: &mut Names) -> Naming {
        match &self.request {
            Request::Socket(request) => request.note(&self.role, names),
            Request::Network(request) => request.note(&self.role, names),
            Request::Process(request) => request.note(&self.role, names),
            Request::Timing(_) => {}
        }
        self.naming.clone()
    }

    /// Run on its own (a background step).
    pub(super) async fn perform(self) -> Result<Outcome, StepError> {
        self.run().await.map(|ran| ran.outcome)
    }

    /// The request in the step's span, which learns how it ended.
    pub(super) async fn run(self) -> Result<Ran, StepError> {
        let span = self.span.clone();
        let result = self.request().instrument(span.clone()).await;
        match &result {
            Ok(ran) => annotate(&span, &ran.outcome),
            Err(StepError::AgentLost(why) | StepError::Failed(why)) => {
                faultlab_telemetry::fail(&span, why);
            }
        }
        result
    }

    async fn request(self) -> Result<Ran, StepError> {
        // A step released at a scheduled moment starts then, not when asked.
        let now = self.clock.now_ns();
        let acting = Acting {
            start: self.start_at.map_or(now, |at| at.run_ns.max(now)),
            agent: self.agent,
            clock: self.clock,
            at: self.start_at,
        };
        match self.request {
            Request::Socket(request) => request.perform(&acting).await,
            Request::Network(request) => request.perform(&acting).await,
            Request::Process(request) => request.perform(&acting).await,
            Request::Timing(request) => request.perform(&acting).await,
        }
    }
}

/// How a step ended, on its span.
fn annotate(span: &Span, outcome: &Outcome) {
    let mut attributes = vec![
        faultlab_telemetry::Attribute::new("faultlab.outcome", outcome.outcome.as_str()),
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
    faultlab_telemetry::annotate(span, attributes);
}

/// What kind of name a step defines.
#[derive(Clone, Copy)]
enum Defines {
    Listener,
    Conn,
}

/// The name a step defines, known once it has run, and whether its
/// outcome is kept (a sleep's is not).
#[derive(Clone)]
pub(super) struct Naming {
    step: String,
    role: String,
    defines: Option<(Defines, String)>,
    kept: bool,
}

impl Naming {
    fn of(step: &Step, role: &str) -> Self {
        let defines = step
            .action
            .references()
            .into_iter()
            .find_map(|reference| match reference {
                Reference::DefinesListener(name) => Some((Defines::Listener, name.to_owned())),
                Reference::DefinesConn(name) => Some((Defines::Conn, name.to_owned())),
                _ => None,
            });
        Self {
            step: step.name.clone(),
            role: role.to_owned(),
            defines,
            kept: !matches!(step.action, Action::Timing(Timing::Sleep { .. })),
        }
    }

    /// Remember what the step defined; its outcome, unless it was a sleep.
    /// A stop-listening keeps the name: its address is what a connect to a
    /// closed port needs.
    /// A connect or listen that failed is remembered as the cause of
    /// whatever later step needs what it would have opened.
    pub(super) fn define(self, names: &mut Names, ran: Ran) -> Option<Outcome> {
        if let (Some((_, name)), None) = (&self.defines, ran.new_id) {
            names.unopened.insert(
                name.clone(),
                Cause::of(&self.step, &ran.outcome, names.started_ns),
            );
            if let Some(local) = ran.address {
                names.tried_from.push((self.role.clone(), local));
            }
        }
        match (self.defines, ran.new_id, ran.address) {
            (Some((Defines::Listener, name)), Some(id), Some(address)) => {
                names.listeners.insert(
                    name,
                    Listener {
                        id,
                        address,
                        role: self.role,
                    },
                );
            }
            (Some((Defines::Conn, name)), Some(id), local) => {
                names.conns.insert(
                    name,
                    Conn {
                        id,
                        role: self.role,
                        local,
                    },
                );
            }
            _ => {}
        }
        self.kept.then_some(ran.outcome)
    }
}
