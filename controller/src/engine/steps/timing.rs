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
        tokio::time::sleep(duration).await;
        Ok(acting.ok("sleep").into())
    }
}
