//! A case's timeline: each step waits for the one before it (a barrier
//! across hosts), except background steps, which run on until joined, and
//! steps released together (`with`), which are sent ahead and act at one
//! moment. Steps of a role an application plays are the application's own.

use super::state::{CaseRun, StepError};
use super::steps::{prepare, release_lead};
use super::undo::{AgentUndo, Undo};
use super::wire::start_wire;
use crate::scenario::{Action, Scenario, SocketCall, Step, Timing};
use faultlab_proto::v1 as pb;
use std::collections::HashSet;

/// Play the case's steps in order, recording each outcome in `run`.
pub(super) async fn play<'a>(case: &'a Scenario, run: &mut CaseRun<'a>) -> Result<(), StepError> {
    start_wire(run).await;
    spawn_holders(case, run).await?;
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
        if together.len() > 1 && together.iter().all(|step| !of_application(step, run)) {
            released.extend(together.iter().map(|step| step.name.as_str()));
            play_together(&together, run).await?;
            continue;
        }
        if let Action::Timing(Timing::Join { step: joined }) = &step.action {
            join(case, joined, run).await?;
            continue;
        }
        if by_application(step, run) {
            if application_step(step, run) == Next::Stop {
                return Ok(());
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
        join(case, &name, run).await?;
    }
    Ok(())
}

/// A holder process for every role an agent plays, spawned on all hosts at
/// once (a spawn is a process start: milliseconds each, in every case).
async fn spawn_holders(case: &Scenario, run: &mut CaseRun<'_>) -> Result<(), StepError> {
    let mut spawning = tokio::task::JoinSet::new();
    for (index, role) in case.roles.iter().enumerate() {
        if run.targets.contains_key(role) {
            continue;
        }
        let Some(agent) = run.agents.get(role).cloned() else {
            return Err(StepError::Failed(format!("role {role} is not bound")));
        };
        let request = pb::SpawnHolderRequest {
            label: format!("{}/{role}", case.id),
            session: super::handles::session_id().to_owned(),
        };
        spawning.spawn(async move {
            let spawned = agent.client.clone().spawn_holder(request).await;
            (index, agent, spawned)
        });
    }
    let mut spawned = Vec::with_capacity(spawning.len());
    while let Some(joined) = spawning.join_next().await {
        spawned.push(joined.map_err(|error| StepError::Failed(format!("spawn: {error}")))?);
    }
    // Booked in role order, whichever answered first: cleanup is the same every time.
    spawned.sort_by_key(|(index, _, _)| *index);
    let mut failed = None;
    for (index, agent, reply) in spawned {
        let holder_id = match reply {
            Ok(reply) => reply.into_inner().holder_id,
            Err(status) => {
                failed.get_or_insert_with(|| StepError::from_status(&agent, &status));
                continue;
            }
        };
        let role = &case.roles[index];
        run.names.holders.insert(role.clone(), holder_id);
        run.names.undo.book(Undo::by_agent(
            role,
            format!("holder {holder_id} (its connections, and any flood it sends)"),
            AgentUndo::KillHolder(pb::KillHolderRequest { holder_id }),
        ));
    }
    failed.map_or(Ok(()), Err)
}

/// Wait for the background step `name`; its outcome is its own.
async fn join<'a>(case: &'a Scenario, name: &str, run: &mut CaseRun<'a>) -> Result<(), StepError> {
    let task = run
        .background
        .remove(name)
        .ok_or_else(|| StepError::Failed(format!("{name} is not running")))?;
    let outcome = task
        .await
        .map_err(|error| StepError::Failed(format!("{name}: {error}")))??;
    let step = case
        .steps
        .iter()
        .find(|candidate| candidate.name == name)
        .ok_or_else(|| StepError::Failed(format!("no step {name}")))?;
    run.results.push((step, outcome));
    Ok(())
}

/// Whether an application plays the step's role.
fn of_application(step: &Step, run: &CaseRun<'_>) -> bool {
    step.role
        .as_ref()
        .is_some_and(|role| run.targets.contains_key(role))
}

/// Whether the step is a socket call of a role an application plays.
fn by_application(step: &Step, run: &CaseRun<'_>) -> bool {
    of_application(step, run) && step.action.by_application().is_some()
}

#[derive(PartialEq, Eq)]
enum Next {
    Go,
    Stop,
}

