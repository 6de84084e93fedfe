//! The network-namespace lab: each host a namespace of this kernel with an
//! agent allowed to isolate it and pull its link, on a management network
//! (`eth0`, the agents' gRPC) and a test network (`eth1`, the traffic under
//! test), each a bridge with a /24 of 198.18.0.0/15, as a well-built
//! physical lab has. Needs root, `ip` and `nft`. What a crashed run left is
//! swept away by the next.

use super::agents::{AgentGrants, LocalAgent, detach, start_agent, stop_pids};
use super::ip::ip;
use super::outside::LabSide;
use super::{LabError, LocalLab};
use crate::inventory::{AgentEntry, Inventory};
use faultlab_proto::Capability;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// Namespace and link names of a run's lab start with this, then the pid.
const NETNS_PREFIX: &str = "flr";
/// Names of the lab of `faultlab lab up` start with this.
pub(super) const LAB_PREFIX: &str = "fll";
/// The agents' gRPC port inside their namespaces.
pub const NETNS_CONTROL_PORT: u16 = 7420;
/// The /24s of 198.18.0.0/15 a lab may take: 198.18.100.0 to 198.18.250.0.
const FIRST_SUBNET: u32 = 100;
const SUBNETS: u32 = 151;

/// Namespaces and bridges made for a lab, removed by [`Network::remove`].
pub(super) struct Network {
    prefix: String,
    pub(super) hosts: usize,
    /// The management /24: 198.18.<management>.0.
    management: u8,
    /// The test /24: 198.18.<test>.0.
    test: u8,
}

impl Network {
    /// A network not made yet: `prefix` names its links, `hosts` its namespaces.
    pub(super) fn new(prefix: String, hosts: usize) -> Self {
        Self {
            prefix,
            hosts,
            management: 0,
            test: 0,
        }
    }

    /// Make its two bridges, each with a free /24; their third bytes.
    pub(super) fn make_bridges(&mut self) -> Result<(u8, u8), LabError> {
        self.management = make_bridge(&self.management_bridge())?;
        self.test = make_bridge(&self.test_bridge())?;
        Ok((self.management, self.test))
    }

    pub(super) fn namespace(&self, index: usize) -> String {
        format!("{}h{index}", self.prefix)
    }

    fn management_bridge(&self) -> String {
        format!("{}mb", self.prefix)
    }

    pub(super) fn test_bridge(&self) -> String {
        format!("{}tb", self.prefix)
    }

    /// Host `index`'s address on the /24 `198.18.<subnet>.0`.
    pub(super) fn address(subnet: u8, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, subnet, u8::try_from(10 + index).unwrap_or(250))
    }

    pub(super) fn subnets(&self) -> String {
        format!(
            "management 198.18.{}.0/24, test 198.18.{}.0/24",
            self.management, self.test
        )
    }

    pub(super) fn remove(&self) {
        super::outside::watchdog::disarm_lab(&[format!("{}t", self.prefix)]);
        remove_network(&self.prefix, self.hosts);
    }
}

/// The name prefix of this process's next lab: "flr<pid>", then
/// "flr<pid>x<n>" (interface names have 15 characters at most).
pub(super) fn run_prefix() -> String {
    static LABS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match n {
        0 => format!("{NETNS_PREFIX}{}", std::process::id()),
        n => format!("{NETNS_PREFIX}{}x{}", std::process::id(), n % 10),
    }
}

/// Make `count` hosts named after `prefix`, an agent in each; with `logs`,
/// the agents are detached and log there.
pub(super) fn start(
    exe: &Path,
    count: usize,
    prefix: String,
    logs: Option<&Path>,
    grants: &AgentGrants,
) -> Result<LocalLab, LabError> {
    super::host_count(count)?;
    if let Some(why) = netns_unavailable() {
        return Err(LabError::Network(why));
    }
    sweep_stale();
    // From here on, dropping the lab removes what was made.
    let mut lab = LocalLab {
        agents: Vec::new(),
        network: Some(Network::new(prefix, count)),
        machines: None,
        inventory: Inventory::default(),
    };
    let Some(network) = lab.network.as_mut() else {
        return Err(LabError::Network("lost the network".to_owned()));
    };
    network.make_bridges()?;
    let network = &*network;
    let mut agents = Vec::new();
    let mut entries = Vec::new();
    for index in 0..count {
        let (agent, entry) = add_host(network, index, exe, logs, grants)?;
        agents.push(agent);
        entries.push(entry);
    }
    lab.agents = agents;
    lab.inventory.agents = entries;
    Ok(lab)
}

