//! The agent's handle on one holder process: send a request, await its
//! reply, learn how the process ended.

use super::protocol::{Envelope, HolderMessage, HolderReply, HolderRequest};
use crate::events::EventLog;
use crate::model::{EventKind, HolderExit, HolderId};
use crate::platform::{Current, Platform, wall_unix_ns};
use crate::sync::lock;
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{oneshot, watch};

/// What can go wrong talking to a holder.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// The holder process could not be started.
    #[error("cannot start a holder process from {exe}: {source}")]
    Spawn {
        /// The executable tried.
        exe: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The holder ended before it answered.
    #[error("{0}; its connections are gone")]
    Gone(HolderExit),
    /// The holder is still running but its pipe broke.
    #[error("lost the pipe to {holder}: {reason}")]
    Pipe {
        /// Which holder.
        holder: HolderId,
        /// What broke.
        reason: String,
    },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<HolderReply>>>>;

/// A running (or ended) holder process.
pub struct HolderProcess {
    id: HolderId,
    label: String,
    pid: u32,
    /// The request pipe; closed (None) once the holder has ended.
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    pending: Pending,
    next_request: AtomicU64,
    child: Arc<tokio::sync::Mutex<Child>>,
    exit: watch::Receiver<Option<HolderExit>>,
}

impl HolderProcess {
    /// Start `exe holder` and begin listening to it. Its end is logged to `events`.
    pub fn spawn(
        exe: &Path,
        id: HolderId,
        label: String,
        events: Arc<EventLog>,
    ) -> Result<Self, HolderError> {
        let spawn_error = |source| HolderError::Spawn {
            exe: exe.display().to_string(),
            source,
        };
        let mut child = Command::new(exe)
            .arg("holder")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        let missing = || spawn_error(std::io::Error::other("the holder's pipes were not set up"));
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let pid = child.id().unwrap_or(0);
        let pending: Pending = Arc::default();
        let child = Arc::new(tokio::sync::Mutex::new(child));
        let stdin = Arc::new(tokio::sync::Mutex::new(Some(stdin)));
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(listen(
            id,
            stdout,
            Arc::clone(&stdin),
            Arc::clone(&pending),
            Arc::clone(&child),
            exit_tx,
            events,
        ));
        Ok(Self {
            id,
            label,
            pid,
            stdin,
            pending,
            next_request: AtomicU64::new(1),
            child,
            exit,
        })
    }

    /// This holder's id.
    pub fn id(&self) -> HolderId {
        self.id
    }

    /// The label given at spawn, or when a holder started ahead was taken.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// This holder, labelled `label` (a holder started ahead is labelled
    /// when it is taken).
    #[must_use]
    pub fn labelled(mut self, label: String) -> Self {
        self.label = label;
        self
    }

    /// The holder's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How it ended, once it has.
    pub fn exited(&self) -> Option<HolderExit> {
        self.exit.borrow().clone()
    }

    /// Send a request and wait for its reply.
    pub async fn call(&self, request: HolderRequest) -> Result<HolderReply, HolderError> {
        if let Some(exit) = self.exited() {
            return Err(HolderError::Gone(exit));
        }
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        lock(&self.pending).insert(id, reply_tx);
        let envelope = Envelope {
            id,
            request,
            start_at_mono_ns: crate::schedule::moment_for_holder(),
        };
        // From here on, a caller that gives up (its RPC cancelled: the
        // controller stopped waiting, or is gone) stops the holder's work.
        let mut in_flight = InFlight {
            id,
            stdin: Arc::clone(&self.stdin),
            pending: Arc::clone(&self.pending),
            answered: false,
        };
        if let Err(error) = self.write(&envelope).await {
            in_flight.answered = true;
            lock(&self.pending).remove(&id);
            return Err(self.gone_or(error));
        }
        let reply = reply_rx.await;
        in_flight.answered = true;
        match reply {
            Ok(reply) => Ok(reply),
            // The listener drops every pending request when the holder ends.
            Err(_) => Err(HolderError::Gone(self.wait_exit().await)),
        }
    }

    /// Ask the holder to exit at once without closing its sockets, and wait
    /// until it has.
    pub async fn exit_without_close(&self, code: i32) -> Result<HolderExit, HolderError> {
        if let Some(exit) = self.exited() {
            return Err(HolderError::Gone(exit));
        }
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope {
            id,
            request: HolderRequest::Exit { code },
            start_at_mono_ns: crate::schedule::moment_for_holder(),
        };
        if let Err(error) = self.write(&envelope).await {
            return Err(self.gone_or(error));
        }
        Ok(self.wait_exit().await)
    }

    /// Kill the process (SIGKILL / TerminateProcess) and wait until it is gone.
    pub async fn kill(&self) -> Result<HolderExit, HolderError> {
        if let Some(exit) = self.exited() {
            return Err(HolderError::Gone(exit));
        }
        {
            let mut child = self.child.lock().await;
            if let Err(error) = child.start_kill() {
                // Already reaped: fall through and report how it ended.
                tracing::debug!(holder = %self.id, %error, "kill found the holder gone");
            }
        }
        Ok(self.wait_exit().await)
    }

    async fn write(&self, envelope: &Envelope) -> Result<(), String> {
        let mut line = serde_json::to_vec(envelope).map_err(|error| error.to_string())?;
        line.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        let stdin = stdin
            .as_mut()
            .ok_or_else(|| "the holder has ended".to_owned())?;
        stdin
            .write_all(&line)
            .await
            .map_err(|error| error.to_string())?;
        stdin.flush().await.map_err(|error| error.to_string())
    }

    fn gone_or(&self, reason: String) -> HolderError {
        match self.exited() {
            Some(exit) => HolderError::Gone(exit),
            None => HolderError::Pipe {
                holder: self.id,
                reason,
            },
        }
    }

    async fn wait_exit(&self) -> HolderExit {
        let mut exit = self.exit.clone();
        loop {
            if let Some(ended) = exit.borrow_and_update().clone() {
                return ended;
            }
            if exit.changed().await.is_err() {
                // The listener is gone without a word: nothing more will come.
                return HolderExit {
                    holder: self.id,
                    exit_code: None,
                    signal: None,
                    mono_ns: Current::monotonic_ns(),
                    wall_unix_ns: wall_unix_ns(),
                };
            }
        }
    }
}

/// A request sent to a holder and not yet answered. Dropped unanswered
/// (its caller's future was dropped), it tells the holder to stop it.
struct InFlight {
    id: u64,
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    pending: Pending,
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        lock(&self.pending).remove(&self.id);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cancel = Envelope {
            id: 0,
            request: HolderRequest::Cancel { request: self.id },
            start_at_mono_ns: None,
        };
        let stdin = Arc::clone(&self.stdin);
        runtime.spawn(async move {
            let Ok(mut line) = serde_json::to_vec(&cancel) else {
                return;
            };
            line.push(b'\n');
            if let Some(stdin) = stdin.lock().await.as_mut() {
                let _ = stdin.write_all(&line).await;
                let _ = stdin.flush().await;
            }
        });
    }
}

