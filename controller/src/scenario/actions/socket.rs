//! Socket calls: what a role's holder process does with its sockets
//! (listen, connect, accept, send, recv, close, options, watching for the
//! end). Their input form, checks and model live here; the engine's
//! `steps::socket` turns them into agent requests.

use super::Reference;
use crate::scenario::parse::input::StepInput;
use faultlab_proto::{CloseMode, MESSAGE_HEADER_BYTES};
use serde::Deserialize;

/// What a host does with a connection whose handshake ends while its
/// listener's accept queue is full (Linux's `tcp_abort_on_overflow`, of
/// the host's network namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcceptQueueOverflow {
    /// Forget the handshake's last ACK: the client believes it is
    /// connected; the server answers its retransmissions later (0).
    Drop,
    /// Answer it with RST (1).
    Reset,
}

/// The backlog a listen asks for unless the step says.
pub const DEFAULT_BACKLOG: u32 = 128;

/// The longest backlog a step may ask (Linux's default `somaxconn`).
pub const MAX_BACKLOG: u32 = 4096;

/// A socket call of a role's holder.
#[derive(Clone, Debug, PartialEq, strum::IntoStaticStr, strum::VariantNames)]
#[strum(serialize_all = "kebab-case")]
pub enum SocketCall {
    /// Listen on the role's test address (port 0), naming the listener.
    Listen {
        /// Name for later steps.
        listener: String,
        /// Applied before bind.
        options: Options,
        /// The accept queue's length asked of listen() (the kernel holds
        /// one more on Linux).
        backlog: u32,
        /// What the host does with a handshake that ends on a full accept
        /// queue, set for the case (needs `tune`); unsaid: as the host is.
        overflow: Option<AcceptQueueOverflow>,
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

impl SocketCall {
    /// The names it uses and defines.
    pub(super) fn references(&self) -> Vec<Reference<'_>> {
        match self {
            Self::Listen { listener, .. } => vec![Reference::DefinesListener(listener)],
            Self::StopListening { listener } => vec![Reference::UsesListener {
                field: "listener",
                name: listener,
            }],
            Self::Connect { to, conn, .. } => vec![
                Reference::UsesListener {
                    field: "to",
                    name: to,
                },
                Reference::DefinesConn(conn),
            ],
            Self::Accept { listener, conn, .. } => vec![
                Reference::UsesListener {
                    field: "listener",
                    name: listener,
                },
                Reference::DefinesConn(conn),
            ],
            Self::Send { conn, .. }
            | Self::Recv { conn, .. }
            | Self::Close { conn, .. }
            | Self::SetOptions { conn, .. }
            | Self::Watch { conn }
            | Self::WaitEnd { conn, .. } => vec![Reference::conn(conn)],
        }
    }

    /// The capability it needs beyond connections: a listen that sets
    /// what a full accept queue does changes a TCP setting of the host.
    pub(super) fn capability(&self) -> Option<faultlab_proto::Capability> {
        matches!(
            self,
            Self::Listen {
                overflow: Some(_),
                ..
            }
        )
        .then_some(faultlab_proto::Capability::Tune)
    }

    /// Facing an application, whether the call is one the application
    /// decides to make (send, close, ...) rather than one that just
    /// happens to it (listen, accept, recv): see `Action::by_application`.
    pub(super) fn decided_by_application(&self) -> bool {
        !matches!(
            self,
            Self::Listen { .. }
                | Self::Accept { .. }
                | Self::Recv { .. }
                | Self::Watch { .. }
                | Self::WaitEnd { .. }
        )
    }

    /// Read the step's own fields for `keyword` (one of its variants' names).
    pub(super) fn parse(keyword: &str, input: &mut StepInput<'_, '_, '_>) -> Option<Self> {
        match keyword {
            "listen" => {
                let spec = input.typed::<ListenSpec>()?;
                let backlog = spec.backlog.unwrap_or(DEFAULT_BACKLOG);
                if backlog > MAX_BACKLOG {
                    input.error(
                        "backlog",
                        format!("{backlog} is over {MAX_BACKLOG} (Linux's somaxconn caps it)"),
                    );
                    return None;
                }
                Some(Self::Listen {
                    listener: spec.listener,
                    options: spec.options.into_options(input)?,
                    backlog,
                    overflow: spec.accept_queue_overflow,
                })
            }
            "stop-listening" => input
                .typed::<ListenerSpec>()
                .map(|spec| Self::StopListening {
                    listener: spec.listener,
                }),
            "connect" => {
                let spec = input.typed::<ConnectSpec>()?;
                Some(Self::Connect {
                    to: spec.to,
                    conn: spec.conn,
                    options: spec.options.into_options(input)?,
                    timeout_ms: spec.timeout_ms,
                })
            }
            "accept" => input.typed::<AcceptSpec>().map(|spec| Self::Accept {
                listener: spec.listener,
                conn: spec.conn,
                timeout_ms: spec.timeout_ms,
            }),
            "send" => input.typed::<SendSpec>()?.into_call(input),
            "recv" => input.typed::<RecvSpec>().map(|spec| Self::Recv {
                conn: spec.conn,
                all: matches!(spec.mode, RecvModeSpec::All),
                max_bytes: spec.max_bytes,
                timeout_ms: spec.timeout_ms,
            }),
            "close" => input.typed::<CloseSpec>().map(|spec| Self::Close {
                conn: spec.conn,
                mode: spec.mode,
            }),
            "set-options" => {
                let spec = input.typed::<SetOptionsSpec>()?;
                Some(Self::SetOptions {
                    conn: spec.conn,
                    options: spec.options.into_options(input)?,
                })
            }
            "watch" => input
                .typed::<WatchSpec>()
                .map(|spec| Self::Watch { conn: spec.conn }),
            _ => input.typed::<WaitEndSpec>().map(|spec| Self::WaitEnd {
                conn: spec.conn,
                timeout_ms: spec.timeout_ms,
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenSpec {
    #[serde(rename = "as")]
    listener: String,
    #[serde(default)]
    options: OptionsSpec,
    backlog: Option<u32>,
    accept_queue_overflow: Option<AcceptQueueOverflow>,
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

impl SendSpec {
    fn into_call(self, input: &mut StepInput<'_, '_, '_>) -> Option<SocketCall> {
        let payload = match (self.text, self.bytes, self.messages) {
            (Some(text), None, None) => Payload::Text(text),
            (None, Some(bytes), None) => Payload::Bytes(bytes),
            (None, None, Some(messages)) if messages.size < MESSAGE_HEADER_BYTES => {
                input.error(
                    "messages.size",
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
                input.error("", "a send needs exactly one of text, bytes or messages");
                return None;
            }
        };
        Some(SocketCall::Send {
            conn: self.conn,
            payload,
            timeout_ms: self.timeout_ms,
        })
    }
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
struct CloseSpec {
    conn: String,
    /// close() with no option is graceful: so is a close step without a mode.
    #[serde(default = "graceful")]
    mode: CloseMode,
}

fn graceful() -> CloseMode {
    CloseMode::Graceful
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptionsSpec {
    conn: String,
    options: OptionsSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchSpec {
    conn: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitEndSpec {
    conn: String,
    #[serde(default)]
    timeout_ms: u32,
}

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

impl OptionsSpec {
    fn into_options(self, input: &mut StepInput<'_, '_, '_>) -> Option<Options> {
        let linger = match self.linger {
            None => None,
            Some(LingerSpec::Switch(false)) => Some(None),
            Some(LingerSpec::Switch(true)) => {
                input.error(
                    "options.linger",
                    "linger is a number of seconds (0 = abortive close) or false",
                );
                return None;
            }
            Some(LingerSpec::Seconds(seconds)) => Some(Some(seconds)),
        };
        let keepalive = match self.keepalive {
            None => None,
            Some(keepalive) => {
                for (name, value) in [
                    ("idle_ms", keepalive.idle_ms),
                    ("interval_ms", keepalive.interval_ms),
                ] {
                    if (1..1000).contains(&value) {
                        input.error(
                            &format!("options.keepalive.{name}"),
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
            user_timeout_ms: self.user_timeout_ms,
            nodelay: self.nodelay,
            send_buffer_bytes: self.send_buffer_bytes,
            recv_buffer_bytes: self.recv_buffer_bytes,
        })
    }
}
