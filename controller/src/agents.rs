//! Connecting to agents (over mutual TLS when the lab has a CA) and asking
//! each what host it runs on.

use faultlab_proto::v1 as pb;
use pb::agent_client::AgentClient;
use std::path::PathBuf;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A client of one agent; each request carries the caller's trace context,
/// so the agent's spans join the run's trace.
pub type Client = AgentClient<InterceptedService<Channel, faultlab_telemetry::TraceContext>>;

/// How long a controller waits to reach an agent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle connection to an agent is pinged, and how long the
/// answer may take before the connection counts as dead.
const KEEPALIVE: Duration = Duration::from_secs(2);

/// The controller's side of mutual TLS (inventory `[tls]`, or `--tls-*`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// The CA agents' certificates must chain to.
    pub ca: PathBuf,
    /// The controller's certificate, shown to agents.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Reaches agents: in plain text, or over mutual TLS.
#[derive(Clone, Debug, Default)]
pub struct Connector {
    tls: Option<ClientTlsConfig>,
}

impl Connector {
    /// Plain text (agents on loopback, or started with `--insecure`).
    pub fn plain() -> Self {
        Self::default()
    }

    /// Mutual TLS with these files (read now, so a missing file is said at once).
    pub fn with_tls(tls: &ClientTls) -> Result<Self, AgentsError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| AgentsError::TlsFile {
                path: path.display().to_string(),
                source,
            })
        };
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
            .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
        Ok(Self { tls: Some(config) })
    }

    /// Connect to the agent at `address` (`host:port`, or a full URI).
    pub async fn connect(&self, address: &str) -> Result<Client, AgentsError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = if address.contains("://") {
            address.to_owned()
        } else {
            format!("{scheme}://{address}")
        };
        let failed = |source| AgentsError::Address {
            address: address.to_owned(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(failed)?
            .connect_timeout(CONNECT_TIMEOUT)
            // A host that lost its power or rebooted never closes its end:
            // pings find the dead connection, and the channel reconnects.
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(failed)?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|cause| AgentsError::Unreachable {
                address: address.to_owned(),
                cause,
            })?;
        Ok(AgentClient::with_interceptor(
            channel,
            faultlab_telemetry::TraceContext,
        ))
    }

    /// What host the agent at `address` runs on.
    pub async fn host_info(&self, address: &str) -> Result<pb::HostInfoReply, AgentsError> {
        let mut client = self.connect(address).await?;
        client
            .host_info(pb::HostInfoRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| AgentsError::Call {
                address: address.to_owned(),
                status,
            })
    }

    /// Undo everything the agent at `address` made (its Reset): what it
    /// undid, and in `not_undone` what it could not.
    pub async fn reset(&self, address: &str) -> Result<pb::ResetReply, AgentsError> {
        let mut client = self.connect(address).await?;
        client
            .reset(pb::ResetRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| AgentsError::Call {
                address: address.to_owned(),
                status,
            })
    }

    /// The newest `last` entries of the audit trail of the agent at
    /// `address` (0: all it keeps), oldest first.
    pub async fn audit_trail(
        &self,
        address: &str,
        last: u32,
    ) -> Result<Vec<pb::AuditEntry>, AgentsError> {
        let mut client = self.connect(address).await?;
        client
            .audit_trail(pb::AuditTrailRequest { last })
            .await
            .map(|reply| reply.into_inner().entries)
            .map_err(|status| AgentsError::Call {
                address: address.to_owned(),
                status,
            })
    }

    /// The TCP connections of every program on the host of the agent at
    /// `address` that `filter` lets through.
    pub async fn connections(
        &self,
        address: &str,
        filter: pb::ConnectionFilter,
    ) -> Result<Vec<pb::TcpConnection>, AgentsError> {
        let mut client = self.connect(address).await?;
        let request = pb::ListConnectionsRequest {
            filter: Some(filter),
        };
        client
            .list_connections(request)
            .await
            .map(|reply| reply.into_inner().connections)
            .map_err(|status| AgentsError::Call {
                address: address.to_owned(),
                status,
            })
    }
}

/// Why an agent could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// What went wrong with the inventory's agent `name`.
    #[error("agent {name}: {error}")]
    Agent {
        /// Its name in the inventory.
        name: String,
        /// What went wrong (in the message, so not a `source`: said once).
        error: Box<AgentsError>,
    },
    /// A TLS file could not be read.
    #[error("cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The address is not a usable endpoint.
    #[error("agent address {address:?}: {source}")]
    Address {
        /// As given.
        address: String,
        /// Why tonic refused it.
        source: tonic::transport::Error,
    },
    /// Nobody answered, or the TLS handshake failed.
    #[error("cannot reach the agent at {address}: {}", causes(cause))]
    Unreachable {
        /// As given.
        address: String,
        /// What failed.
        cause: tonic::transport::Error,
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

/// An error with its causes, for messages ("transport error" alone says nothing).
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    crate::error_chain(crate::causes_of(error))
}

/// Connect in plain text to the agent at `address` (see [`Connector`]).
pub async fn connect(address: &str) -> Result<Client, AgentsError> {
    Connector::plain().connect(address).await
}

/// How often [`carrier_back`] asks.
const CARRIER_POLL: Duration = Duration::from_millis(20);

/// Wait until the host's own kernel sees a carrier on the interface that
/// holds `address` (a cable its lab plugged back at the far end), at most
/// `within`: what the kernel last said, or why the cable is not confirmed
/// back. A lab cannot read the cable of a VM's NIC back (QEMU has no query
/// for it), and a switch port that is up says nothing of the host's end:
/// the host's side is where a carrier is seen.
pub async fn carrier_back(
    client: &Client,
    address: std::net::IpAddr,
    within: Duration,
) -> Result<pb::LinkStateReply, String> {
    let deadline = tokio::time::Instant::now() + within;
    let request = pb::LinkStateRequest {
        interface: String::new(),
        address: address.to_string(),
    };
    loop {
        let said = client.clone().link_state(request.clone()).await;
        let last = match said {
            Ok(reply) if reply.get_ref().carrier => return Ok(reply.into_inner()),
            Ok(reply) => {
                let reply = reply.into_inner();
                format!(
                    "its kernel sees no carrier on {} (operstate {}, {})",
                    reply.interface,
                    reply.operstate,
                    if reply.up {
                        "administratively up"
                    } else {
                        "administratively down"
                    }
                )
            }
            Err(status) => format!(
                "its agent cannot say whether the carrier is back: {}",
                status.message()
            ),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "not confirmed after {} ms: {last}",
                within.as_millis()
            ));
        }
        tokio::time::sleep(CARRIER_POLL).await;
    }
}
