//! Links through iproute2 (`ip link`); the watchdog is this executable run
//! as `faultlab-agent link-watchdog`, one detached process that sleeps, then
//! sets the link up (see [`watchdog_main`]).

use super::{LinkControl, LinkError, Watchdog, valid_interface};
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
    .set_up(interface, true)
}

fn ip(args: &[&str]) -> Result<String, LinkError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| LinkError::System(format!("cannot run ip: {error}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LinkError::System(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// A detached process that sleeps, then sets the link up.
struct Sleeper {
    child: Child,
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

impl LinkControl for IpRoute {
    fn set_up(&self, interface: &str, up: bool) -> Result<(), LinkError> {
        if !valid_interface(interface) {
            return Err(LinkError::BadName(interface.to_owned()));
        }
        ip(&[
            "link",
            "set",
            "dev",
            interface,
            if up { "up" } else { "down" },
        ])
        .map(drop)
    }

    fn interface_of(&self, address: IpAddr) -> Result<Option<String>, LinkError> {
        let listed = ip(&["-o", "addr", "show"])?;
        let wanted = format!(" {address}/");
        Ok(listed
            .lines()
            .find(|line| line.contains(&wanted))
            .and_then(|line| line.split_whitespace().nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned()))
    }

    fn arm(&self, interface: &str, after: Duration) -> Result<Box<dyn Watchdog>, LinkError> {
        if !valid_interface(interface) {
            return Err(LinkError::BadName(interface.to_owned()));
        }
        let child = Command::new(&self.exe)
            .args(["link-watchdog", interface, &after.as_millis().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C or SIGTERM to the agent's group spares it.
            .process_group(0)
            .spawn()
            .map_err(|error| {
                LinkError::System(format!("cannot start the link watchdog: {error}"))
            })?;
        Ok(Box::new(Sleeper { child }))
    }
}