/// A bridge with a free /24 of its own; returns the /24's third byte.
fn make_bridge(bridge: &str) -> Result<u8, LabError> {
    ip(&["link", "add", bridge, "type", "bridge"])?;
    let subnet = claim_subnet(bridge)?;
    ip(&["link", "set", bridge, "up"])?;
    Ok(subnet)
}

/// Host `index`: its namespace, its two links, its agent.
fn add_host(
    network: &Network,
    index: usize,
    exe: &Path,
    logs: Option<&Path>,
    grants: &AgentGrants,
) -> Result<(LocalAgent, AgentEntry), LabError> {
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
            "link", "add", &veth, "type", "veth", "peer", "name", interface, "netns", &namespace,
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
    // `degrade` is offered only where the kernel has sch_netem (the agent
    // tries); `tune` changes only the namespace's own settings.
    command.args(grants.arguments(vec![
        Capability::Isolate,
        Capability::Link,
        Capability::Degrade,
        Capability::Tune,
    ]));
    if let Some(logs) = logs {
        detach(&mut command, &logs.join(format!("host-{}.log", index + 1)))?;
    }
    let gateway = Ipv4Addr::new(198, 18, network.management, 1);
    let (agent, listening) = start_agent(exe, command, Some(gateway.into()))?;
    Ok((
        agent,
        AgentEntry {
            name: format!("host-{}", index + 1),
            address: listening,
            test_ip: Some(test.into()),
            // The bridge end of its test veth: the switch port of its cable.
            lab: Some(LabSide {
                switch_port: Some(format!("{}t{index}", network.prefix)),
                ..LabSide::default()
            }),
        },
    ))
}

/// Remove a lab's namespaces (`<prefix>h0`...) and bridges, whatever is left of them.
pub(super) fn remove_network(prefix: &str, hosts: usize) {
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
    delete_links(|name| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| rest == "mb" || rest == "tb" || is_host_link(rest))
    });
}

/// `m3`, `t12`: a host's management or test link (a veth's bridge end, a tap).
fn is_host_link(rest: &str) -> bool {
    let mut chars = rest.chars();
    matches!(chars.next(), Some('m' | 't'))
        && !chars.as_str().is_empty()
        && chars.all(|c| c.is_ascii_digit())
}

