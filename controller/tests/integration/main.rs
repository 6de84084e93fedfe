//! The controller's integration tests that share a machine well, one
//! binary: the engine on loopback and namespace labs, the CLI as a user
//! runs it, cleanups that fail for real, hostile input, TLS, traces into a
//! real backend, the HTML report in a real browser, the wire against
//! tcpdump. One binary links the workspace once instead of once per file;
//! each file is a module, named in a filter as
//! `cargo test --test integration cli::`. Tests that run a lab take turns
//! (`common::lab_turn`). Tests that need the machine to themselves have
//! binaries of their own: `busy_host`, `staying_power`, `vm_labs`.

#[path = "../common/mod.rs"]
mod common;

mod applications;
mod browser;
mod cleanups;
mod cli;
mod engine;
mod hostile_cli;
mod hostile_scenarios;
mod security;
mod traces;
mod wire_vs_tcpdump;
