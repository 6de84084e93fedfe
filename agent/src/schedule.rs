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
//! For the calls a holder makes, the layer hands the moment on and the
//! holder waits: at the moment one process wakes instead of two.
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

/// Calls a holder makes: a scheduled moment goes with the request to the
/// holder, which waits for it itself, so at the moment only the holder
/// wakes, not the agent and then the holder.
const MADE_BY_HOLDERS: &[&str] = &[
    "Listen",
    "StopListening",
    "Accept",
    "Dial",
    "Send",
    "Recv",
    "Close",
    "SetOptions",
    "ExitHolder",
];

tokio::task_local! {
    /// The moment of the request being served, when a holder makes its call.
    static FOR_HOLDER: Option<u64>;
}

/// The scheduled moment the holder should act at, inside a request whose
/// call a holder makes ([`MADE_BY_HOLDERS`]).
pub fn moment_for_holder() -> Option<u64> {
    FOR_HOLDER.try_with(|moment| *moment).ok().flatten()
}

/// Whether a request path (`/faultlab.v1.Agent/Send`) is a call a holder makes.
fn made_by_holder(path: &str) -> bool {
    path.strip_prefix("/faultlab.v1.Agent/")
        .is_some_and(|method| MADE_BY_HOLDERS.contains(&method))
}

/// The layer in front of every RPC: refuses a malformed moment with
/// `INVALID_ARGUMENT`; holds any other request until its moment, except
/// calls a holder makes, whose moment is handed to the holder.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScheduleLayer;

impl<S> tower::Layer<S> for ScheduleLayer {
    type Service = Scheduled<S>;

    fn layer(&self, inner: S) -> Scheduled<S> {
        Scheduled { inner }
    }
}

/// [`ScheduleLayer`]'s service.
#[derive(Clone, Debug)]
pub struct Scheduled<S> {
    inner: S,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for Scheduled<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(context).map_err(Into::into)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        // The ready service serves this request; its clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let start =
                start_at(request.headers(), Current::monotonic_ns()).map_err(BoxError::from)?;
            let by_holder = start.is_some() && made_by_holder(request.uri().path());
            if let (Some(start_ns), false) = (start, by_holder) {
                wait_until(start_ns).await;
            }
            FOR_HOLDER
                .scope(start.filter(|_| by_holder), inner.call(request))
                .await
                .map_err(Into::into)
        })
    }
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

    #[test]
    fn only_socket_calls_are_made_by_holders() {
        assert!(made_by_holder("/faultlab.v1.Agent/Send"));
        assert!(made_by_holder("/faultlab.v1.Agent/ExitHolder"));
        assert!(!made_by_holder("/faultlab.v1.Agent/KillHolder"));
        assert!(!made_by_holder("/faultlab.v1.Agent/Isolate"));
        assert!(!made_by_holder("/grpc.health.v1.Health/Check"));
    }

    #[tokio::test]
    async fn the_moment_reaches_a_holder_only_inside_its_request() {
        assert_eq!(moment_for_holder(), None);
        let seen = FOR_HOLDER
            .scope(Some(42), async { moment_for_holder() })
            .await;
        assert_eq!(seen, Some(42));
    }

    #[tokio::test]
    async fn the_wait_ends_at_the_moment_not_before() {
        let start_ns = Current::monotonic_ns() + 30_000_000;
        wait_until(start_ns).await;
        assert!(Current::monotonic_ns() >= start_ns);
    }
}
