//! Network faults as agent requests: isolate and heal, pull the cable and
//! plug it back, reboot (and wait for the new boot).

use super::{Acting, Preparing, Ran};
use crate::engine::handles::{AgentHandle, RunClock};
use crate::engine::state::{Counted, Names, Outcome, StepError};
use crate::engine::undo::{AgentUndo, Undo};
use crate::lab::outside::{self, LabSide, OutsideFault};
use crate::scenario::{
    Impairment, IsolatedConnections, IsolationDirection, IsolationMode, NetworkFault,
};
use faultlab_proto::Capability;
use faultlab_proto::v1 as pb;
use std::collections::BTreeMap;

/// TCP counters a `counters` step shows in its report.
const SHOWN_COUNTERS: &[&str] = &[
    "Tcp.InSegs",
    "Tcp.OutSegs",
    "Tcp.RetransSegs",
    "Tcp.InErrs",
    "Tcp.InCsumErrors",
    "Tcp.OutRsts",
];
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
    Degrade(pb::DegradeRequest),
    Restore(Vec<String>),
    /// Read the host's TCP counters.
    Counters,
    /// A fault the host's lab makes from outside it (`deadline` set) or
    /// undoes.
    Outside {
        lab: LabSide,
        fault: OutsideFault,
        deadline: Option<Duration>,
    },
}

pub(super) fn prepare(fault: &NetworkFault, at: &Preparing<'_, '_>) -> Result<Request, StepError> {
    Ok(match fault {
        NetworkFault::Isolate {
            mode,
            deadline_ms,
            conn,
            from,
            direction,
            connections,
        } => Request::Isolate(isolate_request(
            at,
            *mode,
            *deadline_ms,
            Cut {
                conn: conn.as_deref(),
                from: from.as_deref(),
                direction: *direction,
                connections: *connections,
            },
        )?),
        NetworkFault::Heal => Request::Heal(at.names().undo.isolations_of(at.role)),
        // Read as the isolate steps it stands for (`scenario::lower`).
        NetworkFault::Partition { .. } => {
            return Err(StepError::Failed(
                "a partition is played as one isolate step per host it cuts".to_owned(),
            ));
        }
        NetworkFault::LinkDown { deadline_ms } => cable(at, Some(*deadline_ms)),
        NetworkFault::LinkUp => cable(at, None),
        NetworkFault::Degrade {
            impairment,
            towards,
            conn,
            inbound,
            connection_attempts,
            deadline_ms,
        } => Request::Degrade(degrade_request(
            at,
            impairment,
            Aim {
                towards: towards.as_deref(),
                conn: conn.as_deref(),
                inbound: *inbound,
                connection_attempts: *connection_attempts,
            },
            *deadline_ms,
        )?),
        NetworkFault::Restore => Request::Restore(at.names().undo.degradations_of(at.role)),
        NetworkFault::Counters => Request::Counters,
        NetworkFault::PowerCut { deadline_ms } => power(at, Some(*deadline_ms))?,
        NetworkFault::PowerOn => power(at, None)?,
        NetworkFault::Reboot {
            simulated,
            down_ms,
            orderly,
        } => Request::Reboot(pb::RebootRequest {
            // The best way the host allows: real where its agent may.
            simulated: simulated.unwrap_or_else(|| !at.agent.offers(Capability::Reboot)),
            down_ms: u32::try_from(*down_ms).unwrap_or(u32::MAX),
            orderly: *orderly,
        }),
    })
}

/// What an isolate step cuts: one connection's flow, or the traffic with
/// one role's host, or everything; one way or both.
struct Cut<'a> {
    conn: Option<&'a str>,
    from: Option<&'a str>,
    direction: IsolationDirection,
    connections: IsolatedConnections,
}

