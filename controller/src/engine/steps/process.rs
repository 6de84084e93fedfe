//! Process faults as agent requests: a holder that exits or is killed, or
//! an application's process killed, frozen, thawed, restarted, or its
//! connections destroyed.

use super::{Acting, Preparing, Ran};
use crate::engine::state::{Names, StepError};
use crate::engine::undo::{AgentUndo, Undo};
use crate::scenario::ProcessFault;
use crate::targets::ProcessSpec;
use faultlab_proto::v1 as pb;

/// A process fault, ready to send.
pub(super) enum Request {
    ExitHolder(pb::ExitHolderRequest),
    KillHolder(pb::KillHolderRequest),
    Abort(pb::AbortConnectionsRequest),
    Process(pb::ProcessFaultRequest),
}

pub(super) fn prepare(fault: &ProcessFault, at: &Preparing<'_, '_>) -> Result<Request, StepError> {
    let target = at.target();
    let on_the_process = |action: pb::ProcessAction| {
        let process = target.and_then(|target| target.target.process.as_ref());
        match process {
            Some(process) => Ok(Request::Process(pb::ProcessFaultRequest {
                target: Some(process_target(process)),
                action: action as i32,
            })),
            None => Err(StepError::Failed(format!(
                "step {}: stop, continue and restart act on an application's process, and role {} has none",
                at.step.name, at.role
            ))),
        }
    };
    match fault {
        ProcessFault::Exit { code } => Ok(Request::ExitHolder(pb::ExitHolderRequest {
            holder_id: at.holder(),
            exit_code: *code,
        })),
        ProcessFault::Kill if target.is_some() => on_the_process(pb::ProcessAction::Kill),
        ProcessFault::Kill => Ok(Request::KillHolder(pb::KillHolderRequest {
            holder_id: at.holder(),
        })),
        ProcessFault::Stop => on_the_process(pb::ProcessAction::Stop),
        ProcessFault::Continue => on_the_process(pb::ProcessAction::Continue),
        ProcessFault::Restart => on_the_process(pb::ProcessAction::Restart),
        ProcessFault::AbortConnections { conn } => {
            let filter = match (conn, target) {
                (Some(conn), _) => {
                    let (local, remote) = at.names().flow(at.step, at.role, conn)?;
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
                        at.step.name
                    )));
                }
            };
            Ok(Request::Abort(pb::AbortConnectionsRequest {
                filter: Some(filter),
            }))
        }
    }
}

impl Request {
    /// A freeze is booked before it is made (cleanup thaws it); any other
    /// process fault ends an earlier freeze.
    pub(super) fn note(&self, role: &str, names: &mut Names) {
        if let Self::Process(request) = self {
            names.undo.thawed(role);
            if request.action == pb::ProcessAction::Stop as i32 {
                names.undo.book(Undo::by_agent(
                    role,
                    format!("the stopped application of role {role}"),
                    AgentUndo::Thaw(pb::ProcessFaultRequest {
                        target: request.target.clone(),
                        action: pb::ProcessAction::Continue as i32,
                    }),
                ));
            }
        }
    }

    pub(super) async fn perform(self, acting: &Acting) -> Result<Ran, StepError> {
        let mut client = acting.client();
        let failed = |status| acting.failed(status);
        let outcome = match self {
            Self::ExitHolder(request) => {
                let exit = client
                    .exit_holder(acting.request(request))
                    .await
                    .map_err(failed)?;
                acting.ok_until("exit", exit.get_ref().mono_ns)
            }
            Self::KillHolder(request) => {
                let exit = client
                    .kill_holder(acting.request(request))
                    .await
                    .map_err(failed)?;
                acting.ok_until("kill", exit.get_ref().mono_ns)
            }
            Self::Abort(request) => {
                let reply = client
                    .abort_connections(acting.request(request))
                    .await
                    .map_err(failed)?
                    .into_inner();
                let mut outcome = acting.ok_until("abort-connections", reply.mono_ns);
                // How many connections went: the scenario can expect it.
                outcome.bytes = reply.aborted.len() as u64;
                outcome
            }
            Self::Process(request) => {
                let call = match pb::ProcessAction::try_from(request.action) {
                    Ok(pb::ProcessAction::Kill) => "kill",
                    Ok(pb::ProcessAction::Stop) => "stop",
                    Ok(pb::ProcessAction::Continue) => "continue",
                    Ok(pb::ProcessAction::Restart) => "restart",
                    _ => "process",
                };
                let reply = client
                    .process_fault(acting.request(request))
                    .await
                    .map_err(failed)?;
                acting.ok_until(call, reply.get_ref().mono_ns)
            }
        };
        Ok(outcome.into())
    }
}

/// An application's process as the contract names it.
fn process_target(process: &ProcessSpec) -> pb::process_fault_request::Target {
    use pb::process_fault_request::Target;
    match process {
        ProcessSpec::Name(name) => Target::Name(name.clone()),
        ProcessSpec::Pid(pid) => Target::Pid(*pid),
        ProcessSpec::Unit(unit) => Target::Unit(unit.clone()),
    }
}
