//! The Linux backend: nftables, in a table of faultlab's own (`inet
//! faultlab`), never touching any other table.
//!
//! The table holds one *set* per kind of isolation (drop/reject × in/out ×
//! IPv4/IPv6 × whole-host/one-port/one-flow × every packet, TCP connection
//! attempts only or open TCP connections only; and the every-packet kinds
//! again with the control channel included) and one rule per set (a reject
//! has more). An isolation is a set *element* with a timeout, so the
//! kernel removes it at the deadline with no process involved: an agent
//! killed mid-fault still heals. The rules that exempt the agent's gRPC port
//! come after the "control channel included" sets and before the others.
//!
//! Scripts are text fed to nftables (`nft -f -`) in one transaction; every value in
//! them comes from validated types (addresses, numbers), never from raw
//! request strings. The ruleset is a pure function, tested without root.

use super::{Cidr, Connections, Firewall, FirewallError, Isolation, Matched, Mode};
use crate::tool::{Nft, ToolError};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// The table's family and name.
pub const TABLE: &str = "inet faultlab";

/// One set of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SetKind {
    mode: Mode,
    inbound: bool,
    v6: bool,
    key: Key,
    connections: Connections,
    control_too: bool,
}

/// What a set's elements match besides the peer's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    /// Every port.
    Host,
    /// One local port.
    Port,
    /// One local port and one peer port: a single flow.
    Flow,
}

impl Key {
    fn of(isolation: &Isolation) -> Self {
        match (isolation.port, isolation.peer_port) {
            (None, _) => Self::Host,
            (Some(_), None) => Self::Port,
            (Some(_), Some(_)) => Self::Flow,
        }
    }
}

impl SetKind {
    /// Every kind, in the order of their rules: the control channel's
    /// exemption comes between the kinds that include it and the others.
    fn all() -> Vec<Self> {
        let mut kinds = Vec::new();
        for (control_too, connections) in [
            (true, Connections::All),
            (false, Connections::All),
            (false, Connections::New),
            (false, Connections::Established),
        ] {
            for mode in [Mode::Drop, Mode::Reject] {
                for inbound in [true, false] {
                    for v6 in [false, true] {
                        for key in [Key::Host, Key::Port, Key::Flow] {
                            kinds.push(Self {
                                mode,
                                inbound,
                                v6,
                                key,
                                connections,
                                control_too,
                            });
                        }
                    }
                }
            }
        }
        kinds
    }

    fn name(self) -> String {
        format!(
            "{}_{}_{}{}{}{}",
            match self.mode {
                Mode::Drop => "drop",
                Mode::Reject => "reject",
            },
            if self.inbound { "in" } else { "out" },
            if self.v6 { "v6" } else { "v4" },
            match self.key {
                Key::Host => "",
                Key::Port => "_port",
                Key::Flow => "_flow",
            },
            match self.connections {
                Connections::All => "",
                Connections::New => "_new",
                Connections::Established => "_open",
            },
            if self.control_too { "_ctl" } else { "" },
        )
    }

    fn set_definition(self) -> String {
        let address = if self.v6 { "ipv6_addr" } else { "ipv4_addr" };
        let key = match self.key {
            Key::Host => address.to_owned(),
            Key::Port => format!("{address} . inet_service"),
            Key::Flow => format!("{address} . inet_service . inet_service"),
        };
        format!(
            "  set {} {{ type {key}; flags interval, timeout; counter; }}\n",
            self.name()
        )
    }

