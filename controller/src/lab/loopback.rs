//! The loopback lab: agents on this machine's 127.0.0.1, with free ports.
//! Needs nothing, and cannot cut hosts off: cases that need isolation are
//! skipped on it.

use super::agents::{AgentGrants, detach, start_agent};
use super::{LabError, LocalLab};
use crate::inventory::{AgentEntry, Inventory};
use std::path::Path;
use std::process::Command;

/// Start `count` loopback agents; with `logs`, detached (own process group,
/// stderr to a log file there) so that they can outlive this process.
pub(super) fn start(
    exe: &Path,
    count: usize,
    logs: Option<&Path>,
    grants: &AgentGrants,
) -> Result<LocalLab, LabError> {
    let mut lab = LocalLab {
        agents: Vec::new(),
        network: None,
        machines: None,
        inventory: Inventory::default(),
    };
    for index in 1..=count {
        let mut command = Command::new(exe);
        command.args(["--listen", "127.0.0.1:0"]);
        command.args(grants.arguments(Vec::new()));
        if let Some(logs) = logs {
            detach(&mut command, &logs.join(format!("local-{index}.log")))?;
        }
        let (agent, address) = start_agent(exe, command, None)?;
        lab.agents.push(agent);
        lab.inventory.agents.push(AgentEntry {
            name: format!("local-{index}"),
            address,
            test_ip: None,
            lab: None,
        });
    }
    Ok(lab)
}