/// An isolate step as its request: the whole host cut off, or from one
/// role's host, or one connection's flow; in one direction or both.
fn isolate_request(
    at: &Preparing<'_, '_>,
    mode: IsolationMode,
    deadline_ms: u64,
    cut: Cut<'_>,
) -> Result<pb::IsolateRequest, StepError> {
    let flow = cut
        .conn
        .map(|conn| at.names().flow(at.step, at.role, conn))
        .transpose()?;
    let peer = match (cut.from, flow) {
        (Some(role), _) => Some(peer_host(at, "from", role)?),
        (None, Some((_, remote))) => Some(remote.ip()),
        (None, None) => None,
    };
    Ok(pb::IsolateRequest {
        id: at.fault_id(),
        mode: match mode {
            IsolationMode::Reject => pb::IsolationMode::Reject,
            IsolationMode::Drop => pb::IsolationMode::Drop,
        } as i32,
        peer: peer.map_or_else(String::new, |peer| peer.to_string()),
        port: flow.map_or(0, |(local, _)| u32::from(local.port())),
        peer_port: flow.map_or(0, |(_, remote)| u32::from(remote.port())),
        direction: match cut.direction {
            IsolationDirection::In => pb::Direction::In,
            IsolationDirection::Out => pb::Direction::Out,
            IsolationDirection::Both => pb::Direction::Both,
        } as i32,
        deadline_ms: u32::try_from(deadline_ms).unwrap_or(u32::MAX),
        include_control_channel: false,
        connections: match cut.connections {
            IsolatedConnections::All => pb::Connections::All,
            IsolatedConnections::New => pb::Connections::New,
            IsolatedConnections::Established => pb::Connections::Established,
        } as i32,
    })
}

/// The test address of `role`'s host, named by the step's `field`: another
/// host than the step's own.
fn peer_host(
    at: &Preparing<'_, '_>,
    field: &str,
    role: &str,
) -> Result<std::net::IpAddr, StepError> {
    let agent = at
        .run
        .agents
        .get(role)
        .ok_or_else(|| StepError::Failed(format!("{field}: no agent plays role {role:?}")))?;
    if agent.name == at.agent.name {
        return Err(StepError::Failed(format!(
            "{field}: role {role:?} plays on the step's own host ({}): a host is not cut off from itself",
            agent.name
        )));
    }
    Ok(agent.test_ip)
}

/// Pull the host's cable until `deadline_ms` (or plug it back): at the
/// switch side where the lab can, else by the host's agent.
fn cable(at: &Preparing<'_, '_>, deadline_ms: Option<u64>) -> Request {
    if let Some(lab) = outside(at, OutsideFault::Cable) {
        return Request::Outside {
            lab,
            fault: OutsideFault::Cable,
            deadline: deadline_ms.map(Duration::from_millis),
        };
    }
    let address = at.agent.test_ip.to_string();
    match deadline_ms {
        Some(deadline_ms) => Request::LinkDown(pb::LinkDownRequest {
            interface: String::new(),
            address,
            deadline_ms: u32::try_from(deadline_ms).unwrap_or(u32::MAX),
            allow_control_interface: false,
        }),
        None => Request::LinkUp(pb::LinkUpRequest {
            interface: String::new(),
            address,
        }),
    }
}

/// Cut the host's power until `deadline_ms` (or switch it back on): only
/// its lab can.
fn power(at: &Preparing<'_, '_>, deadline_ms: Option<u64>) -> Result<Request, StepError> {
    Ok(Request::Outside {
        lab: outside(at, OutsideFault::Power).ok_or_else(no_power)?,
        fault: OutsideFault::Power,
        deadline: deadline_ms.map(Duration::from_millis),
    })
}

