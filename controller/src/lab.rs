//! The local default lab, so a run needs no setup and no inventory.
//!
//! As root it is made of real hosts: network namespaces on a bridge, with
//! addresses in 198.18.0.0/15, an agent in each allowed to isolate its host.
//! Otherwise the agents share this machine's loopback, and the cases that
//! need isolation are skipped. Everything stops and is removed on drop; a lab
//! left by a crashed run is swept away by the next one.

use crate::inventory::{AgentEntry, Inventory};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long an agent may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The agent executable's file name.
pub const AGENT_EXE: &str = if cfg!(windows) {
    "faultlab-agent.exe"
} else {
    "faultlab-agent"
};

/// Why the local lab could not start.
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
    /// An agent did not start.
    #[error("agent {exe} did not start: {reason}")]
    Start {
        /// The executable.
        exe: String,
        /// What went wrong.
        reason: String,
    },
}

/// Where the agent executable is: `$FAULTLAB_AGENT`, next to this
/// executable (or one directory up, for test binaries in `deps/`), or on PATH.
pub fn find_agent() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FAULTLAB_AGENT") {
        return Some(PathBuf::from(path));
    }
    let here = std::env::current_exe().ok()?;
    let beside = here.parent().map(|dir| dir.join(AGENT_EXE));
    let above = here
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(AGENT_EXE));
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(AGENT_EXE))
            .find(|candidate| candidate.is_file())
    });
    beside
        .into_iter()
        .chain(above)
        .find(|candidate| candidate.is_file())
        .or(on_path)
}

/// A running agent process of the lab.
struct LocalAgent {
    child: Child,
    _stdout: ChildStdout,
}

/// Namespaces and a bridge made for a lab, removed on drop.
struct Network {
    prefix: String,
    hosts: usize,
    /// The lab's /24: 198.18.<subnet>.0.
    subnet: u8,
}

/// Namespace and link names start with this, then the pid of the run.
const NETNS_PREFIX: &str = "flr";
/// The agents' gRPC port inside their namespaces.
pub const NETNS_CONTROL_PORT: u16 = 7420;

impl Network {
    fn namespace(&self, index: usize) -> String {
        format!("{}h{index}", self.prefix)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn ip(&self, index: usize) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(
            198,
            18,
            self.subnet,
            u8::try_from(10 + index).unwrap_or(250),
        )
    }

    fn remove(&self) {
        for index in 0..self.hosts {
            // Orphaned sockets (closed, still sending FIN to a host that is
            // gone) would keep the namespace, and its links, alive for minutes.
            let namespace = self.namespace(index);
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", &namespace, "ss", "-K", "-t", "state", "all",
                ])
                .output();
            let _ = ip(&["netns", "del", &namespace]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

fn ip(args: &[&str]) -> Result<String, LabError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| LabError::Network(format!("cannot run ip: {error}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LabError::Network(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Why a network-namespace lab cannot be made here, if it cannot.
pub fn netns_unavailable() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
    });
    if !root {
        return Some("not root".to_owned());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|output| output.status.success());
        if !found {
            return Some(format!(
                "`{tool}` is missing (apt-get install iproute2 nftables)"
            ));
        }
    }
    None
}

/// Remove namespaces and bridges of earlier runs whose process is gone.
fn sweep_stale() {
    let alive = |pid: &str| Path::new(&format!("/proc/{pid}")).exists();
    let names = ip(&["netns", "list"]).unwrap_or_default();
    for name in names
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        if let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('h').next())
            && !alive(pid)
        {
            let _ = ip(&["netns", "del", name]);
            let _ = ip(&["link", "del", &format!("{NETNS_PREFIX}{pid}br")]);
        }
    }
}

/// Candidate /24s of 198.18.0.0/15 for a lab: 198.18.100.0 to 198.18.250.0,
/// starting at an offset from the pid so that runs starting together differ.
fn candidate_subnets() -> impl Iterator<Item = u8> {
    let start = std::process::id() % 151;
    (0..151).map(move |step| u8::try_from(100 + (start + step) % 151).unwrap_or(100))
}

/// Put a free /24 on `bridge` (its .1): one that no other interface uses,
/// checked again after claiming it, in case another run claimed it too.
fn claim_subnet(bridge: &str) -> Result<u8, LabError> {
    for subnet in candidate_subnets() {
        let prefix = format!("198.18.{subnet}.");
        if ip(&["-o", "-4", "addr", "show"])?.contains(&prefix) {
            continue;
        }
        let gateway = format!("{prefix}1/24");
        ip(&["addr", "add", &gateway, "dev", bridge])?;
        if ip(&["-o", "-4", "addr", "show"])?.matches(&prefix).count() == 1 {
            return Ok(subnet);
        }
        let _ = ip(&["addr", "del", &gateway, "dev", bridge]);
    }
    Err(LabError::Network(
        "no free /24 left in 198.18.100.0-198.18.250.255".to_owned(),
    ))
}

