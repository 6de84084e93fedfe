//! Built-in suites: scenario files compiled into the binary, so the seed
//! suite runs with nothing but the executable.

use crate::scenario::{self, Scenario, ScenarioErrors};

/// The seed suite: every case of the catalogue (shared/CASES.md).
const SEED: &[(&str, &str)] = &[
    (
        "seed/s1-cable-pull.toml",
        include_str!("../suites/seed/s1-cable-pull.toml"),
    ),
    (
        "seed/s2-graceful-close.toml",
        include_str!("../suites/seed/s2-graceful-close.toml"),
    ),
    (
        "seed/s3-exit-without-close.toml",
        include_str!("../suites/seed/s3-exit-without-close.toml"),
    ),
    (
        "seed/s4-kill-while-sending.toml",
        include_str!("../suites/seed/s4-kill-while-sending.toml"),
    ),
    (
        "seed/s5-send-after-peer-close.toml",
        include_str!("../suites/seed/s5-send-after-peer-close.toml"),
    ),
    (
        "seed/c1-send-after-server-close.toml",
        include_str!("../suites/seed/c1-send-after-server-close.toml"),
    ),
    (
        "seed/c2-send-then-close-then-client-sends.toml",
        include_str!("../suites/seed/c2-send-then-close-then-client-sends.toml"),
    ),
    (
        "seed/c3-close-with-unread-data.toml",
        include_str!("../suites/seed/c3-close-with-unread-data.toml"),
    ),
    (
        "seed/a1-linger-abort.toml",
        include_str!("../suites/seed/a1-linger-abort.toml"),
    ),
    (
        "seed/h1-half-close.toml",
        include_str!("../suites/seed/h1-half-close.toml"),
    ),
    (
        "seed/k1-keepalive-dead-peer.toml",
        include_str!("../suites/seed/k1-keepalive-dead-peer.toml"),
    ),
    (
        "seed/u1-user-timeout.toml",
        include_str!("../suites/seed/u1-user-timeout.toml"),
    ),
    (
        "seed/r1-peer-reboot.toml",
        include_str!("../suites/seed/r1-peer-reboot.toml"),
    ),
    (
        "seed/f1-refused.toml",
        include_str!("../suites/seed/f1-refused.toml"),
    ),
    (
        "seed/f2-connect-to-isolated.toml",
        include_str!("../suites/seed/f2-connect-to-isolated.toml"),
    ),
];

/// Faults done to an application under test (`--target server=...`): its
/// host aborting a flow, its process frozen, killed and restarted, one of
/// its flows cut.
const APP: &[(&str, &str)] = &[
    (
        "app/x1-abort-flow.toml",
        include_str!("../suites/app/x1-abort-flow.toml"),
    ),
    (
        "app/x2-frozen-server.toml",
        include_str!("../suites/app/x2-frozen-server.toml"),
    ),
    (
        "app/x3-crash-restart.toml",
        include_str!("../suites/app/x3-crash-restart.toml"),
    ),
    (
        "app/x4-one-flow-cut.toml",
        include_str!("../suites/app/x4-one-flow-cut.toml"),
    ),
];

/// Faults as they happen in the world: a cable pulled at the switch side,
/// a host's power lost and back (`power` needs the VM lab).
const PHYSICAL: &[(&str, &str)] = &[
    (
        "physical/p1-pulled-host-sends.toml",
        include_str!("../suites/physical/p1-pulled-host-sends.toml"),
    ),
    (
        "physical/p2-power-lost-then-back.toml",
        include_str!("../suites/physical/p2-power-lost-then-back.toml"),
    ),
    (
        "physical/p3-power-lost-for-good.toml",
        include_str!("../suites/physical/p3-power-lost-for-good.toml"),
    ),
    (
        "physical/p4-cable-back-in-time.toml",
        include_str!("../suites/physical/p4-cable-back-in-time.toml"),
    ),
    (
        "physical/p5-orderly-reboot.toml",
        include_str!("../suites/physical/p5-orderly-reboot.toml"),
    ),
];

