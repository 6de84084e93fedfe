//! faultlab: the controller that drives faultlab agents on lab hosts.
//!
//! # Layout
//! - [`scenario`]: scenario files: the model, the actions by family, parsing and checks.
//! - [`engine`]: binds roles to agents, plays timelines, judges outcomes, probes applications.
//! - [`lab`]: labs on this machine (network namespaces as root, else loopback), for a run or
//!   kept up between commands.
//! - [`agents`]: reaching agents (plain or mutual TLS) and asking them what they host.
//! - [`inventory`]: which agents and applications a lab has.
//! - [`targets`]: applications under test: address, payload, reply, process, probe bounds.
//! - [`suites`]: the built-in suites (the seed catalogue, the application cases), compiled in.
//! - [`report`]: the run's results and their renderings (terminal, JSON, JUnit, HTML, Markdown).
//! - [`history`]: every run kept in SQLite; list, show, diff.
//! - [`certs`]: the lab's certificate authority for mutual TLS.
//! - [`bench`](mod@bench): benchmarks of the engine (release and fan-out skew, suite overhead).
//!
//! The binary `faultlab` is thin: `main.rs` dispatches to one file of `cli/` per subcommand.

/// The longest any fault may last before it heals itself, in ms: 10
/// minutes, the cap the agents put on theirs by default (`max_isolation_ms`),
/// and the cap on what a lab does from outside (cable pulls, power cuts).
/// `faultlab check` refuses a longer `deadline_ms`.
pub const MAX_FAULT_MS: u64 = 600_000;

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
