//! Health probes: after a case, did the application survive, and did it
//! free its connections?
//!
//! A server can pass every socket call and still be broken: hung, crashed,
//! or holding connections whose peer is long gone (CLOSE-WAIT after the
//! peer's FIN is the classic leak: the server never called close()). The
//! probe makes a fresh connection from an agent, sends the target's
//! request and waits for a reply matching its pattern, all within a time
//! bound; then, when an agent runs on the application's host, it counts the
//! sockets of the application's port by state until what the case *added*
//! (against a count taken before it) is within the target's bounds, or the
//! time bound passes. Sockets an earlier case left are that case's finding.

use super::handles::{AgentHandle, TargetHandle};
use crate::agents::Client;
use crate::report::ProbeReport;
use faultlab_proto::v1 as pb;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often socket counts are read while waiting for them to settle.
const POLL: Duration = Duration::from_millis(50);
/// Longest reply kept in the report.
const REPLY_CHARS: usize = 200;

/// Sockets of a port by state ("ESTAB" → 2).
pub type SocketCounts = BTreeMap<String, u32>;

/// The application's sockets before a case, when an agent on its host can count them.
pub async fn baseline(target: &TargetHandle) -> SocketCounts {
    match &target.host {
        Some(host) => count_sockets(target, host, None).await.unwrap_or_default(),
        None => SocketCounts::new(),
    }
}

/// Probe the application playing `role` from `from`; `before` is its
/// [`baseline`] from the start of the case.
pub async fn probe(
    role: &str,
    target: &TargetHandle,
    from: &AgentHandle,
    before: Option<&SocketCounts>,
) -> ProbeReport {
    let started = Instant::now();
    let bound = Duration::from_millis(target.target.probe.timeout_ms.max(1));
    let mut report = ProbeReport {
        role: role.to_owned(),
        target: target.target.name.clone(),
        address: target.address.to_string(),
        from: from.name.clone(),
        ..ProbeReport::default()
    };
    match tokio::time::timeout(bound, request_reply(target, from, &mut report)).await {
        Ok(Ok(())) => report.healthy = true,
        Ok(Err(problem)) => report.problems.push(problem),
        Err(_) => report.problems.push(format!(
            "no {} within {} ms{}",
            if target.target.reply.is_some() {
                "matching reply"
            } else {
                "connection"
            },
            bound.as_millis(),
            if report.connect_ms.is_none() {
                " (refused connections were retried until then)"
            } else {
                ""
            }
        )),
    }
    if let Some(host) = &target.host {
        let deadline = started + bound;
        let empty = SocketCounts::new();
        let own = report.own_address.as_deref();
        match settled_sockets(target, host, deadline, before.unwrap_or(&empty), own).await {
            Ok((counts, problems)) => {
                report.sockets = counts;
                report.problems.extend(problems);
            }
            Err(problem) => report.problems.push(problem),
        }
    }
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}

/// A fresh connection, the target's request, a matching reply; the holder
/// used for it is killed whatever happens.
async fn request_reply(
    target: &TargetHandle,
    from: &AgentHandle,
    report: &mut ProbeReport,
) -> Result<(), String> {
    let mut client = from.client.clone();
    let holder = client
        .spawn_holder(pb::SpawnHolderRequest {
            label: format!("probe/{}", target.target.name),
            session: super::handles::session_id().to_owned(),
        })
        .await
        .map_err(|status| format!("agent {}: {}", from.name, status.message()))?
        .into_inner()
        .holder_id;
    let result = exchange(target, &mut client, holder, report).await;
    let _ = client
        .kill_holder(pb::KillHolderRequest { holder_id: holder })
        .await;
    result
}

/// Connect, send the target's request, wait for its reply, close.
async fn exchange(
    target: &TargetHandle,
    client: &mut Client,
    holder: u64,
    report: &mut ProbeReport,
) -> Result<(), String> {
    let timeout_ms = u32::try_from(target.target.probe.timeout_ms).unwrap_or(u32::MAX);
    let connecting = Instant::now();
    let reply = connect(target, client, holder, timeout_ms).await?;
    report.connect_ms = Some(u64::try_from(connecting.elapsed().as_millis()).unwrap_or(0));
    report.own_address = Some(reply.local_address.clone());
    let conn_id = reply.conn_id;
    if let Some(payload) = &target.target.payload {
        let request = pb::SendRequest {
            conn_id,
            payload: Some(pb::send_request::Payload::Template(pb::Template {
                text: payload.clone(),
                count: 1,
                interval_ms: 0,
            })),
            timeout_ms,
        };
        let sent = client
            .send(request)
            .await
            .map_err(|status| status.message().to_owned())?
            .into_inner();
        if sent.outcome() != pb::Outcome::Ok {
            return Err(format!("sending the request failed: {}", sent.error_name));
        }
    }
    if let Some(pattern) = &target.target.reply {
        await_reply(client, conn_id, pattern, timeout_ms, report).await?;
    }
    let close = pb::CloseRequest {
        conn_id,
        mode: pb::CloseMode::Graceful as i32,
        timeout_ms: 0,
    };
    let _ = client.close(close).await;
    Ok(())
}