/// Bad networks, not only dead ones: delay, loss, duplication, reordering
/// and corruption made by netem (`degrade` needs a kernel with sch_netem:
/// the VM lab's guests).
const DEGRADED: &[(&str, &str)] = &[
    (
        "degraded/d1-connect-under-delay.toml",
        include_str!("../suites/degraded/d1-connect-under-delay.toml"),
    ),
    (
        "degraded/d2-bulk-under-loss.toml",
        include_str!("../suites/degraded/d2-bulk-under-loss.toml"),
    ),
    (
        "degraded/d3-keepalive-under-loss.toml",
        include_str!("../suites/degraded/d3-keepalive-under-loss.toml"),
    ),
    (
        "degraded/d4-graceful-close-on-a-bad-link.toml",
        include_str!("../suites/degraded/d4-graceful-close-on-a-bad-link.toml"),
    ),
    (
        "degraded/d5-duplicated-and-reordered.toml",
        include_str!("../suites/degraded/d5-duplicated-and-reordered.toml"),
    ),
    (
        "degraded/d6-corrupted.toml",
        include_str!("../suites/degraded/d6-corrupted.toml"),
    ),
    (
        "degraded/d7-heals-at-its-deadline.toml",
        include_str!("../suites/degraded/d7-heals-at-its-deadline.toml"),
    ),
    (
        "degraded/d8-rate-limited.toml",
        include_str!("../suites/degraded/d8-rate-limited.toml"),
    ),
    (
        "degraded/d9-loss-as-asked.toml",
        include_str!("../suites/degraded/d9-loss-as-asked.toml"),
    ),
];

/// Partitions: a host cut off one way only, or only from some hosts
/// (`isolate` with `direction` and `from`).
const PARTITIONS: &[(&str, &str)] = &[
    (
        "partitions/n1-one-way-in.toml",
        include_str!("../suites/partitions/n1-one-way-in.toml"),
    ),
    (
        "partitions/n2-one-way-out.toml",
        include_str!("../suites/partitions/n2-one-way-out.toml"),
    ),
    (
        "partitions/n3-two-cut-third-reaches-both.toml",
        include_str!("../suites/partitions/n3-two-cut-third-reaches-both.toml"),
    ),
    (
        "partitions/n4-ring-of-five.toml",
        include_str!("../suites/partitions/n4-ring-of-five.toml"),
    ),
    (
        "partitions/n5-new-refused-open-streams.toml",
        include_str!("../suites/partitions/n5-new-refused-open-streams.toml"),
    ),
    (
        "partitions/n6-open-cut-new-half-open.toml",
        include_str!("../suites/partitions/n6-open-cut-new-half-open.toml"),
    ),
    (
        "partitions/n7-slow-connection-open.toml",
        include_str!("../suites/partitions/n7-slow-connection-open.toml"),
    ),
    (
        "partitions/n8-full-accept-queue-drops-syn.toml",
        include_str!("../suites/partitions/n8-full-accept-queue-drops-syn.toml"),
    ),
    (
        "partitions/n9-accept-overflow-reset.toml",
        include_str!("../suites/partitions/n9-accept-overflow-reset.toml"),
    ),
    (
        "partitions/n10-accept-overflow-drop.toml",
        include_str!("../suites/partitions/n10-accept-overflow-drop.toml"),
    ),
    (
        "partitions/n11-late-accept.toml",
        include_str!("../suites/partitions/n11-late-accept.toml"),
    ),
    (
        "partitions/n12-split-in-two.toml",
        include_str!("../suites/partitions/n12-split-in-two.toml"),
    ),
];

/// Names of the built-in suites.
pub const NAMES: &[&str] = &["seed", "app", "physical", "degraded", "partitions"];

/// The scenarios of a built-in suite, or `None` if there is no such suite.
pub fn load(name: &str) -> Option<Result<Vec<Scenario>, ScenarioErrors>> {
    let files = match name {
        "seed" => SEED,
        "app" => APP,
        "physical" => PHYSICAL,
        "degraded" => DEGRADED,
        "partitions" => PARTITIONS,
        _ => return None,
    };
    let mut scenarios = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in files {
        match scenario::parse(file, text) {
            Ok(scenario) => scenarios.push(scenario),
            Err(ScenarioErrors(found)) => errors.extend(found),
        }
    }
    Some(if errors.is_empty() {
        Ok(scenarios)
    } else {
        Err(ScenarioErrors(errors))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_suite_parses_and_covers_the_catalogue() -> Result<(), ScenarioErrors> {
        let scenarios = load("seed").ok_or_else(|| ScenarioErrors(Vec::new()))??;
        let ids: Vec<&str> = scenarios
            .iter()
            .map(|scenario| scenario.id.as_str())
            .collect();
        for id in [
            "S1", "S2", "S3", "S4", "S5", "C1", "C2", "C3", "A1", "H1", "K1", "U1", "R1", "F1",
            "F2",
        ] {
            assert!(ids.contains(&id), "{id} is missing from the seed suite");
        }
        assert!(load("nope").is_none());
        let app = load("app").ok_or_else(|| ScenarioErrors(Vec::new()))??;
        assert!(
            app.iter()
                .all(|case| case.application.as_deref() == Some("server")),
            "every app case needs an application to play its server"
        );
        Ok(())
    }
}
