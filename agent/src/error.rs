//! The agent's errors, and the one place they become gRPC statuses.
//!
//! A socket call that failed is not an error here: it is an observation.
//! These are failures of the *request*.

use crate::capture::CaptureError;
use crate::degrade::DegradeError;
use crate::holder::HolderError;
use crate::isolate::{FirewallError, IsolateError};
use crate::link::LinkError;
use crate::process::ProcessError;
use crate::sockets::SocketsError;
use crate::tune::TuneError;
use tonic::Status;

/// gRPC metadata key that tells a controller, without parsing the message,
/// why a call failed: see [`HOLDER_GONE`].
pub const ERROR_KIND_KEY: &str = "faultlab-error";
/// `faultlab-error` value: the call was cut short because its holder process died.
pub const HOLDER_GONE: &str = "holder-gone";

/// Why the agent could not carry out a request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// It names a holder, listener or connection that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// What it names is in the wrong state for it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The agent's configuration does not allow it.
    #[error("{0}")]
    PermissionDenied(String),
    /// It would take the agent over one of its limits (config `[limits]`).
    #[error("{0}")]
    Exhausted(String),
    /// An isolation request failed.
    #[error(transparent)]
    Isolate(#[from] IsolateError),
    /// A link request failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A degradation request failed.
    #[error(transparent)]
    Degrade(#[from] DegradeError),
    /// A capture request failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// Changing or putting back a TCP setting failed.
    #[error(transparent)]
    Tune(#[from] TuneError),
    /// Reading or changing the host's connection table failed.
    #[error(transparent)]
    Sockets(#[from] SocketsError),
    /// A process fault failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Talking to a holder process failed.
    #[error(transparent)]
    Holder(#[from] HolderError),
    /// A bug: the agent and a holder disagree.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<AgentError> for Status {
    fn from(error: AgentError) -> Self {
        let message = error.to_string();
        // The request's span (if traced) says why it failed.
        faultlab_telemetry::fail(&tracing::Span::current(), &message);
        match error {
            AgentError::InvalidArgument(_) => Status::invalid_argument(message),
            AgentError::NotFound(_) => Status::not_found(message),
            AgentError::Holder(HolderError::Gone(_)) => {
                let mut status = Status::failed_precondition(message);
                status.metadata_mut().insert(
                    ERROR_KIND_KEY,
                    tonic::metadata::MetadataValue::from_static(HOLDER_GONE),
                );
                status
            }
            AgentError::FailedPrecondition(_)
            | AgentError::Isolate(
                IsolateError::IdInUse(_)
                | IsolateError::SameScope(_)
                | IsolateError::Firewall(FirewallError::Unavailable(_) | FirewallError::Overlaps(_)),
            ) => Status::failed_precondition(message),
            AgentError::Isolate(IsolateError::Unknown(_))
            | AgentError::Link(LinkError::NotDown(_) | LinkError::NoInterface(_)) => {
                Status::not_found(message)
            }
            AgentError::Link(LinkError::BadName(_)) => Status::invalid_argument(message),
            AgentError::Capture(CaptureError::Unknown(_)) => Status::not_found(message),
            AgentError::Capture(CaptureError::TooMany) => Status::resource_exhausted(message),
            AgentError::Capture(CaptureError::IdInUse(_) | CaptureError::Unavailable(_)) => {
                Status::failed_precondition(message)
            }
            AgentError::Link(
                LinkError::ControlInterface(_) | LinkError::AlreadyDown(_) | LinkError::System(_),
            ) => Status::failed_precondition(message),
            AgentError::PermissionDenied(_) => Status::permission_denied(message),
            AgentError::Exhausted(_) => Status::resource_exhausted(message),
            AgentError::Degrade(DegradeError::Invalid(_)) => Status::invalid_argument(message),
            AgentError::Degrade(DegradeError::NotDegraded(_)) => Status::not_found(message),
            AgentError::Degrade(
                DegradeError::AlreadyDegraded(_)
                | DegradeError::Unsupported(_)
                | DegradeError::System(_),
            ) => Status::failed_precondition(message),
            AgentError::Process(ProcessError::Invalid(_)) => Status::invalid_argument(message),
            AgentError::Process(ProcessError::NotFound(_)) => Status::not_found(message),
            AgentError::Process(ProcessError::Refused(_))
            | AgentError::Sockets(SocketsError::Unsupported(_)) => {
                Status::failed_precondition(message)
            }
            AgentError::Process(ProcessError::System(_))
            | AgentError::Sockets(SocketsError::System(_)) => Status::internal(message),
            // Something of the fault is still in place (read back): the
            // host is not healed, and the fault stays booked to heal again.
            AgentError::Isolate(
                IsolateError::Firewall(FirewallError::Refused(_)) | IsolateError::NotLifted { .. },
            ) => Status::internal(message),
            AgentError::Tune(TuneError::BadValue { .. }) => Status::invalid_argument(message),
            AgentError::Tune(TuneError::Unknown(_)) => Status::not_found(message),
            AgentError::Tune(TuneError::IdInUse(_) | TuneError::AlreadyChanged { .. }) => {
                Status::failed_precondition(message)
            }
            // The setting does not read what was written: the host is not
            // as asked (or not put back), and the change stays booked.
            AgentError::Tune(TuneError::ReadsOther { .. } | TuneError::System(_)) => {
                Status::internal(message)
            }
            AgentError::Holder(HolderError::Pipe { .. }) => Status::unavailable(message),
            AgentError::Holder(HolderError::Spawn { .. }) | AgentError::Internal(_) => {
                Status::internal(message)
            }
        }
    }
}
