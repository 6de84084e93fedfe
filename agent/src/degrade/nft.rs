//! Loss of what a host receives, without netem: nftables drops a share of
//! the selected packets as they arrive (`numgen random`), in a table of its
//! own (`inet faultlab_degrade`). The sender's TCP knows nothing of it, as
//! with a loss on the wire. (Dropping what *leaves* this way would not be
//! a loss: the drop is reported to the sending socket, which sends again
//! at once; see the module above.)
//!
//! Each degraded interface gets a chain of its own on the prerouting hook.
//! Its drop rule only acts while the interface is an element of the set
//! `lossy`, and that element carries the deadline as its timeout: the
//! kernel stops the loss at the deadline with no process involved, as it
//! does for isolations. Healing reads the rule's counters and removes the
//! chain and the element; a new agent removes the whole table.
//!
//! Scripts are text fed to `nft -f -`; every value in them comes from
//! validated types (interface names, addresses, numbers).

use super::{DegradeError, Earlier, Healed, Impairment, Selection, Shaper};
#[cfg(test)]
use crate::isolate::Cidr;
use crate::link::valid_interface;
use crate::timed::Watchdog;
use crate::tool::Nft;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The table's family and name.
pub const TABLE: &str = "inet faultlab_degrade";

/// Chains are `loss_` and the interface name in hex (interface names may
/// hold `-`, `.` and `@`, which nft names may not).
const CHAIN_PREFIX: &str = "loss_";

/// Resolution of the drop decision: a loss of 12.3456 % is kept exactly.
const ONE_IN: u32 = 1_000_000;

/// Loss of arriving packets by nftables.
pub struct NftLoss {
    /// The agent's gRPC port, never dropped.
    pub control_port: u16,
    /// How its commands run.
    pub nft: Nft,
}

/// Whether nftables can drop a random share of packets here, tried in a
/// table made and deleted in one transaction.
pub fn probe(nft: Nft) -> Result<(), String> {
    let probe = "inet faultlab_degrade_probe";
    let script = format!(
        "add table {probe}\nadd set {probe} lossy {{ type ifname; flags timeout; }}\n\
         add chain {probe} in {{ type filter hook prerouting priority 0; policy accept; }}\n\
         add rule {probe} in iifname @lossy numgen random mod 100 < 1 counter drop\n\
         delete table {probe}\n"
    );
    run(nft, &script)
        .map(drop)
        .map_err(|error| format!("nftables cannot drop at random here: {error}"))
}

fn run(nft: Nft, script: &str) -> Result<String, String> {
    Ok(nft.run(&["-f", "-"], Some(script))?)
}

fn list(nft: Nft, what: &str) -> Result<String, String> {
    let mut args = vec!["list"];
    args.extend(what.split_whitespace());
    Ok(nft.run(&args, None)?)
}

fn chain_of(interface: &str) -> String {
    let mut chain = CHAIN_PREFIX.to_owned();
    for byte in interface.bytes() {
        let _ = write!(chain, "{byte:02x}");
    }
    chain
}

fn interface_of_chain(chain: &str) -> Option<String> {
    let hex = chain.strip_prefix(CHAIN_PREFIX)?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes)
        .ok()
        .filter(|name| valid_interface(name))
}

/// The script that makes `interface` lose `percent` of the selected
/// packets until `deadline`.
fn degrade_script(
    interface: &str,
    percent: f64,
    selection: &Selection,
    control_port: u16,
    deadline: Duration,
) -> String {
    let chain = chain_of(interface);
    // Out of ONE_IN draws, those below `threshold` drop (all of them: no draw).
    let threshold = ((percent / 100.0 * f64::from(ONE_IN)).round() as u32).max(1);
    let draw = if threshold >= ONE_IN {
        String::new()
    } else {
        format!("numgen random mod {ONE_IN} < {threshold} ")
    };
    let mut matched = format!("iifname @lossy iifname \"{interface}\"");
    if let Some(peer) = selection.peer {
        let family = if peer.is_v6() { "ip6" } else { "ip" };
        let _ = write!(matched, " {family} saddr {}", peer.network());
    }
    if selection.local_port.is_some() || selection.peer_port.is_some() {
        matched.push_str(" meta l4proto { tcp, udp }");
    }
    for (field, port) in [
        ("dport", selection.local_port),
        ("sport", selection.peer_port),
    ] {
        if let Some(port) = port {
            let _ = write!(matched, " th {field} {port}");
        }
    }
    if selection.connection_attempts {
        matched.push_str(" tcp flags & (syn | ack) == syn");
    }
    let mut script = format!(
        "add table {TABLE}\nadd set {TABLE} lossy {{ type ifname; flags timeout; }}\n\
         add chain {TABLE} {chain} {{ type filter hook prerouting priority 0; policy accept; }}\n\
         flush chain {TABLE} {chain}\n"
    );
    if control_port != 0 {
        let _ = writeln!(
            script,
            "add rule {TABLE} {chain} iifname \"{interface}\" tcp dport {control_port} accept"
        );
    }
    let _ = writeln!(
        script,
        "add rule {TABLE} {chain} {matched} counter {draw}counter drop"
    );
    let _ = writeln!(
        script,
        "add element {TABLE} lossy {{ \"{interface}\" timeout {}ms }}",
        deadline.as_millis().max(1)
    );
    script
}

