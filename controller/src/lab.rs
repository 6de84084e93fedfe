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
use std::time::{Duration, Instant};

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

/// Namespaces and bridges made for a lab, removed on drop: a management
/// network (`eth0`, the agents' gRPC) and a test network (`eth1`, the traffic
/// under test), as a well-built physical lab has.
struct Network {
    prefix: String,
    hosts: usize,
    /// The management /24: 198.18.<management>.0.
    management: u8,
    /// The test /24: 198.18.<test>.0.
    test: u8,
}

/// Namespace and link names of a run's lab start with this, then the pid.
const NETNS_PREFIX: &str = "flr";
/// Names of the lab of `faultlab lab up` start with this.
const LAB_PREFIX: &str = "fll";
/// The agents' gRPC port inside their namespaces.
pub const NETNS_CONTROL_PORT: u16 = 7420;

impl Network {
    fn namespace(&self, index: usize) -> String {
        format!("{}h{index}", self.prefix)
    }

    fn management_bridge(&self) -> String {
        format!("{}mb", self.prefix)
    }

    fn test_bridge(&self) -> String {
        format!("{}tb", self.prefix)
    }

    fn address(subnet: u8, index: usize) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(198, 18, subnet, u8::try_from(10 + index).unwrap_or(250))
    }

    fn remove(&self) {
        remove_network(&self.prefix, self.hosts);
    }
}

/// Remove a lab's namespaces (`<prefix>h0`...) and bridges, whatever is left of them.
fn remove_network(prefix: &str, hosts: usize) {
    for index in 0..hosts {
        // Orphaned sockets (closed, still sending FIN to a host that is
        // gone) would keep the namespace, and its links, alive for minutes.
        let namespace = format!("{prefix}h{index}");
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &namespace, "ss", "-K", "-t", "state", "all",
            ])
            .output();
        let _ = ip(&["netns", "del", &namespace]);
    }
    for bridge in ["mb", "tb"] {
        let _ = ip(&["link", "del", &format!("{prefix}{bridge}")]);
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
        // "flr<pid>h<index>", or "flr<pid>x<n>h<index>" for a process's later labs.
        if let Some(lab) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('h').next())
            && let Some(pid) = lab.split('x').next()
            && !alive(pid)
        {
            let _ = ip(&["netns", "del", name]);
            for bridge in ["mb", "tb"] {
                let _ = ip(&["link", "del", &format!("{NETNS_PREFIX}{lab}{bridge}")]);
            }
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

/// What a lab's agents may do beyond the lab's defaults (loopback agents:
/// connections; namespace hosts: also isolate and link).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentGrants {
    /// Act on other programs (process faults, aborting their connections).
    pub process: bool,
    /// Restart commands by process name (`--restart NAME=COMMAND`).
    pub restart: Vec<(String, String)>,
}

