//! Callers' sessions: which holders belong to which caller, so that none
//! outlives it. A caller (a controller's run) keeps a `Session` stream open
//! and names it when it spawns holders; when the last stream of a session
//! ends, its holders are the ones to kill. This module keeps that book; the
//! agent does the killing.

use crate::model::HolderId;
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::Mutex;

/// The book of sessions and their holders.
#[derive(Default)]
pub struct Sessions {
    /// Open streams of each session.
    open: Mutex<HashMap<String, usize>>,
    /// The session each holder was spawned in.
    holders: Mutex<HashMap<HolderId, String>>,
}

impl Sessions {
    /// A stream of session `id` opened.
    pub fn open(&self, id: &str) {
        *lock(&self.open).entry(id.to_owned()).or_insert(0) += 1;
    }

    /// Holder `holder` was spawned in session `id`.
    pub fn spawned(&self, holder: HolderId, id: String) {
        lock(&self.holders).insert(holder, id);
    }

    /// A stream of session `id` ended: when it was the last, the session is
    /// over and its holders are returned (to be killed), else none.
    pub fn close(&self, id: &str) -> Vec<HolderId> {
        {
            let mut open = lock(&self.open);
            match open.get_mut(id) {
                Some(streams) if *streams > 1 => {
                    *streams -= 1;
                    return Vec::new();
                }
                _ => {
                    open.remove(id);
                }
            }
        }
        let mut holders = lock(&self.holders);
        let ended: Vec<HolderId> = holders
            .iter()
            .filter(|(_, session)| session.as_str() == id)
            .map(|(holder, _)| *holder)
            .collect();
        holders.retain(|_, session| session.as_str() != id);
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_with_its_last_stream_and_names_only_its_holders() {
        let sessions = Sessions::default();
        sessions.open("run-1");
        sessions.open("run-1");
        sessions.open("run-2");
        sessions.spawned(HolderId(1), "run-1".to_owned());
        sessions.spawned(HolderId(2), "run-2".to_owned());
        sessions.spawned(HolderId(3), "run-1".to_owned());
        assert!(
            sessions.close("run-1").is_empty(),
            "one stream is still open"
        );
        let mut ended = sessions.close("run-1");
        ended.sort_by_key(|holder| holder.0);
        assert_eq!(ended, [HolderId(1), HolderId(3)]);
        assert!(sessions.close("run-1").is_empty(), "nothing twice");
        assert_eq!(sessions.close("run-2"), [HolderId(2)]);
    }
}
