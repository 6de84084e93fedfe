//! The connection engine: real TCP sockets and every call a case makes on
//! them, run inside a holder process.
//!
//! Sockets are non-blocking and driven by tokio, but every call is one real
//! socket call (or a loop of them) whose OS result is kept as it came: the
//! raw error code, bytes moved before it, EOF as EOF. Nothing retries or
//! hides an error. Each call answers with an [`Observation`]. [`runner`] is
//! the holder process's loop around it: requests in over the pipe, replies
//! and events out.

mod observe;
mod options;
pub mod runner;

pub use observe::{CallTimer, End};

use crate::holder::protocol::{
    HolderMessage, HolderReply, HolderRequest, RefusalKind, SocketTarget,
};
use crate::model::{
    Call, CloseMode, ConnId, EventKind, ListenerId, MESSAGE_HEADER_BYTES, Observation, Payload,
    RecvMode, SocketOptions,
};
use crate::platform::{Current, Platform, millis};
use crate::sync::lock;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

/// Bytes read by one `RecvMode::Once` call when the request sets no limit.
const DEFAULT_RECV_BYTES: u64 = 64 * 1024;
/// At most this many received bytes are returned to the caller.
const MAX_RETURNED_BYTES: usize = 1024 * 1024;
/// Size of the filler chunks and read buffers.
const CHUNK_BYTES: usize = 64 * 1024;
/// How often `CloseMode::WithUnread` looks for unread data.
const UNREAD_POLL: Duration = Duration::from_millis(1);

/// A request the engine will not carry out, with the reason.
#[derive(Debug)]
struct Refusal {
    kind: RefusalKind,
    message: String,
}

impl Refusal {
    fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn precondition(message: impl Into<String>) -> Self {
        Self::new(RefusalKind::FailedPrecondition, message)
    }
}

type Handled = Result<HolderReply, Refusal>;

/// A connected socket and its background reader, if one was started.
struct Conn {
    id: ConnId,
    stream: TcpStream,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl Conn {
    fn watcher(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        crate::sync::lock(&self.watcher)
    }

    fn is_watched(&self) -> bool {
        self.watcher().is_some()
    }
}

/// All sockets of one holder process.
pub struct Connections {
    listeners: Mutex<HashMap<ListenerId, Arc<TcpListener>>>,
    conns: Mutex<HashMap<ConnId, Arc<Conn>>>,
    outbox: UnboundedSender<HolderMessage>,
}

fn deadline(timeout_ms: u32) -> Duration {
    millis(timeout_ms)
}

impl Connections {
    /// An engine that reports events (watched connections ending) to `outbox`.
    pub fn new(outbox: UnboundedSender<HolderMessage>) -> Self {
        Self {
            listeners: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            outbox,
        }
    }

    /// Carry out one request. `Exit` is the holder's own business and is
    /// refused here.
    pub async fn handle(&self, request: HolderRequest) -> HolderReply {
        let handled = match request {
            HolderRequest::Listen {
                listener,
                address,
                backlog,
                options,
            } => self.listen(listener, address, backlog, &options),
            HolderRequest::StopListening { listener } => self.stop_listening(listener),
            HolderRequest::Accept {
                listener,
                conn,
                timeout_ms,
            } => self.accept(listener, conn, timeout_ms).await,
            HolderRequest::Connect {
                conn,
                address,
                options,
                timeout_ms,
            } => self.connect(conn, address, &options, timeout_ms).await,
            HolderRequest::Send {
                conn,
                payload,
                timeout_ms,
            } => self.send(conn, &payload, timeout_ms).await,
            HolderRequest::Recv {
                conn,
                mode,
                max_bytes,
                timeout_ms,
                return_data,
            } => {
                self.recv(conn, mode, max_bytes, timeout_ms, return_data)
                    .await
            }
            HolderRequest::Close {
                conn,
                mode,
                timeout_ms,
            } => self.close(conn, mode, timeout_ms).await,
            HolderRequest::SetOptions { target, options } => self.set_options(target, &options),
            HolderRequest::Watch { conn } => self.watch(conn),
            HolderRequest::ArmAbort => Ok(self.arm_abort()),
            HolderRequest::Exit { .. } | HolderRequest::Cancel { .. } => {
                Err(Refusal::precondition(
                    "exit and cancel are carried out by the holder process, not its connections",
                ))
            }
        };
        handled.unwrap_or_else(|refusal| HolderReply::Refused {
            kind: refusal.kind,
            message: refusal.message,
        })
    }

