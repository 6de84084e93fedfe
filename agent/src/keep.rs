//! Where the agent keeps what must outlive it: the routes of a link it took
//! down and the root qdisc of an interface it degraded, which its watchdog
//! processes put back even if the agent is gone. Under systemd that is the
//! unit's runtime directory (`RuntimeDirectory=`, kept across restarts by
//! `RuntimeDirectoryPreserve=yes`), not its private /tmp, which systemd
//! empties when the service stops; elsewhere the temporary directory.

use std::path::PathBuf;

/// The directory (`$RUNTIME_DIRECTORY`'s first entry, else the temporary
/// directory).
pub fn dir() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|dirs| std::env::split_paths(&dirs).next())
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}
