//! What a lab does to one of its hosts from outside it, the way it happens
//! in the world: a cable pulled at the switch side (the host's interface
//! stays up and loses its carrier), a power cut (no shutdown, not one more
//! packet), and both given back. An agent can only take its own link down
//! (an admin down, which the kernel treats differently) and reboot its host
//! cleanly; a lab that owns the switch port or the machine does better.
//!
//! A host's inventory entry says what its lab can reach ([`LabSide`]): on
//! the namespace lab the bridge end of its test veth, on the VM lab its
//! QEMU's QMP socket (the test NIC's link, the machine's power). Every
//! fault made here has a deadline kept by a [`watchdog`] process that
//! outlives the controller.

mod qmp;
pub mod watchdog;

use faultlab_proto::Capability;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What a host's lab can reach from outside it: inventory data (each
/// entry may carry it), acted on here.
pub use crate::inventory::LabSide;

/// A fault a lab makes from outside a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum OutsideFault {
    /// The test cable is out.
    Cable,
    /// The power is off.
    Power,
}

/// Why a lab could not make or undo a fault.
#[derive(Debug, thiserror::Error)]
pub enum OutsideError {
    /// The host's lab cannot reach what the fault needs.
    #[error("this host's lab cannot cut its {0} (only a VM lab cuts power)")]
    Cannot(&'static str),
    /// The switch port or the VM did not do it.
    #[error("{0}")]
    Failed(String),
    /// The switch port or QMP socket is not one a faultlab lab made.
    #[error("{0}: a lab acts only on what it made")]
    NotOurs(String),
    /// The deadline is over the cap every fault has.
    #[error("a deadline of {0} ms is over the cap of {cap} ms every fault has", cap = crate::MAX_FAULT_MS)]
    OverCap(u128),
    /// No watchdog could be started, so the fault was not made.
    #[error(
        "no watchdog: {0} (a fault without one could outlive the controller; set FAULTLAB_EXE to the faultlab executable)"
    )]
    NoWatchdog(String),
}

/// How long a host whose cable is back gets to answer on its test network.
pub const LINK_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fresh QEMU may take to open its QMP socket.
const QMP_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt of that.
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// A port nobody listens on in a lab host (discard): its RST is the answer.
pub(crate) const DISCARD_PORT: u16 = 9;

/// Whether `name` can be a Linux interface name (1 to 15 characters, no
/// slash or space, not `.` or `..`): it is used in a /sys path.
fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.contains(['/', ' ', '\0'])
        && !name.chars().any(char::is_whitespace)
}

/// How an undone power cut says it found the machine running (left alone).
pub const POWER_WAS_ON: &str = "it was on";

/// Whether the kernel says interface `name` is administratively up.
fn admin_up(name: &str) -> Result<bool, OutsideError> {
    let path = format!("/sys/class/net/{name}/flags");
    let flags = std::fs::read_to_string(&path)
        .map_err(|error| OutsideError::Failed(format!("{path}: {error}")))?;
    u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
        .map(|flags| flags & IFF_UP != 0)
        .map_err(|error| OutsideError::Failed(format!("{path}: {flags:?}: {error}")))
}

/// The administratively-up bit of an interface's flags (linux/if.h).
const IFF_UP: u32 = 0x1;

/// The QEMU network device of a VM's test NIC (see `vm::Vm::launch`).
const VM_TEST_NIC: &str = "t";
/// ... and of its management NIC.
const VM_MANAGEMENT_NIC: &str = "m";

impl LabSide {
    /// Whether the lab can make `fault` on this host.
    pub fn can(&self, fault: OutsideFault) -> bool {
        match fault {
            OutsideFault::Cable => self.qmp.is_some() || self.switch_port.is_some(),
            OutsideFault::Power => self.qmp.is_some(),
        }
    }

    /// The capabilities it gives a host's agent in a scenario's eyes:
    /// `link` (a cable to pull) and `power`.
    pub fn capabilities(&self) -> Vec<Capability> {
        [
            (OutsideFault::Cable, Capability::Link),
            (OutsideFault::Power, Capability::Power),
        ]
        .into_iter()
        .filter(|(fault, _)| self.can(*fault))
        .map(|(_, capability)| capability)
        .collect()
    }

