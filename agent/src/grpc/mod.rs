//! The gRPC edge: thin handlers that validate each request into domain
//! types ([`convert`]), call [`Agent`], and translate the answer back. No
//! socket or process logic lives here. Every call that changes something on
//! the host goes through `AgentService::audited`, which asks the access
//! rules whether its caller may, and leaves its audit entry.

mod audited;
mod convert;

pub use convert::{
    DEFAULT_TIMEOUT_MS, MAX_FILLER_BYTES, MAX_KEEPALIVE_COUNT, MAX_LINGER_SECONDS,
    MAX_MESSAGE_BYTES, MAX_TIMEOUT_MS,
};

use crate::agent::Agent;
use crate::error::AgentError;
use crate::holder::protocol::SocketTarget;
use crate::isolate::Isolation;
use crate::model::{ConnId, HolderId, ListenerId};
use crate::platform::{Current, Platform, wall_unix_ns};
use crate::tls;
use audited::{CONNECTIONS, degrade_needs, reboot_needs};
use convert::{
    DEFAULT_DOWN_MS, address, close_mode, connection_filter, degradation, host_info, invalid,
    isolation_id, payload, process_request, recv_mode, tcp_setting, timeout,
};
use faultlab_proto::Capability;
use faultlab_proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// The tonic service of an agent.
pub struct AgentService {
    agent: Arc<Agent>,
}

