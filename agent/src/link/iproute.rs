//! Links through iproute2 (`ip link`); the watchdog is this executable run
//! as `faultlab-agent link-watchdog`, one detached process that sleeps, then
//! sets the link up (see [`watchdog_main`]).
//!
//! Setting a link down makes Linux flush every route through it, and bringing
//! it up brings back only the routes of its addresses: a static route
//! (`ip route add 198.19.0.0/16 via ...`) would be lost, and the host not
//! healed. So before a link goes down its routes and addresses are written
//! down (in a file, since the watchdog that may bring it up is another
//! process), and whoever brings it up puts back what is missing.

use super::{LinkControl, LinkError, LinkState, valid_interface};
use crate::timed::Watchdog;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `ip` commands; `exe` is the agent executable, run as the watchdog.
pub struct IpRoute {
    /// The agent executable.
    pub exe: std::path::PathBuf,
}

/// The watchdog process's whole life: wait, then bring the link up.
pub fn watchdog_main(interface: &str, after: Duration) -> Result<(), LinkError> {
    std::thread::sleep(after);
    IpRoute {
        exe: std::path::PathBuf::new(),
    }
    .set_up(interface)
}

fn ip(args: &[&str]) -> Result<String, LinkError> {
    crate::tool::run("ip", args, None).map_err(|error| LinkError::System(error.to_string()))
}

/// The interface that holds `address`, if any.
pub fn interface_holding(address: IpAddr) -> Result<Option<String>, LinkError> {
    let listed = ip(&["-o", "addr", "show"])?;
    let wanted = format!(" {address}/");
    Ok(listed
        .lines()
        .find(|line| line.contains(&wanted))
        .and_then(|line| line.split_whitespace().nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned()))
}

/// Make TCP forget what it learned of the paths through `interface` (its
/// per-destination cache, `ip tcp_metrics`, for the interface's networks).
/// A degraded path's round trip stays cached after the heal, and a new
/// connection's first retransmission timeout comes from it: measured on
/// the VM lab, a cached 1.26 s round trip put a 3 s TCP_USER_TIMEOUT's
/// ETIMEDOUT 7.3 s after the cut instead of 3.5 s.
pub fn forget_paths_via(interface: &str) -> Result<(), LinkError> {
    let listed = ip(&["-o", "addr", "show", "dev", interface])?;
    for line in listed.lines() {
        let mut words = line.split_whitespace();
        let family = words.nth(2);
        let prefix = words.next();
        if let (Some("inet" | "inet6"), Some(prefix)) = (family, prefix) {
            ip(&["tcp_metrics", "flush", prefix])?;
        }
    }
    Ok(())
}

/// A watchdog that is a detached process of this executable: it sleeps,
/// then undoes a fault (links, degradations).
pub struct Sleeper {
    child: Child,
}

impl Sleeper {
    /// Start `exe ARGS...` detached, in its own process group (a Ctrl-C or
    /// SIGTERM to the agent's group spares it). It writes to the agent's
    /// log (its stderr: the journal under systemd): its audit entry when it
    /// heals, and why, when it cannot.
    pub fn start(exe: &std::path::Path, args: &[&str]) -> std::io::Result<Self> {
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        Ok(Self { child })
    }
}

impl Watchdog for Sleeper {
    fn disarm(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// Where the routes and addresses of `interface` are kept while it is down:
/// one file per network namespace (hosts of a namespace lab share /tmp).
fn snapshot_path(interface: &str) -> std::path::PathBuf {
    crate::keep::dir().join(format!("{}{interface}", snapshot_prefix()))
}

/// The start of the names of this network namespace's records.
fn snapshot_prefix() -> String {
    use std::os::unix::fs::MetadataExt;
    let namespace = std::fs::metadata("/proc/self/ns/net").map_or(0, |meta| meta.ino());
    format!("faultlab-link-{namespace}-")
}

/// What `interface` carries that a down and up would lose: its routes
/// (`route ...` / `-6 route ...` lines) and global addresses (`addr ...`).
fn snapshot(interface: &str) -> Result<String, LinkError> {
    let mut kept = String::new();
    for family in ["-4", "-6"] {
        for route in ip(&[family, "route", "show", "dev", interface])?.lines() {
            kept.push_str(&format!("{family} route {}\n", route.trim()));
        }
    }
    for line in ip(&["-o", "addr", "show", "dev", interface, "scope", "global"])?.lines() {
        let mut words = line
            .split_whitespace()
            .skip_while(|word| !word.starts_with("inet"));
        if let (Some(family), Some(address)) = (words.next(), words.next()) {
            let family = if family == "inet6" { "-6" } else { "-4" };
            kept.push_str(&format!("{family} addr {address}\n"));
        }
    }
    Ok(kept)
}

/// Whether the kernel says `interface` is administratively up (IFF_UP).
fn is_up(interface: &str) -> Result<bool, LinkError> {
    let path = format!("/sys/class/net/{interface}/flags");
    let flags = std::fs::read_to_string(&path)
        .map_err(|error| LinkError::System(format!("cannot read {path}: {error}")))?;
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
        .map_err(|error| LinkError::System(format!("{path}: {error}")))?;
    Ok(flags & 0x1 != 0)
}

/// The lines of a [`snapshot`] (`written`) missing from another (`now`),
/// words compared as sets of lines; routes the kernel makes for the link's
/// own addresses (`proto kernel`) come back by themselves and are left out.
fn not_back(written: &str, now: &str) -> Vec<String> {
    let normal = |line: &str| {
        line.split_whitespace()
            .filter(|word| *word != "linkdown")
            .collect::<Vec<_>>()
            .join(" ")
    };
    let now: std::collections::BTreeSet<String> = now.lines().map(normal).collect();
    written
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.contains("proto kernel"))
        .map(normal)
        .filter(|line| !now.contains(line))
        .collect()
}

/// Put back what [`snapshot`] wrote down and the link lost; the lines that
/// could not be put back.
fn restore(interface: &str, kept: &str) -> Vec<String> {
    let mut failed = Vec::new();
    // Routes of the link's own addresses come back by themselves, and are
    // not ours to write: `replace` of IPv6's `fe80::/64 proto kernel`
    // would take the same route of another interface (measured: eth0 lost
    // its link-local route to eth1 on a Debian host).
    for line in kept
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.contains("proto kernel"))
    {
        let mut args: Vec<&str> = line.split_whitespace().collect();
        // `ip -4 route show` adds a flag that is not an argument.
        args.retain(|word| *word != "linkdown");
        if args.get(1) == Some(&"route") || args.get(1) == Some(&"addr") {
            args.insert(2, "replace");
        }
        args.extend(["dev", interface]);
        if ip(&args).is_err() {
            failed.push(line.to_owned());
        }
    }
    failed
}

