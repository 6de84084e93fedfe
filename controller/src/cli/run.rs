//! `faultlab run`: scenarios on a lab (an inventory's, or a local one made
//! for the run), reported as a table or JSON, JUnit, HTML, and kept in the
//! history.

use super::check::read_scenario;
use super::{Format, HistoryArgs, TlsArgs, TraceUrlArgs, parse_pair, print_report, write_html};
use anyhow::{Context as _, bail};
use faultlab::agents::Connector;
use faultlab::engine::{self, AgentHandle, Plan, Progress, RunClock, TargetHandle};
use faultlab::history::HistoryError;
use faultlab::inventory::Inventory;
use faultlab::lab::vm::VmOptions;
use faultlab::lab::{AgentGrants, ApplicationHost, LabKind, LocalLab};
use faultlab::report::terminal::WireView;
use faultlab::report::{CaseReport, RunReport, junit};
use faultlab::scenario::Scenario;
use faultlab::suites;
use faultlab::targets::Target;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::Instrument as _;

/// What to run, where, and what to make of it.
#[derive(clap::Args)]
pub struct RunArgs {
    /// A built-in suite (see `faultlab cases`).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(suites::NAMES))]
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
    /// Which local lab to start without an inventory: `auto` (network
    /// namespaces as root, else loopback) or `vm` (QEMU VMs with their own
    /// kernels).
    #[arg(long, value_enum, default_value = "auto", conflicts_with = "inventory")]
    lab: LabKind,
    #[command(flatten)]
    vm: VmOptions,
    /// Hosts of the local lab (default: as many as the widest case has
    /// roles). More hosts let cases on disjoint hosts run at once.
    #[arg(long, conflicts_with = "inventory", value_parser = super::lab::host_count)]
    hosts: Option<usize>,
    /// Let the local lab's agents act on other programs (process faults on
    /// an application: stop, kill, restart; aborting its connections).
    /// Off unless asked: an agent that may kill programs is a dangerous one.
    #[arg(long, conflicts_with = "inventory")]
    allow_process: bool,
    /// How the local lab's agents restart a program, as NAME=COMMAND
    /// (repeatable; with --allow-process).
    #[arg(long = "restart", value_name = "NAME=COMMAND", requires = "allow_process", value_parser = |text: &str| parse_pair(text, "NAME=COMMAND"))]
    restart: Vec<(String, String)>,
    /// Run each case on every ordered choice of agents (the OS × OS matrix).
    #[arg(long)]
    all_bindings: bool,
    /// Bind a role to a named agent, e.g. --bind server=win-1 (repeatable).
    #[arg(long, value_name = "ROLE=AGENT", value_parser = |text: &str| parse_pair(text, "ROLE=AGENT"))]
    bind: Vec<(String, String)>,
    /// Let an application play a role: a target of the inventory or of
    /// --targets by name, or tcp://HOST:PORT (HOST: an IP, or an agent's
    /// name for its test address), e.g. --target server=tcp://127.0.0.1:7000.
    #[arg(long, value_name = "ROLE=TARGET", value_parser = |text: &str| parse_pair(text, "ROLE=TARGET"))]
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
    /// In the table, list each case's captured TCP segments (a long
    /// capture summarised; `--wire=all` for every segment).
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "summary", default_value = "hidden")]
    wire: WireView,
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
}

