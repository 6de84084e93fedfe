//! Network faults: what happens to a role's host on the network (cut off,
//! healed, cable pulled and plugged back, power cut and back, rebooted). Their input form,
//! checks and model live here; the engine's `steps::network` turns them
//! into agent requests.

use super::Reference;
use crate::scenario::parse::input::StepInput;
use faultlab_proto::Capability;
pub use faultlab_proto::impairment::Impairment;
use serde::Deserialize;
use std::time::Duration;

/// Default down time of a simulated reboot.
const DEFAULT_DOWN_MS: u64 = 3_000;

/// A fault done to a role's host on the network.
#[derive(Clone, Debug, PartialEq, strum::IntoStaticStr, strum::VariantNames)]
#[strum(serialize_all = "kebab-case")]
pub enum NetworkFault {
    /// Cut the role's host off the test network (needs `isolate`), or
    /// only the flow of one connection.
    Isolate {
        /// Drop packets silently, or answer them with RST / unreachable.
        mode: IsolationMode,
        /// The isolation lifts by itself after this.
        deadline_ms: u64,
        /// Only this connection's flow (its 4-tuple), seen from the role's host.
        conn: Option<String>,
        /// Only traffic with this role's host.
        from: Option<String>,
        /// What the host no longer receives, sends, or both.
        direction: IsolationDirection,
        /// Every packet, or only TCP connections being opened or already open.
        connections: IsolatedConnections,
    },
    /// Split the scenario's hosts (takes no role: every host involved
    /// cuts itself off from the hosts it may no longer reach, both ways,
    /// at one released moment, with one deadline). Played as the isolate
    /// steps it stands for (see [`crate::scenario::lower`]).
    Partition {
        /// Who still reaches whom.
        shape: PartitionShape,
        /// Drop packets silently, or answer them with RST / unreachable.
        mode: IsolationMode,
        /// Every cut lifts by itself after this.
        deadline_ms: u64,
    },
    /// Lift the role's isolations; with no role, every isolation the case
    /// made, on every host, at one released moment (needs `isolate`).
    Heal,
    /// Pull the cable of the role's test interface (the one holding its test
    /// address) until a deadline (needs `link`): at the switch side where
    /// the host's lab can (its carrier goes, the interface stays up), else
    /// by its agent (an admin down).
    LinkDown {
        /// The link comes back by itself after this.
        deadline_ms: u64,
    },
    /// Plug it back in.
    LinkUp,
    /// Cut the power of the role's host until a deadline (needs `power`:
    /// a lab that owns the machine, the VM lab): no shutdown, nothing sent.
    PowerCut {
        /// The power comes back by itself after this.
        deadline_ms: u64,
    },
    /// Give the power back, and wait until the host's agent is back.
    PowerOn,
    /// Make the network of the role's host bad until a deadline (needs
    /// `degrade`: a kernel with sch_netem, e.g. the VM lab's guests).
    Degrade {
        /// What happens to the packets.
        impairment: Impairment,
        /// Only packets to this role's host.
        towards: Option<String>,
        /// Only this connection's packets (from its local port to its peer).
        conn: Option<String>,
        /// What the host receives instead of what it sends (loss only; then
        /// `towards` and `conn` select by source and local destination).
        inbound: bool,
        /// Only connection attempts (TCP SYNs without ACK): a slow or lossy
        /// connection open.
        connection_attempts: bool,
        /// It heals by itself after this.
        deadline_ms: u64,
    },
    /// Heal the role's host's degradations now.
    Restore,
    /// Read the role's host's TCP counters (nothing is done to it): a later
    /// step's `counters_increase_min` compares two readings.
    Counters,
    /// Reboot the role's host, really or simulated (needs `reboot`, or
    /// `isolate` for a simulated one).
    Reboot {
        /// Simulated (drop everything, forget sockets, come back) or real;
        /// unsaid: real where the host's agent may reboot it, else simulated.
        simulated: Option<bool>,
        /// How long the host stays down (simulated).
        down_ms: u64,
        /// A real reboot through the host's service manager (services
        /// stopped first, their sockets closed), not an abrupt one.
        orderly: bool,
    },
}

/// Which way an isolation cuts, seen from the isolated host: a one-way
/// partition still lets the other way through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationDirection {
    /// What it receives: it still sends, nothing reaches it.
    In,
    /// What it sends: it still receives, nothing leaves it.
    Out,
    /// Both (the default).
    #[default]
    Both,
}

