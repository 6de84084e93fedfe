//! Labs on this machine, so a run needs no setup and no inventory.
//!
//! As root a lab is made of real hosts: network namespaces on bridges, with
//! addresses in 198.18.0.0/15, an agent in each allowed to isolate its host
//! (`netns`). Otherwise the agents share this machine's loopback, and the
//! cases that need isolation are skipped (`loopback`). Everything stops and
//! is removed on drop; a lab left by a crashed run is swept away by the
//! next. `faultlab lab up` keeps one standing between commands (`state`).
//!
//! - this module: a lab's lifecycle, and which lab a run gets;
//! - `agents`: the agent processes (finding, starting, stopping them);
//! - `ip`: iproute2, which every kind of lab uses;
//! - `loopback`, `netns`, `vm`: one room per kind of lab;
//! - `outside`: what a lab does to a host from outside it (cable, power);
//! - `state`: a lab that outlives the command, and its state directory.

mod agents;
mod ip;
mod loopback;
mod netns;
pub mod outside;
mod state;
pub mod vm;

pub use agents::{AGENT_EXE, AgentGrants, find_agent};
pub use netns::{NETNS_CONTROL_PORT, netns_unavailable};
pub use state::{
    LabStatus, default_state_dir, lab_down, lab_namespace, lab_prefix, lab_shell, lab_status,
    lab_up, other_labs,
};

use crate::inventory::Inventory;
use agents::LocalAgent;
use netns::Network;
use std::path::Path;

/// Why a local lab could not start.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// No agent executable was found.
    #[error(
        "cannot find {AGENT_EXE}: set FAULTLAB_AGENT, put it next to faultlab or on PATH \
         (cargo build --release --workspace builds both)"
    )]
    NoAgent,
    /// The lab's network could not be made.
    #[error("cannot make the lab network: {0}")]
    Network(String),
    /// More hosts than the lab's address plan holds, or none.
    #[error("a lab has 1 to {MAX_HOSTS} hosts (198.18.x.10 to 198.18.x.{last} on each /24); {0} asked", last = 9 + MAX_HOSTS)]
    HostCount(usize),
    /// A `lab up` lab is up already.
    #[error("a lab is up already: {0}; `faultlab lab down` with the same --state removes it first")]
    AlreadyUp(String),
    /// No `lab up` lab is up.
    #[error("no lab is up (no state in {0}): `faultlab lab up` makes one")]
    NotUp(String),
    /// The lab has no such host.
    #[error("the lab has hosts 1 to {hosts}, not {host}")]
    NoSuchHost {
        /// The host asked for.
        host: usize,
        /// How many it has.
        hosts: usize,
    },
    /// A VM lab could not be made.
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    /// An agent did not start.
    #[error("agent {exe} did not start: {reason}")]
    Start {
        /// The executable.
        exe: String,
        /// What went wrong.
        reason: String,
    },
}

/// Agents on this machine, stopped (and their network removed) on drop.
pub struct LocalLab {
    agents: Vec<LocalAgent>,
    network: Option<Network>,
    /// The VMs of a VM lab.
    machines: Option<vm::Machines>,
    /// Their inventory (names `local-1`, `local-2`, ... or `host-1`, ...).
    pub inventory: Inventory,
}

/// The most hosts a lab made here can have: each host takes one address of
/// a /24 per network, from .10 up.
pub const MAX_HOSTS: usize = 240;

/// `count` if a lab can have that many hosts.
pub fn host_count(count: usize) -> Result<usize, LabError> {
    if (1..=MAX_HOSTS).contains(&count) {
        Ok(count)
    } else {
        Err(LabError::HostCount(count))
    }
}

/// Which kind of local lab a run gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LabKind {
    /// Network namespaces as root, else loopback.
    #[default]
    Auto,
    /// QEMU VMs with their own kernels (root, QEMU, a kernel).
    Vm,
}

/// Where the application under test of a run without an inventory runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplicationHost {
    /// No application plays a role.
    None,
    /// On this very host: the agents must be here too.
    ThisHost,
}

impl LocalLab {
    /// Start `count` agents from `exe` on 127.0.0.1 with free ports.
    pub fn start(exe: &Path, count: usize) -> Result<Self, LabError> {
        loopback::start(exe, count, None, &AgentGrants::default())
    }

    /// [`Self::start`] with agents granted more.
    pub fn start_with(exe: &Path, count: usize, grants: &AgentGrants) -> Result<Self, LabError> {
        loopback::start(exe, count, None, grants)
    }

