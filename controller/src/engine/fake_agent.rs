//! A scripted agent for the engine's own tests: a real tonic server on
//! loopback that answers the calls a timeline makes (holders, listen,
//! connect, accept, send, recv, close) without sockets, and remembers every
//! call with the moment it was asked to act at. The real agent is tested
//! against real sockets elsewhere; this one lets a test look at what the
//! engine asked for, and make an agent fail on purpose.

use faultlab_proto::v1 as pb;
use pb::agent_server::{Agent, AgentServer};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// One call the fake agent answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The RPC's name.
    pub rpc: &'static str,
    /// Its `faultlab-start-at` moment, if it had one.
    pub start_at: Option<u64>,
}

/// What the fake agents of one test share: a perfect network, on which
/// every byte sent arrives, then the end of the connection.
#[derive(Default)]
pub struct Wire {
    sent: AtomicU64,
}

/// How a fake agent misbehaves, on purpose.
#[derive(Clone, Copy, Default)]
pub struct Faults {
    /// This RPC answers UNAVAILABLE, as from an agent that is gone.
    pub unavailable: Option<&'static str>,
    /// A read hands over this many bytes fewer than were sent.
    pub short_by: u64,
    /// A connect is refused (nobody listens).
    pub refuse: bool,
}

/// The fake's state: its calls, its ids, and how it misbehaves.
#[derive(Default)]
pub struct Script {
    calls: Mutex<Vec<Call>>,
    next_id: AtomicU64,
    /// Its host's boots so far (a boot id changes with each).
    boots: AtomicU64,
    wire: Arc<Wire>,
    faults: Faults,
}

impl Script {
    /// Its host boots again: a new boot id from now on.
    pub fn reboot(&self) {
        self.boots.fetch_add(1, Ordering::Relaxed);
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .map(|calls| calls.clone())
            .unwrap_or_default()
    }
}

/// The fake agent's service.
struct Fake {
    script: Arc<Script>,
    started: Instant,
}

/// A far-off origin, so that the fake's clock differs from the controller's.
const CLOCK_ORIGIN_NS: u64 = 7_000_000_000_000;

impl Fake {
    fn mono_ns(&self) -> u64 {
        CLOCK_ORIGIN_NS + u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(0)
    }

