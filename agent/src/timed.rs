//! The one book of faults that heal themselves at a deadline: isolations,
//! links taken down, degradations.
//!
//! Each family makes and undoes its faults its own way (a firewall, `ip
//! link`, `tc`); what they share lives here, once: the entries by the id
//! the caller chose, each with the moment it heals by itself; entries that
//! healed by themselves leave the book when it is next opened; an undo
//! whose fault has a watchdog disarms it first and, if the undo fails, arms
//! it again with the time left, so a fault never outlives its deadline
//! whatever happens; an entry leaves the book only when its undo is
//! confirmed; the faults an earlier life of the agent left are taken over
//! under new watchdogs, or undone at once when that cannot be.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Something outside the agent that undoes a fault at its deadline (a
/// process detached from the agent, a kernel timeout), so that a fault
/// lifts even if the agent dies.
pub trait Watchdog: Send {
    /// Stop it: the fault is being undone now.
    fn disarm(&mut self);
    /// Whether it has done its job (the fault healed by itself).
    fn finished(&mut self) -> bool;
}

/// A watchdog armed again after a failed undo waits at least this long, so
/// that it does not race the undo that just failed.
pub const REARM_AT_LEAST: Duration = Duration::from_millis(500);

/// One fault in the book.
pub struct Timed<T> {
    /// What the family needs to undo it.
    pub fault: T,
    /// When it heals by itself.
    pub expires: Instant,
    /// What heals it then; none when the kernel holds the deadline with
    /// the fault itself (a firewall entry's timeout).
    watchdog: Option<Box<dyn Watchdog>>,
}

impl<T> Timed<T> {
    /// A fault whose deadline the kernel keeps with it.
    pub fn kept_by_the_kernel(fault: T, deadline: Duration) -> Self {
        Self {
            fault,
            expires: Instant::now() + deadline,
            watchdog: None,
        }
    }

    /// A fault `watchdog` heals at `deadline`.
    pub fn watched(fault: T, deadline: Duration, watchdog: Box<dyn Watchdog>) -> Self {
        Self {
            fault,
            expires: Instant::now() + deadline,
            watchdog: Some(watchdog),
        }
    }

    /// Whether it healed by itself.
    fn lapsed(&mut self, now: Instant) -> bool {
        match &mut self.watchdog {
            Some(watchdog) => watchdog.finished(),
            None => self.expires <= now,
        }
    }
}

/// Make a fault a watchdog heals at its deadline: the watchdog is armed
/// first (once the fault is made, it must heal whatever happens) and
/// disarmed if making the fault fails.
pub fn armed_first<R, E>(
    arm: impl FnOnce() -> Result<Box<dyn Watchdog>, E>,
    make: impl FnOnce() -> Result<R, E>,
) -> Result<(R, Box<dyn Watchdog>), E> {
    let mut watchdog = arm()?;
    match make() {
        Ok(made) => Ok((made, watchdog)),
        Err(error) => {
            watchdog.disarm();
            Err(error)
        }
    }
}

/// Arms a fault's watchdog again, for the time left.
type Arm<'a, T, E> = dyn Fn(&T, Duration) -> Result<Box<dyn Watchdog>, E> + 'a;

/// Why an undo failed, and whether the watchdog could be armed again.
#[derive(Debug)]
pub enum UndoFailed<E> {
    /// The undo failed; the fault still heals at its deadline.
    Undo(E),
    /// The undo failed, and so did arming its watchdog again.
    AndRearm {
        /// Why the undo failed.
        undo: E,
        /// Why the watchdog could not be armed.
        rearm: E,
    },
}

impl<E: std::fmt::Display> UndoFailed<E> {
    /// One error of the family's own: the undo's, or (when the watchdog
    /// could not be armed again either) both said by `system`.
    pub fn into_error(self, system: impl FnOnce(String) -> E) -> E {
        match self {
            Self::Undo(error) => error,
            Self::AndRearm { undo, rearm } => system(format!(
                "{undo}; and its watchdog could not be armed again: {rearm}"
            )),
        }
    }
}

/// The book of one family's faults, by id.
pub struct TimedBook<T> {
    entries: Mutex<HashMap<String, Timed<T>>>,
}

