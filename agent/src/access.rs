//! Who may do what on this agent: per-caller rules.
//!
//! Every certificate of a lab's CA gets in (see [`crate::tls`]); what a
//! caller may then *use* is decided here, from the agent's `[access]`
//! rules: a caller is named by its certificate (subject common name or a
//! subject alternative name) or by a group its certificate carries (an
//! organizational unit, `faultlab certs issue --group`). A caller gets
//! what every rule naming it gives; a caller no rule names gets the
//! default. What the host itself does not allow (`[allow]`) no rule can
//! give. Without `[access]`, every caller may use all the agent allows.
//!
//! ```toml
//! [access]
//! default = ["connections"]          # callers no rule names (default: nothing)
//!
//! [[access.rules]]
//! group = "ci"
//! may = ["connections", "isolate", "degrade", "loss", "capture"]
//!
//! [[access.rules]]
//! caller = "lab-owner"
//! may = ["all"]
//! ```

use faultlab_proto::Capability;
use serde::Deserialize;

/// Who is calling, as its certificate says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// How logs name it: the certificate's common name, or its address
    /// when it has no certificate.
    pub name: String,
    /// Every name the certificate gives it: common name and subject
    /// alternative names (DNS names, e-mail addresses, URIs).
    pub names: Vec<String>,
    /// The groups its certificate carries (organizational units).
    pub groups: Vec<String>,
}

impl Caller {
    /// A caller without a certificate (plain text on loopback or an
    /// insecure agent): named by its address, in no group.
    pub fn anonymous(name: String) -> Self {
        Self {
            name,
            names: Vec::new(),
            groups: Vec::new(),
        }
    }
}

/// The capabilities a rule may give: the agent's own and the lab's
/// (`power`, and `link` pulled at the switch, are done by the controller's
/// lab, which asks the agent whether the caller may). `orderly-reboot`
/// goes with `reboot`.
pub const RULED: [Capability; 10] = [
    Capability::Connections,
    Capability::Isolate,
    Capability::Link,
    Capability::Degrade,
    Capability::Loss,
    Capability::Reboot,
    Capability::Power,
    Capability::Process,
    Capability::Capture,
    Capability::Tune,
];

/// A set of capabilities, as a rule names them (`"all"` for every one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant(Vec<Capability>);

impl Grant {
    /// Whether it holds `capability` (`orderly-reboot` with `reboot`).
    pub fn holds(&self, capability: Capability) -> bool {
        self.0.contains(&capability.ruled_as())
    }

    /// Its capabilities, comma-separated ("nothing" for none).
    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            "nothing".to_owned()
        } else {
            Capability::names(&self.0)
        }
    }

    fn add(&mut self, other: &Self) {
        for capability in &other.0 {
            if !self.0.contains(capability) {
                self.0.push(*capability);
            }
        }
        self.0.sort_unstable();
    }
}

impl TryFrom<Vec<String>> for Grant {
    type Error = String;

    fn try_from(names: Vec<String>) -> Result<Self, String> {
        let mut grant = Vec::new();
        for name in &names {
            if name == "all" {
                grant.extend(RULED);
                continue;
            }
            match Capability::from_name(name).filter(|capability| RULED.contains(capability)) {
                Some(capability) => grant.push(capability),
                None => {
                    return Err(format!(
                        "unknown capability {name:?}: give some of {}, or \"all\"",
                        Capability::names(&RULED)
                    ));
                }
            }
        }
        grant.sort_unstable();
        grant.dedup();
        Ok(Self(grant))
    }
}

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        Self::try_from(names).map_err(serde::de::Error::custom)
    }
}

/// Whom a rule is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Whom {
    /// A caller whose certificate has this name (common name or SAN).
    Caller(String),
    /// Callers whose certificate carries this group (OU).
    Group(String),
}

/// One rule: whom, and what it may use.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RuleInFile")]
pub struct Rule {
    /// Whom it is for.
    pub whom: Whom,
    /// What they may use.
    pub may: Grant,
}

/// A rule as written: exactly one of `caller` and `group`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleInFile {
    caller: Option<String>,
    group: Option<String>,
    may: Grant,
}

impl TryFrom<RuleInFile> for Rule {
    type Error = String;

    fn try_from(rule: RuleInFile) -> Result<Self, String> {
        let whom = match (rule.caller, rule.group) {
            (Some(caller), None) if !caller.is_empty() => Whom::Caller(caller),
            (None, Some(group)) if !group.is_empty() => Whom::Group(group),
            (Some(_), Some(_)) => {
                return Err("a rule names either a caller or a group, not both".to_owned());
            }
            _ => return Err("a rule needs caller = \"NAME\" or group = \"GROUP\"".to_owned()),
        };
        Ok(Self {
            whom,
            may: rule.may,
        })
    }
}

impl Rule {
    fn is_for(&self, caller: &Caller) -> bool {
        match &self.whom {
            Whom::Caller(name) => caller.names.contains(name),
            Whom::Group(group) => caller.groups.contains(group),
        }
    }
}

/// The agent's `[access]` table: rules and the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// What a caller no rule names may use (nothing unless given).
    #[serde(default)]
    pub default: Grant,
    /// The rules, in any order: a caller gets the union of its rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// What decides on each call: the rules, or, without any, everyone may
/// use everything the host allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    rules: Option<Rules>,
}

/// A call refused by the rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "caller {caller:?} may not use {capability} on this agent: its access rules give {whom} {given}"
)]
pub struct Denied {
    /// Who asked.
    pub caller: String,
    /// For what.
    pub capability: Capability,
    /// "it" or "callers no rule names".
    whom: &'static str,
    /// What it may use.
    given: String,
}

impl Access {
    /// Decide by `rules`; `None`: everyone may use everything allowed.
    pub fn new(rules: Option<Rules>) -> Self {
        Self { rules }
    }