    /// Start `count` hosts as network namespaces, each with an agent allowed
    /// to isolate it (needs root, `ip` and `nft`); removed on drop.
    pub fn start_netns(exe: &Path, count: usize) -> Result<Self, LabError> {
        Self::start_netns_with(exe, count, &AgentGrants::default())
    }

    /// [`Self::start_netns`] with agents granted more.
    pub fn start_netns_with(
        exe: &Path,
        count: usize,
        grants: &AgentGrants,
    ) -> Result<Self, LabError> {
        netns::start(exe, count, netns::run_prefix(), None, grants)
    }

    /// Start `count` VMs (needs root, QEMU and a kernel) whose agents are
    /// granted `grants`; removed on drop.
    pub fn start_vm(
        exe: &Path,
        count: usize,
        options: &vm::VmOptions,
        grants: &AgentGrants,
    ) -> Result<Self, LabError> {
        let dir = default_state_dir().join(vm::run_prefix());
        vm::start(exe, count, vm::run_prefix(), &dir, true, options, grants)
    }

    /// The lab a run without an inventory gets, for `hosts` roles, its
    /// agents granted `grants`, and a line that says which and why: the
    /// agents on loopback when the application runs on this host; else
    /// network-namespace hosts where they can be made; else loopback, where
    /// cases that cut hosts off are skipped.
    pub fn for_run(
        hosts: usize,
        application: ApplicationHost,
        kind: LabKind,
        vm_options: &vm::VmOptions,
        grants: &AgentGrants,
    ) -> Result<(Self, String), LabError> {
        let exe = find_agent().ok_or(LabError::NoAgent)?;
        let hosts = hosts.max(2);
        if kind == LabKind::Vm {
            let lab = Self::start_vm(&exe, hosts, vm_options, grants)?;
            let said = format!(
                "local lab: {} QEMU VMs with their own kernels on {}",
                lab.inventory.agents.len(),
                lab.subnet().unwrap_or_default()
            );
            return Ok((lab, said));
        }
        if application == ApplicationHost::ThisHost {
            let lab = Self::start_with(&exe, hosts, grants)?;
            let said = format!(
                "local lab: {} agents on loopback, on the application's host (the last one counts its sockets)",
                lab.inventory.agents.len()
            );
            return Ok((lab, said));
        }
        match netns_unavailable() {
            None => {
                let lab = Self::start_netns_with(&exe, hosts, grants)?;
                let said = format!(
                    "local lab: {} network-namespace hosts on {} ({})",
                    lab.inventory.agents.len(),
                    lab.subnet().unwrap_or_default(),
                    exe.display()
                );
                Ok((lab, said))
            }
            Some(why) => {
                let lab = Self::start_with(&exe, hosts, grants)?;
                let said = format!(
                    "local lab: {} agents on loopback ({why}: cases that cut hosts off are skipped; run as root for a lab of network namespaces)",
                    lab.inventory.agents.len()
                );
                Ok((lab, said))
            }
        }
    }

    /// The network namespace of host `index` (0-based), when the lab is made of them.
    pub fn namespace(&self, index: usize) -> Option<String> {
        self.network
            .as_ref()
            .filter(|network| index < network.hosts)
            .map(|network| network.namespace(index))
    }

    /// The test network's bridge, when the lab is made of namespaces
    /// (where an independent capture can listen).
    pub fn bridge(&self) -> Option<String> {
        self.network.as_ref().map(Network::test_bridge)
    }

    /// The lab's networks, when it is made of namespaces.
    pub fn subnet(&self) -> Option<String> {
        self.network.as_ref().map(Network::subnets)
    }

    /// Process ids of the agents (of the VMs, on a VM lab), in inventory order.
    pub fn pids(&self) -> Vec<u32> {
        match &self.machines {
            Some(machines) => machines.pids(),
            None => self.agents.iter().map(|agent| agent.child.id()).collect(),
        }
    }
}

/// Every process's id and command-line words.
pub(crate) fn processes() -> Vec<(u32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let words = cmdline
                .split(|byte| *byte == 0)
                .map(|word| String::from_utf8_lossy(word).into_owned())
                .collect();
            Some((pid, words))
        })
        .collect()
}

impl Drop for LocalLab {
    fn drop(&mut self) {
        agents::stop_all(&mut self.agents);
        if let Some(machines) = &mut self.machines {
            machines.stop();
        }
        if let Some(network) = &self.network {
            network.remove();
        }
    }
}
