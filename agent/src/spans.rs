//! The trace spans of socket calls made in holder processes.
//!
//! A holder can be killed at any moment (that is what it is for), so it
//! exports nothing itself: it measures each socket call, and the agent
//! turns the measurement into a span under the request that asked for it.
//! A trace then shows, under the controller's step, what the socket API
//! said and how long it took to say it.

use crate::holder::HolderProcess;
use crate::holder::protocol::{HolderReply, HolderRequest};
use crate::model::{Observation, Outcome};
use faultlab_telemetry::Attribute;
use std::time::Duration;
use tracing::Span;

/// The span of `request` carried out by `holder` (disabled when not exporting).
pub fn holder_call(holder: &HolderProcess, request: &HolderRequest) -> Span {
    if !faultlab_telemetry::enabled() {
        return Span::none();
    }
    tracing::info_span!(
        "holder call",
        otel.name = request.call_name(),
        faultlab.holder.id = holder.id().0,
        faultlab.holder.pid = holder.pid(),
        faultlab.holder.label = holder.label(),
    )
}

/// Put what the socket call returned on its span.
pub fn record(span: &Span, reply: &HolderReply) {
    match reply {
        HolderReply::Observed(observation) | HolderReply::Connected { observation, .. } => {
            faultlab_telemetry::annotate(span, attributes(observation));
        }
        HolderReply::Refused { message, .. } => faultlab_telemetry::fail(span, message),
        _ => {}
    }
}

/// A socket call's result as span attributes: how it ended, bytes, the
/// errno and its portable name, and how long the OS took to say so.
pub fn attributes(observation: &Observation) -> Vec<Attribute> {
    let outcome = match observation.outcome {
        Outcome::Ok => "ok",
        Outcome::Eof => "eof",
        Outcome::Error => "error",
        Outcome::Timeout => "timeout",
    };
    let waited_ns = observation
        .end_mono_ns
        .saturating_sub(observation.start_mono_ns);
    let mut attributes = vec![
        Attribute::new("faultlab.outcome", outcome),
        Attribute::new(
            "faultlab.bytes",
            i64::try_from(observation.bytes).unwrap_or(i64::MAX),
        ),
        Attribute::new(
            "faultlab.detection_ms",
            Duration::from_nanos(waited_ns).as_secs_f64() * 1000.0,
        ),
    ];
    if let Some(error) = &observation.error {
        attributes.extend([
            Attribute::new("faultlab.errno", i64::from(error.code)),
            Attribute::new("faultlab.errno_name", error.name.clone()),
            Attribute::new("error.type", error.name.clone()),
        ]);
    }
    if observation.sigpipe {
        attributes.push(Attribute::new("faultlab.sigpipe", true));
    }
    attributes
}
