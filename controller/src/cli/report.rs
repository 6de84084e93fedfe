//! `faultlab report`: a stored run as HTML or Markdown.

use super::{HistoryArgs, TraceUrlArgs, say, write_html};
use std::io::Write;
use std::path::PathBuf;

/// Which run, and what to make of it (HTML, Markdown, or both).
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("output").required(true).multiple(true).args(["html", "markdown"])))]
pub struct ReportArgs {
    /// Run number or id (see `faultlab runs`).
    run: String,
    /// Write the HTML report here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Print Markdown on stdout.
    #[arg(long)]
    markdown: bool,
    #[command(flatten)]
    history: HistoryArgs,
    #[command(flatten)]
    trace_url: TraceUrlArgs,
}

/// Write the HTML, print the Markdown.
pub fn report(args: &ReportArgs) -> anyhow::Result<bool> {
    let mut report = args.history.open()?.get(&args.run)?;
    args.trace_url.link(&mut report);
    if let Some(path) = &args.html {
        write_html(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    if args.markdown {
        say!("{}", faultlab::report::html::markdown(&report));
    }
    Ok(true)
}
