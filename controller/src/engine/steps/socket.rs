//! Socket calls as agent requests: listen, connect, accept, send, recv,
//! close, options, watching for a connection's end.

use super::{Acting, Preparing, Ran};
use crate::engine::handles::AgentHandle;
use crate::engine::state::{Names, Outcome, StepError};
use crate::engine::undo::{AgentUndo, Undo};
use crate::scenario::{AcceptQueueOverflow, ExpectedOutcome, Options, Payload, SocketCall};
use faultlab_proto::v1 as pb;
use std::net::SocketAddr;
use std::time::Duration;

/// Default wait of a `wait-end` step.
const DEFAULT_WAIT_MS: u32 = 30_000;

/// A socket call, its names resolved to ids.
pub(super) enum Request {
    Listen {
        holder: u64,
        options: Option<pb::SocketOptions>,
        backlog: u32,
        /// What a full accept queue does, set first for the case.
        overflow: Option<pb::ChangeTcpSettingRequest>,
    },
    StopListening(u64),
    Connect {
        name: String,
        holder: u64,
        address: SocketAddr,
        options: Option<pb::SocketOptions>,
        timeout_ms: u32,
    },
    Accept(pb::AcceptRequest),
    Send(pb::SendRequest),
    Recv(pb::RecvRequest),
    Close(pb::CloseRequest),
    SetOptions(pb::SetOptionsRequest),
    Watch(u64),
    WaitEnd {
        conn: u64,
        timeout_ms: u32,
    },
}

/// The request for `call`, and for a send whose payload became an
/// application's messages, the (meant, sent) bytes.
pub(super) fn prepare(
    call: &SocketCall,
    at: &Preparing<'_, '_>,
) -> Result<(Request, Option<(u64, u64)>), StepError> {
    let names = at.names();
    let request = match call {
        SocketCall::Listen {
            options,
            backlog,
            overflow,
            ..
        } => Request::Listen {
            holder: at.holder(),
            options: socket_options(options),
            backlog: *backlog,
            overflow: overflow.map(|overflow| pb::ChangeTcpSettingRequest {
                id: at.fault_id(),
                setting: pb::TcpSetting::AbortOnOverflow as i32,
                value: match overflow {
                    AcceptQueueOverflow::Drop => 0,
                    AcceptQueueOverflow::Reset => 1,
                },
                // Put back by the case's cleanup, or by the agent's
                // watchdog once the case's time is up.
                deadline_ms: u32::try_from(at.run.timeout_ms).unwrap_or(u32::MAX),
            }),
        },
        SocketCall::StopListening { listener } => {
            Request::StopListening(names.listener(at.step, listener)?.id)
        }
        SocketCall::Connect {
            to,
            conn,
            options,
            timeout_ms,
        } => Request::Connect {
            name: conn.clone(),
            holder: at.holder(),
            address: names.listener(at.step, to)?.address,
            options: socket_options(options),
            timeout_ms: *timeout_ms,
        },
        SocketCall::Accept {
            listener,
            timeout_ms,
            ..
        } => Request::Accept(pb::AcceptRequest {
            listener_id: names.listener(at.step, listener)?.id,
            timeout_ms: *timeout_ms,
        }),
        on_conn => return on_connection(on_conn, at),
    };
    Ok((request, None))
}

/// A call on an open connection (send, recv, close, options, watch, wait).
fn on_connection(
    call: &SocketCall,
    at: &Preparing<'_, '_>,
) -> Result<(Request, Option<(u64, u64)>), StepError> {
    let conn = |name: &str| at.names().conn(at.step, name).map(|conn| conn.id);
    let mut byte_rewrite = None;
    let request = match call {
        SocketCall::Send {
            conn: name,
            payload,
            timeout_ms,
        } => {
            let payload = match application_payload(at, name, payload) {
                Some((theirs, meant, sent)) => {
                    byte_rewrite = Some((meant, sent));
                    theirs
                }
                None => scenario_payload(payload),
            };
            Request::Send(pb::SendRequest {
                conn_id: conn(name)?,
                payload: Some(payload),
                timeout_ms: *timeout_ms,
            })
        }
        SocketCall::Recv {
            conn: name,
            all,
            max_bytes,
            timeout_ms,
        } => Request::Recv(pb::RecvRequest {
            conn_id: conn(name)?,
            mode: if *all {
                pb::RecvMode::All
            } else {
                pb::RecvMode::Once
            } as i32,
            max_bytes: *max_bytes,
            timeout_ms: *timeout_ms,
            return_data: false,
        }),
        SocketCall::Close { conn: name, mode } => Request::Close(pb::CloseRequest {
            conn_id: conn(name)?,
            mode: pb::CloseMode::from(*mode) as i32,
            timeout_ms: 0,
        }),
        SocketCall::SetOptions {
            conn: name,
            options,
        } => Request::SetOptions(pb::SetOptionsRequest {
            target: Some(pb::set_options_request::Target::ConnId(conn(name)?)),
            options: socket_options(options),
        }),
        SocketCall::Watch { conn: name } => Request::Watch(conn(name)?),
        SocketCall::WaitEnd {
            conn: name,
            timeout_ms,
        } => Request::WaitEnd {
            conn: conn(name)?,
            timeout_ms: if *timeout_ms == 0 {
                DEFAULT_WAIT_MS
            } else {
                *timeout_ms
            },
        },
        SocketCall::Listen { .. }
        | SocketCall::StopListening { .. }
        | SocketCall::Connect { .. }
        | SocketCall::Accept { .. } => {
            return Err(StepError::Failed(format!(
                "step {}: {} is not a call on a connection",
                at.step.name,
                <&str>::from(call)
            )));
        }
    };
    Ok((request, byte_rewrite))
}

