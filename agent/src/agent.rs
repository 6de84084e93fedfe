//! The agent's domain service: which holders exist, which holder owns which
//! socket, and routing each request to the right holder.
//!
//! Everything a client can ask of an agent is a method here, with validated
//! domain types in and out; `grpc/` only translates.

use crate::access::{Access, Caller, Denied};
use crate::audit::{Entry, Trail};
use crate::capture::{Captured, Captures, Filter};
use crate::degrade::{Applied, Degradations, Healed, Impairment, Selection};
use crate::error::AgentError;
use crate::events::{DEFAULT_CAPACITY, EventLog};
use crate::holder::protocol::{HolderReply, HolderRequest, RefusalKind, SocketTarget};
use crate::holder::{HolderError, HolderProcess};
use crate::hostinfo::HostInfo;
use crate::isolate::{Connections, Direction, Isolation, Isolations, Lifted, LiftedAll, Mode};
use crate::link::Links;
use crate::model::{
    CloseMode, ConnId, HolderExit, HolderId, ListenerId, Observation, Payload, RecvMode,
    SocketOptions,
};
use crate::platform::{Current, Platform};
use crate::process::{ProcessAction, ProcessOutcome, ProcessTarget, Processes};
use crate::sessions::Sessions;
use crate::settings::{Allow, Limits};
use crate::sockets::{ConnectionFilter, Remote, Sockets, TcpConnection};
use crate::sync::lock;
use crate::tune::{Change, Settings, TcpSetting};
use faultlab_proto::Capability;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

/// How an agent is set up.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The executable started as `<exe> holder` for each holder process.
    pub holder_exe: PathBuf,
    /// What it may do beyond connections.
    pub allow: Allow,
    /// No isolation may last longer than this.
    pub max_isolation_ms: u32,
    /// Process name → the command that starts it again.
    pub restart_commands: std::collections::BTreeMap<String, String>,
    /// How much it takes on at most.
    pub limits: Limits,
    /// Who may use what.
    pub access: Access,
}

impl AgentConfig {
    /// Connections only, with the default isolation limit.
    pub fn new(holder_exe: PathBuf) -> Self {
        Self {
            holder_exe,
            allow: Allow::default(),
            max_isolation_ms: crate::settings::DEFAULT_MAX_ISOLATION_MS,
            restart_commands: std::collections::BTreeMap::new(),
            limits: Limits::default(),
            access: Access::default(),
        }
    }
}

/// Ended holders remembered (so a late request learns how one ended).
pub const ENDED_HOLDERS_KEPT: usize = 64;

/// An isolation that cuts the control channel starts this long after the
/// agent has answered the request, so that the answer can leave.
pub const CONTROL_CHANNEL_GRACE: Duration = Duration::from_millis(100);
/// A simulated reboot's isolation outlives its planned end by this much, so
/// a crash of the agent mid-reboot still heals soon after.
const REBOOT_MARGIN: Duration = Duration::from_secs(2);

/// What a simulated reboot did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebootReport {
    /// Sockets that were reset (their RST dropped by the isolation).
    pub sockets_aborted: u32,
    /// Holder processes killed.
    pub holders_killed: u32,
    /// When the host went down (monotonic ns).
    pub down_from_mono_ns: u64,
    /// When it came back.
    pub down_until_mono_ns: u64,
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
    /// A holder started ahead, for the next spawn.
    spare: Mutex<Option<HolderProcess>>,
    /// Owner of every listener and connection, by raw id.
    owners: Mutex<HashMap<u64, HolderId>>,
    /// Callers' sessions and the holders spawned in them.
    sessions: Sessions,
    next_id: AtomicU64,
    events: Arc<EventLog>,
    /// Isolation, when allowed and the firewall works; else why not.
    isolations: Result<Arc<Isolations>, String>,
    /// Link control, when allowed and supported; else why not.
    links: Result<Links, String>,
    /// Degradations, when allowed and the kernel can; else why not.
    degradations: Result<Degradations, String>,
    /// TCP settings changed for a case, when allowed and supported; else why not.
    settings: Result<Settings, String>,
    /// Running captures, when this host lets us capture; else why not.
    captures: Result<Captures, String>,
    /// The gRPC port, never captured.
    control_port: u16,
    /// The host's TCP connections, every program's.
    sockets: Sockets,
    /// The host's other programs.
    processes: Processes,
    /// What was done here, and by whom: the last entries.
    trail: Trail,
}

