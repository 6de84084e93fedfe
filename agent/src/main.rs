//! The `faultlab-agent` binary: flags in, [`faultlab_agent::serve`] out.

use anyhow::Context;
use clap::{Parser, Subcommand};
use faultlab_agent::settings::Settings;
use faultlab_agent::tls::TlsFiles;
use faultlab_agent::{AgentConfig, Allow};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A faultlab agent: opens, closes, aborts and breaks TCP connections on
/// this host on a controller's request, and reports what the OS said.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    otlp: faultlab_telemetry::OtlpArgs,
}

/// How to serve: a config file and the flags that override it.
#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Configuration file (TOML: listen, insecure, max_isolation_ms, [allow],
    /// [tls]); the flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address for the gRPC API (default 127.0.0.1:7420). Port 0 picks a
    /// free port; the address in use is printed on stdout as `listening on ADDRESS`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Dangerous capabilities to allow (all off by default): `isolate`
    /// (cut this host off the network, simulated reboots), `link` (take
    /// interfaces down), `reboot` (really reboot the host), `degrade` (make
    /// the network bad: delay, loss, ...), `process` (kill,
    /// stop, continue, restart other programs and abort their connections).
    /// Comma-separated; replaces the config's list.
    #[arg(long, value_delimiter = ',', value_enum)]
    allow: Option<Vec<Capability>>,
    /// How to start a program again after a restart fault, as NAME=COMMAND
    /// (repeatable; run through the shell); adds to the config's [restart].
    #[arg(long = "restart", value_name = "NAME=COMMAND", value_parser = restart_command)]
    restart: Vec<(String, String)>,
    /// No isolation may last longer than this (default 600000).
    #[arg(long)]
    max_isolation_ms: Option<u32>,
    /// This agent's TLS certificate (PEM); with --tls-key and --tls-ca.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// The CA that client certificates must chain to (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// Serve without TLS on an address other than loopback (a network you trust).
    #[arg(long)]
    insecure: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Capability {
    Isolate,
    Link,
    Reboot,
    Degrade,
    Process,
}

fn restart_command(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, command)) if !name.is_empty() && !command.trim().is_empty() => {
            Ok((name.to_owned(), command.to_owned()))
        }
        _ => Err(format!("{text:?} is not NAME=COMMAND")),
    }
}