impl<T> Default for TimedBook<T> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> TimedBook<T> {
    /// The book, without the faults that healed by themselves.
    pub fn open(&self) -> MutexGuard<'_, HashMap<String, Timed<T>>> {
        let mut entries = crate::sync::lock(&self.entries);
        let now = Instant::now();
        entries.retain(|_, entry| !entry.lapsed(now));
        entries
    }

    /// How many faults are in place.
    pub fn count(&self) -> usize {
        self.open().len()
    }

    /// The ids of the faults in place.
    pub fn ids(&self) -> Vec<String> {
        self.open().keys().cloned().collect()
    }

    /// Take over a fault an earlier life of the agent left, `left` before
    /// its deadline: under a watchdog from `arm` when time is left and one
    /// can be armed, else undone now by `undo`. `what` names it in the log.
    pub fn take_over<E: std::fmt::Display>(
        &self,
        id: String,
        fault: T,
        left: Duration,
        what: &str,
        arm: impl FnOnce(&T, Duration) -> Result<Box<dyn Watchdog>, E>,
        undo: impl FnOnce(&T) -> Result<(), E>,
    ) {
        let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        if !left.is_zero() {
            match arm(&fault, left) {
                Ok(watchdog) => {
                    tracing::warn!(%id, left_ms, "took over {what} an earlier agent left");
                    crate::audit::earlier_life("TakeOver", &id, left_ms, &Ok(()));
                    crate::sync::lock(&self.entries)
                        .insert(id, Timed::watched(fault, left, watchdog));
                    return;
                }
                Err(error) => {
                    tracing::error!(%id, %error, "cannot watch {what} an earlier agent left: undoing it now");
                }
            }
        }
        let undone = undo(&fault).map_err(|error| error.to_string());
        match &undone {
            Ok(()) => tracing::warn!(%id, "undid {what} an earlier agent left"),
            Err(error) => tracing::error!(%id, %error, "cannot undo {what} an earlier agent left"),
        }
        crate::audit::earlier_life("UndoLeft", &id, left_ms, &undone);
    }

    /// Undo the fault `id` with `undo` (`None` when there is none): its
    /// watchdog is disarmed first and, if the undo fails, armed again by
    /// `arm` with the time left. The fault leaves the book only when the
    /// undo succeeded.
    pub fn undo<R, E>(
        &self,
        id: &str,
        undo: impl FnOnce(&T) -> Result<R, E>,
        arm: impl Fn(&T, Duration) -> Result<Box<dyn Watchdog>, E>,
    ) -> Option<Result<R, UndoFailed<E>>> {
        self.undo_entry(id, undo, Some(&arm))
    }

    /// Undo the fault `id`, whose deadline the kernel keeps, with `undo`
    /// (`None` when there is none); it leaves the book only when the undo
    /// succeeded.
    pub fn undo_kept_by_the_kernel<R, E>(
        &self,
        id: &str,
        undo: impl FnOnce(&T) -> Result<R, E>,
    ) -> Option<Result<R, E>> {
        let done = self.undo_entry(id, undo, None)?;
        Some(done.map_err(|failed| match failed {
            UndoFailed::Undo(error) | UndoFailed::AndRearm { undo: error, .. } => error,
        }))
    }

    fn undo_entry<R, E>(
        &self,
        id: &str,
        undo: impl FnOnce(&T) -> Result<R, E>,
        arm: Option<&Arm<'_, T, E>>,
    ) -> Option<Result<R, UndoFailed<E>>> {
        let mut entries = self.open();
        let entry = entries.get_mut(id)?;
        if let Some(watchdog) = &mut entry.watchdog {
            watchdog.disarm();
        }
        let undone = match undo(&entry.fault) {
            Ok(undone) => undone,
            Err(error) => {
                let left = entry
                    .expires
                    .saturating_duration_since(Instant::now())
                    .max(REARM_AT_LEAST);
                let (Some(arm), Some(_)) = (arm, &entry.watchdog) else {
                    return Some(Err(UndoFailed::Undo(error)));
                };
                return Some(match arm(&entry.fault, left) {
                    Ok(watchdog) => {
                        entry.watchdog = Some(watchdog);
                        Err(UndoFailed::Undo(error))
                    }
                    Err(rearm) => Err(UndoFailed::AndRearm { undo: error, rearm }),
                });
            }
        };
        let expires = entry.expires;
        entries.remove(id);
        tracing::warn!(%id, late_by_ms = Instant::now().saturating_duration_since(expires).as_millis(), "undone");
        Some(Ok(undone))
    }

    /// Undo every fault with `undo_one` (which calls [`TimedBook::undo`]):
    /// how many were undone, and what was not, with why.
    pub fn undo_all<R, E: std::fmt::Display>(
        &self,
        what: &str,
        undo_one: impl Fn(&str) -> Result<R, E>,
    ) -> (usize, Vec<String>) {
        let mut failed = Vec::new();
        let mut undone = 0;
        for id in self.ids() {
            match undo_one(&id) {
                Ok(_) => undone += 1,
                Err(error) => failed.push(format!("{what} {id:?}: {error}")),
            }
        }
        (undone, failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A watchdog whose state the test sees.
    #[derive(Default)]
    struct Dog {
        armed: AtomicUsize,
        disarmed: AtomicUsize,
        finished: AtomicBool,
    }

    struct Handle(Arc<Dog>);

    impl Watchdog for Handle {
        fn disarm(&mut self) {
            self.0.disarmed.fetch_add(1, Ordering::SeqCst);
        }
        fn finished(&mut self) -> bool {
            self.0.finished.load(Ordering::SeqCst)
        }
    }

    fn arm(dog: &Arc<Dog>) -> Result<Box<dyn Watchdog>, String> {
        dog.armed.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Handle(Arc::clone(dog))))
    }

    #[test]
    fn a_failed_undo_keeps_the_fault_and_arms_its_watchdog_again() {
        let book = TimedBook::default();
        let dog = Arc::new(Dog::default());
        book.open().insert(
            "cut".to_owned(),
            Timed::watched(
                "eth1",
                Duration::from_secs(60),
                Box::new(Handle(Arc::clone(&dog))),
            ),
        );
        let failed = book.undo("cut", |_| Err::<(), _>("busy".to_owned()), |_, _| arm(&dog));
        assert!(matches!(failed, Some(Err(UndoFailed::Undo(why))) if why == "busy"));
        assert_eq!(book.count(), 1);
        assert_eq!(dog.armed.load(Ordering::SeqCst), 1);
        assert_eq!(dog.disarmed.load(Ordering::SeqCst), 1);
        let undone = book.undo("cut", |fault| Ok::<_, String>(*fault), |_, _| arm(&dog));
        assert!(matches!(undone, Some(Ok("eth1"))));
        assert_eq!(book.count(), 0);
        assert!(
            book.undo("cut", |_| Ok::<_, String>(()), |_, _| arm(&dog))
                .is_none()
        );
    }

    #[test]
    fn faults_that_healed_by_themselves_leave_the_book() {
        let book = TimedBook::default();
        let dog = Arc::new(Dog::default());
        book.open().insert(
            "watched".to_owned(),
            Timed::watched(
                (),
                Duration::from_secs(60),
                Box::new(Handle(Arc::clone(&dog))),
            ),
        );
        book.open().insert(
            "kernel".to_owned(),
            Timed::kept_by_the_kernel((), Duration::ZERO),
        );
        book.open().insert(
            "later".to_owned(),
            Timed::kept_by_the_kernel((), Duration::from_secs(60)),
        );
        let mut ids = book.ids();
        ids.sort();
        assert_eq!(ids, ["later", "watched"]);
        dog.finished.store(true, Ordering::SeqCst);
        assert_eq!(book.ids(), ["later"]);
    }

    #[test]
    fn an_earlier_agents_fault_is_watched_or_undone_now() {
        let book = TimedBook::default();
        let dog = Arc::new(Dog::default());
        let undone = AtomicUsize::new(0);
        let undo = |_: &&str| {
            undone.fetch_add(1, Ordering::SeqCst);
            Ok::<(), String>(())
        };
        book.take_over(
            "a".into(),
            "eth1",
            Duration::from_secs(5),
            "a link",
            |_, _| arm(&dog),
            undo,
        );
        book.take_over(
            "b".into(),
            "eth2",
            Duration::ZERO,
            "a link",
            |_, _| arm(&dog),
            undo,
        );
        book.take_over(
            "c".into(),
            "eth3",
            Duration::from_secs(5),
            "a link",
            |_, _| Err("no fork".to_owned()),
            undo,
        );
        assert_eq!(book.ids(), ["a"]);
        assert_eq!(undone.load(Ordering::SeqCst), 2);
    }
}
