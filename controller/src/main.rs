//! The `faultlab` command line: flags in, library calls out.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use faultlab::agents::{ClientTls, Connector};
use faultlab::engine::{self, AgentHandle, Plan, Progress, RunClock, TargetHandle};
use faultlab::history::{self, History};
use faultlab::inventory::Inventory;
use faultlab::lab::{self, LocalLab};
use faultlab::report::{CaseReport, RunReport, junit, terminal};
use faultlab::scenario::{self, Scenario};
use faultlab::suites;
use faultlab::targets::Target;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `println!` that returns the error instead of panicking when stdout is
/// gone (`faultlab runs | head`): the caller ends quietly.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}
use std::process::ExitCode;
use std::sync::Arc;
use tracing::Instrument as _;

/// faultlab: run TCP fault scenarios across lab hosts and see what each
/// side's socket API really said.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    otlp: faultlab_telemetry::OtlpArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Mutual TLS to the agents; overrides the inventory's `[tls]`.
#[derive(clap::Args, Clone, Default)]
struct TlsArgs {
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
    fn connector(&self, inventory: Option<&Inventory>) -> anyhow::Result<Connector> {
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

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(clap::Args)]
struct HistoryArgs {
    /// History database (default: $FAULTLAB_HISTORY, else ~/.local/share/faultlab/history.sqlite).
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
}

impl HistoryArgs {
    fn open(&self) -> anyhow::Result<History> {
        let path = self.history.clone().unwrap_or_else(history::default_path);
        Ok(History::open(&path)?)
    }
}

#[derive(clap::Args)]
struct TraceUrlArgs {
    /// Link each case to its trace: a URL in which {trace_id} and {span_id}
    /// are replaced, e.g. http://localhost:16686/trace/{trace_id}?uiFind={span_id}
    /// (Jaeger). Default: $FAULTLAB_TRACE_URL.
    #[arg(long, value_name = "TEMPLATE")]
    trace_url: Option<String>,
}

impl TraceUrlArgs {
    fn link(&self, report: &mut RunReport) {
        let template = self
            .trace_url
            .clone()
            .or_else(|| std::env::var("FAULTLAB_TRACE_URL").ok());
        if let Some(template) = template.filter(|template| !template.is_empty()) {
            report.link_traces(&template);
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios: a built-in suite and/or files. With no inventory, on a
    /// local lab of agents started on loopback.
    Run {
        /// A built-in suite (see `faultlab cases`).
        #[arg(long)]
        suite: Vec<String>,
        /// Scenario files.
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Only these case ids (e.g. --case S2 --case C3).
        #[arg(long = "case")]
        cases: Vec<String>,
        /// The lab's agents; without it a local lab is started.
        #[arg(long, value_name = "FILE")]
        inventory: Option<PathBuf>,
        /// Run each case on every ordered choice of agents (the OS × OS matrix).
        #[arg(long)]
        all_bindings: bool,
        /// Bind a role to a named agent, e.g. --bind server=win-1 (repeatable).
        #[arg(long, value_name = "ROLE=AGENT", value_parser = parse_binding)]
        bind: Vec<(String, String)>,
        /// Let an application play a role: a target of the inventory or of
        /// --targets by name, or tcp://HOST:PORT (HOST: an IP, or an agent's
        /// name for its test address), e.g. --target server=tcp://127.0.0.1:7000.
        #[arg(long, value_name = "ROLE=TARGET", value_parser = parse_binding)]
        target: Vec<(String, String)>,
        /// Targets (`[[target]]` tables) from this file too.
        #[arg(long, value_name = "FILE")]
        targets: Option<PathBuf>,
        /// Cases at once.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// What to print on stdout.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Also write JUnit XML here.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// In the table, list each case's captured TCP segments.
        #[arg(long)]
        wire: bool,
        /// Also write the self-contained HTML report (ladder diagrams) here.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        #[command(flatten)]
        history: HistoryArgs,
        /// Do not keep this run in the history.
        #[arg(long)]
        no_history: bool,
        /// Fail on skipped cases too (by default only differs, error,
        /// agent-lost and timeout fail the run).
        #[arg(long)]
        strict: bool,
        #[command(flatten)]
        trace_url: TraceUrlArgs,
    },
    /// Validate scenario files without running them; lists every error.
    Check {
        /// Scenario files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// List the cases of the built-in suites.
    Cases,
    /// Show each agent's host, OS, kernel, boot id, version and health.
    Agents {
        /// Agent addresses (host:port).
        addresses: Vec<String>,
        /// Or the agents of an inventory file.
        #[arg(long, value_name = "FILE")]
        inventory: Option<PathBuf>,
    },
    /// Each agent's host's TCP connections (every program's) with their
    /// states: what an application left behind, e.g. in CLOSE-WAIT.
    Connections {
        /// Agent addresses (host:port).
        addresses: Vec<String>,
        /// Or the agents of an inventory file.
        #[arg(long, value_name = "FILE")]
        inventory: Option<PathBuf>,
        /// Only connections with this local port.
        #[arg(long)]
        port: Option<u16>,
        /// Only connections with this remote address (or address:port).
        #[arg(long)]
        remote: Option<String>,
        /// Listening sockets too.
        #[arg(long)]
        listening: bool,
    },
    /// Benchmarks on a local lab: fan-out skew over many agents, and the
    /// seed suite's wall time against its inherent waits.
    Bench {
        /// Agents for the fan-out (pairs = agents / 2).
        #[arg(long, default_value_t = 64)]
        agents: usize,
        /// The case the fan-out plays on every pair.
        #[arg(long, default_value = "C1")]
        case: String,
        /// Times to repeat the sequential suite run.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// One process of the bench's wake-up floor: sleep until a wall-clock
    /// moment, print how late it woke (ns).
    #[command(hide = true)]
    BenchWake {
        /// The moment, in ns since the Unix epoch.
        at_unix_ns: u128,
    },
    /// A lab of network-namespace hosts on this machine that outlives the
    /// command (needs root): up, down, status.
    Lab {
        #[command(subcommand)]
        action: LabAction,
        /// Where the lab's state is kept (inventory, agent pids, logs).
        #[arg(long, value_name = "DIR", default_value_os_t = lab::default_state_dir(), global = true)]
        state: PathBuf,
    },
    /// Lift every isolation on every agent of an inventory (or the given addresses).
    Heal {
        /// Heal everything (required: there is no partial form yet).
        #[arg(long, required = true)]
        all: bool,
        /// Agent addresses (host:port).
        addresses: Vec<String>,
        /// Or the agents of an inventory file.
        #[arg(long, value_name = "FILE")]
        inventory: Option<PathBuf>,
    },
    /// A stored run as a self-contained HTML report (with ladder diagrams)
    /// or as Markdown for a ticket.
    Report {
        /// Run number or id (see `faultlab runs`).
        run: String,
        /// Write the HTML report here.
        #[arg(long, value_name = "FILE", required_unless_present = "markdown")]
        html: Option<PathBuf>,
        /// Print Markdown on stdout.
        #[arg(long)]
        markdown: bool,
        #[command(flatten)]
        history: HistoryArgs,
        #[command(flatten)]
        trace_url: TraceUrlArgs,
    },
    /// A lab certificate authority for mutual TLS between controller and
    /// agents: `certs init`, then `certs issue NAME` per agent and controller.
    Certs {
        #[command(subcommand)]
        action: CertsAction,
        /// Where the CA and the certificates live.
        #[arg(
            long,
            value_name = "DIR",
            default_value = "faultlab-certs",
            global = true
        )]
        dir: PathBuf,
    },
    /// The history of runs.
    Runs {
        #[command(subcommand)]
        action: Option<RunsAction>,
        #[command(flatten)]
        history: HistoryArgs,
    },
}

#[derive(Subcommand)]
enum CertsAction {
    /// Make the CA (ca.pem, ca.key); refuses to overwrite.
    Init {
        /// The CA's name.
        #[arg(long, default_value = "faultlab lab CA")]
        name: String,
    },
    /// Make NAME.pem and NAME.key, signed by the CA, good as server and client.
    Issue {
        /// Certificate name: an agent (audit logs show it) or "controller".
        name: String,
        /// Addresses and DNS names the certificate is valid for (repeatable;
        /// default NAME): an agent's must include the address the controller dials.
        #[arg(long = "san", value_name = "ADDRESS|NAME")]
        sans: Vec<String>,
        /// Days of validity.
        #[arg(long, default_value_t = faultlab::certs::DEFAULT_DAYS)]
        days: i64,
    },
}

#[derive(Subcommand)]
enum LabAction {
    /// Make the hosts (management and test network, an agent in each) and
    /// write their inventory.
    Up {
        /// How many hosts.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Let the agents act on other programs (process faults on an
        /// application, aborting its connections).
        #[arg(long)]
        allow_process: bool,
        /// How the agents restart a program, as NAME=COMMAND (repeatable).
        #[arg(long = "restart", value_name = "NAME=COMMAND", value_parser = parse_binding)]
        restart: Vec<(String, String)>,
    },
    /// Run a command on a lab host (inside its network namespace), e.g. the
    /// application under test: `faultlab lab exec 2 -- python3 server.py`.
    Exec {
        /// The host's number (1 = host-1).
        host: usize,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Stop the agents and remove every namespace and bridge (also after a crash).
    Down,
    /// The lab's agents and their health.
    Status,
}

#[derive(Subcommand)]
enum RunsAction {
    /// List the newest runs.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Print a stored run again.
    Show {
        /// Run number or id.
        run: String,
        /// Table or JSON.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// In the table, list each case's captured TCP segments.
        #[arg(long)]
        wire: bool,
    },
    /// The cases whose outcome changed between two runs.
    Diff {
        /// The earlier run.
        a: String,
        /// The later run.
        b: String,
    },
}

fn main() -> ExitCode {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let cli = Cli::parse();
    // Spans are flushed when `telemetry` drops, after the run, on every exit.
    let telemetry = match faultlab_telemetry::Telemetry::start("faultlab", &cli.otlp) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("faultlab: {error}");
            return ExitCode::from(2);
        }
    };
    // Warnings only (e.g. that traces are not being delivered): stdout is the report's.
    let warnings = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    tracing_subscriber::registry()
        .with(warnings)
        .with(telemetry.layer())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("faultlab: cannot start: {error}");
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(dispatch(cli.command, cli.tls)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) if stdout_closed(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("faultlab: {error:#}");
            ExitCode::from(2)
        }
    };
    drop(runtime);
    drop(telemetry);
    code
}

/// Whether an error is only that the reader of our output went away.
fn stdout_closed(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Ok(true): success; Ok(false): the run found failures; Err: could not run.
async fn dispatch(command: Command, tls: TlsArgs) -> anyhow::Result<bool> {
    match command {
        Command::Run {
            suite,
            files,
            cases,
            inventory,
            all_bindings,
            bind,
            target,
            targets,
            parallel,
            format,
            junit,
            wire,
            html,
            history,
            no_history,
            strict,
            trace_url,
        } => {
            let (label, scenarios) = load_scenarios(&suite, &files, &cases)?;
            let pinned = bind.into_iter().collect();
            let mut report = run(
                label,
                scenarios,
                Lab {
                    inventory: inventory.as_deref(),
                    targets: targets.as_deref(),
                    roles: target,
                },
                &tls,
                all_bindings,
                pinned,
                parallel,
            )
            .await?;
            trace_url.link(&mut report);
            print_report(&report, format, wire)?;
            if let Some(path) = html {
                write_html(&report, &path)?;
            }
            if let Some(path) = junit {
                let xml = junit::render(&report).context("cannot render JUnit XML")?;
                std::fs::write(&path, xml)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if !no_history {
                let number = history.open()?.save(&report)?;
                match &report.trace_id {
                    Some(trace) => {
                        eprintln!("kept as run {number} ({}), trace {trace}", report.run_id)
                    }
                    None => eprintln!("kept as run {number} ({})", report.run_id),
                }
            }
            Ok(report.passed(strict))
        }
        Command::Check { files } => {
            let mut good = true;
            for file in &files {
                match read_scenario(file) {
                    Ok(scenario) => say!(
                        "{}: ok ({} {}, {} steps)",
                        file.display(),
                        scenario.id,
                        scenario.name,
                        scenario.steps.len()
                    ),
                    Err(error) => {
                        good = false;
                        eprintln!("{error:#}");
                    }
                }
            }
            Ok(good)
        }
        Command::Cases => {
            for name in suites::NAMES {
                let scenarios = suites::load(name).unwrap_or(Ok(Vec::new()))?;
                say!("suite {name}:");
                for case in scenarios {
                    let mut needs = case.needs.clone();
                    if let Some(role) = &case.application {
                        needs.push(format!("an application as {role}"));
                    }
                    let needs = if needs.is_empty() {
                        String::new()
                    } else {
                        format!("  (needs {})", needs.join(", "))
                    };
                    say!("  {:<4} {:<30} {}{needs}", case.id, case.name, case.title);
                }
            }
            Ok(true)
        }
        Command::Connections {
            addresses,
            inventory,
            port,
            remote,
            listening,
        } => {
            let filter = faultlab_proto::v1::ConnectionFilter {
                local_port: port.map_or(0, u32::from),
                remote: remote.unwrap_or_default(),
                local: String::new(),
                include_listening: listening,
            };
            connections(addresses, inventory.as_deref(), &tls, filter).await
        }
        Command::Agents {
            addresses,
            inventory,
        } => agents(addresses, inventory.as_deref(), &tls).await,
        Command::Bench {
            agents,
            case,
            rounds,
        } => bench(agents, &case, rounds).await,
        Command::BenchWake { at_unix_ns } => {
            let late = faultlab::bench::wake_at(at_unix_ns);
            let mut out = std::io::stdout();
            writeln!(out, "{late}")?;
            out.flush()?;
            // Exiting is work too: stay until the others have woken.
            std::thread::sleep(std::time::Duration::from_millis(500));
            Ok(true)
        }
        Command::Lab { action, state } => lab_command(action, &state).await,
        Command::Report {
            run,
            html,
            markdown,
            history,
            trace_url,
        } => {
            let mut report = history.open()?.get(&run)?;
            trace_url.link(&mut report);
            if let Some(path) = html {
                write_html(&report, &path)?;
                eprintln!("wrote {}", path.display());
            }
            if markdown {
                say!("{}", faultlab::report::html::markdown(&report));
            }
            Ok(true)
        }
        Command::Heal {
            all: _,
            addresses,
            inventory,
        } => heal_all(addresses, inventory.as_deref(), &tls).await,
        Command::Certs { action, dir } => {
            match action {
                CertsAction::Init { name } => {
                    let ca = faultlab::certs::init(&dir, &name)?;
                    say!(
                        "made CA {} (keep {} private)",
                        ca.display(),
                        dir.join(faultlab::certs::CA_KEY).display()
                    );
                }
                CertsAction::Issue { name, sans, days } => {
                    let (cert, key) = faultlab::certs::issue(
                        &dir,
                        &name,
                        &sans,
                        faultlab::certs::Validity::days(days),
                    )?;
                    say!("issued {} and {}", cert.display(), key.display());
                }
            }
            Ok(true)
        }
        Command::Runs { action, history } => {
            let history = history.open()?;
            match action.unwrap_or(RunsAction::List { limit: 20 }) {
                RunsAction::List { limit } => {
                    say!(
                        "{:>4}  {:<20} {:<10} {:<24} {:>5} {:>8} {:>6} {:>7}  TRACE",
                        "RUN",
                        "ID",
                        "SUITE",
                        "OS PAIRS",
                        "CASES",
                        "EXPECTED",
                        "FAILED",
                        "SKIPPED"
                    );
                    for row in history.list(limit)? {
                        say!(
                            "{:>4}  {:<20} {:<10} {:<24} {:>5} {:>8} {:>6} {:>7}  {}",
                            row.number,
                            row.run_id,
                            row.suite,
                            row.os_pairs,
                            row.total,
                            row.expected,
                            row.failed,
                            row.skipped,
                            row.trace_id.as_deref().unwrap_or("-")
                        );
                    }
                }
                RunsAction::Show { run, format, wire } => {
                    print_report(&history.get(&run)?, format, wire)?;
                }
                RunsAction::Diff { a, b } => {
                    let changes = history.diff(&a, &b)?;
                    if changes.is_empty() {
                        say!("no case changed between {a} and {b}");
                    }
                    for change in changes {
                        say!(
                            "{}\n  {a}: {}\n  {b}: {}",
                            change.case,
                            change.before,
                            change.after
                        );
                    }
                }
            }
            Ok(true)
        }
    }
}

fn parse_binding(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((role, agent)) if !role.is_empty() && !agent.is_empty() => {
            Ok((role.to_owned(), agent.to_owned()))
        }
        _ => Err(format!("{text:?} is not ROLE=AGENT")),
    }
}

fn read_scenario(file: &Path) -> anyhow::Result<Scenario> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(scenario::parse(&file.display().to_string(), &text)?)
}

fn load_scenarios(
    suite_names: &[String],
    files: &[PathBuf],
    only: &[String],
) -> anyhow::Result<(String, Vec<Scenario>)> {
    if suite_names.is_empty() && files.is_empty() {
        bail!("nothing to run: give --suite seed and/or scenario files");
    }
    let mut scenarios = Vec::new();
    let mut label = Vec::new();
    for name in suite_names {
        let Some(suite) = suites::load(name) else {
            bail!(
                "no built-in suite {name:?}; there is: {}",
                suites::NAMES.join(", ")
            );
        };
        scenarios.extend(suite?);
        label.push(name.clone());
    }
    let mut errors = Vec::new();
    for file in files {
        match read_scenario(file) {
            Ok(scenario) => scenarios.push(scenario),
            Err(error) => errors.push(format!("{error:#}")),
        }
        label.push(file.display().to_string());
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    if !only.is_empty() {
        let unknown: Vec<&String> = only
            .iter()
            .filter(|id| !scenarios.iter().any(|case| &case.id == *id))
            .collect();
        if !unknown.is_empty() {
            bail!("no case {unknown:?} among the scenarios given");
        }
        scenarios.retain(|case| only.contains(&case.id));
    }
    Ok((label.join(","), scenarios))
}

/// Where a run happens: the agents, and the applications that play roles.
struct Lab<'a> {
    inventory: Option<&'a Path>,
    targets: Option<&'a Path>,
    /// Role → a target's name, or tcp://HOST:PORT.
    roles: Vec<(String, String)>,
}

/// The targets the run binds to roles, from the inventory, the --targets
/// file and the command line.
fn chosen_targets(
    inventory: &Inventory,
    file: Option<&Path>,
    roles: &[(String, String)],
) -> anyhow::Result<Vec<(String, Target)>> {
    let mut defined = inventory.targets()?;
    if let Some(file) = file {
        let extra = Inventory::load(file)?;
        if !extra.agents.is_empty() {
            bail!(
                "{}: agents belong in --inventory; a --targets file holds [[target]] tables only",
                file.display()
            );
        }
        defined.extend(extra.targets()?);
    }
    let mut chosen = Vec::new();
    for (role, spec) in roles {
        let target = match defined.iter().find(|target| &target.name == spec) {
            Some(target) => target.clone(),
            None if spec.contains(':') => Target::inline(spec)?,
            None => bail!(
                "--target {role}={spec}: no target named {spec:?} (define it under [[target]], or give tcp://HOST:PORT)"
            ),
        };
        chosen.push((role.clone(), target));
    }
    Ok(chosen)
}

async fn run(
    suite: String,
    cases: Vec<Scenario>,
    lab: Lab<'_>,
    tls: &TlsArgs,
    all_bindings: bool,
    pinned: std::collections::BTreeMap<String, String>,
    parallel: usize,
) -> anyhow::Result<RunReport> {
    let roles = cases.iter().map(|case| case.roles.len()).max().unwrap_or(2);
    let given = match lab.inventory {
        Some(path) => Some(Inventory::load(path)?),
        None => None,
    };
    let mut targets = chosen_targets(
        given.as_ref().unwrap_or(&Inventory::default()),
        lab.targets,
        &lab.roles,
    )?;
    let (inventory, _local) = match given {
        Some(inventory) => (inventory, None),
        // The application runs on this very host: so do the agents.
        None if !targets.is_empty() => {
            let exe = lab::find_agent().ok_or(lab::LabError::NoAgent)?;
            let local = LocalLab::start(&exe, roles.max(2))?;
            eprintln!(
                "local lab: {} agents on loopback, on the application's host (the last one counts its sockets)",
                local.inventory.agents.len()
            );
            if let Some(last) = local.inventory.agents.last() {
                for (_, target) in &mut targets {
                    if target.agent.is_none() {
                        target.agent = Some(last.name.clone());
                    }
                }
            }
            (local.inventory.clone(), Some(local))
        }
        None => {
            let exe = lab::find_agent().ok_or(lab::LabError::NoAgent)?;
            let local = match lab::netns_unavailable() {
                None => {
                    let local = LocalLab::start_netns(&exe, roles.max(2))?;
                    eprintln!(
                        "local lab: {} network-namespace hosts on {} ({})",
                        local.inventory.agents.len(),
                        local.subnet().unwrap_or_default(),
                        exe.display()
                    );
                    local
                }
                Some(why) => {
                    let local = LocalLab::start(&exe, roles.max(2))?;
                    eprintln!(
                        "local lab: {} agents on loopback ({why}: cases that cut hosts off are skipped; run as root for a lab of network namespaces)",
                        local.inventory.agents.len()
                    );
                    local
                }
            };
            (local.inventory.clone(), Some(local))
        }
    };
    let run_id = engine::new_run_id();
    let span = engine::run_span(&run_id, &suite);
    if let Some(trace) = faultlab_telemetry::trace_id(&span) {
        eprintln!("run {run_id}: trace {trace}");
    }
    let clock = RunClock::start();
    let connector = if _local.is_some() {
        Connector::plain()
    } else {
        tls.connector(Some(&inventory))?
    };
    let agents = AgentHandle::connect_all(&connector, &inventory, &clock)
        .instrument(span.clone())
        .await?;
    for (role, agent) in &pinned {
        if !agents.iter().any(|handle| &handle.name == agent) {
            bail!("--bind {role}={agent}: no agent named {agent:?} in the lab");
        }
    }
    let mut placed = std::collections::BTreeMap::new();
    for (role, target) in targets {
        let handle = TargetHandle::place(target, &agents).map_err(anyhow::Error::msg)?;
        eprintln!(
            "role {role}: application {} at {}{}",
            handle.target.name,
            handle.address,
            handle
                .host
                .as_ref()
                .map_or_else(String::new, |host| format!(
                    ", its host's agent {}",
                    host.name
                ))
        );
        placed.insert(role, Arc::new(handle));
    }
    let plan = Plan {
        targets: placed,
        run_id,
        suite,
        cases,
        agents,
        all_bindings,
        pinned,
        parallel,
    };
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("faultlab: stopping: finishing nothing new, resetting the agents");
            let _ = stop_tx.send(true);
        }
    });
    let total = plan
        .cases
        .iter()
        .map(|case| plan.bindings(case).len())
        .sum::<usize>();
    let progress = Arc::new(Bars::new(total));
    let report = engine::run(plan, clock, progress.clone(), stop)
        .instrument(span)
        .await;
    progress.bar.finish_and_clear();
    Ok(report)
}

