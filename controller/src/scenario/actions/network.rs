//! Network faults: what happens to a role's host on the network (cut off,
//! healed, cable pulled and plugged back, power cut and back, rebooted). Their input form,
//! checks and model live here; the engine's `steps::network` turns them
//! into agent requests.

use super::Reference;
use crate::scenario::parse::input::StepInput;
use serde::Deserialize;

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
    },
    /// Lift the role's isolation (needs `isolate`).
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
    /// Reboot the role's host, really or simulated (needs `reboot`, or
    /// `isolate` for a simulated one).
    Reboot {
        /// Simulated (drop everything, forget sockets, come back) or real;
        /// unsaid: real where the host's agent may reboot it, else simulated.
        simulated: Option<bool>,
        /// How long the host stays down (simulated).
        down_ms: u64,
    },
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
    /// The capability an agent needs for it.
    pub fn capability(&self) -> &'static str {
        match self {
            Self::Isolate { .. }
            | Self::Heal
            | Self::Reboot {
                simulated: Some(true) | None,
                ..
            } => "isolate",
            Self::Reboot {
                simulated: Some(false),
                ..
            } => "reboot",
            Self::LinkDown { .. } | Self::LinkUp => "link",
            Self::PowerCut { .. } | Self::PowerOn => "power",
        }
    }

    /// The names it uses.
    pub(super) fn references(&self) -> Vec<Reference<'_>> {
        match self {
            Self::Isolate {
                conn: Some(conn), ..
            } => vec![Reference::conn(conn)],
            _ => Vec::new(),
        }
    }

    /// Read the step's own fields for `keyword` (one of its variants' names).
    pub(super) fn parse(keyword: &str, input: &mut StepInput<'_, '_, '_>) -> Option<Self> {
        match keyword {
            "isolate" => input.typed::<IsolateSpec>().map(|spec| Self::Isolate {
                mode: spec.mode,
                deadline_ms: spec.deadline_ms,
                conn: spec.conn,
            }),
            "heal" => input.typed::<NothingSpec>().map(|_| Self::Heal),
            "link-down" => input.typed::<DeadlineSpec>().map(|spec| Self::LinkDown {
                deadline_ms: spec.deadline_ms,
            }),
            "link-up" => input.typed::<NothingSpec>().map(|_| Self::LinkUp),
            "power-cut" => input.typed::<DeadlineSpec>().map(|spec| Self::PowerCut {
                deadline_ms: spec.deadline_ms,
            }),
            "power-on" => input.typed::<NothingSpec>().map(|_| Self::PowerOn),
            _ => input.typed::<RebootSpec>().map(|spec| Self::Reboot {
                simulated: spec.simulated,
                down_ms: spec.down_ms,
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IsolateSpec {
    #[serde(default = "drop_mode")]
    mode: IsolationMode,
    deadline_ms: u64,
    conn: Option<String>,
}

fn drop_mode() -> IsolationMode {
    IsolationMode::Drop
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
    #[serde(default = "default_down_ms")]
    down_ms: u64,
}

fn default_down_ms() -> u64 {
    DEFAULT_DOWN_MS
}
