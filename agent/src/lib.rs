//! faultlab-agent: performs TCP connection faults on one lab host and
//! reports what the socket API really said.
//!
//! # Layout
//! - [`grpc`]: the gRPC edge: thin audited handlers; `convert` validates requests into
//!   [`model`] types.
//! - [`agent`]: the domain service: holders, who owns which socket, routing.
//! - [`holder`]: holder processes, where test sockets live, and the pipe to them.
//! - [`sessions`]: which holders belong to which caller, so that none outlives it.
//! - [`conn`]: the connection engine run inside a holder: real sockets, observations.
//! - [`capture`]: wire evidence: the TCP segments a host really sent and received.
//! - [`events`]: the numbered event log (holder deaths, FIN/RST seen by watchers).
//! - [`errno`]: portable names for Linux and Windows error codes.
//! - [`hostinfo`]: what host this is.
//! - [`model`]: the domain's own types (calls, observations, payloads, options).
//! - [`process`]: faults on other programs (kill, freeze, thaw, restart).
//! - [`sockets`]: every program's TCP connections on the host; aborting them.
//! - [`isolate`]: network isolation with kernel-enforced deadlines (nftables).
//! - [`link`]: link down/up with a watchdog that outlives the agent.
//! - [`degrade`]: bad networks (netem) that always heal, back to the qdisc before.
//! - [`watchdogs`]: the watchdog processes' entry points (a fault undone at its deadline).
//! - [`timed`]: the one book of those three families' faults, each healing by itself at its deadline.
//! - [`platform`]: everything OS-specific, behind one trait.
//! - [`spans`]: trace spans of the socket calls holders make.
//! - [`error`]: request errors and their one mapping to `tonic::Status`.
//! - [`tls`]: mutual TLS, and who the caller is.
//! - [`settings`]: the configuration file, and who may reach the agent.
//! - [`access`]: who may do what: per-caller rules.
//! - [`audit`]: one log line per call that changes something, and the last ones kept.
//! - [`schedule`]: requests that name the moment they act (steps released together).
//!
//! The binary is thin: it parses flags into [`settings::Overrides`] and
//! calls [`run`], or runs [`conn::runner::run`] when started as a holder,
//! or one of [`watchdogs`].

pub mod access;
pub mod agent;
pub mod audit;
pub mod capture;
pub mod conn;
pub mod counters;
pub mod degrade;
pub mod errno;
pub mod error;
pub mod events;
pub mod grpc;
pub mod holder;
pub mod hostinfo;
pub mod isolate;
pub mod keep;
pub mod link;
pub mod model;
pub mod platform;
pub mod process;
pub mod schedule;
pub mod sessions;
pub mod settings;
pub mod sockets;
pub mod spans;
mod sync;
pub mod timed;
pub mod tls;
pub mod tool;
pub mod tune;
pub mod watchdogs;

pub use agent::{Agent, AgentConfig};
pub use error::AgentError;
pub use settings::{Allow, Limits};

use faultlab_proto::v1::agent_server::AgentServer;
use std::future::Future;
use std::sync::Arc;
use tonic::transport::server::TcpIncoming;

/// How often the agent pings a caller's connection; one silent for twice
/// this is closed.
pub const CALLER_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why an agent stopped serving other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// The control socket no longer listens: nothing can reach the agent.
    #[error(
        "the control socket can no longer accept ({0}): something destroyed it (`ss -K` of every socket, say); the agent stops, so that its service manager starts it again"
    )]
    ListenerGone(String),
    /// The agent's address cannot be listened on.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
    /// Something the agent needs to start is missing: its TLS files, its
    /// own executable (for holders), a runtime, its stdout.
    #[error("cannot start: {0}")]
    Start(String),
}