async fn bench(agents: usize, case: &str, rounds: usize) -> anyhow::Result<bool> {
    let seed = suites::load("seed").unwrap_or(Ok(Vec::new()))?;
    let Some(fanned) = seed.iter().find(|scenario| scenario.id == case) else {
        bail!("no seed case {case:?}");
    };
    let exe = lab::find_agent().ok_or(lab::LabError::NoAgent)?;
    let local = LocalLab::start(&exe, agents.max(2))?;
    let clock = RunClock::start();
    let handles = AgentHandle::connect_all(&Connector::plain(), &local.inventory, &clock).await?;
    let result = faultlab::bench::fanout(fanned, &handles, clock).await;
    say!(
        "fan-out: {} on {} pairs at once ({} agents): {} expected, {:.0} ms wall",
        fanned.id,
        result.pairs,
        handles.len(),
        result.expected,
        result.wall_ms
    );
    for (what, spread) in [
        (
            "hand-off (step end on one host -> next step start on the other)",
            &result.handoff,
        ),
        ("spread (same step's start across pairs)", &result.spread),
    ] {
        say!(
            "  {what}: p50 {:.0} us, p99 {:.0} us, max {:.0} us ({} samples)",
            spread.p50_us,
            spread.p99_us,
            spread.max_us,
            spread.samples
        );
    }
    let pairs = handles.len() / 2;
    let release_case = faultlab::bench::release_case(pairs * 2)
        .map_err(|errors| anyhow::anyhow!("the release case does not parse: {errors}"))?;
    let release = faultlab::bench::release(&release_case, &handles, clock).await;
    say!(
        "release: {} agents act at one released moment ({:?}{}): skew p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        release.agents,
        release.verdict,
        if release.problems.is_empty() {
            String::new()
        } else {
            format!(": {}", release.problems.join("; "))
        },
        release.skew.p50_us,
        release.skew.p99_us,
        release.skew.max_us
    );
    say!(
        "  after the moment (clock offsets included): p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        release.lateness.p50_us,
        release.lateness.p99_us,
        release.lateness.max_us
    );
    let floor = faultlab::bench::wake_floor(&std::env::current_exe()?, release.agents.max(2))?;
    say!(
        "  floor: {} bare processes woken at one moment on this machine: spread p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        floor.samples,
        floor.p50_us,
        floor.p99_us,
        floor.max_us
    );
    if let Some((rss, peak)) = faultlab::bench::own_memory_kib() {
        say!(
            "controller memory with {} agents connected: RSS {:.1} MiB, peak {:.1} MiB",
            handles.len(),
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
    for round in 1..=rounds {
        let timing = faultlab::bench::suite(&seed, &handles[..2], clock).await;
        say!(
            "suite round {round}: {} cases one at a time ({} expected): {:.0} ms wall, {} ms inherent waits: {:.2}x",
            timing.cases,
            timing.expected,
            timing.wall_ms,
            timing.inherent_ms,
            timing.wall_ms / timing.inherent_ms.max(1) as f64
        );
    }
    Ok(result.expected == result.pairs && release.verdict == faultlab::report::Verdict::Expected)
}

/// Progress on stderr (hidden when stderr is not a terminal).
struct Bars {
    bar: ProgressBar,
}

impl Bars {
    fn new(total: usize) -> Self {
        let bar = ProgressBar::new(u64::try_from(total).unwrap_or(0));
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} cases  {msg}") {
            bar.set_style(style);
        }
        Self { bar }
    }
}

