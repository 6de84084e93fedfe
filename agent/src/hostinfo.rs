//! What host an agent runs on: gathered once at start (it does not change
//! while the agent runs), so answering costs nothing and nothing is kept
//! resident for it.

use crate::platform::{Current, Platform};
use sysinfo::System;

/// Facts about the host and this agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// Host name.
    pub hostname: String,
    /// "linux", "windows", ...
    pub os_family: String,
    /// Distribution or product and version.
    pub os_version: String,
    /// Kernel version.
    pub kernel_version: String,
    /// CPU architecture.
    pub arch: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Total memory.
    pub memory_bytes: u64,
    /// This agent's version.
    pub agent_version: String,
    /// Changes on every boot.
    pub boot_id: String,
    /// What this agent may do.
    pub capabilities: Vec<String>,
    /// The agent's process id.
    pub pid: u32,
    /// Capabilities it may not offer, and why ("degrade: ...").
    pub unavailable: Vec<String>,
    /// Who asks (its certificate's name): set for one caller's view.
    pub caller: String,
    /// Capabilities the access rules deny that caller.
    pub denied: Vec<String>,
}

impl HostInfo {
    /// Ask the OS; `capabilities` are what this agent offers.
    pub fn gather(capabilities: Vec<String>) -> Self {
        let memory_bytes = System::new().map_or(0, |mut memory| {
            memory.refresh_memory();
            memory.total_memory()
        });
        Self {
            hostname: System::host_name().unwrap_or_default(),
            os_family: std::env::consts::OS.to_owned(),
            os_version: System::long_os_version().unwrap_or_default(),
            kernel_version: System::kernel_version().unwrap_or_default(),
            arch: System::cpu_arch(),
            cpus: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            memory_bytes,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            boot_id: Current::boot_id(),
            capabilities,
            pid: std::process::id(),
            unavailable: Vec::new(),
            caller: String::new(),
            denied: Vec::new(),
        }
    }
}