impl Request {
    /// A connect books the listener it dials (the flow of the connection).
    pub(super) fn note(&self, role: &str, names: &mut Names) {
        match self {
            Self::Connect { name, address, .. } => {
                names.dialed.insert(name.clone(), *address);
            }
            Self::Listen {
                overflow: Some(change),
                ..
            } => names.undo.book(Undo::by_agent(
                role,
                format!(
                    "TCP setting change {:?} (tcp_abort_on_overflow = {})",
                    change.id, change.value
                ),
                AgentUndo::PutBackTcpSetting(pb::PutBackTcpSettingRequest {
                    id: change.id.clone(),
                }),
            )),
            _ => {}
        }
    }

    pub(super) async fn perform(self, acting: &Acting) -> Result<Ran, StepError> {
        let mut client = acting.client();
        let failed = |status| acting.failed(status);
        let agent = &acting.agent;
        Ok(match self {
            Self::Listen {
                holder,
                options,
                backlog,
                overflow,
            } => {
                if let Some(change) = overflow {
                    client
                        .change_tcp_setting(acting.request(change))
                        .await
                        .map_err(failed)?;
                }
                listen(acting, holder, options, backlog).await?
            }
            Self::StopListening(listener_id) => {
                let request = pb::StopListeningRequest { listener_id };
                client
                    .stop_listening(acting.request(request))
                    .await
                    .map_err(failed)?;
                acting.ok("stop-listening").into()
            }
            Self::Connect {
                holder,
                address,
                options,
                timeout_ms,
                ..
            } => {
                let request = pb::ConnectRequest {
                    holder_id: holder,
                    address: address.to_string(),
                    options,
                    timeout_ms,
                };
                let reply = client.dial(acting.request(request)).await.map_err(failed)?;
                connected(agent, reply.into_inner())?
            }
            Self::Accept(request) => {
                let reply = client
                    .accept(acting.request(request))
                    .await
                    .map_err(failed)?;
                connected(agent, reply.into_inner())?
            }
            Self::Send(request) => {
                acting.observed(client.send(acting.request(request)).await, "send")?
            }
            Self::Recv(request) => {
                acting.observed(client.recv(acting.request(request)).await, "recv")?
            }
            Self::Close(request) => {
                acting.observed(client.close(acting.request(request)).await, "close")?
            }
            Self::SetOptions(request) => {
                client
                    .set_options(acting.request(request))
                    .await
                    .map_err(failed)?;
                acting.ok("set-options").into()
            }
            Self::Watch(conn_id) => {
                let request = pb::WatchRequest { conn_id };
                client
                    .watch(acting.request(request))
                    .await
                    .map_err(failed)?;
                acting.ok("watch").into()
            }
            Self::WaitEnd { conn, timeout_ms } => wait_end(acting, conn, timeout_ms).await?.into(),
        })
    }
}

/// Listen on the agent's test address, any port.
async fn listen(
    acting: &Acting,
    holder: u64,
    options: Option<pb::SocketOptions>,
    backlog: u32,
) -> Result<Ran, StepError> {
    let agent = &acting.agent;
    let request = pb::ListenRequest {
        holder_id: holder,
        address: SocketAddr::new(agent.test_ip, 0).to_string(),
        backlog,
        options,
    };
    let reply = acting
        .client()
        .listen(acting.request(request))
        .await
        .map_err(|status| acting.failed(status))?
        .into_inner();
    let address = reply.local_address.parse().map_err(|_| {
        StepError::Failed(format!(
            "agent {} listens on {:?}, not an address",
            agent.name, reply.local_address
        ))
    })?;
    Ok(Ran {
        outcome: acting.ok("listen"),
        new_id: Some(reply.listener_id),
        address: Some(address),
    })
}

