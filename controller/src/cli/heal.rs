//! `faultlab heal --all`: lift every isolation on the agents.

use super::{AgentsGiven, TlsArgs, say};
use std::io::Write;

/// Which agents.
#[derive(clap::Args)]
pub struct HealArgs {
    /// Heal everything (required: there is no partial form yet).
    #[arg(long, required = true)]
    all: bool,
    #[command(flatten)]
    given: AgentsGiven,
}

/// Print a line per agent; whether every agent healed.
pub async fn heal(args: HealArgs, tls: &TlsArgs) -> anyhow::Result<bool> {
    let (entries, connector) = args.given.entries(tls)?;
    let mut all_healed = true;
    for (name, address) in entries {
        match connector.heal_all(&address).await {
            Ok(count) => say!("{name:<14} {address:<22} healed {count} isolation(s)"),
            Err(error) => {
                all_healed = false;
                say!("{name:<14} {address:<22} NOT HEALED: {error:#}");
            }
        }
    }
    Ok(all_healed)
}