impl Request {
    /// Book the undo of the fault before it is made (cleanup undoes it
    /// even if the request fails half-way), or strike off what it undoes.
    pub(super) fn note(&self, role: &str, names: &mut Names) {
        let undo = &mut names.undo;
        match self {
            Self::Isolate(request) => undo.book(Undo::by_agent(
                role,
                format!("isolation {:?}", request.id),
                AgentUndo::Heal(pb::HealRequest {
                    id: request.id.clone(),
                    all: false,
                }),
            )),
            Self::Heal(ids) => undo.healed(ids),
            // A cable pulled twice is plugged back once.
            Self::LinkDown(request) => undo.book_once(Undo::by_agent(
                role,
                format!("the pulled cable of {} (in the host)", request.address),
                AgentUndo::LinkUp(pb::LinkUpRequest {
                    interface: request.interface.clone(),
                    address: request.address.clone(),
                }),
            )),
            Self::LinkUp(_) => undo.plugged(role),
            Self::Outside {
                fault, deadline, ..
            } => match (fault, deadline) {
                (OutsideFault::Cable, Some(_)) => undo.book_once(Undo::by_lab(
                    role,
                    format!("the pulled cable of role {role} (at the switch side)"),
                    OutsideFault::Cable,
                )),
                (OutsideFault::Cable, None) => undo.plugged(role),
                (OutsideFault::Power, Some(_)) => {
                    undo.book_once(Undo::by_lab(
                        role,
                        "the power cut".to_owned(),
                        OutsideFault::Power,
                    ));
                }
                (OutsideFault::Power, None) => undo.powered_on(role),
            },
            Self::Degrade(request) => undo.book(Undo::by_agent(
                role,
                format!("degradation {:?}", request.id),
                AgentUndo::Restore(pb::RestoreRequest {
                    id: request.id.clone(),
                }),
            )),
            Self::Restore(ids) => undo.restored(ids),
            Self::Reboot(_) | Self::Counters => {}
        }
    }

    pub(super) async fn perform(self, acting: &Acting) -> Result<Ran, StepError> {
        let mut client = acting.client();
        let failed = |status| acting.failed(status);
        let outcome = match self {
            Self::Isolate(request) => {
                client
                    .isolate(acting.request(request))
                    .await
                    .map_err(failed)?;
                acting.ok("isolate")
            }
            Self::Heal(ids) => heal(acting, ids).await?,
            Self::Degrade(request) => degrade(acting, request).await?,
            Self::Restore(ids) => restore(acting, ids).await?,
            Self::Counters => counters(acting).await?,
            Self::LinkDown(request) => {
                client
                    .link_down(acting.request(request))
                    .await
                    .map_err(failed)?;
                acting.ok("link-down (in-host admin down)")
            }
            Self::LinkUp(request) => {
                client
                    .link_up(acting.request(request))
                    .await
                    .map_err(failed)?;
                acting.ok("link-up (in-host admin up)")
            }
            Self::Reboot(request) => reboot(acting, request).await?,
            Self::Outside {
                lab,
                fault,
                deadline,
            } => outside_fault(acting, lab, fault, deadline).await?,
        };
        Ok(outcome.into())
    }
}

/// Degrade; the outcome says what the kernel reports it applied, read
/// back after.
async fn degrade(acting: &Acting, request: pb::DegradeRequest) -> Result<Outcome, StepError> {
    let reply = acting
        .client()
        .degrade(acting.request(request))
        .await
        .map_err(|status| acting.failed(status))?
        .into_inner();
    let mut outcome = acting.ok(&format!("degrade ({})", reply.mechanism));
    outcome.detail = Some(format!("{}: {}", reply.interface, reply.applied.trim()));
    Ok(outcome)
}

/// Lift the isolations `ids`; the outcome has what the filter counted of
/// them just before (packets dropped or rejected, each way), where it
/// counts.
async fn heal(acting: &Acting, ids: Vec<String>) -> Result<Outcome, StepError> {
    let mut client = acting.client();
    let mut said = Vec::new();
    let mut counted = Counted::default();
    for id in ids {
        let request = pb::HealRequest {
            id: id.clone(),
            all: false,
        };
        let reply = client
            .heal(acting.request(request))
            .await
            .map_err(|status| acting.failed(status))?
            .into_inner();
        if let Some(cut) = reply.cut {
            counted.dropped += cut.arriving_packets + cut.leaving_packets;
            said.push(format!(
                "isolation {id}: cut {} packets arriving ({} B), {} leaving ({} B)",
                cut.arriving_packets, cut.arriving_bytes, cut.leaving_packets, cut.leaving_bytes
            ));
        }
    }
    let mut outcome = acting.ok("heal");
    outcome.detail = (!said.is_empty()).then(|| said.join("\n"));
    outcome.counted = (!said.is_empty()).then_some(counted);
    Ok(outcome)
}

