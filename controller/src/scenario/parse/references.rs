//! The checks across a scenario's whole timeline: roles declared, names
//! used only after the step that defines them, capabilities declared,
//! steps released together written right, expectations naming earlier
//! steps and known OSes.

use super::input::{Errors, SpannedTable, key_span};
use crate::scenario::{Action, KNOWN_CAPABILITIES, KNOWN_OS, Reference, Scenario, Step};
use faultlab_proto::errno::{self, OsFamily};
use std::collections::HashSet;
use std::ops::Range;
use toml::Spanned;

/// One problem found in a step: where, which field, what.
type Problem = (Range<usize>, String, String);

/// Check the header and every step against the ones before it.
pub(super) fn check(
    scenario: &Scenario,
    steps: &[(Step, SpannedTable)],
    document: &SpannedTable,
    errors: &mut Errors<'_>,
) {
    check_header(scenario, document, errors);
    let mut timeline = Timeline {
        roles: scenario.roles.iter().map(String::as_str).collect(),
        ..Timeline::default()
    };
    let mut previous: Option<&Step> = None;
    for (index, (step, table)) in steps.iter().enumerate() {
        if step.with.is_none() {
            timeline.end_group();
        }
        let at = StepAt::new(index, step, table, errors);
        let mut problems = Vec::new();
        timeline.check_step(scenario, step, previous, &at, &mut problems);
        for (span, field, message) in problems {
            errors.at(&span, field, message);
        }
        timeline.record(step);
        previous = Some(step);
    }
}

/// Roles listed once, the application among them, capabilities known.
fn check_header(scenario: &Scenario, document: &SpannedTable, errors: &mut Errors<'_>) {
    let whole = 0..errors.text.len();
    let roles_span = key_span(document, "roles", &whole);
    if scenario.roles.is_empty() {
        errors.at(&roles_span, "roles", "a scenario needs at least one role");
    }
    let mut seen_roles = HashSet::new();
    for role in &scenario.roles {
        if !seen_roles.insert(role) {
            errors.at(
                &roles_span,
                "roles",
                format!("role {role:?} is listed twice"),
            );
        }
    }
    if let Some(application) = &scenario.application
        && !scenario.roles.contains(application)
    {
        errors.at(
            &key_span(document, "application", &whole),
            "application",
            format!("role {application:?} is not in roles {:?}", scenario.roles),
        );
    }
    for need in &scenario.needs {
        if !KNOWN_CAPABILITIES.contains(&need.as_str()) {
            errors.at(
                &key_span(document, "needs", &whole),
                "needs",
                format!("unknown capability {need:?}; one of {KNOWN_CAPABILITIES:?}"),
            );
        }
    }
}

/// Where a step's keys are, for its errors.
struct StepAt {
    path: String,
    step_span: Range<usize>,
    line_span: Range<usize>,
    table: SpannedTable,
}

impl StepAt {
    fn new(index: usize, step: &Step, table: &SpannedTable, errors: &Errors<'_>) -> Self {
        let whole = 0..errors.text.len();
        let start = errors.line_start(step.line);
        Self {
            path: format!("step[{}]", index + 1),
            step_span: table.keys().next().map_or(whole, Spanned::span),
            line_span: start..start,
            table: table.clone(),
        }
    }

    fn key(&self, key: &str) -> Range<usize> {
        key_span(&self.table, key, &self.step_span)
    }

    fn field(&self, name: &str) -> String {
        format!("{}.{name}", self.path)
    }

    /// A problem at `key`.
    fn problem(&self, key: &str, message: String) -> Problem {
        (self.key(key), self.field(key), message)
    }
}

/// What the steps so far have defined.
#[derive(Default)]
struct Timeline<'s> {
    /// The scenario's roles.
    roles: HashSet<&'s str>,
    listeners: HashSet<&'s str>,
    conns: HashSet<&'s str>,
    names: HashSet<&'s str>,
    background: HashSet<&'s str>,
    /// Names a step defines become usable once its group (steps released
    /// together) has ended: they are only known after it.
    defined_listeners: Vec<&'s str>,
    defined_conns: Vec<&'s str>,
}

impl<'s> Timeline<'s> {
    fn end_group(&mut self) {
        self.listeners.extend(self.defined_listeners.drain(..));
        self.conns.extend(self.defined_conns.drain(..));
    }

