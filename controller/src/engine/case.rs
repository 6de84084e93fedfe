//! One case on one binding, from start to report: whether it can be played
//! at all, which agent acts for each role, the timeline in a span of its
//! own, the undoing of what it did, the application probes, and the
//! verdict.

use super::cleanup::{Leftover, cleanup};
use super::detection;
use super::handles::{AgentHandle, RunClock, TargetHandle};
use super::judge::{judge, observations};
use super::probe::{self, SocketCounts};
use super::state::{CaseRun, Names, StepError};
use super::timeline::play;
use super::wire::collect_wire;
use crate::report::{CaseReport, Verdict};
use crate::scenario::{Action, Expect, ExpectedOutcome, NetworkFault, Scenario};
use faultlab_proto::Capability;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{Instrument as _, Span};

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

async fn play_case(
    case: &Scenario,
    binding: &[Arc<AgentHandle>],
    targets: &BTreeMap<String, Arc<TargetHandle>>,
    clock: RunClock,
) -> CaseReport {
    for agent in binding {
        agent
            .refresh_clock(&clock, super::handles::CLOCK_REFRESH)
            .await;
    }
    let started = Instant::now();
    let mut report = empty_report(case, binding, targets);
    report.started_ms = u64::try_from(clock.now_ns() / 1_000_000).unwrap_or(0);
    if let Err(why) = playable(case, binding, targets) {
        report.verdict = Verdict::Skipped;
        report.reason = Some(why);
        return report;
    }
    let mut run = CaseRun {
        case_id: case.id.clone(),
        timeout_ms: case.timeout_ms,
        capture: None,
        wire: Vec::new(),
        wire_missed: BTreeMap::new(),
        wire_lost: Vec::new(),
        agents: role_agents(case, binding, targets),
        targets: targets.clone(),
        unchecked: BTreeMap::new(),
        names: Names {
            started_ns: clock.now_ns(),
            ..Names::default()
        },
        clock,
        results: Vec::new(),
        released: HashMap::new(),
        background: HashMap::new(),
    };
    // What the applications' ports held before: a probe judges what the case left.
    let mut baselines = BTreeMap::new();
    for (role, target) in targets {
        baselines.insert(role.clone(), probe::baseline(target).await);
    }
    let played =
        tokio::time::timeout(Duration::from_millis(case.timeout_ms), play(case, &mut run)).await;
    for (_, task) in run.background.drain() {
        task.abort();
    }
    // Before cleanup: the FINs and RSTs of killing the holders are not evidence.
    collect_wire(&mut run).await;
    let leftovers = cleanup(&run).await;
    // After cleanup: the case's clients are gone, its isolations lifted and
    // its frozen applications thawed; what is left is the application's doing.
    report.probes = probes(binding, targets, &baselines).await;
    report.unchecked = unchecked(&run);
    report.observations = observations(&run, case);
    wire_evidence(&mut report, &run);
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    conclude(&mut report, played, &run, &leftovers, case.timeout_ms);
    // Judged: the segments are the report's now (tens of thousands in a flood).
    report.wire = std::mem::take(&mut run.wire);
    report
}

/// What the captures saw, and what it says of the observations: when a
/// FIN or RST arrived before each call that waited for one, and whether the
/// hosts' clocks agree with the wire.
fn wire_evidence(report: &mut CaseReport, run: &CaseRun<'_>) {
    report.wire_evidence = run.capture.is_some();
    report.wire_missed = run.wire_missed.clone();
    // Each host's test address and clock error (by the case's end), by agent name.
    let ended_ns = run.clock.now_ns();
    let hosts = run
        .agents
        .values()
        .map(|agent| {
            (
                agent.name.clone(),
                (agent.test_ip, agent.clock_uncertainty_ns(ended_ns)),
            )
        })
        .collect();
    detection::annotate(&mut report.observations, &run.wire, &hosts, &run.wire_lost);
    report.clock_check = detection::clock_check(&run.wire, &hosts);
}

/// The verdict of a case from how its timeline ended (`played`: within
/// its timeout or not) and what its cleanup left; a lost or late case
/// quotes its hosts' logs.
fn conclude(
    report: &mut CaseReport,
    played: Result<Result<(), StepError>, tokio::time::error::Elapsed>,
    run: &CaseRun<'_>,
    leftovers: &[Leftover],
    timeout_ms: u64,
) {
    match played {
        Err(_) => {
            report.verdict = Verdict::Timeout;
            report.reason = Some(format!("the case did not finish within {timeout_ms} ms"));
        }
        Ok(Err(StepError::AgentLost(reason))) => {
            report.verdict = Verdict::AgentLost;
            report.reason = Some(reason);
        }
        Ok(Err(StepError::Failed(reason))) => {
            report.verdict = Verdict::Error;
            report.reason = Some(reason);
        }
        Ok(Ok(())) => give_verdict(report, run),
    }
    if !leftovers.is_empty() {
        not_healed(report, leftovers);
    }
    if matches!(report.verdict, Verdict::AgentLost | Verdict::Timeout) {
        report.host_logs = host_logs(run);
    }
}