/// Read the holder's stdout until it closes; then reap the process, fail
/// what is still pending, and log how it ended.
async fn listen(
    id: HolderId,
    stdout: ChildStdout,
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    pending: Pending,
    child: Arc<tokio::sync::Mutex<Child>>,
    exit_tx: watch::Sender<Option<HolderExit>>,
    events: Arc<EventLog>,
) {
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => match serde_json::from_str::<HolderMessage>(&line) {
                Ok(HolderMessage::Reply { id: request, reply }) => {
                    if let Some(waiting) = lock(&pending).remove(&request) {
                        let _ = waiting.send(reply);
                    }
                }
                Ok(HolderMessage::Event(kind)) => {
                    events.push(kind);
                }
                Err(error) => tracing::error!(holder = %id, %error, "unreadable line from holder"),
            },
            Ok(None) => break,
            Err(error) => {
                tracing::error!(holder = %id, %error, "reading from holder failed");
                break;
            }
        }
    }
    let status = child.lock().await.wait().await;
    // Nobody will read the request pipe again: close our end.
    stdin.lock().await.take();
    let exit = HolderExit {
        holder: id,
        exit_code: status
            .as_ref()
            .ok()
            .and_then(std::process::ExitStatus::code),
        signal: status.as_ref().ok().and_then(Current::exit_signal),
        mono_ns: Current::monotonic_ns(),
        wall_unix_ns: wall_unix_ns(),
    };
    tracing::info!(%exit, "holder ended");
    // Log first (a reset that waits for the exit then clears it all), then
    // publish the exit, then fail the pending calls so they can report it.
    events.push(EventKind::HolderExited(exit.clone()));
    exit_tx.send_replace(Some(exit));
    lock(&pending).clear();
}
