//! Steps that act on many hosts at once, written as the one-host steps
//! they stand for: a `partition` becomes one `isolate` per host and peer it
//! cuts, a `heal` with no role one `heal` per role isolated so far, each
//! group released at one moment (`with` its first). The engine plays only
//! one-host steps; the report shows each host's part.
//!
//! The first step of a group keeps the written step's name (a `since` or
//! `with` naming it still finds it); the others are named after it:
//! `split.a-c` (a cuts c off), `mend.b`. Each carries the written step's
//! expectations, judged on its own host.

use super::{Action, IsolatedConnections, IsolationDirection, NetworkFault, Step};

/// One host's part of a many-host step: its name's suffix, its role, what
/// it does there.
struct Part {
    suffix: String,
    role: String,
    fault: NetworkFault,
}

/// `steps` with every many-host step written as its one-host steps;
/// `roles` gives a ring its order.
pub fn lower(steps: Vec<Step>, roles: &[String]) -> Vec<Step> {
    let mut lowered = Vec::with_capacity(steps.len());
    // Roles an isolate step acted for so far: what a heal of all lifts.
    let mut isolated: Vec<String> = Vec::new();
    for step in steps {
        let parts = match (&step.action, &step.role) {
            (
                Action::Network(NetworkFault::Partition {
                    shape,
                    mode,
                    deadline_ms,
                }),
                _,
            ) => shape
                .cuts(roles)
                .into_iter()
                .map(|(host, peer)| Part {
                    suffix: format!("{host}-{peer}"),
                    role: host,
                    fault: NetworkFault::Isolate {
                        mode: *mode,
                        deadline_ms: *deadline_ms,
                        conn: None,
                        from: Some(peer),
                        direction: IsolationDirection::Both,
                        connections: IsolatedConnections::All,
                    },
                })
                .collect::<Vec<_>>(),
            (Action::Network(NetworkFault::Heal), None) => isolated
                .iter()
                .map(|role| Part {
                    suffix: role.clone(),
                    role: role.clone(),
                    fault: NetworkFault::Heal,
                })
                .collect(),
            (Action::Network(NetworkFault::Isolate { .. }), Some(role)) => {
                note(&mut isolated, role);
                lowered.push(step);
                continue;
            }
            _ => {
                lowered.push(step);
                continue;
            }
        };
        let lead = step.with.clone().unwrap_or_else(|| step.name.clone());
        for (index, part) in parts.into_iter().enumerate() {
            if matches!(part.fault, NetworkFault::Isolate { .. }) {
                note(&mut isolated, &part.role);
            }
            lowered.push(Step {
                name: if index == 0 {
                    step.name.clone()
                } else {
                    format!("{}.{}", step.name, part.suffix)
                },
                role: Some(part.role),
                action: Action::Network(part.fault),
                background: false,
                with: (index > 0 || step.with.is_some()).then(|| lead.clone()),
                expect: step.expect.clone(),
                line: step.line,
            });
        }
    }
    lowered
}

fn note(isolated: &mut Vec<String>, role: &str) {
    if !isolated.iter().any(|known| known == role) {
        isolated.push(role.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    const HEADER: &str = "id = \"T\"\nname = \"t\"\ntitle = \"t\"\nroles = [\"a\", \"b\", \"c\", \"d\", \"e\"]\nneeds = [\"isolate\"]\n";

    fn steps_of(body: &str) -> Vec<(String, Option<String>, Option<String>, String)> {
        let scenario = parse("t.toml", &format!("{HEADER}{body}"))
            .unwrap_or_else(|errors| panic!("{errors:#?}"));
        scenario
            .steps
            .iter()
            .map(|step| {
                let from = match &step.action {
                    Action::Network(NetworkFault::Isolate { from, .. }) => from.clone(),
                    _ => None,
                };
                (
                    step.name.clone(),
                    step.role.clone(),
                    step.with.clone(),
                    from.map_or_else(
                        || step.action.keyword().to_owned(),
                        |from| format!("from {from}"),
                    ),
                )
            })
            .collect()
    }

    #[test]
    fn two_groups_cut_each_other_on_every_host_at_one_moment_and_heal_so() {
        let steps = steps_of(
            "[[step]]\nname = \"split\"\ndo = \"partition\"\ngroups = [[\"a\", \"b\"], [\"c\"]]\ndeadline_ms = 5000\n\
             [[step]]\nname = \"mend\"\ndo = \"heal\"\n",
        );
        let named = |name: &str, role: &str, with: Option<&str>, what: &str| {
            (
                name.to_owned(),
                Some(role.to_owned()),
                with.map(str::to_owned),
                what.to_owned(),
            )
        };
        assert_eq!(
            steps,
            [
                named("split", "a", None, "from c"),
                named("split.b-c", "b", Some("split"), "from c"),
                named("split.c-a", "c", Some("split"), "from a"),
                named("split.c-b", "c", Some("split"), "from b"),
                named("mend", "a", None, "heal"),
                named("mend.b", "b", Some("mend"), "heal"),
                named("mend.c", "c", Some("mend"), "heal"),
            ]
        );
    }

    #[test]
    fn a_ring_of_five_cuts_each_host_from_its_two_non_neighbours() {
        let steps = steps_of(
            "[[step]]\nname = \"ring\"\ndo = \"partition\"\nshape = \"ring\"\ndeadline_ms = 5000\n",
        );
        assert_eq!(steps.len(), 10);
        let cuts: Vec<String> = steps
            .iter()
            .map(|(_, role, _, what)| format!("{} {what}", role.as_deref().unwrap_or_default()))
            .collect();
        for cut in [
            "a from c", "a from d", "c from a", "c from e", "e from b", "e from c",
        ] {
            assert!(cuts.contains(&cut.to_owned()), "{cut}: {cuts:?}");
        }
        for neighbours in ["a from b", "a from e", "c from d"] {
            assert!(
                !cuts.contains(&neighbours.to_owned()),
                "{neighbours}: {cuts:?}"
            );
        }
    }
}
