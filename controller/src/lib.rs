//! faultlab: the controller that drives faultlab agents on lab hosts.
//!
//! # Layout
//! - [`scenario`]: scenario files: the model, parsing and validation.
//! - [`agents`]: connecting to agents and asking what hosts they run on.
//! - [`engine`]: binds roles to agents, plays timelines, judges outcomes.
//! - [`suites`]: the built-in suites (the seed catalogue), compiled in.
//! - [`inventory`]: which agents a lab has.
//! - [`lab`]: the local default lab (agents on loopback, no setup).
//! - [`history`]: every run kept in SQLite; list, show, diff.
//! - [`bench`](mod@bench): benchmarks of the engine (barrier release and fan-out skew, suite overhead).
//! - [`report`]: the run's results and their renderings (terminal, JSON, JUnit).

pub mod agents;
pub mod bench;
pub mod certs;
pub mod engine;
pub mod history;
pub mod inventory;
pub mod lab;
pub mod report;
pub mod scenario;
pub mod suites;
pub mod targets;