/// A case whose cleanup could not confirm every undo is not `expected`
/// whatever it saw: `agent-lost` when an agent could not be reached,
/// `error` when one said its undo failed; either way it names what may
/// still be in place, where, and the command that heals it.
fn not_healed(report: &mut CaseReport, leftovers: &[Leftover]) {
    report.left_in_place = leftovers.iter().map(Leftover::describe).collect();
    let said = format!(
        "cleanup could not confirm everything undone: {}",
        report.left_in_place.join("; ")
    );
    report.reason = Some(match report.reason.take() {
        Some(reason) => format!("{reason}; {said}"),
        None => said,
    });
    if !matches!(
        report.verdict,
        Verdict::AgentLost | Verdict::Timeout | Verdict::Error
    ) {
        report.verdict = if leftovers.iter().any(|leftover| leftover.agent_lost) {
            Verdict::AgentLost
        } else {
            Verdict::Error
        };
    }
}

/// Lines of each host log a report quotes.
const LOG_LINES: usize = 12;

/// Where the case's hosts' labs keep their logs, with their last lines.
fn host_logs(run: &CaseRun<'_>) -> BTreeMap<String, String> {
    run.agents
        .values()
        .filter_map(|agent| {
            let said = agent.lab.as_ref()?.last_words(LOG_LINES);
            (!said.is_empty()).then(|| (agent.name.clone(), said))
        })
        .collect()
}

/// Why the case cannot be played on this binding, if it cannot.
fn playable(
    case: &Scenario,
    binding: &[Arc<AgentHandle>],
    targets: &BTreeMap<String, Arc<TargetHandle>>,
) -> Result<(), String> {
    for (role, target) in targets {
        application_can_play(case, role, target)?;
    }
    if let Some(application) = &case.application
        && !targets.contains_key(application)
    {
        return Err(format!(
            "role {application} is for an application under test: bind one with --target {application}=..."
        ));
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
            .find(|need| !agent.offers(*need));
        let by_flags = case
            .steps
            .iter()
            .filter(|step| step.role.as_ref() == Some(role))
            .find(|step| step.action.cuts_by_tcp_flags());
        if let Some(step) = by_flags
            && agent.info.os_family == "windows"
        {
            return Err(format!(
                "step {} cuts only new or only open connections, told apart by TCP flags, which Windows Firewall (agent {}) cannot match",
                step.name, agent.name
            ));
        }
        if let Some(missing) = missing
            && agent.denies(missing)
        {
            return Err(format!(
                "needs capability \"{missing}\", which the access rules of agent {} do not give you ({}); its owner can (docs/security.md)",
                agent.name, agent.info.caller
            ));
        }
        if let Some(missing) = missing {
            // The agent's own word on why, when it gave one (a kernel
            // without sch_netem).
            let why = agent
                .info
                .unavailable
                .iter()
                .find_map(|line| line.strip_prefix(&format!("{missing}: ")))
                .map_or_else(
                    || how_to_allow(missing).to_owned(),
                    |why| format!(": {why}"),
                );
            return Err(format!(
                "needs capability \"{missing}\", which agent {} does not offer{why}",
                agent.name
            ));
        }
    }
    Ok(())
}

/// For a capability that is off unless allowed, where it is allowed.
fn how_to_allow(capability: Capability) -> &'static str {
    match capability {
        Capability::Process => {
            " (it is off unless allowed: `faultlab run --allow-process` on a local lab, \
             `faultlab lab up --allow-process`, or the agent's `--allow process`)"
        }
        _ => "",
    }
}

