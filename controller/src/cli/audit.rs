//! `faultlab audit`: the last entries of each agent's audit trail: who
//! changed what on its host (allowed or denied), with which capability,
//! which fault and deadline, and what came of it.

use super::{AgentsGiven, TlsArgs, say, say_unreachable};
use faultlab_proto::v1 as pb;
use std::io::Write;

/// Which agents, and how many entries of each.
#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    given: AgentsGiven,
    /// The newest entries of each agent (it keeps 512).
    #[arg(long, default_value_t = 20)]
    last: u32,
}

const HEADINGS: [&str; 8] = [
    "AGENT",
    "AT (UTC)",
    "CALLER",
    "RPC",
    "CAPABILITY",
    "FAULT",
    "DEADLINE",
    "RESULT",
];

/// Print each agent's entries, oldest first, in columns as wide as their
/// widest cell; whether every agent answered.
pub async fn audit(args: AuditArgs, tls: &TlsArgs) -> anyhow::Result<bool> {
    let (entries, connector) = args.given.entries(tls)?;
    let mut rows = vec![HEADINGS.map(str::to_owned)];
    let mut unreachable = Vec::new();
    for (name, address) in entries {
        match connector.audit_trail(&address, args.last).await {
            Ok(trail) => rows.extend(trail.into_iter().map(|entry| row(&name, entry))),
            Err(error) => unreachable.push((name, error)),
        }
    }
    let widths: Vec<usize> = (0..HEADINGS.len())
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        say!("{}", line.trim_end());
    }
    for (name, error) in &unreachable {
        say_unreachable(name, error)?;
    }
    Ok(unreachable.is_empty())
}

/// One entry's cells.
fn row(agent: &str, entry: pb::AuditEntry) -> [String; 8] {
    let or_dash = |text: String| {
        if text.is_empty() {
            "-".to_owned()
        } else {
            text
        }
    };
    [
        agent.to_owned(),
        faultlab::report::html::utc(entry.at_unix_ns / 1_000_000),
        entry.caller,
        entry.rpc,
        or_dash(entry.capability),
        or_dash(entry.fault),
        match entry.deadline_ms {
            0 => "-".to_owned(),
            ms => format!("{ms} ms"),
        },
        entry.result,
    ]
}
