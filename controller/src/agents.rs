//! Connecting to agents and asking each what host it runs on.

use faultlab_proto::v1 as pb;
use pb::agent_client::AgentClient;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A client of one agent; each request carries the caller's trace context,
/// so the agent's spans join the run's trace.
pub type Client = AgentClient<InterceptedService<Channel, faultlab_telemetry::TraceContext>>;

/// How long a controller waits to reach an agent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an agent could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// The address is not a usable endpoint.
    #[error("agent address {address:?}: {source}")]
    Address {
        /// As given.
        address: String,
        /// Why tonic refused it.
        source: tonic::transport::Error,
    },
    /// Nobody answered.
    #[error("cannot reach the agent at {address}: {source}")]
    Unreachable {
        /// As given.
        address: String,
        /// What failed.
        source: tonic::transport::Error,
    },
    /// The agent answered with an error.
    #[error("agent at {address}: {status}")]
    Call {
        /// As given.
        address: String,
        /// Its answer.
        status: tonic::Status,
    },
}

/// Connect to the agent at `address` (`host:port`, or a full `http://` URI).
pub async fn connect(address: &str) -> Result<Client, AgentsError> {
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|source| AgentsError::Address {
            address: address.to_owned(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| AgentsError::Unreachable {
            address: address.to_owned(),
            source,
        })?;
    Ok(AgentClient::with_interceptor(
        channel,
        faultlab_telemetry::TraceContext,
    ))
}

/// What host the agent at `address` runs on.
pub async fn host_info(address: &str) -> Result<pb::HostInfoReply, AgentsError> {
    let mut client = connect(address).await?;
    client
        .host_info(pb::HostInfoRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| AgentsError::Call {
            address: address.to_owned(),
            status,
        })
}