/// Whether the application playing `role` can do that role's steps: its
/// faults need an agent on its host with the capability, and process
/// faults need the target to name its process.
fn application_can_play(case: &Scenario, role: &str, target: &TargetHandle) -> Result<(), String> {
    let steps = case
        .steps
        .iter()
        .filter(|step| step.role.as_deref() == Some(role));
    for step in steps {
        let on_the_process =
            matches!(&step.action, Action::Process(fault) if fault.acts_on_the_process());
        let host_reboots = target
            .host
            .as_ref()
            .is_some_and(|host| host.offers(Capability::Reboot));
        if let Action::Network(NetworkFault::Reboot { simulated, .. }) = step.action
            && simulated.unwrap_or(!host_reboots)
        {
            return Err(format!(
                "step {}: a simulated reboot forgets only the agent's own sockets; the application's would survive it (a real reboot needs `reboot`)",
                step.name
            ));
        }
        let capability = if on_the_process {
            Some(Capability::Process)
        } else {
            step.action.capability()
        };
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
        if host.denies(capability) {
            return Err(format!(
                "step {} needs capability \"{capability}\", which the access rules of agent {} (on the application's host) do not give you ({})",
                step.name, host.name, host.info.caller
            ));
        }
        if !host.offers(capability) {
            return Err(format!(
                "step {} needs capability \"{capability}\", which agent {} (on the application's host) does not offer{}",
                step.name,
                host.name,
                how_to_allow(capability)
            ));
        }
        if on_the_process && target.target.process.is_none() {
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

/// Each role's agent: its own, or the agent on its application's host.
fn role_agents(
    case: &Scenario,
    binding: &[Arc<AgentHandle>],
    targets: &BTreeMap<String, Arc<TargetHandle>>,
) -> HashMap<String, Arc<AgentHandle>> {
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
    agents
}

/// Probe every application after the case, from the case's first agent
/// (or the agent on its host).
async fn probes(
    binding: &[Arc<AgentHandle>],
    targets: &BTreeMap<String, Arc<TargetHandle>>,
    baselines: &BTreeMap<String, SocketCounts>,
) -> Vec<crate::report::ProbeReport> {
    let mut reports = Vec::new();
    for (role, target) in targets {
        if let Some(from) = binding.first().or(target.host.as_ref()) {
            reports.push(probe::probe(role, target, from, baselines.get(role)).await);
        }
    }
    reports
}

/// The steps not judged, and why; facing an application, also the wire
/// expectations of the agents' steps (a FIN or RST then depends on what
/// the application sent).
fn unchecked(run: &CaseRun<'_>) -> Vec<String> {
    let mut unchecked: Vec<String> = run
        .unchecked
        .iter()
        .map(|(step, why)| format!("{step}: {why}"))
        .collect();
    if run.capture.is_none() || run.targets.is_empty() {
        return unchecked;
    }
    for (step, _) in &run.results {
        let agent_role = step
            .role
            .as_ref()
            .is_some_and(|role| !run.targets.contains_key(role));
        if agent_role
            && !run.unchecked.contains_key(&step.name)
            && step.expect.values().any(Expect::checks_wire)
        {
            unchecked.push(format!(
                "{}: its wire expectation is not checked: facing an application, a FIN or RST depends on what the application sent",
                step.name
            ));
        }
    }
    unchecked
}

/// A case that played to its end: expected when every check passed and
/// there was at least one.
fn give_verdict(report: &mut CaseReport, run: &CaseRun<'_>) {
    let (mut checked, mut differences) = judge(run);
    for probe in &report.probes {
        checked += 1;
        differences.extend(
            probe
                .problems
                .iter()
                .map(|problem| format!("probe of {} ({}): {problem}", probe.role, probe.target)),
        );
    }
    report.differences = differences;
    report.verdict = if !report.differences.is_empty() {
        Verdict::Differs
    } else if checked == 0 {
        report
            .differences
            .push(format!("no expectation is written for {}", report.os_pair));
        // What went wrong unjudged is the likelier reason to read on.
        report.differences.extend(
            run.results
                .iter()
                .filter(|(_, outcome)| outcome.outcome != ExpectedOutcome::Ok)
                .map(|(step, outcome)| {
                    let errno = match outcome.errno_name.is_empty() {
                        true => String::new(),
                        false => format!(" {}", outcome.errno_name),
                    };
                    format!(
                        "{} ({}) ended {}{errno} after {} ms, unjudged",
                        step.name,
                        outcome.call,
                        outcome.outcome.as_str(),
                        (outcome.end_ns - outcome.start_ns).max(0) / 1_000_000
                    )
                }),
        );
        Verdict::Differs
    } else {
        Verdict::Expected
    };
}

/// Who plays each role: (role, an agent's name or the application, its OS).
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

/// A case's report before it has run (skipped, no observations).
pub(super) fn empty_report(
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
        ..CaseReport::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::RunClock;
    use super::super::fake_agent::{self, Faults};
    use super::*;

    #[tokio::test]
    async fn a_cut_by_tcp_flags_is_not_played_on_windows_and_says_why()
    -> Result<(), Box<dyn std::error::Error>> {
        let partitions = crate::suites::load("partitions").ok_or("no partitions suite")??;
        let n5 = partitions
            .iter()
            .find(|case| case.id == "N5")
            .ok_or("no N5")?;
        let clock = RunClock::start();
        let mut binding = Vec::new();
        for (mut agent, _) in fake_agent::handles(2, Faults::default(), &clock).await? {
            let handle = Arc::get_mut(&mut agent).ok_or("the handle is shared")?;
            handle.info.capabilities.push("isolate".to_owned());
            binding.push(agent);
        }
        assert_eq!(playable(n5, &binding, &BTreeMap::new()), Ok(()));
        let server = Arc::get_mut(&mut binding[1]).ok_or("the handle is shared")?;
        server.info.os_family = "windows".to_owned();
        let why = playable(n5, &binding, &BTreeMap::new())
            .err()
            .unwrap_or_default();
        assert!(
            why.contains("step cut-new") && why.contains("TCP flags"),
            "{why}"
        );
        Ok(())
    }
}
