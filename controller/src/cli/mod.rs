//! The command line: one file per subcommand, each with its clap `Args`
//! and the few lines that call the library and print what it returned.
//! Flags shared by several subcommands (TLS, history, trace links, output
//! format) and the agents named on the command line live here.

pub mod agents;
pub mod audit;
pub mod bench;
pub mod cases;
pub mod certs;
pub mod check;
pub mod connections;
pub mod heal;
pub mod lab;
pub mod report;
pub mod run;
pub mod runs;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use faultlab::agents::{ClientTls, Connector};
use faultlab::history::{self, History};
use faultlab::inventory::Inventory;
use faultlab::report::{RunReport, terminal};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `println!` that returns the error instead of panicking when stdout is
/// gone (`faultlab runs | head`): the caller ends quietly.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}
pub(crate) use say;

/// Say that agent `name` could not be asked, and why (each cause once).
fn say_unreachable(name: &str, error: &faultlab::agents::AgentsError) -> std::io::Result<()> {
    use std::io::Write as _;
    writeln!(
        std::io::stdout(),
        "{name:<14} UNREACHABLE: {}",
        faultlab::error_chain(faultlab::causes_of(error))
    )
}

/// faultlab: run TCP fault scenarios across lab hosts and see what each
/// side's socket API really said.
#[derive(Parser)]
#[command(version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten, next_help_heading = "Tracing (any command)")]
    pub otlp: faultlab_telemetry::OtlpArgs,
    #[command(flatten, next_help_heading = "Mutual TLS to the agents (any command)")]
    pub tls: TlsArgs,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run scenarios: a built-in suite and/or files. With no inventory, on a
    /// local lab made for the run (network-namespace hosts as root, else
    /// agents on loopback) and removed after it.
    Run(Box<run::RunArgs>),
    /// Validate scenario files without running them; lists every error.
    Check(check::CheckArgs),
    /// List the cases of the built-in suites.
    Cases,
    /// Show each agent's host, OS, kernel, boot id, version and health, and
    /// what you may do there (its access rules decide by your certificate).
    Agents(agents::AgentsArgs),
    /// The last entries of each agent's audit trail: who changed what on
    /// its host, allowed or denied, and what came of it.
    Audit(audit::AuditArgs),
    /// Each agent's host's TCP connections (every program's) with their
    /// states: what an application left behind, e.g. in CLOSE-WAIT.
    Connections(connections::ConnectionsArgs),
    /// Benchmarks on a local lab: fan-out skew over many agents, release
    /// skew against the machine's floor (idle or under --load), and the
    /// seed suite's wall time against its inherent waits (also on any
    /// lab's agents, with --inventory).
    Bench(bench::BenchArgs),
    /// A lab of network-namespace hosts on this machine that outlives the
    /// command (needs root): up, down, status.
    Lab(lab::LabArgs),
    /// Lift every isolation on every agent of an inventory (or the given addresses).
    Heal(heal::HealArgs),
    /// A stored run as a self-contained HTML report (with ladder diagrams)
    /// or as Markdown for a ticket.
    Report(report::ReportArgs),
    /// A lab certificate authority for mutual TLS between controller and
    /// agents: `certs init`, then `certs issue NAME` per agent and controller.
    Certs(certs::CertsArgs),
    /// The history of runs.
    Runs(runs::RunsArgs),
}

/// Ok(true): success; Ok(false): the run found failures; Err: could not run.
pub async fn dispatch(command: Command, tls: TlsArgs) -> anyhow::Result<bool> {
    match command {
        Command::Run(args) => run::run(*args, &tls).await,
        Command::Check(args) => check::check(&args),
        Command::Cases => cases::cases(),
        Command::Agents(args) => agents::agents(args, &tls).await,
        Command::Audit(args) => audit::audit(args, &tls).await,
        Command::Connections(args) => connections::connections(args, &tls).await,
        Command::Bench(args) => bench::bench(&args, &tls).await,
        Command::Lab(args) => lab::lab(args).await,
        Command::Heal(args) => heal::heal(args, &tls).await,
        Command::Report(args) => report::report(&args),
        Command::Certs(args) => certs::certs(args),
        Command::Runs(args) => runs::runs(args),
    }
}

