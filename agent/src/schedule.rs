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
//!
//! A lab host is rarely idle (the server under test is what loads it), and
//! on a busy host a woken thread waits for a CPU behind the busy ones. So
//! for the last [`URGENT_LEAD`] and the first step of the act (the socket
//! call itself), the thread that acts is *urgent*: a real-time class
//! ([`Platform::raise_thread`]), on the same thread that then acts, so no
//! second thread has to be woken. Where the agent may not (neither root nor
//! `CAP_SYS_NICE`) it waits as an ordinary thread and says so once.
//!
//! Measured (BENCHMARKS.md, 16 agents on 2 cores, two busy loops beside
//! them): p99 0.6–0.7 ms apart urgent, 3.5 ms as ordinary threads; idle
//! 0.6–0.8 against 2.3 ms. Tried and dropped: a 1 ns timer slack
//! (`PR_SET_TIMERSLACK`) alone changed nothing measurable (2.9 ms against
//! 3.1 idle), and with a real-time class the kernel uses no slack anyway;
//! locking every holder's memory (`mlockall`): 0.95 ms against 0.85 for
//! 16 agents, 3.2 against 2.9 for 64, so no gain.

use crate::platform::{Current, Platform, ThreadSchedule};
use faultlab_proto::START_AT_METADATA;
use std::future::Future;
use std::time::Duration;
use tonic::Status;

/// How far ahead a start may be scheduled.
pub const MAX_LEAD: Duration = Duration::from_secs(10);

/// The last part of the wait, done with a thread sleep.
const THREAD_STRETCH: Duration = Duration::from_millis(2);

/// How long before a moment the waiting thread becomes urgent: longer
/// than an ordinary thread's wake-up may be late on a busy host (measured
/// up to 3 ms with two busy loops on two cores).
pub const URGENT_LEAD: Duration = Duration::from_millis(10);

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

/// Run `act` at `start_ns` on this host's monotonic clock (at once if it
/// has passed, or if there is no moment).
///
/// Until [`URGENT_LEAD`] before the moment the wait is the runtime's timer,
/// as an ordinary thread; then the thread becomes urgent, so that its next
/// wake-ups are on time even on a busy host: the runtime's timer again (a
/// current-thread runtime: a holder, whose other work goes on meanwhile,
/// urgent too) or a blocking sleep handed off by the runtime (a
/// multi-thread one: the agent), and a blocking sleep for the last
/// [`THREAD_STRETCH`]. The act's first step (its socket call) is made on
/// that thread, still urgent; then the thread is ordinary again.
pub async fn at_moment<F: Future>(start_ns: Option<u64>, act: F) -> F::Output {
    let Some(start_ns) = start_ns else {
        return act.await;
    };
    sleep_until_before(start_ns, URGENT_LEAD).await;
    let urgent = Urgent::raise();
    let one_thread = matches!(
        tokio::runtime::Handle::try_current().map(|runtime| runtime.runtime_flavor()),
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread)
    );
    if one_thread {
        // Every task of this runtime runs on this thread: it stays urgent.
        sleep_until_before(start_ns, THREAD_STRETCH).await;
        Current::sleep_until(start_ns);
    } else {
        // No await while urgent: the task stays on this thread.
        tokio::task::block_in_place(|| Current::sleep_until(start_ns));
    }
    let mut act = std::pin::pin!(act);
    // One poll of the act on this thread, still urgent.
    let mut first_step = Some(urgent);
    std::future::poll_fn(move |context| {
        let step = act.as_mut().poll(context);
        first_step.take();
        step
    })
    .await
}

/// The runtime's sleep until `before` ahead of `start_ns` (not at all if
/// that has passed).
async fn sleep_until_before(start_ns: u64, before: Duration) {
    let left = Duration::from_nanos(start_ns.saturating_sub(Current::monotonic_ns()));
    if left > before {
        tokio::time::sleep(left - before).await;
    }
}