fn unexpected(reply: &HolderReply) -> AgentError {
    AgentError::Internal(format!("holder gave an unexpected reply: {reply:?}"))
}

/// Why a capability cannot be used: not allowed by the configuration
/// (PermissionDenied, naming the flag), or allowed but not workable here.
fn unavailable(allowed: bool, why: &str) -> AgentError {
    if allowed {
        AgentError::FailedPrecondition(why.to_owned())
    } else {
        AgentError::PermissionDenied(why.to_owned())
    }
}

/// The agent's degradations, when allowed and the host can degrade what it
/// sends (`degrade`: netem) or what it receives (`loss`: a firewall); each
/// way it can is added to `capabilities`, each it cannot to `unavailable`
/// with why.
fn prepare_degradation(
    config: &AgentConfig,
    control_port: u16,
    capabilities: &mut Vec<Capability>,
    unavailable: &mut Vec<String>,
) -> Result<Degradations, String> {
    if !config.allow.degrade {
        return Err("degrading the network is off on this agent: set allow.degrade = true in its config, or start it with --allow degrade".to_owned());
    }
    let shapers = Current::shapers(&config.holder_exe, control_port);
    for (capability, shaper) in [
        (Capability::Degrade, &shapers.outbound),
        (Capability::Loss, &shapers.inbound),
    ] {
        match shaper {
            Ok(_) => capabilities.push(capability),
            Err(why) => unavailable.push(format!("{capability}: {why}")),
        }
    }
    match (&shapers.outbound, &shapers.inbound) {
        (Err(out), Err(_)) => Err(out.clone()),
        _ => Ok(Degradations::new(shapers)),
    }
}

/// Clean up after an earlier life; then, if allowed, set up the firewall.
fn prepare_isolation(config: &AgentConfig, control_port: u16) -> Result<Arc<Isolations>, String> {
    let Some(firewall) = Current::firewall(&config.holder_exe) else {
        return Err("isolation is not implemented on this OS yet".to_owned());
    };
    match firewall.clean_up() {
        Ok(Some(removed)) => {
            tracing::warn!(%removed, "removed what an earlier agent left");
            crate::audit::earlier_life("UndoLeft", "isolations", 0, &Ok(()));
        }
        Ok(None) => {}
        Err(error) => tracing::debug!(%error, "no firewall to clean up"),
    }
    if !config.allow.isolate {
        return Err("isolation is off on this agent: set allow.isolate = true in its config, or start it with --allow isolate".to_owned());
    }
    match firewall.prepare(control_port) {
        Ok(()) => Ok(Arc::new(Isolations::new(firewall))),
        Err(error) => {
            tracing::error!(%error, "isolation is allowed but the firewall cannot be used");
            Err(format!("isolation is allowed but unusable here: {error}"))
        }
    }
}