impl LinkControl for IpRoute {
    fn set_down(&self, interface: &str, left: Duration) -> Result<(), LinkError> {
        if !valid_interface(interface) {
            return Err(LinkError::BadName(interface.to_owned()));
        }
        let kept = snapshot_path(interface);
        let written = crate::keep::with_deadline(&snapshot(interface)?, left, interface);
        std::fs::write(&kept, written).map_err(|error| {
            LinkError::System(format!("cannot write {}: {error}", kept.display()))
        })?;
        ip(&["link", "set", "dev", interface, "down"])?;
        Ok(())
    }

    fn set_up(&self, interface: &str) -> Result<(), LinkError> {
        if !valid_interface(interface) {
            return Err(LinkError::BadName(interface.to_owned()));
        }
        let kept = snapshot_path(interface);
        ip(&["link", "set", "dev", interface, "up"])?;
        if !is_up(interface)? {
            return Err(LinkError::System(format!(
                "{interface} was set up, but reads back down"
            )));
        }
        if let Ok(record) = std::fs::read_to_string(&kept) {
            let written = crate::keep::read(&record).body;
            let failed = restore(interface, written);
            // Read back: every route and address written down is there again.
            let missing = not_back(written, &snapshot(interface)?);
            if !missing.is_empty() {
                // The record stays: a watchdog or a later heal tries again.
                return Err(LinkError::System(format!(
                    "{interface} is up, but these are not back: {}{}",
                    missing.join("; "),
                    if failed.is_empty() {
                        String::new()
                    } else {
                        format!(" (ip refused: {})", failed.join("; "))
                    }
                )));
            }
            let _ = std::fs::remove_file(&kept);
        }
        Ok(())
    }

    fn interface_of(&self, address: IpAddr) -> Result<Option<String>, LinkError> {
        interface_holding(address)
    }

    fn leftovers(&self) -> Vec<(String, Duration)> {
        crate::keep::records_of_interfaces(&snapshot_prefix())
            .into_iter()
            .map(|(interface, record)| {
                let left = crate::keep::read(&record).left;
                (interface, left)
            })
            .collect()
    }

    fn state(&self, interface: &str) -> Result<LinkState, LinkError> {
        let read =
            |what: &str| std::fs::read_to_string(format!("/sys/class/net/{interface}/{what}"));
        let operstate = read("operstate")
            .map_err(|error| LinkError::System(format!("{interface}: operstate: {error}")))?;
        Ok(LinkState {
            up: is_up(interface)?,
            // An interface that is down has no carrier to read (EINVAL).
            carrier: read("carrier").is_ok_and(|carrier| carrier.trim() == "1"),
            operstate: operstate.trim().to_owned(),
        })
    }

    fn arm(&self, interface: &str, after: Duration) -> Result<Box<dyn Watchdog>, LinkError> {
        if !valid_interface(interface) {
            return Err(LinkError::BadName(interface.to_owned()));
        }
        let millis = after.as_millis().to_string();
        let sleeper =
            Sleeper::start(&self.exe, &["link-watchdog", interface, &millis]).map_err(|error| {
                LinkError::System(format!("cannot start the link watchdog: {error}"))
            })?;
        Ok(Box::new(sleeper))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_that_did_not_come_back_is_named() {
        let written = "-4 route default via 198.18.1.1\n-4 route 198.18.1.0/24 proto kernel scope link src 198.18.1.11\n-4 addr 198.18.1.11/24\n";
        let now = "-4 route 198.18.1.0/24 proto kernel scope link src 198.18.1.11 linkdown\n-4 addr 198.18.1.11/24\n";
        assert_eq!(not_back(written, now), ["-4 route default via 198.18.1.1"]);
        let back = "-4 route default via 198.18.1.1 linkdown\n-4 addr 198.18.1.11/24\n";
        assert!(not_back(written, back).is_empty());
    }
}