/// Run, print, write and keep the report; whether the run passed.
pub async fn run(args: RunArgs, tls: &TlsArgs) -> anyhow::Result<bool> {
    let (label, scenarios) = load_scenarios(&args.suite, &args.files, &args.cases)?;
    check_roles(&scenarios, &args)?;
    let run_id = engine::new_run_id();
    // The run is in the history from its start (a history that cannot be
    // used stops it before anything is made); a killed controller's run is
    // found `interrupted` by the next.
    let kept = match args.no_history {
        true => None,
        false => {
            let history = args.history.open()?;
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| {
                    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                });
            let number = history.begin(&run_id, &label, started)?;
            Some((history, number))
        }
    };
    let mut report = match run_on_lab(label, scenarios, &args, tls, run_id).await {
        Ok(report) => report,
        Err(error) => {
            if let Some((history, number)) = &kept
                && let Err(not_kept) = history.fail(*number, &faultlab::error_chain(error.chain()))
            {
                eprintln!("the history could not keep why the run failed: {not_kept}");
            }
            return Err(error);
        }
    };
    args.trace_url.link(&mut report);
    print_report(&report, args.format, args.wire)?;
    if let Some(path) = &args.html {
        write_html(&report, path)?;
    }
    if let Some(path) = &args.junit {
        let xml = junit::render(&report).context("cannot render JUnit XML")?;
        std::fs::write(path, xml).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some((history, number)) = kept {
        match history.finish(number, &report) {
            Ok(()) => match &report.trace_id {
                Some(trace) => eprintln!("kept as run {number} ({}), trace {trace}", report.run_id),
                None => eprintln!("kept as run {number} ({})", report.run_id),
            },
            Err(error) => keep_aside(&report, history.path(), &error)?,
        }
    }
    Ok(report.passed(args.strict))
}

/// A run the history could not keep (locked past the wait, disk full) is
/// written beside it, and said so: a result is never lost silently.
fn keep_aside(report: &RunReport, history: &str, error: &HistoryError) -> anyhow::Result<()> {
    let aside = PathBuf::from(format!("{history}.run-{}.json", report.run_id));
    let json = serde_json::to_string_pretty(report).context("cannot render the report")?;
    std::fs::write(&aside, json).with_context(|| {
        format!(
            "the history could not keep this run ({error}), nor could {} be written",
            aside.display()
        )
    })?;
    eprintln!(
        "the history could not keep this run ({error}); its report is in {}",
        aside.display()
    );
    Ok(())
}

/// The built-in suites and files named, only the cases asked for; and a
/// label for the report.
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
            Err(error) => errors.push(faultlab::error_chain(error.chain())),
        }
        label.push(file.display().to_string());
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    if !only.is_empty() {
        // Case ids are matched whatever their case: --case s2 is S2.
        let wanted = |case: &Scenario| only.iter().any(|id| id.eq_ignore_ascii_case(&case.id));
        let unknown: Vec<&String> = only
            .iter()
            .filter(|id| {
                !scenarios
                    .iter()
                    .any(|case| id.eq_ignore_ascii_case(&case.id))
            })
            .collect();
        if !unknown.is_empty() {
            bail!("no case {unknown:?} among the scenarios given");
        }
        scenarios.retain(wanted);
    }
    Ok((label.join(","), scenarios))
}

