//! The `faultlab-agent` binary: flags in, [`faultlab_agent::serve`] out.

use anyhow::Context;
use clap::{Parser, Subcommand};
use faultlab_agent::{AgentConfig, Allow};
use std::io::Write;
use std::net::SocketAddr;

/// A faultlab agent: opens, closes, aborts and breaks TCP connections on
/// this host on a controller's request, and reports what the OS said.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address for the gRPC API. Port 0 picks a free port; the address in
    /// use is printed on stdout as `listening on ADDRESS`.
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// Dangerous capabilities to allow (all off by default): `isolate`
    /// (cut this host off the network, simulated reboots), `link` (take
    /// interfaces down), `reboot` (really reboot the host). Comma-separated.
    #[arg(long, value_delimiter = ',', value_enum)]
    allow: Vec<Capability>,
    /// No isolation may last longer than this.
    #[arg(long, default_value_t = faultlab_agent::agent::DEFAULT_MAX_ISOLATION_MS)]
    max_isolation_ms: u32,
    #[command(flatten)]
    otlp: faultlab_telemetry::OtlpArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Capability {
    Isolate,
    Link,
    Reboot,
}

#[derive(Subcommand)]
enum Command {
    /// Internal: run as a holder process, driven over stdin/stdout by an agent.
    #[command(hide = true)]
    Holder,
    /// Internal: lift isolation ID after MILLIS (Windows; started by an isolate).
    #[command(hide = true)]
    IsolationWatchdog {
        /// The isolation.
        id: String,
        /// When.
        millis: u64,
    },
    /// Internal: bring INTERFACE up after MILLIS (started by a link-down).
    #[command(hide = true)]
    LinkWatchdog {
        /// The interface.
        interface: String,
        /// When.
        millis: u64,
    },
}

fn main() -> anyhow::Result<()> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let cli = Cli::parse();
    // Only the serving agent exports traces; holders and watchdogs are its
    // helpers, and their work appears in the agent's spans.
    let mut telemetry = match cli.command {
        None => faultlab_telemetry::Telemetry::start("faultlab-agent", &cli.otlp)?,
        Some(_) => faultlab_telemetry::Telemetry::off(),
    };
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    tracing_subscriber::registry()
        .with(log)
        .with(telemetry.layer())
        .init();
    let result = match cli.command {
        Some(Command::Holder) => faultlab_agent::holder::runner::run().context("holder failed"),
        Some(Command::LinkWatchdog { interface, millis }) => link_watchdog(&interface, millis),
        Some(Command::IsolationWatchdog { id, millis }) => isolation_watchdog(&id, millis),
        None => {
            let allow = Allow {
                isolate: cli.allow.contains(&Capability::Isolate),
                link: cli.allow.contains(&Capability::Link),
                reboot: cli.allow.contains(&Capability::Reboot),
            };
            serve(cli.listen, allow, cli.max_isolation_ms)
        }
    };
    telemetry.shutdown();
    result
}

#[cfg(windows)]
fn isolation_watchdog(id: &str, millis: u64) -> anyhow::Result<()> {
    let after = std::time::Duration::from_millis(millis);
    faultlab_agent::isolate::windows_firewall::watchdog_main(id, after)
        .with_context(|| format!("cannot lift isolation {id}"))
}

#[cfg(not(windows))]
fn isolation_watchdog(_id: &str, _millis: u64) -> anyhow::Result<()> {
    anyhow::bail!("isolations lift by themselves here (the kernel holds the deadline)")
}

#[cfg(unix)]
fn link_watchdog(interface: &str, millis: u64) -> anyhow::Result<()> {
    let after = std::time::Duration::from_millis(millis);
    faultlab_agent::link::iproute::watchdog_main(interface, after)
        .with_context(|| format!("cannot bring {interface} back up"))
}

#[cfg(not(unix))]
fn link_watchdog(_interface: &str, _millis: u64) -> anyhow::Result<()> {
    anyhow::bail!("link control is not implemented on this OS yet")
}

fn serve(address: SocketAddr, allow: Allow, max_isolation_ms: u32) -> anyhow::Result<()> {
    let holder_exe = std::env::current_exe().context("cannot find this executable")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let local = listener.local_addr()?;
        let config = AgentConfig {
            holder_exe,
            allow,
            max_isolation_ms,
        };
        // Clean up after an earlier life before saying we are ready.
        let agent = std::sync::Arc::new(faultlab_agent::Agent::new(config, local.port()));
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {local}")?;
        stdout.flush()?;
        tracing::info!(%local, "agent serving");
        faultlab_agent::serve_agent(listener, agent, shutdown_signal()).await?;
        Ok(())
    })
}

/// Ctrl-C, or SIGTERM on Unix (what systemd and `kill` send).
async fn shutdown_signal() {
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
