//! Network faults as agent requests: isolate and heal, pull the cable and
//! plug it back, reboot (and wait for the new boot).

use super::{Acting, Preparing, Ran};
use crate::engine::handles::AgentHandle;
use crate::engine::state::{Isolation, Names, StepError};
use crate::scenario::{IsolationMode, NetworkFault};
use faultlab_proto::v1 as pb;
use std::time::Duration;

/// How often a controller asks a rebooting agent whether it is back.
const REBOOT_POLL: Duration = Duration::from_secs(1);

/// A network fault, ready to send.
pub(super) enum Request {
    Isolate(pb::IsolateRequest),
    Heal(Vec<String>),
    LinkDown(pb::LinkDownRequest),
    LinkUp(pb::LinkUpRequest),
    Reboot(pb::RebootRequest),
}

pub(super) fn prepare(fault: &NetworkFault, at: &Preparing<'_, '_>) -> Result<Request, StepError> {
    let test_address = at.agent.test_ip.to_string();
    Ok(match fault {
        NetworkFault::Isolate {
            mode,
            deadline_ms,
            conn,
        } => {
            let flow = conn
                .as_ref()
                .map(|conn| at.names().flow(at.step, at.role, conn))
                .transpose()?;
            Request::Isolate(pb::IsolateRequest {
                id: format!(
                    "{}-{}-{:x}",
                    at.run.case_id,
                    at.step.name,
                    at.run.clock.now_ns()
                ),
                mode: match mode {
                    IsolationMode::Reject => pb::IsolationMode::Reject,
                    IsolationMode::Drop => pb::IsolationMode::Drop,
                } as i32,
                peer: flow.map_or_else(String::new, |(_, remote)| remote.ip().to_string()),
                port: flow.map_or(0, |(local, _)| u32::from(local.port())),
                peer_port: flow.map_or(0, |(_, remote)| u32::from(remote.port())),
                direction: pb::Direction::Both as i32,
                deadline_ms: u32::try_from(*deadline_ms).unwrap_or(u32::MAX),
                include_control_channel: false,
            })
        }
        NetworkFault::Heal => Request::Heal(
            at.names()
                .isolations
                .iter()
                .filter(|isolation| isolation.role == at.role)
                .map(|isolation| isolation.id.clone())
                .collect(),
        ),
        NetworkFault::LinkDown { deadline_ms } => Request::LinkDown(pb::LinkDownRequest {
            interface: String::new(),
            address: test_address,
            deadline_ms: u32::try_from(*deadline_ms).unwrap_or(u32::MAX),
            allow_control_interface: false,
        }),
        NetworkFault::LinkUp => Request::LinkUp(pb::LinkUpRequest {
            interface: String::new(),
            address: test_address,
        }),
        NetworkFault::Reboot { simulated, down_ms } => Request::Reboot(pb::RebootRequest {
            // The best way the host allows: real where its agent may.
            simulated: simulated.unwrap_or_else(|| !offers(at.agent, "reboot")),
            down_ms: u32::try_from(*down_ms).unwrap_or(u32::MAX),
        }),
    })
}

impl Request {
    /// Book the fault before it is made: cleanup undoes it even if the
    /// request fails half-way.
    pub(super) fn note(&self, role: &str, names: &mut Names) {
        match self {
            Self::Isolate(request) => names.isolations.push(Isolation {
                role: role.to_owned(),
                id: request.id.clone(),
            }),
            Self::Heal(ids) => names
                .isolations
                .retain(|isolation| !ids.contains(&isolation.id)),
            Self::LinkDown(_) => names.links_down.push(role.to_owned()),
            Self::LinkUp(_) => names.links_down.retain(|owner| owner != role),
            Self::Reboot(_) => {}
        }
    }

    pub(super) async fn perform(self, acting: &Acting) -> Result<Ran, StepError> {
        let mut client = acting.client();
        let failed = |status| acting.failed(status);
        let call = match self {
            Self::Isolate(request) => {
                client
                    .isolate(acting.request(request))
                    .await
                    .map_err(failed)?;
                "isolate"
            }
            Self::Heal(ids) => {
                for id in ids {
                    let request = pb::HealRequest { id, all: false };
                    client.heal(acting.request(request)).await.map_err(failed)?;
                }
                "heal"
            }
            Self::LinkDown(request) => {
                client
                    .link_down(acting.request(request))
                    .await
                    .map_err(failed)?;
                "link-down"
            }
            Self::LinkUp(request) => {
                client
                    .link_up(acting.request(request))
                    .await
                    .map_err(failed)?;
                "link-up"
            }
            Self::Reboot(request) => {
                let simulated = request.simulated;
                let reply = client
                    .reboot(acting.request(request))
                    .await
                    .map_err(failed)?;
                if !simulated {
                    wait_for_new_boot(&acting.agent).await;
                }
                // Reports say how: "reboot (simulated)", "reboot (reboot(2))".
                let call = format!("reboot ({})", reply.get_ref().method);
                return Ok(acting.ok(&call).into());
            }
        };
        Ok(acting.ok(call).into())
    }
}

/// Whether `agent` offers `capability`.
pub(in crate::engine) fn offers(agent: &AgentHandle, capability: &str) -> bool {
    agent.info.capabilities.iter().any(|c| c == capability)
}

/// After a real reboot: wait until the agent answers with another boot id
/// (the case's timeout bounds the wait).
async fn wait_for_new_boot(agent: &AgentHandle) {
    loop {
        tokio::time::sleep(REBOOT_POLL).await;
        let mut client = agent.client.clone();
        if let Ok(info) = client.host_info(pb::HostInfoRequest {}).await
            && info.get_ref().boot_id != agent.info.boot_id
        {
            return;
        }
    }
}