    /// Make `fault`, undone by a watchdog after `deadline` whatever becomes
    /// of this process; returns how it was made. Blocking.
    pub fn make(
        &self,
        fault: OutsideFault,
        deadline: Duration,
    ) -> Result<&'static str, OutsideError> {
        if !self.can(fault) {
            return Err(OutsideError::Cannot(fault.into()));
        }
        self.ours()?;
        if deadline.as_millis() > u128::from(crate::MAX_FAULT_MS) {
            return Err(OutsideError::OverCap(deadline.as_millis()));
        }
        watchdog::arm(self, fault, deadline)?;
        self.apply(fault, true).inspect_err(|_| {
            let _ = self.undo(fault);
        })
    }

    /// Undo `fault` now; returns how. Its watchdog is disarmed only once
    /// the undo is done: one that failed leaves it to try again at the
    /// deadline. Undoing what is not made does nothing. Blocking.
    pub fn undo(&self, fault: OutsideFault) -> Result<&'static str, OutsideError> {
        self.ours()?;
        let how = self.apply(fault, false)?;
        watchdog::disarm(self, fault);
        Ok(how)
    }

    /// Refuse a switch port or QMP socket that no faultlab lab made (an
    /// inventory could name any interface of this machine): a switch port
    /// must be a port of a lab's test bridge (`fl...tb`), a QMP socket one
    /// a lab's VM keeper serves.
    fn ours(&self) -> Result<(), OutsideError> {
        if let Some(socket) = &self.qmp
            && !qmp::served_by_a_lab(socket)
        {
            return Err(OutsideError::NotOurs(format!(
                "QMP socket {} is not served by a VM of a faultlab lab",
                socket.display()
            )));
        }
        if let Some(port) = &self.switch_port {
            let bridge = std::fs::read_link(format!("/sys/class/net/{port}/master"))
                .ok()
                .and_then(|master| Some(master.file_name()?.to_string_lossy().into_owned()));
            let test_bridge = bridge
                .as_deref()
                .is_some_and(|bridge| bridge.starts_with("fl") && bridge.ends_with("tb"));
            if !is_interface_name(port) || !test_bridge {
                return Err(OutsideError::NotOurs(format!(
                    "switch port {port:?} is not a port of a faultlab lab's test bridge (its bridge: {})",
                    bridge.as_deref().unwrap_or("none")
                )));
            }
        }
        Ok(())
    }

    /// Make (`cut`) or undo the fault.
    fn apply(&self, fault: OutsideFault, cut: bool) -> Result<&'static str, OutsideError> {
        match (fault, &self.qmp, &self.switch_port) {
            (OutsideFault::Cable, Some(socket), _) => {
                qmp::execute(socket, &[qmp::set_link(VM_TEST_NIC, !cut)])?;
                Ok(if cut {
                    "carrier lost: QMP set_link off on the VM's NIC"
                } else {
                    "carrier back: QMP set_link on"
                })
            }
            (OutsideFault::Cable, None, Some(port)) => {
                let state = if cut { "down" } else { "up" };
                crate::lab::ip::ip(&["link", "set", port, state])
                    .map_err(|error| OutsideError::Failed(error.to_string()))?;
                // Read back: `ip` answering is not the port being so.
                if admin_up(port)? == cut {
                    return Err(OutsideError::Failed(format!(
                        "switch port {port} was set {state}, but reads back {}",
                        if cut { "up" } else { "down" }
                    )));
                }
                Ok(if cut {
                    "carrier lost: the switch end of the host's veth down"
                } else {
                    "carrier back: the switch end up"
                })
            }
            (OutsideFault::Power, Some(socket), _) if cut => {
                // Frozen at once, and its NICs dark: nothing more leaves it,
                // and what arrives meanwhile is lost, not queued.
                qmp::execute(
                    socket,
                    &[
                        qmp::command("stop"),
                        qmp::set_link(VM_TEST_NIC, false),
                        qmp::set_link(VM_MANAGEMENT_NIC, false),
                    ],
                )?;
                Ok("QMP stop, its NICs unplugged")
            }
            (OutsideFault::Power, Some(socket), _) => {
                if qmp::running(socket)? {
                    return Ok(POWER_WAS_ON);
                }
                // The reset button while off: QEMU (run with -no-reboot)
                // ends, and the VM's keeper starts a fresh one, NICs
                // plugged: the guest starts from its firmware with empty
                // memory.
                qmp::execute(socket, &[qmp::command("system_reset")])?;
                // Read back: the fresh QEMU its keeper starts runs.
                let deadline = Instant::now() + QMP_READY_TIMEOUT;
                loop {
                    match qmp::running(socket) {
                        Ok(true) => break,
                        Ok(false) | Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(PROBE_TIMEOUT);
                        }
                        Ok(false) => {
                            return Err(OutsideError::Failed(format!(
                                "QMP {}: system_reset done, but the VM reads back not running",
                                socket.display()
                            )));
                        }
                        Err(error) => return Err(error),
                    }
                }
                Ok("QMP system_reset: a fresh QEMU, from its firmware")
            }
            _ => Err(OutsideError::Cannot(fault.into())),
        }
    }

    /// On a VM whose QEMU was started afresh (its guest reset): pull its
    /// cable again if it was pulled and is not yet due back (its watchdog
    /// still waits), as a reset does not plug a cable in. What it did.
    pub fn pulled_again(&self) -> Option<String> {
        let socket = self.qmp.as_ref()?;
        if !watchdog::armed(self, OutsideFault::Cable) {
            return None;
        }
        let deadline = Instant::now() + QMP_READY_TIMEOUT;
        loop {
            match qmp::execute(socket, &[qmp::set_link(VM_TEST_NIC, false)]) {
                Ok(_) => return Some("its cable is still out: unplugged again".to_owned()),
                Err(error) if Instant::now() > deadline => {
                    return Some(format!("its cable is still out, but: {error}"));
                }
                Err(_) => std::thread::sleep(PROBE_TIMEOUT),
            }
        }
    }

    /// Where the lab keeps this host's logs, each with its last `lines`
    /// lines (what a report says when the host's agent was lost); empty
    /// when the lab keeps none.
    pub fn last_words(&self, lines: usize) -> String {
        let mut said = String::new();
        for (what, path) in [("console", &self.console), ("agent log", &self.agent_log)] {
            let Some(path) = path else { continue };
            let text = std::fs::read(path)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            let all: Vec<&str> = text
                .lines()
                .filter(|line| !line.trim().is_empty())
                .collect();
            said.push_str(&format!("{what}: {}\n", path.display()));
            for line in &all[all.len().saturating_sub(lines)..] {
                said.push_str(&format!("  | {}\n", line.trim_end()));
            }
        }
        said
    }

    /// A short name of the host's reach, for the watchdog's command line.
    fn key(&self) -> String {
        match (&self.qmp, &self.switch_port) {
            (Some(socket), _) => socket.display().to_string(),
            (None, Some(port)) => port.clone(),
            (None, None) => String::new(),
        }
    }
}