    fn record(&mut self, step: &'s Step) {
        for reference in step.action.references() {
            match reference {
                Reference::DefinesConn(name) => self.defined_conns.push(name),
                Reference::DefinesListener(name) => self.defined_listeners.push(name),
                _ => {}
            }
        }
        self.names.insert(&step.name);
        if step.background {
            self.background.insert(&step.name);
        }
    }

    fn check_step(
        &self,
        scenario: &Scenario,
        step: &Step,
        previous: Option<&Step>,
        at: &StepAt,
        problems: &mut Vec<Problem>,
    ) {
        if self.names.contains(&step.name.as_str()) {
            problems.push(at.problem("name", format!("step name {:?} is used twice", step.name)));
        }
        check_role(scenario, step, at, problems);
        if step.background && !step.action.may_run_in_background() {
            problems.push(at.problem(
                "background",
                "only send, recv, wait-end and sleep can run in the background".to_owned(),
            ));
        }
        check_with(step, previous, at, problems);
        if let Some(capability) = step.action.capability()
            && !scenario.needs.iter().any(|need| need == capability)
        {
            problems.push(at.problem(
                "do",
                format!(
                    "{} needs the {capability:?} capability: add it to `needs`",
                    step.action.keyword()
                ),
            ));
        }
        self.check_names(&step.action, at, problems);
        self.check_expectations(step, at, problems);
    }

    /// Every name the action uses was defined by an earlier step.
    fn check_names(&self, action: &Action, at: &StepAt, problems: &mut Vec<Problem>) {
        for reference in action.references() {
            let missing = match reference {
                Reference::UsesConn { field, name } if !self.conns.contains(name) => Some((
                    field,
                    format!(
                        "connection {name:?} is not opened by an earlier step (connect or accept `as`)"
                    ),
                )),
                Reference::UsesListener { field, name } if !self.listeners.contains(name) => {
                    Some((
                        field,
                        format!("listener {name:?} is not opened by an earlier listen step"),
                    ))
                }
                Reference::UsesBackground { field, name } if !self.background.contains(&name) => {
                    Some((field, format!("{name:?} is not an earlier background step")))
                }
                Reference::UsesRole { field, name } if !self.roles.contains(name) => Some((
                    field,
                    format!("{name:?} is not one of the scenario's roles"),
                )),
                _ => None,
            };
            if let Some((field, message)) = missing {
                problems.push(at.problem(field, message));
            }
        }
    }

    /// Known OSes, `since`/`bytes_below`/`same_bytes_as` naming earlier
    /// steps, percentages that are percentages.
    fn check_expectations(&self, step: &Step, at: &StepAt, problems: &mut Vec<Problem>) {
        let span = at.key("expect");
        for (os, expect) in &step.expect {
            if !KNOWN_OS.contains(&os.as_str()) {
                problems.push((
                    span.clone(),
                    at.field(&format!("expect.{os}")),
                    format!("unknown OS {os:?}; one of {KNOWN_OS:?}"),
                ));
            }
            for (key, reference) in [
                ("since", &expect.since),
                ("bytes_below", &expect.bytes_below),
                ("same_bytes_as", &expect.same_bytes_as),
                ("counters_since", &expect.counters_since),
            ] {
                if let Some(reference) = reference
                    && !self.names.contains(&reference.as_str())
                {
                    problems.push((
                        span.clone(),
                        at.field(&format!("expect.{os}.{key}")),
                        format!("{reference:?} is not an earlier step's name"),
                    ));
                }
            }
            if let Some(error) = &expect.error
                && let Some(problem) = errno_problem(os, error)
            {
                problems.push((
                    span.clone(),
                    at.field(&format!("expect.{os}.error")),
                    problem,
                ));
            }
            for (key, value) in [
                ("dropped_percent_min", expect.dropped_percent_min),
                ("dropped_percent_max", expect.dropped_percent_max),
            ] {
                if let Some(value) = value
                    && !(0.0..=100.0).contains(&value)
                {
                    problems.push((
                        span.clone(),
                        at.field(&format!("expect.{os}.{key}")),
                        format!("{value} is not a percentage (0 to 100)"),
                    ));
                }
            }
            if expect.counters_increase_min.is_empty() != expect.counters_since.is_none() {
                problems.push((
                    span.clone(),
                    at.field(&format!("expect.{os}.counters_increase_min")),
                    "counters_increase_min and counters_since go together".to_owned(),
                ));
            }
            if expect.within_ms.is_some() != expect.since.is_some() {
                problems.push((
                    span.clone(),
                    at.field(&format!("expect.{os}.within_ms")),
                    "within_ms and since go together".to_owned(),
                ));
            }
        }
    }
}