impl Agent {
    /// A new agent with no holders, serving on `control_port`. Removes what
    /// an earlier agent left in the firewall, and sets up isolation if allowed.
    pub fn new(config: AgentConfig, control_port: u16) -> Self {
        let isolations = prepare_isolation(&config, control_port);
        let mut capabilities = Vec::new();
        if config.allow.connections {
            capabilities.push(Capability::Connections);
        }
        if isolations.is_ok() {
            capabilities.push(Capability::Isolate);
        }
        let links = match (config.allow.link, Current::links(&config.holder_exe)) {
            (false, _) => {
                Err("link control is off on this agent: set allow.link = true in its config, or start it with --allow link".to_owned())
            }
            (true, None) => Err("link control is not implemented on this OS yet".to_owned()),
            (true, Some(control)) => Ok(Links::new(control)),
        };
        if links.is_ok() {
            capabilities.push(Capability::Link);
        }
        let mut unavailable = Vec::new();
        if config.allow.reboot {
            capabilities.push(Capability::Reboot);
            if Current::reboots_orderly() {
                capabilities.push(Capability::OrderlyReboot);
            } else {
                unavailable.push(format!(
                    "{}: no service manager runs here (systemd) to shut down first",
                    Capability::OrderlyReboot
                ));
            }
        }
        let degradations =
            prepare_degradation(&config, control_port, &mut capabilities, &mut unavailable);
        // Capturing only reads; it is offered wherever the OS allows it.
        let captures = Captures::new()
            .map_err(|error| format!("packet capture is not possible here: {error}"));
        if captures.is_ok() {
            capabilities.push(Capability::Capture);
        }
        if config.allow.process {
            capabilities.push(Capability::Process);
        }
        let settings = match (config.allow.tune, Current::tcp_settings(&config.holder_exe)) {
            (false, _) => Err("changing TCP settings is off on this agent: set allow.tune = true in its config, or start it with --allow tune".to_owned()),
            (true, None) => Err("this OS has no TCP settings faultlab changes (tcp_abort_on_overflow is Linux's)".to_owned()),
            (true, Some(control)) => Ok(Settings::new(control)),
        };
        if settings.is_ok() {
            capabilities.push(Capability::Tune);
        }
        let processes = Processes::new(config.restart_commands.clone());
        let mut host = HostInfo::gather(capabilities.iter().map(|c| c.name().to_owned()).collect());
        host.unavailable = unavailable;
        Self {
            config,
            host,
            holders: Mutex::new(HashMap::new()),
            spare: Mutex::new(None),
            owners: Mutex::new(HashMap::new()),
            sessions: Sessions::default(),
            next_id: AtomicU64::new(1),
            events: Arc::new(EventLog::new(DEFAULT_CAPACITY)),
            isolations,
            links,
            degradations,
            settings,
            captures,
            control_port,
            sockets: Sockets::new(Current::socket_table()),
            processes,
            trail: Trail::default(),
        }
    }

    /// The host this agent runs on.
    pub fn host_info(&self) -> &HostInfo {
        &self.host
    }

    /// The host as `caller` sees it: among the capabilities only those it
    /// may use; those the access rules deny it (also the lab's, `power`),
    /// each with why among `unavailable`.
    pub fn host_info_for(&self, caller: &Caller) -> HostInfo {
        let mut host = self.host.clone();
        host.caller.clone_from(&caller.name);
        let denied = self.config.access.denied_of(caller, &crate::access::RULED);
        let refused = |name: &str| {
            Capability::from_name(name).is_some_and(|offered| {
                denied
                    .iter()
                    .any(|denied| denied.capability == offered.ruled_as())
            })
        };
        host.capabilities.retain(|name| !refused(name));
        for denied in denied {
            host.denied.push(denied.capability.name().to_owned());
            host.unavailable
                .push(format!("{}: {denied}", denied.capability.name()));
        }
        host
    }

    /// Whether `caller` may use one of `needs` here (the access rules;
    /// what the host allows is checked where each is used).
    pub fn may(&self, caller: &Caller, needs: &[Capability]) -> Result<Capability, Denied> {
        self.config.access.check(caller, needs)
    }

    /// What was done here, and by whom: the last entries.
    pub fn trail(&self) -> &Trail {
        &self.trail
    }

    /// The event log.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A stream of session `id` opened: holders spawned in it live while
    /// one of its streams is open.
    pub fn open_session(&self, id: &str) {
        self.sessions.open(id);
        tracing::info!(session = %id, "session opened");
    }

    /// A stream of session `id` ended; when it was the last, kill every
    /// holder spawned in the session (work never outlives its owner).
    /// Returns how many were killed.
    pub async fn close_session(&self, id: &str) -> usize {
        let ended = self.sessions.close(id);
        let alive: Vec<Arc<HolderProcess>> = {
            let holders = lock(&self.holders);
            ended
                .iter()
                .filter_map(|holder| holders.get(holder))
                .filter(|holder| holder.exited().is_none())
                .cloned()
                .collect()
        };
        let mut killed = 0;
        for holder in alive {
            if holder.kill().await.is_ok() {
                killed += 1;
            }
        }
        if killed > 0 {
            tracing::warn!(session = %id, killed, "session ended: killed the holders it left");
            self.trail.record(Entry {
                caller: "agent".to_owned(),
                rpc: "SessionEnded".to_owned(),
                capability: Capability::Connections.name().to_owned(),
                fault: id.to_owned(),
                result: format!("ok: killed the {killed} holder(s) it left"),
                ..Entry::default()
            });
        }
        killed
    }