/// Whether the host at `address` answers a connection attempt (a closed
/// port's RST is an answer) within `within`. A cable plugged back is not
/// at once a link that works: the host's kernel reactivates the queue of a
/// NIC whose carrier came back up to a second later, and a peer address it
/// failed to resolve meanwhile fails again until then. The lab's bridge
/// has an address on the test network, so this machine can ask.
pub fn answers(address: IpAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let target = SocketAddr::new(address, DISCARD_PORT);
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&target, PROBE_TIMEOUT) {
            Ok(_) => return true,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            Err(_) => std::thread::sleep(PROBE_TIMEOUT),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_host_offers_a_cable_and_a_vm_its_power_too() {
        let netns = LabSide {
            switch_port: Some("fllt0".to_owned()),
            ..LabSide::default()
        };
        let vm = LabSide {
            switch_port: None,
            qmp: Some("/run/faultlab-lab/vm-1.qmp".into()),
            ..LabSide::default()
        };
        assert_eq!(netns.capabilities(), [Capability::Link]);
        assert_eq!(vm.capabilities(), [Capability::Link, Capability::Power]);
        assert!(LabSide::default().capabilities().is_empty());
        assert!(matches!(
            netns.make(OutsideFault::Power, Duration::from_secs(1)),
            Err(OutsideError::Cannot("power"))
        ));
    }

    #[test]
    fn it_reads_and_writes_as_an_inventory_table() {
        let side = LabSide {
            switch_port: Some("fllt0".to_owned()),
            ..LabSide::default()
        };
        let text = toml::to_string(&side).expect("serializes");
        assert_eq!(text.trim(), "switch_port = \"fllt0\"");
        assert_eq!(toml::from_str::<LabSide>(&text).ok(), Some(side));
        assert!(toml::from_str::<LabSide>("power = 1").is_err());
    }
}
