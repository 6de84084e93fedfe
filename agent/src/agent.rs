//! The agent's domain service: which holders exist, which holder owns which
//! socket, and routing each request to the right holder.
//!
//! Everything a client can ask of an agent is a method here, with validated
//! domain types in and out; `grpc.rs` only translates.

use crate::error::AgentError;
use crate::events::{DEFAULT_CAPACITY, EventLog};
use crate::holder::HolderProcess;
use crate::holder::protocol::{HolderReply, HolderRequest, RefusalKind, SocketTarget};
use crate::hostinfo::HostInfo;
use crate::model::{
    CloseMode, ConnId, HolderExit, HolderId, ListenerId, Observation, Payload, RecvMode,
    SocketOptions,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How an agent is set up.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The executable started as `<exe> holder` for each holder process.
    pub holder_exe: PathBuf,
}

/// The result of accept() or connect().
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The new connection, when the call succeeded.
    pub conn: Option<ConnId>,
    /// Our end.
    pub local_address: Option<SocketAddr>,
    /// Their end.
    pub peer_address: Option<SocketAddr>,
    /// What the call returned.
    pub observation: Observation,
}

/// One agent: its holders and the sockets they own.
pub struct Agent {
    config: AgentConfig,
    host: HostInfo,
    holders: Mutex<HashMap<HolderId, Arc<HolderProcess>>>,
    /// Owner of every listener and connection, by raw id.
    owners: Mutex<HashMap<u64, HolderId>>,
    next_id: AtomicU64,
    events: Arc<EventLog>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unexpected(reply: &HolderReply) -> AgentError {
    AgentError::Internal(format!("holder gave an unexpected reply: {reply:?}"))
}

impl Agent {
    /// A new agent with no holders.
    pub fn new(config: AgentConfig) -> Self {
        Self {
            config,
            host: HostInfo::gather(),
            holders: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            events: Arc::new(EventLog::new(DEFAULT_CAPACITY)),
        }
    }

    /// The host this agent runs on.
    pub fn host_info(&self) -> &HostInfo {
        &self.host
    }

    /// The event log.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Start a holder process.
    pub fn spawn_holder(&self, label: String) -> Result<(HolderId, u32), AgentError> {
        let id = HolderId(self.new_id());
        let holder =
            HolderProcess::spawn(&self.config.holder_exe, id, label, Arc::clone(&self.events))?;
        let pid = holder.pid();
        tracing::info!(%id, label = holder.label(), pid, "holder started");
        lock(&self.holders).insert(id, Arc::new(holder));
        Ok((id, pid))
    }

    fn holder(&self, id: HolderId) -> Result<Arc<HolderProcess>, AgentError> {
        lock(&self.holders)
            .get(&id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("{id} does not exist")))
    }

    fn owner_of(&self, raw_id: u64, what: &str) -> Result<Arc<HolderProcess>, AgentError> {
        let owner = lock(&self.owners)
            .get(&raw_id)
            .copied()
            .ok_or_else(|| AgentError::NotFound(format!("{what} {raw_id} does not exist")))?;
        self.holder(owner)
    }

    /// Make a holder exit without closing its sockets.
    pub async fn exit_holder(&self, id: HolderId, code: i32) -> Result<HolderExit, AgentError> {
        Ok(self.holder(id)?.exit_without_close(code).await?)
    }

    /// Kill a holder.
    pub async fn kill_holder(&self, id: HolderId) -> Result<HolderExit, AgentError> {
        Ok(self.holder(id)?.kill().await?)
    }

    async fn call(
        holder: &HolderProcess,
        request: HolderRequest,
    ) -> Result<HolderReply, AgentError> {
        match holder.call(request).await? {
            HolderReply::Refused { kind, message } => Err(match kind {
                RefusalKind::NotFound => AgentError::NotFound(message),
                RefusalKind::FailedPrecondition => AgentError::FailedPrecondition(message),
                RefusalKind::InvalidArgument => AgentError::InvalidArgument(message),
            }),
            reply => Ok(reply),
        }
    }

