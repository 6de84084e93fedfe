//! The undoing of what a case did, and the truth about it.
//!
//! A case ends by thawing its frozen applications, plugging its cables
//! back in, switching its hosts back on, restoring its degradations,
//! lifting its isolations and killing its holders (their sockets and any
//! flood go with them). Each undo counts only when its agent or lab said it
//! was done (an agent reads its rules back before it says so). An undo that
//! failed, got no answer, or could not be asked is a [`Leftover`]: the case
//! does not end `expected` over a host that may still be cut off.

use super::handles::AgentHandle;
use super::state::{CLEANUP_TIMEOUT, CaseRun, StepError, holder_gone};
use super::steps::{PLUG_BACK_TIMEOUT, by_the_lab, process_target, wait_for_new_boot};
use crate::lab::outside::OutsideFault;
use faultlab_proto::v1 as pb;
use std::future::Future;
use std::time::Duration;

/// How long a host switched back on by cleanup may take to boot until
/// its agent answers (a VM under TCG takes 5 to 10 s).
const POWER_ON_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a host whose cable cleanup plugged back at the switch side is
/// left to settle: its neighbour entries that failed meanwhile are tried
/// again (three ARP probes a second apart).
const CABLE_SETTLE: Duration = Duration::from_secs(3);

/// Something a case made that its cleanup could not confirm undone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Leftover {
    /// The agent of the host it is on.
    pub agent: String,
    /// That agent's address (for `faultlab heal --all ADDRESS`).
    pub address: String,
    /// What may still be in place, e.g. `isolation "cut-3"`.
    pub what: String,
    /// Why it is not known to be undone.
    pub why: String,
    /// Whether the agent was unreachable (lost or stopped), rather than
    /// answering that it failed.
    pub agent_lost: bool,
}

impl Leftover {
    /// One line for a report: what, where, why, and what to run.
    pub fn describe(&self) -> String {
        format!(
            "{} may still be in place on {} ({}): {}; run `faultlab heal --all {}`",
            self.what, self.agent, self.address, self.why, self.address
        )
    }
}

/// How one undo call ended.
enum Undo {
    Done,
    /// The agent says there was nothing to undo (the deadline came first,
    /// or the holder had ended): done too.
    NothingThere,
    Failed(String),
    Unanswered(String),
}

/// Await one undo call, bounded by `within`.
async fn undo<T>(
    within: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Undo {
    match tokio::time::timeout(within, call).await {
        Err(_) => Undo::Unanswered(format!("the agent did not answer within {within:?}")),
        Ok(Ok(_)) => Undo::Done,
        Ok(Err(status)) => match status.code() {
            tonic::Code::NotFound => Undo::NothingThere,
            tonic::Code::FailedPrecondition if holder_gone(&status) => Undo::NothingThere,
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
                Undo::Unanswered(format!("the agent cannot be reached: {}", status.message()))
            }
            code => Undo::Failed(format!("the agent said {code:?}: {}", status.message())),
        },
    }
}

/// What a case's cleanup could not confirm.
#[derive(Default)]
struct Ledger {
    leftovers: Vec<Leftover>,
}

impl Ledger {
    fn note(&mut self, agent: &AgentHandle, what: String, undo: Undo) {
        let (why, agent_lost) = match undo {
            Undo::Done | Undo::NothingThere => return,
            Undo::Failed(why) => (why, false),
            Undo::Unanswered(why) => (why, true),
        };
        self.leftovers.push(Leftover {
            agent: agent.name.clone(),
            address: agent.address.clone(),
            what,
            why,
            agent_lost,
        });
    }
}

/// Undo everything the case made and has not undone itself; what could
/// not be confirmed undone, in the order tried.
pub(super) async fn cleanup(run: &CaseRun<'_>) -> Vec<Leftover> {
    let mut ledger = Ledger::default();
    thaw(run, &mut ledger).await;
    // A host switched back on first: a cable is confirmed back by its
    // host's kernel, which must run.
    power_on(run, &mut ledger).await;
    plug_back(run, &mut ledger).await;
    let names = &run.names;
    for degradation in &names.degradations {
        if let Some(agent) = run.agents.get(&degradation.role) {
            let restore = pb::RestoreRequest {
                id: degradation.id.clone(),
            };
            let done = undo(CLEANUP_TIMEOUT, agent.client.clone().restore(restore)).await;
            ledger.note(agent, format!("degradation {:?}", degradation.id), done);
        }
    }
    for isolation in &names.isolations {
        if let Some(agent) = run.agents.get(&isolation.role) {
            let heal = pb::HealRequest {
                id: isolation.id.clone(),
                all: false,
            };
            let done = undo(CLEANUP_TIMEOUT, agent.client.clone().heal(heal)).await;
            ledger.note(agent, format!("isolation {:?}", isolation.id), done);
        }
    }
    for (role, holder) in &names.holders {
        if let Some(agent) = run.agents.get(role) {
            let kill = pb::KillHolderRequest { holder_id: *holder };
            let done = undo(CLEANUP_TIMEOUT, agent.client.clone().kill_holder(kill)).await;
            ledger.note(
                agent,
                format!("holder {holder} (its connections, and any flood it sends)"),
                done,
            );
        }
    }
    ledger.leftovers
}

