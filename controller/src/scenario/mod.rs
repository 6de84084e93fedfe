//! Scenarios: what a case does, step by step, across its roles, and what
//! each OS is expected to answer.
//!
//! A scenario is a TOML file (see `parse`). Its steps form one timeline:
//! each step starts when the one before it has finished, on whichever host
//! its role is bound to, so every step boundary is a barrier across hosts.
//! A step marked `background` runs on while later steps go on (a flat-out
//! send that a kill interrupts); `join` waits for it. Steps marked
//! `with = "<step>"` start at the same moment as that step, on whatever
//! hosts they run (a scheduled start: see the agent's `schedule` module),
//! and the timeline goes on once all of them have ended.

mod parse;

pub use parse::{ScenarioError, ScenarioErrors, parse};

use std::collections::BTreeMap;

/// Capabilities a scenario may need from its agents beyond connections.
pub const KNOWN_CAPABILITIES: &[&str] = &["isolate", "link", "reboot", "process"];

/// OS families an expectation can be written for (as agents report them).
pub const KNOWN_OS: &[&str] = &["linux", "windows", "macos", "freebsd"];

/// One case.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Short id, e.g. "S2".
    pub id: String,
    /// Slug, e.g. "graceful-close".
    pub name: String,
    /// One line for people.
    pub title: String,
    /// What the seed article observed, for the report.
    pub seed: Option<String>,
    /// Capabilities the case's steps need (each role's agent must offer
    /// those its own steps use).
    pub needs: Vec<String>,
    /// A role only an application under test can play (`--target`): its
    /// steps are faults done to the application, not socket calls.
    pub application: Option<String>,
    /// The whole case must end within this.
    pub timeout_ms: u64,
    /// Role names, in the order they are bound to agents.
    pub roles: Vec<String>,
    /// The timeline.
    pub steps: Vec<Step>,
    /// Where it came from (file name).
    pub source: String,
}

/// One step of the timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Unique in the scenario; given, or `<index>-<action>`.
    pub name: String,
    /// The role that acts (none for `sleep` and `join`).
    pub role: Option<String>,
    /// What it does.
    pub action: Action,
    /// Run on while the next steps start.
    pub background: bool,
    /// Start at the same moment as this earlier step (the first of a run of
    /// steps released together).
    pub with: Option<String>,
    /// Expectations by OS family ("linux", "windows").
    pub expect: BTreeMap<String, Expect>,
    /// Line in the file.
    pub line: usize,
}

/// Socket options as scenarios write them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `Some(None)` = linger off; `Some(Some(s))` = on with s seconds.
    pub linger: Option<Option<u32>>,
    /// Keepalive on with (idle, interval, count) in ms/ms/probes; 0 = system value.
    pub keepalive: Option<(u32, u32, u32)>,
    /// TCP_USER_TIMEOUT.
    pub user_timeout_ms: Option<u32>,
    /// TCP_NODELAY.
    pub nodelay: Option<bool>,
    /// SO_SNDBUF.
    pub send_buffer_bytes: Option<u32>,
    /// SO_RCVBUF.
    pub recv_buffer_bytes: Option<u32>,
}

/// What a send puts on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Exactly this text.
    Text(String),
    /// Filler bytes.
    Bytes(u64),
    /// Framed messages.
    Messages {
        /// How many.
        count: u32,
        /// Size of each, header included.
        size: u32,
        /// Pause between them.
        interval_ms: u32,
    },
}

/// How a connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
    /// close(): FIN.
    Graceful,
    /// SO_LINGER {on, 0}: RST.
    Abort,
    /// shutdown(write).
    ShutdownWrite,
    /// shutdown(read).
    ShutdownRead,
    /// shutdown(both).
    ShutdownBoth,
    /// close() once unread data sits in the receive buffer: RST.
    WithUnread,
}