    /// What `caller` may use: `None` when no rules restrict it.
    pub fn grant(&self, caller: &Caller) -> Option<(Grant, bool)> {
        let rules = self.rules.as_ref()?;
        let mut grant = Grant::default();
        let mut named = false;
        for rule in rules.rules.iter().filter(|rule| rule.is_for(caller)) {
            grant.add(&rule.may);
            named = true;
        }
        if !named {
            grant = rules.default.clone();
        }
        Some((grant, named))
    }

    /// Whether `caller` may use one of `capabilities` (a call some of
    /// which do: a degradation's undo needs `degrade` or `loss`): the
    /// first it may use, or why not.
    pub fn check(
        &self,
        caller: &Caller,
        capabilities: &[Capability],
    ) -> Result<Capability, Denied> {
        let first = capabilities
            .first()
            .copied()
            .unwrap_or(Capability::Connections);
        let Some((grant, named)) = self.grant(caller) else {
            return Ok(first);
        };
        if let Some(&held) = capabilities
            .iter()
            .find(|&&capability| grant.holds(capability))
        {
            return Ok(held);
        }
        Err(Denied {
            caller: caller.name.clone(),
            capability: first,
            whom: if named { "it" } else { "callers no rule names" },
            given: grant.describe(),
        })
    }

    /// Of `offered`, those `caller` may not use, each with why.
    pub fn denied_of(&self, caller: &Caller, offered: &[Capability]) -> Vec<Denied> {
        offered
            .iter()
            .filter_map(|&capability| self.check(caller, &[capability]).err())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(name: &str, groups: &[&str]) -> Caller {
        Caller {
            name: name.to_owned(),
            names: vec![name.to_owned()],
            groups: groups.iter().map(|&group| group.to_owned()).collect(),
        }
    }

    fn team() -> Result<Access, toml::de::Error> {
        #[derive(Deserialize)]
        struct File {
            access: Rules,
        }
        let file: File = toml::from_str(
            "[access]\ndefault = [\"connections\"]\n\
             [[access.rules]]\ngroup = \"ci\"\nmay = [\"connections\", \"isolate\", \"degrade\", \"loss\"]\n\
             [[access.rules]]\ngroup = \"people\"\nmay = [\"connections\", \"isolate\", \"degrade\", \"loss\", \"reboot\"]\n\
             [[access.rules]]\ncaller = \"owner\"\nmay = [\"all\"]\n",
        )?;
        Ok(Access::new(Some(file.access)))
    }

    #[test]
    fn a_caller_gets_what_its_rules_give_and_nothing_else() -> Result<(), toml::de::Error> {
        let access = team()?;
        let ci = person("ci-job", &["ci"]);
        assert_eq!(
            access.check(&ci, &[Capability::Isolate]),
            Ok(Capability::Isolate)
        );
        let denied = access.check(&ci, &[Capability::Reboot]);
        let message = denied.as_ref().map_err(ToString::to_string);
        assert_eq!(
            message,
            Err(
                "caller \"ci-job\" may not use reboot on this agent: its access rules give it connections,isolate,degrade,loss"
                    .to_owned()
            )
        );
        let alice = person("alice", &["people"]);
        assert!(access.check(&alice, &[Capability::OrderlyReboot]).is_ok());
        assert!(access.check(&alice, &[Capability::Power]).is_err());
        // Rules add up: the owner in a group gets all.
        let owner = person("owner", &["people"]);
        assert!(access.check(&owner, &[Capability::Power]).is_ok());
        // Either of two will do.
        assert_eq!(
            access.check(&ci, &[Capability::Reboot, Capability::Loss]),
            Ok(Capability::Loss)
        );
        Ok(())
    }

    #[test]
    fn callers_no_rule_names_get_the_default_and_no_rules_mean_all() -> Result<(), toml::de::Error>
    {
        let access = team()?;
        let stranger = person("intern", &["interns"]);
        assert!(access.check(&stranger, &[Capability::Connections]).is_ok());
        let denied = access
            .check(&stranger, &[Capability::Isolate])
            .map_err(|denied| denied.to_string());
        assert!(
            denied.is_err_and(|message| message.contains("callers no rule names")
                && message.contains("\"intern\""))
        );
        let anonymous = Caller::anonymous("127.0.0.1:5000 (no certificate)".to_owned());
        assert!(access.check(&anonymous, &[Capability::Isolate]).is_err());
        let open = Access::new(None);
        assert!(open.check(&stranger, &[Capability::Power]).is_ok());
        assert_eq!(open.grant(&stranger), None);
        let denied = access.denied_of(&stranger, &[Capability::Connections, Capability::Isolate]);
        assert_eq!(denied.len(), 1);
        Ok(())
    }

    #[test]
    fn bad_rules_are_refused_with_what_is_wrong() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct File {
            access: Rules,
        }
        for (text, expected) in [
            (
                "[access]\n[[access.rules]]\ncaller = \"a\"\nmay = [\"everything\"]\n",
                "unknown capability \"everything\"",
            ),
            (
                "[access]\n[[access.rules]]\ncaller = \"a\"\ngroup = \"b\"\nmay = []\n",
                "not both",
            ),
            (
                "[access]\n[[access.rules]]\nmay = [\"isolate\"]\n",
                "caller = \"NAME\" or group",
            ),
            (
                "[access]\ndefault = [\"orderly-reboot\"]\n",
                "unknown capability \"orderly-reboot\"",
            ),
        ] {
            let error = toml::from_str::<File>(text).map_err(|error| error.to_string());
            assert!(
                error
                    .as_ref()
                    .is_err_and(|message| message.contains(expected)),
                "{text}: {error:?}"
            );
        }
    }
}