/// Thaw the case's frozen applications.
async fn thaw(run: &CaseRun<'_>, ledger: &mut Ledger) {
    for role in &run.names.frozen {
        let process = run
            .targets
            .get(role)
            .and_then(|target| target.target.process.as_ref());
        if let (Some(agent), Some(process)) = (run.agents.get(role), process) {
            let thaw = pb::ProcessFaultRequest {
                target: Some(process_target(process)),
                action: pb::ProcessAction::Continue as i32,
            };
            let done = undo(CLEANUP_TIMEOUT, agent.client.clone().process_fault(thaw)).await;
            ledger.note(
                agent,
                format!("the stopped application of role {role}"),
                done,
            );
        }
    }
}

/// Plug the case's cables back in: at the switch side by the lab, or by
/// the agent on its host.
async fn plug_back(run: &CaseRun<'_>, ledger: &mut Ledger) {
    for role in &run.names.links_down {
        let Some(agent) = run.agents.get(role) else {
            continue;
        };
        let what = format!("the pulled cable of {}", agent.test_ip);
        match agent.lab.clone().filter(|lab| lab.can(OutsideFault::Cable)) {
            Some(lab) => {
                let plugged = tokio::time::timeout(
                    PLUG_BACK_TIMEOUT,
                    by_the_lab(agent, lab, OutsideFault::Cable, None),
                )
                .await;
                ledger.note(agent, what, lab_undo(plugged));
                // A peer it failed to resolve while the cable was out can
                // fail its next connect at once (EHOSTUNREACH, seen on the
                // VM lab): the next case gets a host that settled.
                tokio::time::sleep(CABLE_SETTLE).await;
            }
            None => {
                let up = pb::LinkUpRequest {
                    interface: String::new(),
                    address: agent.test_ip.to_string(),
                };
                let done = undo(CLEANUP_TIMEOUT, agent.client.clone().link_up(up)).await;
                ledger.note(agent, what, done);
            }
        }
    }
}

/// Switch back on the hosts the case left without power, and wait for
/// their agents.
async fn power_on(run: &CaseRun<'_>, ledger: &mut Ledger) {
    for role in &run.names.powered_off {
        let Some((agent, lab)) = run
            .agents
            .get(role)
            .and_then(|agent| Some((agent, agent.lab.clone()?)))
        else {
            continue;
        };
        let booted = tokio::time::timeout(POWER_ON_TIMEOUT, async {
            by_the_lab(agent, lab, OutsideFault::Power, None).await?;
            wait_for_new_boot(agent, &run.clock).await;
            Ok(())
        })
        .await;
        ledger.note(agent, "the power cut".to_owned(), lab_undo(booted));
    }
}

/// How a lab's undo ended, bounded by a timeout.
fn lab_undo<T>(done: Result<Result<T, StepError>, tokio::time::error::Elapsed>) -> Undo {
    match done {
        Ok(Ok(_)) => Undo::Done,
        Ok(Err(error)) => Undo::Failed(error.to_string()),
        Err(_) => Undo::Failed("the lab did not finish in time".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ends(status: Result<(), tonic::Status>) -> Undo {
        undo(Duration::from_secs(1), async move {
            status.map(tonic::Response::new)
        })
        .await
    }

    #[tokio::test]
    async fn an_undo_counts_only_when_the_agent_says_it_is_done() {
        assert!(matches!(ends(Ok(())).await, Undo::Done));
        assert!(matches!(
            ends(Err(tonic::Status::not_found("no active isolation"))).await,
            Undo::NothingThere
        ));
        assert!(matches!(
            ends(Err(tonic::Status::internal("still in place: drop_out_v4"))).await,
            Undo::Failed(why) if why.contains("drop_out_v4")
        ));
        assert!(matches!(
            ends(Err(tonic::Status::unavailable("tcp connect error"))).await,
            Undo::Unanswered(_)
        ));
        let never = undo(
            Duration::from_millis(20),
            std::future::pending::<Result<tonic::Response<()>, tonic::Status>>(),
        )
        .await;
        assert!(matches!(never, Undo::Unanswered(why) if why.contains("did not answer")));
    }

    #[test]
    fn a_leftover_names_the_host_and_the_command_that_heals_it() {
        let leftover = Leftover {
            agent: "local-2".to_owned(),
            address: "198.18.4.12:7420".to_owned(),
            what: "isolation \"cut\"".to_owned(),
            why: "the agent did not answer within 5s".to_owned(),
            agent_lost: true,
        };
        assert_eq!(
            leftover.describe(),
            "isolation \"cut\" may still be in place on local-2 (198.18.4.12:7420): the agent did not answer within 5s; run `faultlab heal --all 198.18.4.12:7420`"
        );
    }
}
