//! Runs scenarios on agents: binds roles to agents, plays each case's
//! timeline, checks what happened against the expectations for each host's
//! OS, and turns it all into a [`RunReport`].
//!
//! Every step waits for the one before it (a barrier across hosts), except
//! steps released together (`with`), which are sent ahead and act at one
//! moment. The controller's clock is the run clock, and each agent's
//! monotonic clock is mapped onto it through an offset measured at the
//! start (NTP-style, the sample with the shortest round trip wins), so times
//! from different hosts line up. A case that loses an agent or runs out of
//! time ends alone; the run goes on.
//!
//! Its rooms, from the outside in:
//! - `handles`: the agents, the applications under test, the run clock;
//! - `plan`: what to run where (bindings of roles to agents);
//! - `placement`: which case runs on which hosts, in which turn;
//! - `run`: the whole run, a few cases at a time, into a [`RunReport`];
//! - `case`: one case on one binding, from checks to verdict;
//! - `undo`: a case's undo list, which each family of faults fills as it makes them;
//! - `cleanup`: the playing of that list at a case's end, and what it could not confirm;
//! - `timeline`: a case's steps in order, released together, in the background;
//! - `steps`: one step as the agent call that performs it, one file per
//!   family of actions;
//! - `state`: what a case builds up as it plays (names, its undo list, outcomes);
//! - `wire`: the captures of a case and the wire expectations;
//! - `judge`: outcomes against expectations, observations for the report;
//! - `detection`: how long after a FIN/RST arrived the call waiting for it ended;
//! - `probe`: an application's health after a case.

mod case;
mod cleanup;
mod detection;
#[cfg(test)]
mod fake_agent;
mod handles;
mod judge;
mod placement;
mod plan;
pub mod probe;
mod run;
mod state;
mod steps;
mod timeline;
mod undo;
mod wire;

pub use case::{run_case, run_case_on};
pub use handles::{AgentHandle, PlaceError, RunClock, TargetHandle};
pub use placement::{Placement, inherent_wait_ms};
pub use plan::Plan;
pub use run::{Progress, Quiet, new_run_id, run, run_span};

#[cfg(doc)]
use crate::report::RunReport;
