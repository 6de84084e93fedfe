//! `faultlab heal --all`: plug back every cable and switch on every host
//! their lab took (an inventory's local-lab hosts), and have every agent
//! undo everything it made (its Reset: isolations, links, degradations,
//! holders with their connections and floods). Each line says what was
//! undone and what was not; the exit code is non-zero unless everything was.

use super::{AgentsGiven, TlsArgs, say};
use faultlab::agents::Connector;
use faultlab::inventory::{AgentEntry, Inventory};
use faultlab::lab::outside::{OutsideFault, POWER_WAS_ON};
use std::io::Write;
use std::time::Duration;

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
    let mut plugged = Vec::new();
    if let Some(path) = &args.given.inventory {
        for agent in Inventory::load(path)?.agents {
            let Some(lab) = agent.lab.clone() else {
                continue;
            };
            let mut powered_on = false;
            for fault in [OutsideFault::Power, OutsideFault::Cable] {
                if !lab.can(fault) {
                    continue;
                }
                let lab = lab.clone();
                match tokio::task::spawn_blocking(move || lab.undo(fault)).await? {
                    Ok(how) => {
                        say!("{:<14} lab: {how}", agent.name);
                        powered_on |= fault == OutsideFault::Power && how != POWER_WAS_ON;
                        if fault == OutsideFault::Cable {
                            plugged.push((agent.clone(), powered_on));
                        }
                    }
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
                say!(
                    "{name:<14} {address:<22} NOT HEALED: {}",
                    faultlab::error_chain(faultlab::causes_of(&error))
                );
            }
        }
    }
    // Once the agents undid their own faults (a link of their own down
    // hides a carrier): each cable the lab plugged back, seen from its host.
    for (agent, powered_on) in plugged {
        match cable_confirmed(&agent, &connector, powered_on).await {
            Ok(said) => say!("{:<14} lab: cable confirmed back: {said}", agent.name),
            Err(why) => {
                all_healed = false;
                say!("{:<14} lab: NOT HEALED: the cable is {why}", agent.name);
            }
        }
    }
    Ok(all_healed)
}

/// How long a host switched back on may take to boot and answer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a running host's kernel may take to see a carrier again.
const CARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the host of `agent` sees the carrier of its test interface (on
/// a host just switched on, once its agent answers).
async fn cable_confirmed(
    agent: &AgentEntry,
    connector: &Connector,
    powered_on: bool,
) -> Result<String, String> {
    let within = if powered_on {
        BOOT_TIMEOUT
    } else {
        CARRIER_TIMEOUT
    };
    let started = tokio::time::Instant::now();
    let client = loop {
        match connector.connect(&agent.address).await {
            Ok(client) => break client,
            Err(error) if started.elapsed() >= within => {
                return Err(format!("not confirmed: {error}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let test_ip = agent
        .test_ip
        .or_else(|| {
            agent
                .address
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|at| at.ip())
        })
        .ok_or_else(|| format!("not confirmed: no test address for {}", agent.address))?;
    let left = within
        .saturating_sub(started.elapsed())
        .max(CARRIER_TIMEOUT);
    let state = faultlab::agents::carrier_back(&client, test_ip, left).await?;
    Ok(format!(
        "its kernel sees a carrier on {} (operstate {})",
        state.interface, state.operstate
    ))
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
