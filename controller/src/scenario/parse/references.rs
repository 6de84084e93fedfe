//! The checks across a scenario's whole timeline: roles declared, names
//! used only after the step that defines them, capabilities declared,
//! steps released together written right, expectations naming earlier
//! steps and known OSes, and calls in an order that can happen (an accept
//! needs a connect to its listener, a closed connection is used no more).
//!
//! It runs even when the header or some steps could not be read, so a
//! file's mistakes come all at once: a step that could not be read still
//! defines the names it writes (its `as`, its `name`), and nothing is
//! blamed on it twice.

use super::input::{Errors, SpannedTable, key_span};
use crate::scenario::{Action, Expect, KNOWN_OS, Reference, Scenario, SocketCall, Step};
use faultlab_proto::Capability;
use faultlab_proto::errno::{self, OsFamily};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use toml::Spanned;

/// One problem found in a step: where, which field, what.
type Problem = (Range<usize>, String, String);

/// Check the header and every step against the ones before it. `scenario`
/// is `None` when the header could not be read (its roles and needs are
/// then read from the document as far as they can be); a step is `None`
/// when it could not be read.
pub(super) fn check(
    scenario: Option<&Scenario>,
    steps: &[(Option<Step>, SpannedTable)],
    document: &SpannedTable,
    errors: &mut Errors<'_>,
) {
    if let Some(scenario) = scenario {
        check_header(scenario, document, errors);
    }
    let declared = Declared::of(document);
    // `since` may name a later step too (a background read bounded from a
    // re-plug that comes after it started).
    let all_names = steps
        .iter()
        .filter_map(|(step, table)| match step {
            Some(step) => Some(step.name.as_str()),
            None => table
                .iter()
                .find(|(key, _)| key.get_ref() == "name")
                .and_then(|(_, value)| value.get_ref().as_str()),
        })
        .collect();
    let mut timeline = Timeline {
        all_names,
        roles: declared
            .roles
            .as_ref()
            .map(|roles| roles.iter().map(String::as_str).collect()),
        ..Timeline::default()
    };
    // The step before: none (the first step), one that could not be
    // read, or one.
    let mut previous: Option<Option<&Step>> = None;
    for (index, (step, table)) in steps.iter().enumerate() {
        let Some(step) = step else {
            if !table.keys().any(|key| key.get_ref() == "with") {
                timeline.end_group(errors);
            }
            // Its expectations are checked all the same, when they can be read.
            if let Some(expectations) = unread_expectations(table) {
                let at = StepAt::unread(index, table, errors);
                let mut problems = Vec::new();
                timeline.check_expectations(&expectations, &at, &mut problems);
                for (span, field, message) in problems {
                    errors.at(&span, field, message);
                }
            }
            timeline.record_unread(table);
            previous = Some(None);
            continue;
        };
        if step.with.is_none() {
            timeline.end_group(errors);
        }
        let at = StepAt::new(index, step, table, errors);
        let mut problems = Vec::new();
        timeline.check_step(&declared, step, previous, &at, &mut problems);
        for (span, field, message) in problems {
            errors.at(&span, field, message);
        }
        timeline.record(step, &at);
        previous = Some(Some(step));
    }
    timeline.end_group(errors);
}

/// The expectations of a step that could not be read, if they can be.
fn unread_expectations(table: &SpannedTable) -> Option<BTreeMap<String, Expect>> {
    let (_, value) = table.iter().find(|(key, _)| key.get_ref() == "expect")?;
    let specs: BTreeMap<String, super::ExpectSpec> = value.get_ref().clone().try_into().ok()?;
    Some(
        specs
            .into_iter()
            .map(|(os, spec)| (os, super::expectation(spec)))
            .collect(),
    )
}

/// What the header declares, read from the document itself: the steps are
/// checked against it even when the header has mistakes of its own.
/// `None` where it could not be read (the header's error says why).
struct Declared {
    roles: Option<Vec<String>>,
    needs: Option<Vec<String>>,
}

impl Declared {
    fn of(document: &SpannedTable) -> Self {
        let strings = |key: &str| -> Option<Option<Vec<String>>> {
            let value = document.iter().find(|(name, _)| name.get_ref() == key);
            match value {
                None => Some(None),
                Some((_, value)) => value
                    .get_ref()
                    .as_array()?
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .map(Some),
            }
        };
        Self {
            roles: strings("roles").flatten(),
            needs: strings("needs").map(Option::unwrap_or_default),
        }
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
        let known = Capability::from_name(need)
            .is_some_and(|capability| Capability::NEEDED_BY_SCENARIOS.contains(&capability));
        if !known {
            errors.at(
                &key_span(document, "needs", &whole),
                "needs",
                format!(
                    "unknown capability {need:?}; one of {:?}",
                    Capability::NEEDED_BY_SCENARIOS.map(Capability::name)
                ),
            );
        }
    }
}

