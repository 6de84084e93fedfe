//! Process faults: what happens to the program playing a role (it exits
//! without closing, is killed, frozen, thawed, restarted, or has its
//! connections destroyed under it). For an agent's role that program is its
//! holder; for an application's role, the application. Their input form,
//! checks and model live here; the engine's `steps::process` turns them
//! into agent requests.

use super::Reference;
use crate::scenario::parse::input::StepInput;
use faultlab_proto::Capability;
use serde::Deserialize;

/// A fault done to the program playing a role.
#[derive(Clone, Debug, PartialEq, strum::IntoStaticStr, strum::VariantNames)]
#[strum(serialize_all = "kebab-case")]
pub enum ProcessFault {
    /// The role's process exits without closing its sockets.
    Exit {
        /// Exit code.
        code: i32,
    },
    /// The role's process is killed (SIGKILL / TerminateProcess).
    Kill,
    /// Destroy sockets on the role's host as a broken middlebox would (the
    /// peer gets a RST, the owning program ECONNABORTED): the flow of one
    /// connection, or with no `conn` every connection of the role's
    /// application port (needs `process`).
    AbortConnections {
        /// The connection whose flow to abort (either end's name).
        conn: Option<String>,
    },
    /// Freeze the role's process (SIGSTOP): its kernel still ACKs (needs `process`).
    Stop,
    /// Thaw it (SIGCONT) (needs `process`).
    Continue,
    /// Restart the role's process with its configured command (needs `process`).
    Restart,
}

impl ProcessFault {
    /// The capability an agent needs for it, if beyond its own holders.
    pub fn capability(&self) -> Option<Capability> {
        match self {
            Self::Exit { .. } | Self::Kill => None,
            Self::AbortConnections { .. } | Self::Stop | Self::Continue | Self::Restart => {
                Some(Capability::Process)
            }
        }
    }

    /// Whether it acts on an application's process (which the target must
    /// name) when an application plays the role.
    pub fn acts_on_the_process(&self) -> bool {
        matches!(
            self,
            Self::Kill | Self::Stop | Self::Continue | Self::Restart
        )
    }

    /// The names it uses.
    pub(super) fn references(&self) -> Vec<Reference<'_>> {
        match self {
            Self::AbortConnections { conn: Some(conn) } => vec![Reference::conn(conn)],
            _ => Vec::new(),
        }
    }

    /// Read the step's own fields for `keyword` (one of its variants' names).
    pub(super) fn parse(keyword: &str, input: &mut StepInput<'_, '_, '_>) -> Option<Self> {
        match keyword {
            "exit" => input
                .typed::<ExitSpec>()
                .map(|spec| Self::Exit { code: spec.code }),
            "abort-connections" => input
                .typed::<AbortSpec>()
                .map(|spec| Self::AbortConnections { conn: spec.conn }),
            bare => {
                input.typed::<NothingSpec>()?;
                Some(match bare {
                    "kill" => Self::Kill,
                    "stop" => Self::Stop,
                    "continue" => Self::Continue,
                    _ => Self::Restart,
                })
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExitSpec {
    #[serde(default)]
    code: i32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortSpec {
    conn: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NothingSpec {}