/// Every role `--bind` and `--target` name is a role of some case to run.
fn check_roles(scenarios: &[Scenario], args: &RunArgs) -> anyhow::Result<()> {
    let roles: std::collections::BTreeSet<&str> = scenarios
        .iter()
        .flat_map(|case| case.roles.iter().map(String::as_str))
        .collect();
    for (flag, role) in args
        .bind
        .iter()
        .map(|(role, _)| ("--bind", role))
        .chain(args.target.iter().map(|(role, _)| ("--target", role)))
    {
        if !roles.contains(role.as_str()) {
            bail!(
                "{flag} {role}=...: no case to run has a role {role:?}; their roles are {}",
                roles.iter().copied().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(())
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

/// The run on the inventory's agents, or on a local lab made for it (and
/// removed when it ends).
async fn run_on_lab(
    suite: String,
    cases: Vec<Scenario>,
    args: &RunArgs,
    tls: &TlsArgs,
    run_id: String,
) -> anyhow::Result<RunReport> {
    let given = match &args.inventory {
        Some(path) => Some(Inventory::load(path)?),
        None => None,
    };
    let mut targets = chosen_targets(
        given.as_ref().unwrap_or(&Inventory::default()),
        args.targets.as_deref(),
        &args.target,
    )?;
    let (inventory, local, connector) = match given {
        Some(inventory) => {
            let connector = tls.connector(Some(&inventory))?;
            (inventory, None, connector)
        }
        None => {
            let widest = cases.iter().map(|case| case.roles.len()).max().unwrap_or(2);
            let hosts = args.hosts.unwrap_or(widest).max(widest);
            let application = if targets.is_empty() {
                ApplicationHost::None
            } else {
                ApplicationHost::ThisHost
            };
            let grants = AgentGrants {
                process: args.allow_process,
                restart: args.restart.clone(),
                units: Vec::new(),
            };
            let (local, said) = LocalLab::for_run(hosts, application, args.lab, &args.vm, &grants)?;
            eprintln!("{said}");
            // The application runs here: the last agent counts its sockets.
            if let Some(last) = local.inventory.agents.last() {
                for (_, target) in &mut targets {
                    target.agent.get_or_insert_with(|| last.name.clone());
                }
            }
            (local.inventory.clone(), Some(local), Connector::plain())
        }
    };
    let report = play(run_id, suite, cases, &inventory, &connector, targets, args).await;
    drop(local);
    report
}

/// Connect to the agents, place the applications, and run the plan.
async fn play(
    run_id: String,
    suite: String,
    cases: Vec<Scenario>,
    inventory: &Inventory,
    connector: &Connector,
    targets: Vec<(String, Target)>,
    args: &RunArgs,
) -> anyhow::Result<RunReport> {
    let span = engine::run_span(&run_id, &suite);
    if let Some(trace) = faultlab_telemetry::trace_id(&span) {
        eprintln!("run {run_id}: trace {trace}");
    }
    let clock = RunClock::start();
    let agents = AgentHandle::connect_all(connector, inventory, &clock)
        .instrument(span.clone())
        .await?;
    let pinned: BTreeMap<String, String> = args.bind.iter().cloned().collect();
    for (role, agent) in &pinned {
        if !agents.iter().any(|handle| &handle.name == agent) {
            bail!("--bind {role}={agent}: no agent named {agent:?} in the lab");
        }
    }
    let mut placed = BTreeMap::new();
    for (role, target) in targets {
        let handle = TargetHandle::place(target, &agents)?;
        let host = handle.host.as_ref().map_or_else(String::new, |host| {
            format!(", its host's agent {}", host.name)
        });
        eprintln!(
            "role {role}: application {} at {}{host}",
            handle.target.name, handle.address
        );
        placed.insert(role, Arc::new(handle));
    }
    let plan = Plan {
        targets: placed,
        run_id,
        suite,
        cases,
        agents,
        all_bindings: args.all_bindings,
        pinned,
        parallel: args.parallel,
        // What the cases took last time places them best; none known (a
        // first run, an unreadable history): estimated from the scenarios.
        durations: args.history.durations(),
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

/// The plan, one line per set of hosts: the cases it runs, in turn order.
fn plan_lines(placements: &[faultlab::engine::Placement]) -> Vec<String> {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for placement in placements {
        let hosts = placement.hosts.join(", ");
        match groups.iter_mut().find(|(known, _)| *known == hosts) {
            Some((_, cases)) => cases.push(&placement.case.id),
            None => groups.push((hosts, vec![&placement.case.id])),
        }
    }
    groups
        .into_iter()
        .map(|(hosts, cases)| format!("{hosts}: {}", cases.join(" ")))
        .collect()
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
    fn placed(&self, placements: &[faultlab::engine::Placement]) {
        let groups = plan_lines(placements);
        if groups.len() > 1 {
            // Not through the bar: the plan is worth keeping in a CI log.
            eprintln!(
                "plan: {} cases; cases on disjoint hosts run at once, each host takes its turns:",
                placements.len()
            );
            for line in groups {
                eprintln!("  {line}");
            }
        }
    }

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
