//! The Windows backend: Windows Defender Firewall rules in a group of
//! faultlab's own (`faultlab`), made with PowerShell's NetSecurity cmdlets;
//! no other rule is touched.
//!
//! Differences from Linux, said plainly:
//! - Windows Firewall drops; it cannot answer with RST, so `reject` is refused.
//! - It matches no TCP flags, so a cut of only new or only open connections
//!   is refused.
//! - Block rules win over allow rules, so the control port is exempted by
//!   leaving it out of the blocked TCP port ranges.
//! - No kernel deadline: each isolation arms a detached watchdog process
//!   (`faultlab-agent isolation-watchdog ID MILLIS`) that removes its rules at
//!   the deadline, even if the agent is gone.
//!
//! Every value in a script comes from validated types (ids of a safe
//! alphabet, addresses, numbers), never from raw request strings.

use super::{Connections, Firewall, FirewallError, Isolation, Mode};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The rule group faultlab owns.
pub const GROUP: &str = "faultlab";

fn powershell(script: &str) -> Result<String, FirewallError> {
    let output = Command::new("powershell")
        .args(["-NoProfile", "-NonInteractive", "-Command", script])
        .output()
        .map_err(|error| FirewallError::Unavailable(format!("cannot run powershell: {error}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if output.status.success() && stderr.is_empty() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else if stderr.contains("Access is denied") {
        Err(FirewallError::Unavailable(format!(
            "firewall changes need an administrator: {stderr}"
        )))
    } else {
        Err(FirewallError::Refused(stderr))
    }
}

/// The rule names of an isolation start with this.
fn rule_prefix(id: &str) -> String {
    format!("faultlab-{id}-")
}

/// Remove every rule of isolation `id` (the watchdog's job, and heal's).
pub fn remove_rules(id: &str) -> Result<(), FirewallError> {
    powershell(&format!(
        "Get-NetFirewallRule -Group '{GROUP}' -ErrorAction SilentlyContinue | \
         Where-Object {{ $_.DisplayName -like '{}*' }} | Remove-NetFirewallRule",
        rule_prefix(id)
    ))
    .map(drop)
}

/// The watchdog process's whole life: wait, then remove the rules.
pub fn watchdog_main(id: &str, after: Duration) -> Result<(), FirewallError> {
    std::thread::sleep(after);
    remove_rules(id)
}

/// TCP ports to block when `control_port` must stay open.
fn ports_without(control_port: u16) -> String {
    match control_port {
        0 => "Any".to_owned(),
        1 => "2-65535".to_owned(),
        65535 => "1-65534".to_owned(),
        port => format!("1-{},{}-65535", port - 1, port + 1),
    }
}

/// The PowerShell that makes an isolation's rules.
pub fn add_script(isolation: &Isolation, control_port: u16) -> String {
    rules(isolation, control_port)
        .into_iter()
        .map(|(_, command)| command)
        .collect::<Vec<_>>()
        .join("; ")
}

/// An isolation's rules: (display name, the command that makes it).
fn rules(isolation: &Isolation, control_port: u16) -> Vec<(String, String)> {
    let remote = isolation
        .peer
        .map_or_else(|| "Any".to_owned(), |peer| peer.to_string());
    let mut rules = Vec::new();
    for (wanted, direction, short) in [
        (isolation.direction.inbound(), "Inbound", "in"),
        (isolation.direction.outbound(), "Outbound", "out"),
    ] {
        if !wanted {
            continue;
        }
        let tcp_ports = match (isolation.port, isolation.include_control_channel) {
            (Some(port), _) => port.to_string(),
            (None, true) => "Any".to_owned(),
            (None, false) => ports_without(control_port),
        };
        let remote_port = isolation
            .peer_port
            .map_or_else(String::new, |port| format!(" -RemotePort {port}"));
        let mut protocols = vec![(
            "tcp",
            format!("-Protocol TCP -LocalPort {tcp_ports}{remote_port}"),
        )];
        match isolation.port {
            Some(port) => protocols.push((
                "udp",
                format!("-Protocol UDP -LocalPort {port}{remote_port}"),
            )),
            None => {
                protocols.push(("udp", "-Protocol UDP".to_owned()));
                protocols.push(("icmp4", "-Protocol ICMPv4".to_owned()));
                protocols.push(("icmp6", "-Protocol ICMPv6".to_owned()));
            }
        }
        for (protocol, matching) in protocols {
            let name = format!("{}{short}-{protocol}", rule_prefix(&isolation.id));
            let command = format!(
                "New-NetFirewallRule -Group '{GROUP}' -DisplayName '{name}' \
                 -Direction {direction} -Action Block -RemoteAddress {remote} {matching} | Out-Null"
            );
            rules.push((name, command));
        }
    }
    rules
}

/// Windows Defender Firewall through PowerShell.
pub struct WindowsFirewall {
    exe: PathBuf,
    control_port: Mutex<u16>,
    watchdogs: Mutex<HashMap<String, Child>>,
}

impl WindowsFirewall {
    /// `exe` is the agent executable, run as the watchdog.
    pub fn new(exe: PathBuf) -> Self {
        Self {
            exe,
            control_port: Mutex::new(0),
            watchdogs: Mutex::new(HashMap::new()),
        }
    }
}

impl Firewall for WindowsFirewall {
    fn clean_up(&self) -> Result<Option<String>, FirewallError> {
        let count = powershell(&format!(
            "@(Get-NetFirewallRule -Group '{GROUP}' -ErrorAction SilentlyContinue).Count"
        ))?;
        let count: usize = count.trim().parse().unwrap_or(0);
        if count == 0 {
            return Ok(None);
        }
        powershell(&format!(
            "Get-NetFirewallRule -Group '{GROUP}' | Remove-NetFirewallRule"
        ))?;
        Ok(Some(format!("{count} firewall rules of group {GROUP}")))
    }

    fn prepare(&self, control_port: u16) -> Result<(), FirewallError> {
        powershell("Get-Command New-NetFirewallRule | Out-Null")?;
        *crate::sync::lock(&self.control_port) = control_port;
        Ok(())
    }

    fn add(&self, isolation: &Isolation) -> Result<(), FirewallError> {
        if isolation.mode == Mode::Reject {
            return Err(FirewallError::Refused(
                "Windows Firewall can only drop; reject (RST) is not available on Windows"
                    .to_owned(),
            ));
        }
        if isolation.connections != Connections::All {
            return Err(FirewallError::Refused(
                "Windows Firewall does not match TCP flags or connection state; only every connection (connections = all) can be cut on Windows"
                    .to_owned(),
            ));
        }
        let control_port = *crate::sync::lock(&self.control_port);
        // Arm first: once the rules exist, they must go whatever happens.
        let watchdog = Command::new(&self.exe)
            .args([
                "isolation-watchdog",
                &isolation.id,
                &isolation.deadline.as_millis().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // The agent's log: its audit entry when it heals.
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| {
                FirewallError::Unavailable(format!("cannot start the watchdog: {error}"))
            })?;
        crate::sync::lock(&self.watchdogs).insert(isolation.id.clone(), watchdog);
        powershell(&add_script(isolation, control_port)).map(drop)
    }

    fn entries(&self, isolation: &Isolation) -> Vec<String> {
        let control_port = *crate::sync::lock(&self.control_port);
        rules(isolation, control_port)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    fn cuts_arriving(&self, entry: &str) -> bool {
        // Rules are named faultlab-ID-in-PROTOCOL / faultlab-ID-out-PROTOCOL.
        entry.contains("-in-")
    }

    fn in_place(&self) -> Result<BTreeSet<String>, FirewallError> {
        let listed = powershell(&format!(
            "Get-NetFirewallRule -Group '{GROUP}' -ErrorAction SilentlyContinue | \
             ForEach-Object {{ $_.DisplayName }}"
        ))?;
        Ok(listed
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect())
    }

    fn remove(&self, isolation: &Isolation) -> Result<(), FirewallError> {
        remove_rules(&isolation.id)?;
        // Its watchdog goes only once its rules are gone: until then it
        // still keeps the deadline.
        let names = self.entries(isolation);
        if self.in_place()?.iter().any(|name| names.contains(name)) {
            return Ok(());
        }
        let watchdog = crate::sync::lock(&self.watchdogs).remove(&isolation.id);
        if let Some(mut watchdog) = watchdog {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        Ok(())
    }

    fn remove_all(&self) -> Result<(), FirewallError> {
        powershell(&format!(
            "Get-NetFirewallRule -Group '{GROUP}' -ErrorAction SilentlyContinue | Remove-NetFirewallRule"
        ))?;
        if self.in_place()?.is_empty() {
            let watchdogs: Vec<Child> = crate::sync::lock(&self.watchdogs)
                .drain()
                .map(|(_, watchdog)| watchdog)
                .collect();
            for mut watchdog in watchdogs {
                let _ = watchdog.kill();
                let _ = watchdog.wait();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolate::{Cidr, Direction};

    fn isolation(port: Option<u16>, include_control_channel: bool) -> Isolation {
        Isolation {
            id: "cut".to_owned(),
            mode: Mode::Drop,
            peer: Cidr::parse("198.18.0.3"),
            port,
            peer_port: None,
            direction: Direction::Both,
            connections: Connections::All,
            deadline: Duration::from_secs(2),
            include_control_channel,
        }
    }

    #[test]
    fn the_control_port_is_left_out_of_the_blocked_ranges() {
        assert_eq!(ports_without(7420), "1-7419,7421-65535");
        assert_eq!(ports_without(1), "2-65535");
        let script = add_script(&isolation(None, false), 7420);
        assert_eq!(script.matches("New-NetFirewallRule").count(), 8, "{script}");
        assert!(script.contains("-DisplayName 'faultlab-cut-in-tcp' -Direction Inbound -Action Block -RemoteAddress 198.18.0.3/32 -Protocol TCP -LocalPort 1-7419,7421-65535"), "{script}");
        assert!(
            script.contains("-DisplayName 'faultlab-cut-out-icmp6'"),
            "{script}"
        );
    }

    #[test]
    fn a_port_isolation_or_one_that_includes_the_control_channel_blocks_as_asked() {
        let one_port = add_script(&isolation(Some(7000), false), 7420);
        assert_eq!(
            one_port.matches("New-NetFirewallRule").count(),
            4,
            "{one_port}"
        );
        assert!(one_port.contains("-Protocol TCP -LocalPort 7000"));
        let everything = add_script(&isolation(None, true), 7420);
        assert!(everything.contains("-Protocol TCP -LocalPort Any"));
    }

    #[test]
    fn a_cut_of_only_new_or_only_open_connections_is_refused_with_the_reason() {
        let firewall = WindowsFirewall::new(PathBuf::from("faultlab-agent.exe"));
        let mut cut = isolation(None, false);
        cut.connections = Connections::New;
        let Err(FirewallError::Refused(why)) = firewall.add(&cut) else {
            panic!("a cut by TCP flags was not refused");
        };
        assert!(why.contains("TCP flags"), "{why}");
    }
}
