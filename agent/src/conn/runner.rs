//! The holder process: reads requests from stdin, runs each on the
//! connection engine concurrently, writes replies and events to stdout.
//!
//! It exits when its stdin closes, so a holder never outlives its agent.

use super::Connections;
use crate::holder::protocol::{Envelope, HolderMessage, HolderRequest};
use crate::platform::{Current, Platform, StdioPipes};
use crate::schedule::at_moment;
use crate::sync::lock;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// Run the holder until the agent hangs up (or asks it to exit).
pub fn run() -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve_pipe())
}

async fn serve_pipe() -> io::Result<()> {
    let StdioPipes { input, output } = Current::stdio_pipes();
    let (outbox, mut outgoing) = mpsc::unbounded_channel::<HolderMessage>();
    let writer = tokio::spawn(async move {
        let mut stdout = output;
        while let Some(message) = outgoing.recv().await {
            let mut line = serde_json::to_vec(&message)?;
            line.push(b'\n');
            stdout.write_all(&line).await?;
            stdout.flush().await?;
        }
        io::Result::Ok(())
    });
    let engine = Arc::new(Connections::new(outbox.clone()));
    // The requests under way, by envelope id: a cancel aborts one.
    let running: Arc<Mutex<HashMap<u64, AbortHandle>>> = Arc::default();
    let mut lines = BufReader::new(input).lines();
    while let Some(line) = lines.next_line().await? {
        let envelope: Envelope = match serde_json::from_str(&line) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::error!(%error, "holder: unreadable request from the agent");
                continue;
            }
        };
        let moment = envelope.start_at_mono_ns;
        match envelope.request {
            HolderRequest::Exit { code } => {
                // The point of this request: no destructor, no close(); the
                // kernel cleans up after the process as after a crash.
                at_moment(moment, async { std::process::exit(code) }).await;
            }
            HolderRequest::Cancel { request } => {
                if let Some(task) = lock(&running).remove(&request) {
                    task.abort();
                }
                continue;
            }
            _ => {}
        }
        let engine = Arc::clone(&engine);
        let outbox = outbox.clone();
        let finished = Arc::clone(&running);
        let id = envelope.id;
        let task = tokio::spawn(async move {
            let reply = at_moment(moment, engine.handle(envelope.request)).await;
            lock(&finished).remove(&id);
            let _ = outbox.send(HolderMessage::Reply { id, reply });
        });
        // On this single-threaded runtime the task cannot run (and remove
        // itself) before it is entered here.
        lock(&running).insert(id, task.abort_handle());
    }
    drop(outbox);
    drop(engine);
    writer.abort();
    Ok(())
}
