//! A whole run: every case of the plan on its hosts in its turn, cases on
//! disjoint hosts at once, until done or stopped; then the run's report.

use super::case::{empty_report, run_case_on};
use super::handles::{AgentHandle, RunClock, TargetHandle};
use super::placement::{Placement, place};
use super::plan::Plan;
use crate::report::{CaseReport, RunReport, SCHEMA, Summary, Verdict};
use crate::scenario::Scenario;
use faultlab_proto::Capability;
use faultlab_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::{Id as TaskId, JoinSet};
use tracing::{Instrument as _, Span};

/// Told as cases start and finish (the terminal's progress bars).
pub trait Progress: Send + Sync {
    /// The cases were placed on their hosts, in turn order.
    fn placed(&self, _placements: &[Placement]) {}
    /// A case began.
    fn started(&self, _case: &Scenario, _agents: &[String]) {}
    /// A case ended.
    fn finished(&self, _report: &CaseReport) {}
}

/// No progress output.
pub struct Quiet;

impl Progress for Quiet {}

/// How long resetting an agent after an interrupted run may take.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Run every case of the plan on its hosts in its turn ([`place`]), at most
/// `parallel` at a time unless every host captures (then each host takes
/// one case at a time, and disjoint hosts run theirs at once), until done
/// or `stop` turns true (then unfinished cases are reported as errors and
/// every agent is reset).
///
/// The caller's current span is the run's span (see [`run_span`]): each
/// case's span, and through the agents every host's spans, hang under it.
pub async fn run(
    plan: Plan,
    clock: RunClock,
    progress: Arc<dyn Progress>,
    stop: watch::Receiver<bool>,
) -> RunReport {
    let started_unix_ms = wall_ms();
    let run_span = Span::current();
    // Held open for the run: if this controller dies, its agents kill the
    // holders it left (with their connections and floods).
    for agent in &plan.agents {
        agent.open_session().await;
    }
    let mut cases = Cases::new(&plan);
    progress.placed(&cases.placed);
    if cases.run_all(clock, &progress, &run_span, stop).await {
        reset_all(&plan.agents).await;
    }
    let reports = cases.reports(&plan);
    let summary = Summary::of(&reports);
    annotate(&run_span, &summary);
    RunReport {
        schema: SCHEMA.to_owned(),
        run_id: plan.run_id,
        started_unix_ms,
        finished_unix_ms: wall_ms(),
        suite: plan.suite,
        agents: plan.agents.iter().map(|agent| agent.report()).collect(),
        summary,
        cases: reports,
        trace_id: faultlab_telemetry::trace_id(&run_span),
        trace_url: None,
    }
}

/// Whether every agent captures its host's packets (then every case needs
/// its hosts to itself: see [`super::placement`]).
fn capturing(plan: &Plan) -> bool {
    !plan.agents.is_empty()
        && plan
            .agents
            .iter()
            .all(|agent| agent.offers(Capability::Capture))
}

/// The run's cases: those waiting for their turn (in turn order), those
/// under way, and a slot for each report in plan order.
struct Cases {
    placed: Vec<Placement>,
    waiting: Vec<Placement>,
    running: HashMap<TaskId, Placement>,
    tasks: JoinSet<(usize, CaseReport)>,
    slots: Vec<Option<CaseReport>>,
    /// A task that failed (a bug) still ends as its own case's error.
    failures: HashMap<usize, String>,
    /// Cases at once, at most.
    width: usize,
}

impl Cases {
    fn new(plan: &Plan) -> Self {
        let capturing = capturing(plan);
        let placed = place(plan, capturing);
        Self {
            slots: vec![None; placed.len()],
            waiting: placed.clone(),
            placed,
            running: HashMap::new(),
            tasks: JoinSet::new(),
            failures: HashMap::new(),
            // With captures every case has its hosts to itself: the turns
            // are the limit, not a width.
            width: if capturing {
                usize::MAX
            } else {
                plan.parallel.max(1)
            },
        }
    }

