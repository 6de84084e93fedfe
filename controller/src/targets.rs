//! Application targets: a role played by the user's own server, not by an
//! agent.
//!
//! The point of a lab is to see how *their* software behaves when clients
//! vanish, crash or reset. A target is an endpoint faultlab does not
//! control (`tcp://host:port`), optionally with the agent that runs on its
//! host (to count its sockets by state, abort its connections, freeze, kill
//! or restart its process), the bytes a client sends it (a template with
//! `{seq}`), and what a healthy reply looks like. Targets are written in
//! the inventory (or a `--targets` file) and bound to a role with
//! `--target ROLE=NAME`, or given inline as `--target ROLE=tcp://HOST:PORT`.
//!
//! ```toml
//! [[target]]
//! name = "echo"
//! address = "tcp://lab-2:7000"      # an agent's name stands for its test address
//! agent = "lab-2"                   # the agent on the application's host (default: the one in address)
//! payload = "PING {seq}\n"          # or payload_hex = "50494e47", or payload_file = "request.bin"
//! reply = "^PING [0-9]+"            # what the probe's reply must match (a regex)
//! process = { name = "echo_server.py" }   # or { pid = 1234 }, or { unit = "echo.service" }
//! [target.probe]
//! timeout_ms = 3000                 # connect + request/reply, and sockets settling
//! max = { "CLOSE-WAIT" = 0 }        # at most this many sockets of the port in each state
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// Probe time bound unless the target says otherwise.
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 3_000;

/// TCP states a probe can bound, as `ss` and the agent name them.
pub const KNOWN_STATES: &[&str] = &[
    "ESTAB",
    "SYN-RECV",
    "FIN-WAIT-1",
    "FIN-WAIT-2",
    "TIME-WAIT",
    "CLOSE-WAIT",
    "LAST-ACK",
    "CLOSING",
];

/// How a process of the application is named to its host's agent.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ProcessSpec {
    /// Exact process name (or program / script file name).
    Name(String),
    /// A process id.
    Pid(u32),
    /// A systemd unit.
    Unit(String),
}

/// What a probe checks after each case.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSpec {
    /// A fresh connection (and request/reply) must succeed within this, and
    /// the socket counts must come within bounds within it.
    pub timeout_ms: u64,
    /// State → the most sockets of the application's port allowed in it.
    pub max: BTreeMap<String, u32>,
}

impl Default for ProbeSpec {
    /// 3 s; no connection left in CLOSE-WAIT (a server that never closes
    /// after its peer's FIN).
    fn default() -> Self {
        Self {
            timeout_ms: DEFAULT_PROBE_TIMEOUT_MS,
            max: BTreeMap::from([("CLOSE-WAIT".to_owned(), 0)]),
        }
    }
}

/// A target as written in a file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetEntry {
    /// Unique name, used by `--target ROLE=NAME`.
    pub name: String,
    /// `tcp://HOST:PORT` (HOST: an IP, or an agent's name for its test address).
    pub address: String,
    /// The agent on the application's host.
    pub agent: Option<String>,
    /// What a client sends: a template where `{seq}` is the message number.
    pub payload: Option<String>,
    /// The same in hex.
    pub payload_hex: Option<String>,
    /// The same from a file (relative to the file that names it).
    pub payload_file: Option<std::path::PathBuf>,
    /// A healthy reply matches this.
    pub reply: Option<String>,
    /// The application's process.
    pub process: Option<ProcessSpec>,
    /// The health probe.
    #[serde(default)]
    pub probe: ProbeSpec,
}

impl TargetEntry {
    /// A target at `address` with nothing else said: no payload, no reply
    /// pattern, no process, the default probe.
    pub fn new(name: &str, address: &str) -> Self {
        Self {
            name: name.to_owned(),
            address: address.to_owned(),
            agent: None,
            payload: None,
            payload_hex: None,
            payload_file: None,
            reply: None,
            process: None,
            probe: ProbeSpec::default(),
        }
    }
}

/// Where a target is, before the lab's agents are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetHost {
    /// An address.
    Ip(IpAddr),
    /// An agent's test address.
    Agent(String),
}

