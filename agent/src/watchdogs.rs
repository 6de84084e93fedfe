//! The watchdog processes' entry points: `faultlab-agent link-watchdog`,
//! `degrade-watchdog`, `tune-watchdog` and `isolation-watchdog` are the same executable,
//! started detached by the agent when it makes a fault, so that the fault
//! heals at its deadline even if the agent dies. Each sleeps, then undoes
//! one fault; where this OS keeps the deadline another way (the kernel's
//! timeout of a firewall entry on Linux), there is no such process.

use std::time::Duration;

/// Bring `interface` back up `after` from now.
#[cfg(unix)]
pub fn link(interface: &str, after: Duration) -> Result<(), String> {
    crate::link::iproute::watchdog_main(interface, after)
        .map_err(|error| format!("cannot bring {interface} back up: {error}"))
}

/// Bring `interface` back up `after` from now.
#[cfg(not(unix))]
pub fn link(_interface: &str, _after: Duration) -> Result<(), String> {
    Err("link control is not implemented on this OS yet".to_owned())
}

/// Heal `interface`'s degradation `after` from now.
#[cfg(unix)]
pub fn degradation(interface: &str, after: Duration) -> Result<(), String> {
    crate::degrade::tc::watchdog_main(interface, after)
        .map_err(|error| format!("cannot heal {interface}'s degradation: {error}"))
}

/// Heal `interface`'s degradation `after` from now.
#[cfg(not(unix))]
pub fn degradation(_interface: &str, _after: Duration) -> Result<(), String> {
    Err("degrading the network is not implemented on this OS".to_owned())
}

/// Put the TCP setting named `setting` back `after` from now.
#[cfg(target_os = "linux")]
pub fn tcp_setting(setting: &str, after: Duration) -> Result<(), String> {
    crate::tune::sysctl::watchdog_main(setting, after)
        .map_err(|error| format!("cannot put {setting} back: {error}"))
}

/// Put the TCP setting named `setting` back `after` from now.
#[cfg(not(target_os = "linux"))]
pub fn tcp_setting(_setting: &str, _after: Duration) -> Result<(), String> {
    Err("TCP settings are not changed on this OS".to_owned())
}

/// Lift isolation `id` `after` from now.
#[cfg(windows)]
pub fn isolation(id: &str, after: Duration) -> Result<(), String> {
    crate::isolate::windows_firewall::watchdog_main(id, after)
        .map_err(|error| format!("cannot lift isolation {id}: {error}"))
}

/// Lift isolation `id` `after` from now.
#[cfg(not(windows))]
pub fn isolation(_id: &str, _after: Duration) -> Result<(), String> {
    Err("isolations lift by themselves here (the kernel holds the deadline)".to_owned())
}
