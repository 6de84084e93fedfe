//! `faultlab agents`: each agent's host, OS, kernel, boot id and health,
//! and what *you* may do there (its access rules decide by your certificate).

use super::{AgentsGiven, TlsArgs, say};
use std::io::Write;

/// Which agents.
#[derive(clap::Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    given: AgentsGiven,
}

impl AgentsArgs {
    /// The agents of an inventory file.
    pub fn of_inventory(path: std::path::PathBuf) -> Self {
        Self {
            given: AgentsGiven {
                addresses: Vec::new(),
                inventory: Some(path),
            },
        }
    }
}

/// Print a line per agent; whether every agent answered.
pub async fn agents(args: AgentsArgs, tls: &TlsArgs) -> anyhow::Result<bool> {
    let (entries, connector) = args.given.entries(tls)?;
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
            Ok(info) => {
                say!(
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
                );
                // What it may not offer, and why (e.g. no sch_netem).
                for why in info.unavailable.iter().filter(|why| {
                    !info
                        .denied
                        .iter()
                        .any(|denied| why.starts_with(&format!("{denied}: ")))
                }) {
                    say!("{:<14} not offered: {why}", "");
                }
                // What its access rules keep from us: CAPABILITIES above is
                // what we may use.
                if !info.denied.is_empty() {
                    say!(
                        "{:<14} not for you ({}), by its access rules: {}",
                        "",
                        info.caller,
                        info.denied.join(",")
                    );
                }
            }
            Err(error) => {
                unreachable += 1;
                say!("{name:<14} {address:<22} {:<8} {error}", "down");
            }
        }
    }
    Ok(unreachable == 0)
}
