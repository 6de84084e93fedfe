//! The agent's integration tests, one binary: real agent processes, real
//! sockets, holders, nftables rules and network namespaces. One binary
//! links the workspace once instead of once per file (nine files were nine
//! links, each of the whole dependency tree); each file is a module, named
//! in a filter as `cargo test --test integration isolation::`.

mod common;

mod cases;
mod degrade;
mod foreign_connections;
mod hostile_requests;
mod isolation;
mod links;
mod owners;
mod robustness;
mod tcp_settings;
mod wire;