/// A role where the action needs one, and one the scenario declares.
fn check_role(scenario: &Scenario, step: &Step, at: &StepAt, problems: &mut Vec<Problem>) {
    let keyword = step.action.keyword();
    match (&step.role, step.action.takes_role()) {
        (None, true) => problems.push((
            at.line_span.clone(),
            at.field("role"),
            format!("{keyword} needs a role"),
        )),
        (Some(_), false) => problems.push(at.problem("role", format!("{keyword} takes no role"))),
        (Some(role), true) if !scenario.roles.contains(role) => problems.push(at.problem(
            "role",
            format!("role {role:?} is not in roles {:?}", scenario.roles),
        )),
        _ => {}
    }
}

/// Steps released together follow their first step directly, and are
/// neither background nor timing steps.
fn check_with(step: &Step, previous: Option<&Step>, at: &StepAt, problems: &mut Vec<Problem>) {
    let Some(with) = &step.with else {
        return;
    };
    let lead = previous.map(|before| before.with.as_ref().unwrap_or(&before.name));
    let released_together =
        |candidate: &Step| !candidate.background && candidate.action.takes_role();
    if lead != Some(with) {
        problems.push(at.problem(
            "with",
            match lead {
                Some(lead) => format!(
                    "{with:?} is not the step this one can start with: steps released together follow each other, each naming the first of them ({lead:?})"
                ),
                None => format!("{with:?}: the first step starts with nothing"),
            },
        ));
    } else if !released_together(step) || previous.is_some_and(|before| !released_together(before))
    {
        problems.push(at.problem(
            "with",
            "background, sleep and join steps are not released together with others".to_owned(),
        ));
    }
}

/// What is wrong with an expected error name for `os`, if anything: an
/// error that OS never reports under that name, a code written instead of
/// its name, or a typo (with the name it most likely meant).
fn errno_problem(os: &str, name: &str) -> Option<String> {
    let family = OsFamily::named(os)?;
    let known = errno::names(family);
    if known.iter().any(|(_, known)| *known == name)
        || name
            .strip_prefix("ERRNO_")
            .is_some_and(|code| code.parse::<i32>().is_ok())
    {
        return None;
    }
    if let Ok(code) = name.parse::<i32>() {
        return Some(match known.iter().find(|(known, _)| *known == code) {
            Some((_, named)) => {
                format!("{code} is a code: on {os} it is {named}; write error = \"{named}\"")
            }
            None => format!(
                "{code} is a code {os} reports under no name faultlab knows; write error = \"ERRNO_{code}\""
            ),
        });
    }
    let upper = name.to_uppercase();
    let nearest = known
        .iter()
        .map(|(_, known)| (strsim::levenshtein(&upper, known), *known))
        .min()
        .filter(|(distance, _)| *distance <= 2);
    Some(match nearest {
        Some((_, meant)) => {
            format!("{name:?} is not an error {os} reports; did you mean {meant:?}?")
        }
        None => format!(
            "{name:?} is not an error {os} reports; it reports {}",
            known
                .iter()
                .map(|(_, known)| *known)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::errno_problem;

    #[test]
    fn known_names_pass_and_typos_get_the_name_they_meant() {
        assert_eq!(errno_problem("linux", "EPIPE"), None);
        assert_eq!(errno_problem("windows", "ECONNABORTED"), None);
        assert_eq!(errno_problem("linux", "ERRNO_4242"), None);
        assert_eq!(
            errno_problem("macos", "EWHATEVER"),
            None,
            "no table for macOS"
        );
        for typo in ["EPIPPE", "epipe", "EPIP"] {
            let problem = errno_problem("linux", typo).unwrap_or_default();
            assert!(
                problem.contains("did you mean \"EPIPE\""),
                "{typo}: {problem}"
            );
        }
        let code = errno_problem("linux", "32").unwrap_or_default();
        assert!(code.contains("on linux it is EPIPE"), "{code}");
        let windows = errno_problem("windows", "10054").unwrap_or_default();
        assert!(windows.contains("ECONNRESET"), "{windows}");
        // Windows has no EPIPE: a send there fails with ECONNABORTED.
        let not_there = errno_problem("windows", "EPIPE").unwrap_or_default();
        assert!(
            not_there.contains("not an error windows reports"),
            "{not_there}"
        );
        let nonsense = errno_problem("linux", "BANANA").unwrap_or_default();
        assert!(
            nonsense.contains("ECONNRESET"),
            "lists the names: {nonsense}"
        );
    }
}
