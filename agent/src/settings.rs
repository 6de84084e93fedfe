//! The agent's configuration file (TOML), and the rules on how an agent
//! may be exposed. Flags override the file; without either, an agent
//! listens on loopback and can only open, use and close connections.
//!
//! ```toml
//! listen = "198.18.0.2:7420"
//! max_isolation_ms = 600000
//!
//! [allow]             # what this agent may do
//! connections = true  # open, send, receive, close, abort (default on)
//! isolate = false     # cut the host off the network, simulated reboots
//! link = false        # take interfaces down
//! degrade = false     # make the network bad (delay, loss, ...; Linux with sch_netem)
//! reboot = false      # really reboot the host
//! process = false     # kill/stop/continue/restart other programs, abort their connections
//! tune = false        # change TCP settings for a case (tcp_abort_on_overflow; Linux)
//!
//! [restart]           # how a restart fault starts a program again, by process name
//! "echo_server.py" = "python3 /opt/echo_server.py --port 7000"
//!
//! [limits]            # how much it takes on at most (RESOURCE_EXHAUSTED beyond)
//! holders = 256       # holder processes alive at once
//! connections = 4096  # sockets held at once, over all holders
//! send_bytes = 68719476736  # bytes one Send may ask for (64 GiB)
//! faults = 64         # isolations, degradations and links down at once
//!
//! [access]            # who may use which of those (see `access`): without
//! default = ["connections"]  # it, every caller of the lab's CA may use all
//! [[access.rules]]
//! group = "ci"        # an OU of the caller's certificate (or caller = "NAME")
//! may = ["connections", "isolate", "degrade", "loss", "capture"]
//!
//! [tls]               # mutual TLS: required off loopback unless insecure = true
//! cert = "agent.pem"  # paths relative to this file
//! key = "agent.key"
//! ca = "ca.pem"       # client certificates must chain to it
//! ```

use crate::access::{Access, Rules};
use crate::tls::TlsFiles;
use faultlab_proto::Capability;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default ceiling of an isolation's deadline: 10 minutes.
pub const DEFAULT_MAX_ISOLATION_MS: u32 = 600_000;

/// What an agent may do: connections unless turned off, dangerous
/// capabilities only when the configuration allows them.
/// It is also the config file's `[allow]` table (missing keys: the defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Allow {
    /// Holders and their sockets (on by default).
    pub connections: bool,
    /// Cutting the host off the network (and simulated reboots).
    pub isolate: bool,
    /// Taking network interfaces down.
    pub link: bool,
    /// Really rebooting the host.
    pub reboot: bool,
    /// Making the network bad (delay, loss, ...) on an interface.
    pub degrade: bool,
    /// Acting on other programs of the host (the application under test):
    /// kill, stop, continue, restart, and aborting their connections.
    pub process: bool,
    /// Changing the host's TCP settings for a case, put back after.
    pub tune: bool,
}

impl Allow {
    /// The names of the dangerous capabilities, as `--allow` and the
    /// agent's host info give them.
    pub const NAMES: [&'static str; 6] =
        ["isolate", "link", "reboot", "degrade", "process", "tune"];

    /// Connections and the dangerous capabilities `names`, no other.
    pub fn only(names: &[String]) -> Result<Self, SettingsError> {
        if let Some(unknown) = names
            .iter()
            .find(|name| !Self::NAMES.contains(&name.as_str()))
        {
            return Err(SettingsError::UnknownCapability(unknown.clone()));
        }
        let named = |name: &str| names.iter().any(|given| given == name);
        Ok(Self {
            connections: true,
            isolate: named("isolate"),
            link: named("link"),
            reboot: named("reboot"),
            degrade: named("degrade"),
            process: named("process"),
            tune: named("tune"),
        })
    }

    /// Whether any dangerous capability is allowed.
    pub fn any_dangerous(&self) -> bool {
        self.isolate || self.link || self.reboot || self.degrade || self.process || self.tune
    }
}

impl Default for Allow {
    /// Connections only.
    fn default() -> Self {
        Self {
            connections: true,
            isolate: false,
            link: false,
            reboot: false,
            degrade: false,
            process: false,
            tune: false,
        }
    }
}

/// How much an agent takes on at most, so that no caller (a runaway
/// scenario, a hostile client) can exhaust its host. A request over a
/// limit is refused with `RESOURCE_EXHAUSTED` naming it. Config file
/// section `[limits]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Holder processes alive at once.
    pub holders: usize,
    /// Sockets (listeners and connections) held at once, over all holders.
    pub connections: usize,
    /// Bytes one Send may ask for (a flood).
    pub send_bytes: u64,
    /// Faults active at once: isolations, degradations, links down.
    pub faults: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            holders: 256,
            connections: 4096,
            send_bytes: 64 << 30,
            faults: 64,
        }
    }
}

