//! Where the agent keeps what must outlive it: the routes of a link it took
//! down and the root qdisc of an interface it degraded, which its watchdog
//! processes put back even if the agent is gone. Under systemd that is the
//! unit's runtime directory (`RuntimeDirectory=`, kept across restarts by
//! `RuntimeDirectoryPreserve=yes`), not its private /tmp, which systemd
//! empties when the service stops; elsewhere the temporary directory.
//!
//! Each record also carries its fault's deadline, so that an agent started
//! again after a crash (whose watchdogs may have died with it: `systemctl
//! kill` signals the whole unit) takes the fault over and heals it when it
//! was due, neither never nor early.

#[cfg(unix)]
use crate::platform::clock::monotonic_ns;
use std::path::PathBuf;
#[cfg(unix)]
use std::time::Duration;

/// The directory (`$RUNTIME_DIRECTORY`'s first entry, else the temporary
/// directory).
pub fn dir() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|dirs| std::env::split_paths(&dirs).next())
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// The first line of a record: when its fault's deadline falls, on
/// `CLOCK_MONOTONIC` (one clock for every process of this boot; the
/// runtime directory does not outlive a boot).
#[cfg(unix)]
const DEADLINE_LINE: &str = "# deadline-mono-ns ";

/// `body` headed by a deadline `left` from now.
#[cfg(unix)]
pub fn with_deadline(body: &str, left: Duration) -> String {
    let left = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
    let at = monotonic_ns().saturating_add(left);
    format!("{DEADLINE_LINE}{at}\n{body}")
}

/// A record's body, and how far its deadline still is (zero when it has
/// passed, or when the record has none).
#[cfg(unix)]
pub fn split_deadline(record: &str) -> (&str, Duration) {
    match record
        .strip_prefix(DEADLINE_LINE)
        .and_then(|rest| rest.split_once('\n'))
    {
        Some((at, body)) => {
            let left = at
                .trim()
                .parse::<u64>()
                .map_or(0, |at| at.saturating_sub(monotonic_ns()));
            (body, Duration::from_nanos(left))
        }
        None => (record, Duration::ZERO),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_record_gives_back_its_body_and_the_time_left() {
        let record = with_deadline("-4 route default via 198.18.1.1\n", Duration::from_secs(60));
        let (body, left) = split_deadline(&record);
        assert_eq!(body, "-4 route default via 198.18.1.1\n");
        assert!(
            left > Duration::from_secs(59) && left <= Duration::from_secs(60),
            "{left:?}"
        );
        let (body, left) = split_deadline("qdisc fq 8001: root");
        assert_eq!((body, left), ("qdisc fq 8001: root", Duration::ZERO));
        let past = format!("{DEADLINE_LINE}1\nbody");
        assert_eq!(split_deadline(&past), ("body", Duration::ZERO));
    }
}