    /// Start a holder process, in the caller's `session` if it names one.
    pub fn spawn_holder(
        self: &Arc<Self>,
        label: String,
        session: Option<String>,
    ) -> Result<(HolderId, u32), AgentError> {
        if !self.config.allow.connections {
            return Err(AgentError::PermissionDenied(
                "connections are off on this agent: set allow.connections = true in its config"
                    .to_owned(),
            ));
        }
        let alive = lock(&self.holders)
            .values()
            .filter(|holder| holder.exited().is_none())
            .count();
        if alive >= self.config.limits.holders {
            return Err(AgentError::Exhausted(format!(
                "{alive} holders are alive, this agent's limit (limits.holders = {}): kill some, or raise the limit",
                self.config.limits.holders
            )));
        }
        let holder = match self.take_spare() {
            Some(spare) => spare.labelled(label),
            None => self.start_holder(label)?,
        };
        let id = holder.id();
        let pid = holder.pid();
        tracing::info!(%id, label = holder.label(), pid, "holder started");
        self.forget_old_holders();
        lock(&self.holders).insert(id, Arc::new(holder));
        // After the reply: the next holder starts while this case runs, and
        // what the last case held goes back to the system (malloc_trim
        // takes milliseconds).
        let agent = Arc::clone(self);
        tokio::spawn(async move {
            agent.keep_a_spare();
            let _ = tokio::task::spawn_blocking(Current::return_free_memory).await;
        });
        if let Some(session) = session {
            self.sessions.spawned(id, session);
        }
        Ok((id, pid))
    }

    fn start_holder(&self, label: String) -> Result<HolderProcess, AgentError> {
        let id = HolderId(self.new_id());
        Ok(HolderProcess::spawn(
            &self.config.holder_exe,
            id,
            label,
            Arc::clone(&self.events),
        )?)
    }

    /// Start the first holder ahead, so that even a fresh agent's first
    /// case finds one (a host just rebooted is given its next case at once).
    pub fn start_a_holder_ahead(self: &Arc<Self>) {
        if self.config.allow.connections {
            let agent = Arc::clone(self);
            tokio::spawn(async move { agent.keep_a_spare() });
        }
    }

    /// The holder started ahead, if it is still alive.
    fn take_spare(&self) -> Option<HolderProcess> {
        lock(&self.spare)
            .take()
            .filter(|spare| spare.exited().is_none())
    }

    /// Start a holder ahead if none waits: a holder process takes its time
    /// to start (150 ms in an emulated guest, a few ms here), and a case
    /// starts with one on each of its hosts. It holds nothing, is not one
    /// of the agent's holders until taken, and ends with the agent (its
    /// stdin closes).
    fn keep_a_spare(&self) {
        let mut spare = lock(&self.spare);
        if spare.as_ref().is_some_and(|spare| spare.exited().is_none()) {
            return;
        }
        match self.start_holder("started ahead".to_owned()) {
            Ok(started) => *spare = Some(started),
            Err(error) => tracing::warn!(%error, "cannot start a holder ahead"),
        }
    }