/// Which TCP connections an isolation cuts, told apart by TCP flags: a SYN
/// without ACK opens one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolatedConnections {
    /// Every packet, TCP or not (the default).
    #[default]
    All,
    /// Connection attempts only: open connections go on.
    New,
    /// Open connections only (a new one's SYN passes, its SYN-ACK does
    /// not); other protocols pass.
    Established,
}

/// Who still reaches whom in a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionShape {
    /// Hosts reach the hosts of their own group only; roles in no group
    /// are left alone.
    Groups(Vec<Vec<String>>),
    /// The scenario's roles in a ring, in their order: each host reaches
    /// only its two neighbours (Jepsen's majorities-ring with five).
    Ring,
}

impl PartitionShape {
    /// Each (host, peer) to cut, in order: `host` drops everything with
    /// `peer`'s host. Both of a pair cut each other.
    pub fn cuts(&self, roles: &[String]) -> Vec<(String, String)> {
        let mut cuts = Vec::new();
        match self {
            Self::Groups(groups) => {
                for (index, group) in groups.iter().enumerate() {
                    for host in group {
                        let others = groups
                            .iter()
                            .enumerate()
                            .filter(|(other, _)| *other != index)
                            .flat_map(|(_, other)| other);
                        cuts.extend(others.map(|peer| (host.clone(), peer.clone())));
                    }
                }
            }
            Self::Ring => {
                let count = roles.len();
                for (index, host) in roles.iter().enumerate() {
                    let neighbour = |other: usize| {
                        other == index
                            || other == (index + 1) % count
                            || (other + 1) % count == index
                    };
                    cuts.extend(
                        roles
                            .iter()
                            .enumerate()
                            .filter(|(other, _)| !neighbour(*other))
                            .map(|(_, peer)| (host.clone(), peer.clone())),
                    );
                }
            }
        }
        cuts
    }
}

/// What an isolated host does with the packets it no longer lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationMode {
    /// Nothing: they vanish, as behind a pulled cable.
    Drop,
    /// Answer with RST / unreachable, as a firewall rule would.
    Reject,
}

impl NetworkFault {
    /// The capability an agent needs for it (none to undo what this case did).
    pub fn capability(&self) -> Option<Capability> {
        Some(match self {
            Self::Isolate { .. }
            | Self::Partition { .. }
            | Self::Heal
            | Self::Reboot {
                simulated: Some(true) | None,
                ..
            } => Capability::Isolate,
            Self::Reboot { orderly: true, .. } => Capability::OrderlyReboot,
            Self::Reboot {
                simulated: Some(false),
                ..
            } => Capability::Reboot,
            Self::LinkDown { .. } | Self::LinkUp => Capability::Link,
            Self::PowerCut { .. } | Self::PowerOn => Capability::Power,
            // What a host receives is lost by its firewall; what it sends
            // is degraded by its queueing (netem).
            Self::Degrade { inbound: true, .. } => Capability::Loss,
            Self::Degrade { .. } => Capability::Degrade,
            Self::Restore | Self::Counters => return None,
        })
    }

