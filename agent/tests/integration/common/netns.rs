//! Lab hosts as network namespaces on this machine: each host has its own
//! network stack (and nftables), joined to the others by a bridge, with
//! addresses in 198.18.0.0/15 only. Everything is removed on drop.

use super::{AgentProcess, Host};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static LABS: AtomicU32 = AtomicU32::new(0);

/// The control port agents listen on inside their namespace.
pub const CONTROL_PORT: u16 = 7420;

type Error = Box<dyn std::error::Error>;

fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let output = Command::new(program).args(args).output()?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into())
    }
}

/// Why these tests cannot run here, if they cannot.
pub fn missing_preconditions() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|status| {
            status
                .lines()
                .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("network-namespace tests need root (CI runs them as root)".to_owned());
    }
    for tool in ["ip", "nft"] {
        if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Some(format!(
                "network-namespace tests need `{tool}` (apt-get install iproute2 nftables)"
            ));
        }
    }
    None
}

/// A bridge and some namespaces.
pub struct NetLab {
    base: String,
    subnet: u8,
    hosts: usize,
}

impl NetLab {
    /// `hosts` namespaces on a fresh bridge and /24 of 198.18.0.0/15.
    pub fn new(hosts: usize) -> Result<Self, Error> {
        if let Some(why) = missing_preconditions() {
            return Err(why.into());
        }
        let number = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let lab = Self {
            base: format!("fl{}{number}", pid % 100_000),
            subnet: u8::try_from((pid % 97 + number * 13) % 250 + 2).unwrap_or(2),
            hosts,
        };
        let bridge = lab.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", lab.gateway()),
                "dev",
                &bridge,
            ],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for index in 0..hosts {
            let ns = lab.namespace(index);
            let veth = format!("{}v{index}", lab.base);
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &veth, "master", &bridge, "up"])?;
            let address = format!("{}/24", lab.ip(index));
            lab.exec(index, &["ip", "addr", "add", &address, "dev", "eth0"])?;
            lab.exec(index, &["ip", "link", "set", "eth0", "up"])?;
            lab.exec(index, &["ip", "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.base)
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, 1)
    }

    /// Host `index`'s name.
    pub fn namespace(&self, index: usize) -> String {
        format!("{}h{index}", self.base)
    }

    /// Host `index`'s address.
    pub fn ip(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, u8::try_from(10 + index).unwrap_or(10))
    }

    /// A second link, `test0`, straight between hosts `a` and `b` (a test
    /// network apart from the control network); returns their addresses on it.
    pub fn add_test_link(&self, a: usize, b: usize) -> Result<(Ipv4Addr, Ipv4Addr), Error> {
        let net = self.subnet.wrapping_add(1).max(2);
        let (near, far) = (format!("{}t{a}", self.base), format!("{}t{b}", self.base));
        run(
            "ip",
            &["link", "add", &near, "type", "veth", "peer", "name", &far],
        )?;
        let mut addresses = Vec::new();
        for (index, name) in [(a, &near), (b, &far)] {
            run(
                "ip",
                &["link", "set", name, "netns", &self.namespace(index)],
            )?;
            self.exec(index, &["ip", "link", "set", name, "name", "test0"])?;
            let address = Ipv4Addr::new(198, 18, net, u8::try_from(10 + index).unwrap_or(10));
            self.exec(
                index,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{address}/24"),
                    "dev",
                    "test0",
                ],
            )?;
            self.exec(index, &["ip", "link", "set", "test0", "up"])?;
            addresses.push(address);
        }
        Ok((addresses[0], addresses[1]))
    }

    /// Whether `interface` of host `index` is administratively up.
    pub fn link_is_up(&self, index: usize, interface: &str) -> Result<bool, Error> {
        let shown = self.exec(index, &["ip", "-o", "link", "show", interface])?;
        let flags = shown
            .split('<')
            .nth(1)
            .and_then(|rest| rest.split('>').next())
            .unwrap_or("");
        Ok(flags.split(',').any(|flag| flag == "UP"))
    }

    /// Run a command inside host `index`.
    pub fn exec(&self, index: usize, command: &[&str]) -> Result<String, Error> {
        let ns = self.namespace(index);
        let mut args = vec!["netns", "exec", ns.as_str()];
        args.extend_from_slice(command);
        run("ip", &args)
    }

    /// Start an agent inside host `index` with extra flags, and connect to it.
    pub async fn agent(&self, index: usize, flags: &[&str]) -> Result<Host, Error> {
        self.agent_with_path(index, flags, None).await
    }

    /// [`Self::agent`], its audit trail (and errors) written to `log`.
    pub async fn agent_auditing_to(
        &self,
        index: usize,
        flags: &[&str],
        log: &std::path::Path,
    ) -> Result<Host, Error> {
        let mut command = self.agent_command(index, flags, None);
        command
            .env("RUST_LOG", "error,faultlab_agent::audit=info")
            .stderr(std::fs::File::create(log)?);
        Host::attach(AgentProcess::start_with(command)?).await
    }

    /// [`Self::agent`], with `first_on_path` searched first for the tools
    /// it runs (`nft`, `tc`, `ip`); nftables commands then run the `nft`
    /// tool, not the library in process (`FAULTLAB_NFT=exec`).
    pub async fn agent_with_path(
        &self,
        index: usize,
        flags: &[&str],
        first_on_path: Option<&std::path::Path>,
    ) -> Result<Host, Error> {
        let command = self.agent_command(index, flags, first_on_path);
        Host::attach(AgentProcess::start_with(command)?).await
    }

    /// The command that starts host `index`'s agent with `flags`.
    fn agent_command(
        &self,
        index: usize,
        flags: &[&str],
        first_on_path: Option<&std::path::Path>,
    ) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace(index)]);
        if let Some(first) = first_on_path {
            let path = std::env::var("PATH").unwrap_or_default();
            command
                .arg("env")
                .arg(format!("PATH={}:{path}", first.display()))
                .arg("FAULTLAB_NFT=exec");
        }
        command
            .arg(env!("CARGO_BIN_EXE_faultlab-agent"))
            .args(["--listen", &format!("{}:{CONTROL_PORT}", self.ip(index))])
            // The lab's bridge has no way out of this machine.
            .arg("--insecure")
            .args(flags);
        command
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for index in 0..self.hosts {
            // Orphaned sockets (closed, still sending FIN to a host that is
            // gone) would keep the namespace, and its links, alive for minutes.
            let _ = self.exec(index, &["ss", "-K", "-t", "state", "all"]);
            let _ = run("ip", &["netns", "del", &self.namespace(index)]);
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}
