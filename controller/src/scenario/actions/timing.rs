//! Timing: steps that act on no host, only on the timeline (wait a while,
//! wait for a background step). The engine's `steps::timing` plays them on
//! the controller.

use super::Reference;
use crate::scenario::parse::input::{Errors, Place, SpannedTable, typed};
use serde::Deserialize;

/// The timing steps' keywords (`do = "..."`).
pub(super) const KEYWORDS: &[&str] = &["sleep", "join"];

/// A step of the timeline itself.
#[derive(Clone, Debug, PartialEq)]
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
    /// The name scenarios use for it.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Sleep { .. } => "sleep",
            Self::Join { .. } => "join",
        }
    }

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

    /// Read the step's own fields for `keyword` (one of [`KEYWORDS`]).
    pub(super) fn parse(
        keyword: &str,
        own: &SpannedTable,
        place: &Place,
        errors: &mut Errors<'_>,
    ) -> Option<Self> {
        let (span, path) = (&place.span, place.path.as_str());
        match keyword {
            "sleep" => {
                typed::<SleepSpec>(own, span, path, errors).map(|spec| Self::Sleep { ms: spec.ms })
            }
            _ => typed::<JoinSpec>(own, span, path, errors)
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