/// The floor a scheduled act is measured against (`faultlab bench`): a bare
/// process does the same act, 1 byte sent on a connected loopback socket,
/// at `start_ns`, waiting the same way, with no agent, holder or gRPC in
/// between. Returns the moment its send began, on the monotonic clock.
pub fn bare_act(start_ns: u64) -> std::io::Result<u64> {
    use std::io::Write as _;
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let mut sender = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (_receiver, _) = listener.accept()?;
    sender.set_nodelay(true)?;
    let urgent = Urgent::until(start_ns);
    let began_ns = Current::monotonic_ns();
    sender.write_all(b"x")?;
    drop(urgent);
    Ok(began_ns)
}

/// This thread made urgent (a real-time class) until the
/// last such value on it is dropped. Made and dropped on one thread.
pub struct Urgent {
    thread: std::thread::ThreadId,
}

thread_local! {
    /// How many [`Urgent`] values this thread holds, and how it was
    /// scheduled before the first (`None`: it could not be raised).
    static RAISED: std::cell::Cell<(usize, Option<ThreadSchedule>)> =
        const { std::cell::Cell::new((0, None)) };
}

impl Urgent {
    /// Make this thread urgent (it may already be).
    pub fn raise() -> Self {
        let (held, before) = RAISED.get();
        if held == 0 {
            RAISED.set((1, Self::raise_now()));
        } else {
            RAISED.set((held + 1, before));
        }
        Self {
            thread: std::thread::current().id(),
        }
    }

    /// Make this thread urgent and sleep until `start_ns` (at once if it
    /// has passed); it stays urgent until the value is dropped.
    pub fn until(start_ns: u64) -> Self {
        let urgent = Self::raise();
        Current::sleep_until(start_ns);
        urgent
    }

    fn raise_now() -> Option<ThreadSchedule> {
        match Current::raise_thread() {
            Ok(before) => Some(before),
            Err(error) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::info!(
                        %error,
                        "scheduled moments wait as ordinary threads (a real-time class needs root or CAP_SYS_NICE): on a busy host they may act late"
                    );
                });
                None
            }
        }
    }
}

impl Drop for Urgent {
    fn drop(&mut self) {
        if std::thread::current().id() != self.thread {
            // A bug if ever: the raised thread is not this one.
            tracing::error!("an urgent thread's mark was dropped on another thread");
            return;
        }
        let (held, before) = RAISED.get();
        if held > 1 {
            RAISED.set((held - 1, before));
            return;
        }
        RAISED.set((0, None));
        if let Some(before) = before {
            Current::restore_thread(before);
        }
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
            let here = start.filter(|_| !by_holder);
            FOR_HOLDER
                .scope(
                    start.filter(|_| by_holder),
                    at_moment(here, inner.call(request)),
                )
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
    async fn the_act_starts_at_the_moment_not_before() {
        let start_ns = Current::monotonic_ns() + 30_000_000;
        let acted_ns = at_moment(Some(start_ns), async { Current::monotonic_ns() }).await;
        assert!(acted_ns >= start_ns);
        let unscheduled = at_moment(None, async { 7 }).await;
        assert_eq!(unscheduled, 7);
    }

    #[tokio::test]
    async fn the_act_is_urgent_for_its_first_step_only() {
        // An act that yields once: its first step runs urgent, its second
        // (after the yield) as an ordinary thread again.
        let steps = std::sync::Mutex::new(Vec::new());
        // How the thread was scheduled, read by raising it and putting it back.
        let probe = || Current::raise_thread().inspect(|before| Current::restore_thread(*before));
        let ordinary = probe().ok();
        let start_ns = Current::monotonic_ns() + 5_000_000;
        at_moment(Some(start_ns), async {
            steps.lock().map(|mut seen| seen.push(probe().ok())).ok();
            tokio::task::yield_now().await;
            steps.lock().map(|mut seen| seen.push(probe().ok())).ok();
        })
        .await;
        let seen = steps.lock().map(|seen| seen.clone()).unwrap_or_default();
        assert_eq!(seen.len(), 2);
        if let [Some(first), Some(second)] = seen[..] {
            // Permitted (root; Windows): raised during the first step only.
            assert_ne!(Some(first), ordinary, "{seen:?}");
            assert_eq!(Some(second), ordinary, "{seen:?}");
            #[cfg(unix)]
            assert_eq!(first.priority, crate::platform::URGENT_PRIORITY);
        } else {
            // Not permitted: nothing was raised, and the act still ran.
            assert_eq!(seen, [None, None]);
        }
    }
}
