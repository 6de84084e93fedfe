//! The host's clocks, read in one place: the monotonic clock
//! (`CLOCK_MONOTONIC`) the platform layer stamps observations with and the
//! records that must outlive the agent (`crate::keep`) hold their
//! deadlines on, and the conversion of a packet's real-time stamp onto it
//! (the capture's). A leaf, so that those records and the capture need
//! nothing else of the platform layer.

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

/// A timespec in ns (`None` for a negative or empty one).
fn timespec_ns(time: &libc::timespec) -> Option<u64> {
    let secs = u64::try_from(time.tv_sec).ok()?;
    let nanos = u64::try_from(time.tv_nsec).ok()?;
    let total = secs.checked_mul(1_000_000_000)?.checked_add(nanos)?;
    (total > 0).then_some(total)
}

/// How far in the future a packet's stamp may seem and still be believed:
/// a stamp taken on one CPU can be ahead of a clock read just after on
/// another (their counters are not exactly in step, in a VM above all).
/// Seen: a packet stamped and drained at once read as from the future, so
/// it took the reader's later time, behind segments sent after it.
const FUTURE_SKEW_NS: u64 = 1_000_000;

/// How many times [`real_and_monotonic_now`] tries for a narrow bracket.
const BRACKET_TRIES: usize = 5;
/// A bracket this narrow is kept at once (a preemption takes microseconds
/// at the very least).
const NARROW_BRACKET_NS: u64 = 2_000;

/// Read `clock` (`None` if it cannot be read).
fn read(clock: libc::clockid_t) -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut now) };
    if rc == 0 { timespec_ns(&now) } else { None }
}

/// The same moment on `CLOCK_REALTIME` and on `CLOCK_MONOTONIC`, in ns. The
/// real-time clock is read between two monotonic reads and the moment is
/// their middle: a thread preempted between two plain reads (milliseconds
/// on a loaded host) would pair one clock's now with the other's later
/// now, and every packet converted with it would be that much late. Of a
/// few tries the narrowest bracket is kept; its error is at most half its
/// width.
pub fn real_and_monotonic_now() -> Option<(u64, u64)> {
    let mut best: Option<(u64, u64, u64)> = None;
    for _ in 0..BRACKET_TRIES {
        let before = read(libc::CLOCK_MONOTONIC)?;
        let real = read(libc::CLOCK_REALTIME)?;
        let after = read(libc::CLOCK_MONOTONIC)?;
        let width = after.saturating_sub(before);
        if best.is_none_or(|(_, _, narrowest)| width < narrowest) {
            best = Some((real, before + width / 2, width));
        }
        if width <= NARROW_BRACKET_NS {
            break;
        }
    }
    best.map(|(real, mono, _)| (real, mono))
}

/// How long ago a packet was stamped is the same on every clock: a
/// `CLOCK_REALTIME` stamp (what the kernel gives packet sockets) as
/// `CLOCK_MONOTONIC`, given `now` on both clocks from
/// [`real_and_monotonic_now`] (one reading serves a batch of stamps). A
/// stamp further in the future than [`FUTURE_SKEW_NS`], or older than a
/// minute, is not believed (a clock stepped in between, or not a real-time
/// stamp).
pub fn real_to_monotonic_at(stamp_real_ns: u64, now: (u64, u64)) -> Option<u64> {
    let (real_now, mono_now) = now;
    let age = match real_now.checked_sub(stamp_real_ns) {
        Some(age) => age,
        None if stamp_real_ns - real_now <= FUTURE_SKEW_NS => 0,
        None => return None,
    };
    if age > 60_000_000_000 {
        return None;
    }
    mono_now.checked_sub(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real_to_monotonic(stamp_real_ns: u64) -> Option<u64> {
        real_to_monotonic_at(stamp_real_ns, real_and_monotonic_now()?)
    }

    #[test]
    fn a_stamp_a_hair_in_the_future_is_now_and_a_stepped_one_is_not_believed() {
        let real_now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(0))
        };
        // Another CPU's counter a little ahead: believed, as about now.
        let before = monotonic_ns();
        let ahead = real_to_monotonic(real_now() + 200_000);
        let after = monotonic_ns();
        assert!(
            ahead.is_some_and(|mono| mono >= before && mono <= after),
            "{ahead:?} not within {before}..{after}"
        );
        // A second ahead: a clock stepped; not believed.
        assert_eq!(real_to_monotonic(real_now() + 1_000_000_000), None);
        // A millisecond ago: a millisecond ago.
        let ago = real_to_monotonic(real_now() - 1_000_000).unwrap_or(0);
        assert!(ago < monotonic_ns().saturating_sub(900_000), "{ago}");
    }

    #[test]
    fn the_two_clocks_are_read_as_one_moment() {
        let before = monotonic_ns();
        let (real, mono) = real_and_monotonic_now().unwrap_or_default();
        let after = monotonic_ns();
        assert!(before <= mono && mono <= after, "{before} {mono} {after}");
        assert!(real > 1_600_000_000_000_000_000, "{real}");
    }
}
