//! What to run, where and how wide: the cases, the agents, the roles
//! pinned to agents or played by applications, and which agents each case
//! is bound to.

use super::handles::{AgentHandle, TargetHandle};
use crate::scenario::Scenario;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What to run, where, how wide.
pub struct Plan {
    /// The run's id ([`new_run_id`]).
    pub run_id: String,
    /// Suite name or file list, for the report.
    pub suite: String,
    /// The cases.
    pub cases: Vec<Scenario>,
    /// The agents.
    pub agents: Vec<Arc<AgentHandle>>,
    /// Run each case on every ordered choice of distinct agents for its
    /// roles, instead of only the first ones.
    pub all_bindings: bool,
    /// Roles bound to named agents, for every case that has the role.
    pub pinned: BTreeMap<String, String>,
    /// Roles played by applications under test, for every case that has the role.
    pub targets: BTreeMap<String, Arc<TargetHandle>>,
    /// Cases at once.
    pub parallel: usize,
    /// How long cases took when they last ran, by id (ms), for placing
    /// them; a case not in it is estimated from its scenario.
    pub durations: BTreeMap<String, u64>,
}

impl Plan {
    /// The bindings a case runs on: agents for the roles no application
    /// plays, in role order. Pinned roles (`--bind role=agent`) always get
    /// their agent; the others get the first free agents (not the agents on
    /// an application's host), or every ordered choice of distinct agents
    /// when `all_bindings`.
    pub fn bindings(&self, case: &Scenario) -> Vec<Vec<Arc<AgentHandle>>> {
        let mut found = Vec::new();
        let mut chosen = Vec::new();
        self.choose(case, &mut chosen, &mut found);
        found
    }

    fn choose(
        &self,
        case: &Scenario,
        chosen: &mut Vec<usize>,
        found: &mut Vec<Vec<Arc<AgentHandle>>>,
    ) {
        if !self.all_bindings && !found.is_empty() {
            return;
        }
        let agent_roles: Vec<&String> = case
            .roles
            .iter()
            .filter(|role| !self.targets.contains_key(*role))
            .collect();
        let Some(role) = agent_roles.get(chosen.len()) else {
            found.push(
                chosen
                    .iter()
                    .map(|&index| Arc::clone(&self.agents[index]))
                    .collect(),
            );
            return;
        };
        let pinned = self.pinned.get(*role);
        for index in 0..self.agents.len() {
            let fits = match pinned {
                Some(name) => &self.agents[index].name == name,
                None => !self.hosts_an_application(&self.agents[index]),
            };
            if fits && !chosen.contains(&index) {
                chosen.push(index);
                self.choose(case, chosen, found);
                chosen.pop();
            }
        }
    }

    /// Whether an application under test runs on `agent`'s host (the
    /// agent counts its sockets: it plays no role).
    pub fn hosts_an_application(&self, agent: &AgentHandle) -> bool {
        self.targets.values().any(|target| {
            target
                .host
                .as_ref()
                .is_some_and(|host| host.name == agent.name)
        })
    }

    /// The applications that play roles of `case`.
    pub fn targets_of(&self, case: &Scenario) -> BTreeMap<String, Arc<TargetHandle>> {
        self.targets
            .iter()
            .filter(|(role, _)| case.roles.contains(role))
            .map(|(role, target)| (role.clone(), Arc::clone(target)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_agent::{self, Faults};
    use super::super::{RunClock, TargetHandle};
    use super::*;
    use crate::targets::Target;

    /// A plan of the seed suite's S2 (roles client, server) on `agents` fake agents.
    async fn plan(agents: usize) -> Result<Plan, Box<dyn std::error::Error>> {
        let clock = RunClock::start();
        let handles = fake_agent::handles(agents, Faults::default(), &clock).await?;
        let seed = crate::suites::load("seed").ok_or("no seed suite")??;
        Ok(Plan {
            run_id: "test".to_owned(),
            suite: "test".to_owned(),
            cases: seed.into_iter().filter(|case| case.id == "S2").collect(),
            agents: handles.into_iter().map(|(agent, _)| agent).collect(),
            all_bindings: false,
            pinned: BTreeMap::new(),
            targets: BTreeMap::new(),
            parallel: 1,
            durations: Default::default(),
        })
    }

    fn names(binding: &[Arc<AgentHandle>]) -> Vec<&str> {
        binding.iter().map(|agent| agent.name.as_str()).collect()
    }

    #[tokio::test]
    async fn roles_take_the_first_agents_or_every_ordered_choice()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut plan = plan(3).await?;
        let case = plan.cases[0].clone();
        let bindings = plan.bindings(&case);
        assert_eq!(bindings.len(), 1);
        assert_eq!(names(&bindings[0]), ["fake-1", "fake-2"]);
        plan.all_bindings = true;
        let every = plan.bindings(&case);
        let all: Vec<Vec<&str>> = every.iter().map(|binding| names(binding)).collect();
        assert_eq!(all.len(), 6, "3 agents, 2 roles: 3 x 2 ordered choices");
        assert!(all.iter().all(|binding| binding[0] != binding[1]));
        Ok(())
    }

    #[tokio::test]
    async fn a_pinned_role_gets_its_agent_and_one_agent_binds_nothing()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut plan = plan(3).await?;
        let case = plan.cases[0].clone();
        plan.pinned.insert("server".to_owned(), "fake-1".to_owned());
        assert_eq!(names(&plan.bindings(&case)[0]), ["fake-2", "fake-1"]);
        plan.agents.truncate(1);
        plan.pinned.clear();
        assert!(plan.bindings(&case).is_empty(), "two roles, one agent");
        Ok(())
    }

    #[tokio::test]
    async fn an_applications_role_and_host_are_not_an_agents_to_play()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut plan = plan(3).await?;
        let case = plan.cases[0].clone();
        let mut target = Target::inline("tcp://127.0.0.1:7000")?;
        target.agent = Some("fake-1".to_owned());
        let placed = TargetHandle::place(target, &plan.agents)?;
        plan.targets.insert("server".to_owned(), Arc::new(placed));
        // Only the client is bound, and never to the application's host.
        assert_eq!(names(&plan.bindings(&case)[0]), ["fake-2"]);
        assert_eq!(plan.targets_of(&case).len(), 1);
        Ok(())
    }
}