/// The configuration file's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// gRPC address.
    pub listen: Option<SocketAddr>,
    /// Serve without TLS off loopback.
    #[serde(default)]
    pub insecure: bool,
    /// Ceiling of any isolation's deadline.
    pub max_isolation_ms: Option<u32>,
    /// Capabilities.
    #[serde(default)]
    pub allow: Allow,
    /// Mutual TLS.
    pub tls: Option<TlsFiles>,
    /// Process name → the command that starts it again after a restart fault.
    #[serde(default)]
    pub restart: std::collections::BTreeMap<String, String>,
    /// How much the agent takes on at most.
    #[serde(default)]
    pub limits: Limits,
    /// Who may use what: per-caller rules.
    pub access: Option<Rules>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid configuration (toml names line, column and key).
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// The agent would be reachable by anyone without TLS.
    #[error(
        "refusing to serve on {0} without TLS: anyone who reaches it could cut this host off the network. Give [tls] in the config (or --tls-cert, --tls-key, --tls-ca; `faultlab certs` makes them), or --insecure for a network you trust"
    )]
    Exposed(SocketAddr),
    /// `--allow` named a capability there is not.
    #[error("unknown capability {0:?}: give some of {names}", names = Capability::names(&Capability::ALLOWED_BY_NAME))]
    UnknownCapability(String),
}

impl Settings {
    /// Read a configuration file; relative TLS paths are taken from its directory.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut settings: Self = toml::from_str(&text).map_err(|error| SettingsError::Invalid {
            path: path.to_owned(),
            message: error.to_string().trim_end().replace('\n', " "),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(tls) = settings.tls.as_mut() {
            for file in [&mut tls.cert, &mut tls.key, &mut tls.ca] {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        Ok(settings)
    }
}

/// What the command line says over the configuration file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// The gRPC address.
    pub listen: Option<SocketAddr>,
    /// The dangerous capabilities allowed, by name ([`Allow::NAMES`]):
    /// replaces the file's list.
    pub allow: Option<Vec<String>>,
    /// How to start programs again after a restart fault: adds to the file's.
    pub restart: Vec<(String, String)>,
    /// The longest isolation.
    pub max_isolation_ms: Option<u32>,
    /// TLS files: replace the file's [tls].
    pub tls: Option<TlsFiles>,
    /// Serve without TLS off loopback.
    pub insecure: bool,
}

/// What the agent is to be: the configuration file, then the flags over it.
#[derive(Clone, Debug)]
pub struct Serving {
    /// Where its gRPC API listens.
    pub address: SocketAddr,
    /// What it may do.
    pub allow: Allow,
    /// The longest isolation.
    pub max_isolation_ms: u32,
    /// Program name → how to start it again.
    pub restart_commands: std::collections::BTreeMap<String, String>,
    /// Its bounds.
    pub limits: Limits,
    /// Mutual TLS, unless it serves plain text.
    pub tls: Option<TlsFiles>,
    /// Who may use what.
    pub access: Access,
}

impl Settings {
    /// The agent these settings make with `overrides` over them: refused
    /// when it would serve off loopback without TLS unless told to (then
    /// it warns).
    pub fn resolve(self, overrides: Overrides) -> Result<Serving, SettingsError> {
        let mut allow = self.allow;
        if let Some(names) = &overrides.allow {
            allow = Allow {
                connections: allow.connections,
                ..Allow::only(names)?
            };
        }
        let mut restart_commands = self.restart;
        restart_commands.extend(overrides.restart);
        let tls = overrides.tls.or(self.tls);
        let address = overrides
            .listen
            .or(self.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7420)));
        if check_exposure(address, tls.is_some(), overrides.insecure || self.insecure)? {
            tracing::warn!(
                %address,
                "INSECURE: serving without TLS off loopback; anyone who reaches {address} can make this host's connections fail{}",
                if allow.any_dangerous() {
                    " and cut it off the network"
                } else {
                    ""
                }
            );
        }
        Ok(Serving {
            address,
            allow,
            max_isolation_ms: overrides
                .max_isolation_ms
                .or(self.max_isolation_ms)
                .unwrap_or(DEFAULT_MAX_ISOLATION_MS),
            restart_commands,
            limits: self.limits,
            tls,
            access: Access::new(self.access),
        })
    }
}

