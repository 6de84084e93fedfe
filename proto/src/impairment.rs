//! What a degraded network does to packets, and the rules an impairment
//! must keep — one set, read by `faultlab check` for a scenario and by the
//! agent for a request, so neither can accept what the other refuses.

use std::time::Duration;

/// What a degraded network does to the packets it touches; percentages
/// are of packets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Added to every packet's departure.
    pub delay: Duration,
    /// Spread around the delay.
    pub jitter: Duration,
    /// Shape of that spread (one of [`DISTRIBUTIONS`]); uniform when unsaid.
    pub distribution: Option<String>,
    /// Packets dropped.
    pub loss_percent: f64,
    /// How much a loss depends on the one before (netem's correlation).
    pub loss_correlation_percent: f64,
    /// Losses come in runs of this many packets on average (a Gilbert
    /// model: a good state that loses nothing, a bad one that loses all);
    /// 0: each packet on its own.
    pub loss_burst_packets: f64,
    /// Packets sent twice.
    pub duplicate_percent: f64,
    /// Packets sent at once instead of delayed (so out of order).
    pub reorder_percent: f64,
    /// Packets with one bit flipped.
    pub corrupt_percent: f64,
    /// At most this many bits per second (0: no limit).
    pub rate_bits_per_second: u64,
}

/// Jitter distributions netem knows (tables shipped with iproute2).
pub const DISTRIBUTIONS: &[&str] = &["normal", "pareto", "paretonormal"];

