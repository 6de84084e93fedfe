//! `faultlab heal --all`: plug back every cable and switch on every host
//! their lab took (an inventory's local-lab hosts), and have every agent
//! undo everything it made (its Reset: isolations, links, degradations,
//! holders with their connections and floods). Each line says what was
//! undone and what was not; the exit code is non-zero unless everything was.

use super::{AgentsGiven, TlsArgs, say};
use faultlab::inventory::Inventory;
use faultlab::lab::outside::OutsideFault;
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
    let mut all_healed = true;
    if let Some(path) = &args.given.inventory {
        for agent in Inventory::load(path)?.agents {
            let Some(lab) = agent.lab else {
                continue;
            };
            for fault in [OutsideFault::Cable, OutsideFault::Power] {
                if !lab.can(fault) {
                    continue;
                }
                let lab = lab.clone();
                match tokio::task::spawn_blocking(move || lab.undo(fault)).await? {
                    Ok(how) => say!("{:<14} lab: {how}", agent.name),
                    Err(error) => {
                        all_healed = false;
                        say!("{:<14} lab: NOT HEALED: {error}", agent.name);
                    }
                }
            }
        }
    }
    let (entries, connector) = args.given.entries(tls)?;
    for (name, address) in entries {
        match connector.reset(&address).await {
            Ok(undone) if undone.not_undone.is_empty() => {
                say!(
                    "{name:<14} {address:<22} healed: {}",
                    undone_summary(&undone)
                );
            }
            Ok(undone) => {
                all_healed = false;
                say!(
                    "{name:<14} {address:<22} NOT HEALED: {}; still in place: {}",
                    undone_summary(&undone),
                    undone.not_undone.join("; ")
                );
            }
            Err(error) => {
                all_healed = false;
                say!("{name:<14} {address:<22} NOT HEALED: {error:#}");
            }
        }
    }
    Ok(all_healed)
}

/// What an agent's Reset undid, in a few words.
fn undone_summary(undone: &faultlab_proto::v1::ResetReply) -> String {
    let mut said = format!(
        "{} isolation(s), {} link(s), {} degradation(s), {} holder(s)",
        undone.isolations_lifted,
        undone.links_up,
        undone.degradations_healed,
        undone.holders_killed
    );
    if !undone.unbooked.is_empty() {
        said.push_str(&format!(
            ", and entries no isolation accounted for: {}",
            undone.unbooked.join(", ")
        ));
    }
    said
}