    /// Keep the newest [`ENDED_HOLDERS_KEPT`] ended holders (a late request
    /// about one still learns how it ended); forget older ones and their
    /// sockets, so that an agent running for weeks does not grow.
    fn forget_old_holders(&self) {
        let mut holders = lock(&self.holders);
        let mut ended: Vec<(u64, HolderId)> = holders
            .values()
            .filter_map(|holder| holder.exited().map(|exit| (exit.mono_ns, holder.id())))
            .collect();
        if ended.len() <= ENDED_HOLDERS_KEPT {
            return;
        }
        ended.sort_unstable();
        let forgotten: Vec<HolderId> = ended[..ended.len() - ENDED_HOLDERS_KEPT]
            .iter()
            .map(|(_, id)| *id)
            .collect();
        for id in &forgotten {
            holders.remove(id);
        }
        drop(holders);
        lock(&self.owners).retain(|_, owner| !forgotten.contains(owner));
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
        let span = crate::spans::holder_call(holder, &request);
        let reply = holder.call(request).instrument(span.clone()).await;
        match &reply {
            Ok(reply) => crate::spans::record(&span, reply),
            Err(error) => faultlab_telemetry::fail(&span, &error.to_string()),
        }
        match reply? {
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
        self.own_port(address.port());
        let request = HolderRequest::Listen {
            listener,
            address,
            backlog,
            options,
        };
        match Self::call(&holder, request).await? {
            HolderReply::Listening { local_address } => {
                self.own_port(local_address.port());
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
        self.room_for_a_socket()?;
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
        self.room_for_a_socket()?;
        let conn = ConnId(self.new_id());
        // Before the SYN: every segment of the connection carries it.
        self.own_port(address.port());
        let request = HolderRequest::Connect {
            conn,
            address,
            options,
            timeout_ms,
        };
        self.connection(&holder, conn, request).await
    }

    /// Captures asked for no particular port keep this port's segments.
    fn own_port(&self, port: u16) {
        if let Ok(captures) = &self.captures
            && port != 0
        {
            captures.own_port(port);
        }
    }

    /// Whether one more socket stays within `limits.connections` (the
    /// sockets of holders still alive count).
    fn room_for_a_socket(&self) -> Result<(), AgentError> {
        let alive: std::collections::HashSet<HolderId> = lock(&self.holders)
            .values()
            .filter(|holder| holder.exited().is_none())
            .map(|holder| holder.id())
            .collect();
        let held = lock(&self.owners)
            .values()
            .filter(|owner| alive.contains(owner))
            .count();
        if held >= self.config.limits.connections {
            return Err(AgentError::Exhausted(format!(
                "{held} sockets are held, this agent's limit (limits.connections = {}): close some, or raise the limit",
                self.config.limits.connections
            )));
        }
        Ok(())
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
        let bytes = payload.total_bytes();
        if bytes > self.config.limits.send_bytes {
            return Err(AgentError::Exhausted(format!(
                "a send of {bytes} bytes is over this agent's limit (limits.send_bytes = {})",
                self.config.limits.send_bytes
            )));
        }
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

    fn isolations(&self) -> Result<&Arc<Isolations>, AgentError> {
        self.isolations
            .as_ref()
            .map_err(|why| unavailable(self.config.allow.isolate, why))
    }

    /// The longest deadline an isolation may have.
    pub fn max_isolation(&self) -> Duration {
        Duration::from_millis(u64::from(self.config.max_isolation_ms))
    }

    /// Refuse a fault whose deadline is over this agent's limit, or that
    /// would make more faults active than `limits.faults`.
    fn within_limit(&self, deadline: Duration) -> Result<(), AgentError> {
        if deadline > self.max_isolation() {
            return Err(AgentError::InvalidArgument(format!(
                "deadline_ms: {} is over this agent's limit of {} ms",
                deadline.as_millis(),
                self.config.max_isolation_ms
            )));
        }
        let active = self.isolations.as_ref().map_or(0, |book| book.count())
            + self.links.as_ref().map_or(0, Links::count)
            + self.degradations.as_ref().map_or(0, Degradations::count)
            + self.settings.as_ref().map_or(0, Settings::count);
        if active >= self.config.limits.faults {
            return Err(AgentError::Exhausted(format!(
                "{active} faults are active, this agent's limit (limits.faults = {}): heal some, or raise the limit",
                self.config.limits.faults
            )));
        }
        Ok(())
    }

    /// Cut traffic until the isolation's deadline; returns when it lifts.
    pub fn isolate(&self, isolation: Isolation) -> Result<Instant, AgentError> {
        self.within_limit(isolation.deadline)?;
        let isolations = self.isolations()?;
        if !isolation.include_control_channel {
            return Ok(isolations.isolate(isolation)?);
        }
        // Cutting our own control channel now would keep this very reply
        // from leaving: check it, answer, and cut a moment later.
        isolations.check(&isolation)?;
        let applies = Arc::clone(isolations);
        let id = isolation.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CONTROL_CHANNEL_GRACE).await;
            if let Err(error) = applies.isolate(isolation) {
                tracing::error!(%id, %error, "isolation of the control channel failed");
            }
        });
        Ok(Instant::now() + CONTROL_CHANNEL_GRACE)
    }

    /// Lift one isolation (confirmed by reading the filter back).
    pub fn heal(&self, id: &str) -> Result<Lifted, AgentError> {
        Ok(self.isolations()?.heal(id)?)
    }

    /// Lift every isolation, and every entry of faultlab's rules no
    /// isolation accounts for (confirmed by reading the filter back).
    pub fn heal_all(&self) -> Result<LiftedAll, AgentError> {
        Ok(self.isolations()?.heal_all()?)
    }

    /// A simulated reboot: drop all test traffic, make every held socket
    /// reset when its process dies, kill every holder (the resets die in the
    /// drop), stay down for `down`, lift the drop. Peers then meet a stack
    /// that has forgotten them.
    pub async fn reboot_simulated(&self, down: Duration) -> Result<RebootReport, AgentError> {
        let id = format!("simulated-reboot-{}", self.new_id());
        self.isolate(Isolation {
            id: id.clone(),
            mode: Mode::Drop,
            peer: None,
            port: None,
            peer_port: None,
            direction: Direction::Both,
            connections: Connections::All,
            deadline: down + REBOOT_MARGIN,
            include_control_channel: false,
        })?;
        let down_from_mono_ns = Current::monotonic_ns();
        let holders: Vec<Arc<HolderProcess>> = lock(&self.holders)
            .drain()
            .map(|(_, holder)| holder)
            .collect();
        let mut sockets_aborted = 0;
        let mut holders_killed = 0;
        for holder in holders {
            if let Ok(HolderReply::Armed { sockets }) = holder.call(HolderRequest::ArmAbort).await {
                sockets_aborted += sockets;
            }
            if holder.kill().await.is_ok() {
                holders_killed += 1;
            }
        }
        lock(&self.owners).clear();
        tokio::time::sleep(down).await;
        self.heal(&id)?;
        Ok(RebootReport {
            sockets_aborted,
            holders_killed,
            down_from_mono_ns,
            down_until_mono_ns: Current::monotonic_ns(),
        })
    }

    fn links(&self) -> Result<&Links, AgentError> {
        self.links
            .as_ref()
            .map_err(|why| unavailable(self.config.allow.link, why))
    }

    /// Take a link down until `deadline`; `control_address` is the local
    /// address the request arrived on (its interface is refused unless allowed).
    pub fn link_down(
        &self,
        interface: &str,
        deadline: Duration,
        control_address: Option<std::net::IpAddr>,
        allow_control_interface: bool,
    ) -> Result<Instant, AgentError> {
        self.within_limit(deadline)?;
        Ok(self.links()?.take_down(
            interface,
            deadline,
            control_address,
            allow_control_interface,
        )?)
    }

    /// The interface named, or the one holding `address` when no name is given.
    pub fn link_interface(&self, interface: &str, address: &str) -> Result<String, AgentError> {
        if !interface.is_empty() {
            return Ok(interface.to_owned());
        }
        let address: std::net::IpAddr = address.parse().map_err(|_| {
            AgentError::InvalidArgument(format!(
                "interface or address: give an interface name, or an IP address ({address:?} is neither)"
            ))
        })?;
        Ok(self.links()?.interface_of(address)?)
    }

    /// What the kernel says of a link now.
    pub fn link_state(&self, interface: &str) -> Result<crate::link::LinkState, AgentError> {
        Ok(self.links()?.state(interface)?)
    }

    /// Bring a link back up now.
    pub fn link_up(&self, interface: &str) -> Result<(), AgentError> {
        Ok(self.links()?.bring_up(interface)?)
    }

    fn degradations(&self) -> Result<&Degradations, AgentError> {
        self.degradations
            .as_ref()
            .map_err(|why| unavailable(self.config.allow.degrade, why))
    }

    /// Degrade `interface` until `deadline` (an agent's deadlines are
    /// bounded like isolations'); what the kernel reports it applied.
    pub fn degrade(
        &self,
        id: &str,
        interface: &str,
        impairment: &Impairment,
        selection: &Selection,
        deadline: Duration,
    ) -> Result<Applied, AgentError> {
        self.within_limit(deadline)?;
        Ok(self
            .degradations()?
            .degrade(id, interface, impairment, selection, deadline)?)
    }

    /// The interface named, or the one holding `address`.
    pub fn degrade_interface(&self, interface: &str, address: &str) -> Result<String, AgentError> {
        Ok(self.degradations()?.interface(interface, address)?)
    }

    /// Heal a degradation now; its counters just before.
    pub fn restore(&self, id: &str) -> Result<Healed, AgentError> {
        Ok(self.degradations()?.heal(id)?)
    }

    fn settings(&self) -> Result<&Settings, AgentError> {
        self.settings
            .as_ref()
            .map_err(|why| unavailable(self.config.allow.tune, why))
    }

    /// Change a TCP setting until `deadline` (bounded like isolations');
    /// the change, with the value from before, and when it ends by itself.
    pub fn change_tcp_setting(
        &self,
        id: &str,
        setting: TcpSetting,
        value: u32,
        deadline: Duration,
    ) -> Result<(Change, Instant), AgentError> {
        self.within_limit(deadline)?;
        Ok(self.settings()?.change(id, setting, value, deadline)?)
    }

    /// Put a TCP setting back now (read back).
    pub fn put_back_tcp_setting(&self, id: &str) -> Result<Change, AgentError> {
        Ok(self.settings()?.put_back(id)?)
    }

    fn captures(&self) -> Result<&Captures, AgentError> {
        self.captures
            .as_ref()
            .map_err(|why| AgentError::FailedPrecondition(why.clone()))
    }

    /// Start capturing TCP segments on `ports` and on this agent's own (its
    /// listeners', those its connections go to, those it aborts), never the
    /// control port.
    pub fn start_capture(&self, id: &str, ports: Vec<u16>) -> Result<(), AgentError> {
        let filter = Filter {
            ports,
            exclude_ports: vec![self.control_port],
        };
        Ok(self.captures()?.start(id, filter)?)
    }

    /// Stop a capture; what it saw.
    pub fn stop_capture(&self, id: &str) -> Result<Captured, AgentError> {
        Ok(self.captures()?.stop(id)?)
    }

    /// The host's TCP connections that `filter` means (any program's).
    pub fn list_connections(
        &self,
        filter: &ConnectionFilter,
    ) -> Result<Vec<TcpConnection>, AgentError> {
        Ok(self.sockets.list(filter)?)
    }

    fn process_allowed(&self, what: &str) -> Result<(), AgentError> {
        if self.config.allow.process {
            Ok(())
        } else {
            Err(AgentError::PermissionDenied(format!(
                "{what} is off on this agent: set allow.process = true in its config, or start it with --allow process"
            )))
        }
    }

    /// Destroy connections of other programs (never listeners); the ones destroyed.
    pub fn abort_connections(
        &self,
        filter: &ConnectionFilter,
    ) -> Result<Vec<TcpConnection>, AgentError> {
        self.process_allowed("aborting other programs' connections")?;
        if !filter.is_narrow() {
            return Err(AgentError::InvalidArgument(
                "filter: give a local port, a local address or a remote; faultlab does not abort every connection of a host".to_owned(),
            ));
        }
        // The connections it destroys are this agent's doing: their RSTs
        // are its captures' evidence (ports marked before the abort).
        let ports = [
            filter.local_port,
            filter.local.map(|local| local.port()),
            match filter.remote {
                Some(Remote::Socket(remote)) => Some(remote.port()),
                _ => None,
            },
        ];
        for port in ports.into_iter().flatten() {
            self.own_port(port);
        }
        let aborted = self.sockets.abort(filter)?;
        for connection in &aborted {
            self.own_port(connection.local.port());
        }
        tracing::warn!(
            count = aborted.len(),
            "aborted connections of other programs"
        );
        Ok(aborted)
    }

    /// Kill, stop, continue or restart a program of this host (never the
    /// agent or its holders).
    pub fn process_fault(
        &self,
        target: &ProcessTarget,
        action: ProcessAction,
    ) -> Result<ProcessOutcome, AgentError> {
        self.process_allowed("acting on other programs")?;
        let holders: Vec<u32> = lock(&self.holders)
            .values()
            .map(|holder| holder.pid())
            .collect();
        let outcome = self.processes.act(target, action, &holders)?;
        tracing::warn!(?target, action = action.name(), pids = ?outcome.pids, new_pid = ?outcome.new_pid, "process fault");
        Ok(outcome)
    }

    /// Really reboot the host (`orderly`: through its service manager), if
    /// this agent is allowed to; how it did.
    pub fn reboot(&self, orderly: bool) -> Result<&'static str, AgentError> {
        if !self.config.allow.reboot {
            return Err(AgentError::PermissionDenied(
                "reboot is off on this agent: set allow.reboot = true in its config, or start it with --allow reboot".to_owned(),
            ));
        }
        tracing::warn!("rebooting the host on request");
        Current::reboot(orderly)
            .map_err(|error| AgentError::FailedPrecondition(format!("cannot reboot: {error}")))
    }