/// The drop rule's two counters in `nft list chain` output: packets that
/// met the loss, packets it dropped.
fn counters(listed: &str) -> (u64, u64) {
    let Some(rule) = listed.lines().find(|line| line.contains("iifname @lossy")) else {
        return (0, 0);
    };
    let words: Vec<&str> = rule.split_whitespace().collect();
    let packets: Vec<u64> = words
        .windows(2)
        .filter(|pair| pair[0] == "packets")
        .filter_map(|pair| pair[1].parse().ok())
        .collect();
    match packets[..] {
        [met, dropped, ..] => (met.saturating_sub(dropped), dropped),
        _ => (0, 0),
    }
}

/// The deadline is the kernel's (the set element's timeout): nothing to
/// start, nothing to stop.
struct KernelTimeout {
    expires: Instant,
}

impl Watchdog for KernelTimeout {
    fn disarm(&mut self) {}

    fn finished(&mut self) -> bool {
        Instant::now() >= self.expires
    }
}

impl Shaper for NftLoss {
    fn mechanism(&self) -> &'static str {
        "nftables numgen random drop on arrival"
    }

    fn cannot(&self, impairment: &Impairment, selection: &Selection) -> Option<String> {
        if !selection.inbound {
            return Some(
                "a firewall cannot lose what a host sends (its drop is reported to the sending socket, which sends again at once)".to_owned(),
            );
        }
        (!impairment.is_plain_loss()).then(|| {
            "what a host receives can only be lost (loss, without loss_correlation); delay, duplicates, reordering, corruption and rate limits are made on what it sends".to_owned()
        })
    }

    fn arm(&self, _interface: &str, after: Duration) -> Result<Box<dyn Watchdog>, DegradeError> {
        Ok(Box::new(KernelTimeout {
            expires: Instant::now() + after,
        }))
    }

    fn degrade(
        &self,
        _id: &str,
        interface: &str,
        impairment: &Impairment,
        selection: &Selection,
        deadline: Duration,
    ) -> Result<String, DegradeError> {
        // The interface's name was checked by the book (`Degradations`).
        let script = degrade_script(
            interface,
            impairment.loss_percent,
            selection,
            self.control_port,
            deadline,
        );
        run(self.nft, &script).map_err(DegradeError::System)?;
        list(self.nft, &format!("chain {TABLE} {}", chain_of(interface)))
            .map_err(DegradeError::System)
    }

    fn heal(&self, interface: &str) -> Result<Healed, DegradeError> {
        let chain = chain_of(interface);
        let listed = list(self.nft, &format!("chain {TABLE} {chain}"))
            .map_err(|_| DegradeError::NotDegraded(interface.to_owned()))?;
        let (sent, dropped) = counters(&listed);
        // The element may have timed out already: delete it only if there.
        let live = list(self.nft, &format!("set {TABLE} lossy"))
            .is_ok_and(|set| set.contains(&format!("\"{interface}\"")));
        let mut script = format!("flush chain {TABLE} {chain}\ndelete chain {TABLE} {chain}\n");
        if live {
            let _ = writeln!(script, "delete element {TABLE} lossy {{ \"{interface}\" }}");
        }
        run(self.nft, &script).map_err(DegradeError::System)?;
        let left = self.leftovers();
        if left.iter().any(|left| left.interface == interface) {
            return Err(DegradeError::System(format!(
                "{interface} is not healed: its chain {chain} reads back still in {TABLE}"
            )));
        }
        if left.is_empty() {
            // The last one: no empty table stays behind.
            let _ = run(self.nft, &format!("delete table {TABLE}\n"));
        }
        // What TCP learned of the lossy path goes with it.
        crate::link::iproute::forget_paths_via(interface)
            .map_err(|error| DegradeError::System(error.to_string()))?;
        Ok(Healed {
            report: listed,
            sent,
            dropped,
        })
    }

    fn interface_of(&self, address: IpAddr) -> Result<Option<String>, DegradeError> {
        crate::link::iproute::interface_holding(address)
            .map_err(|error| DegradeError::System(error.to_string()))
    }

    /// Its deadline is the kernel's (the set element's timeout): what is
    /// left of a chain is healed at once.
    fn leftovers(&self) -> Vec<Earlier> {
        list(self.nft, &format!("table {TABLE}"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let name = line.trim().strip_prefix("chain ")?;
                interface_of_chain(name.trim_end_matches(['{', ' ']))
            })
            .map(|interface| Earlier {
                interface,
                left: Duration::ZERO,
                id: None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_name_holds_any_interface_name_and_gives_it_back() {
        for name in ["eth1", "fll-a.t0", "veth@if3"] {
            let chain = chain_of(name);
            assert!(chain.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            assert_eq!(interface_of_chain(&chain).as_deref(), Some(name));
        }
        assert_eq!(interface_of_chain("loss_zz"), None);
        assert_eq!(interface_of_chain("other"), None);
    }

    #[test]
    fn the_script_drops_the_share_asked_of_what_was_selected_until_the_deadline() {
        let selection = Selection {
            inbound: true,
            peer: Cidr::parse("198.18.1.11"),
            local_port: Some(7000),
            peer_port: None,
            connection_attempts: false,
        };
        let flow = Selection {
            peer: Cidr::parse("198.18.1.0/24"),
            peer_port: Some(40000),
            ..selection.clone()
        };
        let script = degrade_script("eth1", 10.0, &flow, 0, Duration::from_secs(1));
        assert!(
            script.contains(
                "ip saddr 198.18.1.0/24 meta l4proto { tcp, udp } th dport 7000 th sport 40000 counter"
            ),
            "{script}"
        );
        let attempts = Selection {
            connection_attempts: true,
            ..selection.clone()
        };
        let script = degrade_script("eth1", 10.0, &attempts, 0, Duration::from_secs(1));
        assert!(
            script.contains("th dport 7000 tcp flags & (syn | ack) == syn counter"),
            "{script}"
        );
        let script = degrade_script("eth1", 12.5, &selection, 7420, Duration::from_millis(3000));
        assert!(script.contains(
            "add rule inet faultlab_degrade loss_65746831 iifname \"eth1\" tcp dport 7420 accept\n"
        ));
        assert!(script.contains(
            "iifname @lossy iifname \"eth1\" ip saddr 198.18.1.11/32 meta l4proto { tcp, udp } th dport 7000 counter numgen random mod 1000000 < 125000 counter drop\n"
        ));
        assert!(
            script
                .ends_with("add element inet faultlab_degrade lossy { \"eth1\" timeout 3000ms }\n")
        );
        let everything = degrade_script(
            "eth1",
            10.0,
            &Selection::default(),
            0,
            Duration::from_secs(1),
        );
        assert!(everything.contains("iifname @lossy iifname \"eth1\" counter numgen"));
        assert!(!everything.contains("accept\n"));
    }

    #[test]
    fn the_counters_are_what_met_the_rule_and_what_it_dropped() {
        let listed = "table inet faultlab_degrade {
	chain loss_65746831 {
		type filter hook prerouting priority filter; policy accept;
		iifname \"eth1\" tcp dport 7420 accept
		iifname @lossy iifname \"eth1\" counter packets 1000 bytes 90000 numgen random mod 1000000 < 100000 counter packets 97 bytes 8730 drop
	}
}
";
        assert_eq!(counters(listed), (903, 97));
        assert_eq!(counters("table inet faultlab_degrade {\n}\n"), (0, 0));
    }
}
