//! `faultlab check`: validate scenario files without running them.

use super::say;
use anyhow::Context as _;
use faultlab::scenario::{self, Scenario};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The files.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Scenario files.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// Say "ok" or every error of each file; whether all are good. A file that
/// cannot be read is not a bad scenario but a bad argument: exit 2.
pub fn check(args: &CheckArgs) -> anyhow::Result<bool> {
    let mut good = true;
    let unreadable: Vec<String> = args
        .files
        .iter()
        .filter(|file| std::fs::metadata(file).is_err())
        .map(|file| file.display().to_string())
        .collect();
    if !unreadable.is_empty() {
        anyhow::bail!("cannot read {}", unreadable.join(", "));
    }
    for file in &args.files {
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
                eprintln!("{}", faultlab::error_chain(error.chain()));
            }
        }
    }
    Ok(good)
}

/// Read and parse one scenario file.
pub fn read_scenario(file: &Path) -> anyhow::Result<Scenario> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(scenario::parse(&file.display().to_string(), &text)?)
}
