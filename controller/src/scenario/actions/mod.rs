//! Everything a step can do, in four families, each in a file of its own
//! that owns the family's input form, its checks and its model:
//!
//! - [`socket`](SocketCall): a holder's socket calls;
//! - [`network`](NetworkFault): faults done to a host on the network;
//! - [`process`](ProcessFault): faults done to the program playing a role;
//! - [`timing`](Timing): waits on the timeline itself.
//!
//! The engine has the same four rooms (`engine::steps`), where each family
//! becomes agent requests. Adding an action means: its variant, input form
//! and references in its family file here, its request in the engine's
//! family file, and the RPC in the proto and the agent.

mod network;
mod process;
mod socket;
mod timing;

pub use faultlab_proto::CloseMode;
pub use network::{
    Impairment, IsolatedConnections, IsolationDirection, IsolationMode, NetworkFault,
    PartitionShape,
};
pub use process::ProcessFault;
pub use socket::{AcceptQueueOverflow, Options, Payload, SocketCall};
pub use timing::Timing;

use super::parse::input::StepInput;
use strum::VariantNames as _;

/// Everything a step can do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A socket call of the role's holder.
    Socket(SocketCall),
    /// A fault done to the role's host on the network.
    Network(NetworkFault),
    /// A fault done to the program playing the role.
    Process(ProcessFault),
    /// A wait on the timeline (no role).
    Timing(Timing),
}

/// A name a step uses or defines: what the checks across the timeline
/// follow. `field` is the step's key that holds the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference<'a> {
    /// Uses a connection an earlier step opened (`connect`/`accept` `as`).
    UsesConn {
        /// The key.
        field: &'static str,
        /// The name.
        name: &'a str,
    },
    /// Uses a listener an earlier step opened.
    UsesListener {
        /// The key.
        field: &'static str,
        /// The name.
        name: &'a str,
    },
    /// Waits for an earlier background step.
    UsesBackground {
        /// The key.
        field: &'static str,
        /// The step's name.
        name: &'a str,
    },
    /// Names a role of the scenario.
    UsesRole {
        /// The key.
        field: &'static str,
        /// The role.
        name: &'a str,
    },
    /// Opens a connection under this name.
    DefinesConn(&'a str),
    /// Opens a listener under this name.
    DefinesListener(&'a str),
}

impl<'a> Reference<'a> {
    /// Uses the connection `name`, given as `conn = "..."`.
    pub fn conn(name: &'a str) -> Self {
        Self::UsesConn {
            field: "conn",
            name,
        }
    }
}

/// Every action keyword (each family's variants, in kebab-case), family by family.
pub fn keywords() -> impl Iterator<Item = &'static str> {
    SocketCall::VARIANTS
        .iter()
        .chain(NetworkFault::VARIANTS)
        .chain(ProcessFault::VARIANTS)
        .chain(Timing::VARIANTS)
        .copied()
}

impl Action {
    /// The name scenarios use for this action (`do = "..."`).
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Socket(call) => call.into(),
            Self::Network(fault) => fault.into(),
            Self::Process(fault) => fault.into(),
            Self::Timing(timing) => timing.into(),
        }
    }

    /// The capability an agent needs for this action, if beyond connections.
    pub fn capability(&self) -> Option<faultlab_proto::Capability> {
        match self {
            Self::Network(fault) => fault.capability(),
            Self::Process(fault) => fault.capability(),
            Self::Socket(call) => call.capability(),
            Self::Timing(_) => None,
        }
    }

    /// Whether it tells connection attempts from open connections by TCP
    /// flags (a host firewall that matches none cannot make it).
    pub fn cuts_by_tcp_flags(&self) -> bool {
        matches!(
            self,
            Self::Network(
                NetworkFault::Isolate {
                    connections: IsolatedConnections::New | IsolatedConnections::Established,
                    ..
                } | NetworkFault::Degrade {
                    connection_attempts: true,
                    ..
                }
            )
        )
    }

    /// The names it uses and defines.
    pub fn references(&self) -> Vec<Reference<'_>> {
        match self {
            Self::Socket(call) => call.references(),
            Self::Network(fault) => fault.references(),
            Self::Process(fault) => fault.references(),
            Self::Timing(timing) => timing.references(),
        }
    }

    /// Whether a role does it (every action but the timeline's own).
    pub fn takes_role(&self) -> bool {
        !matches!(
            self,
            Self::Timing(_) | Self::Network(NetworkFault::Partition { .. })
        )
    }

    /// Whether it may go without its role: a heal with none lifts every
    /// isolation of the case.
    pub fn role_is_optional(&self) -> bool {
        matches!(self, Self::Network(NetworkFault::Heal))
    }

    /// Whether it can run on while later steps go on.
    pub fn may_run_in_background(&self) -> bool {
        matches!(
            self,
            Self::Socket(
                SocketCall::Send { .. } | SocketCall::Recv { .. } | SocketCall::WaitEnd { .. }
            ) | Self::Timing(Timing::Sleep { .. })
        )
    }

    /// For a role an application plays: whether the step is the
    /// application's own socket call (faultlab neither makes nor sees it),
    /// and if so whether it is one the application decides to do
    /// (`Some(true)`: send, close, exit, ...) rather than one that just
    /// happens (`Some(false)`: listen, accept, recv). `None`: a fault the
    /// agent on its host carries out.
    pub fn by_application(&self) -> Option<bool> {
        match self {
            Self::Socket(call) => Some(call.decided_by_application()),
            Self::Process(ProcessFault::Exit { .. }) => Some(true),
            _ => None,
        }
    }

    /// Read a step's own fields for `keyword`; `None` with the errors
    /// recorded, or for a keyword no family knows (the caller says so).
    pub(crate) fn parse(keyword: &str, input: &mut StepInput<'_, '_, '_>) -> Option<Self> {
        if SocketCall::VARIANTS.contains(&keyword) {
            SocketCall::parse(keyword, input).map(Self::Socket)
        } else if NetworkFault::VARIANTS.contains(&keyword) {
            NetworkFault::parse(keyword, input).map(Self::Network)
        } else if ProcessFault::VARIANTS.contains(&keyword) {
            ProcessFault::parse(keyword, input).map(Self::Process)
        } else if Timing::VARIANTS.contains(&keyword) {
            Timing::parse(keyword, input).map(Self::Timing)
        } else {
            None
        }
    }
}
