//! Degradations through `tc` (iproute2): the interface's root becomes a
//! two-band `prio` whose every priority goes to band 2 (untouched), and a
//! `u32` filter sends the selected packets to band 1, where `netem` does the
//! damage; a filter before it keeps the agent's own gRPC replies in band 2,
//! so a host whose control channel shares the interface stays reachable. The root it had is written down first (one file per network
//! namespace and interface), put back on heal, and compared with what is
//! there after. The watchdog is this executable run as `faultlab-agent
//! degrade-watchdog`.

use super::{Cidr, DegradeError, Earlier, Healed, Impairment, Selection, Shaper};
use crate::link::iproute::Sleeper;
use crate::link::valid_interface;
use crate::timed::Watchdog;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `tc` commands; `exe` is the agent executable, run as the watchdog.
pub struct Tc {
    /// The agent executable.
    pub exe: PathBuf,
    /// The agent's gRPC port, never degraded.
    pub control_port: u16,
}

/// The watchdog process's whole life: wait, then heal.
pub fn watchdog_main(interface: &str, after: Duration) -> Result<(), DegradeError> {
    std::thread::sleep(after);
    Tc {
        exe: PathBuf::new(),
        control_port: 0,
    }
    .heal(interface)
    .map(drop)
}

/// Whether this kernel can degrade: really try netem on a veth pair made
/// for the purpose (and removed). Why not, if not.
pub fn probe() -> Result<(), String> {
    let name = format!("fldp{}", std::process::id() % 100_000);
    let peer = format!("fldq{}", std::process::id() % 100_000);
    run(
        "ip",
        &["link", "add", &name, "type", "veth", "peer", "name", &peer],
    )
    .map_err(|error| format!("cannot make an interface to try netem on: {error}"))?;
    let tried = run(
        "tc",
        &[
            "qdisc", "add", "dev", &name, "root", "netem", "delay", "1ms",
        ],
    );
    let _ = run("ip", &["link", "del", &name]);
    tried.map(drop).map_err(|error| {
        if error.contains("qdisc kind is unknown") {
            format!("this kernel has no sch_netem ({error})")
        } else {
            error
        }
    })
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    Ok(crate::tool::run(program, args, None)?)
}

fn tc(args: &[&str]) -> Result<String, DegradeError> {
    run("tc", args).map_err(DegradeError::System)
}

/// Where the root qdisc of `interface` is kept while it is degraded.
fn snapshot_dir_prefix() -> String {
    use std::os::unix::fs::MetadataExt;
    let namespace = std::fs::metadata("/proc/self/ns/net").map_or(0, |meta| meta.ino());
    format!("faultlab-degrade-{namespace}-")
}

fn snapshot_path(interface: &str) -> PathBuf {
    crate::keep::dir().join(format!("{}{interface}", snapshot_dir_prefix()))
}

/// The root qdisc line of `tc qdisc show dev X root`, as a comparable form:
/// its kind, handle and parameters, without `refcnt N`.
fn root_form(shown: &str) -> String {
    let line = shown.lines().next().unwrap_or_default();
    let mut words: Vec<&str> = line.split_whitespace().collect();
    if let Some(at) = words.iter().position(|word| *word == "refcnt") {
        words.drain(at..(at + 2).min(words.len()));
    }
    words.join(" ")
}

/// Whether the root read back (`after`) is the one written down
/// (`before`). One the kernel made (handle `0:`) is back when the kernel's
/// is there again, whichever: an interface that is down (its link pulled
/// by another fault) shows `noop` until it is up, when the kernel attaches
/// its default again.
fn root_is_back(before: &str, after: &str) -> bool {
    // tc lists no root at all for a down interface's noop.
    let after = if after.is_empty() {
        "qdisc noop 0: root"
    } else {
        after
    };
    let handle = |form: &str| form.split_whitespace().nth(2).map(str::to_owned);
    after == before || (handle(before).as_deref() == Some("0:") && handle(after) == handle(before))
}

