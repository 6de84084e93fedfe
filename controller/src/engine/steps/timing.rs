//! Timing steps as the controller plays them: a sleep waits here; a join
//! is the timeline's own (it waits for a background step).

use super::{Acting, Preparing, Ran};
use crate::engine::state::StepError;
use crate::scenario::Timing;
use std::time::Duration;

/// A wait on the controller.
pub(super) enum Request {
    Sleep(Duration),
}

pub(super) fn prepare(timing: &Timing, at: &Preparing<'_, '_>) -> Result<Request, StepError> {
    match timing {
        Timing::Sleep { ms } => Ok(Request::Sleep(Duration::from_millis(*ms))),
        Timing::Join { .. } => Err(StepError::Failed(format!(
            "step {}: a join is played by the timeline, not sent to an agent",
            at.step.name
        ))),
    }
}

impl Request {
    pub(super) async fn perform(self, acting: &Acting) -> Result<Ran, StepError> {
        let Self::Sleep(duration) = self;
        sleep_precisely(duration).await;
        Ok(acting.ok("sleep").into())
    }
}

/// The runtime's timer rounds a sleep up to its next millisecond tick (a
/// 50 ms sleep took 51.2 ms): the last [`COARSE_TIMER`] of a sleep is slept
/// on a blocking thread, to within tens of microseconds.
const COARSE_TIMER: Duration = Duration::from_millis(2);

/// Sleep `duration`, neither much more nor less.
async fn sleep_precisely(duration: Duration) {
    let until = std::time::Instant::now() + duration;
    tokio::time::sleep(duration.saturating_sub(COARSE_TIMER)).await;
    let left = until.saturating_duration_since(std::time::Instant::now());
    if !left.is_zero() {
        // If the blocking pool is gone (the runtime is shutting down),
        // nothing waits for this sleep any more.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(left)).await;
    }
}
