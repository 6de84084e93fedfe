//! A lab that outlives the command (`faultlab lab up`, `down`, `status`,
//! `exec`): its hosts stay up, and its state directory holds what the next
//! command needs to find them (inventory, agent pids, logs).

use super::agents::AgentGrants;
use super::netns::{self, LAB_PREFIX, ip, netns_unavailable, remove_network};
use super::{LabError, LabKind, loopback, vm};
use crate::inventory::Inventory;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where `faultlab lab up` keeps its state (inventory, agent pids, logs):
/// `/run/faultlab-lab` as root, else `$XDG_RUNTIME_DIR/faultlab-lab` (or the
/// temporary directory).
pub fn default_state_dir() -> PathBuf {
    if netns_unavailable().is_none() {
        return PathBuf::from("/run/faultlab-lab");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join("faultlab-lab")
}
const INVENTORY_FILE: &str = "inventory.toml";
const PIDS_FILE: &str = "agents.pids";

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Make a lab of `hosts` hosts that outlives this process: VMs for
/// [`LabKind::Vm`], else network namespaces (loopback agents without
/// root); returns the path of its inventory. A lab that is up is left
/// alone (an error says so); whatever a crashed one left is removed first.
pub fn lab_up(
    exe: &Path,
    hosts: usize,
    state: &Path,
    grants: &AgentGrants,
    kind: LabKind,
    vm_options: &vm::VmOptions,
) -> Result<PathBuf, LabError> {
    if let Some(running) = running_lab(state) {
        return Err(LabError::AlreadyUp(running));
    }
    lab_down(state)?;
    let failed = |what: &str, error: std::io::Error| {
        LabError::Network(format!("{what} {}: {error}", state.display()))
    };
    std::fs::create_dir_all(state).map_err(|error| failed("cannot create", error))?;
    let mut lab = if kind == LabKind::Vm {
        let prefix = LAB_PREFIX.to_owned();
        vm::start(exe, hosts, prefix, state, false, vm_options, grants)?
    } else if netns_unavailable().is_none() {
        netns::start(exe, hosts, LAB_PREFIX.to_owned(), Some(state), grants)?
    } else {
        loopback::start(exe, hosts, Some(state), grants)?
    };
    let inventory = state.join(INVENTORY_FILE);
    let text = lab
        .inventory
        .agents_toml("Written by `faultlab lab up`; removed by `faultlab lab down`.")
        .map_err(|error| LabError::Network(format!("cannot write the inventory: {error}")))?;
    std::fs::write(&inventory, text).map_err(|error| failed("cannot write to", error))?;
    let pids: Vec<String> = lab.pids().iter().map(u32::to_string).collect();
    std::fs::write(state.join(PIDS_FILE), pids.join("\n"))
        .map_err(|error| failed("cannot write to", error))?;
    // Detach: the agents, the VMs and the network stay when `lab` is dropped.
    lab.agents.clear();
    if let Some(machines) = &mut lab.machines {
        machines.detach();
    }
    lab.network = None;
    Ok(inventory)
}

/// What shows a `lab up` lab is up, if one is: its processes (from this
/// state directory), or its bridge with a VM or a host namespace's process
/// still on it (a lab made with another `--state`). A bridge with nothing
/// alive is what a crash left, not a lab.
fn running_lab(state: &Path) -> Option<String> {
    let alive_pids: Vec<String> = std::fs::read_to_string(state.join(PIDS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .filter(|&pid| alive(pid))
        .map(|pid: u32| pid.to_string())
        .collect();
    if !alive_pids.is_empty() {
        return Some(format!(
            "its processes {} run (state in {})",
            alive_pids.join(", "),
            state.display()
        ));
    }
    let bridge = format!("{LAB_PREFIX}mb");
    if !Path::new("/sys/class/net").join(&bridge).exists() {
        return None;
    }
    let namespaces = ip(&["netns", "list"]).unwrap_or_default();
    let host_busy = namespaces
        .split_whitespace()
        .filter(|name| name.starts_with(&format!("{LAB_PREFIX}h")))
        .any(|name| {
            !ip(&["netns", "pids", name])
                .unwrap_or_default()
                .trim()
                .is_empty()
        });
    (host_busy || vm::lab_machines_running(LAB_PREFIX))
        .then(|| format!("bridge {bridge} has live hosts on it (a lab made with another --state)"))
}

/// Stop the lab's agents (SIGTERM, so they reset their holders and lift
/// their isolations; SIGKILL after 3 s) and remove every namespace and bridge
/// of a `lab up` lab, also what a crashed one left. Returns what it removed.
pub fn lab_down(state: &Path) -> Result<Vec<String>, LabError> {
    let mut removed = Vec::new();
    super::outside::watchdog::disarm_lab(&[format!("{LAB_PREFIX}t"), state.display().to_string()]);
    let pids: Vec<u32> = std::fs::read_to_string(state.join(PIDS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    // A VM lab's pids are its keepers (each with its QEMU).
    let (keepers, pids): (Vec<u32>, Vec<u32>) = pids
        .into_iter()
        .filter(|&pid| alive(pid))
        .partition(|&pid| vm::is_keeper(pid));
    if !keepers.is_empty() {
        vm::stop_groups(&keepers);
        removed.push(format!("{} VMs", keepers.len()));
    }
    for pid in &pids {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        removed.push(format!("agent {pid}"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|&pid| alive(pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in pids.iter().copied().filter(|&pid| alive(pid)) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let namespaces = ip(&["netns", "list"]).unwrap_or_default();
    let hosts = namespaces
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| name.strip_prefix(&format!("{LAB_PREFIX}h")))
        .filter_map(|index| index.parse::<usize>().ok())
        .map(|index| index + 1)
        .max()
        .unwrap_or(0);
    if hosts > 0 {
        removed.push(format!("{hosts} namespaces"));
    }
    remove_network(LAB_PREFIX, hosts);
    for file in [INVENTORY_FILE, PIDS_FILE] {
        let _ = std::fs::remove_file(state.join(file));
    }
    Ok(removed)
}

/// A `lab up` lab as its state files describe it.
pub struct LabStatus {
    /// Where its inventory is.
    pub inventory_path: PathBuf,
    /// Its agents.
    pub inventory: Inventory,
    /// Each agent process and whether it runs.
    pub pids: Vec<(u32, bool)>,
}

/// The lab's state; `None` when no lab is up.
pub fn lab_status(state: &Path) -> Option<LabStatus> {
    let path = state.join(INVENTORY_FILE);
    let inventory = Inventory::load(&path).ok()?;
    let pids = std::fs::read_to_string(state.join(PIDS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .map(|pid| (pid, alive(pid)))
        .collect();
    Some(LabStatus {
        inventory_path: path,
        inventory,
        pids,
    })
}

/// The root shell socket of host `host` (1-based) of a `lab up` lab, if it
/// is a VM.
pub fn lab_shell(state: &Path, host: usize) -> Result<Option<PathBuf>, LabError> {
    let status = lab_status(state).ok_or_else(|| LabError::NotUp(state.display().to_string()))?;
    let hosts = status.inventory.agents.len();
    let entry = host
        .checked_sub(1)
        .and_then(|index| status.inventory.agents.get(index))
        .ok_or(LabError::NoSuchHost { host, hosts })?;
    Ok(entry.lab.as_ref().and_then(|side| side.shell.clone()))
}

/// The network namespace of host `host` (1-based) of a `lab up` lab, or
/// `None` for a loopback lab (its agents run on this host itself).
pub fn lab_namespace(state: &Path, host: usize) -> Result<Option<String>, LabError> {
    let status = lab_status(state).ok_or_else(|| LabError::NotUp(state.display().to_string()))?;
    let hosts = status.inventory.agents.len();
    if host == 0 || host > hosts {
        return Err(LabError::NoSuchHost { host, hosts });
    }
    let namespace = format!("{LAB_PREFIX}h{}", host - 1);
    let exists = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .any(|name| name == namespace)
        });
    Ok(exists.then_some(namespace))
}
