//! The agent's own vocabulary: ids, socket options, send/recv/close plans,
//! observations and events.
//!
//! These types are what the gRPC layer validates requests into, what travels
//! over the pipe to holder processes (hence serde), and what comes back. The
//! generated protobuf types stay in `grpc/`; nothing else depends on them.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} {}", $label, self.0)
            }
        }
    };
}

id_type!(
    /// A holder process ("the application" of a case).
    HolderId,
    "holder"
);
id_type!(
    /// A listening socket inside a holder.
    ListenerId,
    "listener"
);
id_type!(
    /// A connected TCP socket inside a holder.
    ConnId,
    "connection"
);

/// SO_LINGER as a request can set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Linger {
    /// The default: close() returns at once, the kernel sends queued data then FIN.
    Off,
    /// On with a timeout; `On { seconds: 0 }` is the abortive close (RST).
    On {
        /// Linger time.
        seconds: u32,
    },
}

/// TCP keepalive as a request can set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Keepalive {
    /// SO_KEEPALIVE off.
    Off,
    /// SO_KEEPALIVE on with its timers; `None` leaves a timer at the system value.
    On {
        /// Idle time before the first probe.
        idle_ms: Option<u32>,
        /// Time between probes.
        interval_ms: Option<u32>,
        /// Unanswered probes before the connection is dropped.
        count: Option<u32>,
    },
}

/// Socket options; `None` means "leave as is" when setting and "unknown on
/// this OS" when read back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketOptions {
    /// SO_LINGER.
    pub linger: Option<Linger>,
    /// SO_KEEPALIVE and its timers.
    pub keepalive: Option<Keepalive>,
    /// TCP_USER_TIMEOUT (Linux) / TCP_MAXRT (Windows); 0 = system default.
    pub user_timeout_ms: Option<u32>,
    /// TCP_NODELAY.
    pub nodelay: Option<bool>,
    /// SO_SNDBUF.
    pub send_buffer_bytes: Option<u32>,
    /// SO_RCVBUF.
    pub recv_buffer_bytes: Option<u32>,
}

/// What a send call puts on the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Exactly these bytes.
    Bytes(Vec<u8>),
    /// This many filler bytes.
    Filler(u64),
    /// Framed messages (8-byte header: u32 length, u32 sequence, big endian).
    Messages {
        /// How many.
        count: u32,
        /// Size of one message, header included (at least [`MESSAGE_HEADER_BYTES`]).
        size: u32,
        /// Pause between messages; 0 = flat out.
        interval_ms: u32,
    },
    /// An application's own message, `count` times; every `{seq}` in it
    /// becomes the message's sequence number (0, 1, 2, ...).
    Template {
        /// The message.
        text: Vec<u8>,
        /// How many.
        count: u64,
        /// Pause between messages; 0 = flat out.
        interval_ms: u32,
    },
}

impl Payload {
    /// How many bytes it sends in all (at least; a template's sequence
    /// numbers may add a few).
    pub fn total_bytes(&self) -> u64 {
        match self {
            Self::Bytes(bytes) => bytes.len() as u64,
            Self::Filler(count) => *count,
            Self::Messages { count, size, .. } => {
                u64::from(*count).saturating_mul(u64::from(*size).max(MESSAGE_HEADER_BYTES as u64))
            }
            Self::Template { text, count, .. } => (text.len() as u64).saturating_mul(*count),
        }
    }
}

/// What a template's `{seq}` placeholder is replaced with.
pub const SEQUENCE_PLACEHOLDER: &[u8] = b"{seq}";

/// A template with its placeholders filled for message `sequence`.
pub fn fill_template(text: &[u8], sequence: u64, into: &mut Vec<u8>) {
    into.clear();
    let number = sequence.to_string();
    let mut rest = text;
    while let Some(at) = rest
        .windows(SEQUENCE_PLACEHOLDER.len())
        .position(|window| window == SEQUENCE_PLACEHOLDER)
    {
        into.extend_from_slice(&rest[..at]);
        into.extend_from_slice(number.as_bytes());
        rest = &rest[at + SEQUENCE_PLACEHOLDER.len()..];
    }
    into.extend_from_slice(rest);
}