    fn note<T>(&self, rpc: &'static str, request: &Request<T>) -> Result<u64, Status> {
        let start_at = request
            .metadata()
            .get(faultlab_proto::START_AT_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        if let Ok(mut calls) = self.script.calls.lock() {
            calls.push(Call { rpc, start_at });
        }
        if self.script.faults.unavailable == Some(rpc) {
            return Err(Status::unavailable("the fake agent is gone"));
        }
        Ok(self.script.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn observation(&self, call: pb::Call, outcome: pb::Outcome, bytes: u64) -> pb::Observation {
        let now = self.mono_ns();
        pb::Observation {
            call: call as i32,
            outcome: outcome as i32,
            bytes,
            start_mono_ns: now,
            end_mono_ns: now,
            ..pb::Observation::default()
        }
    }

    fn connected(&self, id: u64, call: pb::Call) -> pb::ConnectReply {
        pb::ConnectReply {
            conn_id: id,
            local_address: format!("127.0.0.1:{}", 50_000 + id),
            peer_address: String::new(),
            observation: Some(self.observation(call, pb::Outcome::Ok, 0)),
        }
    }

    fn exit(&self, holder_id: u64) -> pb::HolderExit {
        pb::HolderExit {
            holder_id,
            mono_ns: self.mono_ns(),
            ..pb::HolderExit::default()
        }
    }
}

/// Serve a fake agent on 127.0.0.1 on `wire`; its address and its script.
pub async fn start(wire: Arc<Wire>, faults: Faults) -> std::io::Result<(String, Arc<Script>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let script = Arc::new(Script {
        wire,
        faults,
        ..Script::default()
    });
    let service = AgentServer::new(Fake {
        script: Arc::clone(&script),
        started: Instant::now(),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((address, script))
}

type Reply<T> = Result<Response<T>, Status>;

fn not_faked<T>(rpc: &str) -> Reply<T> {
    Err(Status::unimplemented(format!(
        "the fake agent has no {rpc}"
    )))
}

#[tonic::async_trait]
impl Agent for Fake {
    async fn host_info(&self, _: Request<pb::HostInfoRequest>) -> Reply<pb::HostInfoReply> {
        Ok(Response::new(pb::HostInfoReply {
            hostname: "fake".to_owned(),
            os_family: "linux".to_owned(),
            boot_id: format!("fake-boot-{}", self.script.boots.load(Ordering::Relaxed)),
            capabilities: vec!["connections".to_owned()],
            mono_ns: self.mono_ns(),
            ..pb::HostInfoReply::default()
        }))
    }

    async fn spawn_holder(
        &self,
        request: Request<pb::SpawnHolderRequest>,
    ) -> Reply<pb::SpawnHolderReply> {
        let id = self.note("SpawnHolder", &request)?;
        Ok(Response::new(pb::SpawnHolderReply {
            holder_id: id,
            pid: 1,
        }))
    }

    async fn exit_holder(&self, request: Request<pb::ExitHolderRequest>) -> Reply<pb::HolderExit> {
        self.note("ExitHolder", &request)?;
        Ok(Response::new(self.exit(request.get_ref().holder_id)))
    }

    async fn kill_holder(&self, request: Request<pb::KillHolderRequest>) -> Reply<pb::HolderExit> {
        self.note("KillHolder", &request)?;
        Ok(Response::new(self.exit(request.get_ref().holder_id)))
    }

    async fn listen(&self, request: Request<pb::ListenRequest>) -> Reply<pb::ListenReply> {
        let id = self.note("Listen", &request)?;
        Ok(Response::new(pb::ListenReply {
            listener_id: id,
            local_address: format!("127.0.0.1:{}", 40_000 + id),
        }))
    }

    async fn stop_listening(
        &self,
        request: Request<pb::StopListeningRequest>,
    ) -> Reply<pb::StopListeningReply> {
        self.note("StopListening", &request)?;
        Ok(Response::new(pb::StopListeningReply {}))
    }

    async fn accept(&self, request: Request<pb::AcceptRequest>) -> Reply<pb::ConnectReply> {
        let id = self.note("Accept", &request)?;
        Ok(Response::new(self.connected(id, pb::Call::Accept)))
    }

    async fn dial(&self, request: Request<pb::ConnectRequest>) -> Reply<pb::ConnectReply> {
        let id = self.note("Dial", &request)?;
        if self.script.faults.refuse {
            let mut refused = self.observation(pb::Call::Connect, pb::Outcome::Error, 0);
            refused.os_error = 111;
            refused.error_name = "ECONNREFUSED".to_owned();
            return Ok(Response::new(pb::ConnectReply {
                observation: Some(refused),
                ..pb::ConnectReply::default()
            }));
        }
        Ok(Response::new(self.connected(id, pb::Call::Connect)))
    }

    async fn send(&self, request: Request<pb::SendRequest>) -> Reply<pb::Observation> {
        self.note("Send", &request)?;
        let bytes = match &request.get_ref().payload {
            Some(pb::send_request::Payload::Data(data)) => data.len() as u64,
            Some(pb::send_request::Payload::ByteCount(count)) => *count,
            Some(pb::send_request::Payload::Messages(messages)) => {
                u64::from(messages.count) * u64::from(messages.size)
            }
            _ => 0,
        };
        self.script.wire.sent.fetch_add(bytes, Ordering::Relaxed);
        Ok(Response::new(self.observation(
            pb::Call::Send,
            pb::Outcome::Ok,
            bytes,
        )))
    }

    async fn recv(&self, request: Request<pb::RecvRequest>) -> Reply<pb::Observation> {
        self.note("Recv", &request)?;
        let arrived = self.script.wire.sent.load(Ordering::Relaxed);
        Ok(Response::new(self.observation(
            pb::Call::Recv,
            pb::Outcome::Eof,
            arrived.saturating_sub(self.script.faults.short_by),
        )))
    }

    async fn close(&self, request: Request<pb::CloseRequest>) -> Reply<pb::Observation> {
        self.note("Close", &request)?;
        Ok(Response::new(self.observation(
            pb::Call::Close,
            pb::Outcome::Ok,
            0,
        )))
    }

    async fn set_options(&self, _: Request<pb::SetOptionsRequest>) -> Reply<pb::SocketOptions> {
        not_faked("SetOptions")
    }

    async fn watch(&self, _: Request<pb::WatchRequest>) -> Reply<pb::WatchReply> {
        not_faked("Watch")
    }

    async fn isolate(&self, _: Request<pb::IsolateRequest>) -> Reply<pb::IsolateReply> {
        not_faked("Isolate")
    }

    async fn heal(&self, _: Request<pb::HealRequest>) -> Reply<pb::HealReply> {
        not_faked("Heal")
    }

    async fn reboot(&self, _: Request<pb::RebootRequest>) -> Reply<pb::RebootReply> {
        not_faked("Reboot")
    }

    async fn link_down(&self, _: Request<pb::LinkDownRequest>) -> Reply<pb::LinkDownReply> {
        not_faked("LinkDown")
    }

    async fn link_up(&self, _: Request<pb::LinkUpRequest>) -> Reply<pb::LinkUpReply> {
        not_faked("LinkUp")
    }

    async fn link_state(&self, _: Request<pb::LinkStateRequest>) -> Reply<pb::LinkStateReply> {
        not_faked("LinkState")
    }

    async fn degrade(&self, _: Request<pb::DegradeRequest>) -> Reply<pb::DegradeReply> {
        not_faked("Degrade")
    }

    async fn tcp_counters(
        &self,
        _: Request<pb::TcpCountersRequest>,
    ) -> Reply<pb::TcpCountersReply> {
        not_faked("TcpCounters")
    }

    async fn restore(&self, _: Request<pb::RestoreRequest>) -> Reply<pb::RestoreReply> {
        not_faked("Restore")
    }

    async fn change_tcp_setting(
        &self,
        _: Request<pb::ChangeTcpSettingRequest>,
    ) -> Reply<pb::ChangeTcpSettingReply> {
        not_faked("ChangeTcpSetting")
    }

    async fn put_back_tcp_setting(
        &self,
        _: Request<pb::PutBackTcpSettingRequest>,
    ) -> Reply<pb::PutBackTcpSettingReply> {
        not_faked("PutBackTcpSetting")
    }

    async fn start_capture(
        &self,
        _: Request<pb::StartCaptureRequest>,
    ) -> Reply<pb::StartCaptureReply> {
        not_faked("StartCapture")
    }

    async fn stop_capture(
        &self,
        _: Request<pb::StopCaptureRequest>,
    ) -> Reply<pb::StopCaptureReply> {
        not_faked("StopCapture")
    }

    async fn list_connections(
        &self,
        _: Request<pb::ListConnectionsRequest>,
    ) -> Reply<pb::ListConnectionsReply> {
        not_faked("ListConnections")
    }

    async fn abort_connections(
        &self,
        _: Request<pb::AbortConnectionsRequest>,
    ) -> Reply<pb::AbortConnectionsReply> {
        not_faked("AbortConnections")
    }

    async fn process_fault(
        &self,
        _: Request<pb::ProcessFaultRequest>,
    ) -> Reply<pb::ProcessFaultReply> {
        not_faked("ProcessFault")
    }

    type EventsStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn events(&self, _: Request<pb::EventsRequest>) -> Reply<Self::EventsStream> {
        not_faked("Events")
    }

    type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SessionEvent, Status>> + Send>>;

    async fn session(&self, request: Request<pb::SessionRequest>) -> Reply<Self::SessionStream> {
        self.note("Session", &request)?;
        // Open until the caller drops it, as the real agent's.
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }

    async fn reset(&self, request: Request<pb::ResetRequest>) -> Reply<pb::ResetReply> {
        self.note("Reset", &request)?;
        Ok(Response::new(pb::ResetReply::default()))
    }

    async fn audit_trail(
        &self,
        request: Request<pb::AuditTrailRequest>,
    ) -> Reply<pb::AuditTrailReply> {
        self.note("AuditTrail", &request)?;
        Ok(Response::new(pb::AuditTrailReply::default()))
    }
}

/// `count` fake agents on one wire, connected, named `fake-1`..., each
/// with `faults`.
pub async fn handles(
    count: usize,
    faults: Faults,
    clock: &super::RunClock,
) -> Result<Vec<(Arc<super::AgentHandle>, Arc<Script>)>, Box<dyn std::error::Error>> {
    handles_at(count, faults, clock, |_| None).await
}

/// `count` fake agents, each said to be a host of its own: its test
/// address is 198.18.1.N (never dialled: the fakes answer on loopback).
pub async fn hosts(
    count: usize,
    clock: &super::RunClock,
) -> Result<Vec<Arc<super::AgentHandle>>, Box<dyn std::error::Error>> {
    let handles = handles_at(count, Faults::default(), clock, |index| {
        Some(std::net::IpAddr::from([
            198,
            18,
            1,
            u8::try_from(index).unwrap_or(255),
        ]))
    })
    .await?;
    Ok(handles.into_iter().map(|(handle, _)| handle).collect())
}

async fn handles_at(
    count: usize,
    faults: Faults,
    clock: &super::RunClock,
    test_ip: impl Fn(usize) -> Option<std::net::IpAddr>,
) -> Result<Vec<(Arc<super::AgentHandle>, Arc<Script>)>, Box<dyn std::error::Error>> {
    let connector = crate::agents::Connector::plain();
    let wire = Arc::new(Wire::default());
    let mut handles = Vec::new();
    for index in 1..=count {
        let (address, script) = start(Arc::clone(&wire), faults).await?;
        let name = format!("fake-{index}");
        let handle =
            super::AgentHandle::connect(&connector, &name, &address, test_ip(index), clock).await?;
        handles.push((Arc::new(handle), script));
    }
    Ok(handles)
}
