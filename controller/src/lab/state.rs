//! A lab that outlives the command (`faultlab lab up`, `down`, `status`,
//! `exec`): its hosts stay up, and its state directory holds what the next
//! command needs to find them (inventory, agent pids, logs).
//!
//! Each state directory is a lab of its own: its namespaces, links and VMs
//! are named after a prefix that comes from the directory
//! ([`lab_prefix`]), its /24s are whichever are free, and its agents are
//! the processes it started. Two labs (two people, two CI jobs) run side
//! by side, and `lab down` of one never touches the other.

use super::agents::{AgentGrants, alive, stop_pids};
use super::ip::ip;
use super::netns::{self, LAB_PREFIX, netns_unavailable, remove_network};
use super::{LabError, LabKind, loopback, vm};
use crate::inventory::Inventory;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// The names of the lab kept in `state` start with this: `fll` for the
/// default state directory, else `fll` and five digits from the
/// directory's absolute path (digits, so no name of one lab is read as a
/// host of another: `fllh0` is host 0 of the default lab, `fll40213h0` of
/// another). Interface names stay within Linux's 15 characters
/// (`fll40213t239`).
pub fn lab_prefix(state: &Path) -> String {
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let state = absolute(state);
    if state == absolute(&default_state_dir()) {
        return LAB_PREFIX.to_owned();
    }
    // FNV-1a: the same path gives the same name in every build.
    let hash = state
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{LAB_PREFIX}{:05}", hash % 100_000)
}

const INVENTORY_FILE: &str = "inventory.toml";
const PIDS_FILE: &str = "agents.pids";

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
    let prefix = lab_prefix(state);
    let mut lab = if kind == LabKind::Vm {
        vm::start(exe, hosts, prefix.clone(), state, false, vm_options, grants)?
    } else if netns_unavailable().is_none() {
        netns::start(exe, hosts, prefix.clone(), Some(state), grants)?
    } else {
        loopback::start(exe, hosts, Some(state), grants)?
    };
    if lab.network.is_some() {
        // The lab's bridge says which state directory holds it, for
        // `lab status` of another.
        let absolute = std::path::absolute(state).unwrap_or_else(|_| state.to_owned());
        ip(&[
            "link",
            "set",
            &format!("{prefix}mb"),
            "alias",
            &absolute.display().to_string(),
        ])?;
    }
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

/// What shows the lab of `state` is up, if it is: its processes, or its
/// bridge with a VM or a host namespace's process still on it (a lab of
/// another state directory whose name is the same: five digits of a path
/// can meet). A bridge with nothing alive is what a crash left, not a lab.
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
    let prefix = lab_prefix(state);
    let bridge = format!("{prefix}mb");
    if !Path::new("/sys/class/net").join(&bridge).exists() {
        return None;
    }
    let namespaces = ip(&["netns", "list"]).unwrap_or_default();
    let host_busy = namespaces
        .split_whitespace()
        .filter(|name| name.starts_with(&format!("{prefix}h")))
        .any(|name| {
            !ip(&["netns", "pids", name])
                .unwrap_or_default()
                .trim()
                .is_empty()
        });
    (host_busy || vm::lab_machines_running(&prefix)).then(|| {
        format!(
            "bridge {bridge} has live hosts on it, of the lab in {} (its names are this one's: choose another --state)",
            bridge_alias(&bridge).unwrap_or_else(|| "another state directory".to_owned())
        )
    })
}

/// What a lab's bridge says of its state directory.
fn bridge_alias(bridge: &str) -> Option<String> {
    let alias =
        std::fs::read_to_string(Path::new("/sys/class/net").join(bridge).join("ifalias")).ok()?;
    let alias = alias.trim();
    (!alias.is_empty()).then(|| alias.to_owned())
}

/// The `lab up` labs of this machine other than the one in `state`: each
/// one's state directory (as its bridge says) and name prefix.
pub fn other_labs(state: &Path) -> Vec<(String, String)> {
    let ours = format!("{}mb", lab_prefix(state));
    let Ok(links) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut labs: Vec<(String, String)> = links
        .filter_map(Result::ok)
        .filter_map(|link| link.file_name().into_string().ok())
        .filter(|name| name != &ours)
        .filter_map(|name| {
            let prefix = name.strip_suffix("mb")?.to_owned();
            let digits = prefix.strip_prefix(LAB_PREFIX)?;
            digits.chars().all(|c| c.is_ascii_digit()).then_some(())?;
            let state = bridge_alias(&name).unwrap_or_else(|| "(state unknown)".to_owned());
            Some((state, prefix))
        })
        .collect();
    labs.sort();
    labs
}

/// Stop the lab's agents (SIGTERM, so they reset their holders and lift
/// their isolations; SIGKILL after 3 s) and remove every namespace and bridge
/// of a `lab up` lab, also what a crashed one left. The agents are those
/// its state directory names and any process still in its namespaces, and
/// its VMs those its names say (the state files may be lost: a namespace
/// deleted under a live agent leaves that agent running with no network).
/// Returns what it removed.
pub fn lab_down(state: &Path) -> Result<Vec<String>, LabError> {
    let mut removed = Vec::new();
    let prefix = lab_prefix(state);
    super::outside::watchdog::disarm_lab(&[format!("{prefix}t"), state.display().to_string()]);
    let mut pids: Vec<u32> = std::fs::read_to_string(state.join(PIDS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    let namespaces: Vec<String> = ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            name.strip_prefix(&format!("{prefix}h"))
                .is_some_and(|index| index.parse::<usize>().is_ok())
        })
        .map(str::to_owned)
        .collect();
    for namespace in &namespaces {
        pids.extend(
            ip(&["netns", "pids", namespace])
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|pid| pid.parse::<u32>().ok()),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    // A VM lab's pids are its keepers (each with its QEMU).
    let (mut keepers, pids): (Vec<u32>, Vec<u32>) = pids
        .into_iter()
        .filter(|&pid| alive(pid))
        .partition(|&pid| vm::is_keeper(pid));
    keepers.extend(vm::lab_keepers(&prefix));
    keepers.sort_unstable();
    keepers.dedup();
    if !keepers.is_empty() {
        vm::stop_groups(&keepers);
        removed.push(format!("{} VMs", keepers.len()));
    }
    stop_pids(&pids);
    removed.extend(pids.iter().map(|pid| format!("agent {pid}")));
    let hosts = namespaces
        .iter()
        .filter_map(|name| name.strip_prefix(&format!("{prefix}h")))
        .filter_map(|index| index.parse::<usize>().ok())
        .map(|index| index + 1)
        .max()
        .unwrap_or(0);
    if hosts > 0 {
        removed.push(format!("{hosts} namespaces"));
    }
    remove_network(&prefix, hosts);
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
    /// What its namespaces, links and VMs are named after.
    pub prefix: String,
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
        prefix: lab_prefix(state),
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
    let namespace = format!("{}h{}", lab_prefix(state), host - 1);
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