    /// The rule(s) that act on this set's elements.
    fn rules(self) -> Vec<String> {
        let (family, peer) = match (self.v6, self.inbound) {
            (false, true) => ("ip", "saddr"),
            (false, false) => ("ip", "daddr"),
            (true, true) => ("ip6", "saddr"),
            (true, false) => ("ip6", "daddr"),
        };
        let (local_port, peer_port) = if self.inbound {
            ("dport", "sport")
        } else {
            ("sport", "dport")
        };
        // The flags first: a segment they rule out is not looked up.
        let segments = match self.connections {
            Connections::All => "",
            Connections::New => "tcp flags & (syn | ack) == syn ",
            Connections::Established => "tcp flags & (syn | ack) != syn ",
        };
        let matched = match self.key {
            Key::Host => format!("{segments}{family} {peer} @{}", self.name()),
            Key::Port => format!(
                "{segments}{family} {peer} . th {local_port} @{}",
                self.name()
            ),
            Key::Flow => format!(
                "{segments}{family} {peer} . th {local_port} . th {peer_port} @{}",
                self.name()
            ),
        };
        let tcp_only = self.connections != Connections::All;
        match (self.mode, self.inbound) {
            (Mode::Drop, _) => vec![format!("{matched} drop")],
            (Mode::Reject, true) if tcp_only => vec![format!("{matched} reject with tcp reset")],
            // An inbound reject's RST leaves through this hook too.
            (Mode::Reject, false) if tcp_only => vec![
                format!("{matched} tcp flags & rst == rst accept"),
                format!("{matched} reject with tcp reset"),
            ],
            (Mode::Reject, true) => vec![
                format!("{matched} meta l4proto tcp reject with tcp reset"),
                format!("{matched} reject with icmpx type admin-prohibited"),
            ],
            // The RST or ICMP error that an inbound reject sends goes out
            // through this hook too: let it pass, or the peer hears nothing.
            (Mode::Reject, false) => vec![
                format!("{matched} tcp flags & rst == rst accept"),
                format!("{matched} meta l4proto {{ icmp, ipv6-icmp }} accept"),
                format!("{matched} meta l4proto tcp reject with tcp reset"),
                format!("{matched} reject with icmpx type admin-prohibited"),
            ],
        }
    }
}

/// The whole table, replacing any older one in the same transaction.
pub fn table_script(control_port: u16) -> String {
    let kinds = SetKind::all();
    let mut script = format!("table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n");
    for kind in &kinds {
        script.push_str(&kind.set_definition());
    }
    for inbound in [true, false] {
        let (chain, hook, lo, control) = if inbound {
            (
                "input",
                "input",
                "iifname",
                format!("tcp dport {control_port} accept"),
            )
        } else {
            (
                "output",
                "output",
                "oifname",
                format!("tcp sport {control_port} accept"),
            )
        };
        let _ = writeln!(
            script,
            "  chain {chain} {{\n    type filter hook {hook} priority -10; policy accept;\n    {lo} \"lo\" accept"
        );
        for control_too in [true, false] {
            if !control_too {
                let _ = writeln!(script, "    {control}");
            }
            for kind in kinds
                .iter()
                .filter(|kind| kind.inbound == inbound && kind.control_too == control_too)
            {
                for rule in kind.rules() {
                    let _ = writeln!(script, "    {rule}");
                }
            }
        }
        script.push_str("  }\n");
    }
    script.push_str("}\n");
    script
}

/// The (set, element) pairs an isolation consists of, each element in the
/// form nftables reads back ([`element_name`]).
fn elements(isolation: &Isolation) -> Vec<(String, String)> {
    let peers: Vec<Cidr> = match isolation.peer {
        Some(peer) => vec![peer],
        None => vec![Cidr::everything(false), Cidr::everything(true)],
    };
    let mut found = Vec::new();
    for inbound in [true, false] {
        let wanted = if inbound {
            isolation.direction.inbound()
        } else {
            isolation.direction.outbound()
        };
        if !wanted {
            continue;
        }
        for peer in &peers {
            let kind = SetKind {
                mode: isolation.mode,
                inbound,
                v6: peer.address.is_ipv6(),
                key: Key::of(isolation),
                connections: isolation.connections,
                control_too: isolation.include_control_channel,
            };
            let peer = address_name(*peer);
            let element = match (isolation.port, isolation.peer_port) {
                (Some(port), Some(peer_port)) => format!("{peer} . {port} . {peer_port}"),
                (Some(port), None) => format!("{peer} . {port}"),
                (None, _) => peer,
            };
            found.push((kind.name(), element));
        }
    }
    found
}

/// An address block as nftables shows it: its network, and a single
/// address without its prefix.
fn address_name(block: Cidr) -> String {
    let block = block.network();
    let full = if block.is_v6() { 128 } else { 32 };
    if block.prefix == full {
        block.address.to_string()
    } else {
        block.to_string()
    }
}

