//! Turning a socket call's result into an [`Observation`], with its timestamps.

use crate::errno::{self, OsFamily};
use crate::model::{Call, ConnId, Observation, Outcome};
use crate::platform::{Current, Platform, wall_unix_ns};
use std::io;

/// How a call ended, before it becomes an observation.
#[derive(Debug)]
pub enum End {
    /// Success.
    Ok,
    /// The peer's FIN.
    Eof,
    /// Nothing decisive before the deadline.
    Timeout,
    /// The OS said no.
    Error(io::Error),
}

/// Started when a socket call starts; finished into an observation.
#[derive(Clone, Copy, Debug)]
pub struct CallTimer {
    start_mono_ns: u64,
    start_wall_unix_ns: i64,
}

impl CallTimer {
    /// Note the clocks now.
    pub fn start() -> Self {
        Self {
            start_mono_ns: Current::monotonic_ns(),
            start_wall_unix_ns: wall_unix_ns(),
        }
    }

    /// The observation of `call` on `conn` that moved `bytes` and ended so.
    pub fn finish(self, call: Call, conn: ConnId, bytes: u64, end: End) -> Observation {
        let end_mono_ns = Current::monotonic_ns();
        let (outcome, error) = match end {
            End::Ok => (Outcome::Ok, None),
            End::Eof => (Outcome::Eof, None),
            End::Timeout => (Outcome::Timeout, None),
            End::Error(error) => (Outcome::Error, Some(errno::describe(&error))),
        };
        let sigpipe = call == Call::Send
            && error
                .as_ref()
                .is_some_and(|e| errno::raises_sigpipe(OsFamily::current(), e.code));
        Observation {
            call,
            conn,
            outcome,
            bytes,
            messages: 0,
            error,
            sigpipe,
            unread_bytes: 0,
            start_mono_ns: self.start_mono_ns,
            end_mono_ns,
            start_wall_unix_ns: self.start_wall_unix_ns,
            data: Vec::new(),
            content_crc32: 0,
        }
    }
}