    fn conn(&self, id: ConnId) -> Result<Arc<Conn>, Refusal> {
        lock(&self.conns)
            .get(&id)
            .cloned()
            .ok_or_else(|| Refusal::new(RefusalKind::NotFound, format!("{id} is not open")))
    }

    fn listener(&self, id: ListenerId) -> Result<Arc<TcpListener>, Refusal> {
        lock(&self.listeners)
            .get(&id)
            .cloned()
            .ok_or_else(|| Refusal::new(RefusalKind::NotFound, format!("{id} is not open")))
    }

    fn register(&self, id: ConnId, stream: TcpStream) {
        let conn = Conn {
            id,
            stream,
            watcher: Mutex::new(None),
        };
        lock(&self.conns).insert(id, Arc::new(conn));
    }

    fn listen(
        &self,
        id: ListenerId,
        address: SocketAddr,
        backlog: u32,
        options: &SocketOptions,
    ) -> Handled {
        let cannot = |error: io::Error| {
            Refusal::precondition(format!("cannot listen on {address}: {error}"))
        };
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(cannot)?;
        Current::allow_address_reuse(&socket).map_err(cannot)?;
        options::apply(&SockRef::from(&socket), options).map_err(cannot)?;
        socket.bind(&address.into()).map_err(cannot)?;
        socket
            .listen(i32::try_from(backlog).unwrap_or(i32::MAX))
            .map_err(cannot)?;
        socket.set_nonblocking(true).map_err(cannot)?;
        let listener = TcpListener::from_std(socket.into()).map_err(cannot)?;
        let local_address = listener.local_addr().map_err(cannot)?;
        lock(&self.listeners).insert(id, Arc::new(listener));
        Ok(HolderReply::Listening { local_address })
    }

    fn stop_listening(&self, id: ListenerId) -> Handled {
        let listener = lock(&self.listeners)
            .remove(&id)
            .ok_or_else(|| Refusal::new(RefusalKind::NotFound, format!("{id} is not open")))?;
        // An accept in progress holds a reference; the socket closes when it ends.
        drop(listener);
        Ok(HolderReply::StoppedListening)
    }

    async fn accept(&self, listener: ListenerId, conn: ConnId, timeout_ms: u32) -> Handled {
        let listener = self.listener(listener)?;
        let timer = CallTimer::start();
        let accepted = tokio::time::timeout(deadline(timeout_ms), listener.accept()).await;
        Ok(match accepted {
            Ok(Ok((stream, peer))) => {
                let local = stream.local_addr().ok();
                self.register(conn, stream);
                connected(
                    local,
                    Some(peer),
                    timer.finish(Call::Accept, conn, 0, End::Ok),
                )
            }
            Ok(Err(error)) => failed_connection(
                None,
                timer.finish(Call::Accept, ConnId(0), 0, End::Error(error)),
            ),
            Err(_) => {
                failed_connection(None, timer.finish(Call::Accept, ConnId(0), 0, End::Timeout))
            }
        })
    }