/// Whether an agent may serve on `listen`: with TLS always; without, only
/// on loopback, or anywhere when `insecure` (then `Ok(true)`: warn loudly).
pub fn check_exposure(
    listen: SocketAddr,
    tls: bool,
    insecure: bool,
) -> Result<bool, SettingsError> {
    match (tls, listen.ip().is_loopback(), insecure) {
        (true, _, _) | (false, true, _) => Ok(false),
        (false, false, true) => Ok(true),
        (false, false, false) => Err(SettingsError::Exposed(listen)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_add_to_its_restarts() -> Result<(), SettingsError> {
        let file: Settings = toml::from_str(
            "listen = \"127.0.0.1:7000\"\nmax_isolation_ms = 5000\n[allow]\nconnections = false\nisolate = true\n[restart]\nweb = \"systemctl restart web\"\n",
        )
        .map_err(|error| SettingsError::UnknownCapability(error.to_string()))?;
        let serving = file.clone().resolve(Overrides::default())?;
        assert_eq!(serving.address.port(), 7000);
        assert_eq!(serving.max_isolation_ms, 5000);
        assert!(serving.allow.isolate && !serving.allow.connections);
        let serving = file.clone().resolve(Overrides {
            allow: Some(vec!["link".to_owned()]),
            restart: vec![("db".to_owned(), "systemctl restart db".to_owned())],
            max_isolation_ms: Some(100),
            ..Overrides::default()
        })?;
        assert!(serving.allow.link && !serving.allow.isolate && !serving.allow.connections);
        assert_eq!(serving.restart_commands.len(), 2);
        assert_eq!(serving.max_isolation_ms, 100);
        let unknown = file.resolve(Overrides {
            allow: Some(vec!["everything".to_owned()]),
            ..Overrides::default()
        });
        assert!(
            matches!(unknown, Err(SettingsError::UnknownCapability(name)) if name == "everything")
        );
        Ok(())
    }

    #[test]
    fn only_loopback_or_tls_or_an_explicit_insecure_may_serve() {
        let lab: SocketAddr = ([198, 18, 0, 2], 7420).into();
        let local: SocketAddr = ([127, 0, 0, 1], 7420).into();
        assert!(matches!(check_exposure(local, false, false), Ok(false)));
        assert!(matches!(check_exposure(lab, true, false), Ok(false)));
        assert!(matches!(check_exposure(lab, false, true), Ok(true)));
        let refused = check_exposure(lab, false, false).map_err(|error| error.to_string());
        assert!(refused.is_err_and(
            |message| message.contains("198.18.0.2:7420") && message.contains("--insecure")
        ));
    }

    #[test]
    fn a_config_file_is_read_with_defaults_and_its_errors_are_placed()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("faultlab-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("agent.toml");
        // An absolute path stays as it is ("/etc/..." is not absolute on Windows).
        let absolute = dir.join("elsewhere").join("ca.pem");
        std::fs::write(
            &file,
            format!(
                "listen = \"198.18.0.2:7420\"\n[allow]\nisolate = true\n[tls]\ncert = \"a.pem\"\nkey = \"a.key\"\nca = '{}'\n",
                absolute.display()
            ),
        )?;
        let settings = Settings::load(&file)?;
        assert_eq!(settings.listen, Some(([198, 18, 0, 2], 7420).into()));
        assert!(settings.allow.connections && settings.allow.isolate && !settings.allow.reboot);
        let tls = settings.tls.ok_or("no tls")?;
        assert_eq!(tls.cert, dir.join("a.pem"));
        assert_eq!(tls.ca, absolute);
        // Each refused with the file, the line and what is wrong.
        let refused =
            |text: &str, line: &str, what: &str| -> Result<(), Box<dyn std::error::Error>> {
                std::fs::write(&file, text)?;
                let error = Settings::load(&file).map_err(|error| error.to_string());
                assert!(
                    error
                        .as_ref()
                        .is_err_and(|message| message.contains("agent.toml")
                            && message.contains(line)
                            && message.contains(what)),
                    "{error:?}"
                );
                Ok(())
            };
        refused(
            "listen = \"198.18.0.2:7420\"\n[allow]\nisolat = true\n",
            "line 3",
            "isolat",
        )?;
        refused(
            "[access]\ndefault = [\"connections\"]\n[[access.rules]]\ngroup = \"ci\"\nmay = [\"isolate\", \"everything\"]\n",
            "line 5",
            "unknown capability \"everything\"",
        )?;
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
