//! The undoing of what a case did, and the truth about it.
//!
//! A case ends by playing its undo list backwards (hosts switched back on
//! first): lifting its isolations, restoring its degradations, plugging its
//! cables back in, thawing its frozen applications and killing its holders
//! (their sockets and any flood go with them). Each undo counts only when
//! its agent or lab said it was done (an agent reads its rules back before
//! it says so). An undo that
//! failed, got no answer, or could not be asked is a [`Leftover`]: the case
//! does not end `expected` over a host that may still be cut off.

use super::handles::{AgentHandle, RunClock};
use super::state::{CLEANUP_TIMEOUT, CaseRun, StepError, holder_gone};
use super::steps::{PLUG_BACK_TIMEOUT, by_the_lab, wait_for_new_boot};
use super::undo::{AgentUndo, UndoBy};
use crate::lab::outside::OutsideFault;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long a host switched back on by cleanup may take to boot until
/// its agent answers (a VM under TCG takes 5 to 10 s).
const POWER_ON_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a host whose cable cleanup plugged back may take until it
/// reaches its peers again (a peer it failed to resolve while the cable was
/// out is tried again by ARP a second apart).
const PATH_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// One try of that, and the pause after a try refused at once.
const PATH_TRY: Duration = Duration::from_millis(100);

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

/// Undo everything the case made and has not undone itself, playing its
/// undo list (see [`UndoList::in_cleanup_order`]); what could not be
/// confirmed undone, in the order tried.
///
/// [`UndoList::in_cleanup_order`]: super::undo::UndoList::in_cleanup_order
pub(super) async fn cleanup(run: &CaseRun<'_>) -> Vec<Leftover> {
    let mut ledger = Ledger::default();
    let mut killing = Vec::new();
    for undo in run.names.undo.in_cleanup_order() {
        let Some(agent) = run.agents.get(&undo.role) else {
            continue;
        };
        match &undo.by {
            // The holders go last, on every host at once.
            UndoBy::Agent(AgentUndo::KillHolder(kill)) => {
                killing.push((Arc::clone(agent), undo.what.clone(), *kill));
            }
            UndoBy::Agent(call) => {
                let done = by_the_agent(agent, call.clone()).await;
                ledger.note(agent, undo.what.clone(), done);
            }
            UndoBy::Lab(fault) => {
                let mut done = by_its_lab(agent, *fault, &run.clock).await;
                if *fault == OutsideFault::Cable && matches!(done, Undo::Done) {
                    done = reaches_its_peers(run, &undo.role, agent).await;
                }
                ledger.note(agent, undo.what.clone(), done);
            }
        }
    }
    // Noted in the order booked, whichever answered first; a kill whose
    // task failed is noted as unanswered, never dropped.
    let mut kills = tokio::task::JoinSet::new();
    let mut tasks = std::collections::HashMap::new();
    for (order, (agent, what, kill)) in killing.into_iter().enumerate() {
        let killer = Arc::clone(&agent);
        let task =
            kills.spawn(async move { by_the_agent(&killer, AgentUndo::KillHolder(kill)).await });
        tasks.insert(task.id(), (order, agent, what));
    }
    let mut killed = Vec::with_capacity(tasks.len());
    while let Some(joined) = kills.join_next_with_id().await {
        let (id, done) = match joined {
            Ok((id, done)) => (id, done),
            Err(error) => (
                error.id(),
                Undo::Unanswered(format!("the kill failed: {error}")),
            ),
        };
        if let Some((order, agent, what)) = tasks.remove(&id) {
            killed.push((order, agent, what, done));
        }
    }
    killed.sort_by_key(|(order, ..)| *order);
    for (_, agent, what, done) in killed {
        ledger.note(&agent, what, done);
    }
    ledger.leftovers
}

/// Have `agent` undo a fault with `call`.
async fn by_the_agent(agent: &AgentHandle, call: AgentUndo) -> Undo {
    let mut client = agent.client.clone();
    match call {
        AgentUndo::KillHolder(kill) => undo(CLEANUP_TIMEOUT, client.kill_holder(kill)).await,
        AgentUndo::Heal(heal) => undo(CLEANUP_TIMEOUT, client.heal(heal)).await,
        AgentUndo::Restore(restore) => undo(CLEANUP_TIMEOUT, client.restore(restore)).await,
        AgentUndo::LinkUp(up) => undo(CLEANUP_TIMEOUT, client.link_up(up)).await,
        AgentUndo::Thaw(thaw) => undo(CLEANUP_TIMEOUT, client.process_fault(thaw)).await,
        AgentUndo::PutBackTcpSetting(setting) => {
            undo(CLEANUP_TIMEOUT, client.put_back_tcp_setting(setting)).await
        }
    }
}

