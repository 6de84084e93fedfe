//! One step of a timeline as the agent call that performs it: names
//! resolved to ids, payloads and options converted, a scheduled start
//! attached when steps are released together; and the agent's answer turned
//! into an [`Outcome`].

use super::*;

/// The flow of connection `conn` as the host of `role` sees it: (its end, the other end).
fn flow(run: &CaseRun<'_>, role: &str, conn: &str) -> Result<(SocketAddr, SocketAddr), StepError> {
    let (_, owner, local) = run
        .names
        .conns
        .get(conn)
        .ok_or_else(|| StepError::Failed(format!("connection {conn:?} was never opened")))?;
    let (Some(local), Some(listener)) = (local, run.names.dialed.get(conn)) else {
        return Err(StepError::Failed(format!(
            "the flow of {conn:?} is not known: name the connecting side's connection"
        )));
    };
    Ok(if owner == role {
        (*local, *listener)
    } else {
        (*listener, *local)
    })
}

/// An application's process as the contract names it.
pub(super) fn process_target(
    process: &crate::targets::ProcessSpec,
) -> pb::process_fault_request::Target {
    use crate::targets::ProcessSpec;
    use pb::process_fault_request::Target;
    match process {
        ProcessSpec::Name(name) => Target::Name(name.clone()),
        ProcessSpec::Pid(pid) => Target::Pid(*pid),
        ProcessSpec::Unit(unit) => Target::Unit(unit.clone()),
    }
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
    run: &CaseRun<'_>,
    conn: &str,
    payload: &Payload,
) -> Option<(pb::send_request::Payload, u64, u64)> {
    let dialed = run.names.dialed.get(conn)?;
    let template = run
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

/// A step with its names resolved to ids, ready to run on its own.
pub(super) struct Prepared {
    agent: Arc<AgentHandle>,
    clock: RunClock,
    role: String,
    call: Call,
    /// The step's span, under the case's.
    span: Span,
    /// A send whose payload became an application's messages: (meant, sent) bytes.
    pub(super) byte_rewrite: Option<(u64, u64)>,
    /// When released together with other steps: the moment it acts.
    start_at: Option<StartAt>,
}

/// The moment steps released together act: on the run clock, and on the
/// clock of the agent that acts (what it is told).
#[derive(Clone, Copy, Debug)]
struct StartAt {
    run_ns: i64,
    mono_ns: u64,
}

/// `message` as a request that acts at `at` (the agent holds it until then).
fn scheduled<T>(at: Option<StartAt>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(at) = at
        && let Ok(value) = at.mono_ns.to_string().parse()
    {
        request
            .metadata_mut()
            .insert(faultlab_proto::START_AT_METADATA, value);
    }
    request
}

/// How long before the moment steps released together act the controller
/// sends them: enough for every request to arrive first. A request that
/// arrives late acts at once, and its start shows it.
pub(super) fn release_lead(steps: &[Prepared]) -> Duration {
    let slowest_rtt_ns = steps
        .iter()
        .map(|step| step.agent.clock_rtt_ns)
        .max()
        .unwrap_or(0);
    RELEASE_MARGIN
        + Duration::from_nanos(slowest_rtt_ns.saturating_mul(2))
        + RELEASE_PER_STEP * u32::try_from(steps.len()).unwrap_or(u32::MAX)
}

enum Call {
    Listen {
        name: String,
        holder: u64,
        options: Option<pb::SocketOptions>,
    },
    StopListening {
        listener: u64,
    },
    Connect {
        name: String,
        holder: u64,
        address: SocketAddr,
        options: Option<pb::SocketOptions>,
        timeout_ms: u32,
    },
    Accept {
        name: String,
        listener: u64,
        timeout_ms: u32,
    },
    Send(pb::SendRequest),
    Recv(pb::RecvRequest),
    Close(pb::CloseRequest),
    SetOptions(pb::SetOptionsRequest),
    Watch(u64),
    WaitEnd {
        conn: u64,
        timeout_ms: u32,
    },
    Exit {
        holder: u64,
        code: i32,
    },
    Kill {
        holder: u64,
    },
    Sleep(u64),
    Isolate(pb::IsolateRequest),
    Heal(Vec<String>),
    Reboot {
        simulated: bool,
        down_ms: u32,
    },
    LinkDown(pb::LinkDownRequest),
    LinkUp(pb::LinkUpRequest),
    Abort(pb::AbortConnectionsRequest),
    Process(pb::ProcessFaultRequest),
    Unsupported(&'static str),
}

pub(super) fn prepare(step: &Step, run: &CaseRun<'_>) -> Result<Prepared, StepError> {
    let role = step.role.clone().unwrap_or_default();
    let agent = match step.role.as_ref() {
        Some(role) => Arc::clone(
            run.agents
                .get(role)
                .ok_or_else(|| StepError::Failed(format!("role {role} is not bound")))?,
        ),
        // Steps without a role (sleep) run on the controller; any agent serves for the clock.
        None => run
            .agents
            .values()
            .next()
            .cloned()
            .ok_or_else(|| StepError::Failed("no agents".to_owned()))?,
    };
    let holder = || run.names.holders.get(&role).copied().unwrap_or(0);
    let conn = |name: &str| {
        run.names
            .conns
            .get(name)
            .map(|(id, _, _)| *id)
            .ok_or_else(|| {
                StepError::Failed(format!(
                    "step {}: connection {name:?} was never opened",
                    step.name
                ))
            })
    };
    let listener = |name: &str| {
        run.names.listeners.get(name).cloned().ok_or_else(|| {
            StepError::Failed(format!(
                "step {}: listener {name:?} was never opened",
                step.name
            ))
        })
    };
    let target = run.targets.get(&role);
    let process_request = |action: pb::ProcessAction| -> Call {
        let which = target
            .and_then(|target| target.target.process.as_ref())
            .map(process_target);
        match which {
            Some(which) => Call::Process(pb::ProcessFaultRequest {
                target: Some(which),
                action: action as i32,
            }),
            None => Call::Unsupported(
                "stop, continue and restart (they act on an application's process)",
            ),
        }
    };
    let mut byte_rewrite = None;
    let call = match &step.action {
        Action::Kill if target.is_some() => process_request(pb::ProcessAction::Kill),
        Action::Stop => process_request(pb::ProcessAction::Stop),
        Action::Continue => process_request(pb::ProcessAction::Continue),
        Action::Restart => process_request(pb::ProcessAction::Restart),
        Action::AbortConnections { conn } => {
            let filter = match (conn, target) {
                (Some(conn), _) => {
                    let (local, remote) = flow(run, &role, conn)?;
                    pb::ConnectionFilter {
                        local: local.to_string(),
                        remote: remote.to_string(),
                        ..pb::ConnectionFilter::default()
                    }
                }
                (None, Some(target)) => pb::ConnectionFilter {
                    local_port: u32::from(target.address.port()),
                    ..pb::ConnectionFilter::default()
                },
                (None, None) => {
                    return Err(StepError::Failed(format!(
                        "step {}: name the connection whose flow to abort (conn = ...)",
                        step.name
                    )));
                }
            };
            Call::Abort(pb::AbortConnectionsRequest {
                filter: Some(filter),
            })
        }
        Action::Listen { listener, options } => Call::Listen {
            name: listener.clone(),
            holder: holder(),
            options: socket_options(options),
        },
        Action::StopListening { listener: name } => Call::StopListening {
            listener: listener(name)?.0,
        },
        Action::Connect {
            to,
            conn,
            options,
            timeout_ms,
        } => Call::Connect {
            name: conn.clone(),
            holder: holder(),
            address: listener(to)?.1,
            options: socket_options(options),
            timeout_ms: *timeout_ms,
        },
        Action::Accept {
            listener: name,
            conn,
            timeout_ms,
        } => Call::Accept {
            name: conn.clone(),
            listener: listener(name)?.0,
            timeout_ms: *timeout_ms,
        },
        Action::Send {
            conn: name,
            payload,
            timeout_ms,
        } => {
            let payload = match application_payload(run, name, payload) {
                Some((theirs, meant, sent)) => {
                    byte_rewrite = Some((meant, sent));
                    theirs
                }
                None => scenario_payload(payload),
            };
            Call::Send(pb::SendRequest {
                conn_id: conn(name)?,
                payload: Some(payload),
                timeout_ms: *timeout_ms,
            })
        }
        Action::Recv {
            conn: name,
            all,
            max_bytes,
            timeout_ms,
        } => Call::Recv(pb::RecvRequest {
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
        Action::Close { conn: name, mode } => Call::Close(pb::CloseRequest {
            conn_id: conn(name)?,
            mode: close_mode(*mode) as i32,
            timeout_ms: 0,
        }),
        Action::SetOptions {
            conn: name,
            options,
        } => Call::SetOptions(pb::SetOptionsRequest {
            target: Some(pb::set_options_request::Target::ConnId(conn(name)?)),
            options: socket_options(options),
        }),
        Action::Watch { conn: name } => Call::Watch(conn(name)?),
        Action::WaitEnd {
            conn: name,
            timeout_ms,
        } => Call::WaitEnd {
            conn: conn(name)?,
            timeout_ms: if *timeout_ms == 0 {
                DEFAULT_WAIT_MS
            } else {
                *timeout_ms
            },
        },
        Action::Exit { code } => Call::Exit {
            holder: holder(),
            code: *code,
        },
        Action::Kill => Call::Kill { holder: holder() },
        Action::Sleep { ms } => Call::Sleep(*ms),
        Action::Join { .. } => Call::Unsupported("join"),
        Action::Isolate {
            mode,
            deadline_ms,
            conn,
        } => {
            let flow = conn
                .as_ref()
                .map(|conn| flow(run, &role, conn))
                .transpose()?;
            Call::Isolate(pb::IsolateRequest {
                id: format!("{}-{}-{:x}", run.case_id, step.name, run.clock.now_ns()),
                mode: if mode == "reject" {
                    pb::IsolationMode::Reject
                } else {
                    pb::IsolationMode::Drop
                } as i32,
                peer: flow.map_or_else(String::new, |(_, remote)| remote.ip().to_string()),
                port: flow.map_or(0, |(local, _)| u32::from(local.port())),
                peer_port: flow.map_or(0, |(_, remote)| u32::from(remote.port())),
                direction: pb::Direction::Both as i32,
                deadline_ms: u32::try_from(*deadline_ms).unwrap_or(u32::MAX),
                include_control_channel: false,
            })
        }
        Action::Heal => Call::Heal(
            run.names
                .isolations
                .iter()
                .filter(|(owner, _)| owner == &role)
                .map(|(_, id)| id.clone())
                .collect(),
        ),
        Action::LinkDown { deadline_ms } => Call::LinkDown(pb::LinkDownRequest {
            interface: String::new(),
            address: agent.test_ip.to_string(),
            deadline_ms: u32::try_from(*deadline_ms).unwrap_or(u32::MAX),
            allow_control_interface: false,
        }),
        Action::LinkUp => Call::LinkUp(pb::LinkUpRequest {
            interface: String::new(),
            address: agent.test_ip.to_string(),
        }),
        Action::Reboot { simulated, down_ms } => Call::Reboot {
            simulated: *simulated,
            down_ms: u32::try_from(*down_ms).unwrap_or(u32::MAX),
        },
    };
    let span = tracing::info_span!(
        "step",
        otel.name = %format!("{}: {} on {}", step.name, step.action.keyword(), agent.name),
        faultlab.step = %step.name,
        faultlab.call = step.action.keyword(),
        faultlab.role = %role,
        faultlab.agent = %agent.name,
        faultlab.background = step.background,
    );
    Ok(Prepared {
        agent,
        clock: run.clock,
        role,
        call,
        span,
        byte_rewrite,
        start_at: None,
    })
}

impl Prepared {
    /// Act at `release_ns` on the run clock: the agent is told that moment
    /// on its own clock.
    pub(super) fn release_at(&mut self, release_ns: i64) {
        self.start_at = Some(StartAt {
            run_ns: release_ns,
            mono_ns: u64::try_from(release_ns.saturating_add(self.agent.clock_offset_ns))
                .unwrap_or(0),
        });
    }

    /// Run, and remember the names a listen/connect/accept defined.
    pub(super) async fn perform_and_record(
        self,
        names: &mut Names,
    ) -> Result<Option<Outcome>, StepError> {
        let naming = self.note(names);
        let ran = self.run().await?;
        Ok(naming.define(names, ran))
    }

    /// Book what the step is about to change (isolations, frozen
    /// applications, links down: cleanup must undo them even if it fails),
    /// and say which name it will define.
    pub(super) fn note(&self, names: &mut Names) -> Naming {
        let role = self.role.clone();
        match &self.call {
            Call::Connect { name, address, .. } => {
                names.dialed.insert(name.clone(), *address);
            }
            Call::Process(request) => {
                names.frozen.retain(|frozen| frozen != &role);
                if request.action == pb::ProcessAction::Stop as i32 {
                    names.frozen.push(role.clone());
                }
            }
            Call::Isolate(request) => names.isolations.push((role.clone(), request.id.clone())),
            Call::Heal(ids) => names.isolations.retain(|(_, id)| !ids.contains(id)),
            Call::LinkDown(_) => names.links_down.push(role.clone()),
            Call::LinkUp(_) => names.links_down.retain(|owner| owner != &role),
            _ => {}
        }
        Naming {
            // A stop-listening keeps the name: its address is what a
            // connect to a closed port needs.
            defined: match &self.call {
                Call::Listen { name, .. }
                | Call::Connect { name, .. }
                | Call::Accept { name, .. } => Some(name.clone()),
                _ => None,
            },
            is_listen: matches!(self.call, Call::Listen { .. }),
            is_sleep: matches!(self.call, Call::Sleep(_)),
            role,
        }
    }

    /// Run on its own (a background step).
    pub(super) async fn perform(self) -> Result<Outcome, StepError> {
        self.run().await.map(|(outcome, _, _)| outcome)
    }

    /// [`Self::call`] in the step's span, which learns how it ended.
    pub(super) async fn run(self) -> Result<(Outcome, Option<u64>, Option<SocketAddr>), StepError> {
        let span = self.span.clone();
        let result = self.request().instrument(span.clone()).await;
        match &result {
            Ok((outcome, _, _)) => {
                let mut attributes = vec![
                    faultlab_telemetry::Attribute::new(
                        "faultlab.outcome",
                        outcome.outcome.as_str(),
                    ),
                    faultlab_telemetry::Attribute::new(
                        "faultlab.bytes",
                        i64::try_from(outcome.bytes).unwrap_or(i64::MAX),
                    ),
                ];
                if !outcome.errno_name.is_empty() {
                    attributes.push(faultlab_telemetry::Attribute::new(
                        "faultlab.errno_name",
                        outcome.errno_name.clone(),
                    ));
                }
                faultlab_telemetry::annotate(&span, attributes);
            }
            Err(StepError::AgentLost(why) | StepError::Failed(why)) => {
                faultlab_telemetry::fail(&span, why);
            }
        }
        result
    }

    /// The call, its outcome, the id it created, the address it bound.
    async fn request(self) -> Result<(Outcome, Option<u64>, Option<SocketAddr>), StepError> {
        let agent = &self.agent;
        let mut client = agent.client.clone();
        let failed = |status: tonic::Status| lost_or_failed(agent, &status);
        let at = self.start_at;
        // A step released at a scheduled moment starts then, not when asked.
        let start = at.map_or(self.clock.now_ns(), |at| at.run_ns.max(self.clock.now_ns()));
        let ok = |call: &str, clock: &RunClock| Outcome::ok(call, start, clock.now_ns());
        Ok(match self.call {
            Call::Listen {
                holder, options, ..
            } => {
                let reply = client
                    .listen(scheduled(
                        at,
                        pb::ListenRequest {
                            holder_id: holder,
                            address: SocketAddr::new(agent.test_ip, 0).to_string(),
                            backlog: 128,
                            options,
                        },
                    ))
                    .await
                    .map_err(failed)?
                    .into_inner();
                let address = reply.local_address.parse().map_err(|_| {
                    StepError::Failed(format!(
                        "agent {} listens on {:?}, not an address",
                        agent.name, reply.local_address
                    ))
                })?;
                (
                    ok("listen", &self.clock),
                    Some(reply.listener_id),
                    Some(address),
                )
            }
            Call::StopListening { listener } => {
                client
                    .stop_listening(scheduled(
                        at,
                        pb::StopListeningRequest {
                            listener_id: listener,
                        },
                    ))
                    .await
                    .map_err(failed)?;
                (ok("stop-listening", &self.clock), None, None)
            }
            Call::Connect {
                holder,
                address,
                options,
                timeout_ms,
                ..
            } => {
                let reply = client
                    .dial(scheduled(
                        at,
                        pb::ConnectRequest {
                            holder_id: holder,
                            address: address.to_string(),
                            options,
                            timeout_ms,
                        },
                    ))
                    .await
                    .map_err(failed)?
                    .into_inner();
                connected(agent, reply)?
            }
            Call::Accept {
                listener,
                timeout_ms,
                ..
            } => {
                let reply = client
                    .accept(scheduled(
                        at,
                        pb::AcceptRequest {
                            listener_id: listener,
                            timeout_ms,
                        },
                    ))
                    .await
                    .map_err(failed)?
                    .into_inner();
                connected(agent, reply)?
            }
            Call::Send(request) => observed(
                agent,
                client.send(scheduled(at, request)).await,
                "send",
                start,
                &self.clock,
            )?,
            Call::Recv(request) => observed(
                agent,
                client.recv(scheduled(at, request)).await,
                "recv",
                start,
                &self.clock,
            )?,
            Call::Close(request) => observed(
                agent,
                client.close(scheduled(at, request)).await,
                "close",
                start,
                &self.clock,
            )?,
            Call::SetOptions(request) => {
                client
                    .set_options(scheduled(at, request))
                    .await
                    .map_err(failed)?;
                (ok("set-options", &self.clock), None, None)
            }
            Call::Watch(conn_id) => {
                client
                    .watch(scheduled(at, pb::WatchRequest { conn_id }))
                    .await
                    .map_err(failed)?;
                (ok("watch", &self.clock), None, None)
            }
            Call::WaitEnd { conn, timeout_ms } => (
                wait_end(agent, conn, timeout_ms, start, &self.clock).await?,
                None,
                None,
            ),
            Call::Exit { holder, code } => {
                let exit = client
                    .exit_holder(scheduled(
                        at,
                        pb::ExitHolderRequest {
                            holder_id: holder,
                            exit_code: code,
                        },
                    ))
                    .await
                    .map_err(failed)?
                    .into_inner();
                (
                    Outcome::ok("exit", start, agent.run_ns(exit.mono_ns)),
                    None,
                    None,
                )
            }
            Call::Kill { holder } => {
                let exit = client
                    .kill_holder(scheduled(at, pb::KillHolderRequest { holder_id: holder }))
                    .await
                    .map_err(failed)?
                    .into_inner();
                (
                    Outcome::ok("kill", start, agent.run_ns(exit.mono_ns)),
                    None,
                    None,
                )
            }
            Call::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                (ok("sleep", &self.clock), None, None)
            }
            Call::Isolate(request) => {
                client
                    .isolate(scheduled(at, request))
                    .await
                    .map_err(failed)?;
                (ok("isolate", &self.clock), None, None)
            }
            Call::Heal(ids) => {
                for id in ids {
                    client
                        .heal(scheduled(at, pb::HealRequest { id, all: false }))
                        .await
                        .map_err(failed)?;
                }
                (ok("heal", &self.clock), None, None)
            }
            Call::Reboot { simulated, down_ms } => {
                client
                    .reboot(scheduled(at, pb::RebootRequest { simulated, down_ms }))
                    .await
                    .map_err(failed)?;
                if !simulated {
                    wait_for_new_boot(agent).await?;
                }
                (ok("reboot", &self.clock), None, None)
            }
            Call::LinkDown(request) => {
                client
                    .link_down(scheduled(at, request))
                    .await
                    .map_err(failed)?;
                (ok("link-down", &self.clock), None, None)
            }
            Call::LinkUp(request) => {
                client
                    .link_up(scheduled(at, request))
                    .await
                    .map_err(failed)?;
                (ok("link-up", &self.clock), None, None)
            }
            Call::Abort(request) => {
                let reply = client
                    .abort_connections(scheduled(at, request))
                    .await
                    .map_err(failed)?
                    .into_inner();
                let mut outcome =
                    Outcome::ok("abort-connections", start, agent.run_ns(reply.mono_ns));
                // How many connections went: the scenario can expect it.
                outcome.bytes = reply.aborted.len() as u64;
                (outcome, None, None)
            }
            Call::Process(request) => {
                let call = match pb::ProcessAction::try_from(request.action) {
                    Ok(pb::ProcessAction::Kill) => "kill",
                    Ok(pb::ProcessAction::Stop) => "stop",
                    Ok(pb::ProcessAction::Continue) => "continue",
                    Ok(pb::ProcessAction::Restart) => "restart",
                    _ => "process",
                };
                let reply = client
                    .process_fault(scheduled(at, request))
                    .await
                    .map_err(failed)?
                    .into_inner();
                (
                    Outcome::ok(call, start, agent.run_ns(reply.mono_ns)),
                    None,
                    None,
                )
            }
            Call::Unsupported(what) => {
                return Err(StepError::Failed(format!(
                    "{what} is not available for this role"
                )));
            }
        })
    }
}

type Ran = (Outcome, Option<u64>, Option<SocketAddr>);

/// The name a step defines, known once it has run.
pub(super) struct Naming {
    role: String,
    defined: Option<String>,
    is_listen: bool,
    is_sleep: bool,
}

impl Naming {
    /// Remember what the step defined; its outcome, unless it was a sleep.
    pub(super) fn define(
        self,
        names: &mut Names,
        (outcome, new_id, address): Ran,
    ) -> Option<Outcome> {
        if let Some(name) = self.defined {
            match (self.is_listen, new_id) {
                (true, Some(id)) => {
                    if let Some(address) = address {
                        names.listeners.insert(name, (id, address, self.role));
                    }
                }
                (false, Some(id)) => {
                    names.conns.insert(name, (id, self.role, address));
                }
                _ => {}
            }
        }
        (!self.is_sleep).then_some(outcome)
    }
}

/// How often a controller asks a rebooting agent whether it is back.
const REBOOT_POLL: Duration = Duration::from_secs(1);

/// After a real reboot: wait until the agent answers with another boot id
/// (the case's timeout bounds the wait).
async fn wait_for_new_boot(agent: &AgentHandle) -> Result<(), StepError> {
    loop {
        tokio::time::sleep(REBOOT_POLL).await;
        let mut client = agent.client.clone();
        if let Ok(info) = client.host_info(pb::HostInfoRequest {}).await
            && info.get_ref().boot_id != agent.info.boot_id
        {
            return Ok(());
        }
    }
}

fn connected(agent: &AgentHandle, reply: pb::ConnectReply) -> Result<Ran, StepError> {
    let observation = reply
        .observation
        .ok_or_else(|| StepError::Failed(format!("agent {} gave no observation", agent.name)))?;
    let id = (reply.conn_id != 0).then_some(reply.conn_id);
    let local = reply.local_address.parse().ok();
    Ok((Outcome::observed(agent, &observation), id, local))
}

fn observed(
    agent: &AgentHandle,
    result: Result<tonic::Response<pb::Observation>, tonic::Status>,
    call: &str,
    start: i64,
    clock: &RunClock,
) -> Result<Ran, StepError> {
    match result {
        Ok(reply) => Ok((Outcome::observed(agent, &reply.into_inner()), None, None)),
        Err(status) if holder_gone(&status) => {
            let mut outcome = Outcome::ok(call, start, clock.now_ns());
            outcome.outcome = ExpectedOutcome::HolderGone;
            Ok((outcome, None, None))
        }
        Err(status) => Err(lost_or_failed(agent, &status)),
    }
}

async fn wait_end(
    agent: &AgentHandle,
    conn_id: u64,
    timeout_ms: u32,
    start: i64,
    clock: &RunClock,
) -> Result<Outcome, StepError> {
    let mut client = agent.client.clone();
    let mut events = client
        .events(pb::EventsRequest { since: 0 })
        .await
        .map_err(|status| lost_or_failed(agent, &status))?
        .into_inner();
    let waited = tokio::time::timeout(Duration::from_millis(u64::from(timeout_ms)), async {
        while let Some(event) = events
            .message()
            .await
            .map_err(|status| lost_or_failed(agent, &status))?
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
            let mut outcome = Outcome::ok("watch", start, clock.now_ns());
            outcome.outcome = ExpectedOutcome::Timeout;
            Ok(outcome)
        }
    }
}
