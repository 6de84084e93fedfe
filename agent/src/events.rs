//! The agent's event log: what happened unasked (a holder died, a watched
//! connection saw FIN or RST), numbered, so a controller that subscribes late
//! or reconnects can ask for everything since the last number it saw.

use crate::model::{Event, EventKind};
use crate::platform::{Current, Platform, wall_unix_ns};
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

/// Events kept before the oldest are dropped (a run resets the log).
pub const DEFAULT_CAPACITY: usize = 10_000;

struct Log {
    events: VecDeque<Event>,
    next_seq: u64,
}

/// A bounded, numbered log with a signal for new entries.
pub struct EventLog {
    log: Mutex<Log>,
    capacity: usize,
    newest: watch::Sender<u64>,
}

impl EventLog {
    /// An empty log keeping at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            log: Mutex::new(Log {
                events: VecDeque::new(),
                next_seq: 1,
            }),
            capacity: capacity.max(1),
            newest: watch::channel(0).0,
        }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        crate::sync::lock(&self.log)
    }

    /// Append an event, stamped now; returns its sequence number.
    pub fn push(&self, kind: EventKind) -> u64 {
        let seq = {
            let mut log = self.log();
            let seq = log.next_seq;
            log.next_seq += 1;
            if log.events.len() == self.capacity {
                log.events.pop_front();
            }
            log.events.push_back(Event {
                seq,
                mono_ns: Current::monotonic_ns(),
                wall_unix_ns: wall_unix_ns(),
                kind,
            });
            seq
        };
        self.newest.send_replace(seq);
        seq
    }

    /// Every kept event numbered `since` or later.
    pub fn since(&self, since: u64) -> Vec<Event> {
        self.log()
            .events
            .iter()
            .filter(|event| event.seq >= since)
            .cloned()
            .collect()
    }

    /// Drop every event (numbers keep counting up).
    pub fn clear(&self) {
        self.log().events.clear();
    }

    /// A receiver that changes whenever an event is pushed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HolderExit, HolderId};

    fn exit(holder: u64) -> EventKind {
        EventKind::HolderExited(HolderExit {
            holder: HolderId(holder),
            exit_code: Some(0),
            signal: None,
            mono_ns: 0,
            wall_unix_ns: 0,
        })
    }

    #[test]
    fn events_are_numbered_and_replayed_from_any_number() {
        let log = EventLog::new(10);
        assert_eq!(log.push(exit(1)), 1);
        assert_eq!(log.push(exit(2)), 2);
        assert_eq!(log.push(exit(3)), 3);
        let replay: Vec<u64> = log.since(2).iter().map(|event| event.seq).collect();
        assert_eq!(replay, [2, 3]);
    }

    #[test]
    fn the_oldest_events_go_first_when_full_and_numbers_survive_a_clear() {
        let log = EventLog::new(2);
        for holder in 1..=3 {
            log.push(exit(holder));
        }
        let kept: Vec<u64> = log.since(0).iter().map(|event| event.seq).collect();
        assert_eq!(kept, [2, 3]);
        log.clear();
        assert!(log.since(0).is_empty());
        assert_eq!(log.push(exit(4)), 4);
    }

    #[tokio::test]
    async fn subscribers_hear_of_new_events() {
        let log = EventLog::new(4);
        let mut newest = log.subscribe();
        log.push(exit(1));
        assert!(newest.changed().await.is_ok());
        assert_eq!(*newest.borrow(), 1);
    }
}