/// One thing wrong with an impairment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field, as short as a scenario names it (`loss`, `jitter`,
    /// `loss_burst`); empty for the impairment as a whole.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl Impairment {
    /// Everything wrong with it, field by field: every percentage within
    /// 0–100, a burst that a Gilbert model can make, jitter and reordering
    /// only with a delay, a known distribution with a jitter to shape, and
    /// something to do at all.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut say = |field, message: String| problems.push(Problem { field, message });
        for (field, value) in self.percentages() {
            if !(0.0..=100.0).contains(&value) {
                say(field, format!("{value} is not a percentage (0 to 100)"));
            }
        }
        if self.loss_burst_packets != 0.0
            && let Some(problem) = self.burst_problem()
        {
            say("loss_burst", problem);
        }
        if self.delay.is_zero() && !self.jitter.is_zero() {
            say("jitter", "needs a delay to spread".to_owned());
        }
        if self.delay.is_zero() && self.reorder_percent > 0.0 {
            say(
                "reorder",
                "needs a delay (packets are reordered by skipping it)".to_owned(),
            );
        }
        if let Some(distribution) = &self.distribution {
            if !DISTRIBUTIONS.contains(&distribution.as_str()) {
                say(
                    "distribution",
                    format!("{distribution:?} is not one of {DISTRIBUTIONS:?}"),
                );
            } else if self.jitter.is_zero() {
                say("distribution", "needs a jitter to shape".to_owned());
            }
        }
        if problems.is_empty() && *self == Self::default() {
            problems.push(Problem {
                field: "",
                message: "nothing to do: give a delay, loss, duplicate, reorder, corrupt or rate"
                    .to_owned(),
            });
        }
        problems
    }

    /// The first thing wrong with it, if anything is.
    pub fn problem(&self) -> Option<Problem> {
        self.problems().into_iter().next()
    }

    fn percentages(&self) -> [(&'static str, f64); 5] {
        [
            ("loss", self.loss_percent),
            ("loss_correlation", self.loss_correlation_percent),
            ("duplicate", self.duplicate_percent),
            ("reorder", self.reorder_percent),
            ("corrupt", self.corrupt_percent),
        ]
    }

    fn burst_problem(&self) -> Option<String> {
        let burst = self.loss_burst_packets;
        if !(1.0..=1_000_000.0).contains(&burst) {
            return Some(format!(
                "{burst} is not a mean run of lost packets (1 or more)"
            ));
        }
        if self.loss_percent <= 0.0 || self.loss_percent >= 100.0 {
            return Some("needs a loss between 0 and 100 %".to_owned());
        }
        if self.loss_correlation_percent > 0.0 {
            return Some("bursts or a correlation, not both".to_owned());
        }
        let (good_to_bad, _) = self.gilbert();
        (good_to_bad > 100.0).then(|| {
            format!(
                "{} % lost in runs of {burst} would need more than every packet to start a run",
                self.loss_percent
            )
        })
    }

    /// The Gilbert model's transition chances, in percent: good to bad (a
    /// run starts) and bad to good (a run ends), such that the bad state's
    /// share is the loss and a run lasts `loss_burst_packets` on average.
    pub fn gilbert(&self) -> (f64, f64) {
        let bad_to_good = 100.0 / self.loss_burst_packets;
        let loss = self.loss_percent;
        (bad_to_good * loss / (100.0 - loss), bad_to_good)
    }

    /// Whether it only drops packets, independently of each other (what
    /// a firewall can do without netem).
    pub fn is_plain_loss(&self) -> bool {
        *self
            == Self {
                loss_percent: self.loss_percent,
                ..Self::default()
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(ms: u64) -> Impairment {
        Impairment {
            delay: Duration::from_millis(ms),
            ..Impairment::default()
        }
    }

    fn first(impairment: &Impairment) -> String {
        impairment
            .problem()
            .map(|problem| problem.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn impossible_bursts_are_refused() {
        let bursts = |loss_percent: f64, loss_burst_packets: f64| Impairment {
            loss_percent,
            loss_burst_packets,
            ..Impairment::default()
        };
        assert_eq!(bursts(10.0, 4.0).problem(), None);
        for (impairment, said) in [
            (bursts(10.0, 0.5), "loss_burst: 0.5 is not"),
            (bursts(0.0, 4.0), "loss_burst: needs a loss"),
            (bursts(90.0, 1.0), "loss_burst: 90 % lost in runs of 1"),
            (
                Impairment {
                    loss_correlation_percent: 25.0,
                    ..bursts(10.0, 4.0)
                },
                "loss_burst: bursts or a correlation",
            ),
        ] {
            let problem = first(&impairment);
            assert!(problem.starts_with(said), "{impairment:?}: {problem}");
        }
    }

    #[test]
    fn impossible_impairments_are_refused_with_the_field_named() {
        let problems = [
            (
                Impairment {
                    loss_percent: 101.0,
                    ..delay(1)
                },
                "loss: 101",
            ),
            (
                Impairment {
                    corrupt_percent: -1.0,
                    ..delay(1)
                },
                "corrupt: -1",
            ),
            (
                Impairment {
                    loss_percent: f64::NAN,
                    ..delay(1)
                },
                "loss: NaN",
            ),
            (
                Impairment {
                    jitter: Duration::from_millis(1),
                    ..Impairment::default()
                },
                "jitter: needs a delay",
            ),
            (
                Impairment {
                    reorder_percent: 5.0,
                    ..Impairment::default()
                },
                "reorder: needs a delay",
            ),
            (
                Impairment {
                    jitter: Duration::from_millis(1),
                    distribution: Some("gauss".to_owned()),
                    ..delay(1)
                },
                "distribution: \"gauss\"",
            ),
            (
                Impairment {
                    distribution: Some("normal".to_owned()),
                    ..delay(1)
                },
                "distribution: needs a jitter",
            ),
            (Impairment::default(), "nothing to do"),
        ];
        for (impairment, said) in problems {
            let problem = first(&impairment);
            assert!(problem.starts_with(said), "{impairment:?}: {problem}");
        }
        assert_eq!(delay(200).problem(), None);
    }

    #[test]
    fn every_problem_is_said_not_only_the_first() {
        let impairment = Impairment {
            loss_percent: 120.0,
            corrupt_percent: 200.0,
            jitter: Duration::from_millis(5),
            ..Impairment::default()
        };
        let fields: Vec<_> = impairment.problems().iter().map(|p| p.field).collect();
        assert_eq!(fields, ["loss", "corrupt", "jitter"]);
    }

    #[test]
    fn plain_loss_is_loss_and_nothing_else() {
        let loss = Impairment {
            loss_percent: 10.0,
            ..Impairment::default()
        };
        assert!(loss.is_plain_loss());
        assert!(
            !Impairment {
                loss_correlation_percent: 25.0,
                ..loss.clone()
            }
            .is_plain_loss()
        );
        assert!(!delay(1).is_plain_loss());
    }
}
