//! Holder processes: where test sockets live.
//!
//! A test socket never lives in the agent. The agent starts `faultlab-agent
//! holder` children (one per "application" of a case) and drives them over a
//! pipe ([`protocol`]). Making a holder exit without closing, or killing it,
//! is then a real process death: the kernel closes its sockets as it would
//! for a crashed application, and the agent lives on to report it.
//!
//! - [`runner`]: the holder process's own loop.
//! - [`process`]: the agent's handle on one holder.

pub mod process;
pub mod protocol;
pub mod runner;

pub use process::{HolderError, HolderProcess};