    /// Undo everything this agent made: lift every isolation (and stray
    /// entries of its rules), bring its links up, heal its degradations,
    /// stop its captures, kill every holder (its sockets and floods go with
    /// it), forget all sockets, clear the event log. What could not be
    /// undone is in the report, never dropped.
    pub async fn reset(self: &Arc<Self>) -> ResetReport {
        // nft, ip and tc take seconds on a slow host: off the async workers.
        let agent = Arc::clone(self);
        let mut report = tokio::task::spawn_blocking(move || agent.undo_network_faults())
            .await
            .unwrap_or_else(|error| ResetReport {
                not_undone: vec![format!("network faults: {error}")],
                ..ResetReport::default()
            });
        let holders: Vec<Arc<HolderProcess>> = lock(&self.holders)
            .drain()
            .map(|(_, holder)| holder)
            .collect();
        for holder in holders {
            match holder.kill().await {
                Ok(_) => report.holders += 1,
                // Ended by itself already: nothing left to undo.
                Err(HolderError::Gone(_)) => {}
                Err(error) => report.not_undone.push(format!("holder: {error}")),
            }
        }
        lock(&self.owners).clear();
        self.events.clear();
        for what in &report.not_undone {
            tracing::error!(%what, "reset could not undo");
        }
        report
    }