/// Run the agent `serving` describes until `shutdown` completes, on a
/// runtime of its own: it cleans up after an earlier life, then says
/// `listening on ADDRESS` on stdout (port 0 picks a free port) and serves.
pub fn run(
    serving: settings::Serving,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    use std::io::Write as _;
    let start =
        |what: &str, error: &dyn std::fmt::Display| ServeError::Start(format!("{what}: {error}"));
    let tls = serving
        .tls
        .map(|files| files.server_config())
        .transpose()
        .map_err(|error| start("TLS", &error))?;
    let holder_exe =
        std::env::current_exe().map_err(|error| start("cannot find this executable", &error))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| start("no runtime", &error))?;
    runtime.block_on(async {
        let address = serving.address;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| ServeError::Listen { address, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServeError::Listen { address, source })?;
        let config = AgentConfig {
            holder_exe,
            allow: serving.allow,
            max_isolation_ms: serving.max_isolation_ms,
            restart_commands: serving.restart_commands,
            limits: serving.limits,
            access: serving.access,
        };
        // Clean up after an earlier life before saying we are ready.
        let agent = Arc::new(Agent::new(config, local.port()));
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {local}")
            .and_then(|()| stdout.flush())
            .map_err(|error| start("stdout", &error))?;
        tracing::info!(%local, "agent serving");
        serve_agent(listener, agent, tls, shutdown).await
    })
}

/// Ctrl-C, or SIGTERM on Unix (what systemd and `kill` send).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = terminate.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serve the agent's gRPC API (and the standard gRPC health service) on
/// `listener` until `shutdown` completes; then kill every holder.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let control_port = listener.local_addr().map_or(0, |address| address.port());
    serve_agent(
        listener,
        Arc::new(Agent::new(config, control_port)),
        None,
        shutdown,
    )
    .await
}

/// How long calls in flight (a caller's open streams among them) get once
/// the agent is asked to stop.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serve an agent already made (its start-up clean-up done) on `listener`,
/// over mutual TLS when `tls` is given, until `shutdown` (then calls still
/// open get [`STOP_GRACE`]), or until `listener` can no longer accept (an
/// error: accepting again would fail at once, forever, in a busy loop);
/// its holders are killed and its faults undone on the way out.
pub async fn serve_agent(
    listener: tokio::net::TcpListener,
    agent: Arc<Agent>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    agent.start_a_holder_ahead();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentServer<grpc::AgentService>>()
        .await;
    let server = listener
        .local_addr()
        .map_or_else(|_| String::new(), |address| address.to_string());
    // Asked to stop, the server waits for calls in flight; a caller's
    // Session or Events stream never ends by itself, so after a grace the
    // agent stops anyway (systemd would otherwise wait its whole stop
    // timeout, 90 s, and then SIGKILL the agent, leaving its holders).
    let stopping = Arc::new(tokio::sync::Notify::new());
    // A listening socket destroyed under the agent (`ss -K`) answers every
    // accept with EINVAL at once: the incoming connections end there, and
    // the agent stops as if asked (no new caller could ever reach it).
    let gone: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let (noted, told) = (Arc::clone(&gone), Arc::clone(&stopping));
    let incoming = tokio_stream::StreamExt::take_while(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        move |accepted| match accepted {
            Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => {
                tracing::error!(%error, "the control socket can no longer accept: stopping");
                *sync::lock(&noted) = Some(error.to_string());
                told.notify_one();
                false
            }
            _ => true,
        },
    );
    // A caller whose host went silent (power lost, cable pulled) is found
    // dead by HTTP/2 pings, so its session ends and its holders go.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(CALLER_KEEPALIVE))
        .http2_keepalive_timeout(Some(CALLER_KEEPALIVE * 2));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let asked = Arc::clone(&stopping);
    let serving = builder
        .trace_fn(move |request| faultlab_telemetry::grpc_server_span(request, &server))
        .layer(schedule::ScheduleLayer)
        .add_service(health_service)
        .add_service(AgentServer::new(grpc::AgentService::new(Arc::clone(
            &agent,
        ))))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            asked.notify_one();
        });
    let served = tokio::select! {
        served = serving => served,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(STOP_GRACE).await;
        } => {
            tracing::warn!(grace_ms = STOP_GRACE.as_millis(), "calls still open when asked to stop: stopping anyway");
            Ok(())
        }
    };
    let undone = agent.reset().await;
    tracing::info!(
        holders_killed = undone.holders,
        isolations_lifted = undone.isolations,
        not_undone = undone.not_undone.len(),
        "agent stopped"
    );
    served?;
    let gone = sync::lock(&gone).take();
    match gone {
        Some(why) => Err(ServeError::ListenerGone(why)),
        None => Ok(()),
    }
}