    /// The names it uses.
    pub(super) fn references(&self) -> Vec<Reference<'_>> {
        match self {
            Self::Isolate { conn, from, .. } => conn_and_role(conn, "from", from),
            Self::Degrade { conn, towards, .. } => conn_and_role(conn, "towards", towards),
            Self::Partition {
                shape: PartitionShape::Groups(groups),
                ..
            } => groups
                .iter()
                .flatten()
                .map(|role| Reference::UsesRole {
                    field: "groups",
                    name: role,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A `degrade` step's own fields: what it does to which packets.
    fn degrade(input: &mut StepInput<'_, '_, '_>) -> Option<Self> {
        let spec = input.typed::<DegradeSpec>()?;
        let impairment = spec.impairment(input)?;
        let inbound = spec.direction == Some(DegradeDirection::In);
        if inbound && !impairment.is_plain_loss() {
            input.error(
                "direction",
                "what a host receives can only be lost (loss, without loss_correlation or loss_burst); delay, duplicate, reorder, corrupt and rate are made on what it sends (direction = \"out\")",
            );
            return None;
        }
        let connection_attempts = match spec.connections {
            IsolatedConnections::All => false,
            IsolatedConnections::New => true,
            IsolatedConnections::Established => {
                input.error(
                    "connections",
                    "a degradation touches every packet (\"all\") or only connection attempts (\"new\"); for an open connection give conn",
                );
                return None;
            }
        };
        Some(Self::Degrade {
            impairment,
            towards: spec.towards,
            conn: spec.conn,
            inbound,
            connection_attempts,
            deadline_ms: capped(input, spec.deadline_ms)?,
        })
    }

    /// A `partition` step's own fields: groups or a shape, one of them.
    fn partition(input: &mut StepInput<'_, '_, '_>) -> Option<Self> {
        let spec = input.typed::<PartitionSpec>()?;
        let shape = match (spec.groups, spec.shape.as_deref()) {
            (Some(groups), None) => {
                let roles: Vec<&String> = groups.iter().flatten().collect();
                let twice = roles
                    .iter()
                    .enumerate()
                    .find(|(at, role)| roles[..*at].contains(role));
                if groups.len() < 2 || groups.iter().any(Vec::is_empty) {
                    input.error(
                        "groups",
                        "a partition splits hosts into two groups or more, none empty",
                    );
                    return None;
                }
                if let Some((_, role)) = twice {
                    input.error(
                        "groups",
                        format!("role {role:?} is in two groups: a host is on one side"),
                    );
                    return None;
                }
                PartitionShape::Groups(groups)
            }
            (None, Some("ring")) => PartitionShape::Ring,
            (None, Some(other)) => {
                input.error(
                    "shape",
                    format!("{other:?} is not a shape faultlab knows: \"ring\""),
                );
                return None;
            }
            _ => {
                input.error(
                    "groups",
                    "give groups (groups = [[\"a\", \"b\"], [\"c\"]]) or a shape (shape = \"ring\"), one of them",
                );
                return None;
            }
        };
        Some(Self::Partition {
            shape,
            mode: spec.mode,
            deadline_ms: capped(input, spec.deadline_ms)?,
        })
    }

    /// Read the step's own fields for `keyword` (one of its variants' names).
    pub(super) fn parse(keyword: &str, input: &mut StepInput<'_, '_, '_>) -> Option<Self> {
        match keyword {
            "isolate" => {
                let spec = input.typed::<IsolateSpec>()?;
                if spec.conn.is_some() && spec.from.is_some() {
                    input.error(
                        "from",
                        "a connection already names its peer: give conn or from, not both",
                    );
                    return None;
                }
                Some(Self::Isolate {
                    mode: spec.mode,
                    deadline_ms: capped(input, spec.deadline_ms)?,
                    conn: spec.conn,
                    from: spec.from,
                    direction: spec.direction,
                    connections: spec.connections,
                })
            }
            "partition" => Self::partition(input),
            "heal" => input.typed::<NothingSpec>().map(|_| Self::Heal),
            "link-down" => {
                let spec = input.typed::<DeadlineSpec>()?;
                Some(Self::LinkDown {
                    deadline_ms: capped(input, spec.deadline_ms)?,
                })
            }
            "link-up" => input.typed::<NothingSpec>().map(|_| Self::LinkUp),
            "power-cut" => {
                let spec = input.typed::<DeadlineSpec>()?;
                Some(Self::PowerCut {
                    deadline_ms: capped(input, spec.deadline_ms)?,
                })
            }
            "power-on" => input.typed::<NothingSpec>().map(|_| Self::PowerOn),
            "degrade" => Self::degrade(input),
            "restore" => input.typed::<NothingSpec>().map(|_| Self::Restore),
            "counters" => input.typed::<NothingSpec>().map(|_| Self::Counters),
            "reboot" => input.typed::<RebootSpec>().and_then(|spec| {
                if spec.orderly && spec.simulated == Some(true) {
                    input.error(
                        "orderly",
                        "an orderly reboot is a real one: drop `simulated = true`",
                    );
                    return None;
                }
                Some(Self::Reboot {
                    // An orderly reboot is real.
                    simulated: if spec.orderly {
                        Some(false)
                    } else {
                        spec.simulated
                    },
                    down_ms: spec.down_ms,
                    orderly: spec.orderly,
                })
            }),
            // Not this family's: the caller says the keyword is unknown.
            _ => None,
        }
    }
}

/// The names a fault with a `conn` and a role's host (in `field`) uses.
fn conn_and_role<'a>(
    conn: &'a Option<String>,
    field: &'static str,
    role: &'a Option<String>,
) -> Vec<Reference<'a>> {
    conn.iter()
        .map(|conn| Reference::conn(conn))
        .chain(
            role.iter()
                .map(|role| Reference::UsesRole { field, name: role }),
        )
        .collect()
}

/// A fault's `deadline_ms`, if it is within the cap every fault has
/// ([`crate::MAX_FAULT_MS`]: the agents refuse more, and a lab's cable or
/// power must not stay cut for longer either); else an error at the field.
fn capped(input: &mut StepInput<'_, '_, '_>, deadline_ms: u64) -> Option<u64> {
    if deadline_ms == 0 {
        input.error(
            "deadline_ms",
            "every fault needs a deadline after which it heals itself: give one above 0",
        );
        return None;
    }
    if deadline_ms > crate::MAX_FAULT_MS {
        input.error(
            "deadline_ms",
            format!(
                "{deadline_ms} ms is over the cap of {} ms (10 minutes) every fault has, after which it heals itself",
                crate::MAX_FAULT_MS
            ),
        );
        return None;
    }
    Some(deadline_ms)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IsolateSpec {
    #[serde(default = "drop_mode")]
    mode: IsolationMode,
    deadline_ms: u64,
    conn: Option<String>,
    from: Option<String>,
    #[serde(default)]
    direction: IsolationDirection,
    #[serde(default)]
    connections: IsolatedConnections,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionSpec {
    groups: Option<Vec<Vec<String>>>,
    shape: Option<String>,
    #[serde(default = "drop_mode")]
    mode: IsolationMode,
    deadline_ms: u64,
}

fn drop_mode() -> IsolationMode {
    IsolationMode::Drop
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DegradeSpec {
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    jitter_ms: u64,
    distribution: Option<String>,
    #[serde(default)]
    loss: f64,
    #[serde(default)]
    loss_correlation: f64,
    #[serde(default)]
    loss_burst: f64,
    #[serde(default)]
    duplicate: f64,
    #[serde(default)]
    reorder: f64,
    #[serde(default)]
    corrupt: f64,
    rate: Option<String>,
    towards: Option<String>,
    conn: Option<String>,
    direction: Option<DegradeDirection>,
    deadline_ms: u64,
    #[serde(default)]
    connections: IsolatedConnections,
}

/// Which of a host's packets a degradation touches.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum DegradeDirection {
    /// What it sends (the default).
    Out,
    /// What it receives.
    In,
}

impl DegradeSpec {
    /// The impairment, or `None` after recording what is wrong with it,
    /// field by field.
    fn impairment(&self, input: &mut StepInput<'_, '_, '_>) -> Option<Impairment> {
        let mut fine = true;
        let rate_bits_per_second = match self.rate.as_deref().map(bits_per_second) {
            None => 0,
            Some(Ok(rate)) => rate,
            Some(Err(why)) => {
                input.error("rate", why);
                fine = false;
                0
            }
        };
        let impairment = Impairment {
            delay: Duration::from_millis(self.delay_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            distribution: self.distribution.clone(),
            loss_percent: self.loss,
            loss_correlation_percent: self.loss_correlation,
            loss_burst_packets: self.loss_burst,
            duplicate_percent: self.duplicate,
            reorder_percent: self.reorder,
            corrupt_percent: self.corrupt,
            rate_bits_per_second,
        };
        // The agent's own rules, field by field, under the file's keys.
        for problem in impairment.problems() {
            let field = match problem.field {
                "delay" => "delay_ms",
                "jitter" => "jitter_ms",
                field => field,
            };
            input.error(field, problem.message);
            fine = false;
        }
        fine.then_some(impairment)
    }
}

/// A rate such as `1mbit`, `500kbit`, `2gbit` or `64000bit`, in bits per second.
fn bits_per_second(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (number, unit) = lower
        .find(|c: char| !c.is_ascii_digit())
        .map_or((lower.as_str(), ""), |at| lower.split_at(at));
    let scale = match unit {
        "bit" | "" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{text:?}: give bits per second as e.g. 1mbit, 500kbit, 64000bit"
            ));
        }
    };
    match number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
    {
        Some(0) | None => Err(format!("{text:?}: a rate above 0, e.g. 1mbit")),
        Some(rate) => Ok(rate),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NothingSpec {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadlineSpec {
    deadline_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RebootSpec {
    simulated: Option<bool>,
    #[serde(default)]
    orderly: bool,
    #[serde(default = "default_down_ms")]
    down_ms: u64,
}

fn default_down_ms() -> u64 {
    DEFAULT_DOWN_MS
}