    /// bind() + listen() in a holder.
    pub async fn listen(
        &self,
        holder: HolderId,
        address: SocketAddr,
        backlog: u32,
        options: SocketOptions,
    ) -> Result<(ListenerId, SocketAddr), AgentError> {
        let holder = self.holder(holder)?;
        let listener = ListenerId(self.new_id());
        let request = HolderRequest::Listen {
            listener,
            address,
            backlog,
            options,
        };
        match Self::call(&holder, request).await? {
            HolderReply::Listening { local_address } => {
                lock(&self.owners).insert(listener.0, holder.id());
                Ok((listener, local_address))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Close a listener.
    pub async fn stop_listening(&self, listener: ListenerId) -> Result<(), AgentError> {
        let holder = self.owner_of(listener.0, "listener")?;
        match Self::call(&holder, HolderRequest::StopListening { listener }).await? {
            HolderReply::StoppedListening => {
                lock(&self.owners).remove(&listener.0);
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    /// accept() on a listener.
    pub async fn accept(
        &self,
        listener: ListenerId,
        timeout_ms: u32,
    ) -> Result<Connection, AgentError> {
        let holder = self.owner_of(listener.0, "listener")?;
        let conn = ConnId(self.new_id());
        let request = HolderRequest::Accept {
            listener,
            conn,
            timeout_ms,
        };
        self.connection(&holder, conn, request).await
    }

    /// connect() from a holder.
    pub async fn connect(
        &self,
        holder: HolderId,
        address: SocketAddr,
        options: SocketOptions,
        timeout_ms: u32,
    ) -> Result<Connection, AgentError> {
        let holder = self.holder(holder)?;
        let conn = ConnId(self.new_id());
        let request = HolderRequest::Connect {
            conn,
            address,
            options,
            timeout_ms,
        };
        self.connection(&holder, conn, request).await
    }

    async fn connection(
        &self,
        holder: &HolderProcess,
        conn: ConnId,
        request: HolderRequest,
    ) -> Result<Connection, AgentError> {
        match Self::call(holder, request).await? {
            HolderReply::Connected {
                local_address,
                peer_address,
                observation,
            } => {
                let established = observation.conn == conn;
                if established {
                    lock(&self.owners).insert(conn.0, holder.id());
                }
                Ok(Connection {
                    conn: established.then_some(conn),
                    local_address,
                    peer_address,
                    observation,
                })
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn observe(
        &self,
        conn: ConnId,
        request: HolderRequest,
    ) -> Result<Observation, AgentError> {
        let holder = self.owner_of(conn.0, "connection")?;
        match Self::call(&holder, request).await? {
            HolderReply::Observed(observation) => Ok(observation),
            other => Err(unexpected(&other)),
        }
    }

    /// send() on a connection.
    pub async fn send(
        &self,
        conn: ConnId,
        payload: Payload,
        timeout_ms: u32,
    ) -> Result<Observation, AgentError> {
        let request = HolderRequest::Send {
            conn,
            payload,
            timeout_ms,
        };
        self.observe(conn, request).await
    }

    /// recv() on a connection.
    pub async fn recv(
        &self,
        conn: ConnId,
        mode: RecvMode,
        max_bytes: u64,
        timeout_ms: u32,
        return_data: bool,
    ) -> Result<Observation, AgentError> {
        let request = HolderRequest::Recv {
            conn,
            mode,
            max_bytes,
            timeout_ms,
            return_data,
        };
        self.observe(conn, request).await
    }

    /// close() or shutdown() a connection.
    pub async fn close(
        &self,
        conn: ConnId,
        mode: CloseMode,
        timeout_ms: u32,
    ) -> Result<Observation, AgentError> {
        let request = HolderRequest::Close {
            conn,
            mode,
            timeout_ms,
        };
        let observation = self.observe(conn, request).await?;
        if mode.releases_socket() && observation.outcome != crate::model::Outcome::Timeout {
            lock(&self.owners).remove(&conn.0);
        }
        Ok(observation)
    }

    /// Set options on a connection or listener; the options read back.
    pub async fn set_options(
        &self,
        target: SocketTarget,
        options: SocketOptions,
    ) -> Result<SocketOptions, AgentError> {
        let holder = match target {
            SocketTarget::Conn(conn) => self.owner_of(conn.0, "connection")?,
            SocketTarget::Listener(listener) => self.owner_of(listener.0, "listener")?,
        };
        match Self::call(&holder, HolderRequest::SetOptions { target, options }).await? {
            HolderReply::Options(read) => Ok(read),
            other => Err(unexpected(&other)),
        }
    }

    /// Start the background reader of a connection.
    pub async fn watch(&self, conn: ConnId) -> Result<(), AgentError> {
        let holder = self.owner_of(conn.0, "connection")?;
        match Self::call(&holder, HolderRequest::Watch { conn }).await? {
            HolderReply::Watching => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Kill every holder still running, forget all sockets, clear the event
    /// log. Returns how many holders were killed.
    pub async fn reset(&self) -> usize {
        let holders: Vec<Arc<HolderProcess>> = lock(&self.holders)
            .drain()
            .map(|(_, holder)| holder)
            .collect();
        let mut killed = 0;
        for holder in holders {
            if holder.kill().await.is_ok() {
                killed += 1;
            }
        }
        lock(&self.owners).clear();
        self.events.clear();
        killed
    }
}