/// A target ready to use.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its name.
    pub name: String,
    /// Its host.
    pub host: TargetHost,
    /// Its port.
    pub port: u16,
    /// The agent on its host, if any.
    pub agent: Option<String>,
    /// The message template, if any.
    pub payload: Option<Vec<u8>>,
    /// What a healthy reply matches.
    pub reply: Option<regex::bytes::Regex>,
    /// Its process.
    pub process: Option<ProcessSpec>,
    /// Its probe.
    pub probe: ProbeSpec,
}

/// Why a target cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Something in its definition.
    #[error("target {target:?}: {field}: {message}")]
    Invalid {
        /// The target.
        target: String,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(target: &str, field: &str, message: impl Into<String>) -> TargetError {
    TargetError::Invalid {
        target: target.to_owned(),
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Split `tcp://HOST:PORT` (the scheme is optional).
pub fn parse_address(name: &str, text: &str) -> Result<(TargetHost, u16), TargetError> {
    let rest = match text.split_once("://") {
        Some(("tcp", rest)) => rest,
        Some((scheme, _)) => {
            return Err(invalid(
                name,
                "address",
                format!("{scheme}:// is not supported; faultlab targets are tcp://HOST:PORT"),
            ));
        }
        None => text,
    };
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| invalid(name, "address", format!("{text:?} is not tcp://HOST:PORT")))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| invalid(name, "address", format!("{port:?} is not a port (1-65535)")))?;
    let host = host.trim_matches(['[', ']']);
    if host.is_empty() {
        return Err(invalid(name, "address", "the host is missing"));
    }
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => (TargetHost::Ip(ip), port),
        Err(_) => (TargetHost::Agent(host.to_owned()), port),
    })
}

fn hex(name: &str, text: &str) -> Result<Vec<u8>, TargetError> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|byte| !byte.is_ascii_whitespace())
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err(invalid(name, "payload_hex", "an odd number of hex digits"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| {
                    invalid(
                        name,
                        "payload_hex",
                        format!("{:?} is not hex", String::from_utf8_lossy(pair)),
                    )
                })
        })
        .collect()
}

impl Target {
    /// Validate an entry; `base` is the directory of the file it came from.
    pub fn from_entry(entry: &TargetEntry, base: &Path) -> Result<Self, TargetError> {
        let name = entry.name.as_str();
        let (host, port) = parse_address(name, &entry.address)?;
        let payload = match (&entry.payload, &entry.payload_hex, &entry.payload_file) {
            (None, None, None) => None,
            (Some(text), None, None) => Some(text.clone().into_bytes()),
            (None, Some(text), None) => Some(hex(name, text)?),
            (None, None, Some(file)) => {
                let path = base.join(file);
                Some(std::fs::read(&path).map_err(|error| {
                    invalid(
                        name,
                        "payload_file",
                        format!("cannot read {}: {error}", path.display()),
                    )
                })?)
            }
            _ => {
                return Err(invalid(
                    name,
                    "payload",
                    "give one of payload, payload_hex or payload_file",
                ));
            }
        };
        if payload.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(name, "payload", "an empty payload sends nothing"));
        }
        let reply = entry
            .reply
            .as_deref()
            .map(regex::bytes::Regex::new)
            .transpose()
            .map_err(|error| invalid(name, "reply", error.to_string()))?;
        for state in entry.probe.max.keys() {
            if !KNOWN_STATES.contains(&state.as_str()) {
                return Err(invalid(
                    name,
                    &format!("probe.max.{state}"),
                    format!("not a TCP state; one of {KNOWN_STATES:?}"),
                ));
            }
        }
        let agent = entry.agent.clone().or(match &host {
            TargetHost::Agent(agent) => Some(agent.clone()),
            TargetHost::Ip(_) => None,
        });
        Ok(Self {
            name: name.to_owned(),
            host,
            port,
            agent,
            payload,
            reply,
            process: entry.process.clone(),
            probe: entry.probe.clone(),
        })
    }

    /// A target given inline: `tcp://HOST:PORT`, defaults for the rest.
    pub fn inline(address: &str) -> Result<Self, TargetError> {
        Self::from_entry(&TargetEntry::new(address, address), Path::new("."))
    }

    /// Its address, given the lab's agents' test addresses by name.
    pub fn address(&self, test_ip_of: impl Fn(&str) -> Option<IpAddr>) -> Option<SocketAddr> {
        let ip = match &self.host {
            TargetHost::Ip(ip) => *ip,
            TargetHost::Agent(agent) => test_ip_of(agent)?,
        };
        Some(SocketAddr::new(ip, self.port))
    }
}