/// Have `agent`'s lab undo `fault` from outside its host: plug its cable
/// back at the switch side, or switch it back on and wait for its agent.
async fn by_its_lab(agent: &AgentHandle, fault: OutsideFault, clock: &RunClock) -> Undo {
    let Some(lab) = agent.lab.clone() else {
        return Undo::Failed(format!(
            "agent {} has no lab to undo it from outside any more",
            agent.name
        ));
    };
    match fault {
        OutsideFault::Cable => {
            let plugged = tokio::time::timeout(
                PLUG_BACK_TIMEOUT,
                by_the_lab(agent, lab, OutsideFault::Cable, None),
            )
            .await;
            lab_undo(plugged)
        }
        OutsideFault::Power => lab_undo(
            tokio::time::timeout(POWER_ON_TIMEOUT, async {
                by_the_lab(agent, lab, OutsideFault::Power, None).await?;
                wait_for_new_boot(agent, clock).await;
                Ok(())
            })
            .await,
        ),
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

/// Whether the host whose cable cleanup plugged back reaches each of the
/// case's other hosts again: a holder of its own (the case's may have been
/// killed by a step) connects to each one's test address, on a port nobody
/// listens on, until the peer answers (its RST, or a connection). A
/// plugged cable is not at once a working path: a peer the host failed to
/// resolve while the cable was out can fail its next connect at once
/// (EHOSTUNREACH, measured on the VM lab: 2 runs in 4), and the next case
/// must not start on such a host. No blind sleep: the wait ends when the
/// path answers (at once on a namespace lab).
async fn reaches_its_peers(run: &CaseRun<'_>, role: &str, agent: &AgentHandle) -> Undo {
    let mut peers = run.hosts();
    peers.retain(|peer| peer.name != agent.name);
    if peers.is_empty() {
        return Undo::Done;
    }
    let mut client = agent.client.clone();
    let spawn = faultlab_proto::v1::SpawnHolderRequest {
        label: format!("{}/{role}/path-probe", run.case_id),
        session: super::handles::session_id().to_owned(),
    };
    let holder_id = match undo_reply(client.spawn_holder(spawn)).await {
        Ok(spawned) => spawned.holder_id,
        Err(why) => return Undo::Failed(format!("the cable is back, but {why}")),
    };
    let mut done = Undo::Done;
    for peer in peers {
        let target = std::net::SocketAddr::new(peer.test_ip, crate::lab::outside::DISCARD_PORT);
        if let Err(why) = path_answers(agent, holder_id, target).await {
            done = Undo::Failed(format!(
                "the cable is back, but {} does not reach {} ({target}) through it within {PATH_READY_TIMEOUT:?}: {why}",
                agent.name, peer.name
            ));
            break;
        }
    }
    let kill = faultlab_proto::v1::KillHolderRequest { holder_id };
    if let Err(why) = undo_reply(client.kill_holder(kill)).await {
        tracing::warn!(agent = %agent.name, %why, "the path probe's holder was not killed; the run's end kills it");
    }
    done
}

/// One call of the cleanup's own, bounded by [`CLEANUP_TIMEOUT`]; its
/// reply, or why there is none.
async fn undo_reply<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(CLEANUP_TIMEOUT, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(format!("its agent said {}", status.message())),
        Err(_) => Err(format!(
            "its agent did not answer within {CLEANUP_TIMEOUT:?}"
        )),
    }
}

/// Connect from `holder_id` on `agent` to `target` until it answers;
/// what the last try said, if it never did.
async fn path_answers(
    agent: &AgentHandle,
    holder_id: u64,
    target: std::net::SocketAddr,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + PATH_READY_TIMEOUT;
    let mut client = agent.client.clone();
    let try_ms = u32::try_from(PATH_TRY.as_millis()).unwrap_or(u32::MAX);
    let mut last = String::from("no try");
    while tokio::time::Instant::now() < deadline {
        let request = faultlab_proto::v1::ConnectRequest {
            holder_id,
            address: target.to_string(),
            options: None,
            timeout_ms: try_ms,
        };
        let reply = undo_reply(client.dial(request)).await?;
        let said = reply.observation.unwrap_or_default();
        // A connection (something listens there after all) or its RST.
        if reply.conn_id != 0 || said.error_name == "ECONNREFUSED" {
            return Ok(());
        }
        if said.error_name.is_empty() {
            // No answer within the try: its SYN waits for the peer's
            // address to be resolved (ARP tries a second apart); try again
            // at once, to see the path the moment it works.
            last = format!("no answer within {PATH_TRY:?}");
        } else {
            // Refused at once (EHOSTUNREACH): pause before the next try.
            last = format!("{} ({})", said.error_name, said.error_message);
            tokio::time::sleep(PATH_TRY).await;
        }
        tracing::debug!(agent = %agent.name, %target, said = %last, "the path does not answer yet");
    }
    Err(last)
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