/// Mutual TLS to the agents; overrides the inventory's `[tls]`.
#[derive(clap::Args, Clone, Default)]
pub struct TlsArgs {
    /// The CA the agents' certificates chain to (PEM).
    #[arg(long, value_name = "FILE", global = true, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// The controller's certificate (PEM), e.g. from `faultlab certs issue controller`.
    #[arg(long, value_name = "FILE", global = true, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", global = true, requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// How to reach the agents of `inventory` (flags first, then its `[tls]`).
    pub fn connector(&self, inventory: Option<&Inventory>) -> anyhow::Result<Connector> {
        let tls = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Some(ClientTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => inventory.and_then(|inventory| inventory.tls.clone()),
        };
        Ok(match tls {
            Some(tls) => Connector::with_tls(&tls)?,
            None => Connector::plain(),
        })
    }
}

/// How a report is printed.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// A table for people.
    Table,
    /// The report's JSON (see its schema).
    Json,
}

/// Where the history of runs is kept.
#[derive(clap::Args)]
pub struct HistoryArgs {
    /// History database (default: $FAULTLAB_HISTORY, else ~/.local/share/faultlab/history.sqlite).
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
}

impl HistoryArgs {
    /// Open it.
    pub fn open(&self) -> anyhow::Result<History> {
        let path = self.history.clone().unwrap_or_else(history::default_path);
        Ok(History::open(&path)?)
    }

    /// What each case took when it last ran, if a history exists (none is
    /// made for asking) and can be read; else nothing.
    pub fn durations(&self) -> std::collections::BTreeMap<String, u64> {
        let path = self.history.clone().unwrap_or_else(history::default_path);
        if !path.exists() {
            return Default::default();
        }
        History::open(&path)
            .and_then(|history| history.durations())
            .unwrap_or_default()
    }
}

/// Links from each case to its trace.
#[derive(clap::Args)]
pub struct TraceUrlArgs {
    /// Link each case to its trace: a URL in which {trace_id} and {span_id}
    /// are replaced, e.g. http://localhost:16686/trace/{trace_id}?uiFind={span_id}
    /// (Jaeger). Default: $FAULTLAB_TRACE_URL.
    #[arg(long, value_name = "TEMPLATE")]
    trace_url: Option<String>,
}

impl TraceUrlArgs {
    /// Put the links into `report`.
    pub fn link(&self, report: &mut RunReport) {
        let template = self
            .trace_url
            .clone()
            .or_else(|| std::env::var("FAULTLAB_TRACE_URL").ok());
        if let Some(template) = template.filter(|template| !template.is_empty()) {
            report.link_traces(&template);
        }
    }
}

/// Agents named by address on the command line, or by an inventory file.
#[derive(clap::Args)]
pub struct AgentsGiven {
    /// Agent addresses (host:port).
    addresses: Vec<String>,
    /// Or the agents of an inventory file.
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
}

impl AgentsGiven {
    /// The agents (name, address), and how to reach them.
    pub fn entries(&self, tls: &TlsArgs) -> anyhow::Result<(Vec<(String, String)>, Connector)> {
        agent_entries(&self.addresses, self.inventory.as_deref(), tls)
    }
}

/// The agents named by addresses or an inventory, and how to reach them.
pub fn agent_entries(
    addresses: &[String],
    inventory: Option<&Path>,
    tls: &TlsArgs,
) -> anyhow::Result<(Vec<(String, String)>, Connector)> {
    Ok(match inventory {
        Some(path) => {
            let inventory = Inventory::load(path)?;
            let connector = tls.connector(Some(&inventory))?;
            let entries = inventory
                .agents
                .into_iter()
                .map(|agent| (agent.name, agent.address))
                .collect();
            (entries, connector)
        }
        None if addresses.is_empty() => bail!("give agent addresses or --inventory FILE"),
        None => (
            addresses
                .iter()
                .map(|address| (address.clone(), address.clone()))
                .collect(),
            tls.connector(None)?,
        ),
    })
}

/// `NAME=VALUE`, for `--bind` (ROLE=AGENT), `--target` (ROLE=TARGET) and
/// `--restart` (NAME=COMMAND); `form` says which in the error.
pub fn parse_pair(text: &str, form: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => Err(format!("{text:?} is not {form}")),
    }
}

/// Print a report as a table or JSON.
pub fn print_report(
    report: &RunReport,
    format: Format,
    wire: terminal::WireView,
) -> anyhow::Result<()> {
    match format {
        Format::Table => write!(std::io::stdout(), "{}", terminal::render_with(report, wire))?,
        Format::Json => say!("{}", serde_json::to_string_pretty(report)?),
    }
    Ok(())
}

/// Write the self-contained HTML report.
pub fn write_html(report: &RunReport, path: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::write(path, faultlab::report::html::render(report))
        .with_context(|| format!("cannot write {}", path.display()))
}