/// How an entry is named in reports: `set { element }`.
fn entry_name(set: &str, element: &str) -> String {
    format!("{set} {{ {element} }}")
}

/// One element's key from `nft -j` output (a string, a number, a prefix,
/// a range or a concatenation of these), in the form [`elements`] writes.
fn element_name(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Object(object) => {
            if let Some(inner) = object.get("elem") {
                return element_name(inner.get("val").unwrap_or(inner));
            }
            if let Some(prefix) = object.get("prefix") {
                let address = prefix.get("addr")?.as_str()?;
                let length = prefix.get("len")?.as_u64()?;
                return Some(format!("{address}/{length}"));
            }
            if let Some(Value::Array(ends)) = object.get("range") {
                let ends: Option<Vec<String>> = ends.iter().map(element_name).collect();
                return Some(ends?.join("-"));
            }
            if let Some(Value::Array(parts)) = object.get("concat") {
                let parts: Option<Vec<String>> = parts.iter().map(element_name).collect();
                return Some(parts?.join(" . "));
            }
            None
        }
        _ => None,
    }
}

/// Every entry of faultlab's table in `nft -j list table` output, named as
/// [`Firewall::entries`] names them, with the packets and bytes its
/// element's counter holds (`None` for an element without one); an element
/// nftables shows in a form not known here is named by its JSON text (it
/// still counts as in place).
pub fn listed_entries(json: &str) -> Result<BTreeMap<String, Option<Matched>>, FirewallError> {
    let listed: serde_json::Value = serde_json::from_str(json)
        .map_err(|error| FirewallError::Refused(format!("nft -j gave no JSON: {error}")))?;
    let mut found = BTreeMap::new();
    let objects = listed
        .get("nftables")
        .and_then(serde_json::Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for set in objects.iter().filter_map(|object| object.get("set")) {
        let name = set
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?");
        let elements = set
            .get("elem")
            .and_then(serde_json::Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for element in elements {
            let text = element_name(element).unwrap_or_else(|| element.to_string());
            found.insert(entry_name(name, &text), element_counter(element));
        }
    }
    Ok(found)
}

/// The counter of one element of `nft -j` output
/// (`{"elem": {"val": ..., "counter": {"packets": 3, "bytes": 87}}}`).
fn element_counter(element: &serde_json::Value) -> Option<Matched> {
    let counter = element.get("elem")?.get("counter")?;
    Some(Matched {
        packets: counter.get("packets")?.as_u64()?,
        bytes: counter.get("bytes")?.as_u64()?,
    })
}

/// The script that applies an isolation until its deadline.
pub fn add_script(isolation: &Isolation) -> String {
    let timeout_ms = isolation.deadline.as_millis().max(1);
    elements(isolation)
        .into_iter()
        .map(|(set, element)| {
            format!("add element {TABLE} {set} {{ {element} timeout {timeout_ms}ms }}\n")
        })
        .collect()
}

/// The scripts that lift an isolation, one element each (an element the
/// kernel already expired must not fail the others).
pub fn remove_scripts(isolation: &Isolation) -> Vec<String> {
    elements(isolation)
        .into_iter()
        .map(|(set, element)| format!("delete element {TABLE} {set} {{ {element} }}\n"))
        .collect()
}

/// The script that empties every set of the table in one transaction.
pub fn flush_script() -> String {
    SetKind::all()
        .into_iter()
        .map(|kind| format!("flush set {TABLE} {}\n", kind.name()))
        .collect()
}

/// nftables, through libnftables or the `nft` command ([`Nft`]).
pub struct Nftables {
    nft: Nft,
}

impl Nftables {
    /// Faultlab's table, its commands run by `nft`.
    pub fn new(nft: Nft) -> Self {
        Self { nft }
    }

    fn run(&self, args: &[&str], script: Option<&str>) -> Result<String, FirewallError> {
        self.nft.run(args, script).map_err(|error| match error {
            ToolError::CannotRun(why) => FirewallError::Unavailable(why),
            ToolError::Failed { said, .. } if said.contains("Operation not permitted") => {
                FirewallError::Unavailable(format!("nft needs CAP_NET_ADMIN (root): {said}"))
            }
            ToolError::Failed { said, .. } => FirewallError::Refused(said),
        })
    }

    /// Whether an error says the thing to delete is not there.
    fn is_missing(error: &FirewallError) -> bool {
        matches!(error, FirewallError::Refused(text) if text.contains("No such file or directory"))
    }
}

impl Firewall for Nftables {
    fn clean_up(&self) -> Result<Option<String>, FirewallError> {
        let listed = match self.run(&["list", "table", "inet", "faultlab"], None) {
            Ok(listed) => listed,
            Err(error) if Self::is_missing(&error) => return Ok(None),
            Err(error) => return Err(error),
        };
        let elements = listed.matches("expires").count();
        self.run(&["delete", "table", "inet", "faultlab"], None)?;
        Ok(Some(format!(
            "table {TABLE} with {elements} active isolation entries"
        )))
    }

    fn prepare(&self, control_port: u16) -> Result<(), FirewallError> {
        self.run(&["-f", "-"], Some(&table_script(control_port)))
            .map(drop)
    }

    fn add(&self, isolation: &Isolation) -> Result<(), FirewallError> {
        match self.run(&["-f", "-"], Some(&add_script(isolation))) {
            Ok(_) => Ok(()),
            Err(FirewallError::Refused(said))
                if said.contains("interval overlaps") || said.contains("File exists") =>
            {
                Err(FirewallError::Overlaps(said))
            }
            Err(error) => Err(error),
        }
    }

    fn entries(&self, isolation: &Isolation) -> Vec<String> {
        elements(isolation)
            .iter()
            .map(|(set, element)| entry_name(set, element))
            .collect()
    }

    fn in_place(&self) -> Result<BTreeSet<String>, FirewallError> {
        Ok(self.in_place_counted()?.into_keys().collect())
    }

    fn in_place_counted(&self) -> Result<BTreeMap<String, Option<Matched>>, FirewallError> {
        match self.run(&["-j", "list", "table", "inet", "faultlab"], None) {
            Ok(listed) => listed_entries(&listed),
            // No table: nothing of ours is in place.
            Err(error) if Self::is_missing(&error) => Ok(BTreeMap::new()),
            Err(error) => Err(error),
        }
    }

    fn in_place_of(
        &self,
        isolation: &Isolation,
    ) -> Result<BTreeMap<String, Option<Matched>>, FirewallError> {
        // Its sets alone: under an emulated CPU a set is read in 20 ms, the
        // table (96 sets and their rules) in 110 ms.
        let sets: BTreeSet<String> = elements(isolation)
            .into_iter()
            .map(|(set, _)| set)
            .collect();
        let mut found = BTreeMap::new();
        for set in sets {
            match self.run(&["-j", "list", "set", "inet", "faultlab", &set], None) {
                Ok(listed) => found.extend(listed_entries(&listed)?),
                Err(error) if Self::is_missing(&error) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(found)
    }

    fn cuts_arriving(&self, entry: &str) -> bool {
        // Sets are named MODE_WAY_...: drop_in_v4, reject_out_v6_port, ...
        entry.split('_').nth(1) == Some("in")
    }

    fn remove(&self, isolation: &Isolation) -> Result<(), FirewallError> {
        // Each element on its own: one already gone ("element does not
        // exist" for interval sets) must not keep the others. What is left
        // is read back by the caller; the first refusal is kept for it.
        let mut refused = None;
        for script in remove_scripts(isolation) {
            if let Err(error) = self.run(&["-f", "-"], Some(&script)) {
                refused.get_or_insert(error);
            }
        }
        refused.map_or(Ok(()), Err)
    }

    fn remove_at_once(&self, isolation: &Isolation) -> bool {
        // The usual heal, in one run of nft (each costs: 150 ms in an
        // emulated guest); deleting an element that is not there fails the
        // whole transaction, so a success says each one was in place.
        self.run(&["-f", "-"], Some(&remove_scripts(isolation).concat()))
            .is_ok()
    }

    fn remove_all(&self) -> Result<(), FirewallError> {
        self.run(&["-f", "-"], Some(&flush_script())).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolate::Direction;
    use std::time::Duration;

    fn isolation(direction: Direction, peer: Option<&str>, port: Option<u16>) -> Isolation {
        Isolation {
            id: "x".to_owned(),
            mode: Mode::Reject,
            peer: peer.and_then(Cidr::parse),
            port,
            peer_port: None,
            direction,
            connections: Connections::All,
            deadline: Duration::from_millis(2500),
            include_control_channel: false,
        }
    }

    #[test]
    fn the_control_port_is_exempt_before_the_ordinary_sets() {
        let script = table_script(7420);
        let input = &script
            [script.find("chain input").unwrap_or(0)..script.find("chain output").unwrap_or(0)];
        let exempt = input.find("tcp dport 7420 accept").unwrap_or(usize::MAX);
        assert!(input.find("@drop_in_v4_ctl drop").unwrap_or(usize::MAX) < exempt);
        assert!(exempt < input.find("@drop_in_v4 drop").unwrap_or(0));
        assert!(script.contains("tcp sport 7420 accept"));
        assert!(script.contains(
            "ip daddr . th sport @reject_out_v4_port meta l4proto tcp reject with tcp reset"
        ));
        assert!(script.starts_with("table inet faultlab\ndelete table inet faultlab\n"));
        assert_eq!(script.matches("  set ").count(), 96);
    }

    #[test]
    fn new_or_open_connections_are_told_apart_by_tcp_flags_before_the_lookup() {
        let mut attempts = isolation(Direction::In, Some("198.18.0.3"), None);
        attempts.connections = Connections::New;
        assert_eq!(
            add_script(&attempts),
            "add element inet faultlab reject_in_v4_new { 198.18.0.3 timeout 2500ms }\n"
        );
        let mut open = isolation(Direction::Out, None, Some(7000));
        open.connections = Connections::Established;
        assert_eq!(
            add_script(&open),
            "add element inet faultlab reject_out_v4_port_open { 0.0.0.0/0 . 7000 timeout 2500ms }\n\
             add element inet faultlab reject_out_v6_port_open { ::/0 . 7000 timeout 2500ms }\n"
        );
        let script = table_script(7420);
        let output = &script[script.find("chain output").unwrap_or(0)..];
        let exempt = output.find("tcp sport 7420 accept").unwrap_or(usize::MAX);
        let rules = [
            "tcp flags & (syn | ack) == syn ip saddr @reject_in_v4_new reject with tcp reset",
            "tcp flags & (syn | ack) != syn ip6 daddr . th sport @drop_out_v6_port_open drop",
            // An inbound reject's RST still leaves.
            "tcp flags & (syn | ack) != syn ip daddr @reject_out_v4_open tcp flags & rst == rst accept",
        ];
        for rule in rules {
            assert!(script.contains(rule), "{rule}");
        }
        // Never before the control channel's exemption.
        assert!(exempt < output.find("@drop_out_v4_new").unwrap_or(0));
    }

    #[test]
    fn a_whole_host_isolation_covers_both_families_and_directions() {
        let script = add_script(&isolation(Direction::Both, None, None));
        assert_eq!(
            script,
            "add element inet faultlab reject_in_v4 { 0.0.0.0/0 timeout 2500ms }\n\
             add element inet faultlab reject_in_v6 { ::/0 timeout 2500ms }\n\
             add element inet faultlab reject_out_v4 { 0.0.0.0/0 timeout 2500ms }\n\
             add element inet faultlab reject_out_v6 { ::/0 timeout 2500ms }\n"
        );
    }

    #[test]
    fn a_peer_and_port_isolation_is_one_element() {
        let one = isolation(Direction::In, Some("198.18.0.3"), Some(7000));
        assert_eq!(
            add_script(&one),
            "add element inet faultlab reject_in_v4_port { 198.18.0.3 . 7000 timeout 2500ms }\n"
        );
        assert_eq!(
            remove_scripts(&one),
            ["delete element inet faultlab reject_in_v4_port { 198.18.0.3 . 7000 }\n"]
        );
    }

    #[test]
    fn a_flow_isolation_matches_both_ports_in_each_direction() {
        let mut flow = isolation(Direction::Both, Some("198.18.1.2"), Some(7000));
        flow.peer_port = Some(45678);
        assert_eq!(
            add_script(&flow),
            "add element inet faultlab reject_in_v4_flow { 198.18.1.2 . 7000 . 45678 timeout 2500ms }\n\
             add element inet faultlab reject_out_v4_flow { 198.18.1.2 . 7000 . 45678 timeout 2500ms }\n"
        );
        let script = table_script(7420);
        assert!(script.contains("ip saddr . th dport . th sport @reject_in_v4_flow"));
        assert!(script.contains("ip daddr . th sport . th dport @reject_out_v4_flow"));
        assert!(script.contains("type ipv4_addr . inet_service . inet_service;"));
    }

    /// `nft -j list table inet faultlab` as nftables 1.0.6 printed it for
    /// elements added as the scripts above add them.
    const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "faultlab", "handle": 1}}, {"set": {"family": "inet", "name": "drop_in_v4", "table": "faultlab", "type": "ipv4_addr", "handle": 1, "flags": ["interval", "timeout"], "elem": [{"elem": {"val": {"prefix": {"addr": "198.18.1.0", "len": 24}}, "timeout": 60, "expires": 59, "counter": {"packets": 3, "bytes": 87}}}]}}, {"set": {"family": "inet", "name": "drop_in_v6", "table": "faultlab", "type": "ipv6_addr", "handle": 2, "flags": ["interval", "timeout"], "elem": [{"elem": {"val": {"prefix": {"addr": "::", "len": 0}}, "timeout": 60, "expires": 59}}]}}, {"set": {"family": "inet", "name": "drop_in_v4_port", "table": "faultlab", "type": ["ipv4_addr", "inet_service"], "handle": 3, "flags": ["interval", "timeout"], "elem": [{"elem": {"val": {"concat": ["198.18.0.3", 7000]}, "timeout": 60, "expires": 59}}]}}, {"set": {"family": "inet", "name": "drop_in_v4_flow", "table": "faultlab", "type": ["ipv4_addr", "inet_service", "inet_service"], "handle": 4, "flags": ["interval", "timeout"], "elem": [{"elem": {"val": {"concat": ["198.18.0.3", 7000, 45678]}, "timeout": 60, "expires": 59}}]}}, {"set": {"family": "inet", "name": "drop_out_v4", "table": "faultlab", "type": "ipv4_addr", "handle": 5, "flags": ["interval", "timeout"]}}]}"#;

    #[test]
    fn what_nftables_reads_back_is_named_as_the_isolations_name_their_entries()
    -> Result<(), FirewallError> {
        let counted = listed_entries(LISTED)?;
        assert_eq!(
            counted.get("drop_in_v4 { 198.18.1.0/24 }"),
            Some(&Some(Matched {
                packets: 3,
                bytes: 87
            }))
        );
        assert_eq!(counted.get("drop_in_v6 { ::/0 }"), Some(&None));
        let listed: BTreeSet<String> = counted.into_keys().collect();
        let firewall = Nftables::new(Nft::tool());
        assert!(firewall.cuts_arriving("drop_in_v4 { 198.18.1.0/24 }"));
        assert!(!firewall.cuts_arriving("reject_out_v6_port_open { ::/0 . 7000 }"));
        let mut isolations = vec![
            isolation(Direction::In, Some("198.18.1.77/24"), None),
            isolation(Direction::In, Some("198.18.0.3"), Some(7000)),
            isolation(Direction::In, Some("::/0"), None),
        ];
        let mut flow = isolation(Direction::In, Some("198.18.0.3"), Some(7000));
        flow.peer_port = Some(45678);
        isolations.push(flow);
        let mut named = BTreeSet::new();
        for one in &mut isolations {
            one.mode = Mode::Drop;
            named.extend(firewall.entries(one));
        }
        assert_eq!(listed, named);
        assert!(listed.contains("drop_in_v4_port { 198.18.0.3 . 7000 }"));
        assert!(listed_entries("not json").is_err());
        Ok(())
    }

    #[test]
    fn healing_everything_empties_every_set_in_one_transaction() {
        let script = flush_script();
        assert_eq!(script.lines().count(), 96);
        assert!(script.contains("flush set inet faultlab drop_in_v4\n"));
        assert!(script.contains("flush set inet faultlab reject_out_v6_flow_ctl\n"));
    }
}
