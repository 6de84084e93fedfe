//! Reading scenario files: TOML in, a validated [`Scenario`] or every error
//! found, each with file, line, column and the field at fault.
//!
//! The file is read once into tables that keep every key's position. The
//! header and each step are then deserialized on their own (so one bad step
//! does not hide the next), and the references between steps (connections,
//! listeners, step names, roles) are checked over the whole timeline.
//!
//! ```toml
//! id = "C1"
//! name = "send-after-server-close"
//! title = "The server closes; the client sends twice"
//! roles = ["client", "server"]
//!
//! [[step]]
//! role = "server"
//! do = "listen"
//! as = "l"
//!
//! [[step]]
//! role = "client"
//! do = "send"
//! conn = "c"
//! text = "second"
//! expect.linux = { outcome = "error", error = "EPIPE", sigpipe = true }
//! ```

pub(crate) mod input;
mod references;

use input::{Errors, Place, SpannedTable, StepInput, key_span, typed};

use super::{Action, Expect, ExpectedOutcome, Reference, Scenario, Step};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use toml::Spanned;

/// Default for a scenario's `timeout_ms`.
pub const DEFAULT_CASE_TIMEOUT_MS: u64 = 60_000;

/// One thing wrong in a scenario file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field at fault, as a path (`step[3].conn`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.field, self.message
        )
    }
}

