//! The wall clock, in one place for every OS. A leaf, so that what only
//! stamps times (the audit trail) needs nothing else of the platform layer.

/// Wall clock in nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX)
        })
}