/// The commands that put back a root written down as `form`: nothing for
/// one the kernel made itself (handle `0:`: it comes back on its own once
/// ours is deleted), else the same kind with the same handle and
/// parameters.
fn recreate(form: &str) -> Option<Vec<String>> {
    let words: Vec<&str> = form.split_whitespace().collect();
    // "qdisc KIND HANDLE root PARAMS..."
    let (kind, handle) = (words.get(1)?, words.get(2)?);
    if *handle == "0:" {
        return None;
    }
    let mut args: Vec<String> = [
        "qdisc", "replace", "dev", "{dev}", "root", "handle", handle, kind,
    ]
    .iter()
    .map(|word| (*word).to_owned())
    .collect();
    args.extend(words.iter().skip(4).map(|word| (*word).to_owned()));
    Some(args)
}

/// The netem qdisc's counters in `tc -s qdisc show` output: packets sent
/// on, packets dropped.
fn netem_counters(shown: &str) -> (u64, u64) {
    let mut lines = shown
        .lines()
        .skip_while(|line| !line.starts_with("qdisc netem 10:"));
    let Some(sent) = lines.nth(1) else {
        return (0, 0);
    };
    // " Sent 1234 bytes 12 pkt (dropped 3, overlimits 0 requeues 0)"
    let words: Vec<&str> = sent
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .filter(|word| !word.is_empty())
        .collect();
    let after = |name: &str, offset: usize| {
        words
            .iter()
            .position(|word| *word == name)
            .and_then(|at| words.get(at + offset))
            .and_then(|word| word.parse().ok())
            .unwrap_or(0)
    };
    (after("bytes", 1), after("dropped", 1))
}

/// The `u32` filter's matches for `selection` (every packet when empty).
fn matches(selection: &Selection) -> (&'static str, Vec<String>) {
    let mut protocol = "ip";
    let mut found = Vec::new();
    if selection.peer.is_some_and(Cidr::is_v6) {
        protocol = "ipv6";
    }
    let family = if protocol == "ipv6" { "ip6" } else { "ip" };
    if let Some(peer) = selection.peer {
        found.extend(["match", family, "dst", &peer.network().to_string()].map(String::from));
    }
    for (field, port) in [
        ("sport", selection.local_port),
        ("dport", selection.peer_port),
    ] {
        if let Some(port) = port {
            found.extend(["match", family, field, &port.to_string(), "0xffff"].map(String::from));
        }
    }
    if selection.connection_attempts {
        // TCP, flags SYN without ACK. The flags' offset assumes an IPv4
        // header without options (checked: IHL 5, as every SYN Linux and
        // Windows send) or an IPv6 header followed directly by TCP.
        let (protocol_match, flags_at): (&[&str], &str) = if family == "ip6" {
            (&["match", "ip6", "protocol", "6", "0xff"], "53")
        } else {
            (
                &[
                    "match", "ip", "protocol", "6", "0xff", "match", "u8", "0x05", "0x0f", "at",
                    "0",
                ],
                "33",
            )
        };
        found.extend(protocol_match.iter().map(|word| (*word).to_owned()));
        found.extend(["match", "u8", "0x02", "0x12", "at", flags_at].map(String::from));
    }
    if found.is_empty() {
        found.extend(["match", "u32", "0", "0"].map(String::from));
    }
    (protocol, found)
}

impl Tc {
    fn apply(
        &self,
        interface: &str,
        impairment: &Impairment,
        selection: &Selection,
    ) -> Result<(), DegradeError> {
        let priomap = ["1"; 16];
        let mut root = vec![
            "qdisc", "replace", "dev", interface, "root", "handle", "1:", "prio", "bands", "2",
            "priomap",
        ];
        root.extend(priomap);
        tc(&root)?;
        let netem = super::netem_arguments(impairment);
        let mut damage = vec![
            "qdisc", "add", "dev", interface, "parent", "1:1", "handle", "10:", "netem", "limit",
            "100000",
        ];
        damage.extend(netem.iter().map(String::as_str));
        tc(&damage)?;
        if self.control_port != 0 {
            let port = self.control_port.to_string();
            // One protocol per filter priority: IPv4's at 1, IPv6's at 2.
            for (priority, protocol, family) in [("1", "ip", "ip"), ("2", "ipv6", "ip6")] {
                tc(&[
                    "filter", "add", "dev", interface, "parent", "1:", "protocol", protocol,
                    "prio", priority, "u32", "match", family, "sport", &port, "0xffff", "flowid",
                    "1:2",
                ])?;
            }
        }
        let (protocol, found) = matches(selection);
        let mut filter = vec![
            "filter", "add", "dev", interface, "parent", "1:", "protocol", protocol, "prio", "3",
            "u32",
        ];
        filter.extend(found.iter().map(String::as_str));
        filter.extend(["flowid", "1:1"]);
        tc(&filter)?;
        Ok(())
    }
}

