//! Test support: real `faultlab-agent` processes on loopback, driven through
//! the generated gRPC client, with small helpers for the calls cases make.

#![allow(dead_code, missing_docs)]

use faultlab_proto::v1 as pb;
use pb::agent_client::AgentClient;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tonic::transport::Channel;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// An agent process that is killed when dropped.
pub struct AgentProcess {
    child: Child,
    _stdout: ChildStdout,
    pub address: String,
}

impl AgentProcess {
    /// Start an agent on a free loopback port and wait (at most 10 s) for it
    /// to say where it listens.
    pub fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_faultlab-agent"));
        command.args(["--listen", "127.0.0.1:0"]);
        Self::start_with(command)
    }

    /// Start an agent with a prepared command (e.g. inside a network
    /// namespace); it logs only errors unless the command says otherwise.
    pub fn start_with(mut command: Command) -> Result<Self, Box<dyn std::error::Error>> {
        if !command.get_envs().any(|(name, _)| name == "RUST_LOG") {
            command.env("RUST_LOG", "error");
        }
        let mut child = command.stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().ok_or("agent stdout missing")?;
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            let _ = tx.send((read.map(|_| line), ()));
            reader.into_inner()
        });
        let (line, ()) = rx.recv_timeout(Duration::from_secs(10))?;
        let line = line?;
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("unexpected first line from agent: {line:?}"))?
            .to_owned();
        let stdout = reader.join().map_err(|_| "stdout reader panicked")?;
        Ok(Self {
            child,
            _stdout: stdout,
            address,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (at most `within`) for the agent to end by itself: how it ended.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kill the agent process (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One lab host: an agent process and a client for it.
pub struct Host {
    pub process: AgentProcess,
    pub rpc: AgentClient<Channel>,
}

pub const MODE_ONCE: i32 = pb::RecvMode::Once as i32;
pub const MODE_ALL: i32 = pb::RecvMode::All as i32;

impl Host {
    pub async fn start() -> Result<Self, Box<dyn std::error::Error>> {
        Self::attach(AgentProcess::start()?).await
    }

    /// A client for an agent already started.
    pub async fn attach(process: AgentProcess) -> Result<Self, Box<dyn std::error::Error>> {
        let rpc = AgentClient::connect(format!("http://{}", process.address)).await?;
        Ok(Self { process, rpc })
    }

    pub async fn holder(&mut self, label: &str) -> Result<u64, tonic::Status> {
        let reply = self
            .rpc
            .spawn_holder(pb::SpawnHolderRequest {
                label: label.to_owned(),
                session: String::new(),
            })
            .await?;
        Ok(reply.into_inner().holder_id)
    }

    pub async fn listen(
        &mut self,
        holder_id: u64,
        options: Option<pb::SocketOptions>,
    ) -> Result<(u64, String), tonic::Status> {
        let reply = self
            .rpc
            .listen(pb::ListenRequest {
                holder_id,
                address: "127.0.0.1:0".to_owned(),
                backlog: 16,
                options,
            })
            .await?
            .into_inner();
        Ok((reply.listener_id, reply.local_address))
    }

    /// Listen on a given address (e.g. a namespace host's test address).
    pub async fn listen_on(
        &mut self,
        holder_id: u64,
        address: String,
    ) -> Result<pb::ListenReply, tonic::Status> {
        Ok(self
            .rpc
            .listen(pb::ListenRequest {
                holder_id,
                address,
                backlog: 8,
                options: None,
            })
            .await?
            .into_inner())
    }

    pub async fn dial(
        &mut self,
        holder_id: u64,
        address: &str,
        options: Option<pb::SocketOptions>,
    ) -> Result<pb::ConnectReply, tonic::Status> {
        Ok(self
            .rpc
            .dial(pb::ConnectRequest {
                holder_id,
                address: address.to_owned(),
                options,
                timeout_ms: 5_000,
            })
            .await?
            .into_inner())
    }

    /// Dial `address` with a short timeout: how it ended and the error's
    /// portable name ("" when none).
    pub async fn dial_within(
        &mut self,
        holder_id: u64,
        address: &str,
        timeout_ms: u32,
    ) -> Result<(pb::Outcome, String), tonic::Status> {
        let reply = self
            .rpc
            .dial(pb::ConnectRequest {
                holder_id,
                address: address.to_owned(),
                options: None,
                timeout_ms,
            })
            .await?
            .into_inner();
        let name = reply
            .observation
            .as_ref()
            .map(|observation| observation.error_name.clone())
            .unwrap_or_default();
        Ok((outcome(&reply.observation), name))
    }

    pub async fn accept(&mut self, listener_id: u64) -> Result<pb::ConnectReply, tonic::Status> {
        Ok(self
            .rpc
            .accept(pb::AcceptRequest {
                listener_id,
                timeout_ms: 5_000,
            })
            .await?
            .into_inner())
    }

    pub async fn send(
        &mut self,
        conn_id: u64,
        payload: pb::send_request::Payload,
        timeout_ms: u32,
    ) -> Result<pb::Observation, tonic::Status> {
        Ok(self
            .rpc
            .send(pb::SendRequest {
                conn_id,
                payload: Some(payload),
                timeout_ms,
            })
            .await?
            .into_inner())
    }

    pub async fn send_messages(
        &mut self,
        conn_id: u64,
        count: u32,
        size: u32,
    ) -> Result<pb::Observation, tonic::Status> {
        let messages = pb::Messages {
            count,
            size,
            interval_ms: 0,
        };
        self.send(
            conn_id,
            pb::send_request::Payload::Messages(messages),
            5_000,
        )
        .await
    }

    pub async fn send_data(
        &mut self,
        conn_id: u64,
        data: &[u8],
    ) -> Result<pb::Observation, tonic::Status> {
        self.send(
            conn_id,
            pb::send_request::Payload::Data(data.to_vec()),
            5_000,
        )
        .await
    }

    pub async fn recv(
        &mut self,
        conn_id: u64,
        mode: i32,
        max_bytes: u64,
        timeout_ms: u32,
    ) -> Result<pb::Observation, tonic::Status> {
        Ok(self
            .rpc
            .recv(pb::RecvRequest {
                conn_id,
                mode,
                max_bytes,
                timeout_ms,
                return_data: false,
            })
            .await?
            .into_inner())
    }

    /// Read until EOF or error (at most 10 s).
    pub async fn recv_to_end(&mut self, conn_id: u64) -> Result<pb::Observation, tonic::Status> {
        self.recv(conn_id, MODE_ALL, 0, 10_000).await
    }

    pub async fn close(
        &mut self,
        conn_id: u64,
        mode: pb::CloseMode,
    ) -> Result<pb::Observation, tonic::Status> {
        Ok(self
            .rpc
            .close(pb::CloseRequest {
                conn_id,
                mode: mode as i32,
                timeout_ms: 5_000,
            })
            .await?
            .into_inner())
    }

    /// The first event numbered `since` or later (waits at most 5 s).
    pub async fn first_event(
        &mut self,
        since: u64,
    ) -> Result<pb::Event, Box<dyn std::error::Error>> {
        let mut events = self
            .rpc
            .events(pb::EventsRequest { since })
            .await?
            .into_inner();
        let event = tokio::time::timeout(Duration::from_secs(5), events.message()).await??;
        event.ok_or_else(|| "the event stream ended".into())
    }

    /// The first event, which must be a holder's exit.
    pub async fn first_holder_exit(
        &mut self,
    ) -> Result<pb::HolderExit, Box<dyn std::error::Error>> {
        match self.first_event(0).await?.kind {
            Some(pb::event::Kind::HolderExited(exit)) => Ok(exit),
            other => Err(format!("expected a holder exit, got {other:?}").into()),
        }
    }

    /// The first `ConnectionEnded` event for `conn_id` (waits at most `within`).
    pub async fn connection_ended(
        &mut self,
        conn_id: u64,
        within: Duration,
    ) -> Result<pb::Observation, Box<dyn std::error::Error>> {
        let mut events = self
            .rpc
            .events(pb::EventsRequest { since: 0 })
            .await?
            .into_inner();
        let found = tokio::time::timeout(within, async {
            while let Some(event) = events.message().await? {
                if let Some(pb::event::Kind::ConnectionEnded(observation)) = event.kind
                    && observation.conn_id == conn_id
                {
                    return Ok(Some(observation));
                }
            }
            Ok::<_, tonic::Status>(None)
        })
        .await??;
        found.ok_or_else(|| "event stream ended without the connection's end".into())
    }
}

/// Two hosts, one connection between them: `client` dialled `server`.
pub struct Pair {
    pub client: Host,
    pub server: Host,
    pub client_holder: u64,
    pub server_holder: u64,
    pub client_conn: u64,
    pub server_conn: u64,
}

impl Pair {
    pub async fn connect() -> Result<Self, Box<dyn std::error::Error>> {
        Self::connect_with(None, None).await
    }

    pub async fn connect_with(
        client_options: Option<pb::SocketOptions>,
        server_options: Option<pb::SocketOptions>,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let mut client = Host::start().await?;
        let mut server = Host::start().await?;
        let client_holder = client.holder("client").await?;
        let server_holder = server.holder("server").await?;
        let (listener, address) = server.listen(server_holder, server_options).await?;
        let dialled = client.dial(client_holder, &address, client_options).await?;
        assert_eq!(
            outcome(&dialled.observation),
            pb::Outcome::Ok,
            "{dialled:?}"
        );
        let accepted = server.accept(listener).await?;
        assert_eq!(
            outcome(&accepted.observation),
            pb::Outcome::Ok,
            "{accepted:?}"
        );
        Ok(Self {
            client,
            server,
            client_holder,
            server_holder,
            client_conn: dialled.conn_id,
            server_conn: accepted.conn_id,
        })
    }
}

pub mod netns;

pub fn outcome(observation: &Option<pb::Observation>) -> pb::Outcome {
    observation
        .as_ref()
        .map_or(pb::Outcome::Unspecified, pb::Observation::outcome)
}
