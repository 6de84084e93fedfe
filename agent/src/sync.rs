//! The agent's one locking policy: a thread that panicked while holding a
//! lock must not take the agent down with it (the data behind agent locks
//! are plain maps whose every update is a single step, so they stay whole).

use std::sync::{Mutex, MutexGuard};

/// Lock `mutex`, also when an earlier holder panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
