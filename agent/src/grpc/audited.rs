//! The one door every call that changes the host goes through: the access
//! rules asked whether its caller may use what the call needs, and the
//! call's audit entry left, allowed or denied (who, which call, the
//! capability, the fault and its deadline, the result).

use super::{AgentService, Reply};
use crate::audit::{self, Entry};
use crate::error::AgentError;
use crate::tls;
use faultlab_proto::Capability;
use faultlab_proto::v1 as pb;
use std::fmt::Debug;
use tonic::{Request, Status};

/// What most calls need: connections.
pub(super) const CONNECTIONS: &[Capability] = &[Capability::Connections];

/// What a degradation needs: `loss` for what the host receives.
pub(super) fn degrade_needs(request: &pb::DegradeRequest) -> &'static [Capability] {
    if request.direction() == pb::Direction::In {
        &[Capability::Loss]
    } else {
        &[Capability::Degrade]
    }
}

/// What a reboot needs: a simulated one is made by isolation.
pub(super) fn reboot_needs(request: &pb::RebootRequest) -> &'static [Capability] {
    if request.simulated {
        &[Capability::Isolate]
    } else {
        &[Capability::Reboot]
    }
}

impl AgentService {
    /// Run one call that changes the host, when the access rules let its
    /// caller use one of `needs` (else `PERMISSION_DENIED` naming both),
    /// leaving its audit entry: who asked for `rpc`, what, and how it ended.
    pub(super) async fn audited<T: Subject, R, F>(
        &self,
        request: Request<T>,
        rpc: &'static str,
        needs: &[Capability],
        call: impl FnOnce(Request<T>) -> F,
    ) -> Reply<R>
    where
        F: Future<Output = Reply<R>>,
    {
        let caller = tls::caller(&request);
        let (fault, deadline_ms) = request.get_ref().fault();
        let text = audit::shortened(request.get_ref());
        let (capability, result) = match self.agent.may(&caller, needs) {
            Ok(capability) => (capability, call(request).await),
            Err(denied) => (
                denied.capability,
                Err(Status::from(AgentError::PermissionDenied(
                    denied.to_string(),
                ))),
            ),
        };
        self.agent.trail().record(Entry {
            at_unix_ns: 0,
            caller: caller.name,
            rpc: rpc.to_owned(),
            capability: capability.name().to_owned(),
            fault,
            deadline_ms,
            result: match &result {
                Ok(_) => "ok".to_owned(),
                Err(status) => format!("{:?}: {}", status.code(), status.message()),
            },
            request: text,
        });
        result
    }
}

/// What an audit entry says of a request besides its text: the fault it
/// makes or undoes, and the deadline it gives.
pub(super) trait Subject: Debug {
    /// The fault's id (or interface), and its deadline in ms (0: none).
    fn fault(&self) -> (String, u32) {
        (String::new(), 0)
    }
}

impl Subject for pb::IsolateRequest {
    fn fault(&self) -> (String, u32) {
        (self.id.clone(), self.deadline_ms)
    }
}

impl Subject for pb::DegradeRequest {
    fn fault(&self) -> (String, u32) {
        (self.id.clone(), self.deadline_ms)
    }
}

impl Subject for pb::ChangeTcpSettingRequest {
    fn fault(&self) -> (String, u32) {
        (self.id.clone(), self.deadline_ms)
    }
}

impl Subject for pb::LinkDownRequest {
    fn fault(&self) -> (String, u32) {
        (link_named(&self.interface, &self.address), self.deadline_ms)
    }
}

impl Subject for pb::LinkUpRequest {
    fn fault(&self) -> (String, u32) {
        (link_named(&self.interface, &self.address), 0)
    }
}

/// A link as its request names it: interface, or the address it holds.
fn link_named(interface: &str, address: &str) -> String {
    if interface.is_empty() {
        address.to_owned()
    } else {
        interface.to_owned()
    }
}

/// Requests that undo the fault they name.
macro_rules! undoing {
    ($($request:ty),*) => {$(
        impl Subject for $request {
            fn fault(&self) -> (String, u32) {
                (self.id.clone(), 0)
            }
        }
    )*};
}
undoing!(
    pb::HealRequest,
    pb::RestoreRequest,
    pb::PutBackTcpSettingRequest,
    pb::StartCaptureRequest,
    pb::StopCaptureRequest
);

/// Requests that name no fault.
macro_rules! faultless {
    ($($request:ty),*) => {$( impl Subject for $request {} )*};
}
faultless!(
    pb::SpawnHolderRequest,
    pb::ExitHolderRequest,
    pb::KillHolderRequest,
    pb::ListenRequest,
    pb::StopListeningRequest,
    pb::AcceptRequest,
    pb::ConnectRequest,
    pb::SendRequest,
    pb::RecvRequest,
    pb::CloseRequest,
    pb::SetOptionsRequest,
    pb::WatchRequest,
    pb::RebootRequest,
    pb::AbortConnectionsRequest,
    pb::ProcessFaultRequest,
    pb::ResetRequest
);
