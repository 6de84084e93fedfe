//! The `faultlab-agent` binary: flags in, [`faultlab_agent::serve`] out.

use anyhow::Context;
use clap::{Parser, Subcommand};
use faultlab_agent::settings::{Overrides, Serving, Settings};
use faultlab_agent::tls::TlsFiles;
use faultlab_agent::watchdogs;
use faultlab_proto::Capability;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(Capability::ALLOWED_BY_NAME.map(Capability::name)))]
    allow: Option<Vec<String>>,
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
    /// Internal: put a TCP setting back after MILLIS (started by a change).
    #[command(hide = true)]
    TuneWatchdog {
        /// The setting (e.g. net.ipv4.tcp_abort_on_overflow).
        setting: String,
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
        Some(Command::Holder) => faultlab_agent::conn::runner::run().context("holder failed"),
        Some(Command::LinkWatchdog { interface, millis }) => watched(
            "link-watchdog",
            &interface,
            millis,
            watchdogs::link(&interface, Duration::from_millis(millis)),
        ),
        Some(Command::DegradeWatchdog { interface, millis }) => watched(
            "degrade-watchdog",
            &interface,
            millis,
            watchdogs::degradation(&interface, Duration::from_millis(millis)),
        ),
        Some(Command::TuneWatchdog { setting, millis }) => watched(
            "tune-watchdog",
            &setting,
            millis,
            watchdogs::tcp_setting(&setting, Duration::from_millis(millis)),
        ),
        Some(Command::IsolationWatchdog { id, millis }) => watched(
            "isolation-watchdog",
            &id,
            millis,
            watchdogs::isolation(&id, Duration::from_millis(millis)),
        ),
        Some(Command::Service { action }) => service(action),
        Some(Command::BareAct { at_unix_ns }) => bare_act(at_unix_ns),
        None => settings(&cli.serve).and_then(|serving| {
            Ok(faultlab_agent::run(
                serving,
                faultlab_agent::shutdown_signal(),
            )?)
        }),
    };
    telemetry.shutdown();
    result
}

/// A watchdog's end: its audit entry (it healed `fault`, or could not),
/// then its exit status.
fn watched(kind: &str, fault: &str, millis: u64, result: Result<(), String>) -> anyhow::Result<()> {
    faultlab_agent::audit::watchdog(kind, fault, millis, &result);
    result.map_err(anyhow::Error::msg)
}

/// The agent the config file and the flags over it describe.
fn settings(cli: &ServeArgs) -> anyhow::Result<Serving> {
    let file = match &cli.config {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    let tls = match (&cli.tls_cert, &cli.tls_key, &cli.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        }),
        _ => None,
    };
    Ok(file.resolve(Overrides {
        listen: cli.listen,
        allow: cli.allow.clone(),
        restart: cli.restart.clone(),
        max_isolation_ms: cli.max_isolation_ms,
        tls,
        insecure: cli.insecure,
    })?)
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
            let runner: windows_service::Runner = Box::new(move |stop| {
                faultlab_agent::run(serving, stop).map_err(|error| error.to_string())
            });
            windows_service::run(runner).context("cannot run as a service (only the Service Control Manager can start `service run`)")
        }
    }
}

#[cfg(not(windows))]
fn service(_action: ServiceAction) -> anyhow::Result<()> {
    anyhow::bail!("Windows services exist only on Windows; on Linux see deploy/systemd")
}