    /// Lift every isolation, bring every link up, heal every degradation,
    /// stop every capture (blocking: it runs nft, ip and tc).
    fn undo_network_faults(&self) -> ResetReport {
        let mut report = ResetReport::default();
        if let Ok(isolations) = &self.isolations {
            match isolations.heal_all() {
                Ok(lifted) => {
                    report.isolations = lifted.isolations;
                    report.unbooked = lifted.unbooked;
                }
                Err(error) => report.not_undone.push(error.to_string()),
            }
        }
        if let Ok(links) = &self.links {
            let (up, failed) = links.bring_all_up();
            report.links = up;
            report.not_undone.extend(failed);
        }
        if let Ok(degradations) = &self.degradations {
            let (healed, failed) = degradations.heal_all();
            report.degradations = healed;
            report.not_undone.extend(failed);
        }
        if let Ok(settings) = &self.settings {
            let (put_back, failed) = settings.put_all_back();
            report.settings = put_back;
            report.not_undone.extend(failed);
        }
        if let Ok(captures) = &self.captures {
            captures.stop_all();
        }
        report
    }
}

/// What [`Agent::reset`] undid, and what it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResetReport {
    /// Isolations lifted.
    pub isolations: usize,
    /// Entries of faultlab's rules lifted that no isolation accounted for.
    pub unbooked: Vec<String>,
    /// Links brought back up.
    pub links: usize,
    /// Degradations healed.
    pub degradations: usize,
    /// TCP settings put back.
    pub settings: usize,
    /// Holder processes killed.
    pub holders: usize,
    /// What is still in place, each with why; empty when all was undone.
    pub not_undone: Vec<String>,
}