    async fn connect(
        &self,
        conn: ConnId,
        address: SocketAddr,
        options: &SocketOptions,
        timeout_ms: u32,
    ) -> Handled {
        let cannot = |error: io::Error| {
            Refusal::new(
                RefusalKind::InvalidArgument,
                format!("cannot prepare a socket for {address}: {error}"),
            )
        };
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(cannot)?;
        options::apply(&SockRef::from(&socket), options).map_err(cannot)?;
        socket.set_nonblocking(true).map_err(cannot)?;
        let timer = CallTimer::start();
        // Started by hand (as tokio's connect does it), so that the address
        // the kernel bound is known even when the connection fails: the
        // SYNs a timed-out connect sent are told apart on the wire by it.
        let started = match socket.connect(&address.into()) {
            Err(error) if !in_progress(&error) => Err(error),
            _ => Ok(()),
        };
        let local = socket
            .local_addr()
            .ok()
            .and_then(|bound| bound.as_socket())
            .filter(|bound| bound.port() != 0);
        let connecting = async {
            started?;
            let stream = TcpStream::from_std(socket.into())?;
            stream.writable().await?;
            match stream.take_error()? {
                Some(error) => Err(error),
                None => Ok(stream),
            }
        };
        Ok(
            match tokio::time::timeout(deadline(timeout_ms), connecting).await {
                Ok(Ok(stream)) => {
                    let peer = stream.peer_addr().ok();
                    self.register(conn, stream);
                    connected(local, peer, timer.finish(Call::Connect, conn, 0, End::Ok))
                }
                Ok(Err(error)) => failed_connection(
                    local,
                    timer.finish(Call::Connect, ConnId(0), 0, End::Error(error)),
                ),
                Err(_) => failed_connection(
                    local,
                    timer.finish(Call::Connect, ConnId(0), 0, End::Timeout),
                ),
            },
        )
    }

    async fn send(&self, id: ConnId, payload: &Payload, timeout_ms: u32) -> Handled {
        let conn = self.conn(id)?;
        let timer = CallTimer::start();
        let mut progress = Progress::default();
        let sent = tokio::time::timeout(
            deadline(timeout_ms),
            send_payload(&conn.stream, payload, &mut progress),
        )
        .await;
        let end = match sent {
            Ok(Ok(())) => End::Ok,
            Ok(Err(error)) => End::Error(error),
            Err(_) => End::Timeout,
        };
        let mut observation = timer.finish(Call::Send, id, progress.bytes, end);
        observation.messages = progress.messages;
        observation.content_crc32 = progress.content.finalize();
        Ok(HolderReply::Observed(observation))
    }

    async fn recv(
        &self,
        id: ConnId,
        mode: RecvMode,
        max_bytes: u64,
        timeout_ms: u32,
        return_data: bool,
    ) -> Handled {
        let conn = self.conn(id)?;
        if conn.is_watched() {
            return Err(Refusal::precondition(format!(
                "{id} is watched: its background reader takes all it receives"
            )));
        }
        let timer = CallTimer::start();
        let mut received = Received::new(return_data);
        let limit = match (mode, max_bytes) {
            (RecvMode::Once, 0) => DEFAULT_RECV_BYTES,
            (RecvMode::All, 0) => u64::MAX,
            (_, limit) => limit,
        };
        let reading = tokio::time::timeout(
            deadline(timeout_ms),
            receive(&conn.stream, mode, limit, &mut received),
        )
        .await;
        let end = reading.unwrap_or(End::Timeout);
        let mut observation = timer.finish(Call::Recv, id, received.bytes, end);
        observation.data = received.data;
        observation.content_crc32 = received.content.finalize();
        Ok(HolderReply::Observed(observation))
    }

    async fn close(&self, id: ConnId, mode: CloseMode, timeout_ms: u32) -> Handled {
        let conn = self.conn(id)?;
        let timer = CallTimer::start();
        if let Some(how) = shutdown_direction(mode) {
            let end = match SockRef::from(&conn.stream).shutdown(how) {
                Ok(()) => End::Ok,
                Err(error) => End::Error(error),
            };
            return Ok(HolderReply::Observed(timer.finish(
                Call::Shutdown,
                id,
                0,
                end,
            )));
        }
        if mode == CloseMode::WithUnread {
            if conn.is_watched() {
                return Err(Refusal::precondition(format!(
                    "{id} is watched: its background reader leaves nothing unread"
                )));
            }
            if !wait_for_unread(&conn.stream, timeout_ms).await {
                return Ok(HolderReply::Observed(timer.finish(
                    Call::Close,
                    id,
                    0,
                    End::Timeout,
                )));
            }
        }
        stop_watcher(&conn).await;
        drop(conn);
        let conn = self.take(id)?;
        let unread = Current::unread_bytes(&SockRef::from(&conn.stream)).unwrap_or(0);
        let end = if mode == CloseMode::Abort {
            SockRef::from(&conn.stream)
                .set_linger(Some(Duration::ZERO))
                .map_or_else(End::Error, |()| End::Ok)
        } else {
            End::Ok
        };
        drop(conn);
        let mut observation = timer.finish(Call::Close, id, 0, end);
        observation.unread_bytes = unread;
        Ok(HolderReply::Observed(observation))
    }

