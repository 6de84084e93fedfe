//! The audit trail: who changed what on this host, and what came of it.
//!
//! An agent acts on a lab host for whoever holds a certificate of the lab's
//! CA, so every call that changes something (all but the read-only ones:
//! `HostInfo`, `Events`, `LinkState`, `ListConnections`, `TcpCounters`,
//! `AuditTrail`), allowed or denied, leaves one entry; so does each heal
//! a watchdog process makes at a fault's deadline, and each cleanup the
//! agent makes on its own (a session's holders when its caller is gone; at
//! its start, the faults an earlier life of it left: taken over, undone).
//! An entry is one log line at `info`, target `faultlab_agent::audit`, its
//! fields always in this order (docs/security.md documents the form):
//!
//! ```text
//! audit caller="ci-job" rpc=Isolate capability=isolate fault="cut-1" deadline_ms=5000 result="ok" request="IsolateRequest { .. }"
//! ```
//!
//! The agent also keeps its last [`KEPT`] entries, which `faultlab audit`
//! reads (the `AuditTrail` call) without access to the host's logs.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::Mutex;

/// Target of the audit lines, for filters (`RUST_LOG=faultlab_agent::audit=info`).
pub const TARGET: &str = "faultlab_agent::audit";
/// Entries kept for `AuditTrail`.
pub const KEPT: usize = 512;
/// Longest request text kept (payload bytes would flood the log).
const MAX_REQUEST_CHARS: usize = 300;

/// One thing done (or refused) on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// When it ended, wall clock, ns since the Unix epoch.
    pub at_unix_ns: i64,
    /// Who: the caller's certificate name, `watchdog`, or `agent`.
    pub caller: String,
    /// What: the RPC, or the watchdog or cleanup.
    pub rpc: String,
    /// The capability it used ("" for none).
    pub capability: String,
    /// The fault it made or undid: its id, interface or setting ("" for none).
    pub fault: String,
    /// The deadline it was given, in ms (0 for none).
    pub deadline_ms: u32,
    /// `ok`, or the status code and message (`PermissionDenied: ...`).
    pub result: String,
    /// The request, shortened.
    pub request: String,
}

impl Entry {
    /// Leave the entry's line in the log.
    fn log(&self) {
        tracing::info!(
            target: TARGET,
            caller = ?self.caller,
            rpc = %self.rpc,
            capability = %if self.capability.is_empty() { "-" } else { &self.capability },
            fault = ?self.fault,
            deadline_ms = self.deadline_ms,
            result = ?self.result,
            request = ?self.request,
            "audit"
        );
    }
}

/// The request's text, no longer than [`MAX_REQUEST_CHARS`]: formatting
/// stops there (a Send's payload is not written out whole to be cut).
pub fn shortened(request: &impl Debug) -> String {
    /// A text that takes no more than its room.
    struct Bounded(String);
    impl std::fmt::Write for Bounded {
        fn write_str(&mut self, part: &str) -> std::fmt::Result {
            let room = MAX_REQUEST_CHARS + 1 - self.0.len().min(MAX_REQUEST_CHARS + 1);
            let mut cut = part.len().min(room);
            while !part.is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.push_str(&part[..cut]);
            if cut < part.len() {
                Err(std::fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    let mut text = Bounded(String::new());
    let full = std::fmt::write(&mut text, format_args!("{request:?}")).is_ok()
        && text.0.len() <= MAX_REQUEST_CHARS;
    let mut text = text.0;
    if !full {
        let mut cut = MAX_REQUEST_CHARS.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// The last entries, newest last.
#[derive(Debug, Default)]
pub struct Trail {
    entries: Mutex<VecDeque<Entry>>,
}

impl Trail {
    /// Log `entry` and keep it (the oldest goes beyond [`KEPT`]).
    pub fn record(&self, mut entry: Entry) {
        if entry.at_unix_ns == 0 {
            entry.at_unix_ns = crate::platform::wall::wall_unix_ns();
        }
        entry.log();
        let mut entries = crate::sync::lock(&self.entries);
        if entries.len() == KEPT {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// The newest `count` entries, oldest first.
    pub fn last(&self, count: usize) -> Vec<Entry> {
        let entries = crate::sync::lock(&self.entries);
        let skip = entries.len().saturating_sub(count);
        entries.iter().skip(skip).cloned().collect()
    }
}

/// The entry of a watchdog process that undid `fault` at its deadline
/// (`after` from its start), logged by that process: the agent may be gone.
pub fn watchdog(kind: &str, fault: &str, after_ms: u64, result: &Result<(), String>) {
    done_alone("watchdog", kind, fault, after_ms, result);
}

/// The entry of what an agent did at its start to a fault an earlier life
/// of it left (`what`: `TakeOver`, watched until its deadline `left_ms`
/// away, or `UndoLeft`, undone at once), logged as it starts.
pub fn earlier_life(what: &str, fault: &str, left_ms: u64, result: &Result<(), String>) {
    done_alone("agent", what, fault, left_ms, result);
}

/// Log an entry no caller asked for.
fn done_alone(who: &str, what: &str, fault: &str, deadline_ms: u64, result: &Result<(), String>) {
    Entry {
        at_unix_ns: crate::platform::wall::wall_unix_ns(),
        caller: who.to_owned(),
        rpc: what.to_owned(),
        capability: String::new(),
        fault: fault.to_owned(),
        deadline_ms: u32::try_from(deadline_ms).unwrap_or(u32::MAX),
        result: match result {
            Ok(()) => "ok".to_owned(),
            Err(error) => format!("failed: {error}"),
        },
        request: String::new(),
    }
    .log();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trail_keeps_the_newest_entries_in_order() {
        let trail = Trail::default();
        for index in 0..KEPT + 3 {
            trail.record(Entry {
                rpc: format!("call-{index}"),
                ..Entry::default()
            });
        }
        let last = trail.last(2);
        assert_eq!(
            last.iter()
                .map(|entry| entry.rpc.as_str())
                .collect::<Vec<_>>(),
            [format!("call-{}", KEPT + 1), format!("call-{}", KEPT + 2)]
        );
        assert!(last.iter().all(|entry| entry.at_unix_ns > 0));
        assert_eq!(trail.last(usize::MAX).len(), KEPT);
        assert_eq!(
            trail
                .last(usize::MAX)
                .first()
                .map(|entry| entry.rpc.clone()),
            Some("call-3".to_owned())
        );
    }

    #[test]
    fn a_long_request_is_shortened_on_a_character_boundary() {
        let text = shortened(&"é".repeat(400));
        assert!(text.ends_with("...") && text.len() <= MAX_REQUEST_CHARS + 3);
        assert_eq!(shortened(&"short"), "\"short\"");
    }
}