/// Agents on this machine, stopped (and their network removed) on drop.
pub struct LocalLab {
    agents: Vec<LocalAgent>,
    network: Option<Network>,
    /// Their inventory (names `local-1`, `local-2`, ... or `host-1`, ...).
    pub inventory: Inventory,
}

impl LocalLab {
    /// Start `count` agents from `exe` on 127.0.0.1 with free ports.
    pub fn start(exe: &Path, count: usize) -> Result<Self, LabError> {
        let mut lab = Self {
            agents: Vec::new(),
            network: None,
            inventory: Inventory::default(),
        };
        for index in 1..=count {
            let mut command = Command::new(exe);
            command.args(["--listen", "127.0.0.1:0"]);
            let (agent, address) = start_agent(exe, command)?;
            lab.agents.push(agent);
            lab.inventory.agents.push(AgentEntry {
                name: format!("local-{index}"),
                address,
                test_ip: None,
            });
        }
        Ok(lab)
    }

    /// Start `count` hosts as network namespaces on a bridge, each with an
    /// agent allowed to isolate it (needs root, `ip` and `nft`).
    pub fn start_netns(exe: &Path, count: usize) -> Result<Self, LabError> {
        if let Some(why) = netns_unavailable() {
            return Err(LabError::Network(why));
        }
        sweep_stale();
        let mut lab = Self {
            agents: Vec::new(),
            network: None,
            inventory: Inventory::default(),
        };
        let prefix = format!("{NETNS_PREFIX}{}", std::process::id());
        let bridge = format!("{prefix}br");
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        // From here on, dropping the lab removes what was made.
        lab.network = Some(Network {
            prefix,
            hosts: count,
            subnet: 0,
        });
        let subnet = claim_subnet(&bridge)?;
        let Some(network) = lab.network.as_mut() else {
            return Err(LabError::Network("lost the network".to_owned()));
        };
        network.subnet = subnet;
        let network = &*network;
        ip(&["link", "set", &bridge, "up"])?;
        let mut entries = Vec::new();
        let mut agents = Vec::new();
        for index in 0..count {
            let namespace = network.namespace(index);
            let veth = format!("{}v{index}", network.prefix);
            let address = network.ip(index);
            ip(&["netns", "add", &namespace])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", namespace.as_str(), "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
            inside(&["link", "set", "eth0", "up"])?;
            inside(&["link", "set", "lo", "up"])?;
            let mut command = Command::new("ip");
            command.args(["netns", "exec", &namespace]).arg(exe).args([
                "--listen",
                &format!("{address}:{NETNS_CONTROL_PORT}"),
                "--allow",
                "isolate",
            ]);
            let (agent, listening) = start_agent(exe, command)?;
            agents.push(agent);
            entries.push(AgentEntry {
                name: format!("host-{}", index + 1),
                address: listening,
                test_ip: Some(address.into()),
            });
        }
        lab.agents = agents;
        lab.inventory.agents = entries;
        Ok(lab)
    }

    /// The bridge joining the hosts, when the lab is made of namespaces
    /// (where an independent capture can listen).
    pub fn bridge(&self) -> Option<String> {
        self.network.as_ref().map(Network::bridge)
    }

    /// The lab's network, when it is made of namespaces: "198.18.X.0/24".
    pub fn subnet(&self) -> Option<String> {
        self.network
            .as_ref()
            .map(|network| format!("198.18.{}.0/24", network.subnet))
    }

    /// Process ids of the agents, in inventory order.
    pub fn pids(&self) -> Vec<u32> {
        self.agents.iter().map(|agent| agent.child.id()).collect()
    }
}

fn start_agent(exe: &Path, mut command: Command) -> Result<(LocalAgent, String), LabError> {
    let failed = |reason: String| LabError::Start {
        exe: exe.display().to_string(),
        reason,
    };
    let mut child = command
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| failed(error.to_string()))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        return Err(failed("no stdout".to_owned()));
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line).map(|_| line);
        let _ = tx.send((read, reader.into_inner()));
    });
    let (line, stdout) = match rx.recv_timeout(START_TIMEOUT) {
        Ok((Ok(line), stdout)) => (line, stdout),
        Ok((Err(error), _)) => {
            let _ = child.kill();
            return Err(failed(error.to_string()));
        }
        Err(_) => {
            let _ = child.kill();
            return Err(failed(format!("said nothing within {START_TIMEOUT:?}")));
        }
    };
    let Some(address) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        return Err(failed(format!("unexpected first line {line:?}")));
    };
    let address = address.to_owned();
    Ok((
        LocalAgent {
            child,
            _stdout: stdout,
        },
        address,
    ))
}

impl Drop for LocalLab {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            let _ = agent.child.kill();
            let _ = agent.child.wait();
        }
        if let Some(network) = &self.network {
            network.remove();
        }
    }
}