    /// Remove a connection so that dropping it really closes the socket.
    fn take(&self, id: ConnId) -> Result<Conn, Refusal> {
        let mut conns = lock(&self.conns);
        let shared = conns
            .remove(&id)
            .ok_or_else(|| Refusal::new(RefusalKind::NotFound, format!("{id} is not open")))?;
        Arc::try_unwrap(shared).map_err(|shared| {
            conns.insert(id, shared);
            Refusal::precondition(format!(
                "{id} has a call in progress; wait for it, or kill the holder"
            ))
        })
    }

    fn set_options(&self, target: SocketTarget, options: &SocketOptions) -> Handled {
        let invalid = |error: io::Error| {
            Refusal::new(
                RefusalKind::InvalidArgument,
                format!("cannot set socket options: {error}"),
            )
        };
        let apply_and_read = |socket: SockRef<'_>| {
            options::apply(&socket, options).map_err(invalid)?;
            options::read(&socket).map_err(invalid)
        };
        let read = match target {
            SocketTarget::Conn(id) => apply_and_read(SockRef::from(&self.conn(id)?.stream))?,
            SocketTarget::Listener(id) => apply_and_read(SockRef::from(&*self.listener(id)?))?,
        };
        Ok(HolderReply::Options(read))
    }

    fn arm_abort(&self) -> HolderReply {
        let conns = lock(&self.conns);
        let armed = conns
            .values()
            .filter(|conn| {
                SockRef::from(&conn.stream)
                    .set_linger(Some(Duration::ZERO))
                    .is_ok()
            })
            .count();
        HolderReply::Armed {
            sockets: u32::try_from(armed).unwrap_or(u32::MAX),
        }
    }

    fn watch(&self, id: ConnId) -> Handled {
        let conn = self.conn(id)?;
        let mut watcher = conn.watcher();
        if watcher.is_some() {
            return Err(Refusal::precondition(format!("{id} is already watched")));
        }
        let reader = Arc::clone(&conn);
        let outbox = self.outbox.clone();
        *watcher = Some(tokio::spawn(async move {
            let timer = CallTimer::start();
            let mut received = Received::new(false);
            let end = receive(&reader.stream, RecvMode::All, u64::MAX, &mut received).await;
            let observation = timer.finish(Call::Watch, reader.id, received.bytes, end);
            // The agent may be gone; then nobody is left to tell.
            let _ = outbox.send(HolderMessage::Event(EventKind::ConnectionEnded(
                observation,
            )));
        }));
        Ok(HolderReply::Watching)
    }
}

fn connected(
    local_address: Option<SocketAddr>,
    peer_address: Option<SocketAddr>,
    observation: Observation,
) -> HolderReply {
    HolderReply::Connected {
        local_address,
        peer_address,
        observation,
    }
}

/// A connection that did not open; `local_address` is where its SYNs came
/// from, when the kernel got as far as binding it.
fn failed_connection(local_address: Option<SocketAddr>, observation: Observation) -> HolderReply {
    connected(local_address, None, observation)
}

/// Whether a non-blocking connect's error only says it is under way.
fn in_progress(error: &io::Error) -> bool {
    #[cfg(unix)]
    let started = error.raw_os_error() == Some(libc::EINPROGRESS);
    #[cfg(windows)]
    let started = error.kind() == io::ErrorKind::WouldBlock;
    started
}

fn shutdown_direction(mode: CloseMode) -> Option<Shutdown> {
    match mode {
        CloseMode::ShutdownWrite => Some(Shutdown::Write),
        CloseMode::ShutdownRead => Some(Shutdown::Read),
        CloseMode::ShutdownBoth => Some(Shutdown::Both),
        CloseMode::Graceful | CloseMode::Abort | CloseMode::WithUnread => None,
    }
}

async fn stop_watcher(conn: &Conn) {
    let running = conn.watcher().take();
    if let Some(reader) = running {
        reader.abort();
        // Cancelled or finished: either way its reference to the socket is gone.
        let _ = reader.await;
    }
}

