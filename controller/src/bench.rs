//! Benchmarks of the controller itself, with numbers from real agents.
//!
//! - **fan-out**: one case on many disjoint agent pairs at once. Two skews:
//!   *hand-off*, from the end of one step on one host to the start of the
//!   next step on the other (what a barrier between hosts costs), and
//!   *spread*, how far apart the pairs start the same step (how evenly a
//!   release reaches every agent).
//! - **release**: one case whose roles are every agent, connected in pairs;
//!   then every agent sends one byte, all released together (`with`): how
//!   far apart the agents really act (the barrier skew), next to
//!   the machine's own floor: as many bare processes woken at one moment.
//! - **suite**: the wall time of a suite run one case at a time, against
//!   the waits its cases cannot go without (see [`inherent_waits_ms`]):
//!   what the engine adds on top, on a local lab or any inventory's.

use crate::engine::{AgentHandle, RunClock, inherent_wait_ms, run_case};
use crate::report::CaseReport;
use crate::scenario::{Action, NetworkFault, Scenario};
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
    /// The percentiles of `nanos`.
    pub fn of(mut nanos: Vec<i64>) -> Self {
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

/// What a release measured.
#[derive(Clone, Debug)]
pub struct Release {
    /// Agents that acted at the released moment.
    pub agents: usize,
    /// The case's verdict (every send must be `ok`).
    pub verdict: crate::report::Verdict,
    /// Why, when it is not `expected`.
    pub problems: Vec<String>,
    /// Each agent's start of its send, from the earliest, in ns.
    pub skew_ns: Vec<i64>,
    /// Each agent's start of its send, from the released moment, in ns.
    pub lateness_ns: Vec<i64>,
}

/// The release case for `agents` agents (an even number): pairs connect
/// one after the other, then every agent sends one byte at one moment.
pub fn release_case(agents: usize) -> Result<Scenario, crate::scenario::ScenarioErrors> {
    let pairs = agents / 2;
    let roles: Vec<String> = (0..pairs)
        .flat_map(|pair| [format!("\"c{pair}\""), format!("\"s{pair}\"")])
        .collect();
    let mut text = format!(
        "id = \"B1\"\nname = \"release\"\ntitle = \"Every agent sends one byte at one released moment\"\ntimeout_ms = 300000\nroles = [{}]\n",
        roles.join(", ")
    );
    for pair in 0..pairs {
        text.push_str(&format!(
            "\n[[step]]\nrole = \"s{pair}\"\ndo = \"listen\"\nas = \"l{pair}\"\n\n[[step]]\nrole = \"c{pair}\"\ndo = \"connect\"\nto = \"l{pair}\"\nas = \"c{pair}\"\n\n[[step]]\nrole = \"s{pair}\"\ndo = \"accept\"\nlistener = \"l{pair}\"\nas = \"s{pair}\"\n"
        ));
    }
    for pair in 0..pairs {
        for (role, conn) in [
            (format!("c{pair}"), format!("c{pair}")),
            (format!("s{pair}"), format!("s{pair}")),
        ] {
            let with = if pair == 0 && role.starts_with('c') {
                String::new()
            } else {
                "with = \"send-c0\"\n".to_owned()
            };
            text.push_str(&format!(
                "\n[[step]]\nname = \"send-{role}\"\nrole = \"{role}\"\ndo = \"send\"\nconn = \"{conn}\"\ntext = \"x\"\n{with}expect.linux = {{ outcome = \"ok\", bytes = 1 }}\n"
            ));
        }
    }
    crate::scenario::parse("release.toml", &text)
}

/// Run the release case on `agents` (an even number of them).
pub async fn release(case: &Scenario, agents: &[Arc<AgentHandle>], clock: RunClock) -> Release {
    let report = run_case(case, &agents[..case.roles.len()], clock).await;
    let sends: Vec<&crate::report::ObservationReport> = report
        .observations
        .iter()
        .filter(|observation| observation.step.starts_with("send-"))
        .collect();
    let starts: Vec<i64> = sends.iter().map(|observation| observation.t_ns).collect();
    let lateness: Vec<i64> = sends
        .iter()
        .filter_map(|observation| {
            observation
                .released_ns
                .map(|moment| (observation.t_ns - moment).max(0))
        })
        .collect();
    let earliest = starts.iter().copied().min().unwrap_or(0);
    Release {
        agents: starts.len(),
        verdict: report.verdict,
        problems: report
            .reason
            .into_iter()
            .chain(report.differences)
            .collect(),
        skew_ns: starts.iter().map(|start| start - earliest).collect(),
        lateness_ns: lateness,
    }
}

/// The machine's floor for a release: `count` bare processes of the agent
/// (`faultlab-agent bare-act`) each send 1 byte on a connected socket at one
/// moment, waiting as the agent waits but with no gRPC, holder or runtime
/// in between; how far apart their sends began (from the earliest, ns). Agents on one host cannot
/// act closer together than this.
pub fn act_floor(agent_exe: &std::path::Path, count: usize) -> std::io::Result<Vec<i64>> {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    // Starting the processes takes about a millisecond each.
    let lead = Duration::from_millis(200)
        + Duration::from_millis(2) * u32::try_from(count).unwrap_or(u32::MAX);
    let at = (SystemTime::now() + lead)
        .duration_since(UNIX_EPOCH)
        .map_err(std::io::Error::other)?
        .as_nanos();
    let mut children = Vec::with_capacity(count);
    for _ in 0..count {
        children.push(
            std::process::Command::new(agent_exe)
                .args(["bare-act", &at.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()?,
        );
    }
    let mut began = Vec::with_capacity(count);
    for child in children {
        let output = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        began.push(text.trim().parse::<i64>().map_err(|_| {
            std::io::Error::other(format!(
                "bare-act printed {text:?}, not ns ({})",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        })?);
    }
    let earliest = began.iter().copied().min().unwrap_or(0);
    Ok(began.iter().map(|at| at - earliest).collect())
}

/// `count` CPU-bound busy loops (threads of this process, at the ordinary
/// priority the agents have) until the value is dropped: a loaded host on
/// purpose, for `faultlab bench --load`.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    loops: Vec<std::thread::JoinHandle<u64>>,
}

impl Load {
    /// Start `count` busy loops.
    pub fn start(count: usize) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let loops = (0..count)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut spins = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                    spins
                })
            })
            .collect();
        Self { stop, loops }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for busy in self.loops.drain(..) {
            let _ = busy.join();
        }
    }
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
    /// The cases with the most time beyond their inherent waits, most first
    /// (id, ms over).
    pub most_over: Vec<(String, u64)>,
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
                && case.needed().all(|need| {
                    agents[..case.roles.len()]
                        .iter()
                        .all(|agent| agent.offers(need))
                })
        })
        .collect();
    let started = Instant::now();
    let mut expected = 0;
    let mut inherent_ms = 0;
    let mut over = Vec::with_capacity(runnable.len());
    for case in &runnable {
        let case_started = Instant::now();
        let report = run_case(case, &agents[..case.roles.len()], clock).await;
        let took_ms = u64::try_from(case_started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if report.verdict == crate::report::Verdict::Expected {
            expected += 1;
        }
        let waits = inherent_waits_ms(case, &report);
        inherent_ms += waits;
        over.push((case.id.clone(), took_ms.saturating_sub(waits)));
    }
    over.sort_by_key(|(_, ms)| std::cmp::Reverse(*ms));
    over.truncate(3);
    SuiteTiming {
        cases: runnable.len(),
        expected,
        inherent_ms,
        wall_ms: started.elapsed().as_secs_f64() * 1_000.0,
        most_over: over,
    }
}

