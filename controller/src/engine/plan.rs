//! What to run, where and how wide: the cases, the agents, the roles
//! pinned to agents or played by applications, and which agents each case
//! is bound to.

use super::handles::{AgentHandle, TargetHandle};
use crate::report::CaseReport;
use crate::scenario::Scenario;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Told as cases start and finish (the terminal's progress bars).
pub trait Progress: Send + Sync {
    /// A case began.
    fn started(&self, _case: &Scenario, _agents: &[String]) {}
    /// A case ended.
    fn finished(&self, _report: &CaseReport) {}
}

/// No progress output.
pub struct Quiet;

impl Progress for Quiet {}

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
        let hosts_an_application = |agent: &AgentHandle| {
            self.targets.values().any(|target| {
                target
                    .host
                    .as_ref()
                    .is_some_and(|host| host.name == agent.name)
            })
        };
        for index in 0..self.agents.len() {
            let fits = match pinned {
                Some(name) => &self.agents[index].name == name,
                None => !hosts_an_application(&self.agents[index]),
            };
            if fits && !chosen.contains(&index) {
                chosen.push(index);
                self.choose(case, chosen, found);
                chosen.pop();
            }
        }
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
