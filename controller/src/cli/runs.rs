//! `faultlab runs`: the history of runs (list, show, diff).

use super::{Format, HistoryArgs, print_report, say};
use clap::Subcommand;
use faultlab::history::{History, RunState};
use faultlab::report::terminal::WireView;
use std::io::Write;

/// What to show of the history.
#[derive(clap::Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    action: Option<RunsAction>,
    #[command(flatten)]
    history: HistoryArgs,
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
        /// In the table, list each case's captured TCP segments (a long
        /// capture summarised; `--wire=all` for every segment).
        #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "summary", default_value = "hidden")]
        wire: WireView,
    },
    /// The cases whose outcome changed between two runs (exit 1 when any
    /// did): verdicts, outcomes, errnos, which role's host sent a FIN or RST.
    /// Addresses, ports, byte counts and times are left out.
    Diff {
        /// The earlier run.
        a: String,
        /// The later run.
        b: String,
    },
}

/// List, show or compare stored runs; a diff that finds a change is not a
/// success (exit 1), so a script can ask "did anything change?".
pub fn runs(args: RunsArgs) -> anyhow::Result<bool> {
    let history = args.history.open()?;
    match args.action.unwrap_or(RunsAction::List { limit: 20 }) {
        RunsAction::List { limit } => list(&history, limit)?,
        RunsAction::Show { run, format, wire } => print_report(&history.get(&run)?, format, wire)?,
        RunsAction::Diff { a, b } => {
            let changes = history.diff(&a, &b)?;
            if changes.is_empty() {
                say!("no case changed between {a} and {b}");
                return Ok(true);
            }
            for change in changes {
                say!(
                    "{}\n  {a}: {}\n  {b}: {}",
                    change.case,
                    change.before,
                    change.after
                );
            }
            return Ok(false);
        }
    }
    Ok(true)
}

fn list(history: &History, limit: usize) -> anyhow::Result<()> {
    let rows = history.list(limit)?;
    // Columns as wide as their longest value: a suite of several files is long.
    let width = |header: &str, values: &mut dyn Iterator<Item = usize>| {
        values.max().unwrap_or(0).max(header.len())
    };
    let suite = width(
        "SUITE",
        &mut rows.iter().map(|row| row.suite.chars().count()),
    );
    let pairs = width(
        "OS PAIRS",
        &mut rows.iter().map(|row| row.os_pairs.chars().count()),
    );
    say!(
        "{:>4}  {:<20} {:<suite$} {:<pairs$} {:>5} {:>8} {:>6} {:>7}  TRACE",
        "RUN",
        "ID",
        "SUITE",
        "OS PAIRS",
        "CASES",
        "EXPECTED",
        "FAILED",
        "SKIPPED"
    );
    for row in rows {
        if row.state != RunState::Finished {
            // No results yet, or none to come: say what became of it.
            say!(
                "{:>4}  {:<20} {:<suite$} {}{}",
                row.number,
                row.run_id,
                row.suite,
                row.state.as_str().to_uppercase(),
                row.note
                    .as_deref()
                    .map_or_else(String::new, |note| format!(": {note}"))
            );
            continue;
        }
        say!(
            "{:>4}  {:<20} {:<suite$} {:<pairs$} {:>5} {:>8} {:>6} {:>7}  {}",
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
    Ok(())
}