/// A fresh connection to the target. A restarted application may not
/// listen yet: a refusal is retried until the time bound (the caller's
/// timeout) ends the wait.
async fn connect(
    target: &TargetHandle,
    client: &mut Client,
    holder: u64,
    timeout_ms: u32,
) -> Result<pb::ConnectReply, String> {
    let reply = loop {
        let request = pb::ConnectRequest {
            holder_id: holder,
            address: target.address.to_string(),
            options: None,
            timeout_ms,
        };
        let reply = client
            .dial(request)
            .await
            .map_err(|status| status.message().to_owned())?
            .into_inner();
        let refused = reply
            .observation
            .as_ref()
            .is_some_and(|observation| observation.error_name == "ECONNREFUSED");
        if reply.conn_id != 0 || !refused {
            break reply;
        }
        tokio::time::sleep(POLL).await;
    };
    if reply.conn_id == 0 {
        let why = reply
            .observation
            .map(|observation| observation.error_name)
            .unwrap_or_default();
        return Err(format!("a fresh connection failed: {why}"));
    }
    Ok(reply)
}

/// Read until what arrived matches `pattern`, the connection ends, or a
/// read fails.
async fn await_reply(
    client: &mut Client,
    conn_id: u64,
    pattern: &regex::bytes::Regex,
    timeout_ms: u32,
    report: &mut ProbeReport,
) -> Result<(), String> {
    let mut received = Vec::new();
    loop {
        let request = pb::RecvRequest {
            conn_id,
            mode: pb::RecvMode::Once as i32,
            max_bytes: 0,
            timeout_ms,
            return_data: true,
        };
        let read = client
            .recv(request)
            .await
            .map_err(|status| status.message().to_owned())?
            .into_inner();
        received.extend_from_slice(&read.data);
        report.reply = Some(
            String::from_utf8_lossy(&received)
                .chars()
                .take(REPLY_CHARS)
                .collect(),
        );
        if pattern.is_match(&received) {
            return Ok(());
        }
        match read.outcome() {
            pb::Outcome::Ok => {}
            pb::Outcome::Eof => {
                return Err(format!(
                    "the connection ended before a reply matched /{pattern}/"
                ));
            }
            _ => {
                return Err(format!(
                    "no reply matching /{pattern}/: recv {}",
                    if read.error_name.is_empty() {
                        "timed out".to_owned()
                    } else {
                        read.error_name
                    }
                ));
            }
        }
    }
}

/// The port's sockets by state, listeners left out.
async fn count_sockets(
    target: &TargetHandle,
    host: &AgentHandle,
    leave_out: Option<&str>,
) -> Result<SocketCounts, String> {
    let mut client = host.client.clone();
    let listed = client
        .list_connections(pb::ListConnectionsRequest {
            filter: Some(pb::ConnectionFilter {
                local_port: u32::from(target.address.port()),
                ..pb::ConnectionFilter::default()
            }),
        })
        .await
        .map_err(|status| {
            format!(
                "agent {} could not list connections: {}",
                host.name,
                status.message()
            )
        })?
        .into_inner();
    let mut counts = SocketCounts::new();
    for connection in listed.connections {
        if Some(connection.remote_address.as_str()) != leave_out {
            *counts.entry(connection.state_name).or_default() += 1;
        }
    }
    Ok(counts)
}

/// Count the port's sockets by state until what the case added is within
/// bounds or the deadline passes (at least once).
async fn settled_sockets(
    target: &TargetHandle,
    host: &AgentHandle,
    deadline: Instant,
    before: &SocketCounts,
    leave_out: Option<&str>,
) -> Result<(SocketCounts, Vec<String>), String> {
    let started = Instant::now();
    loop {
        let counts = count_sockets(target, host, leave_out).await?;
        let over: Vec<String> = target
            .target
            .probe
            .max
            .iter()
            .filter_map(|(state, &max)| {
                let earlier = before.get(state).copied().unwrap_or(0);
                let added = counts.get(state).copied().unwrap_or(0).saturating_sub(earlier);
                (added > max).then(|| {
                    format!(
                        "{added} connection{} of port {} left in {state} on {}, still there after {} ms (at most {max} allowed){}",
                        if added == 1 { "" } else { "s" },
                        target.address.port(),
                        host.name,
                        started.elapsed().as_millis(),
                        if earlier > 0 {
                            format!("; {earlier} before the case")
                        } else {
                            String::new()
                        }
                    )
                })
            })
            .collect();
        if over.is_empty() || Instant::now() >= deadline {
            return Ok((counts, over));
        }
        tokio::time::sleep(POLL).await;
    }
}
