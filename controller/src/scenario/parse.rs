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

use super::{
    Action, CloseMode, Expect, ExpectedOutcome, KNOWN_CAPABILITIES, KNOWN_OS, Options, Payload,
    Scenario, Step,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use toml::Spanned;

/// Default for a scenario's `timeout_ms`.
pub const DEFAULT_CASE_TIMEOUT_MS: u64 = 60_000;
/// Smallest framed message (its header).
const MESSAGE_HEADER_BYTES: u32 = 8;

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

type SpannedTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// Collects errors with positions computed from byte offsets.
struct Errors<'a> {
    file: &'a str,
    text: &'a str,
    found: Vec<ScenarioError>,
}

impl Errors<'_> {
    fn at(&mut self, span: &Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map_or(before.len(), |nl| before.len() - nl - 1)
            + 1;
        self.found.push(ScenarioError {
            file: self.file.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Parse and validate one scenario. `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioErrors> {
    let mut errors = Errors {
        file,
        text,
        found: Vec::new(),
    };
    let document: SpannedTable = match toml::from_str(text) {
        Ok(document) => document,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            errors.at(&span, "(file)", error.message().trim().to_owned());
            return Err(ScenarioErrors(errors.found));
        }
    };
    let whole = 0..text.len();
    let (steps, header): (Vec<_>, Vec<_>) = document
        .iter()
        .partition(|(key, _)| key.get_ref() == "step");
    let header: SpannedTable = header
        .into_iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let header = typed::<Header>(&header, &whole, "", &mut errors);
    let raw_steps = match steps.first() {
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
    };
    let mut parsed_steps = Vec::new();
    for (index, (span, table)) in raw_steps.iter().enumerate() {
        if let Some(step) = parse_step(index, table, span, &mut errors) {
            parsed_steps.push(step);
        }
    }
    let Some(header) = header else {
        return Err(ScenarioErrors(errors.found));
    };
    let scenario = Scenario {
        id: header.id,
        name: header.name,
        title: header.title,
        seed: header.seed,
        needs: header.needs,
        application: header.application,
        timeout_ms: header.timeout_ms.unwrap_or(DEFAULT_CASE_TIMEOUT_MS),
        roles: header.roles,
        steps: parsed_steps.iter().map(|(step, _)| step.clone()).collect(),
        source: file.to_owned(),
    };
    if errors.found.is_empty() {
        check_references(&scenario, &parsed_steps, &document, &mut errors);
    }
    if errors.found.is_empty() {
        Ok(scenario)
    } else {
        Err(ScenarioErrors(errors.found))
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

/// Deserialize a table into `T`; on failure, record one error at the key
/// the message names (or at the table).
fn typed<T: DeserializeOwned>(
    table: &SpannedTable,
    table_span: &Range<usize>,
    path: &str,
    errors: &mut Errors<'_>,
) -> Option<T> {
    let plain: toml::Table = table
        .iter()
        .map(|(key, value)| (key.get_ref().clone(), value.get_ref().clone()))
        .collect();
    match toml::Value::Table(plain).try_into::<T>() {
        Ok(value) => Some(value),
        Err(error) => {
            let message = error.to_string().replace('\n', " ").trim().to_owned();
            let named: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
            let at_key = named.iter().find_map(|name| {
                let top = name.split('.').next().unwrap_or(name);
                table
                    .keys()
                    .find(|key| key.get_ref() == top)
                    .map(|key| (key.span(), *name))
            });
            let (span, field) = match at_key {
                Some((span, name)) => (span, name.to_owned()),
                None => (
                    table_span.clone(),
                    named
                        .first()
                        .map_or(String::new(), |name| (*name).to_owned()),
                ),
            };
            let field = match (path.is_empty(), field.is_empty()) {
                (true, _) => field,
                (false, true) => path.to_owned(),
                (false, false) => format!("{path}.{field}"),
            };
            errors.at(&span, field, message);
            None
        }
    }
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OptionsSpec {
    linger: Option<LingerSpec>,
    keepalive: Option<KeepaliveSpec>,
    user_timeout_ms: Option<u32>,
    nodelay: Option<bool>,
    send_buffer_bytes: Option<u32>,
    recv_buffer_bytes: Option<u32>,
}

/// `linger = 0` (on, 0 s: abortive close) or `linger = false` (off).
#[derive(Deserialize)]
#[serde(untagged)]
enum LingerSpec {
    Switch(bool),
    Seconds(u32),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepaliveSpec {
    #[serde(default)]
    idle_ms: u32,
    #[serde(default)]
    interval_ms: u32,
    #[serde(default)]
    count: u32,
}

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
    within_ms: Option<u64>,
    since: Option<String>,
    wire_rst: Option<bool>,
    wire_fin: Option<bool>,
    wire_bytes_before_fin: Option<u64>,
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

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum CloseSpec {
    Graceful,
    Abort,
    ShutdownWrite,
    ShutdownRead,
    ShutdownBoth,
    WithUnread,
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "kebab-case")]
enum RecvModeSpec {
    Once,
    #[default]
    All,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenSpec {
    #[serde(rename = "as")]
    listener: String,
    #[serde(default)]
    options: OptionsSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerSpec {
    listener: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectSpec {
    to: String,
    #[serde(rename = "as")]
    conn: String,
    #[serde(default)]
    options: OptionsSpec,
    #[serde(default)]
    timeout_ms: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptSpec {
    listener: String,
    #[serde(rename = "as")]
    conn: String,
    #[serde(default)]
    timeout_ms: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesSpec {
    count: u32,
    size: u32,
    #[serde(default)]
    interval_ms: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendSpec {
    conn: String,
    text: Option<String>,
    bytes: Option<u64>,
    messages: Option<MessagesSpec>,
    #[serde(default)]
    timeout_ms: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecvSpec {
    conn: String,
    #[serde(default)]
    mode: RecvModeSpec,
    #[serde(default)]
    max_bytes: u64,
    #[serde(default)]
    timeout_ms: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseStepSpec {
    conn: String,
    mode: CloseSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptionsSpec {
    conn: String,
    options: OptionsSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnSpec {
    conn: String,
    #[serde(default)]
    timeout_ms: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExitSpec {
    #[serde(default)]
    code: i32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NothingSpec {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepSpec {
    ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinSpec {
    step: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IsolateSpec {
    #[serde(default = "drop_mode")]
    mode: String,
    deadline_ms: u64,
    conn: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortSpec {
    conn: Option<String>,
}

fn drop_mode() -> String {
    "drop".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadlineSpec {
    deadline_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RebootSpec {
    #[serde(default = "yes")]
    simulated: bool,
    #[serde(default = "default_down_ms")]
    down_ms: u64,
}

fn yes() -> bool {
    true
}

fn default_down_ms() -> u64 {
    3_000
}

/// Every action keyword, for the error that lists them.
const ACTIONS: &str = "listen, stop-listening, connect, accept, send, recv, close, set-options, \
                       watch, wait-end, exit, kill, sleep, join, isolate, heal, link-down, link-up, reboot, \
                       abort-connections, stop, continue, restart";

fn parse_step(
    index: usize,
    table: &SpannedTable,
    span: &Range<usize>,
    errors: &mut Errors<'_>,
) -> Option<(Step, SpannedTable)> {
    let path = format!("step[{}]", index + 1);
    let (common_table, own_table): (SpannedTable, SpannedTable) = table
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .partition(|(key, _)| COMMON_KEYS.contains(&key.get_ref().as_str()));
    let common: Common = typed(&common_table, span, &path, errors)?;
    let action_span = common_table
        .keys()
        .find(|key| key.get_ref() == "do")
        .map_or(span.clone(), Spanned::span);
    let before = errors.found.len();
    let action = match common.action.as_str() {
        "listen" => typed::<ListenSpec>(&own_table, span, &path, errors).and_then(|spec| {
            Some(Action::Listen {
                listener: spec.listener,
                options: options(spec.options, &path, span, errors)?,
            })
        }),
        "stop-listening" => typed::<ListenerSpec>(&own_table, span, &path, errors).map(|spec| {
            Action::StopListening {
                listener: spec.listener,
            }
        }),
        "connect" => typed::<ConnectSpec>(&own_table, span, &path, errors).and_then(|spec| {
            Some(Action::Connect {
                to: spec.to,
                conn: spec.conn,
                options: options(spec.options, &path, span, errors)?,
                timeout_ms: spec.timeout_ms,
            })
        }),
        "accept" => {
            typed::<AcceptSpec>(&own_table, span, &path, errors).map(|spec| Action::Accept {
                listener: spec.listener,
                conn: spec.conn,
                timeout_ms: spec.timeout_ms,
            })
        }
        "send" => typed::<SendSpec>(&own_table, span, &path, errors)
            .and_then(|spec| send(spec, &path, span, errors)),
        "recv" => typed::<RecvSpec>(&own_table, span, &path, errors).map(|spec| Action::Recv {
            conn: spec.conn,
            all: matches!(spec.mode, RecvModeSpec::All),
            max_bytes: spec.max_bytes,
            timeout_ms: spec.timeout_ms,
        }),
        "close" => {
            typed::<CloseStepSpec>(&own_table, span, &path, errors).map(|spec| Action::Close {
                conn: spec.conn,
                mode: match spec.mode {
                    CloseSpec::Graceful => CloseMode::Graceful,
                    CloseSpec::Abort => CloseMode::Abort,
                    CloseSpec::ShutdownWrite => CloseMode::ShutdownWrite,
                    CloseSpec::ShutdownRead => CloseMode::ShutdownRead,
                    CloseSpec::ShutdownBoth => CloseMode::ShutdownBoth,
                    CloseSpec::WithUnread => CloseMode::WithUnread,
                },
            })
        }
        "set-options" => {
            typed::<SetOptionsSpec>(&own_table, span, &path, errors).and_then(|spec| {
                Some(Action::SetOptions {
                    conn: spec.conn,
                    options: options(spec.options, &path, span, errors)?,
                })
            })
        }
        "watch" => typed::<ConnSpec>(&own_table, span, &path, errors)
            .map(|spec| Action::Watch { conn: spec.conn }),
        "wait-end" => {
            typed::<ConnSpec>(&own_table, span, &path, errors).map(|spec| Action::WaitEnd {
                conn: spec.conn,
                timeout_ms: spec.timeout_ms,
            })
        }
        "exit" => typed::<ExitSpec>(&own_table, span, &path, errors)
            .map(|spec| Action::Exit { code: spec.code }),
        "kill" => typed::<NothingSpec>(&own_table, span, &path, errors).map(|_| Action::Kill),
        "sleep" => typed::<SleepSpec>(&own_table, span, &path, errors)
            .map(|spec| Action::Sleep { ms: spec.ms }),
        "join" => typed::<JoinSpec>(&own_table, span, &path, errors)
            .map(|spec| Action::Join { step: spec.step }),
        "isolate" => typed::<IsolateSpec>(&own_table, span, &path, errors).and_then(|spec| {
            if spec.mode == "drop" || spec.mode == "reject" {
                Some(Action::Isolate {
                    mode: spec.mode,
                    deadline_ms: spec.deadline_ms,
                    conn: spec.conn,
                })
            } else {
                errors.at(
                    span,
                    format!("{path}.mode"),
                    "isolate mode is \"drop\" or \"reject\"",
                );
                None
            }
        }),
        "heal" => typed::<NothingSpec>(&own_table, span, &path, errors).map(|_| Action::Heal),
        "abort-connections" => typed::<AbortSpec>(&own_table, span, &path, errors)
            .map(|spec| Action::AbortConnections { conn: spec.conn }),
        "stop" => typed::<NothingSpec>(&own_table, span, &path, errors).map(|_| Action::Stop),
        "continue" => {
            typed::<NothingSpec>(&own_table, span, &path, errors).map(|_| Action::Continue)
        }
        "restart" => typed::<NothingSpec>(&own_table, span, &path, errors).map(|_| Action::Restart),
        "link-down" => {
            typed::<DeadlineSpec>(&own_table, span, &path, errors).map(|spec| Action::LinkDown {
                deadline_ms: spec.deadline_ms,
            })
        }
        "link-up" => typed::<NothingSpec>(&own_table, span, &path, errors).map(|_| Action::LinkUp),
        "reboot" => {
            typed::<RebootSpec>(&own_table, span, &path, errors).map(|spec| Action::Reboot {
                simulated: spec.simulated,
                down_ms: spec.down_ms,
            })
        }
        unknown => {
            errors.at(
                &action_span,
                format!("{path}.do"),
                format!("unknown action {unknown:?}; one of: {ACTIONS}"),
            );
            None
        }
    };
    let action = action?;
    let mut expect = BTreeMap::new();
    for (os, spec) in common.expect {
        expect.insert(os, expectation(spec));
    }
    if errors.found.len() > before {
        return None;
    }
    let line = errors.text[..span.start.min(errors.text.len())]
        .matches('\n')
        .count()
        + 1;
    let step = Step {
        name: common
            .name
            .unwrap_or_else(|| format!("{}-{}", index + 1, action.keyword())),
        role: common.role,
        action,
        background: common.background,
        with: common.with,
        expect,
        line,
    };
    Some((step, common_table))
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
        within_ms: spec.within_ms,
        since: spec.since,
        wire_rst: spec.wire_rst,
        wire_fin: spec.wire_fin,
        wire_bytes_before_fin: spec.wire_bytes_before_fin,
        source: spec.source,
    }
}

fn send(
    spec: SendSpec,
    path: &str,
    span: &Range<usize>,
    errors: &mut Errors<'_>,
) -> Option<Action> {
    let payload = match (spec.text, spec.bytes, spec.messages) {
        (Some(text), None, None) => Payload::Text(text),
        (None, Some(bytes), None) => Payload::Bytes(bytes),
        (None, None, Some(messages)) if messages.size < MESSAGE_HEADER_BYTES => {
            errors.at(
                span,
                format!("{path}.messages.size"),
                format!("a message is at least its {MESSAGE_HEADER_BYTES}-byte header"),
            );
            return None;
        }
        (None, None, Some(messages)) => Payload::Messages {
            count: messages.count,
            size: messages.size,
            interval_ms: messages.interval_ms,
        },
        _ => {
            errors.at(
                span,
                path.to_owned(),
                "a send needs exactly one of text, bytes or messages",
            );
            return None;
        }
    };
    Some(Action::Send {
        conn: spec.conn,
        payload,
        timeout_ms: spec.timeout_ms,
    })
}

fn options(
    spec: OptionsSpec,
    path: &str,
    span: &Range<usize>,
    errors: &mut Errors<'_>,
) -> Option<Options> {
    let linger = match spec.linger {
        None => None,
        Some(LingerSpec::Switch(false)) => Some(None),
        Some(LingerSpec::Switch(true)) => {
            errors.at(
                span,
                format!("{path}.options.linger"),
                "linger is a number of seconds (0 = abortive close) or false",
            );
            return None;
        }
        Some(LingerSpec::Seconds(seconds)) => Some(Some(seconds)),
    };
    let keepalive = match spec.keepalive {
        None => None,
        Some(keepalive) => {
            for (name, value) in [
                ("idle_ms", keepalive.idle_ms),
                ("interval_ms", keepalive.interval_ms),
            ] {
                if (1..1000).contains(&value) {
                    errors.at(
                        span,
                        format!("{path}.options.keepalive.{name}"),
                        "keepalive timers count whole seconds: 0 (system value) or at least 1000",
                    );
                    return None;
                }
            }
            Some((keepalive.idle_ms, keepalive.interval_ms, keepalive.count))
        }
    };
    Some(Options {
        linger,
        keepalive,
        user_timeout_ms: spec.user_timeout_ms,
        nodelay: spec.nodelay,
        send_buffer_bytes: spec.send_buffer_bytes,
        recv_buffer_bytes: spec.recv_buffer_bytes,
    })
}

fn key_span(table: &SpannedTable, key: &str, fallback: &Range<usize>) -> Range<usize> {
    table
        .keys()
        .find(|candidate| candidate.get_ref() == key)
        .map_or(fallback.clone(), Spanned::span)
}

/// Names used before they are defined, roles not declared, capabilities not
/// declared, duplicate step names, unknown OS names.
fn check_references(
    scenario: &Scenario,
    steps: &[(Step, SpannedTable)],
    document: &SpannedTable,
    errors: &mut Errors<'_>,
) {
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
        let span = key_span(document, "application", &whole);
        errors.at(
            &span,
            "application",
            format!("role {application:?} is not in roles {:?}", scenario.roles),
        );
    }
    for need in &scenario.needs {
        if !KNOWN_CAPABILITIES.contains(&need.as_str()) {
            let span = key_span(document, "needs", &whole);
            errors.at(
                &span,
                "needs",
                format!("unknown capability {need:?}; one of {KNOWN_CAPABILITIES:?}"),
            );
        }
    }
    let mut listeners = HashSet::new();
    let mut conns = HashSet::new();
    let mut names: Vec<&str> = Vec::new();
    let mut background: Vec<&str> = Vec::new();
    // Names a step defines become usable once its group (steps released
    // together) has ended: they are only known after it.
    let mut defined_listeners: Vec<String> = Vec::new();
    let mut defined_conns: Vec<String> = Vec::new();
    let mut previous: Option<&Step> = None;
    for (index, (step, table)) in steps.iter().enumerate() {
        if step.with.is_none() {
            listeners.extend(defined_listeners.drain(..));
            conns.extend(defined_conns.drain(..));
        }
        let path = format!("step[{}]", index + 1);
        let step_span = table.keys().next().map_or(whole.clone(), Spanned::span);
        let at = |key: &str| key_span(table, key, &step_span);
        let line_span = {
            let start = errors
                .text
                .lines()
                .take(step.line - 1)
                .map(|l| l.len() + 1)
                .sum::<usize>();
            start..start
        };
        let field = |name: &str| format!("{path}.{name}");
        let mut problems: Vec<(Range<usize>, String, String)> = Vec::new();
        if names.contains(&step.name.as_str()) {
            problems.push((
                at("name"),
                field("name"),
                format!("step name {:?} is used twice", step.name),
            ));
        }
        let needs_role = !matches!(step.action, Action::Sleep { .. } | Action::Join { .. });
        match (&step.role, needs_role) {
            (None, true) => problems.push((
                line_span.clone(),
                field("role"),
                format!("{} needs a role", step.action.keyword()),
            )),
            (Some(_), false) => problems.push((
                at("role"),
                field("role"),
                format!("{} takes no role", step.action.keyword()),
            )),
            (Some(role), true) if !scenario.roles.contains(role) => problems.push((
                at("role"),
                field("role"),
                format!("role {role:?} is not in roles {:?}", scenario.roles),
            )),
            _ => {}
        }
        if step.background
            && !matches!(
                step.action,
                Action::Send { .. }
                    | Action::Recv { .. }
                    | Action::WaitEnd { .. }
                    | Action::Sleep { .. }
            )
        {
            problems.push((
                at("background"),
                field("background"),
                "only send, recv, wait-end and sleep can run in the background".to_owned(),
            ));
        }
        if let Some(with) = &step.with {
            let lead = previous.map(|before| before.with.as_ref().unwrap_or(&before.name));
            let released_together = |candidate: &Step| {
                !candidate.background
                    && !matches!(candidate.action, Action::Sleep { .. } | Action::Join { .. })
            };
            if lead != Some(with) {
                problems.push((
                    at("with"),
                    field("with"),
                    match lead {
                        Some(lead) => format!(
                            "{with:?} is not the step this one can start with: steps released together follow each other, each naming the first of them ({lead:?})"
                        ),
                        None => format!("{with:?}: the first step starts with nothing"),
                    },
                ));
            } else if !released_together(step)
                || previous.is_some_and(|before| !released_together(before))
            {
                problems.push((
                    at("with"),
                    field("with"),
                    "background, sleep and join steps are not released together with others"
                        .to_owned(),
                ));
            }
        }
        if let Some(capability) = step.action.capability()
            && !scenario.needs.iter().any(|need| need == capability)
        {
            problems.push((
                at("do"),
                field("do"),
                format!(
                    "{} needs the {capability:?} capability: add it to `needs`",
                    step.action.keyword()
                ),
            ));
        }
        let use_conn = |name: &str, key: &str, problems: &mut Vec<_>| {
            if !conns.contains(name) {
                problems.push((at(key), field(key), format!("connection {name:?} is not opened by an earlier step (connect or accept `as`)")));
            }
        };
        match &step.action {
            Action::Listen { listener, .. } => {
                defined_listeners.push(listener.clone());
            }
            Action::StopListening { listener } | Action::Accept { listener, .. }
                if !listeners.contains(listener) =>
            {
                problems.push((
                    at("listener"),
                    field("listener"),
                    format!("listener {listener:?} is not opened by an earlier listen step"),
                ));
            }
            Action::Connect { to, .. } if !listeners.contains(to) => {
                problems.push((
                    at("to"),
                    field("to"),
                    format!("listener {to:?} is not opened by an earlier listen step"),
                ));
            }
            Action::Send { conn, .. }
            | Action::Recv { conn, .. }
            | Action::Close { conn, .. }
            | Action::SetOptions { conn, .. }
            | Action::Watch { conn }
            | Action::WaitEnd { conn, .. }
            | Action::Isolate {
                conn: Some(conn), ..
            }
            | Action::AbortConnections { conn: Some(conn) } => {
                use_conn(conn, "conn", &mut problems);
            }
            Action::Join { step: joined } if !background.contains(&joined.as_str()) => {
                problems.push((
                    at("step"),
                    field("step"),
                    format!("{joined:?} is not an earlier background step"),
                ));
            }
            _ => {}
        }
        if let Action::Connect { conn, .. } | Action::Accept { conn, .. } = &step.action {
            defined_conns.push(conn.clone());
        }
        for (os, expect) in &step.expect {
            let expect_span = at("expect");
            if !KNOWN_OS.contains(&os.as_str()) {
                problems.push((
                    expect_span.clone(),
                    field(&format!("expect.{os}")),
                    format!("unknown OS {os:?}; one of {KNOWN_OS:?}"),
                ));
            }
            for (key, reference) in [
                ("since", &expect.since),
                ("bytes_below", &expect.bytes_below),
            ] {
                if let Some(reference) = reference
                    && !names.contains(&reference.as_str())
                {
                    problems.push((
                        expect_span.clone(),
                        field(&format!("expect.{os}.{key}")),
                        format!("{reference:?} is not an earlier step's name"),
                    ));
                }
            }
            if expect.within_ms.is_some() != expect.since.is_some() {
                problems.push((
                    expect_span.clone(),
                    field(&format!("expect.{os}.within_ms")),
                    "within_ms and since go together".to_owned(),
                ));
            }
        }
        for (span, field, message) in problems {
            errors.at(&span, field, message);
        }
        names.push(&step.name);
        if step.background {
            background.push(&step.name);
        }
        previous = Some(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let Action::Connect { options, .. } = &scenario.steps[1].action else {
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
                && scenario
                    .steps
                    .iter()
                    .any(|step| step.action == Action::AbortConnections { conn: None })
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
}