    /// Start every waiting case whose turn it is: nothing it conflicts with
    /// is running or waiting before it.
    fn start_turns(&mut self, clock: RunClock, progress: &Arc<dyn Progress>, span: &Span) {
        let mut index = 0;
        while index < self.waiting.len() && self.running.len() < self.width {
            let candidate = &self.waiting[index];
            let blocked = self
                .running
                .values()
                .chain(&self.waiting[..index])
                .any(|other| other.conflicts_with(candidate));
            if blocked {
                index += 1;
                continue;
            }
            let placement = self.waiting.remove(index);
            let (case, binding, targets, slot) = (
                placement.case.clone(),
                placement.binding.clone(),
                placement.targets.clone(),
                placement.slot,
            );
            let progress = Arc::clone(progress);
            let task = self.tasks.spawn(
                async move {
                    let names: Vec<String> =
                        binding.iter().map(|agent| agent.name.clone()).collect();
                    progress.started(&case, &names);
                    let report = run_case_on(&case, &binding, &targets, clock).await;
                    progress.finished(&report);
                    (slot, report)
                }
                .instrument(span.clone()),
            );
            self.running.insert(task.id(), placement);
        }
    }

    /// Run every case in its turn, until all are done or `stop`; whether
    /// the run was interrupted.
    async fn run_all(
        &mut self,
        clock: RunClock,
        progress: &Arc<dyn Progress>,
        span: &Span,
        mut stop: watch::Receiver<bool>,
    ) -> bool {
        let mut interrupted = false;
        self.start_turns(clock, progress, span);
        while !self.tasks.is_empty() {
            tokio::select! {
                joined = self.tasks.join_next_with_id() => match joined {
                    Some(Ok((id, (slot, report)))) => {
                        self.running.remove(&id);
                        self.slots[slot] = Some(report);
                    }
                    Some(Err(error)) => {
                        if let Some(placement) = self.running.remove(&error.id())
                            && !error.is_cancelled()
                        {
                            self.failures.insert(placement.slot, format!("the case's task failed: {error}"));
                        }
                    }
                    None => break,
                },
                changed = stop.changed(), if !interrupted => {
                    if changed.is_err() || *stop.borrow() {
                        interrupted = true;
                        self.waiting.clear();
                        self.tasks.abort_all();
                    }
                }
            }
            if !interrupted {
                self.start_turns(clock, progress, span);
            }
        }
        interrupted
    }

    /// Every case's report in plan order: a case no binding fits is
    /// skipped, a case that did not finish is an error.
    fn reports(mut self, plan: &Plan) -> Vec<CaseReport> {
        let mut reports = Vec::new();
        for (index, case) in plan.cases.iter().enumerate() {
            let mut mine: Vec<&Placement> = self
                .placed
                .iter()
                .filter(|placement| placement.case_index == index)
                .collect();
            if mine.is_empty() {
                reports.push(unbound(plan, case, &plan.targets_of(case)));
            }
            mine.sort_by_key(|placement| placement.slot);
            for placement in mine {
                let report = self.slots[placement.slot].take().unwrap_or_else(|| {
                    let mut report = empty_report(case, &placement.binding, &placement.targets);
                    report.verdict = Verdict::Error;
                    report.reason = Some(
                        self.failures
                            .remove(&placement.slot)
                            .unwrap_or_else(|| "interrupted before it finished".to_owned()),
                    );
                    report
                });
                reports.push(report);
            }
        }
        reports
    }
}

/// The report of a case no choice of the lab's agents can play.
fn unbound(
    plan: &Plan,
    case: &Scenario,
    targets: &BTreeMap<String, Arc<TargetHandle>>,
) -> CaseReport {
    let mut report = empty_report(case, &[], targets);
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
    report
}

/// After an interruption: every agent drops what the run left.
async fn reset_all(agents: &[Arc<AgentHandle>]) {
    for agent in agents {
        let mut client = agent.client.clone();
        let _ = tokio::time::timeout(RESET_TIMEOUT, client.reset(pb::ResetRequest {})).await;
    }
}

/// The run's totals on its span.
fn annotate(span: &Span, summary: &Summary) {
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    faultlab_telemetry::annotate(
        span,
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
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
