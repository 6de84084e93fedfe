//! The host's monotonic clock (`CLOCK_MONOTONIC`), read in one place: the
//! platform layer stamps observations with it, and the records that must
//! outlive the agent (`crate::keep`) hold their deadlines on it. A leaf,
//! so that those records need nothing else of the platform layer.

#![allow(unsafe_code)]

/// Now, in ns since boot (0 if the clock cannot be read).
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the
    // call, and CLOCK_MONOTONIC is always supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}
