//! Timing: steps that act on no host, only on the timeline (wait a while,
//! wait for a background step). The engine's `steps::timing` plays them on
//! the controller.

use super::Reference;
use crate::scenario::parse::input::StepInput;
use serde::Deserialize;

/// A step of the timeline itself.
#[derive(Clone, Debug, PartialEq, strum::IntoStaticStr, strum::VariantNames)]
#[strum(serialize_all = "kebab-case")]
pub enum Timing {
    /// Wait.
    Sleep {
        /// How long.
        ms: u64,
    },
    /// Wait for a background step to finish.
    Join {
        /// The background step's name.
        step: String,
    },
}

impl Timing {
    /// The names it uses.
    pub(super) fn references(&self) -> Vec<Reference<'_>> {
        match self {
            Self::Sleep { .. } => Vec::new(),
            Self::Join { step } => vec![Reference::UsesBackground {
                field: "step",
                name: step,
            }],
        }
    }

    /// Read the step's own fields for `keyword` (one of its variants' names).
    pub(super) fn parse(keyword: &str, input: &mut StepInput<'_, '_, '_>) -> Option<Self> {
        match keyword {
            "sleep" => input
                .typed::<SleepSpec>()
                .map(|spec| Self::Sleep { ms: spec.ms }),
            _ => input
                .typed::<JoinSpec>()
                .map(|spec| Self::Join { step: spec.step }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepSpec {
    ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinSpec {
    step: String,
}