#[derive(Subcommand)]
enum ServiceAction {
    /// Install the Windows service (automatic start) that runs this
    /// executable with CONFIG.
    Install {
        /// The agent's configuration file (absolute path).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Stop and remove the Windows service.
    Uninstall,
    /// Run as the service (what the Service Control Manager starts).
    Run {
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(Subcommand)]
enum Command {
    /// The agent as a Windows service: install, uninstall, run.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Internal: run as a holder process, driven over stdin/stdout by an agent.
    #[command(hide = true)]
    Holder,
    /// Internal: the bench's floor, a bare process sending 1 byte at the
    /// wall-clock moment AT_UNIX_NS; prints when its send began (ns,
    /// monotonic clock).
    #[command(hide = true)]
    BareAct {
        /// The moment, in ns since the Unix epoch (the clock every process
        /// of the bench shares).
        at_unix_ns: i64,
    },
    /// Internal: lift isolation ID after MILLIS (Windows; started by an isolate).
    #[command(hide = true)]
    IsolationWatchdog {
        /// The isolation.
        id: String,
        /// When.
        millis: u64,
    },
    /// Internal: heal INTERFACE's degradation after MILLIS (started by a degrade).
    #[command(hide = true)]
    DegradeWatchdog {
        /// The interface.
        interface: String,
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

/// One process of `faultlab bench`'s floor: act at `at`, say when, and
/// stay until the others have acted (exiting is work too).
fn bare_act(at_unix_ns: i64) -> anyhow::Result<()> {
    use faultlab_agent::platform::{Current, Platform as _, wall_unix_ns};
    use std::io::Write as _;
    let ahead = u64::try_from(at_unix_ns.saturating_sub(wall_unix_ns())).unwrap_or(0);
    let began =
        faultlab_agent::schedule::bare_act(Current::monotonic_ns() + ahead).context("bare act")?;
    let mut out = std::io::stdout();
    writeln!(out, "{began}")?;
    out.flush()?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    use faultlab_agent::platform::{Current, Platform as _};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // Before any thread starts (holders and watchdogs too: same binary).
    Current::one_allocator_arena();
    let cli = Cli::parse();
    // Only the serving agent exports traces; holders and watchdogs are its
    // helpers, and their work appears in the agent's spans.
    let serving = matches!(
        cli.command,
        None | Some(Command::Service {
            action: ServiceAction::Run { .. }
        })
    );
    let mut telemetry = if serving {
        faultlab_telemetry::Telemetry::start("faultlab-agent", &cli.otlp)?
    } else {
        faultlab_telemetry::Telemetry::off()
    };
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a terminal, and not when NO_COLOR is set (a
        // serial port kept as a file): journald and log files get plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty()),
        )
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
        Some(Command::DegradeWatchdog { interface, millis }) => {
            degrade_watchdog(&interface, millis)
        }
        Some(Command::IsolationWatchdog { id, millis }) => isolation_watchdog(&id, millis),
        Some(Command::Service { action }) => service(action),
        Some(Command::BareAct { at_unix_ns }) => bare_act(at_unix_ns),
        None => settings(&cli.serve).and_then(|serving| serve(serving, shutdown_signal())),
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

#[cfg(unix)]
fn degrade_watchdog(interface: &str, millis: u64) -> anyhow::Result<()> {
    let after = std::time::Duration::from_millis(millis);
    faultlab_agent::degrade::tc::watchdog_main(interface, after)
        .with_context(|| format!("cannot heal {interface}'s degradation"))
}

#[cfg(not(unix))]
fn degrade_watchdog(_interface: &str, _millis: u64) -> anyhow::Result<()> {
    anyhow::bail!("degrading the network is not implemented on this OS")
}

#[cfg(not(unix))]
fn link_watchdog(_interface: &str, _millis: u64) -> anyhow::Result<()> {
    anyhow::bail!("link control is not implemented on this OS yet")
}

/// What the agent is to be: the config file, then the flags over it.
struct Serving {
    address: SocketAddr,
    allow: Allow,
    max_isolation_ms: u32,
    restart_commands: std::collections::BTreeMap<String, String>,
    limits: faultlab_agent::Limits,
    tls: Option<TlsFiles>,
}

fn settings(cli: &ServeArgs) -> anyhow::Result<Serving> {
    let file = match &cli.config {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    let mut allow = file.allow;
    if let Some(flags) = &cli.allow {
        allow.isolate = flags.contains(&Capability::Isolate);
        allow.link = flags.contains(&Capability::Link);
        allow.reboot = flags.contains(&Capability::Reboot);
        allow.degrade = flags.contains(&Capability::Degrade);
        allow.process = flags.contains(&Capability::Process);
    }
    let mut restart_commands = file.restart.clone();
    restart_commands.extend(cli.restart.iter().cloned());
    let tls = match (&cli.tls_cert, &cli.tls_key, &cli.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        }),
        _ => file.tls,
    };
    let address = cli
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7420)));
    if faultlab_agent::settings::check_exposure(
        address,
        tls.is_some(),
        cli.insecure || file.insecure,
    )? {
        tracing::warn!(
            %address,
            "INSECURE: serving without TLS off loopback; anyone who reaches {address} can make this host's connections fail{}",
            if allow.isolate || allow.link || allow.reboot || allow.degrade || allow.process {
                " and cut it off the network"
            } else {
                ""
            }
        );
    }
    Ok(Serving {
        address,
        allow,
        max_isolation_ms: cli
            .max_isolation_ms
            .or(file.max_isolation_ms)
            .unwrap_or(faultlab_agent::agent::DEFAULT_MAX_ISOLATION_MS),
        restart_commands,
        limits: file.limits,
        tls,
    })
}

#[cfg(windows)]
fn service(action: ServiceAction) -> anyhow::Result<()> {
    use faultlab_agent::platform::windows_service;
    match action {
        ServiceAction::Install { config } => {
            windows_service::install(&config).context("cannot install the service")
        }
        ServiceAction::Uninstall => {
            windows_service::uninstall().context("cannot remove the service")
        }
        ServiceAction::Run { serve: args } => {
            let serving = settings(&args)?;
            let runner: windows_service::Runner =
                Box::new(move |stop| serve(serving, stop).map_err(|error| format!("{error:#}")));
            windows_service::run(runner).context("cannot run as a service (only the Service Control Manager can start `service run`)")
        }
    }
}

#[cfg(not(windows))]
fn service(_action: ServiceAction) -> anyhow::Result<()> {
    anyhow::bail!("Windows services exist only on Windows; on Linux see deploy/systemd")
}

fn serve(
    serving: Serving,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let Serving {
        address,
        allow,
        max_isolation_ms,
        restart_commands,
        limits,
        tls,
    } = serving;
    let tls = tls.map(|files| files.server_config()).transpose()?;
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
            restart_commands,
            limits,
        };
        // Clean up after an earlier life before saying we are ready.
        let agent = std::sync::Arc::new(faultlab_agent::Agent::new(config, local.port()));
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {local}")?;
        stdout.flush()?;
        tracing::info!(%local, "agent serving");
        faultlab_agent::serve_agent(listener, agent, tls, shutdown).await?;
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
