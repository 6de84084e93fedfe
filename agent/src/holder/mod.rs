//! Holder processes: where test sockets live.
//!
//! A test socket never lives in the agent. The agent starts `faultlab-agent
//! holder` children (one per "application" of a case) and drives them over a
//! pipe ([`protocol`]). Making a holder exit without closing, or killing it,
//! is then a real process death: the kernel closes its sockets as it would
//! for a crashed application, and the agent lives on to report it.
//!
//! - `conn::runner`: the holder process's own loop (beside the connection
//!   engine it drives, so that this module only starts and talks to holders).
//! - [`process`]: the agent's handle on one holder.

pub mod process;
pub mod protocol;

pub use process::{HolderError, HolderProcess};