/// Socket options as the contract says them; `None` when the scenario sets none.
fn socket_options(options: &Options) -> Option<pb::SocketOptions> {
    if options == &Options::default() {
        return None;
    }
    Some(pb::SocketOptions {
        linger: options.linger.map(|linger| pb::Linger {
            enabled: linger.is_some(),
            seconds: linger.unwrap_or(0),
        }),
        keepalive: options
            .keepalive
            .map(|(idle_ms, interval_ms, count)| pb::Keepalive {
                enabled: true,
                idle_ms,
                interval_ms,
                count,
            }),
        user_timeout_ms: options.user_timeout_ms,
        nodelay: options.nodelay,
        send_buffer_bytes: options.send_buffer_bytes,
        recv_buffer_bytes: options.recv_buffer_bytes,
    })
}

/// What a scenario's send puts on the wire, as the contract says it.
fn scenario_payload(payload: &Payload) -> pb::send_request::Payload {
    match payload {
        Payload::Text(text) => pb::send_request::Payload::Data(text.clone().into_bytes()),
        Payload::Bytes(count) => pb::send_request::Payload::ByteCount(*count),
        Payload::Messages {
            count,
            size,
            interval_ms,
        } => pb::send_request::Payload::Messages(pb::Messages {
            count: *count,
            size: *size,
            interval_ms: *interval_ms,
        }),
    }
}

/// A send on a connection to an application with messages of its own:
/// the scenario's messages or filler become that many of the application's.
fn application_payload(
    at: &Preparing<'_, '_>,
    conn: &str,
    payload: &Payload,
) -> Option<(pb::send_request::Payload, u64, u64)> {
    let dialed = at.names().dialed.get(conn)?;
    let template = at
        .run
        .targets
        .values()
        .find(|target| target.address == *dialed)?
        .target
        .payload
        .clone()?;
    let (count, interval_ms, meant) = match payload {
        Payload::Text(_) => return None,
        Payload::Messages {
            count,
            size,
            interval_ms,
        } => (
            u64::from(*count),
            *interval_ms,
            u64::from(*count) * u64::from(*size),
        ),
        Payload::Bytes(bytes) => ((bytes / template.len().max(1) as u64).max(1), 0, *bytes),
    };
    let sent = crate::targets::template_bytes(&template, count);
    Some((
        pb::send_request::Payload::Template(pb::Template {
            text: template,
            count,
            interval_ms,
        }),
        meant,
        sent,
    ))
}

fn connected(agent: &AgentHandle, reply: pb::ConnectReply) -> Result<Ran, StepError> {
    let observation = reply
        .observation
        .ok_or_else(|| StepError::Failed(format!("agent {} gave no observation", agent.name)))?;
    Ok(Ran {
        outcome: Outcome::observed(agent, &observation),
        new_id: (reply.conn_id != 0).then_some(reply.conn_id),
        address: reply.local_address.parse().ok(),
    })
}

/// Wait for the end of a watched connection on the agent's event stream.
async fn wait_end(acting: &Acting, conn_id: u64, timeout_ms: u32) -> Result<Outcome, StepError> {
    let agent = &acting.agent;
    let mut events = acting
        .client()
        .events(pb::EventsRequest { since: 0 })
        .await
        .map_err(|status| acting.failed(status))?
        .into_inner();
    let waited = tokio::time::timeout(Duration::from_millis(u64::from(timeout_ms)), async {
        while let Some(event) = events
            .message()
            .await
            .map_err(|status| acting.failed(status))?
        {
            if let Some(pb::event::Kind::ConnectionEnded(observation)) = event.kind
                && observation.conn_id == conn_id
            {
                return Ok(Some(observation));
            }
        }
        Ok(None)
    })
    .await;
    match waited {
        Ok(Ok(Some(observation))) => Ok(Outcome::observed(agent, &observation)),
        Ok(Ok(None)) => Err(StepError::AgentLost(format!(
            "agent {}: event stream ended",
            agent.name
        ))),
        Ok(Err(error)) => Err(error),
        Err(_) => {
            let mut outcome = acting.ok("watch");
            outcome.outcome = ExpectedOutcome::Timeout;
            Ok(outcome)
        }
    }
}