/// Restore the degradations `ids`; the outcome has their counters just
/// before they went: what they did.
async fn restore(acting: &Acting, ids: Vec<String>) -> Result<Outcome, StepError> {
    let mut client = acting.client();
    let mut counters = Vec::new();
    let mut counted = Counted::default();
    for id in ids {
        let request = pb::RestoreRequest { id };
        let reply = client
            .restore(acting.request(request))
            .await
            .map_err(|status| acting.failed(status))?
            .into_inner();
        counters.push(reply.counters.trim().to_owned());
        counted.sent += reply.sent_packets;
        counted.dropped += reply.dropped_packets;
    }
    let mut outcome = acting.ok("restore");
    outcome.detail = (!counters.is_empty()).then(|| counters.join("\n"));
    outcome.counted = (!counters.is_empty()).then_some(counted);
    Ok(outcome)
}

/// The host's TCP counters: the few that say most for people, all of them
/// for the judge.
async fn counters(acting: &Acting) -> Result<Outcome, StepError> {
    let counters: BTreeMap<String, u64> = acting
        .client()
        .tcp_counters(acting.request(pb::TcpCountersRequest {}))
        .await
        .map_err(|status| acting.failed(status))?
        .into_inner()
        .counters
        .into_iter()
        .collect();
    let mut outcome = acting.ok("counters");
    outcome.detail = Some(
        SHOWN_COUNTERS
            .iter()
            .filter_map(|name| counters.get(*name).map(|value| format!("{name} {value}")))
            .collect::<Vec<_>>()
            .join(", "),
    );
    outcome.tcp_counters = Some(counters);
    Ok(outcome)
}

/// Reboot, and after a real one wait for the new boot; reports say how:
/// "reboot (simulated)", "reboot (reboot(2))".
async fn reboot(acting: &Acting, request: pb::RebootRequest) -> Result<Outcome, StepError> {
    let simulated = request.simulated;
    let reply = acting
        .client()
        .reboot(acting.request(request))
        .await
        .map_err(|status| acting.failed(status))?;
    if !simulated {
        wait_for_new_boot(&acting.agent, &acting.clock).await;
    }
    Ok(acting.ok(&format!("reboot ({})", reply.get_ref().method)))
}

/// A fault the host's lab makes (`deadline` set) or undoes from outside.
async fn outside_fault(
    acting: &Acting,
    lab: LabSide,
    fault: OutsideFault,
    deadline: Option<Duration>,
) -> Result<Outcome, StepError> {
    // Released with other steps: the lab acts at the moment itself (an
    // agent would hold its request until then).
    if let Some(at) = acting.at {
        let early_ns = at.run_ns.saturating_sub(acting.clock.now_ns());
        if let Ok(early_ns) = u64::try_from(early_ns) {
            tokio::time::sleep(Duration::from_nanos(early_ns)).await;
        }
    }
    let how = by_the_lab(&acting.agent, lab, fault, deadline).await?;
    if fault == OutsideFault::Power && deadline.is_none() {
        wait_for_new_boot(&acting.agent, &acting.clock).await;
    }
    let call = match (fault, deadline) {
        (OutsideFault::Cable, Some(_)) => "link-down",
        (OutsideFault::Cable, None) => "link-up",
        (OutsideFault::Power, Some(_)) => "power-cut",
        (OutsideFault::Power, None) => "power-on",
    };
    Ok(acting.ok(&format!("{call} ({how})")))
}

/// A degrade step as its request: packets towards a role's host, or one
/// connection's (from its local port to its peer), or all of them.
/// Which packets a degradation touches, as a step says it.
struct Aim<'a> {
    towards: Option<&'a str>,
    conn: Option<&'a str>,
    inbound: bool,
    connection_attempts: bool,
}