/// The bytes `count` messages of `template` add up to (each `{seq}`
/// replaced by the message's number, as the agent does).
pub fn template_bytes(template: &[u8], count: u64) -> u64 {
    const PLACEHOLDER: &[u8] = b"{seq}";
    let holes = template
        .windows(PLACEHOLDER.len())
        .filter(|window| *window == PLACEHOLDER)
        .count() as u64;
    let fixed = template.len() as u64 - holes * PLACEHOLDER.len() as u64;
    // Digits of 0..count: 1 each below 10, 2 each below 100, ...
    let mut digits = 0u64;
    let mut low = 0u64;
    let mut high = 10u64;
    let mut width = 1u64;
    while low < count {
        digits = digits.saturating_add((count.min(high) - low).saturating_mul(width));
        low = high;
        high = high.saturating_mul(10);
        width += 1;
    }
    count
        .saturating_mul(fixed)
        .saturating_add(holes.saturating_mul(digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_an_ip_or_an_agent() -> Result<(), TargetError> {
        assert_eq!(
            parse_address("t", "tcp://198.18.1.3:7000")?,
            (TargetHost::Ip([198, 18, 1, 3].into()), 7000)
        );
        assert_eq!(
            parse_address("t", "lab-2:80")?,
            (TargetHost::Agent("lab-2".into()), 80)
        );
        let udp = parse_address("t", "udp://1.2.3.4:5").map_err(|e| e.to_string());
        assert!(udp.is_err_and(|message| message.contains("tcp://HOST:PORT")));
        assert!(parse_address("t", "tcp://h:0").is_err());
        assert!(parse_address("t", "tcp://h").is_err());
        Ok(())
    }

    #[test]
    fn an_entry_is_checked_field_by_field() -> Result<(), TargetError> {
        let mut entry = TargetEntry::new("echo", "tcp://lab-2:7000");
        entry.payload_hex = Some("50 49 4e 47".into());
        entry.reply = Some("^PING [0-9]+".into());
        entry.process = Some(ProcessSpec::Name("echo_server.py".into()));
        let target = Target::from_entry(&entry, Path::new("."))?;
        assert_eq!(target.payload.as_deref(), Some(&b"PING"[..]));
        assert_eq!(target.agent.as_deref(), Some("lab-2"));
        assert!(
            target
                .reply
                .as_ref()
                .is_some_and(|re| re.is_match(b"PING 12\n"))
        );
        entry.reply = Some("(".into());
        let bad = Target::from_entry(&entry, Path::new(".")).map_err(|e| e.to_string());
        assert!(bad.is_err_and(|message| message.contains("reply")));
        entry.reply = None;
        entry.probe.max.insert("CLOSE_WAIT".into(), 0);
        let bad = Target::from_entry(&entry, Path::new(".")).map_err(|e| e.to_string());
        assert!(bad.is_err_and(|message| message.contains("probe.max.CLOSE_WAIT")));
        Ok(())
    }

    #[test]
    fn template_bytes_count_the_digits_of_each_sequence_number() {
        let count = |template: &[u8], n: u64| {
            (0..n)
                .map(|seq| {
                    String::from_utf8_lossy(template)
                        .replace("{seq}", &seq.to_string())
                        .len() as u64
                })
                .sum::<u64>()
        };
        for n in [0, 1, 9, 10, 11, 99, 100, 1000, 1234] {
            assert_eq!(
                template_bytes(b"PING {seq}\n", n),
                count(b"PING {seq}\n", n),
                "{n}"
            );
        }
        assert_eq!(template_bytes(b"xx", 5), 10);
    }
}