/// Every error found in a scenario file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioErrors(pub Vec<ScenarioError>);

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Parse and validate one scenario. `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioErrors> {
    let mut errors = Errors::new(file, text);
    let document: SpannedTable = match toml::from_str(text) {
        Ok(document) => document,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let message = error.message().trim();
            let message = if message.contains("invalid type: integer") {
                "this number is out of range (integers go up to 9223372036854775807)"
            } else {
                message
            };
            errors.at(&span, field_at(text, span.start), message.to_owned());
            return Err(ScenarioErrors(errors.found));
        }
    };
    let (steps, header): (Vec<_>, Vec<_>) = document
        .iter()
        .partition(|(key, _)| key.get_ref() == "step");
    let header: SpannedTable = header
        .into_iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    // What reaches a terminal is text, never control characters.
    for field in ["id", "name", "title", "seed"] {
        let written = header
            .iter()
            .find(|(key, _)| key.get_ref() == field)
            .and_then(|(key, value)| Some((key.span(), value.get_ref().as_str()?)));
        if let Some((span, value)) = written
            && value.chars().any(char::is_control)
        {
            errors.at(
                &span,
                field,
                "control characters (escape codes, tabs, newlines) are not allowed here",
            );
        }
    }
    let header = typed::<Header>(&header, &(0..text.len()), "", &mut errors);
    // Every step is read, and the whole timeline checked, whatever is wrong
    // elsewhere: a file's mistakes are all told at once, not in rounds.
    let steps: Vec<(Option<Step>, SpannedTable)> = step_tables(&steps, text, &mut errors)
        .into_iter()
        .enumerate()
        .map(|(index, (span, table))| (parse_step(index, &table, &span, &mut errors), table))
        .collect();
    let scenario = header.map(|header| header.into_scenario(file, &steps));
    references::check(scenario.as_ref(), &steps, &document, &mut errors);
    match scenario {
        Some(scenario) if errors.found.is_empty() => Ok(scenario),
        _ => {
            let mut found = errors.found;
            found.sort_by_key(|error| (error.line, error.column));
            Err(ScenarioErrors(found))
        }
    }
}

/// The field written on the line of byte `offset` (`step[2].deadline_ms`,
/// or `name` in the header), for an error the TOML reader found before any
/// field was known; "(file)" when the line holds no `key = value`.
fn field_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |newline| newline + 1);
    let line = text[start..].lines().next().unwrap_or_default();
    let Some((key, _)) = line.split_once('=') else {
        return "(file)".to_owned();
    };
    let key = key.trim().trim_matches('"');
    let steps = text[..start]
        .lines()
        .filter(|line| line.trim() == "[[step]]")
        .count();
    if steps == 0 {
        key.to_owned()
    } else {
        format!("step[{steps}].{key}")
    }
}

/// The `[[step]]` tables with their positions, or an error when `step` is
/// written some other way.
fn step_tables(
    steps: &[(&Spanned<String>, &Spanned<toml::Value>)],
    text: &str,
    errors: &mut Errors<'_>,
) -> Vec<(Range<usize>, SpannedTable)> {
    match steps.first() {
        None => Vec::new(),
        Some((key, value)) => match value.get_ref() {
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                spanned_steps(text)
            }
            _ => {
                errors.at(&key.span(), "step", "steps are written as [[step]] tables");
                Vec::new()
            }
        },
    }
}

/// Re-read the `[[step]]` tables with their positions (the generic value
/// of the first read loses them).
fn spanned_steps(text: &str) -> Vec<(Range<usize>, SpannedTable)> {
    #[derive(Deserialize)]
    struct StepsOnly {
        #[serde(default)]
        step: Vec<Spanned<SpannedTable>>,
    }
    toml::from_str::<StepsOnly>(text).map_or_else(
        |_| Vec::new(),
        |only| {
            only.step
                .into_iter()
                .map(|step| (step.span(), step.into_inner()))
                .collect()
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    id: String,
    name: String,
    title: String,
    seed: Option<String>,
    roles: Vec<String>,
    #[serde(default)]
    needs: Vec<String>,
    timeout_ms: Option<u64>,
    application: Option<String>,
}

impl Header {
    fn into_scenario(self, file: &str, steps: &[(Option<Step>, SpannedTable)]) -> Scenario {
        let steps = super::lower::lower(
            steps.iter().filter_map(|(step, _)| step.clone()).collect(),
            &self.roles,
        );
        Scenario {
            id: self.id,
            name: self.name,
            title: self.title,
            seed: self.seed,
            needs: self.needs,
            application: self.application,
            timeout_ms: self.timeout_ms.unwrap_or(DEFAULT_CASE_TIMEOUT_MS),
            roles: self.roles,
            steps,
            source: file.to_owned(),
        }
    }
}

/// The keys every step may have, whatever it does.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    role: Option<String>,
    #[serde(rename = "do")]
    action: String,
    name: Option<String>,
    #[serde(default)]
    background: bool,
    with: Option<String>,
    #[serde(default)]
    expect: BTreeMap<String, ExpectSpec>,
}

const COMMON_KEYS: &[&str] = &["role", "do", "name", "background", "with", "expect"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectSpec {
    outcome: Option<OutcomeSpec>,
    error: Option<String>,
    sigpipe: Option<bool>,
    bytes: Option<u64>,
    bytes_min: Option<u64>,
    bytes_below: Option<String>,
    unread_bytes_min: Option<u64>,
    same_bytes_as: Option<String>,
    dropped_min: Option<u64>,
    dropped_max: Option<u64>,
    dropped_percent_min: Option<f64>,
    dropped_percent_max: Option<f64>,
    #[serde(default)]
    counters_increase_min: BTreeMap<String, u64>,
    counters_since: Option<String>,
    within_ms: Option<u64>,
    since: Option<String>,
    took_ms_min: Option<u64>,
    took_ms_max: Option<u64>,
    wire_rst: Option<bool>,
    wire_fin: Option<bool>,
    wire_bytes_before_fin: Option<u64>,
    wire_retransmits: Option<bool>,
    wire_silent: Option<bool>,
    source: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum OutcomeSpec {
    Ok,
    Eof,
    Error,
    Timeout,
    HolderGone,
}

/// One step: its common keys here, its own through its action's family.
fn parse_step(
    index: usize,
    table: &SpannedTable,
    span: &Range<usize>,
    errors: &mut Errors<'_>,
) -> Option<Step> {
    let place = Place {
        span: span.clone(),
        path: format!("step[{}]", index + 1),
    };
    let (common_table, own_table): (SpannedTable, SpannedTable) = table
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .partition(|(key, _)| COMMON_KEYS.contains(&key.get_ref().as_str()));
    let common: Common = typed(&common_table, span, &place.path, errors)?;
    let before = errors.found.len();
    let action = Action::parse(
        &common.action,
        &mut StepInput {
            own: &own_table,
            place: &place,
            errors,
        },
    );
    if action.is_none() && errors.found.len() == before {
        errors.at(
            &key_span(&common_table, "do", span),
            place.field("do"),
            format!(
                "unknown action {:?}; one of: {}",
                common.action,
                super::keywords().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    let action = action?;
    // A fault "from" or "towards" another host names another role.
    for reference in action.references() {
        if let Reference::UsesRole { field, name } = reference
            && common.role.as_deref() == Some(name)
        {
            errors.at(
                &key_span(&own_table, field, span),
                place.field(field),
                format!("{name:?} is the step's own role: name another role's host"),
            );
        }
    }
    if errors.found.len() > before {
        return None;
    }
    Some(Step {
        name: common
            .name
            .unwrap_or_else(|| format!("{}-{}", index + 1, action.keyword())),
        role: common.role,
        action,
        background: common.background,
        with: common.with,
        expect: common
            .expect
            .into_iter()
            .map(|(os, spec)| (os, expectation(spec)))
            .collect(),
        line: errors.line_of(span.start),
    })
}

fn expectation(spec: ExpectSpec) -> Expect {
    Expect {
        outcome: spec.outcome.map(|outcome| match outcome {
            OutcomeSpec::Ok => ExpectedOutcome::Ok,
            OutcomeSpec::Eof => ExpectedOutcome::Eof,
            OutcomeSpec::Error => ExpectedOutcome::Error,
            OutcomeSpec::Timeout => ExpectedOutcome::Timeout,
            OutcomeSpec::HolderGone => ExpectedOutcome::HolderGone,
        }),
        error: spec.error,
        sigpipe: spec.sigpipe,
        bytes: spec.bytes,
        bytes_min: spec.bytes_min,
        bytes_below: spec.bytes_below,
        unread_bytes_min: spec.unread_bytes_min,
        same_bytes_as: spec.same_bytes_as,
        dropped_min: spec.dropped_min,
        dropped_max: spec.dropped_max,
        dropped_percent_min: spec.dropped_percent_min,
        dropped_percent_max: spec.dropped_percent_max,
        counters_increase_min: spec.counters_increase_min,
        counters_since: spec.counters_since,
        within_ms: spec.within_ms,
        since: spec.since,
        took_ms_min: spec.took_ms_min,
        took_ms_max: spec.took_ms_max,
        wire_rst: spec.wire_rst,
        wire_fin: spec.wire_fin,
        wire_bytes_before_fin: spec.wire_bytes_before_fin,
        wire_retransmits: spec.wire_retransmits,
        wire_silent: spec.wire_silent,
        source: spec.source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{
        AcceptQueueOverflow, IsolatedConnections, IsolationDirection, NetworkFault, SocketCall,
    };

    const GOOD: &str = r#"
id = "C1"
name = "send-after-server-close"
title = "The server closes; the client sends twice"
roles = ["client", "server"]

[[step]]
role = "server"
do = "listen"
as = "l"

[[step]]
role = "client"
do = "connect"
to = "l"
as = "c"
options = { linger = 0, keepalive = { idle_ms = 2000 } }

[[step]]
role = "server"
do = "accept"
listener = "l"
as = "s"

[[step]]
name = "second"
role = "client"
do = "send"
conn = "c"
text = "second"
expect.linux = { outcome = "error", error = "EPIPE", sigpipe = true }
expect.windows = { outcome = "error", error = "ECONNABORTED", source = "seed" }
"#;

    #[test]
    fn a_good_scenario_parses() -> Result<(), ScenarioErrors> {
        let scenario = parse("c1.toml", GOOD)?;
        assert_eq!(scenario.id, "C1");
        assert_eq!(scenario.steps.len(), 4);
        assert_eq!(scenario.steps[0].name, "1-listen");
        let second = &scenario.steps[3];
        assert_eq!(second.name, "second");
        assert_eq!(second.line, 25);
        assert_eq!(second.expect["linux"].error.as_deref(), Some("EPIPE"));
        assert_eq!(second.expect["windows"].source.as_deref(), Some("seed"));
        let Action::Socket(crate::scenario::SocketCall::Connect { options, .. }) =
            &scenario.steps[1].action
        else {
            panic!("step 2 is a connect");
        };
        assert_eq!(options.linger, Some(Some(0)));
        assert_eq!(options.keepalive, Some((2000, 0, 0)));
        Ok(())
    }

    fn errors_of(text: &str) -> Vec<ScenarioError> {
        match parse("bad.toml", text) {
            Ok(scenario) => panic!("expected errors, parsed {scenario:?}"),
            Err(ScenarioErrors(errors)) => errors,
        }
    }

    #[test]
    fn a_close_without_a_mode_is_graceful() -> Result<(), ScenarioErrors> {
        let text = format!("{GOOD}\n[[step]]\nrole = \"client\"\ndo = \"close\"\nconn = \"c\"\n");
        let scenario = parse("ok.toml", &text)?;
        assert_eq!(
            scenario.steps[4].action,
            Action::Socket(crate::scenario::SocketCall::Close {
                conn: "c".to_owned(),
                mode: crate::scenario::CloseMode::Graceful,
            })
        );
        Ok(())
    }

    #[test]
    fn an_error_name_is_checked_for_its_os() {
        let errors = errors_of(&GOOD.replace("error = \"EPIPE\"", "error = \"EPIPPE\""));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].field, "step[4].expect.linux.error");
        assert!(
            errors[0].message.contains("did you mean \"EPIPE\""),
            "{errors:#?}"
        );
    }

    #[test]
    fn a_bad_degradation_is_refused_field_by_field_with_its_line() {
        let text = GOOD.replace(
            "roles = [\"client\", \"server\"]",
            "roles = [\"client\", \"server\"]\nneeds = [\"degrade\"]",
        ) + r#"
[[step]]
role = "client"
do = "degrade"
loss = 101.0
loss_burst = 0.5
jitter_ms = 5
distribution = "gauss"
rate = "0mbit"
towards = "nobody"
deadline_ms = 1000
"#;
        let errors = errors_of(&text);
        let fields: Vec<&str> = errors.iter().map(|error| error.field.as_str()).collect();
        for field in [
            "step[5].loss",
            "step[5].loss_burst",
            "step[5].jitter_ms",
            "step[5].distribution",
            "step[5].rate",
        ] {
            assert!(fields.contains(&field), "{field} in {errors:#?}");
        }
        assert!(errors.iter().all(|error| error.line >= 27), "{errors:#?}");
        let fine = GOOD.replace(
            "roles = [\"client\", \"server\"]",
            "roles = [\"client\", \"server\"]\nneeds = [\"degrade\"]",
        ) + "\n[[step]]\nrole = \"client\"\ndo = \"degrade\"\ndelay_ms = 200\njitter_ms = 20\ndistribution = \"normal\"\nrate = \"1mbit\"\ntowards = \"server\"\ndeadline_ms = 1000\n";
        assert!(parse("ok.toml", &fine).is_ok());
        let errors = errors_of(&fine.replace("towards = \"server\"", "towards = \"nobody\""));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].field, "step[5].towards");
    }

    #[test]
    fn a_partition_names_a_way_and_a_role_and_not_a_connection_too() {
        let with_isolate = with_needs("\"isolate\"");
        let step = "\n[[step]]\nrole = \"server\"\ndo = \"isolate\"\ndirection = \"in\"\nfrom = \"client\"\nconnections = \"new\"\ndeadline_ms = 1000\n";
        let scenario = parse("ok.toml", &(with_isolate.clone() + step));
        let scenario = scenario.unwrap_or_else(|errors| panic!("{errors:#?}"));
        assert!(matches!(
            &scenario.steps[4].action,
            Action::Network(NetworkFault::Isolate {
                from: Some(role),
                direction: IsolationDirection::In,
                connections: IsolatedConnections::New,
                ..
            }) if role == "client"
        ));
        for (wrong, field, says) in [
            (
                "from = \"client\"",
                "from = \"nobody\"",
                "not one of the scenario's roles",
            ),
            ("direction = \"in\"", "direction = \"sideways\"", "sideways"),
            (
                "connections = \"new\"",
                "connections = \"half-open\"",
                "half-open",
            ),
            (
                "from = \"client\"",
                "from = \"client\"\nconn = \"c\"",
                "conn or from",
            ),
            (
                "from = \"client\"",
                "from = \"server\"",
                "the step's own role",
            ),
        ] {
            let errors = errors_of(&(with_isolate.clone() + &step.replace(wrong, field)));
            assert_eq!(errors.len(), 1, "{field}: {errors:#?}");
            assert!(errors[0].message.contains(says), "{field}: {errors:#?}");
            assert!(errors[0].field.starts_with("step[5]"), "{errors:#?}");
            assert!(errors[0].line >= 25, "{errors:#?}");
        }
    }

    /// The good scenario, needing `needs` (names in quotes, comma-separated).
    fn with_needs(needs: &str) -> String {
        GOOD.replace(
            "roles = [\"client\", \"server\"]",
            &format!("roles = [\"client\", \"server\"]\nneeds = [{needs}]"),
        )
    }

    #[test]
    fn what_a_host_receives_can_only_be_lost_and_needs_loss() {
        let step = "\n[[step]]\nrole = \"client\"\ndo = \"degrade\"\ndirection = \"in\"\nloss = 10.0\ndeadline_ms = 1000\n";
        let scenario = parse("ok.toml", &(with_needs("\"loss\"") + step));
        let scenario = scenario.unwrap_or_else(|errors| panic!("{errors:#?}"));
        assert_eq!(
            scenario.steps[4].action.capability(),
            Some(faultlab_proto::Capability::Loss)
        );
        // A delay on what arrives, a direction that is none, a need left out.
        let errors =
            errors_of(&(with_needs("\"loss\"") + &step.replace("loss = 10.0", "delay_ms = 50")));
        assert_eq!(errors[0].field, "step[5].direction", "{errors:#?}");
        assert!(
            errors[0].message.contains("can only be lost"),
            "{errors:#?}"
        );
        let errors = errors_of(&(with_needs("\"loss\"") + &step.replace("\"in\"", "\"sideways\"")));
        assert!(
            errors[0].message.contains("unknown variant `sideways`"),
            "{errors:#?}"
        );
        let errors = errors_of(&(with_needs("\"degrade\"") + step));
        assert_eq!(errors[0].field, "step[5].do", "{errors:#?}");
        assert!(
            errors[0].message.contains("\"loss\" capability"),
            "{errors:#?}"
        );
        // What a host sends needs `degrade`; undoing needs nothing more.
        let out = step.replace("direction = \"in\"\n", "");
        let scenario = parse(
            "ok.toml",
            &(with_needs("\"degrade\"")
                + &out
                + "\n[[step]]\nrole = \"client\"\ndo = \"restore\"\n"),
        );
        let scenario = scenario.unwrap_or_else(|errors| panic!("{errors:#?}"));
        assert_eq!(
            scenario.steps[4].action.capability(),
            Some(faultlab_proto::Capability::Degrade)
        );
        assert_eq!(scenario.steps[5].action.capability(), None);
    }

    #[test]
    fn a_listen_sets_its_backlog_and_what_a_full_queue_does_and_needs_tune() {
        let step = "\n[[step]]\nrole = \"server\"\ndo = \"listen\"\nas = \"q\"\nbacklog = 1\naccept_queue_overflow = \"reset\"\n";
        let scenario = parse("ok.toml", &(with_needs("\"tune\"") + step));
        let scenario = scenario.unwrap_or_else(|errors| panic!("{errors:#?}"));
        assert!(matches!(
            &scenario.steps[4].action,
            Action::Socket(SocketCall::Listen {
                backlog: 1,
                overflow: Some(AcceptQueueOverflow::Reset),
                ..
            })
        ));
        assert_eq!(
            scenario.steps[4].action.capability(),
            Some(faultlab_proto::Capability::Tune)
        );
        for (wrong, right, field, says) in [
            ("backlog = 1", "backlog = 5000", "backlog", "somaxconn"),
            (
                "\"reset\"",
                "\"sometimes\"",
                "accept_queue_overflow",
                "sometimes",
            ),
        ] {
            let errors = errors_of(&(with_needs("\"tune\"") + &step.replace(wrong, right)));
            assert_eq!(errors.len(), 1, "{errors:#?}");
            assert!(errors[0].message.contains(says), "{errors:#?}");
            assert!(
                errors[0].field.starts_with("step[5]"),
                "{field}: {errors:#?}"
            );
        }
        let errors = errors_of(&(with_needs("") + step));
        assert!(
            errors[0].message.contains("\"tune\" capability"),
            "{errors:#?}"
        );
        // A plain listen needs nothing; a degradation of connection
        // attempts only is known, of open connections only is not.
        let plain = "\n[[step]]\nrole = \"server\"\ndo = \"listen\"\nas = \"q\"\n";
        let scenario = parse("ok.toml", &(with_needs("") + plain));
        let scenario = scenario.unwrap_or_else(|errors| panic!("{errors:#?}"));
        assert_eq!(scenario.steps[4].action.capability(), None);
        let slow = "\n[[step]]\nrole = \"client\"\ndo = \"degrade\"\ndelay_ms = 1000\nconnections = \"new\"\ndeadline_ms = 1000\n";
        let scenario = parse("ok.toml", &(with_needs("\"degrade\"") + slow));
        let scenario = scenario.unwrap_or_else(|errors| panic!("{errors:#?}"));
        assert!(scenario.steps[4].action.cuts_by_tcp_flags());
        let errors =
            errors_of(&(with_needs("\"degrade\"") + &slow.replace("\"new\"", "\"established\"")));
        assert_eq!(errors[0].field, "step[5].connections", "{errors:#?}");
    }

    #[test]
    fn counts_and_contents_are_expected_of_earlier_steps_in_percent() {
        let text = GOOD.replace(
            "error = \"EPIPE\"",
            "error = \"EPIPE\", same_bytes_as = \"later\", dropped_percent_max = 120.0",
        );
        let errors = errors_of(&text);
        let fields: Vec<&str> = errors.iter().map(|error| error.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "step[4].expect.linux.same_bytes_as",
                "step[4].expect.linux.dropped_percent_max"
            ],
            "{errors:#?}"
        );
        assert!(errors[1].message.contains("120 is not a percentage"));
    }

    #[test]
    fn a_counters_increase_needs_an_earlier_reading() {
        let text = GOOD.replace(
            "error = \"EPIPE\"",
            "error = \"EPIPE\", counters_increase_min = { \"Tcp.InCsumErrors\" = 1 }",
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(
            errors[0].field,
            "step[4].expect.linux.counters_increase_min"
        );
        let errors = errors_of(&text.replace("= 1 }", "= 1 }, counters_since = \"later\""));
        assert_eq!(errors[0].field, "step[4].expect.linux.counters_since");
    }

    #[test]
    fn a_syntax_error_has_its_position() {
        let errors = errors_of("id = \"x\"\nroles = [\"a\"\n");
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].file.as_str()), (2, "bad.toml"));
    }

    #[test]
    fn every_bad_step_is_reported_at_its_field() {
        let text = GOOD
            .replace("text = \"second\"", "txt = \"second\"")
            .replace("as = \"s\"", "as = \"s\"\nbogus = 1")
            .replace("do = \"listen\"", "do = \"lissen\"");
        let errors = errors_of(&text);
        let found: Vec<(usize, &str)> = errors
            .iter()
            .map(|error| (error.line, error.field.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (9, "step[1].do"),
                (24, "step[3].bogus"),
                (31, "step[4].txt")
            ],
            "{errors:#?}"
        );
        assert!(errors[0].message.contains("unknown action \"lissen\""));
        assert!(errors[2].message.contains("unknown field `txt`"));
        assert_eq!(errors[1].column, 1);
    }

    #[test]
    fn references_are_checked_across_the_timeline() {
        let text = GOOD
            .replace("conn = \"c\"", "conn = \"nope\"")
            .replace(
                "role = \"server\"\ndo = \"accept\"",
                "role = \"router\"\ndo = \"accept\"",
            )
            .replace("error = \"EPIPE\"", "error = \"EPIPE\", since = \"later\"")
            .replace("expect.windows", "expect.beos");
        let errors = errors_of(&text);
        let fields: Vec<&str> = errors.iter().map(|error| error.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "step[3].role",
                "step[4].conn",
                "step[4].expect.beos",
                "step[4].expect.linux.since",
                "step[4].expect.linux.within_ms"
            ],
            "{errors:#?}"
        );
        assert!(errors.iter().all(|error| error.line > 1));
    }

    #[test]
    fn every_mistake_of_a_file_is_told_in_one_pass() {
        // A header field misspelt, a step with an unknown field, a number
        // for a name, an error name mistyped, a role misspelt: once.
        let text = GOOD
            .replace("title = ", "titel = ")
            .replace("as = \"s\"", "as = \"s\"\nbogus = 1")
            .replace("name = \"second\"", "name = 2")
            .replace("error = \"EPIPE\"", "error = \"EPIPF\"")
            .replace(
                "role = \"client\"\ndo = \"connect\"",
                "role = \"cleint\"\ndo = \"connect\"",
            );
        let errors = errors_of(&text);
        let fields: Vec<&str> = errors.iter().map(|error| error.field.as_str()).collect();
        // The step whose name is a number cannot be read, yet its
        // expectations are checked.
        assert_eq!(
            fields,
            [
                "titel",
                "step[2].role",
                "step[3].bogus",
                "step[4].name",
                "step[4].expect.linux.error"
            ],
            "{errors:#?}"
        );
        // A step that uses what an unread step defines is not blamed for it.
        let used = format!(
            "{text}\n[[step]]\nrole = \"server\"\ndo = \"send\"\nconn = \"s\"\ntext = \"x\"\n"
        );
        assert_eq!(errors_of(&used).len(), errors.len());
    }

    #[test]
    fn since_may_name_a_later_step_but_not_its_own() {
        // The blocked read of step 4 bounded from a close after it.
        let later = GOOD.replace(
            "error = \"EPIPE\", sigpipe = true",
            "error = \"EPIPE\", within_ms = 500, since = \"closes\"",
        ) + "\n[[step]]\nname = \"closes\"\nrole = \"server\"\ndo = \"close\"\nconn = \"s\"\n";
        assert!(
            parse("later.toml", &later).is_ok(),
            "{:?}",
            parse("later.toml", &later)
        );
        let own = later.replace("since = \"closes\"", "since = \"second\"");
        let errors = errors_of(&own);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].field, "step[4].expect.linux.since");
        assert!(errors[0].message.contains("another step"), "{errors:#?}");
    }

    #[test]
    fn calls_in_an_order_that_cannot_happen_are_refused() {
        let step = |body: &str| format!("\n[[step]]\n{body}\n");
        let listen = step("role = \"server\"\ndo = \"listen\"\nas = \"l\"");
        let connect = step("role = \"client\"\ndo = \"connect\"\nto = \"l\"\nas = \"c\"");
        let accept = step("role = \"server\"\ndo = \"accept\"\nlistener = \"l\"\nas = \"s\"");
        let header =
            "id = \"O1\"\nname = \"order\"\ntitle = \"t\"\nroles = [\"client\", \"server\"]\n";
        let fields = |steps: &[&str]| -> Vec<String> {
            match parse("o.toml", &format!("{header}{}", steps.concat())) {
                Ok(_) => Vec::new(),
                Err(ScenarioErrors(errors)) => errors
                    .into_iter()
                    .map(|error| format!("{} {}", error.field, error.message))
                    .collect(),
            }
        };
        // An accept before any connect waits for nothing.
        let found = fields(&[&listen, &accept, &connect]);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0]
                .starts_with("step[2].listener accept on listener \"l\" before any step connects"),
            "{found:#?}"
        );
        // Connect then accept, or both released together, is right.
        assert_eq!(fields(&[&listen, &connect, &accept]), Vec::<String>::new());
        let together = step(
            "role = \"client\"\ndo = \"connect\"\nto = \"l\"\nas = \"c\"\nwith = \"2-accept\"",
        );
        assert_eq!(fields(&[&listen, &accept, &together]), Vec::<String>::new());
        // Two accepts for one connect.
        let again = step("role = \"server\"\ndo = \"accept\"\nlistener = \"l\"\nas = \"s2\"");
        let found = fields(&[&listen, &connect, &accept, &again]);
        assert!(
            found.len() == 1 && found[0].contains("accept number 2"),
            "{found:#?}"
        );
        // A connection used after its close; a half-close keeps it.
        let close = step("role = \"client\"\ndo = \"close\"\nconn = \"c\"");
        let send = step("role = \"client\"\ndo = \"send\"\nconn = \"c\"\ntext = \"x\"");
        let found = fields(&[&listen, &connect, &accept, &close, &send]);
        assert!(
            found.len() == 1
                && found[0]
                    .starts_with("step[5].conn connection \"c\" was closed by step \"4-close\""),
            "{found:#?}"
        );
        let half =
            step("role = \"client\"\ndo = \"close\"\nconn = \"c\"\nmode = \"shutdown-write\"");
        assert_eq!(
            fields(&[&listen, &connect, &accept, &half, &send]),
            Vec::<String>::new()
        );
        // An accept on a stopped listener; a wait-end with no watch.
        let stop = step("role = \"server\"\ndo = \"stop-listening\"\nlistener = \"l\"");
        let found = fields(&[&listen, &connect, &stop, &accept]);
        assert!(
            found.len() == 1 && found[0].contains("was stopped by step \"3-stop-listening\""),
            "{found:#?}"
        );
        let wait = step("role = \"server\"\ndo = \"wait-end\"\nconn = \"s\"");
        let found = fields(&[&listen, &connect, &accept, &wait]);
        assert!(
            found.len() == 1 && found[0].starts_with("step[4].conn wait-end on \"s\""),
            "{found:#?}"
        );
        let watch = step("role = \"server\"\ndo = \"watch\"\nconn = \"s\"");
        assert_eq!(
            fields(&[&listen, &connect, &accept, &watch, &wait]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn steps_released_together_follow_their_first() -> Result<(), ScenarioErrors> {
        let together = "\n[[step]]\nname = \"both\"\nrole = \"server\"\ndo = \"send\"\nconn = \"s\"\ntext = \"x\"\nwith = \"second\"\n";
        let scenario = parse("ok.toml", &format!("{GOOD}{together}"))?;
        assert_eq!(scenario.steps[4].with.as_deref(), Some("second"));
        // A third naming the first, not the second of the run, is fine too.
        let third = together.replace("\"both\"", "\"third\"");
        parse("ok.toml", &format!("{GOOD}{together}{third}"))?;

        let errors = errors_of(&format!(
            "{GOOD}{}",
            together.replace("with = \"second\"", "with = \"1-listen\"")
        ));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(
            (errors[0].field.as_str(), errors[0].line),
            ("step[5].with", 40)
        );
        assert!(errors[0].message.contains("(\"second\")"), "{errors:#?}");

        // A connection made by the first step is not there yet for the others.
        let early = "\n[[step]]\nrole = \"client\"\ndo = \"connect\"\nto = \"l\"\nas = \"c2\"\n\n[[step]]\nrole = \"client\"\ndo = \"send\"\nconn = \"c2\"\ntext = \"x\"\nwith = \"6-connect\"\n";
        let errors = errors_of(&format!("{GOOD}{together}{early}"));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].field, "step[7].conn");

        let sleeping = "\n[[step]]\ndo = \"sleep\"\nms = 5\nwith = \"second\"\n";
        let errors = errors_of(&format!("{GOOD}{sleeping}"));
        assert!(
            errors.iter().any(|error| error.field == "step[5].with"
                && error.message.contains("not released together")),
            "{errors:#?}"
        );
        Ok(())
    }

    #[test]
    fn a_missing_header_field_is_named() {
        let errors = errors_of(&GOOD.replace("title = ", "titel = "));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "titel");
        assert_eq!(errors[0].line, 4);
    }

    #[test]
    fn application_faults_name_their_role_and_connection() {
        let text = format!(
            "{GOOD}\n[[step]]\nrole = \"server\"\ndo = \"abort-connections\"\nconn = \"nope\"\n"
        )
        .replace(
            "roles = [",
            "application = \"db\"\nneeds = [\"process\"]\nroles = [",
        );
        let errors = errors_of(&text);
        let fields: Vec<&str> = errors.iter().map(|error| error.field.as_str()).collect();
        assert!(fields.contains(&"application"), "{errors:#?}");
        assert!(
            fields.iter().any(|field| field.ends_with(".conn")),
            "{errors:#?}"
        );
        let fixed = text
            .replace("application = \"db\"", "application = \"server\"")
            .replace("conn = \"nope\"", "");
        let scenario = parse("ok.toml", &fixed).map_err(|errors| format!("{errors:?}"));
        assert!(scenario.is_ok_and(|scenario| {
            scenario.application.as_deref() == Some("server")
                && scenario.steps.iter().any(|step| {
                    step.action
                        == Action::Process(crate::scenario::ProcessFault::AbortConnections {
                            conn: None,
                        })
                })
        }));
    }

    #[test]
    fn isolation_needs_its_capability_declared() {
        let text =
            format!("{GOOD}\n[[step]]\nrole = \"client\"\ndo = \"isolate\"\ndeadline_ms = 5000\n");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.contains("add it to `needs`"),
            "{errors:?}"
        );
        let declared = text.replace("roles = [", "needs = [\"isolate\"]\nroles = [");
        assert!(parse("ok.toml", &declared).is_ok());
    }

    #[test]
    fn a_deadline_over_the_cap_or_of_zero_is_refused_at_its_own_line() {
        for (keyword, needs, more) in [
            ("isolate", "isolate", ""),
            ("link-down", "link", ""),
            ("power-cut", "power", ""),
            ("degrade", "degrade", "delay_ms = 10\n"),
        ] {
            for (deadline, said) in [
                ("9223372036854775807", "over the cap of 600000 ms"),
                ("0", "needs a deadline"),
            ] {
                let text = format!(
                    "{GOOD}\n[[step]]\nrole = \"client\"\ndo = \"{keyword}\"\n{more}deadline_ms = {deadline}\n"
                )
                .replace("roles = [", &format!("needs = [\"{needs}\"]\nroles = ["));
                let errors = errors_of(&text);
                assert_eq!(errors.len(), 1, "{keyword}: {errors:?}");
                let line = text
                    .lines()
                    .position(|line| line.starts_with("deadline_ms ="))
                    .map_or(0, |index| index + 1);
                assert_eq!(errors[0].line, line, "{keyword}: {errors:?}");
                assert!(errors[0].field.ends_with(".deadline_ms"), "{errors:?}");
                assert!(errors[0].message.contains(said), "{errors:?}");
            }
        }
    }

    #[test]
    fn positions_are_found_in_a_long_file_as_in_a_short_one() {
        let errors = Errors::new("f.toml", "a\nbb\n\nccc");
        assert_eq!(errors.line_of(0), 1);
        assert_eq!(errors.line_of(1), 1);
        assert_eq!(errors.line_of(2), 2);
        assert_eq!(errors.line_of(5), 3);
        assert_eq!(errors.line_of(6), 4);
        assert_eq!(errors.line_of(100), 4);
        let mut errors = errors;
        errors.at(&(7..8), "x", "m");
        assert_eq!((errors.found[0].line, errors.found[0].column), (4, 2));
    }

    #[test]
    fn escape_codes_in_a_cases_names_are_refused() {
        let text = GOOD.replace(
            "name = \"send-after-server-close\"",
            "name = \"\\u001b[2Jwiped\"",
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "name");
        assert!(errors[0].message.contains("control characters"));
    }

    #[test]
    fn a_number_too_large_for_toml_names_its_field_and_line() {
        let text = format!(
            "{GOOD}\n[[step]]\nrole = \"client\"\ndo = \"isolate\"\ndeadline_ms = 99999999999999999999\n"
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let steps = text.matches("[[step]]").count();
        assert_eq!(errors[0].field, format!("step[{steps}].deadline_ms"));
        assert_eq!(errors[0].line, text.lines().count());
        assert!(errors[0].message.contains("out of range"), "{errors:?}");
    }
}