fn degrade_request(
    at: &Preparing<'_, '_>,
    impairment: &Impairment,
    aim: Aim<'_>,
    deadline_ms: u64,
) -> Result<pb::DegradeRequest, StepError> {
    let flow = aim
        .conn
        .map(|conn| at.names().flow(at.step, at.role, conn))
        .transpose()?;
    let peer = match (aim.towards, flow) {
        (Some(role), _) => Some(peer_host(at, "towards", role)?),
        (None, Some((_, remote))) => Some(remote.ip()),
        (None, None) => None,
    };
    Ok(pb::DegradeRequest {
        id: at.fault_id(),
        interface: String::new(),
        address: at.agent.test_ip.to_string(),
        peer: peer.map_or_else(String::new, |peer| peer.to_string()),
        local_port: flow.map_or(0, |(local, _)| u32::from(local.port())),
        // A connection is one flow: its peer's port too.
        peer_port: flow.map_or(0, |(_, remote)| u32::from(remote.port())),
        deadline_ms: u32::try_from(deadline_ms).unwrap_or(u32::MAX),
        delay_us: u32::try_from(impairment.delay.as_micros()).unwrap_or(u32::MAX),
        jitter_us: u32::try_from(impairment.jitter.as_micros()).unwrap_or(u32::MAX),
        distribution: impairment.distribution.clone().unwrap_or_default(),
        loss_percent: impairment.loss_percent,
        loss_correlation_percent: impairment.loss_correlation_percent,
        loss_burst_packets: impairment.loss_burst_packets,
        duplicate_percent: impairment.duplicate_percent,
        reorder_percent: impairment.reorder_percent,
        corrupt_percent: impairment.corrupt_percent,
        rate_bits_per_second: impairment.rate_bits_per_second,
        direction: if aim.inbound {
            pb::Direction::In
        } else {
            pb::Direction::Out
        } as i32,
        connections: if aim.connection_attempts {
            pb::Connections::New
        } else {
            pb::Connections::All
        } as i32,
    })
}

/// The role's lab, when it can make `fault` on the role's host.
fn outside(at: &Preparing<'_, '_>, fault: OutsideFault) -> Option<LabSide> {
    at.agent.lab.clone().filter(|lab| lab.can(fault))
}

fn no_power() -> StepError {
    StepError::Failed("this host's lab cannot cut its power (only a VM lab can)".to_owned())
}

/// Have the lab make `fault` (until `deadline`) or undo it; how it did. A
/// cable is back when the host's own kernel sees its carrier again (and
/// the host answers on its test network); a power cut is undone when a
/// fresh machine runs (the caller waits for its agent's new boot).
pub(in crate::engine) async fn by_the_lab(
    agent: &AgentHandle,
    lab: LabSide,
    fault: OutsideFault,
    deadline: Option<Duration>,
) -> Result<&'static str, StepError> {
    let address = agent.test_ip;
    let done = tokio::task::spawn_blocking(move || match deadline {
        Some(deadline) => lab.make(fault, deadline),
        None => lab.undo(fault),
    })
    .await;
    let how = match done {
        Ok(Ok(how)) => how,
        Ok(Err(error)) => return Err(StepError::Failed(format!("lab: {error}"))),
        Err(error) => return Err(StepError::Failed(format!("lab: {error}"))),
    };
    if fault == OutsideFault::Cable && deadline.is_none() {
        crate::agents::carrier_back(&agent.client, address, CARRIER_BACK_TIMEOUT)
            .await
            .map_err(|why| StepError::Failed(format!("lab: {how}, but the cable is {why}")))?;
        // Then until the host answers there (see `outside::answers`).
        let _ = tokio::task::spawn_blocking(move || {
            outside::answers(address, outside::LINK_SETTLE_TIMEOUT)
        })
        .await;
    }
    Ok(how)
}

/// How long a host's kernel may take to see the carrier of a cable its lab
/// plugged back (a veth or a VM's virtio NIC: well under a second).
const CARRIER_BACK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the lab may take to plug a cable back, confirm it and wait
/// for the host to answer.
pub(in crate::engine) const PLUG_BACK_TIMEOUT: Duration = Duration::from_secs(15);

/// After a real reboot or a power cycle: wait until the agent answers
/// from a new boot, its clock measured again (the case's timeout bounds
/// the wait).
pub(in crate::engine) async fn wait_for_new_boot(agent: &AgentHandle, clock: &RunClock) {
    while !agent.booted_again(clock).await {
        tokio::time::sleep(REBOOT_POLL).await;
    }
}