/// Everything a step can do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Listen on the role's test address (port 0), naming the listener.
    Listen {
        /// Name for later steps.
        listener: String,
        /// Applied before bind.
        options: Options,
    },
    /// Close a listener: its port then refuses connections.
    StopListening {
        /// Which.
        listener: String,
    },
    /// Connect to a listener (on whatever host it is).
    Connect {
        /// The listener's name.
        to: String,
        /// Name for the connection.
        conn: String,
        /// Applied before connect.
        options: Options,
        /// How long connect may take.
        timeout_ms: u32,
    },
    /// Accept one connection.
    Accept {
        /// The listener's name.
        listener: String,
        /// Name for the connection.
        conn: String,
        /// How long to wait.
        timeout_ms: u32,
    },
    /// send().
    Send {
        /// Which connection.
        conn: String,
        /// What.
        payload: Payload,
        /// How long it may block.
        timeout_ms: u32,
    },
    /// recv(): once, or until EOF/error/limit.
    Recv {
        /// Which connection.
        conn: String,
        /// Until the end (true) or one call.
        all: bool,
        /// Byte limit; 0 = none.
        max_bytes: u64,
        /// How long to wait.
        timeout_ms: u32,
    },
    /// close() or shutdown().
    Close {
        /// Which connection.
        conn: String,
        /// How.
        mode: CloseMode,
    },
    /// setsockopt().
    SetOptions {
        /// Which connection.
        conn: String,
        /// What.
        options: Options,
    },
    /// Start a background reader that notes when FIN or RST is first seen.
    Watch {
        /// Which connection.
        conn: String,
    },
    /// Wait until a watched connection ends; its observation is this step's.
    WaitEnd {
        /// Which connection.
        conn: String,
        /// How long to wait.
        timeout_ms: u32,
    },
    /// The role's process exits without closing its sockets.
    Exit {
        /// Exit code.
        code: i32,
    },
    /// The role's process is killed (SIGKILL / TerminateProcess).
    Kill,
    /// Wait.
    Sleep {
        /// How long.
        ms: u64,
    },
    /// Wait for a background step to finish.
    Join {
        /// The background step's name.
        step: String,
    },
    /// Cut the role's host off the test network (needs `isolate`), or
    /// only the flow of one connection.
    Isolate {
        /// "drop" or "reject".
        mode: String,
        /// The isolation lifts by itself after this.
        deadline_ms: u64,
        /// Only this connection's flow (its 4-tuple), seen from the role's host.
        conn: Option<String>,
    },
    /// Destroy sockets on the role's host as a broken middlebox would (the
    /// peer gets a RST, the owning program ECONNABORTED): the flow of one
    /// connection, or with no `conn` every connection of the role's
    /// application port (needs `process`).
    AbortConnections {
        /// The connection whose flow to abort (either end's name).
        conn: Option<String>,
    },
    /// Freeze the role's process (SIGSTOP): its kernel still ACKs (needs `process`).
    Stop,
    /// Thaw it (SIGCONT) (needs `process`).
    Continue,
    /// Restart the role's process with its configured command (needs `process`).
    Restart,
    /// Lift the role's isolation (needs `isolate`).
    Heal,
    /// Pull the cable of the role's test interface (the one holding its test
    /// address) until a deadline (needs `link`).
    LinkDown {
        /// The link comes back by itself after this.
        deadline_ms: u64,
    },
    /// Plug it back in.
    LinkUp,
    /// Reboot the role's host, really or simulated (needs `reboot`).
    Reboot {
        /// Simulated: drop everything, forget sockets, come back.
        simulated: bool,
        /// How long the host stays down (simulated).
        down_ms: u64,
    },
}

impl Action {
    /// The name scenarios use for this action (`do = "..."`).
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Listen { .. } => "listen",
            Self::StopListening { .. } => "stop-listening",
            Self::Connect { .. } => "connect",
            Self::Accept { .. } => "accept",
            Self::Send { .. } => "send",
            Self::Recv { .. } => "recv",
            Self::Close { .. } => "close",
            Self::SetOptions { .. } => "set-options",
            Self::Watch { .. } => "watch",
            Self::WaitEnd { .. } => "wait-end",
            Self::Exit { .. } => "exit",
            Self::Kill => "kill",
            Self::Sleep { .. } => "sleep",
            Self::Join { .. } => "join",
            Self::Isolate { .. } => "isolate",
            Self::Heal => "heal",
            Self::LinkDown { .. } => "link-down",
            Self::LinkUp => "link-up",
            Self::Reboot { .. } => "reboot",
            Self::AbortConnections { .. } => "abort-connections",
            Self::Stop => "stop",
            Self::Continue => "continue",
            Self::Restart => "restart",
        }
    }

    /// The capability an agent needs for this action, if beyond connections.
    pub fn capability(&self) -> Option<&'static str> {
        match self {
            Self::Isolate { .. }
            | Self::Heal
            | Self::Reboot {
                simulated: true, ..
            } => Some("isolate"),
            Self::Reboot {
                simulated: false, ..
            } => Some("reboot"),
            Self::LinkDown { .. } | Self::LinkUp => Some("link"),
            Self::AbortConnections { .. } | Self::Stop | Self::Continue | Self::Restart => {
                Some("process")
            }
            _ => None,
        }
    }
}