/// Delete every link whose name `doomed` says.
fn delete_links(doomed: impl Fn(&str) -> bool) {
    let links = ip(&["-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        // "7: flr12mb: <...>" or "9: flr12m0@if8: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if doomed(name) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// Delete the links of labs named `<prefix><pid>...` whose process is gone.
pub(super) fn sweep_links(prefix: &str, alive: impl Fn(&str) -> bool) {
    delete_links(|name| {
        name.strip_prefix(prefix).is_some_and(|rest| {
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            !pid.is_empty() && !alive(&pid)
        })
    });
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

/// Remove namespaces, bridges and links of earlier runs whose process is
/// gone, and stop the agents still in those namespaces first: a run killed
/// with its lab up leaves them running, and a namespace deleted under them
/// would leave them running for good, with no network.
fn sweep_stale() {
    let alive = |pid: &str| Path::new(&format!("/proc/{pid}")).exists();
    let names = ip(&["netns", "list"]).unwrap_or_default();
    let stale: Vec<&str> = names
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            // "flr<pid>h<index>", or "flr<pid>x<n>h<index>" for a process's later labs.
            name.strip_prefix(NETNS_PREFIX)
                .and_then(|rest| rest.split('h').next())
                .and_then(|lab| lab.split('x').next())
                .is_some_and(|pid| !alive(pid))
        })
        .collect();
    let left_running: Vec<u32> = stale
        .iter()
        .flat_map(|name| {
            ip(&["netns", "pids", name])
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    stop_pids(&left_running);
    for name in stale {
        let _ = ip(&["netns", "del", name]);
    }
    // Then their bridges and links, also those of a run killed while it
    // took its lab down (its namespaces gone, a bridge left).
    sweep_links(NETNS_PREFIX, alive);
}

/// Candidate /24s of 198.18.0.0/15 for a lab (their third byte), starting
/// at an offset from `seed` (the pid) so that runs starting together differ.
fn candidate_subnets(seed: u32) -> impl Iterator<Item = u8> {
    let start = seed % SUBNETS;
    (0..SUBNETS)
        .map(move |step| u8::try_from(FIRST_SUBNET + (start + step) % SUBNETS).unwrap_or(100))
}

/// The first candidate no interface uses, given `ip -o -4 addr show`.
fn first_free(candidates: impl Iterator<Item = u8>, addresses: &str) -> Option<u8> {
    candidates
        .into_iter()
        .find(|subnet| !addresses.contains(&format!(" 198.18.{subnet}.")))
}

/// Put a free /24 on `bridge` (its .1): one that no other interface uses,
/// checked again after claiming it, in case another run claimed it too.
fn claim_subnet(bridge: &str) -> Result<u8, LabError> {
    // Labs made at once by one process (tests run in parallel) start from
    // different candidates too: with the pid alone they collided on the
    // same /24 again and again, in step, until none was left.
    static CLAIMS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed =
        std::process::id().wrapping_add(CLAIMS.fetch_add(37, std::sync::atomic::Ordering::Relaxed));
    let mut tried = Vec::new();
    loop {
        let addresses = ip(&["-o", "-4", "addr", "show"])?;
        let candidates = candidate_subnets(seed).filter(|s| !tried.contains(s));
        let Some(subnet) = first_free(candidates, &addresses) else {
            return Err(LabError::Network(
                "no free /24 left in 198.18.100.0-198.18.250.255".to_owned(),
            ));
        };
        tried.push(subnet);
        let prefix = format!(" 198.18.{subnet}.");
        let gateway = format!("198.18.{subnet}.1/24");
        ip(&["addr", "add", &gateway, "dev", bridge])?;
        if ip(&["-o", "-4", "addr", "show"])?.matches(&prefix).count() == 1 {
            return Ok(subnet);
        }
        let _ = ip(&["addr", "del", &gateway, "dev", bridge]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_the_labs_range_once_from_an_offset() {
        let all: Vec<u8> = candidate_subnets(7).collect();
        assert_eq!(all.len(), 151);
        assert_eq!(all[0], 107);
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 151, "each /24 once");
        assert_eq!((sorted[0], sorted[150]), (100, 250));
        assert_ne!(
            candidate_subnets(7).next(),
            candidate_subnets(8).next(),
            "runs starting together start apart"
        );
    }

    #[test]
    fn a_subnet_another_interface_holds_is_passed_over() {
        let addresses = "1: lo    inet 127.0.0.1/8 scope host lo\n\
                         5: flr9mb    inet 198.18.107.1/24 scope global flr9mb\n";
        assert_eq!(first_free(candidate_subnets(7), addresses), Some(108));
        // 198.18.10.x does not hide 198.18.100.x and the like.
        let near = "7: x    inet 198.18.10.1/24 scope global x\n";
        assert_eq!(first_free(candidate_subnets(0), near), Some(100));
        let full: String = (100..=250)
            .map(|subnet| format!("9: b inet 198.18.{subnet}.1/24\n"))
            .collect();
        assert_eq!(first_free(candidate_subnets(0), &full), None);
    }

    #[test]
    fn addresses_of_host_n_are_in_the_lab_range() {
        assert_eq!(Network::address(120, 0), Ipv4Addr::new(198, 18, 120, 10));
        assert_eq!(Network::address(120, 5), Ipv4Addr::new(198, 18, 120, 15));
    }
}