impl AgentGrants {
    fn arguments(&self, mut allow: Vec<&str>) -> Vec<String> {
        if self.process {
            allow.push("process");
        }
        let mut arguments = Vec::new();
        if !allow.is_empty() {
            arguments.push("--allow".to_owned());
            arguments.push(allow.join(","));
        }
        for (name, command) in &self.restart {
            arguments.push("--restart".to_owned());
            arguments.push(format!("{name}={command}"));
        }
        arguments
    }
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
        Self::loopback(exe, count, None, &AgentGrants::default())
    }

    /// [`Self::start`] with agents granted more.
    pub fn start_with(exe: &Path, count: usize, grants: &AgentGrants) -> Result<Self, LabError> {
        Self::loopback(exe, count, None, grants)
    }

    /// Loopback agents; with `logs`, detached (own process group, stderr to
    /// a log file there) so that they can outlive this process.
    fn loopback(
        exe: &Path,
        count: usize,
        logs: Option<&Path>,
        grants: &AgentGrants,
    ) -> Result<Self, LabError> {
        let mut lab = Self {
            agents: Vec::new(),
            network: None,
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
            });
        }
        Ok(lab)
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
        // Interface names have 15 characters at most: "flr<pid>[x<n>]m<index>".
        static LABS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = match n {
            0 => format!("{NETNS_PREFIX}{}", std::process::id()),
            n => format!("{NETNS_PREFIX}{}x{}", std::process::id(), n % 10),
        };
        Self::build(exe, count, prefix, None, grants)
    }

    /// The network namespace of host `index` (0-based), when the lab is made of them.
    pub fn namespace(&self, index: usize) -> Option<String> {
        self.network
            .as_ref()
            .filter(|network| index < network.hosts)
            .map(|network| network.namespace(index))
    }

    fn build(
        exe: &Path,
        count: usize,
        prefix: String,
        logs: Option<&Path>,
        grants: &AgentGrants,
    ) -> Result<Self, LabError> {
        if let Some(why) = netns_unavailable() {
            return Err(LabError::Network(why));
        }
        sweep_stale();
        let mut lab = Self {
            agents: Vec::new(),
            network: None,
            inventory: Inventory::default(),
        };
        // From here on, dropping the lab removes what was made.
        lab.network = Some(Network {
            prefix,
            hosts: count,
            management: 0,
            test: 0,
        });
        let Some(network) = lab.network.as_mut() else {
            return Err(LabError::Network("lost the network".to_owned()));
        };
        for (bridge, is_test) in [
            (network.management_bridge(), false),
            (network.test_bridge(), true),
        ] {
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            let subnet = claim_subnet(&bridge)?;
            if is_test {
                network.test = subnet;
            } else {
                network.management = subnet;
            }
            ip(&["link", "set", &bridge, "up"])?;
        }
        let network = &*network;
        let mut entries = Vec::new();
        let mut agents = Vec::new();
        for index in 0..count {
            let namespace = network.namespace(index);
            ip(&["netns", "add", &namespace])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", namespace.as_str(), "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            let management = Network::address(network.management, index);
            let test = Network::address(network.test, index);
            for (interface, bridge, address, tag) in [
                ("eth0", network.management_bridge(), management, "m"),
                ("eth1", network.test_bridge(), test, "t"),
            ] {
                let veth = format!("{}{tag}{index}", network.prefix);
                ip(&[
                    "link", "add", &veth, "type", "veth", "peer", "name", interface, "netns",
                    &namespace,
                ])?;
                ip(&["link", "set", &veth, "master", &bridge, "up"])?;
                inside(&["addr", "add", &format!("{address}/24"), "dev", interface])?;
                inside(&["link", "set", interface, "up"])?;
            }
            inside(&["link", "set", "lo", "up"])?;
            let mut command = Command::new("ip");
            command.args(["netns", "exec", &namespace]).arg(exe).args([
                "--listen",
                &format!("{management}:{NETNS_CONTROL_PORT}"),
                // The management bridge has no way out of this machine.
                "--insecure",
            ]);
            command.args(grants.arguments(vec!["isolate", "link"]));
            if let Some(logs) = logs {
                detach(&mut command, &logs.join(format!("host-{}.log", index + 1)))?;
            }
            let gateway = std::net::Ipv4Addr::new(198, 18, network.management, 1);
            let (agent, listening) = start_agent(exe, command, Some(gateway.into()))?;
            agents.push(agent);
            entries.push(AgentEntry {
                name: format!("host-{}", index + 1),
                address: listening,
                test_ip: Some(test.into()),
            });
        }
        lab.agents = agents;
        lab.inventory.agents = entries;
        Ok(lab)
    }

    /// The test network's bridge, when the lab is made of namespaces
    /// (where an independent capture can listen).
    pub fn bridge(&self) -> Option<String> {
        self.network.as_ref().map(Network::test_bridge)
    }

    /// The lab's networks, when it is made of namespaces.
    pub fn subnet(&self) -> Option<String> {
        self.network.as_ref().map(|network| {
            format!(
                "management 198.18.{}.0/24, test 198.18.{}.0/24",
                network.management, network.test
            )
        })
    }

    /// Process ids of the agents, in inventory order.
    pub fn pids(&self) -> Vec<u32> {
        self.agents.iter().map(|agent| agent.child.id()).collect()
    }
}

/// Let an agent outlive this process: its own process group (spared by the
/// terminal's Ctrl-C), its log in a file.
fn detach(command: &mut Command, log: &Path) -> Result<(), LabError> {
    let log = std::fs::File::create(log)
        .map_err(|error| LabError::Network(format!("cannot write {}: {error}", log.display())))?;
    command.stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    Ok(())
}