/// The waits a case cannot go without, on any lab: the sleeps and the
/// timeouts it asks for (from the scenario), the waits it provokes the
/// kernel into as measured (from the end of each `since` step to the end
/// of the step whose `within_ms` it bounds: a keepalive's or a user
/// timeout's end, a killed peer's FIN), and its reboots as measured (until
/// the host answered again). A sleep between a `since` step and the step
/// it bounds would be counted twice; the built-in suites have none.
pub fn inherent_waits_ms(case: &Scenario, report: &CaseReport) -> u64 {
    let ended = |step: &str| {
        report
            .observations
            .iter()
            .filter(|observation| observation.step == step)
            .map(|observation| {
                observation.t_ns + i64::try_from(observation.duration_ns).unwrap_or(i64::MAX)
            })
            .max()
    };
    let provoked: i64 = case
        .steps
        .iter()
        .filter_map(|step| {
            let since = step.expect.get("linux")?.since.as_deref()?;
            step.expect.get("linux")?.within_ms?;
            Some((ended(&step.name)? - ended(since)?).max(0))
        })
        .sum();
    let reboots: u64 = case
        .steps
        .iter()
        .filter(|step| matches!(step.action, Action::Network(NetworkFault::Reboot { .. })))
        .filter_map(|step| {
            report
                .observations
                .iter()
                .find(|observation| observation.step == step.name)
                .map(|observation| observation.duration_ns / 1_000_000)
        })
        .sum();
    inherent_wait_ms(case) + u64::try_from(provoked / 1_000_000).unwrap_or(0) + reboots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_case_releases_every_agent_together()
    -> Result<(), crate::scenario::ScenarioErrors> {
        let case = release_case(256)?;
        assert_eq!(case.roles.len(), 256);
        let released: Vec<&str> = case
            .steps
            .iter()
            .filter(|step| step.with.as_deref() == Some("send-c0"))
            .map(|step| step.role.as_deref().unwrap_or_default())
            .collect();
        // Every agent but the first sender names it; none twice.
        assert_eq!(released.len(), 255);
        let distinct: std::collections::HashSet<&str> = released.iter().copied().collect();
        assert_eq!(distinct.len(), 255);
        Ok(())
    }

    #[test]
    fn inherent_waits_are_the_asked_ones_and_the_provoked_ones_as_measured()
    -> Result<(), crate::scenario::ScenarioErrors> {
        let case = crate::scenario::parse(
            "waits.toml",
            "id = \"W1\"\nname = \"waits\"\ntitle = \"waits\"\nroles = [\"client\", \"server\"]\nneeds = [\"isolate\"]\n\n[[step]]\nrole = \"server\"\ndo = \"listen\"\nas = \"l\"\n\n[[step]]\ndo = \"sleep\"\nms = 200\n\n[[step]]\nname = \"cut\"\nrole = \"server\"\ndo = \"isolate\"\ndeadline_ms = 10000\n\n[[step]]\nname = \"ends\"\nrole = \"server\"\ndo = \"reboot\"\ndown_ms = 2000\n\n[[step]]\nname = \"seen\"\nrole = \"client\"\ndo = \"connect\"\nto = \"l\"\nas = \"c\"\ntimeout_ms = 3000\nexpect.linux = { outcome = \"timeout\", within_ms = 6000, since = \"cut\" }\n",
        )?;
        let observed = |step: &str, t_ms: i64, took_ms: u64| crate::report::ObservationReport {
            step: step.to_owned(),
            t_ns: t_ms * 1_000_000,
            duration_ns: took_ms * 1_000_000,
            ..crate::report::ObservationReport::default()
        };
        let report = CaseReport {
            observations: vec![
                observed("cut", 200, 5),
                observed("ends", 205, 2_100),
                observed("seen", 2_305, 3_001),
            ],
            ..CaseReport::default()
        };
        // 200 asked + 3 000 expected to time out + 2 100 rebooting, measured
        // + 5 101 from the cut's end to the connect's end.
        assert_eq!(
            inherent_waits_ms(&case, &report),
            200 + 3_000 + 2_100 + 5_101
        );
        Ok(())
    }

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let spread = Spread::of((1..=100).rev().map(|us| us * 1_000).collect());
        assert_eq!(
            (spread.p50_us, spread.p99_us, spread.max_us),
            (51.0, 99.0, 100.0)
        );
    }
}
