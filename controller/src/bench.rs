//! Benchmarks of the controller itself, with numbers from real agents.
//!
//! - **fan-out**: one case on many disjoint agent pairs at once. Two skews:
//!   *hand-off*, from the end of one step on one host to the start of the
//!   next step on the other (what a barrier between hosts costs), and
//!   *spread*, how far apart the pairs start the same step (how evenly a
//!   release reaches every agent).
//! - **suite**: the wall time of a suite run one case at a time, against
//!   the waits its scenarios ask for (sleeps, and sends or waits meant to
//!   time out): what the engine adds on top.

use crate::engine::{AgentHandle, RunClock, run_case};
use crate::report::CaseReport;
use crate::scenario::{Action, ExpectedOutcome, Scenario};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;

/// This process's resident memory now and at its peak, in KiB (Linux:
/// VmRSS and VmHWM of /proc/self/status; `None` elsewhere).
pub fn own_memory_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Percentiles of a set of samples, in µs.
#[derive(Clone, Debug, PartialEq)]
pub struct Spread {
    /// How many samples.
    pub samples: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Spread {
    fn of(mut nanos: Vec<i64>) -> Self {
        nanos.sort_unstable();
        let at = |p: f64| {
            let index = ((nanos.len().saturating_sub(1)) as f64 * p).round() as usize;
            nanos.get(index).copied().unwrap_or(0) as f64 / 1_000.0
        };
        Self {
            samples: nanos.len(),
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: nanos.last().copied().unwrap_or(0) as f64 / 1_000.0,
        }
    }
}

/// What a fan-out run measured.
#[derive(Clone, Debug)]
pub struct Fanout {
    /// Pairs that ran the case at once.
    pub pairs: usize,
    /// How many of them came out `expected`.
    pub expected: usize,
    /// Step end on one host → next step start on another.
    pub handoff: Spread,
    /// Start of the same step across pairs, from the earliest.
    pub spread: Spread,
    /// Wall time of the whole fan-out.
    pub wall_ms: f64,
}

/// Run `case` on disjoint pairs of `agents` (1+2, 3+4, ...) all at once.
pub async fn fanout(case: &Scenario, agents: &[Arc<AgentHandle>], clock: RunClock) -> Fanout {
    let started = Instant::now();
    let mut running = JoinSet::new();
    for pair in agents.chunks_exact(case.roles.len()) {
        let case = case.clone();
        let pair = pair.to_vec();
        running.spawn(async move { run_case(&case, &pair, clock).await });
    }
    let mut reports: Vec<CaseReport> = Vec::new();
    while let Some(joined) = running.join_next().await {
        if let Ok(report) = joined {
            reports.push(report);
        }
    }
    let wall_ms = started.elapsed().as_secs_f64() * 1_000.0;
    let mut handoffs = Vec::new();
    let mut starts_by_step: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    let position = |name: &str| case.steps.iter().position(|step| step.name == name);
    for report in &reports {
        for window in report.observations.windows(2) {
            let (before, after) = (&window[0], &window[1]);
            // Only steps that follow each other directly: a sleep between
            // them is the scenario's wait, not the barrier's cost.
            let adjacent = matches!(
                (position(&before.step), position(&after.step)),
                (Some(a), Some(b)) if b == a + 1
            );
            if adjacent && before.host != after.host {
                let end = before.t_ns + i64::try_from(before.duration_ns).unwrap_or(0);
                handoffs.push((after.t_ns - end).max(0));
            }
        }
        for observation in &report.observations {
            starts_by_step
                .entry(observation.step.clone())
                .or_default()
                .push(observation.t_ns);
        }
    }
    let mut spreads = Vec::new();
    for starts in starts_by_step.values() {
        let earliest = starts.iter().copied().min().unwrap_or(0);
        spreads.extend(starts.iter().map(|start| start - earliest));
    }
    Fanout {
        pairs: reports.len(),
        expected: reports
            .iter()
            .filter(|report| report.verdict == crate::report::Verdict::Expected)
            .count(),
        handoff: Spread::of(handoffs),
        spread: Spread::of(spreads),
        wall_ms,
    }
}

/// The waits a scenario asks for, in ms: sleeps, and the timeouts of steps
/// whose Linux expectation is a timeout (they end only at their deadline).
pub fn inherent_wait_ms(case: &Scenario) -> u64 {
    case.steps
        .iter()
        .map(|step| {
            let times_out = step.expect.get("linux").and_then(|expect| expect.outcome)
                == Some(ExpectedOutcome::Timeout);
            match &step.action {
                Action::Sleep { ms } => *ms,
                Action::Send { timeout_ms, .. } | Action::Recv { timeout_ms, .. } if times_out => {
                    u64::from(*timeout_ms)
                }
                Action::WaitEnd { timeout_ms, .. } | Action::Connect { timeout_ms, .. }
                    if times_out =>
                {
                    u64::from(*timeout_ms)
                }
                _ => 0,
            }
        })
        .sum()
}

/// What a sequential suite run measured.
#[derive(Clone, Debug)]
pub struct SuiteTiming {
    /// Cases run (those whose needs the agents meet).
    pub cases: usize,
    /// How many came out `expected`.
    pub expected: usize,
    /// Sum of their inherent waits.
    pub inherent_ms: u64,
    /// Wall time, one case after the other.
    pub wall_ms: f64,
}

/// Run `cases` one at a time on the first agents.
pub async fn suite(
    cases: &[Scenario],
    agents: &[Arc<AgentHandle>],
    clock: RunClock,
) -> SuiteTiming {
    let runnable: Vec<&Scenario> = cases
        .iter()
        .filter(|case| {
            case.roles.len() <= agents.len()
                && case.needs.iter().all(|need| {
                    agents[..case.roles.len()]
                        .iter()
                        .all(|agent| agent.info.capabilities.contains(need))
                })
        })
        .collect();
    let started = Instant::now();
    let mut expected = 0;
    for case in &runnable {
        let report = run_case(case, &agents[..case.roles.len()], clock).await;
        if report.verdict == crate::report::Verdict::Expected {
            expected += 1;
        }
    }
    SuiteTiming {
        cases: runnable.len(),
        expected,
        inherent_ms: runnable.iter().map(|case| inherent_wait_ms(case)).sum(),
        wall_ms: started.elapsed().as_secs_f64() * 1_000.0,
    }
}
