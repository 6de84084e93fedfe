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

/// The records kept for interfaces, by the start of their names
/// (`prefix`, then a valid interface name): each interface with what its
/// record says.
#[cfg(unix)]
pub fn records_of_interfaces(prefix: &str) -> Vec<(String, String)> {
    std::fs::read_dir(dir())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            let interface = name
                .strip_prefix(prefix)
                .filter(|interface| crate::link::valid_interface(interface))?;
            let record = std::fs::read_to_string(entry.path()).ok()?;
            Some((interface.to_owned(), record))
        })
        .collect()
}

/// The first line of a record: when its fault's deadline falls, on
/// `CLOCK_MONOTONIC` (one clock for every process of this boot; the
/// runtime directory does not outlive a boot), then the fault's id.
#[cfg(unix)]
const DEADLINE_LINE: &str = "# deadline-mono-ns ";

/// What a record holds besides its header.
#[cfg(unix)]
#[derive(Debug, PartialEq, Eq)]
pub struct Kept<'a> {
    /// What undoing the fault puts back.
    pub body: &'a str,
    /// How far its deadline still is (zero when it has passed, or when the
    /// record has none).
    pub left: Duration,
    /// The id the fault was asked under (empty when none was written).
    pub id: &'a str,
}

/// `body` headed by a deadline `left` from now and the fault's `id`
/// (a line of its own: anything after a line break is left out).
#[cfg(unix)]
pub fn with_deadline(body: &str, left: Duration, id: &str) -> String {
    let left = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
    let at = monotonic_ns().saturating_add(left);
    let id = id.lines().next().unwrap_or_default();
    format!("{DEADLINE_LINE}{at} {id}\n{body}")
}

/// Read a record written by [`with_deadline`] (or a bare body).
#[cfg(unix)]
pub fn read(record: &str) -> Kept<'_> {
    match record
        .strip_prefix(DEADLINE_LINE)
        .and_then(|rest| rest.split_once('\n'))
    {
        Some((header, body)) => {
            let (at, id) = header.split_once(' ').unwrap_or((header, ""));
            let left = at
                .trim()
                .parse::<u64>()
                .map_or(0, |at| at.saturating_sub(monotonic_ns()));
            Kept {
                body,
                left: Duration::from_nanos(left),
                id: id.trim(),
            }
        }
        None => Kept {
            body: record,
            left: Duration::ZERO,
            id: "",
        },
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_record_gives_back_its_body_its_id_and_the_time_left() {
        let record = with_deadline(
            "-4 route default via 198.18.1.1\n",
            Duration::from_secs(60),
            "Z9-2-degrade-40e429b5",
        );
        let kept = read(&record);
        assert_eq!(kept.body, "-4 route default via 198.18.1.1\n");
        assert_eq!(kept.id, "Z9-2-degrade-40e429b5");
        assert!(
            kept.left > Duration::from_secs(59) && kept.left <= Duration::from_secs(60),
            "{:?}",
            kept.left
        );
        let bare = read("qdisc fq 8001: root");
        assert_eq!(
            bare,
            Kept {
                body: "qdisc fq 8001: root",
                left: Duration::ZERO,
                id: ""
            }
        );
        let past = format!("{DEADLINE_LINE}1 x\nbody");
        assert_eq!(
            (read(&past).body, read(&past).left),
            ("body", Duration::ZERO)
        );
    }
}
