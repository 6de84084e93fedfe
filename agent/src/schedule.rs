//! Scheduled start: a request may name the moment the agent acts on it.
//!
//! Why: a barrier released by a controller reaches its hosts one round trip
//! after another, so steps meant to happen together on 256 hosts would start
//! milliseconds apart. Instead the controller sends them ahead of time, each
//! with the same moment on its host's monotonic clock
//! ([`faultlab_proto::START_AT_METADATA`]), and every agent waits for it.
//!
//! The wait is a layer in front of every RPC (a scheduled start is a
//! property of the call, like its deadline), so handlers know nothing of it.
//! The last stretch of the wait is a thread sleep (a high-resolution timer),
//! not the runtime's timer: Tokio's timer ticks by the millisecond, counted
//! from each process's own start, which alone would spread hosts up to a
//! millisecond apart. (A timerfd in the runtime was tried: two co-located
//! agents then acted 250 µs apart, against 5 µs this way.)

use crate::platform::{Current, Platform};
use faultlab_proto::START_AT_METADATA;
use std::time::Duration;
use tonic::Status;

/// How far ahead a start may be scheduled.
pub const MAX_LEAD: Duration = Duration::from_secs(10);

/// The last part of the wait, done with a thread sleep.
const THREAD_STRETCH: Duration = Duration::from_millis(2);

/// The moment a request asks to start at, if it asks, checked against
/// `now_ns` (both this host's monotonic ns).
pub fn start_at(
    headers: &tonic::codegen::http::HeaderMap,
    now_ns: u64,
) -> Result<Option<u64>, Status> {
    let Some(value) = headers.get(START_AT_METADATA) else {
        return Ok(None);
    };
    let start_ns = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "{START_AT_METADATA}: {value:?} is not a moment in ns of the agent's monotonic clock"
            ))
        })?;
    let lead = Duration::from_nanos(start_ns.saturating_sub(now_ns));
    if lead > MAX_LEAD {
        return Err(Status::invalid_argument(format!(
            "{START_AT_METADATA}: {:.1} s ahead; a start is scheduled at most {} s ahead",
            lead.as_secs_f64(),
            MAX_LEAD.as_secs()
        )));
    }
    Ok(Some(start_ns))
}

/// Wait until this host's monotonic clock reads `start_ns` (at once if it
/// already has).
pub async fn wait_until(start_ns: u64) {
    let left = Duration::from_nanos(start_ns.saturating_sub(Current::monotonic_ns()));
    if left > THREAD_STRETCH {
        tokio::time::sleep(left - THREAD_STRETCH).await;
    }
    if start_ns > Current::monotonic_ns() {
        // Measured again inside: the thread may take a while to start.
        let _ = tokio::task::spawn_blocking(move || {
            let left = start_ns.saturating_sub(Current::monotonic_ns());
            std::thread::sleep(Duration::from_nanos(left));
        })
        .await;
    }
}

/// The layer's check: hold a request until its scheduled start; refuse a
/// malformed one with `INVALID_ARGUMENT`.
pub async fn hold<B>(
    request: tonic::codegen::http::Request<B>,
) -> Result<tonic::codegen::http::Request<B>, Status> {
    if let Some(start_ns) = start_at(request.headers(), Current::monotonic_ns())? {
        wait_until(start_ns).await;
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::http::HeaderMap;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = value.parse() {
            headers.insert(START_AT_METADATA, value);
        }
        headers
    }

    #[test]
    fn no_header_means_now() {
        assert!(matches!(start_at(&HeaderMap::new(), 5), Ok(None)));
    }

    #[test]
    fn a_moment_within_the_lead_is_kept() {
        let kept = |value: &str| start_at(&headers(value), 1_000_000_000).ok().flatten();
        assert_eq!(kept("2000000000"), Some(2_000_000_000));
        // In the past: kept, and the wait ends at once.
        assert_eq!(kept("10"), Some(10));
    }

    #[test]
    fn garbage_and_far_futures_are_refused() {
        for value in ["soon", "-5", "1.5", ""] {
            let refused = start_at(&headers(value), 0);
            assert!(
                matches!(&refused, Err(status) if status.code() == tonic::Code::InvalidArgument),
                "{value:?}: {refused:?}"
            );
        }
        let far = start_at(&headers("11000000000"), 0);
        assert!(
            matches!(&far, Err(status) if status.message().contains("11.0 s ahead")),
            "{far:?}"
        );
    }

    #[tokio::test]
    async fn the_wait_ends_at_the_moment_not_before() {
        let start_ns = Current::monotonic_ns() + 30_000_000;
        wait_until(start_ns).await;
        assert!(Current::monotonic_ns() >= start_ns);
    }
}