/// How a call is expected to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedOutcome {
    /// Success.
    Ok,
    /// recv returned 0.
    Eof,
    /// An OS error.
    Error,
    /// Nothing before the deadline.
    Timeout,
    /// The call was cut short because its process died.
    HolderGone,
}

impl ExpectedOutcome {
    /// As written in scenarios and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Eof => "eof",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::HolderGone => "holder-gone",
        }
    }
}

/// What one OS is expected to answer to a step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// How the call ends.
    pub outcome: Option<ExpectedOutcome>,
    /// Portable error name, e.g. "ECONNRESET".
    pub error: Option<String>,
    /// Whether SIGPIPE would have been raised.
    pub sigpipe: Option<bool>,
    /// Exactly this many bytes.
    pub bytes: Option<u64>,
    /// At least this many bytes.
    pub bytes_min: Option<u64>,
    /// Fewer bytes than the named step moved.
    pub bytes_below: Option<String>,
    /// At least this many unread bytes at close.
    pub unread_bytes_min: Option<u64>,
    /// Ends at most this long after the start of step `since`.
    pub within_ms: Option<u64>,
    /// The step `within_ms` counts from.
    pub since: Option<String>,
    /// Whether the role's host sends a RST from this step on (wire evidence).
    pub wire_rst: Option<bool>,
    /// Whether it sends a FIN from this step on.
    pub wire_fin: Option<bool>,
    /// Payload bytes the role's host sent on the case's connections before its first FIN.
    pub wire_bytes_before_fin: Option<u64>,
    /// Where this expectation comes from ("measured", "seed", ...).
    pub source: Option<String>,
}

impl Expect {
    /// The expectation in a few words, e.g. "error ECONNRESET, 1000 B, no FIN".
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        match (self.outcome, &self.error) {
            (Some(outcome), Some(error)) => parts.push(format!("{} {error}", outcome.as_str())),
            (Some(outcome), None) => parts.push(outcome.as_str().to_owned()),
            (None, Some(error)) => parts.push(error.clone()),
            (None, None) => {}
        }
        if let Some(bytes) = self.bytes {
            parts.push(format!("{bytes} B"));
        }
        if let Some(bytes) = self.bytes_min {
            parts.push(format!("≥ {bytes} B"));
        }
        if let Some(step) = &self.bytes_below {
            parts.push(format!("< bytes of {step}"));
        }
        if let Some(sigpipe) = self.sigpipe {
            parts.push(if sigpipe { "SIGPIPE" } else { "no SIGPIPE" }.to_owned());
        }
        if let Some(bytes) = self.unread_bytes_min {
            parts.push(format!("≥ {bytes} B unread"));
        }
        if let (Some(within), Some(since)) = (self.within_ms, &self.since) {
            parts.push(format!("within {within} ms of {since}"));
        }
        for (wanted, name) in [(self.wire_rst, "RST"), (self.wire_fin, "FIN")] {
            if let Some(wanted) = wanted {
                parts.push(format!(
                    "{} {name} on the wire",
                    if wanted { "a" } else { "no" }
                ));
            }
        }
        if let Some(bytes) = self.wire_bytes_before_fin {
            parts.push(format!("FIN after {bytes} B"));
        }
        parts.join(", ")
    }

    /// Whether it says anything about the wire.
    pub fn checks_wire(&self) -> bool {
        self.wire_rst.is_some() || self.wire_fin.is_some() || self.wire_bytes_before_fin.is_some()
    }
}
