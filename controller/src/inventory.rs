//! The inventory: which agents a lab has, by name.
//!
//! ```toml
//! [[agent]]
//! name = "linux-1"
//! address = "198.18.0.2:7420"   # gRPC (management network)
//! test_ip = "198.18.1.2"        # test traffic; defaults to the address's IP
//!
//! [[target]]                     # an application under test (see `targets`)
//! name = "echo"
//! address = "tcp://linux-1:7000"
//!
//! [tls]                          # mutual TLS to every agent (paths relative to this file)
//! ca = "certs/ca.pem"            # agents' certificates must chain to it
//! cert = "certs/controller.pem"  # the controller's own certificate
//! key = "certs/controller.key"
//! ```

use crate::agents::ClientTls;
use crate::targets::{Target, TargetEntry, TargetError};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;
use std::path::PathBuf;

/// One agent of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// Unique name.
    pub name: String,
    /// gRPC address (`host:port`).
    pub address: String,
    /// Address for test traffic, when not the gRPC address's IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_ip: Option<IpAddr>,
    /// What the host's lab can do to it from outside (a local lab's hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab: Option<LabSide>,
}

/// The lab's agents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// In the order roles are bound to them.
    #[serde(default, rename = "agent")]
    pub agents: Vec<AgentEntry>,
    /// How to reach them over mutual TLS.
    pub tls: Option<ClientTls>,
    /// Applications under test (see [`crate::targets`]).
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetEntry>,
    /// The directory of the file it was read from (payload files are relative to it).
    #[serde(skip)]
    pub base: std::path::PathBuf,
}

