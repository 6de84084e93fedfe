//! A whole run: every case of the plan on each of its bindings, a few at a
//! time, until done or stopped; then the run's report.

use super::case::{empty_report, run_case_on};
use super::handles::{AgentHandle, RunClock, TargetHandle};
use super::plan::{Plan, Progress};
use crate::report::{CaseReport, RunReport, SCHEMA, Summary, Verdict};
use crate::scenario::Scenario;
use faultlab_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{RwLock, Semaphore, watch};
use tokio::task::{Id as TaskId, JoinSet};
use tracing::{Instrument as _, Span};

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
    stop: watch::Receiver<bool>,
) -> RunReport {
    let started_unix_ms = wall_ms();
    let run_span = Span::current();
    let mut cases = Cases::spawn(&plan, clock, &progress, &run_span);
    if cases.collect(stop).await {
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

/// How many cases may run at once. Wire evidence needs quiet hosts: a
/// neighbour's flood (S4 moves hundreds of MB) makes the kernel drop
/// packets meant for a capture, and a verdict on a partial capture would
/// be wrong. With captures, one case at a time.
fn width(plan: &Plan) -> usize {
    let capturing = !plan.agents.is_empty()
        && plan
            .agents
            .iter()
            .all(|agent| agent.info.capabilities.iter().any(|c| c == "capture"));
    if capturing { 1 } else { plan.parallel.max(1) }
}

/// Whether a case must run alone: one that cuts hosts off, pulls their
/// cables, cuts their power, reboots them or degrades their network
/// would disturb any other on the same hosts, and an application's probe
/// counts every socket of its port.
fn runs_alone(case: &Scenario, targets: &BTreeMap<String, Arc<TargetHandle>>) -> bool {
    !targets.is_empty()
        || case.needs.iter().any(|need| {
            ["isolate", "reboot", "link", "power", "degrade", "loss"].contains(&need.as_str())
        })
}

/// The run's cases under way: one task per case and binding, each with a
/// slot for its report in plan order.
struct Cases {
    tasks: JoinSet<(usize, CaseReport)>,
    slots: Vec<Option<CaseReport>>,
    slot_of_task: HashMap<TaskId, usize>,
    /// A task that failed (a bug) still ends as its own case's error.
    failures: HashMap<usize, String>,
}

impl Cases {
    fn spawn(plan: &Plan, clock: RunClock, progress: &Arc<dyn Progress>, span: &Span) -> Self {
        let gate = Arc::new(Semaphore::new(width(plan)));
        let alone = Arc::new(RwLock::new(()));
        let mut cases = Self {
            tasks: JoinSet::new(),
            slots: Vec::new(),
            slot_of_task: HashMap::new(),
            failures: HashMap::new(),
        };
        for case in &plan.cases {
            let targets = plan.targets_of(case);
            for binding in plan.bindings(case) {
                let index = cases.slots.len();
                cases.slots.push(None);
                let (case, targets) = (case.clone(), targets.clone());
                let (gate, alone) = (Arc::clone(&gate), Arc::clone(&alone));
                let progress = Arc::clone(progress);
                let task = cases.tasks.spawn(
                    async move {
                        let (_shared, _sole) = if runs_alone(&case, &targets) {
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
                    .instrument(span.clone()),
                );
                cases.slot_of_task.insert(task.id(), index);
            }
        }
        cases
    }

    /// Wait for every case, or for `stop`; whether the run was interrupted.
    async fn collect(&mut self, mut stop: watch::Receiver<bool>) -> bool {
        let mut interrupted = false;
        while !self.tasks.is_empty() {
            tokio::select! {
                joined = self.tasks.join_next() => match joined {
                    Some(Ok((index, report))) => self.slots[index] = Some(report),
                    Some(Err(error)) if !error.is_cancelled() => {
                        if let Some(index) = self.slot_of_task.get(&error.id()) {
                            self.failures.insert(*index, format!("the case's task failed: {error}"));
                        }
                    }
                    Some(Err(_)) => {}
                    None => break,
                },
                changed = stop.changed(), if !interrupted => {
                    if changed.is_err() || *stop.borrow() {
                        interrupted = true;
                        self.tasks.abort_all();
                    }
                }
            }
        }
        interrupted
    }

    /// Every case's report in plan order: a case no binding fits is
    /// skipped, a case that did not finish is an error.
    fn reports(mut self, plan: &Plan) -> Vec<CaseReport> {
        let mut reports = Vec::new();
        let mut index = 0;
        for case in &plan.cases {
            let bindings = plan.bindings(case);
            let targets = plan.targets_of(case);
            if bindings.is_empty() {
                reports.push(unbound(plan, case, &targets));
            }
            for binding in bindings {
                let report = self.slots[index].take().unwrap_or_else(|| {
                    let mut report = empty_report(case, &binding, &targets);
                    report.verdict = Verdict::Error;
                    report.reason = Some(
                        self.failures
                            .remove(&index)
                            .unwrap_or_else(|| "interrupted before it finished".to_owned()),
                    );
                    report
                });
                reports.push(report);
                index += 1;
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
