//! What the agent and a holder process say to each other over the holder's
//! stdin/stdout: one JSON object per line.
//!
//! Requests carry an id chosen by the agent; replies repeat it, so several
//! calls can be in flight at once (a long send while a kill arrives). Events
//! (a watched connection ended) come unasked.

use crate::model::{
    CloseMode, ConnId, EventKind, ListenerId, Observation, Payload, RecvMode, SocketOptions,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A request with the id its reply will carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Chosen by the agent, unique per holder.
    pub id: u64,
    /// The request.
    pub request: HolderRequest,
    /// A scheduled start (host monotonic ns): the holder makes the call
    /// then, not on arrival (see the agent's `schedule` module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_mono_ns: Option<u64>,
}

/// The socket on which options are set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketTarget {
    /// A connection.
    Conn(ConnId),
    /// A listener.
    Listener(ListenerId),
}

/// Everything the agent can ask a holder to do. Ids of new sockets are
/// chosen by the agent, so they are unique across all of its holders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HolderRequest {
    /// bind() + listen().
    Listen {
        /// Id for the new listener.
        listener: ListenerId,
        /// Where.
        address: SocketAddr,
        /// listen() backlog.
        backlog: u32,
        /// Applied before bind().
        options: SocketOptions,
    },
    /// close() a listener.
    StopListening {
        /// Which one.
        listener: ListenerId,
    },
    /// accept().
    Accept {
        /// On which listener.
        listener: ListenerId,
        /// Id for the new connection.
        conn: ConnId,
        /// How long to wait.
        timeout_ms: u32,
    },
    /// connect().
    Connect {
        /// Id for the new connection.
        conn: ConnId,
        /// Where.
        address: SocketAddr,
        /// Applied before connect().
        options: SocketOptions,
        /// How long to wait.
        timeout_ms: u32,
    },
    /// send().
    Send {
        /// On which connection.
        conn: ConnId,
        /// What.
        payload: Payload,
        /// How long it may block.
        timeout_ms: u32,
    },
    /// recv().
    Recv {
        /// On which connection.
        conn: ConnId,
        /// One call or until the end.
        mode: RecvMode,
        /// Byte limit (0: none for `All`, 64 KiB for `Once`).
        max_bytes: u64,
        /// How long to wait.
        timeout_ms: u32,
        /// Return the bytes read.
        return_data: bool,
    },
    /// close() or shutdown().
    Close {
        /// Which connection.
        conn: ConnId,
        /// How.
        mode: CloseMode,
        /// For `WithUnread`: how long to wait for unread data.
        timeout_ms: u32,
    },
    /// setsockopt(), then read the options back.
    SetOptions {
        /// Which socket.
        target: SocketTarget,
        /// What to set.
        options: SocketOptions,
    },
    /// Start the background reader of a connection.
    Watch {
        /// Which connection.
        conn: ConnId,
    },
    /// Set SO_LINGER {on, 0} on every connection, so that the process's
    /// death resets them all (a simulated reboot).
    ArmAbort,
    /// Exit the process at once, closing nothing (the kernel closes the sockets).
    Exit {
        /// The exit code.
        code: i32,
    },
    /// Stop the request with this envelope id: its caller gave up (the RPC
    /// was cancelled, or the controller is gone). A send stops sending, a
    /// wait stops waiting; the connection stays as it is. No reply.
    Cancel {
        /// The envelope id of the request to stop.
        request: u64,
    },
}

impl HolderRequest {
    /// The socket call (or holder action) this request makes, for traces.
    pub fn call_name(&self) -> &'static str {
        match self {
            Self::Listen { .. } => "listen",
            Self::StopListening { .. } => "stop-listening",
            Self::Accept { .. } => "accept",
            Self::Connect { .. } => "connect",
            Self::Send { .. } => "send",
            Self::Recv { .. } => "recv",
            Self::Close { mode, .. } => mode.call_name(),
            Self::SetOptions { .. } => "set-options",
            Self::Watch { .. } => "watch",
            Self::ArmAbort => "arm-abort",
            Self::Exit { .. } => "exit",
            Self::Cancel { .. } => "cancel",
        }
    }
}

/// Why a holder could not carry out a request (not a socket error: those
/// are observations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    /// No such connection or listener in this holder.
    NotFound,
    /// The object is in the wrong state for the request.
    FailedPrecondition,
    /// The request cannot work (e.g. the address cannot be bound).
    InvalidArgument,
}

/// What a holder answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HolderReply {
    /// Listening.
    Listening {
        /// The bound address (with the port chosen, if 0 was asked).
        local_address: SocketAddr,
    },
    /// The result of accept() or connect(); the connection exists only when
    /// the observation's outcome is `Ok`.
    Connected {
        /// Our end.
        local_address: Option<SocketAddr>,
        /// Their end.
        peer_address: Option<SocketAddr>,
        /// What the call returned.
        observation: Observation,
    },
    /// What a send, recv or close returned.
    Observed(Observation),
    /// The options as read back.
    Options(SocketOptions),
    /// The background reader runs.
    Watching,
    /// The listener is closed.
    StoppedListening,
    /// This many connections will reset when the process dies.
    Armed {
        /// How many.
        sockets: u32,
    },
    /// The request could not be carried out.
    Refused {
        /// Why, as a category.
        kind: RefusalKind,
        /// Why, for people.
        message: String,
    },
}

/// A line from a holder to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HolderMessage {
    /// The answer to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: HolderReply,
    },
    /// Something that happened unasked.
    Event(EventKind),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_survives_the_pipe() -> Result<(), serde_json::Error> {
        let sent = Envelope {
            id: 7,
            request: HolderRequest::Send {
                conn: ConnId(3),
                payload: Payload::Messages {
                    count: 10,
                    size: 100,
                    interval_ms: 0,
                },
                timeout_ms: 1000,
            },
            start_at_mono_ns: None,
        };
        let line = serde_json::to_string(&sent)?;
        assert!(!line.contains('\n'));
        // No scheduled start: not even a key (older holders read it too).
        assert!(!line.contains("start_at"), "{line}");
        assert_eq!(serde_json::from_str::<Envelope>(&line)?, sent);
        let scheduled = Envelope {
            start_at_mono_ns: Some(5_000_000_000),
            ..sent
        };
        let line = serde_json::to_string(&scheduled)?;
        assert_eq!(serde_json::from_str::<Envelope>(&line)?, scheduled);
        Ok(())
    }
}