/// Why an inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("cannot read inventory {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is malformed.
    #[error("{file}:{line}:{column}: {message}")]
    Malformed {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

impl Inventory {
    /// Its agents as an inventory file, under a `# comment` line.
    pub fn agents_toml(&self, comment: &str) -> Result<String, toml::ser::Error> {
        #[derive(Serialize)]
        struct Agents<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            tls: Option<&'a crate::agents::ClientTls>,
            agent: &'a [AgentEntry],
        }
        let body = toml::to_string(&Agents {
            tls: self.tls.as_ref(),
            agent: &self.agents,
        })?;
        Ok(format!("# {comment}\n\n{body}"))
    }

    /// Read an inventory file.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            file: file.clone(),
            source,
        })?;
        let mut inventory = Self::parse(&file, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        inventory.base = base.to_owned();
        if let Some(tls) = inventory.tls.as_mut() {
            for file in [&mut tls.ca, &mut tls.cert, &mut tls.key] {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        Ok(inventory)
    }

    /// Parse inventory text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, InventoryError> {
        let malformed = |offset: usize, message: String| {
            let before = &text[..offset.min(text.len())];
            InventoryError::Malformed {
                file: file.to_owned(),
                line: before.matches('\n').count() + 1,
                column: before
                    .rfind('\n')
                    .map_or(before.len(), |nl| before.len() - nl - 1)
                    + 1,
                message,
            }
        };
        let inventory: Self = toml::from_str(text).map_err(|error| {
            malformed(
                error.span().map_or(0, |span| span.start),
                error.message().trim().to_owned(),
            )
        })?;
        let mut names = std::collections::HashSet::new();
        for target in &inventory.targets {
            if !names.insert(&target.name) {
                let offset = text.find(&format!("\"{}\"", target.name)).unwrap_or(0);
                return Err(malformed(
                    offset,
                    format!("target name {:?} is used twice", target.name),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for agent in &inventory.agents {
            if let Some(why) = address_problem(&agent.address) {
                let offset = text.find(&format!("\"{}\"", agent.address)).unwrap_or(0);
                return Err(malformed(
                    offset,
                    format!("agent {:?}: address {:?} {why}", agent.name, agent.address),
                ));
            }
            if !names.insert(&agent.name) {
                let offset = text.find(&format!("\"{}\"", agent.name)).unwrap_or(0);
                return Err(malformed(
                    offset,
                    format!("agent name {:?} is used twice", agent.name),
                ));
            }
        }
        Ok(inventory)
    }
}

/// What is wrong with an agent's gRPC address, if anything: it must be
/// `host:port` (an IP address, `[IPv6]`, or a DNS name) with a port.
fn address_problem(address: &str) -> Option<&'static str> {
    if let Ok(address) = address.parse::<std::net::SocketAddr>() {
        return (address.port() == 0).then_some("has port 0, which cannot be dialled");
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Some("is not host:port (e.g. 198.18.0.2:7420)");
    };
    if port.parse::<u16>().map_or(true, |port| port == 0) {
        return Some("has no port from 1 to 65535 (e.g. 198.18.0.2:7420)");
    }
    let name_like = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if name_like {
        None
    } else {
        Some("is neither ip:port nor a DNS name with a port (e.g. 198.18.0.2:7420)")
    }
}

impl Inventory {
    /// Its targets, checked.
    pub fn targets(&self) -> Result<Vec<Target>, TargetError> {
        self.targets
            .iter()
            .map(|entry| Target::from_entry(entry, &self.base))
            .collect()
    }
}

/// What a host's lab can reach from outside the host (its switch port,
/// its VM's sockets, where it keeps the host's logs); what the lab does
/// with it is `lab::outside`'s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LabSide {
    /// The switch end of the host's test link (a bridge port): taken down,
    /// the host's own end loses its carrier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_port: Option<String>,
    /// The QMP socket of the host's virtual machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qmp: Option<PathBuf>,
    /// A root shell on the virtual machine's second serial port (what
    /// `faultlab lab exec` talks to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<PathBuf>,
    /// Where the lab keeps the host's serial console (a VM's kernel and
    /// init).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<PathBuf>,
    /// Where the lab keeps the log of the host's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_log: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_agents_read_back_the_same() -> Result<(), Box<dyn std::error::Error>> {
        let inventory = Inventory {
            agents: vec![
                AgentEntry {
                    name: "host-1".to_owned(),
                    address: "198.18.120.10:7420".to_owned(),
                    test_ip: Some("198.18.121.10".parse()?),
                    lab: Some(LabSide {
                        switch_port: Some("fllt0".to_owned()),
                        ..LabSide::default()
                    }),
                },
                AgentEntry {
                    name: "odd \"name\"".to_owned(),
                    address: "127.0.0.1:40001".to_owned(),
                    test_ip: None,
                    lab: None,
                },
            ],
            ..Inventory::default()
        };
        let text = inventory.agents_toml("written by a test")?;
        assert!(text.starts_with("# written by a test\n"), "{text}");
        assert_eq!(
            Inventory::parse("lab.toml", &text)?.agents,
            inventory.agents
        );
        Ok(())
    }

    #[test]
    fn agents_are_read_in_order() -> Result<(), InventoryError> {
        let inventory = Inventory::parse(
            "lab.toml",
            "[[agent]]\nname = \"a\"\naddress = \"198.18.0.2:7420\"\ntest_ip = \"198.18.1.2\"\n\n[[agent]]\nname = \"b\"\naddress = \"198.18.0.3:7420\"\n",
        )?;
        let names: Vec<&str> = inventory.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            inventory.agents[0].test_ip,
            Some(IpAddr::from([198, 18, 1, 2]))
        );
        Ok(())
    }

    #[test]
    fn mistakes_are_located() {
        let error = Inventory::parse("lab.toml", "[[agent]]\nname = \"a\"\nadress = \"x\"\n")
            .err()
            .map(|error| error.to_string());
        let error = error.unwrap_or_default();
        assert!(
            error.starts_with("lab.toml:3:1: unknown field `adress`"),
            "{error}"
        );
        let twice = Inventory::parse(
            "lab.toml",
            "[[agent]]\nname = \"a\"\naddress = \"x:1\"\n[[agent]]\nname = \"a\"\naddress = \"y:1\"\n",
        );
        assert!(matches!(
            twice,
            Err(InventoryError::Malformed { line: 2, .. })
        ));
    }

    #[test]
    fn an_agent_address_that_cannot_be_dialled_is_refused_at_its_line() {
        for bad in [
            "not an address",
            "198.18.0.2",
            "198.18.0.2:0",
            "host:99999",
            ":7420",
        ] {
            let text = format!("[[agent]]\nname = \"a\"\naddress = \"{bad}\"\n");
            match Inventory::parse("lab.toml", &text) {
                Err(InventoryError::Malformed { line, message, .. }) => {
                    assert_eq!(line, 3, "{bad}: {message}");
                    assert!(message.contains("address"), "{bad}: {message}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        for good in ["198.18.0.2:7420", "[::1]:7420", "lab-host.example:7420"] {
            let text = format!("[[agent]]\nname = \"a\"\naddress = \"{good}\"\n");
            assert!(Inventory::parse("lab.toml", &text).is_ok(), "{good}");
        }
    }
}