impl Shaper for Tc {
    fn mechanism(&self) -> &'static str {
        "tc netem (prio + u32 filter)"
    }

    fn cannot(&self, _impairment: &Impairment, selection: &Selection) -> Option<String> {
        selection
            .inbound
            .then(|| "netem shapes what an interface sends, not what it receives".to_owned())
    }

    fn degrade(
        &self,
        id: &str,
        interface: &str,
        impairment: &Impairment,
        selection: &Selection,
        deadline: Duration,
    ) -> Result<String, DegradeError> {
        let kept = snapshot_path(interface);
        if kept.exists() {
            return Err(DegradeError::AlreadyDegraded(interface.to_owned()));
        }
        let before = root_form(&tc(&["qdisc", "show", "dev", interface, "root"])?);
        let record = crate::keep::with_deadline(&before, deadline, id);
        std::fs::write(&kept, record).map_err(|error| {
            DegradeError::System(format!("cannot write {}: {error}", kept.display()))
        })?;
        if let Err(error) = self.apply(interface, impairment, selection) {
            let _ = self.heal(interface);
            return Err(error);
        }
        tc(&["-s", "qdisc", "show", "dev", interface])
    }

    fn heal(&self, interface: &str) -> Result<Healed, DegradeError> {
        let kept = snapshot_path(interface);
        let record = std::fs::read_to_string(&kept)
            .map_err(|_| DegradeError::NotDegraded(interface.to_owned()))?;
        let before = crate::keep::read(&record).body;
        let counters = tc(&["-s", "qdisc", "show", "dev", interface]).unwrap_or_default();
        // Ours goes (a root the kernel made comes back by itself) ... If it
        // is gone already (removed by hand), the read-back below decides.
        let deleted = tc(&["qdisc", "del", "dev", interface, "root"]);
        // ... and one someone had set is put back as it was.
        if let Some(args) = recreate(before) {
            let args: Vec<&str> = args
                .iter()
                .map(|word| {
                    if word == "{dev}" {
                        interface
                    } else {
                        word.as_str()
                    }
                })
                .collect();
            tc(&args)?;
        }
        let after = root_form(&tc(&["qdisc", "show", "dev", interface, "root"])?);
        if !root_is_back(before, &after) {
            return Err(DegradeError::System(format!(
                "{interface} is not healed: its root qdisc was {before:?} and is {after:?}{}",
                deleted
                    .err()
                    .map_or_else(String::new, |error| format!(" (tc said: {error})"))
            )));
        }
        if let Err(error) = deleted {
            tracing::warn!(%interface, %error, "the degradation's qdisc was gone already");
        }
        let _ = std::fs::remove_file(&kept);
        // What TCP learned of the degraded path goes with it.
        crate::link::iproute::forget_paths_via(interface)
            .map_err(|error| DegradeError::System(error.to_string()))?;
        let (sent, dropped) = netem_counters(&counters);
        Ok(Healed {
            report: counters,
            sent,
            dropped,
        })
    }

    fn arm(&self, interface: &str, after: Duration) -> Result<Box<dyn Watchdog>, DegradeError> {
        if !valid_interface(interface) {
            return Err(DegradeError::Invalid(format!(
                "interface {interface:?} is not a valid interface name"
            )));
        }
        let millis = after.as_millis().to_string();
        let sleeper = Sleeper::start(&self.exe, &["degrade-watchdog", interface, &millis])
            .map_err(|error| {
                DegradeError::System(format!("cannot start the degradation watchdog: {error}"))
            })?;
        Ok(Box::new(sleeper))
    }

    fn interface_of(&self, address: IpAddr) -> Result<Option<String>, DegradeError> {
        crate::link::iproute::interface_holding(address)
            .map_err(|error| DegradeError::System(error.to_string()))
    }

    fn leftovers(&self) -> Vec<Earlier> {
        crate::keep::records_of_interfaces(&snapshot_dir_prefix())
            .into_iter()
            .map(|(interface, record)| {
                let kept = crate::keep::read(&record);
                Earlier {
                    left: kept.left,
                    id: Some(kept.id.to_owned()).filter(|id| !id.is_empty()),
                    interface,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_is_compared_without_its_reference_count() {
        assert_eq!(
            root_form("qdisc fq 8001: root refcnt 2 limit 10000p flow_limit 100p\n"),
            "qdisc fq 8001: root limit 10000p flow_limit 100p"
        );
        assert_eq!(
            root_form("qdisc noqueue 0: root refcnt 2 \n"),
            "qdisc noqueue 0: root"
        );
    }

    #[test]
    fn a_root_the_kernel_made_comes_back_by_itself_one_set_by_hand_is_put_back() {
        assert_eq!(recreate("qdisc noqueue 0: root"), None);
        assert_eq!(recreate("qdisc fq_codel 0: root limit 10240p"), None);
        assert_eq!(
            recreate("qdisc tbf 8003: root rate 10Mbit burst 32Kb lat 50ms")
                .map(|args| args.join(" ")),
            Some(
                "qdisc replace dev {dev} root handle 8003: tbf rate 10Mbit burst 32Kb lat 50ms"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_kernel_root_is_back_whichever_the_kernel_attached() {
        let before = "qdisc fq_codel 0: root limit 10240p flows 1024";
        assert!(root_is_back(before, before));
        // The interface is down: the kernel shows noop until it is up.
        assert!(root_is_back(before, "qdisc noop 0: root"));
        assert!(root_is_back(before, ""));
        assert!(!root_is_back(before, "qdisc prio 1: root bands 2"));
        let set_by_hand = "qdisc tbf 8003: root rate 10Mbit";
        assert!(root_is_back(set_by_hand, set_by_hand));
        assert!(!root_is_back(set_by_hand, "qdisc noop 0: root"));
        assert!(!root_is_back(set_by_hand, ""));
    }

    #[test]
    fn netems_counters_are_read_from_its_own_lines() {
        let shown = "qdisc prio 1: root refcnt 2 bands 2 priomap 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1
 Sent 5000 bytes 50 pkt (dropped 7, overlimits 0 requeues 0)
 backlog 0b 0p requeues 0
qdisc netem 10: parent 1:1 limit 100000 loss 10%
 Sent 123456 bytes 902 pkt (dropped 98, overlimits 0 requeues 0)
 backlog 0b 0p requeues 0
";
        assert_eq!(netem_counters(shown), (902, 98));
        assert_eq!(netem_counters("qdisc noqueue 0: root refcnt 2\n"), (0, 0));
    }

    #[test]
    fn the_filter_selects_the_peer_and_port_or_everything() {
        let (protocol, all) = matches(&Selection::default());
        assert_eq!(
            (protocol, all.join(" ")),
            ("ip", "match u32 0 0".to_owned())
        );
        let selection = Selection {
            inbound: false,
            peer: Cidr::parse("198.18.1.11"),
            local_port: Some(7000),
            peer_port: None,
            connection_attempts: false,
        };
        let (protocol, some) = matches(&selection);
        assert_eq!(
            (protocol, some.join(" ")),
            (
                "ip",
                "match ip dst 198.18.1.11/32 match ip sport 7000 0xffff".to_owned()
            )
        );
        // A network (its host bits cleared), one flow, IPv6.
        let flow = Selection {
            peer: Cidr::parse("198.18.1.77/24"),
            peer_port: Some(40000),
            ..selection.clone()
        };
        assert_eq!(
            matches(&flow).1.join(" "),
            "match ip dst 198.18.1.0/24 match ip sport 7000 0xffff match ip dport 40000 0xffff"
        );
        let v6 = Selection {
            peer: Cidr::parse("2001:db8::1/64"),
            ..Selection::default()
        };
        assert_eq!(
            (matches(&v6).0, matches(&v6).1.join(" ")),
            ("ipv6", "match ip6 dst 2001:db8::/64".to_owned())
        );
        let attempts = Selection {
            connection_attempts: true,
            ..Selection::default()
        };
        assert_eq!(
            matches(&attempts).1.join(" "),
            "match ip protocol 6 0xff match u8 0x05 0x0f at 0 match u8 0x02 0x12 at 33"
        );
        let attempts_v6 = Selection {
            peer: Cidr::parse("2001:db8::1"),
            ..attempts
        };
        assert_eq!(
            matches(&attempts_v6).1.join(" "),
            "match ip6 dst 2001:db8::1/128 match ip6 protocol 6 0xff match u8 0x02 0x12 at 53"
        );
    }
}