/// Where a step's keys are, for its errors.
struct StepAt {
    path: String,
    /// The step's name, when it is known.
    name: Option<String>,
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
            name: Some(step.name.clone()),
            step_span: table.keys().next().map_or(whole, Spanned::span),
            line_span: start..start,
            table: table.clone(),
        }
    }

    /// Where a step that could not be read is.
    fn unread(index: usize, table: &SpannedTable, errors: &Errors<'_>) -> Self {
        let whole = 0..errors.text.len();
        let step_span = table.keys().next().map_or(whole, Spanned::span);
        Self {
            path: format!("step[{}]", index + 1),
            name: table
                .iter()
                .find(|(key, _)| key.get_ref() == "name")
                .and_then(|(_, value)| value.get_ref().as_str().map(str::to_owned)),
            line_span: step_span.start..step_span.start,
            step_span,
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
    /// Every step's name, earlier or later.
    all_names: HashSet<&'s str>,
    /// The scenario's roles (`None`: unknown, not checked).
    roles: Option<HashSet<&'s str>>,
    listeners: HashSet<&'s str>,
    conns: HashSet<&'s str>,
    names: HashSet<&'s str>,
    background: HashSet<&'s str>,
    /// Names a step defines become usable once its group (steps released
    /// together) has ended: they are only known after it.
    defined_listeners: Vec<&'s str>,
    defined_conns: Vec<&'s str>,
    /// Connections closed (the socket released), by the step that did it.
    closed: HashMap<&'s str, String>,
    /// Listeners stopped, by the step that did it.
    stopped: HashMap<&'s str, String>,
    /// Connects to each listener so far, and accepts on it.
    connects: HashMap<&'s str, usize>,
    accepts: HashMap<&'s str, usize>,
    /// Accepts of the group under way, judged when it ends (a connect
    /// released together with its accept is in time for it).
    pending_accepts: Vec<(&'s str, Problem)>,
    /// Connections watched (`watch`), for `wait-end`.
    watched: HashSet<&'s str>,
    /// Some step could not be read: what it connected is not known, so
    /// accepts are not counted against connects.
    unread: bool,
}

impl<'s> Timeline<'s> {
    fn end_group(&mut self, errors: &mut Errors<'_>) {
        self.listeners.extend(self.defined_listeners.drain(..));
        self.conns.extend(self.defined_conns.drain(..));
        for (listener, (span, field, message)) in self.pending_accepts.drain(..) {
            let accepts = self.accepts.entry(listener).or_default();
            *accepts += 1;
            let connects = self.connects.get(listener).copied().unwrap_or(0);
            if *accepts > connects && !self.unread {
                let message = match connects {
                    0 => message,
                    _ => format!(
                        "accept number {accepts} on listener {listener:?}, but only {connects} earlier step(s) connect to it: it would wait for a connection that never comes"
                    ),
                };
                errors.at(&span, field, message);
            }
        }
    }

    fn record(&mut self, step: &'s Step, at: &StepAt) {
        for reference in step.action.references() {
            match reference {
                Reference::DefinesConn(name) => {
                    self.defined_conns.push(name);
                    self.closed.remove(name);
                }
                Reference::DefinesListener(name) => {
                    self.defined_listeners.push(name);
                    self.stopped.remove(name);
                }
                _ => {}
            }
        }
        if let Action::Socket(call) = &step.action {
            match call {
                SocketCall::Connect { to, .. } => *self.connects.entry(to).or_default() += 1,
                SocketCall::Accept { listener, .. } => self.pending_accepts.push((
                    listener,
                    at.problem(
                        "listener",
                        format!(
                            "accept on listener {listener:?} before any step connects to it: it would wait for a connection that never comes (connect first, or release both together with `with`)"
                        ),
                    ),
                )),
                SocketCall::Close { conn, mode } if mode.releases_socket() => {
                    self.closed.insert(conn, step.name.clone());
                }
                SocketCall::StopListening { listener } => {
                    self.stopped.insert(listener, step.name.clone());
                }
                SocketCall::Watch { conn } => {
                    self.watched.insert(conn);
                }
                _ => {}
            }
        }
        self.names.insert(&step.name);
        if step.background {
            self.background.insert(&step.name);
        }
    }

    /// A step that could not be read: the names it writes are taken as
    /// defined, so that later steps using them are not blamed for it.
    fn record_unread(&mut self, table: &'s SpannedTable) {
        self.unread = true;
        let text = |key: &str| {
            table
                .iter()
                .find(|(name, _)| name.get_ref() == key)
                .and_then(|(_, value)| value.get_ref().as_str())
        };
        if let Some(name) = text("as") {
            self.defined_conns.push(name);
            self.defined_listeners.push(name);
            self.watched.insert(name);
        }
        if let Some(name) = text("name") {
            self.names.insert(name);
            self.background.insert(name);
        }
        if let Some(conn) = text("conn") {
            self.watched.insert(conn);
        }
    }

    fn check_step(
        &self,
        declared: &Declared,
        step: &Step,
        previous: Option<Option<&Step>>,
        at: &StepAt,
        problems: &mut Vec<Problem>,
    ) {
        if self.names.contains(&step.name.as_str()) {
            problems.push(at.problem("name", format!("step name {:?} is used twice", step.name)));
        }
        if let Some(roles) = &declared.roles {
            check_role(roles, step, at, problems);
        }
        if step.background && !step.action.may_run_in_background() {
            problems.push(at.problem(
                "background",
                "only send, recv, wait-end and sleep can run in the background".to_owned(),
            ));
        }
        match previous {
            // After a step that could not be read, what it was is not known.
            Some(None) => {}
            Some(Some(before)) => check_with(step, Some(before), at, problems),
            None => check_with(step, None, at, problems),
        }
        if let Some(capability) = step.action.capability()
            && let Some(needs) = &declared.needs
            && !needs.iter().any(|need| need == capability.name())
        {
            problems.push(at.problem(
                "do",
                format!(
                    "{} needs the \"{capability}\" capability: add it to `needs`",
                    step.action.keyword()
                ),
            ));
        }
        self.check_names(&step.action, at, problems);
        self.check_order(step, at, problems);
        self.check_expectations(&step.expect, at, problems);
    }

    /// Calls that cannot happen in this order: a closed connection used
    /// again, an accept on a listener stopped, a wait-end with no watch.
    fn check_order(&self, step: &Step, at: &StepAt, problems: &mut Vec<Problem>) {
        let Action::Socket(call) = &step.action else {
            return;
        };
        if let SocketCall::Accept { listener, .. } = call
            && let Some(by) = self.stopped.get(listener.as_str())
        {
            problems.push(at.problem(
                "listener",
                format!("listener {listener:?} was stopped by step {by:?}: nothing can be accepted on it"),
            ));
        }
        if let SocketCall::WaitEnd { conn, .. } = call
            && self.conns.contains(conn.as_str())
            && !self.watched.contains(conn.as_str())
        {
            problems.push(at.problem(
                "conn",
                format!(
                    "wait-end on {conn:?}, which no earlier step watches (`do = \"watch\"` first)"
                ),
            ));
        }
        for reference in step.action.references() {
            if let Reference::UsesConn { field, name } = reference
                && let Some(by) = self.closed.get(name)
            {
                problems.push(at.problem(
                    field,
                    format!(
                        "connection {name:?} was closed by step {by:?}: its socket is released, no later call can use it (a half-close is `mode = \"shutdown-write\"`)"
                    ),
                ));
            }
        }
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
                Reference::UsesRole { field, name }
                    if self
                        .roles
                        .as_ref()
                        .is_some_and(|roles| !roles.contains(name)) =>
                {
                    Some((
                        field,
                        format!("{name:?} is not one of the scenario's roles"),
                    ))
                }
                _ => None,
            };
            if let Some((field, message)) = missing {
                problems.push(at.problem(field, message));
            }
        }
    }

    /// Known OSes, `since`/`bytes_below`/`same_bytes_as` naming earlier
    /// steps, percentages that are percentages.
    fn check_expectations(
        &self,
        expectations: &BTreeMap<String, Expect>,
        at: &StepAt,
        problems: &mut Vec<Problem>,
    ) {
        let span = at.key("expect");
        for (os, expect) in expectations {
            if !KNOWN_OS.contains(&os.as_str()) {
                problems.push((
                    span.clone(),
                    at.field(&format!("expect.{os}")),
                    format!("unknown OS {os:?}; one of {KNOWN_OS:?}"),
                ));
            }
            if let Some(since) = &expect.since
                && (!self.all_names.contains(since.as_str()) || at.name.as_deref() == Some(since))
            {
                problems.push((
                    span.clone(),
                    at.field(&format!("expect.{os}.since")),
                    format!("{since:?} is not the name of another step of this case"),
                ));
            }
            for (key, reference) in [
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
fn check_role(roles: &[String], step: &Step, at: &StepAt, problems: &mut Vec<Problem>) {
    let keyword = step.action.keyword();
    match (&step.role, step.action.takes_role()) {
        (None, true) if !step.action.role_is_optional() => problems.push((
            at.line_span.clone(),
            at.field("role"),
            format!("{keyword} needs a role"),
        )),
        (Some(_), false) => problems.push(at.problem("role", format!("{keyword} takes no role"))),
        (Some(role), true) if !roles.contains(role) => {
            problems.push(at.problem("role", format!("role {role:?} is not in roles {roles:?}")))
        }
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