impl Progress for Bars {
    fn started(&self, case: &Scenario, agents: &[String]) {
        self.bar
            .set_message(format!("{} {} on {}", case.id, case.name, agents.join("→")));
    }

    fn finished(&self, report: &CaseReport) {
        self.bar.inc(1);
        self.bar.println(format!(
            "{:<4} {:<11} {}",
            report.id,
            report.verdict.as_str(),
            report.name
        ));
    }
}

fn write_html(report: &RunReport, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, faultlab::report::html::render(report))
        .with_context(|| format!("cannot write {}", path.display()))
}

fn print_report(report: &RunReport, format: Format, wire: bool) -> anyhow::Result<()> {
    match format {
        Format::Table => write!(std::io::stdout(), "{}", terminal::render(report, wire))?,
        Format::Json => say!("{}", serde_json::to_string_pretty(report)?),
    }
    Ok(())
}

/// (name, address) of the agents named on the command line or in an inventory.
/// The agents named by addresses or an inventory, and how to reach them.
fn agent_entries(
    addresses: Vec<String>,
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
                .into_iter()
                .map(|address| (address.clone(), address))
                .collect(),
            tls.connector(None)?,
        ),
    })
}

async fn lab_command(action: LabAction, state: &Path) -> anyhow::Result<bool> {
    match action {
        LabAction::Up {
            hosts,
            allow_process,
            restart,
        } => {
            let exe = lab::find_agent().ok_or(lab::LabError::NoAgent)?;
            match lab::netns_unavailable() {
                None => {
                    say!("lab up: {hosts} network-namespace hosts (management and test networks)")
                }
                Some(why) => say!(
                    "lab up: {why}: {hosts} agents on loopback instead; cases that cut hosts off will be skipped (run as root for network namespaces)"
                ),
            }
            let grants = lab::AgentGrants {
                process: allow_process,
                restart,
            };
            let inventory = lab::lab_up(&exe, hosts.max(1), state, &grants)?;
            say!("inventory {}", inventory.display());
            say!(
                "run:    faultlab run --suite seed --inventory {}",
                inventory.display()
            );
            Ok(true)
        }
        LabAction::Exec { host, command } => {
            let namespace = lab::lab_namespace(state, host)?;
            let mut process = match &namespace {
                Some(namespace) => {
                    let mut process = std::process::Command::new("ip");
                    process.args(["netns", "exec", namespace]).args(&command);
                    process
                }
                None => {
                    let mut process = std::process::Command::new(&command[0]);
                    process.args(&command[1..]);
                    process
                }
            };
            let status = process
                .status()
                .with_context(|| format!("cannot run {:?}", command.join(" ")))?;
            Ok(status.success())
        }
        LabAction::Down => {
            let removed = lab::lab_down(state)?;
            if removed.is_empty() {
                say!("lab down: nothing was up");
            } else {
                say!("lab down: removed {}", removed.join(", "));
            }
            Ok(true)
        }
        LabAction::Status => {
            let Some(lab::LabStatus {
                inventory_path: path,
                inventory,
                pids,
            }) = lab::lab_status(state)
            else {
                say!("no lab is up (state {})", state.display());
                return Ok(false);
            };
            say!("inventory {}", path.display());
            let running = pids.iter().filter(|(_, alive)| *alive).count();
            say!("{running} of {} agent processes running", pids.len());
            let healthy = agents(Vec::new(), Some(&path), &TlsArgs::default()).await?;
            Ok(healthy && running == inventory.agents.len())
        }
    }
}