impl AgentService {
    /// Serve `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        Self { agent }
    }

    /// Run `work` on the agent off the async workers: it spawns `nft`,
    /// `tc` or `ip` and waits for them, for seconds on a slow host (a VM
    /// under emulation). A worker blocked that long holds the tasks queued
    /// on it hostage, the caller's connection among them: its HTTP/2 pings
    /// went unanswered and the controller counted a live agent lost (F2 on
    /// the VM lab beside two busy loops: 5 runs of 12, measured).
    async fn off_the_workers<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Agent) -> Result<T, AgentError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let agent = Arc::clone(&self.agent);
        tokio::task::spawn_blocking(move || work(&agent))
            .await
            .map_err(|error| AgentError::Internal(error.to_string()))?
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn host_info(&self, request: Request<pb::HostInfoRequest>) -> Reply<pb::HostInfoReply> {
        let caller = tls::caller(&request);
        Ok(Response::new(host_info(self.agent.host_info_for(&caller))))
    }

    async fn audit_trail(
        &self,
        request: Request<pb::AuditTrailRequest>,
    ) -> Reply<pb::AuditTrailReply> {
        let last = match request.into_inner().last {
            0 => usize::MAX,
            last => usize::try_from(last).unwrap_or(usize::MAX),
        };
        let entries = self.agent.trail().last(last);
        Ok(Response::new(pb::AuditTrailReply {
            entries: entries.into_iter().map(convert::audit_entry).collect(),
        }))
    }

    async fn spawn_holder(
        &self,
        request: Request<pb::SpawnHolderRequest>,
    ) -> Reply<pb::SpawnHolderReply> {
        self.audited(request, "SpawnHolder", CONNECTIONS, |request| async move {
            let request = request.into_inner();
            let session = match request.session.as_str() {
                "" => None,
                id => Some(isolation_id(id).map_err(|error| invalid(format!("session: {error}")))?),
            };
            let (holder, pid) = self.agent.spawn_holder(request.label, session)?;
            Ok(Response::new(pb::SpawnHolderReply {
                holder_id: holder.0,
                pid,
            }))
        })
        .await
    }

    async fn exit_holder(&self, request: Request<pb::ExitHolderRequest>) -> Reply<pb::HolderExit> {
        self.audited(request, "ExitHolder", CONNECTIONS, |request| async move {
            let request = request.into_inner();
            let exit = self
                .agent
                .exit_holder(HolderId(request.holder_id), request.exit_code)
                .await?;
            Ok(Response::new(exit.into()))
        })
        .await
    }

    async fn kill_holder(&self, request: Request<pb::KillHolderRequest>) -> Reply<pb::HolderExit> {
        self.audited(request, "KillHolder", CONNECTIONS, |request| async move {
            let exit = self
                .agent
                .kill_holder(HolderId(request.into_inner().holder_id))
                .await?;
            Ok(Response::new(exit.into()))
        })
        .await
    }

    async fn listen(&self, request: Request<pb::ListenRequest>) -> Reply<pb::ListenReply> {
        self.audited(request, "Listen", CONNECTIONS, |request| async move {
            let request = request.into_inner();
            let (listener, local) = self
                .agent
                .listen(
                    HolderId(request.holder_id),
                    address("address", &request.address)?,
                    if request.backlog == 0 {
                        128
                    } else {
                        request.backlog
                    },
                    request.options.try_into()?,
                )
                .await?;
            Ok(Response::new(pb::ListenReply {
                listener_id: listener.0,
                local_address: local.to_string(),
            }))
        })
        .await
    }

    async fn stop_listening(
        &self,
        request: Request<pb::StopListeningRequest>,
    ) -> Reply<pb::StopListeningReply> {
        self.audited(
            request,
            "StopListening",
            CONNECTIONS,
            |request| async move {
                self.agent
                    .stop_listening(ListenerId(request.into_inner().listener_id))
                    .await?;
                Ok(Response::new(pb::StopListeningReply {}))
            },
        )
        .await
    }

    async fn accept(&self, request: Request<pb::AcceptRequest>) -> Reply<pb::ConnectReply> {
        self.audited(request, "Accept", CONNECTIONS, |request| async move {
            let request = request.into_inner();
            let connection = self
                .agent
                .accept(
                    ListenerId(request.listener_id),
                    timeout("timeout_ms", request.timeout_ms)?,
                )
                .await?;
            Ok(Response::new(connection.into()))
        })
        .await
    }

    async fn dial(&self, request: Request<pb::ConnectRequest>) -> Reply<pb::ConnectReply> {
        self.audited(request, "Dial", CONNECTIONS, |request| async move {
            let request = request.into_inner();
            let connection = self
                .agent
                .connect(
                    HolderId(request.holder_id),
                    address("address", &request.address)?,
                    request.options.try_into()?,
                    timeout("timeout_ms", request.timeout_ms)?,
                )
                .await?;
            Ok(Response::new(connection.into()))
        })
        .await
    }

    async fn send(&self, request: Request<pb::SendRequest>) -> Reply<pb::Observation> {
        self.audited(request, "Send", CONNECTIONS, |request| async move {
            let request = request.into_inner();
            let observation = self
                .agent
                .send(
                    ConnId(request.conn_id),
                    payload(request.payload)?,
                    timeout("timeout_ms", request.timeout_ms)?,
                )
                .await?;
            Ok(Response::new(observation.into()))
        })
        .await
    }

    async fn recv(&self, request: Request<pb::RecvRequest>) -> Reply<pb::Observation> {
        self.audited(request, "Recv", CONNECTIONS, |request| async move {
            let request = request.into_inner();
            let observation = self
                .agent
                .recv(
                    ConnId(request.conn_id),
                    recv_mode(request.mode)?,
                    request.max_bytes,
                    timeout("timeout_ms", request.timeout_ms)?,
                    request.return_data,
                )
                .await?;
            Ok(Response::new(observation.into()))
        })
        .await
    }

    async fn close(&self, request: Request<pb::CloseRequest>) -> Reply<pb::Observation> {
        self.audited(request, "Close", CONNECTIONS, |request| async move {
            let request = request.into_inner();
            let observation = self
                .agent
                .close(
                    ConnId(request.conn_id),
                    close_mode(request.mode)?,
                    timeout("timeout_ms", request.timeout_ms)?,
                )
                .await?;
            Ok(Response::new(observation.into()))
        })
        .await
    }

    async fn set_options(
        &self,
        request: Request<pb::SetOptionsRequest>,
    ) -> Reply<pb::SocketOptions> {
        self.audited(request, "SetOptions", CONNECTIONS, |request| async move {
            let request = request.into_inner();
            let target = match request.target {
                Some(pb::set_options_request::Target::ConnId(id)) => SocketTarget::Conn(ConnId(id)),
                Some(pb::set_options_request::Target::ListenerId(id)) => {
                    SocketTarget::Listener(ListenerId(id))
                }
                None => {
                    return Err(
                        invalid("target: conn_id or listener_id is required".to_owned()).into(),
                    );
                }
            };
            let read = self
                .agent
                .set_options(target, request.options.try_into()?)
                .await?;
            Ok(Response::new(read.into()))
        })
        .await
    }

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Reply<pb::WatchReply> {
        self.audited(request, "Watch", CONNECTIONS, |request| async move {
            self.agent
                .watch(ConnId(request.into_inner().conn_id))
                .await?;
            Ok(Response::new(pb::WatchReply {}))
        })
        .await
    }

    type EventsStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn events(&self, request: Request<pb::EventsRequest>) -> Reply<Self::EventsStream> {
        let log = Arc::clone(self.agent.events());
        let mut cursor = request.into_inner().since;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut newest = log.subscribe();
            loop {
                for event in log.since(cursor) {
                    cursor = event.seq + 1;
                    if tx.send(Ok(event.into())).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = newest.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SessionEvent, Status>> + Send>>;

    async fn session(&self, request: Request<pb::SessionRequest>) -> Reply<Self::SessionStream> {
        let id = isolation_id(&request.into_inner().id)
            .map_err(|error| Status::from(invalid(format!("id: {error}"))))?;
        self.agent.open_session(&id);
        let (tx, rx) = mpsc::channel(1);
        // Buffered: the caller learns the session is open before anything else.
        let _ = tx.send(Ok(pb::SessionEvent { opened: true })).await;
        let agent = Arc::clone(&self.agent);
        tokio::spawn(async move {
            // The caller hung up (or its connection died): the session ends.
            tx.closed().await;
            agent.close_session(&id).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn isolate(&self, request: Request<pb::IsolateRequest>) -> Reply<pb::IsolateReply> {
        self.audited(
            request,
            "Isolate",
            &[Capability::Isolate],
            |request| async move {
                let isolation = Isolation::try_from(request.into_inner())?;
                let id = isolation.id.clone();
                let deadline = isolation.deadline;
                self.off_the_workers(move |agent| agent.isolate(isolation))
                    .await?;
                let deadline_ns = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
                Ok(Response::new(pb::IsolateReply {
                    id,
                    expires_mono_ns: Current::monotonic_ns().saturating_add(deadline_ns),
                    expires_wall_unix_ns: wall_unix_ns()
                        .saturating_add(i64::try_from(deadline_ns).unwrap_or(i64::MAX)),
                }))
            },
        )
        .await
    }

    async fn heal(&self, request: Request<pb::HealRequest>) -> Reply<pb::HealReply> {
        self.audited(
            request,
            "Heal",
            &[Capability::Isolate],
            |request| async move {
                let request = request.into_inner();
                let reply = match (request.id.as_str(), request.all) {
                    ("", true) => {
                        let lifted = self.off_the_workers(Agent::heal_all).await?;
                        pb::HealReply {
                            healed: u32::try_from(lifted.isolations).unwrap_or(u32::MAX),
                            already_gone: Vec::new(),
                            unbooked: lifted.unbooked,
                            cut: None,
                        }
                    }
                    ("", false) => {
                        return Err(invalid(
                            "id: name the isolation to heal, or set all".to_owned(),
                        )
                        .into());
                    }
                    (id, false) => {
                        let id = id.to_owned();
                        let lifted = self.off_the_workers(move |agent| agent.heal(&id)).await?;
                        pb::HealReply {
                            healed: 1,
                            already_gone: lifted.already_gone,
                            unbooked: Vec::new(),
                            cut: lifted.cut.map(|(arriving, leaving)| pb::CutCounts {
                                arriving_packets: arriving.packets,
                                arriving_bytes: arriving.bytes,
                                leaving_packets: leaving.packets,
                                leaving_bytes: leaving.bytes,
                            }),
                        }
                    }
                    (_, true) => {
                        return Err(invalid("give either id or all, not both".to_owned()).into());
                    }
                };
                Ok(Response::new(reply))
            },
        )
        .await
    }

    async fn link_down(&self, request: Request<pb::LinkDownRequest>) -> Reply<pb::LinkDownReply> {
        self.audited(request, "LinkDown", &[Capability::Link], |request| async move {
            let control_address = request.local_addr().map(|address| address.ip());
            let request = request.into_inner();
            if request.deadline_ms == 0 {
                return Err(invalid(
                    "deadline_ms: every link-down needs a deadline (a watchdog brings the link up then)".to_owned(),
                )
                .into());
            }
            let deadline = crate::platform::millis(request.deadline_ms);
            self.off_the_workers(move |agent| {
                let interface = agent.link_interface(&request.interface, &request.address)?;
                agent.link_down(
                    &interface,
                    deadline,
                    control_address,
                    request.allow_control_interface,
                )
            })
            .await?;
            let deadline_ns = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
            Ok(Response::new(pb::LinkDownReply {
                expires_mono_ns: Current::monotonic_ns().saturating_add(deadline_ns),
            }))
        })
        .await
    }

    async fn link_up(&self, request: Request<pb::LinkUpRequest>) -> Reply<pb::LinkUpReply> {
        self.audited(
            request,
            "LinkUp",
            &[Capability::Link],
            |request| async move {
                let request = request.into_inner();
                self.off_the_workers(move |agent| {
                    let interface = agent.link_interface(&request.interface, &request.address)?;
                    agent.link_up(&interface)
                })
                .await?;
                Ok(Response::new(pb::LinkUpReply {}))
            },
        )
        .await
    }

    async fn link_state(
        &self,
        request: Request<pb::LinkStateRequest>,
    ) -> Reply<pb::LinkStateReply> {
        let request = request.into_inner();
        let interface = self
            .agent
            .link_interface(&request.interface, &request.address)?;
        let state = self.agent.link_state(&interface)?;
        Ok(Response::new(pb::LinkStateReply {
            interface,
            up: state.up,
            carrier: state.carrier,
            operstate: state.operstate,
        }))
    }

    async fn degrade(&self, request: Request<pb::DegradeRequest>) -> Reply<pb::DegradeReply> {
        let needs = degrade_needs(request.get_ref());
        self.audited(request, "Degrade", needs, |request| async move {
            let request = request.into_inner();
            let id = isolation_id(&request.id)?;
            if request.deadline_ms == 0 {
                return Err(invalid(
                    "deadline_ms: every degradation needs a deadline (a watchdog heals it then)"
                        .to_owned(),
                )
                .into());
            }
            let (impairment, selection) = degradation(&request)?;
            let deadline = crate::platform::millis(request.deadline_ms);
            let (interface, applied) = self
                .off_the_workers(move |agent| {
                    let interface =
                        agent.degrade_interface(&request.interface, &request.address)?;
                    let applied =
                        agent.degrade(&id, &interface, &impairment, &selection, deadline)?;
                    Ok((interface, applied))
                })
                .await?;
            Ok(Response::new(pb::DegradeReply {
                interface,
                applied: applied.report,
                mechanism: applied.mechanism.to_owned(),
            }))
        })
        .await
    }

    async fn tcp_counters(
        &self,
        request: Request<pb::TcpCountersRequest>,
    ) -> Reply<pb::TcpCountersReply> {
        let _ = request;
        let counters = Current::tcp_counters().map_err(|error| {
            AgentError::FailedPrecondition(format!("cannot read the TCP counters: {error}"))
        })?;
        Ok(Response::new(pb::TcpCountersReply {
            counters: counters.into_iter().collect(),
        }))
    }

    async fn change_tcp_setting(
        &self,
        request: Request<pb::ChangeTcpSettingRequest>,
    ) -> Reply<pb::ChangeTcpSettingReply> {
        self.audited(request, "ChangeTcpSetting", &[Capability::Tune], |request| async move {
            let request = request.into_inner();
            let id = isolation_id(&request.id)?;
            let setting = tcp_setting(request.setting)?;
            if request.deadline_ms == 0 {
                return Err(invalid(
                    "deadline_ms: every setting change needs a deadline (a watchdog puts the value back then)"
                        .to_owned(),
                )
                .into());
            }
            let deadline = crate::platform::millis(request.deadline_ms);
            let (change, _) = self
                .off_the_workers(move |agent| {
                    agent.change_tcp_setting(&id, setting, request.value, deadline)
                })
                .await?;
            let deadline_ns = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
            Ok(Response::new(pb::ChangeTcpSettingReply {
                before: change.before,
                expires_mono_ns: Current::monotonic_ns().saturating_add(deadline_ns),
            }))
        })
        .await
    }

    async fn put_back_tcp_setting(
        &self,
        request: Request<pb::PutBackTcpSettingRequest>,
    ) -> Reply<pb::PutBackTcpSettingReply> {
        self.audited(
            request,
            "PutBackTcpSetting",
            &[Capability::Tune],
            |request| async move {
                let id = isolation_id(&request.into_inner().id)?;
                let change = self
                    .off_the_workers(move |agent| agent.put_back_tcp_setting(&id))
                    .await?;
                Ok(Response::new(pb::PutBackTcpSettingReply {
                    value: change.before,
                }))
            },
        )
        .await
    }

    async fn restore(&self, request: Request<pb::RestoreRequest>) -> Reply<pb::RestoreReply> {
        self.audited(
            request,
            "Restore",
            &[Capability::Degrade, Capability::Loss],
            |request| async move {
                let id = isolation_id(&request.into_inner().id)?;
                let healed = self
                    .off_the_workers(move |agent| agent.restore(&id))
                    .await?;
                Ok(Response::new(pb::RestoreReply {
                    counters: healed.report,
                    sent_packets: healed.sent,
                    dropped_packets: healed.dropped,
                }))
            },
        )
        .await
    }

    async fn start_capture(
        &self,
        request: Request<pb::StartCaptureRequest>,
    ) -> Reply<pb::StartCaptureReply> {
        self.audited(
            request,
            "StartCapture",
            &[Capability::Capture],
            |request| async move {
                let request = request.into_inner();
                let id = isolation_id(&request.id)?;
                let ports = request
                    .ports
                    .iter()
                    .map(|&port| {
                        u16::try_from(port)
                            .ok()
                            .filter(|&port| port > 0)
                            .ok_or_else(|| {
                                invalid(format!("ports: {port} is not a port (1 to 65535)"))
                            })
                    })
                    .collect::<Result<Vec<u16>, AgentError>>()?;
                self.agent.start_capture(&id, ports)?;
                Ok(Response::new(pb::StartCaptureReply {}))
            },
        )
        .await
    }

    async fn stop_capture(
        &self,
        request: Request<pb::StopCaptureRequest>,
    ) -> Reply<pb::StopCaptureReply> {
        self.audited(
            request,
            "StopCapture",
            &[Capability::Capture],
            |request| async move {
                // Waiting for the capture thread to hand over blocks: off the reactor.
                let agent = Arc::clone(&self.agent);
                let id = request.into_inner().id;
                let captured = tokio::task::spawn_blocking(move || agent.stop_capture(&id))
                    .await
                    .map_err(|error| Status::internal(format!("capture: {error}")))??;
                Ok(Response::new(convert::stop_capture_reply(captured)))
            },
        )
        .await
    }

    async fn reboot(&self, request: Request<pb::RebootRequest>) -> Reply<pb::RebootReply> {
        let needs = reboot_needs(request.get_ref());
        self.audited(request, "Reboot", needs, |request| async move {
            let request = request.into_inner();
            if !request.simulated {
                let method = self.agent.reboot(request.orderly)?;
                return Ok(Response::new(pb::RebootReply {
                    method: method.to_owned(),
                    ..pb::RebootReply::default()
                }));
            }
            let down_ms = if request.down_ms == 0 {
                DEFAULT_DOWN_MS
            } else {
                request.down_ms
            };
            let report = self
                .agent
                .reboot_simulated(crate::platform::millis(down_ms))
                .await?;
            Ok(Response::new(pb::RebootReply {
                sockets_aborted: report.sockets_aborted,
                holders_killed: report.holders_killed,
                down_from_mono_ns: report.down_from_mono_ns,
                down_until_mono_ns: report.down_until_mono_ns,
                method: "simulated".to_owned(),
            }))
        })
        .await
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Reply<pb::ListConnectionsReply> {
        let filter = connection_filter(request.get_ref().filter.as_ref())?;
        let connections = self.agent.list_connections(&filter)?;
        Ok(Response::new(pb::ListConnectionsReply {
            connections: connections.into_iter().map(Into::into).collect(),
            mono_ns: Current::monotonic_ns(),
        }))
    }

    async fn abort_connections(
        &self,
        request: Request<pb::AbortConnectionsRequest>,
    ) -> Reply<pb::AbortConnectionsReply> {
        self.audited(
            request,
            "AbortConnections",
            &[Capability::Process],
            |request| async move {
                let request = request.into_inner();
                let Some(filter) = request.filter.as_ref() else {
                    return Err(invalid("filter: required".to_owned()).into());
                };
                let filter = connection_filter(Some(filter))?;
                let aborted = self
                    .off_the_workers(move |agent| agent.abort_connections(&filter))
                    .await?;
                Ok(Response::new(pb::AbortConnectionsReply {
                    aborted: aborted.into_iter().map(Into::into).collect(),
                    mono_ns: Current::monotonic_ns(),
                }))
            },
        )
        .await
    }

    async fn process_fault(
        &self,
        request: Request<pb::ProcessFaultRequest>,
    ) -> Reply<pb::ProcessFaultReply> {
        self.audited(
            request,
            "ProcessFault",
            &[Capability::Process],
            |request| async move {
                let request = request.into_inner();
                let (target, action) = process_request(&request)?;
                let agent = std::sync::Arc::clone(&self.agent);
                // A restart waits for the old process to go: off the reactor.
                let outcome =
                    tokio::task::spawn_blocking(move || agent.process_fault(&target, action))
                        .await
                        .map_err(|error| AgentError::Internal(error.to_string()))??;
                Ok(Response::new(pb::ProcessFaultReply {
                    pids: outcome.pids,
                    new_pid: outcome.new_pid.unwrap_or(0),
                    mono_ns: Current::monotonic_ns(),
                }))
            },
        )
        .await
    }

    async fn reset(&self, request: Request<pb::ResetRequest>) -> Reply<pb::ResetReply> {
        self.audited(request, "Reset", CONNECTIONS, |_| async move {
            let undone = self.agent.reset().await;
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            Ok(Response::new(pb::ResetReply {
                holders_killed: count(undone.holders),
                isolations_lifted: count(undone.isolations),
                unbooked: undone.unbooked,
                links_up: count(undone.links),
                degradations_healed: count(undone.degradations),
                not_undone: undone.not_undone,
                settings_put_back: count(undone.settings),
            }))
        })
        .await
    }
}