/// An application's own socket call: faultlab neither makes nor sees it.
/// Its listening address is known already; a call it would have to decide
/// to make (send, close, ...) ends the timeline, since what follows would
/// observe nothing the scenario means: the probe judges instead.
fn application_step(step: &Step, run: &mut CaseRun<'_>) -> Next {
    let Some(target) = step.role.as_ref().and_then(|role| run.targets.get(role)) else {
        return Next::Go;
    };
    if let Action::Socket(SocketCall::Listen { listener, .. }) = &step.action {
        run.names.listeners.insert(
            listener.clone(),
            super::state::Listener {
                id: 0,
                address: target.address,
                role: step.role.clone().unwrap_or_default(),
            },
        );
    }
    if step.action.by_application() == Some(true) {
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
        return Next::Stop;
    }
    if !step.expect.is_empty() {
        run.unchecked.insert(
            step.name.clone(),
            "played by the application: its calls are its own (the probe judges it)".to_owned(),
        );
    }
    Next::Go
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

#[cfg(test)]
mod tests {
    use super::super::fake_agent::{self, Call, Faults};
    use super::super::{RunClock, run_case};
    use crate::report::{CaseReport, Verdict};
    use crate::scenario::Scenario;

    fn seed_case(id: &str) -> Result<Scenario, Box<dyn std::error::Error>> {
        let seed = crate::suites::load("seed").ok_or("no seed suite")??;
        Ok(seed
            .into_iter()
            .find(|case| case.id == id)
            .ok_or("no such case")?)
    }

    /// Play `case` on fake agents, the last one with `faults`.
    async fn play_on_fakes(
        case: &Scenario,
        faults: Faults,
    ) -> Result<(CaseReport, Vec<Vec<Call>>, Vec<i64>), Box<dyn std::error::Error>> {
        let clock = RunClock::start();
        let agents = fake_agent::handles(case.roles.len(), faults, &clock).await?;
        let binding: Vec<_> = agents.iter().map(|(agent, _)| agent.clone()).collect();
        let report = run_case(case, &binding, clock).await;
        let calls = agents.iter().map(|(_, script)| script.calls()).collect();
        let offsets = agents
            .iter()
            .map(|(agent, _)| agent.clock_offset_ns())
            .collect();
        Ok((report, calls, offsets))
    }

    fn rpcs(calls: &[Call]) -> Vec<&'static str> {
        calls.iter().map(|call| call.rpc).collect()
    }

    #[tokio::test]
    async fn each_step_goes_to_its_roles_agent_in_order() -> Result<(), Box<dyn std::error::Error>>
    {
        let (report, calls, _) = play_on_fakes(&seed_case("S2")?, Faults::default()).await?;
        assert_eq!(report.verdict, Verdict::Expected, "{report:#?}");
        assert_eq!(
            rpcs(&calls[0]),
            ["SpawnHolder", "Dial", "Send", "Close", "KillHolder"]
        );
        assert_eq!(
            rpcs(&calls[1]),
            ["SpawnHolder", "Listen", "Accept", "Recv", "KillHolder"]
        );
        assert!(calls.iter().flatten().all(|call| call.start_at.is_none()));
        let steps: Vec<&str> = report
            .observations
            .iter()
            .map(|observation| observation.step.as_str())
            .collect();
        assert_eq!(
            steps,
            [
                "1-listen",
                "2-connect",
                "3-accept",
                "send",
                "close",
                "server-reads"
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn steps_released_together_are_told_one_moment_on_each_agents_clock()
    -> Result<(), Box<dyn std::error::Error>> {
        let case = crate::bench::release_case(4)?;
        let (report, calls, offsets) = play_on_fakes(&case, Faults::default()).await?;
        assert_eq!(report.verdict, Verdict::Expected, "{report:#?}");
        let moments: Vec<i64> = calls
            .iter()
            .zip(&offsets)
            .flat_map(|(calls, offset)| {
                calls
                    .iter()
                    .filter_map(move |call| call.start_at.map(|at| at as i64 - offset))
            })
            .collect();
        assert_eq!(moments.len(), 4, "one released send per agent: {calls:?}");
        assert!(moments.iter().all(|moment| *moment == moments[0]));
        let released = report
            .observations
            .iter()
            .filter(|observation| observation.released_ns.is_some())
            .count();
        assert_eq!(released, 4);
        Ok(())
    }

    #[tokio::test]
    async fn an_agent_that_stops_answering_ends_its_case_as_lost()
    -> Result<(), Box<dyn std::error::Error>> {
        let faults = Faults {
            unavailable: Some("Recv"),
            ..Faults::default()
        };
        let (report, calls, _) = play_on_fakes(&seed_case("S2")?, faults).await?;
        assert_eq!(report.verdict, Verdict::AgentLost, "{report:#?}");
        assert!(
            report
                .reason
                .as_deref()
                .is_some_and(|why| why.contains("fake-2")),
            "{report:#?}"
        );
        // Its holder is still killed.
        assert_eq!(calls[1].last().map(|call| call.rpc), Some("KillHolder"));
        Ok(())
    }

    #[tokio::test]
    async fn a_refused_connect_is_shown_as_the_cause_not_its_consequence()
    -> Result<(), Box<dyn std::error::Error>> {
        let faults = Faults {
            refuse: true,
            ..Faults::default()
        };
        let (report, _, _) = play_on_fakes(&seed_case("S2")?, faults).await?;
        assert_eq!(report.verdict, Verdict::Error, "{report:#?}");
        let reason = report.reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with("2-connect: connect ECONNREFUSED at "),
            "{reason}"
        );
        assert!(
            reason.contains("connection \"c\" was never opened"),
            "{reason}"
        );
        let run = crate::report::RunReport {
            schema: crate::report::SCHEMA.to_owned(),
            run_id: "t".to_owned(),
            started_unix_ms: 0,
            finished_unix_ms: 0,
            suite: "t".to_owned(),
            agents: Vec::new(),
            summary: crate::report::Summary::of(std::slice::from_ref(&report)),
            cases: vec![report],
            trace_id: None,
            trace_url: None,
        };
        let table = crate::report::terminal::render(&run, false);
        assert!(table.contains("2-connect: connect ECONNREFUSED"), "{table}");
        Ok(())
    }

    #[tokio::test]
    async fn what_differs_from_the_expectation_is_named() -> Result<(), Box<dyn std::error::Error>>
    {
        let faults = Faults {
            short_by: 100,
            ..Faults::default()
        };
        let (report, _, _) = play_on_fakes(&seed_case("S2")?, faults).await?;
        assert_eq!(report.verdict, Verdict::Differs);
        assert!(
            report
                .differences
                .iter()
                .any(|difference| difference.starts_with("server-reads")),
            "{:?}",
            report.differences
        );
        Ok(())
    }
}