async fn heal_all(
    addresses: Vec<String>,
    inventory: Option<&Path>,
    tls: &TlsArgs,
) -> anyhow::Result<bool> {
    let mut all_healed = true;
    let (entries, connector) = agent_entries(addresses, inventory, tls)?;
    for (name, address) in entries {
        let healed = async {
            let mut client = connector.connect(&address).await?;
            let reply = client
                .heal(faultlab_proto::v1::HealRequest {
                    id: String::new(),
                    all: true,
                })
                .await?;
            anyhow::Ok(reply.into_inner().healed)
        }
        .await;
        match healed {
            Ok(count) => say!("{name:<14} {address:<22} healed {count} isolation(s)"),
            Err(error) => {
                all_healed = false;
                say!("{name:<14} {address:<22} NOT HEALED: {error:#}");
            }
        }
    }
    Ok(all_healed)
}

async fn connections(
    addresses: Vec<String>,
    inventory: Option<&Path>,
    tls: &TlsArgs,
    filter: faultlab_proto::v1::ConnectionFilter,
) -> anyhow::Result<bool> {
    let (entries, connector) = agent_entries(addresses, inventory, tls)?;
    say!(
        "{:<14} {:<11} {:<28} {:<28} {:>8} {:>8}",
        "AGENT",
        "STATE",
        "LOCAL",
        "REMOTE",
        "RECV-Q",
        "SEND-Q"
    );
    let mut all_answered = true;
    for (name, address) in entries {
        let listed = async {
            let mut client = connector.connect(&address).await?;
            let reply = client
                .list_connections(faultlab_proto::v1::ListConnectionsRequest {
                    filter: Some(filter.clone()),
                })
                .await?;
            anyhow::Ok(reply.into_inner().connections)
        }
        .await;
        match listed {
            Ok(found) => {
                for connection in found {
                    say!(
                        "{:<14} {:<11} {:<28} {:<28} {:>8} {:>8}",
                        name,
                        connection.state_name,
                        connection.local_address,
                        connection.remote_address,
                        connection.recv_queue,
                        connection.send_queue
                    );
                }
            }
            Err(error) => {
                all_answered = false;
                say!("{name:<14} UNREACHABLE: {error:#}");
            }
        }
    }
    Ok(all_answered)
}

async fn agents(
    addresses: Vec<String>,
    inventory: Option<&Path>,
    tls: &TlsArgs,
) -> anyhow::Result<bool> {
    let (entries, connector) = agent_entries(addresses, inventory, tls)?;
    say!(
        "{:<14} {:<22} {:<8} {:<14} {:<28} {:<24} {:<8} {:<36} CAPABILITIES",
        "AGENT",
        "ADDRESS",
        "HEALTH",
        "HOST",
        "OS",
        "KERNEL",
        "VERSION",
        "BOOT ID"
    );
    let mut unreachable = 0;
    for (name, address) in &entries {
        match connector.host_info(address).await {
            Ok(info) => say!(
                "{:<14} {:<22} {:<8} {:<14} {:<28} {:<24} {:<8} {:<36} {}",
                name,
                address,
                "ok",
                info.hostname,
                info.os_version,
                info.kernel_version,
                info.agent_version,
                info.boot_id,
                info.capabilities.join(",")
            ),
            Err(error) => {
                unreachable += 1;
                say!("{name:<14} {address:<22} {:<8} {error}", "down");
            }
        }
    }
    Ok(unreachable == 0)
}
