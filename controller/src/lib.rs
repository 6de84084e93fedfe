//! faultlab: the controller that drives faultlab agents on lab hosts.
//!
//! # Layout
//! - [`agents`]: connecting to agents and asking what hosts they run on.
//!
//! Scenarios, the engine, the seed suite and reports arrive with the
//! controller issue; this crate already speaks the contract in `faultlab-proto`.

pub mod agents;