pub use faultlab_proto::{CloseMode, MESSAGE_HEADER_BYTES};

/// How a recv call reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecvMode {
    /// One recv(): whatever is there, as soon as anything is.
    Once,
    /// Read until the byte limit, EOF, an error or the timeout.
    All,
}

/// Which socket call an observation is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// connect().
    Connect,
    /// accept().
    Accept,
    /// send().
    Send,
    /// recv().
    Recv,
    /// close().
    Close,
    /// shutdown().
    Shutdown,
    /// The background reader started by a watch.
    Watch,
}

/// How a socket call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Success.
    Ok,
    /// recv() returned 0: the peer's FIN.
    Eof,
    /// The OS returned an error.
    Error,
    /// Nothing decisive happened before the deadline.
    Timeout,
}

/// An OS error as the socket API returned it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsError {
    /// Raw code: errno, or the WSA code on Windows.
    pub code: i32,
    /// Portable name, e.g. "ECONNRESET" for both 104 and 10054.
    pub name: String,
    /// The OS's own text.
    pub message: String,
}

/// What one socket call really returned, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// The call.
    pub call: Call,
    /// The connection (0 when a connect failed).
    pub conn: ConnId,
    /// How it ended.
    pub outcome: Outcome,
    /// Bytes moved, also those moved before an error.
    pub bytes: u64,
    /// Complete framed messages sent.
    pub messages: u64,
    /// The error, when `outcome` is `Error`.
    pub error: Option<OsError>,
    /// The call would have raised SIGPIPE had it not been suppressed.
    pub sigpipe: bool,
    /// For close: bytes that sat unread in the receive buffer.
    pub unread_bytes: u64,
    /// Monotonic clock at the start of the call.
    pub start_mono_ns: u64,
    /// Monotonic clock at its end.
    pub end_mono_ns: u64,
    /// Wall clock at the start of the call.
    pub start_wall_unix_ns: i64,
    /// Bytes read, when asked for.
    pub data: Vec<u8>,
    /// Send and recv: CRC-32 of all the bytes moved, in order.
    #[serde(default)]
    pub content_crc32: u32,
}

/// How a holder process ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderExit {
    /// Which holder.
    pub holder: HolderId,
    /// Exit code, when it exited by itself.
    pub exit_code: Option<i32>,
    /// Signal, when one ended it (Unix).
    pub signal: Option<i32>,
    /// Monotonic clock when the agent saw it end.
    pub mono_ns: u64,
    /// Wall clock then.
    pub wall_unix_ns: i64,
}

impl fmt::Display for HolderExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.exit_code, self.signal) {
            (_, Some(signal)) => write!(f, "{} killed by signal {signal}", self.holder),
            (Some(code), None) => write!(f, "{} exited with code {code}", self.holder),
            (None, None) => write!(f, "{} ended", self.holder),
        }
    }
}

/// Something that happened without being asked for by a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A holder process ended.
    HolderExited(HolderExit),
    /// A watched connection saw its peer's FIN or an error.
    ConnectionEnded(Observation),
}

/// An event with its place in the agent's event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Monotonic clock when it was logged.
    pub mono_ns: u64,
    /// Wall clock then.
    pub wall_unix_ns: i64,
    /// What happened.
    pub kind: EventKind,
}

#[cfg(test)]
mod tests {
    use super::fill_template;

    #[test]
    fn a_template_gets_its_sequence_number_wherever_it_asks() {
        let mut message = Vec::new();
        fill_template(b"PING {seq} of {seq}\n", 42, &mut message);
        assert_eq!(message, b"PING 42 of 42\n");
        fill_template(b"no placeholder {se", 7, &mut message);
        assert_eq!(message, b"no placeholder {se");
    }
}