/// Start an agent; it traces where this process does (`gateway`: this
/// host's address on the agent's network, when that is another namespace).
fn start_agent(
    exe: &Path,
    mut command: Command,
    gateway: Option<std::net::IpAddr>,
) -> Result<(LocalAgent, String), LabError> {
    let failed = |reason: String| LabError::Start {
        exe: exe.display().to_string(),
        reason,
    };
    let mut child = command
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error".to_owned()),
        )
        .envs(faultlab_telemetry::child_environment(gateway))
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

/// How long agents get to stop by themselves (and send their last spans).
const AGENT_STOP_GRACE: Duration = Duration::from_secs(6);

impl Drop for LocalLab {
    fn drop(&mut self) {
        // SIGTERM first: an agent then kills its holders and flushes its
        // traces; SIGKILL for any that has not ended after the grace time.
        for agent in &self.agents {
            let _ = Command::new("kill")
                .args(["-TERM", &agent.child.id().to_string()])
                .output();
        }
        let deadline = Instant::now() + AGENT_STOP_GRACE;
        for agent in &mut self.agents {
            while matches!(agent.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = agent.child.kill();
            let _ = agent.child.wait();
        }
        if let Some(network) = &self.network {
            network.remove();
        }
    }
}

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

fn inventory_text(inventory: &Inventory) -> String {
    let mut text =
        String::from("# Written by `faultlab lab up`; removed by `faultlab lab down`.\n");
    for agent in &inventory.agents {
        text.push_str(&format!(
            "\n[[agent]]\nname = \"{}\"\naddress = \"{}\"\n",
            agent.name, agent.address
        ));
        if let Some(test_ip) = agent.test_ip {
            text.push_str(&format!("test_ip = \"{test_ip}\"\n"));
        }
    }
    text
}

/// Make a lab of `hosts` network-namespace hosts that outlives this
/// process; returns the path of its inventory. Whatever an earlier lab left
/// is removed first.
pub fn lab_up(
    exe: &Path,
    hosts: usize,
    state: &Path,
    grants: &AgentGrants,
) -> Result<PathBuf, LabError> {
    lab_down(state)?;
    let failed = |what: &str, error: std::io::Error| {
        LabError::Network(format!("{what} {}: {error}", state.display()))
    };
    std::fs::create_dir_all(state).map_err(|error| failed("cannot create", error))?;
    let mut lab = if netns_unavailable().is_none() {
        LocalLab::build(exe, hosts, LAB_PREFIX.to_owned(), Some(state), grants)?
    } else {
        LocalLab::loopback(exe, hosts, Some(state), grants)?
    };
    let inventory = state.join(INVENTORY_FILE);
    std::fs::write(&inventory, inventory_text(&lab.inventory))
        .map_err(|error| failed("cannot write to", error))?;
    let pids: Vec<String> = lab
        .agents
        .iter()
        .map(|agent| agent.child.id().to_string())
        .collect();
    std::fs::write(state.join(PIDS_FILE), pids.join("\n"))
        .map_err(|error| failed("cannot write to", error))?;
    // Detach: the agents and the network stay when `lab` is dropped.
    lab.agents.clear();
    lab.network = None;
    Ok(inventory)
}

/// Stop the lab's agents (SIGTERM, so they reset their holders and lift
/// their isolations; SIGKILL after 3 s) and remove every namespace and bridge
/// of a `lab up` lab, also what a crashed one left. Returns what it removed.
pub fn lab_down(state: &Path) -> Result<Vec<String>, LabError> {
    let mut removed = Vec::new();
    let pids: Vec<u32> = std::fs::read_to_string(state.join(PIDS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    for pid in pids.iter().copied().filter(|&pid| alive(pid)) {
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

/// The network namespace of host `host` (1-based) of a `lab up` lab, or
/// `None` for a loopback lab (its agents run on this host itself).
pub fn lab_namespace(state: &Path, host: usize) -> Result<Option<String>, LabError> {
    let status = lab_status(state).ok_or_else(|| {
        LabError::Network(format!("no lab is up (no state in {})", state.display()))
    })?;
    if host == 0 || host > status.inventory.agents.len() {
        return Err(LabError::Network(format!(
            "the lab has hosts 1 to {}, not {host}",
            status.inventory.agents.len()
        )));
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
