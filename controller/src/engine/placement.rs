//! Which case runs on which hosts, and in which turn: the run's placement.
//!
//! Why: a lab with more hosts than a case needs should not wait. Cases
//! that cut hosts off spend most of their time in protocol waits (a
//! retransmission timeout, a keepalive), so with four hosts two of them
//! can wait at once on two disjoint pairs. Each case is placed, longest
//! first, on the hosts that free up soonest (list scheduling on what the
//! case took when it last ran, from the history, or else on an estimate
//! from its scenario); then at run time a case starts when no case it
//! [conflicts](Placement::conflicts_with) with is running or placed before
//! it, so every host takes its cases in the placed order.
//!
//! Two cases conflict when they share a host and one of them needs the
//! host to itself: it cuts the host off, pulls its cable, cuts its power,
//! reboots it or degrades its network, or its packets are captured (a
//! neighbour's traffic would be in its evidence, or crowd it out). A case
//! with an application under test conflicts with every case: its probe
//! counts every socket of the application's port. Agents on loopback share
//! one host (one network stack, one capture), whatever their names.

use super::handles::{AgentHandle, TargetHandle};
use super::plan::Plan;
use crate::scenario::{Action, ExpectedOutcome, NetworkFault, Scenario, SocketCall, Timing};
use faultlab_proto::Capability;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a case costs beyond its waits, for placing it (set-up, captures,
/// clean-up on a local lab).
const OVERHEAD_MS: u64 = 150;

/// One case on its hosts.
#[derive(Clone)]
pub struct Placement {
    /// Index of the case in the plan.
    pub case_index: usize,
    /// Where its report goes among the run's reports (plan order).
    pub slot: usize,
    /// The case.
    pub case: Scenario,
    /// The agents playing its roles (those no application plays), in role order.
    pub binding: Vec<Arc<AgentHandle>>,
    /// The applications playing its other roles.
    pub targets: BTreeMap<String, Arc<TargetHandle>>,
    /// The hosts it runs on (see the module's doc: loopback agents are one).
    pub hosts: Vec<String>,
    /// Whether it needs its hosts to itself.
    pub exclusive: bool,
    /// Whether it needs the whole lab to itself.
    pub whole_lab: bool,
    /// Estimated wall time, ms.
    pub estimate_ms: u64,
}

impl Placement {
    /// Whether the two may not run at once.
    pub fn conflicts_with(&self, other: &Placement) -> bool {
        self.whole_lab
            || other.whole_lab
            || ((self.exclusive || other.exclusive)
                && self.hosts.iter().any(|host| other.hosts.contains(host)))
    }
}

/// The host an agent stands for: its name, or one shared host for every
/// agent on loopback.
pub fn host_of(agent: &AgentHandle) -> String {
    if agent.test_ip.is_loopback() {
        "loopback".to_owned()
    } else {
        agent.name.clone()
    }
}

/// Whether a case needs its hosts to itself whatever the lab: it cuts them
/// off, pulls their cables, cuts their power, reboots them or degrades
/// their network.
pub fn disrupts_hosts(case: &Scenario) -> bool {
    case.needed().any(Capability::disrupts_hosts)
}

/// The waits a scenario asks for, in ms: sleeps, and the timeouts of steps
/// whose Linux expectation is a timeout (they end only at their deadline).
pub fn inherent_wait_ms(case: &Scenario) -> u64 {
    case.steps
        .iter()
        .map(|step| {
            let times_out = step.expect.get("linux").and_then(|expect| expect.outcome)
                == Some(ExpectedOutcome::Timeout);
            match &step.action {
                Action::Timing(Timing::Sleep { ms }) => *ms,
                Action::Socket(
                    SocketCall::Send { timeout_ms, .. }
                    | SocketCall::Recv { timeout_ms, .. }
                    | SocketCall::WaitEnd { timeout_ms, .. }
                    | SocketCall::Connect { timeout_ms, .. },
                ) if times_out => u64::from(*timeout_ms),
                _ => 0,
            }
        })
        .sum()
}

/// How long a case should take, for placing it: the waits it asks for,
/// the bounds its expectations set on the waits it provokes (`within_ms`:
/// a keepalive's or a user timeout's end), a simulated reboot's down time,
/// and [`OVERHEAD_MS`].
pub fn estimate_ms(case: &Scenario) -> u64 {
    let provoked: u64 = case
        .steps
        .iter()
        .map(|step| {
            let bound = step
                .expect
                .get("linux")
                .and_then(|expect| expect.within_ms)
                .unwrap_or(0);
            let down = match &step.action {
                Action::Network(NetworkFault::Reboot { down_ms, .. }) => *down_ms,
                _ => 0,
            };
            bound + down
        })
        .sum();
    inherent_wait_ms(case) + provoked + OVERHEAD_MS
}

/// Every case of the plan on its hosts, in the order they take their turns.
///
/// A case whose roles the plan fixes (`--bind`, `--all-bindings`, or a lab
/// with just enough agents) keeps its bindings; any other is placed on the
/// agents that free up soonest among those that offer what it needs. A case
/// no agents can play is not placed (its report says why).
pub fn place(plan: &Plan, capturing: bool) -> Vec<Placement> {
    let mut order: Vec<usize> = (0..plan.cases.len()).collect();
    let estimate = |case: &Scenario| {
        plan.durations
            .get(&case.id)
            .copied()
            .unwrap_or_else(|| estimate_ms(case))
    };
    // Longest first: what is placed last fills the gaps.
    order.sort_by_key(|&index| std::cmp::Reverse(estimate(&plan.cases[index])));
    let mut free_at: BTreeMap<String, u64> = BTreeMap::new();
    let mut placed = Vec::new();
    for index in order {
        let case = &plan.cases[index];
        let targets = plan.targets_of(case);
        let bindings = if plan.all_bindings || !plan.pinned.is_empty() {
            plan.bindings(case)
        } else {
            soonest_free(plan, case, &free_at).into_iter().collect()
        };
        for (offset, binding) in bindings.into_iter().enumerate() {
            let mut hosts: Vec<String> = binding.iter().map(|agent| host_of(agent)).collect();
            hosts.sort();
            hosts.dedup();
            let start = hosts
                .iter()
                .map(|host| free_at.get(host).copied().unwrap_or(0))
                .max()
                .unwrap_or(0);
            let estimate_ms = estimate(case);
            for host in &hosts {
                free_at.insert(host.clone(), start + estimate_ms);
            }
            placed.push((
                start,
                Placement {
                    case_index: index,
                    // Set below, once every case is placed.
                    slot: offset,
                    case: case.clone(),
                    binding,
                    whole_lab: !targets.is_empty(),
                    targets: targets.clone(),
                    hosts,
                    exclusive: capturing || disrupts_hosts(case),
                    estimate_ms,
                },
            ));
        }
    }
    // Reports in plan order: by case, then binding.
    let mut report_order: Vec<usize> = (0..placed.len()).collect();
    report_order.sort_by_key(|&at| (placed[at].1.case_index, placed[at].1.slot));
    for (slot, at) in report_order.into_iter().enumerate() {
        placed[at].1.slot = slot;
    }
    // Turns by planned start (stable: equal starts keep the longest first).
    placed.sort_by_key(|(start, _)| *start);
    placed.into_iter().map(|(_, placement)| placement).collect()
}

/// The agents for `case`'s roles that are free soonest: first those that
/// offer every capability it needs, then any (its report will say what is
/// missing); never an application's host. Ties go to the lab's order.
fn soonest_free(
    plan: &Plan,
    case: &Scenario,
    free_at: &BTreeMap<String, u64>,
) -> Option<Vec<Arc<AgentHandle>>> {
    let wanted = case
        .roles
        .iter()
        .filter(|role| !plan.targets.contains_key(*role))
        .count();
    let offers_all = |agent: &AgentHandle| case.needed().all(|need| agent.offers(need));
    let candidates: Vec<&Arc<AgentHandle>> = plan
        .agents
        .iter()
        .filter(|agent| !plan.hosts_an_application(agent))
        .collect();
    for must_offer in [true, false] {
        let mut fitting: Vec<&Arc<AgentHandle>> = candidates
            .iter()
            .copied()
            .filter(|agent| !must_offer || offers_all(agent))
            .collect();
        if fitting.len() < wanted {
            continue;
        }
        // Stable: equally free agents keep the lab's order.
        fitting.sort_by_key(|agent| free_at.get(&host_of(agent)).copied().unwrap_or(0));
        return Some(fitting.into_iter().take(wanted).cloned().collect());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::{RunClock, fake_agent};
    use super::*;

    async fn seed_plan(hosts: usize) -> Result<Plan, Box<dyn std::error::Error>> {
        let clock = RunClock::start();
        Ok(Plan {
            run_id: "test".to_owned(),
            suite: "seed".to_owned(),
            cases: crate::suites::load("seed").ok_or("no seed suite")??,
            agents: fake_agent::hosts(hosts, &clock).await?,
            all_bindings: false,
            pinned: BTreeMap::new(),
            targets: BTreeMap::new(),
            parallel: 4,
            durations: Default::default(),
        })
    }

    /// Each host's planned load, ms.
    fn load_by_host(placements: &[Placement]) -> BTreeMap<&str, u64> {
        let mut load = BTreeMap::new();
        for placement in placements {
            for host in &placement.hosts {
                *load.entry(host.as_str()).or_insert(0) += placement.estimate_ms;
            }
        }
        load
    }

    #[tokio::test]
    async fn four_hosts_make_two_pairs_that_share_the_waits()
    -> Result<(), Box<dyn std::error::Error>> {
        let plan = seed_plan(4).await?;
        let placements = place(&plan, true);
        assert_eq!(placements.len(), plan.cases.len());
        // Every report slot once, in plan order of the cases.
        let mut slots: Vec<usize> = placements.iter().map(|placement| placement.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..plan.cases.len()).collect::<Vec<_>>());
        for placement in &placements {
            assert_eq!(plan.cases[placement.slot].id, placement.case.id);
        }
        // Two disjoint pairs, and the waits shared between them.
        let pairs: std::collections::BTreeSet<Vec<String>> = placements
            .iter()
            .map(|placement| placement.hosts.clone())
            .collect();
        assert_eq!(pairs.len(), 2, "{pairs:?}");
        let total: u64 = placements
            .iter()
            .map(|placement| placement.estimate_ms)
            .sum();
        let busiest = load_by_host(&placements).into_values().max().unwrap_or(0);
        assert!(
            busiest * 10 <= total * 6,
            "busiest host {busiest} ms of {total} ms"
        );
        // Both pairs get cases that cut hosts off.
        for pair in &pairs {
            assert!(
                placements
                    .iter()
                    .any(|placement| &placement.hosts == pair && disrupts_hosts(&placement.case)),
                "{pair:?} has no case that cuts hosts off"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn what_a_case_took_last_time_beats_its_estimate()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut plan = seed_plan(4).await?;
        // S2 has no waits; known to take 60 s, it goes first, alone on its pair.
        plan.durations.insert("S2".to_owned(), 60_000);
        let placements = place(&plan, true);
        assert_eq!(placements[0].case.id, "S2");
        assert_eq!(placements[0].estimate_ms, 60_000);
        let s2_hosts = &placements[0].hosts;
        assert!(
            placements[1..]
                .iter()
                .all(|placement| &placement.hosts != s2_hosts),
            "every other case on the other pair"
        );
        Ok(())
    }

    #[tokio::test]
    async fn two_hosts_take_every_case_and_loopback_agents_are_one_host()
    -> Result<(), Box<dyn std::error::Error>> {
        let plan = seed_plan(2).await?;
        let placements = place(&plan, true);
        assert!(
            placements
                .iter()
                .all(|placement| placement.hosts == ["fake-1", "fake-2"])
        );
        // Agents on loopback are one host: nothing runs beside anything.
        let clock = RunClock::start();
        let looped = fake_agent::handles(4, fake_agent::Faults::default(), &clock).await?;
        let plan = Plan {
            agents: looped.into_iter().map(|(agent, _)| agent).collect(),
            ..seed_plan(0).await?
        };
        let placements = place(&plan, true);
        assert!(
            placements
                .iter()
                .all(|placement| placement.hosts == ["loopback"])
        );
        Ok(())
    }

    #[test]
    fn cases_conflict_on_a_shared_host_when_one_needs_it_alone() {
        let seed = crate::suites::load("seed")
            .and_then(Result::ok)
            .unwrap_or_default();
        let Some(case) = seed.first().cloned() else {
            panic!("no seed suite");
        };
        let at = |hosts: &[&str], exclusive: bool, whole_lab: bool| Placement {
            case_index: 0,
            slot: 0,
            case: case.clone(),
            binding: Vec::new(),
            targets: BTreeMap::new(),
            hosts: hosts.iter().map(|host| (*host).to_owned()).collect(),
            exclusive,
            whole_lab,
            estimate_ms: 0,
        };
        let (h12, h23, h34) = (["h1", "h2"], ["h2", "h3"], ["h3", "h4"]);
        assert!(at(&h12, true, false).conflicts_with(&at(&h23, false, false)));
        assert!(at(&h12, false, false).conflicts_with(&at(&h23, true, false)));
        assert!(!at(&h12, false, false).conflicts_with(&at(&h23, false, false)));
        assert!(!at(&h12, true, false).conflicts_with(&at(&h34, true, false)));
        assert!(at(&h12, false, false).conflicts_with(&at(&h34, false, true)));
    }

    #[test]
    fn the_inherent_waits_are_sleeps_and_expected_timeouts() {
        let seed = crate::suites::load("seed")
            .and_then(Result::ok)
            .unwrap_or_default();
        let wait = |id: &str| seed.iter().find(|case| case.id == id).map(inherent_wait_ms);
        // S2 (peer closes, no waits) against F2 (connects meant to time out).
        assert_eq!(wait("S2"), Some(0));
        assert!(wait("F2").is_some_and(|ms| ms >= 1_000), "{:?}", wait("F2"));
        // U1's wait is what it provokes: a user timeout, bounded by its
        // expectation's within_ms; R1's is its host's down time.
        let estimate = |id: &str| seed.iter().find(|case| case.id == id).map(estimate_ms);
        assert_eq!(estimate("S2"), Some(OVERHEAD_MS));
        assert_eq!(estimate("U1"), Some(4_500 + OVERHEAD_MS));
        assert!(estimate("R1").is_some_and(|ms| ms >= 2_000));
    }
}