async fn wait_for_unread(stream: &TcpStream, timeout_ms: u32) -> bool {
    let looking = async {
        loop {
            if Current::unread_bytes(&SockRef::from(stream)).unwrap_or(0) > 0 {
                return;
            }
            tokio::time::sleep(UNREAD_POLL).await;
        }
    };
    tokio::time::timeout(deadline(timeout_ms), looking)
        .await
        .is_ok()
}

/// What a send has moved so far (kept when a timeout cuts it short).
#[derive(Default)]
struct Progress {
    bytes: u64,
    messages: u64,
    /// What was written, fingerprinted.
    content: crc32fast::Hasher,
}

async fn write_all(stream: &TcpStream, mut buf: &[u8], progress: &mut Progress) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(written) => {
                progress.bytes += written as u64;
                progress.content.update(&buf[..written]);
                buf = &buf[written..];
                // A socket that never fills (a fast reader) never makes
                // this wait: let the holder's other work run between
                // writes, the agent's requests on its pipe among them (a
                // cancel, a close, a recv on another connection).
                tokio::task::yield_now().await;
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

async fn send_payload(
    stream: &TcpStream,
    payload: &Payload,
    progress: &mut Progress,
) -> io::Result<()> {
    match payload {
        Payload::Bytes(bytes) => write_all(stream, bytes, progress).await,
        Payload::Filler(count) => {
            let chunk = vec![b'.'; CHUNK_BYTES];
            let mut left = *count;
            while left > 0 {
                let now = usize::try_from(left)
                    .unwrap_or(CHUNK_BYTES)
                    .min(CHUNK_BYTES);
                write_all(stream, &chunk[..now], progress).await?;
                left -= now as u64;
            }
            Ok(())
        }
        Payload::Messages {
            count,
            size,
            interval_ms,
        } => {
            let mut message = vec![b'm'; (*size).max(MESSAGE_HEADER_BYTES) as usize];
            message[..4].copy_from_slice(&size.to_be_bytes());
            for sequence in 0..*count {
                message[4..8].copy_from_slice(&sequence.to_be_bytes());
                write_all(stream, &message, progress).await?;
                progress.messages += 1;
                if *interval_ms > 0 && sequence + 1 < *count {
                    tokio::time::sleep(millis(*interval_ms)).await;
                }
            }
            Ok(())
        }
        Payload::Template {
            text,
            count,
            interval_ms,
        } => {
            let mut message = Vec::with_capacity(text.len() + 20);
            for sequence in 0..*count {
                crate::model::fill_template(text, sequence, &mut message);
                write_all(stream, &message, progress).await?;
                progress.messages += 1;
                if *interval_ms > 0 && sequence + 1 < *count {
                    tokio::time::sleep(millis(*interval_ms)).await;
                }
            }
            Ok(())
        }
    }
}

/// What a recv has read so far (kept when a timeout cuts it short).
struct Received {
    bytes: u64,
    keep: bool,
    data: Vec<u8>,
    /// What was read, fingerprinted.
    content: crc32fast::Hasher,
}

impl Received {
    fn new(keep: bool) -> Self {
        Self {
            bytes: 0,
            keep,
            data: Vec::new(),
            content: crc32fast::Hasher::new(),
        }
    }

    fn take(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        self.content.update(chunk);
        if self.keep {
            let room = MAX_RETURNED_BYTES.saturating_sub(self.data.len());
            self.data.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }
}

async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
    }
}

/// Read per `mode` until `limit` bytes, EOF or an error.
async fn receive(stream: &TcpStream, mode: RecvMode, limit: u64, received: &mut Received) -> End {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let room = usize::try_from(limit - received.bytes)
            .unwrap_or(CHUNK_BYTES)
            .min(CHUNK_BYTES);
        match read_some(stream, &mut buf[..room]).await {
            Ok(0) => return End::Eof,
            Ok(read) => {
                received.take(&buf[..read]);
                if mode == RecvMode::Once || received.bytes >= limit {
                    return End::Ok;
                }
                // A flood never empties the socket: let the rest of the
                // holder run between reads (see `write_all`).
                tokio::task::yield_now().await;
            }
            Err(error) => return End::Error(error),
        }
    }
}
