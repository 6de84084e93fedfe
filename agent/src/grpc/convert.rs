//! Requests into validated domain types, domain answers into replies: the
//! only place that knows both the generated protobuf types and the agent's
//! own. A field out of range becomes `InvalidArgument` naming the field.

use crate::agent::Connection;
use crate::capture::Captured;
use crate::degrade::{Impairment, Selection};
use crate::error::AgentError;
use crate::hostinfo::HostInfo;
use crate::isolate::{Cidr, Connections, Direction, Isolation, Mode};
use crate::model::{
    Call, CloseMode, Event, EventKind, HolderExit, Keepalive, Linger, MESSAGE_HEADER_BYTES,
    Observation, Outcome, Payload, RecvMode, SocketOptions,
};
use crate::platform::{Current, Platform, wall_unix_ns};
use crate::process::{ProcessAction, ProcessTarget};
use crate::sockets::{ConnectionFilter, Remote, TcpConnection};
use crate::tune::TcpSetting;
use faultlab_proto::v1 as pb;
use std::collections::HashMap;
use std::net::SocketAddr;

/// A timeout of 0 in a request means this.
pub const DEFAULT_TIMEOUT_MS: u32 = 30_000;
/// No call may wait longer than this.
pub const MAX_TIMEOUT_MS: u32 = 3_600_000;
/// Largest literal payload or framed message.
pub const MAX_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest filler payload (a flat-out send still ends at its timeout).
pub const MAX_FILLER_BYTES: u64 = 1 << 40;
/// Largest linger time (Windows keeps it in 16 bits).
pub const MAX_LINGER_SECONDS: u32 = 65_535;
/// Keepalive probes: Linux allows at most 127.
pub const MAX_KEEPALIVE_COUNT: u32 = 127;

pub(super) fn invalid(message: String) -> AgentError {
    AgentError::InvalidArgument(message)
}

pub(super) fn address(field: &str, text: &str) -> Result<SocketAddr, AgentError> {
    text.parse().map_err(|_| {
        invalid(format!(
            "{field}: {text:?} is not an address of the form ip:port (e.g. 198.18.0.1:7000 or [::1]:7000)"
        ))
    })
}

pub(super) fn timeout(field: &str, millis: u32) -> Result<u32, AgentError> {
    match millis {
        0 => Ok(DEFAULT_TIMEOUT_MS),
        too_long if too_long > MAX_TIMEOUT_MS => Err(invalid(format!(
            "{field}: {too_long} ms is longer than the limit of {MAX_TIMEOUT_MS} ms"
        ))),
        ok => Ok(ok),
    }
}

pub(super) fn whole_seconds(field: &str, millis: u32) -> Result<Option<u32>, AgentError> {
    match millis {
        0 => Ok(None),
        1..=999 => Err(invalid(format!(
            "{field}: {millis} ms is under 1000 ms; the OS counts keepalive timers in whole seconds"
        ))),
        ok => Ok(Some(ok)),
    }
}

pub(super) fn buffer(field: &str, bytes: Option<u32>) -> Result<Option<u32>, AgentError> {
    match bytes {
        Some(0) => Err(invalid(format!(
            "{field}: a buffer of 0 bytes cannot be set"
        ))),
        other => Ok(other),
    }
}

/// Longest isolation id.
const MAX_ID_CHARS: usize = 64;
/// Default down time of a simulated reboot.
pub(super) const DEFAULT_DOWN_MS: u32 = 3_000;

pub(super) fn isolation_id(id: &str) -> Result<String, AgentError> {
    let fits = !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if fits {
        Ok(id.to_owned())
    } else {
        Err(invalid(format!(
            "id: {id:?} must be 1 to {MAX_ID_CHARS} letters, digits, '-', '_', '.' or ':'"
        )))
    }
}

impl TryFrom<pb::IsolateRequest> for Isolation {
    type Error = AgentError;

    fn try_from(request: pb::IsolateRequest) -> Result<Self, AgentError> {
        let mode = match pb::IsolationMode::try_from(request.mode) {
            Ok(pb::IsolationMode::Drop) => Mode::Drop,
            Ok(pb::IsolationMode::Reject) => Mode::Reject,
            _ => {
                return Err(invalid(format!(
                    "mode: {} is not ISOLATION_MODE_DROP (1) or ISOLATION_MODE_REJECT (2)",
                    request.mode
                )));
            }
        };
        let direction = match pb::Direction::try_from(request.direction) {
            Ok(pb::Direction::In) => Direction::In,
            Ok(pb::Direction::Out) => Direction::Out,
            Ok(pb::Direction::Both | pb::Direction::Unspecified) => Direction::Both,
            Err(_) => {
                return Err(invalid(format!(
                    "direction: {} is not a direction",
                    request.direction
                )));
            }
        };
        let peer = match request.peer.as_str() {
            "" => None,
            text => Some(Cidr::parse(text).ok_or_else(|| {
                invalid(format!(
                    "peer: {text:?} is not an address or CIDR block (198.18.0.3, 198.18.0.0/24)"
                ))
            })?),
        };
        let port = optional_port("port", request.port)?;
        let peer_port = optional_port("peer_port", request.peer_port)?;
        if peer_port.is_some() && port.is_none() {
            return Err(invalid(
                "peer_port: give the local port too (a flow is peer address, peer port and local port)".to_owned(),
            ));
        }
        let connections = connections(request.connections)?;
        if connections != Connections::All && request.include_control_channel {
            return Err(invalid(
                "include_control_channel: only with every connection (CONNECTIONS_ALL); the control channel is cut whole or not at all".to_owned(),
            ));
        }
        if request.deadline_ms == 0 {
            return Err(invalid(
                "deadline_ms: every isolation needs a deadline (the kernel lifts it then)"
                    .to_owned(),
            ));
        }
        Ok(Self {
            id: isolation_id(&request.id)?,
            mode,
            peer,
            port,
            peer_port,
            direction,
            connections,
            deadline: crate::platform::millis(request.deadline_ms),
            include_control_channel: request.include_control_channel,
        })
    }
}

impl TryFrom<Option<pb::SocketOptions>> for SocketOptions {
    type Error = AgentError;

    fn try_from(options: Option<pb::SocketOptions>) -> Result<Self, AgentError> {
        let Some(options) = options else {
            return Ok(Self::default());
        };
        let linger = match options.linger {
            None => None,
            Some(pb::Linger { enabled: false, .. }) => Some(Linger::Off),
            Some(pb::Linger { seconds, .. }) if seconds > MAX_LINGER_SECONDS => {
                return Err(invalid(format!(
                    "options.linger.seconds: {seconds} is over the limit of {MAX_LINGER_SECONDS}"
                )));
            }
            Some(pb::Linger { seconds, .. }) => Some(Linger::On { seconds }),
        };
        let keepalive = match options.keepalive {
            None => None,
            Some(pb::Keepalive { enabled: false, .. }) => Some(Keepalive::Off),
            Some(keepalive) => {
                if keepalive.count > MAX_KEEPALIVE_COUNT {
                    return Err(invalid(format!(
                        "options.keepalive.count: {} is over the limit of {MAX_KEEPALIVE_COUNT}",
                        keepalive.count
                    )));
                }
                Some(Keepalive::On {
                    idle_ms: whole_seconds("options.keepalive.idle_ms", keepalive.idle_ms)?,
                    interval_ms: whole_seconds(
                        "options.keepalive.interval_ms",
                        keepalive.interval_ms,
                    )?,
                    count: (keepalive.count > 0).then_some(keepalive.count),
                })
            }
        };
        Ok(Self {
            linger,
            keepalive,
            user_timeout_ms: options.user_timeout_ms,
            nodelay: options.nodelay,
            send_buffer_bytes: buffer("options.send_buffer_bytes", options.send_buffer_bytes)?,
            recv_buffer_bytes: buffer("options.recv_buffer_bytes", options.recv_buffer_bytes)?,
        })
    }
}

impl From<SocketOptions> for pb::SocketOptions {
    fn from(options: SocketOptions) -> Self {
        Self {
            linger: options.linger.map(|linger| match linger {
                Linger::Off => pb::Linger {
                    enabled: false,
                    seconds: 0,
                },
                Linger::On { seconds } => pb::Linger {
                    enabled: true,
                    seconds,
                },
            }),
            keepalive: options.keepalive.map(|keepalive| match keepalive {
                Keepalive::Off => pb::Keepalive::default(),
                Keepalive::On {
                    idle_ms,
                    interval_ms,
                    count,
                } => pb::Keepalive {
                    enabled: true,
                    idle_ms: idle_ms.unwrap_or(0),
                    interval_ms: interval_ms.unwrap_or(0),
                    count: count.unwrap_or(0),
                },
            }),
            user_timeout_ms: options.user_timeout_ms,
            nodelay: options.nodelay,
            send_buffer_bytes: options.send_buffer_bytes,
            recv_buffer_bytes: options.recv_buffer_bytes,
        }
    }
}

/// A pause between messages: no longer than any call may wait.
pub(super) fn pause(field: &str, millis: u32) -> Result<u32, AgentError> {
    if millis > MAX_TIMEOUT_MS {
        return Err(invalid(format!(
            "{field}: {millis} is over the limit of {MAX_TIMEOUT_MS}"
        )));
    }
    Ok(millis)
}

pub(super) fn payload(payload: Option<pb::send_request::Payload>) -> Result<Payload, AgentError> {
    use pb::send_request::Payload as P;
    match payload {
        None => Err(invalid(
            "payload: one of data, byte_count, messages or template is required".to_owned(),
        )),
        Some(P::Data(bytes)) if bytes.len() as u64 > MAX_MESSAGE_BYTES => Err(invalid(format!(
            "data: {} bytes is over the limit of {MAX_MESSAGE_BYTES}",
            bytes.len()
        ))),
        Some(P::Data(bytes)) => Ok(Payload::Bytes(bytes)),
        Some(P::ByteCount(count)) if count > MAX_FILLER_BYTES => Err(invalid(format!(
            "byte_count: {count} is over the limit of {MAX_FILLER_BYTES}"
        ))),
        Some(P::ByteCount(count)) => Ok(Payload::Filler(count)),
        Some(P::Messages(messages)) => {
            if messages.size < MESSAGE_HEADER_BYTES {
                return Err(invalid(format!(
                    "messages.size: {} is smaller than the {MESSAGE_HEADER_BYTES}-byte message header",
                    messages.size
                )));
            }
            if u64::from(messages.size) > MAX_MESSAGE_BYTES {
                return Err(invalid(format!(
                    "messages.size: {} is over the limit of {MAX_MESSAGE_BYTES}",
                    messages.size
                )));
            }
            Ok(Payload::Messages {
                count: messages.count,
                size: messages.size,
                interval_ms: pause("messages.interval_ms", messages.interval_ms)?,
            })
        }
        Some(P::Template(template)) => {
            if template.text.is_empty() || template.text.len() as u64 > MAX_MESSAGE_BYTES {
                return Err(invalid(format!(
                    "template.text: {} bytes; give 1 to {MAX_MESSAGE_BYTES}",
                    template.text.len()
                )));
            }
            Ok(Payload::Template {
                text: template.text,
                count: template.count,
                interval_ms: pause("template.interval_ms", template.interval_ms)?,
            })
        }
    }
}

pub(super) fn recv_mode(mode: i32) -> Result<RecvMode, AgentError> {
    match pb::RecvMode::try_from(mode) {
        Ok(pb::RecvMode::Once) => Ok(RecvMode::Once),
        Ok(pb::RecvMode::All) => Ok(RecvMode::All),
        _ => Err(invalid(format!(
            "mode: {mode} is not RECV_MODE_ONCE (1) or RECV_MODE_ALL (2)"
        ))),
    }
}

pub(super) fn close_mode(mode: i32) -> Result<CloseMode, AgentError> {
    CloseMode::from_wire(mode).ok_or_else(|| {
        invalid(format!(
            "mode: {mode} is not a close mode (CLOSE_MODE_GRACEFUL = 1 ... CLOSE_MODE_WITH_UNREAD = 6)"
        ))
    })
}

impl From<Call> for pb::Call {
    fn from(call: Call) -> Self {
        match call {
            Call::Connect => Self::Connect,
            Call::Accept => Self::Accept,
            Call::Send => Self::Send,
            Call::Recv => Self::Recv,
            Call::Close => Self::Close,
            Call::Shutdown => Self::Shutdown,
            Call::Watch => Self::Watch,
        }
    }
}

impl From<Outcome> for pb::Outcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Ok => Self::Ok,
            Outcome::Eof => Self::Eof,
            Outcome::Error => Self::Error,
            Outcome::Timeout => Self::Timeout,
        }
    }
}

impl From<Observation> for pb::Observation {
    fn from(observation: Observation) -> Self {
        let error = observation.error.unwrap_or_else(|| crate::model::OsError {
            code: 0,
            name: String::new(),
            message: String::new(),
        });
        Self {
            call: pb::Call::from(observation.call).into(),
            conn_id: observation.conn.0,
            outcome: pb::Outcome::from(observation.outcome).into(),
            bytes: observation.bytes,
            messages: observation.messages,
            os_error: error.code,
            error_name: error.name,
            error_message: error.message,
            sigpipe: observation.sigpipe,
            unread_bytes: observation.unread_bytes,
            start_mono_ns: observation.start_mono_ns,
            end_mono_ns: observation.end_mono_ns,
            start_wall_unix_ns: observation.start_wall_unix_ns,
            data: observation.data,
            content_crc32: observation.content_crc32,
        }
    }
}

impl From<HolderExit> for pb::HolderExit {
    fn from(exit: HolderExit) -> Self {
        Self {
            holder_id: exit.holder.0,
            exit_code: exit.exit_code,
            signal: exit.signal,
            mono_ns: exit.mono_ns,
            wall_unix_ns: exit.wall_unix_ns,
        }
    }
}

impl From<Event> for pb::Event {
    fn from(event: Event) -> Self {
        Self {
            seq: event.seq,
            mono_ns: event.mono_ns,
            wall_unix_ns: event.wall_unix_ns,
            kind: Some(match event.kind {
                EventKind::HolderExited(exit) => pb::event::Kind::HolderExited(exit.into()),
                EventKind::ConnectionEnded(observation) => {
                    pb::event::Kind::ConnectionEnded(observation.into())
                }
            }),
        }
    }
}

impl From<Connection> for pb::ConnectReply {
    fn from(connection: Connection) -> Self {
        let text = |address: Option<SocketAddr>| address.map(|a| a.to_string()).unwrap_or_default();
        Self {
            conn_id: connection.conn.map_or(0, |conn| conn.0),
            local_address: text(connection.local_address),
            peer_address: text(connection.peer_address),
            observation: Some(connection.observation.into()),
        }
    }
}

impl From<TcpConnection> for pb::TcpConnection {
    fn from(connection: TcpConnection) -> Self {
        Self {
            local_address: connection.local.to_string(),
            remote_address: connection.remote.to_string(),
            // Our numbering is the contract's.
            state: connection.state as i32,
            state_name: connection.state.name().to_owned(),
            recv_queue: connection.recv_queue,
            send_queue: connection.send_queue,
        }
    }
}

pub(super) fn connection_filter(
    filter: Option<&pb::ConnectionFilter>,
) -> Result<ConnectionFilter, AgentError> {
    let Some(filter) = filter else {
        return Ok(ConnectionFilter::default());
    };
    let local_port = match filter.local_port {
        0 => None,
        port => Some(
            u16::try_from(port)
                .map_err(|_| invalid(format!("filter.local_port: {port} is over 65535")))?,
        ),
    };
    let local = match filter.local.as_str() {
        "" => None,
        text => Some(address("filter.local", text)?),
    };
    let remote = match filter.remote.as_str() {
        "" => None,
        text => Some(match text.parse::<std::net::IpAddr>() {
            Ok(ip) => Remote::Address(ip),
            Err(_) => Remote::Socket(text.parse().map_err(|_| {
                invalid(format!(
                    "filter.remote: {text:?} is not an address (198.18.1.2) or ip:port"
                ))
            })?),
        }),
    };
    Ok(ConnectionFilter {
        local_port,
        local,
        remote,
        include_listening: filter.include_listening,
    })
}

pub(super) fn process_request(
    request: &pb::ProcessFaultRequest,
) -> Result<(ProcessTarget, ProcessAction), AgentError> {
    use pb::process_fault_request::Target;
    let target = match &request.target {
        Some(Target::Pid(0)) | None => {
            return Err(invalid(
                "target: give a pid, a process name or a systemd unit".to_owned(),
            ));
        }
        Some(Target::Pid(pid)) => ProcessTarget::Pid(*pid),
        Some(Target::Name(name)) if name.is_empty() || name.len() > 255 => {
            return Err(invalid(format!("name: {name:?} is not a process name")));
        }
        Some(Target::Name(name)) => ProcessTarget::Name(name.clone()),
        Some(Target::Unit(unit)) => ProcessTarget::Unit(unit.clone()),
    };
    let action = match pb::ProcessAction::try_from(request.action) {
        Ok(pb::ProcessAction::Kill) => ProcessAction::Kill,
        Ok(pb::ProcessAction::Stop) => ProcessAction::Stop,
        Ok(pb::ProcessAction::Continue) => ProcessAction::Continue,
        Ok(pb::ProcessAction::Restart) => ProcessAction::Restart,
        _ => {
            return Err(invalid(format!(
                "action: {} is not KILL (1), STOP (2), CONTINUE (3) or RESTART (4)",
                request.action
            )));
        }
    };
    Ok((target, action))
}

/// A port of a request: 0 is none.
fn optional_port(field: &str, port: u32) -> Result<Option<u16>, AgentError> {
    match port {
        0 => Ok(None),
        port => u16::try_from(port)
            .map(Some)
            .map_err(|_| invalid(format!("{field}: {port} is not a port (1 to 65535)"))),
    }
}

/// Which TCP connections a request's fault is for (unspecified: all).
fn connections(connections: i32) -> Result<Connections, AgentError> {
    match pb::Connections::try_from(connections) {
        Ok(pb::Connections::All | pb::Connections::Unspecified) => Ok(Connections::All),
        Ok(pb::Connections::New) => Ok(Connections::New),
        Ok(pb::Connections::Established) => Ok(Connections::Established),
        Err(_) => Err(invalid(format!(
            "connections: {connections} is not CONNECTIONS_ALL (1), CONNECTIONS_NEW (2) or CONNECTIONS_ESTABLISHED (3)"
        ))),
    }
}

/// A TCP setting named by its number.
pub(super) fn tcp_setting(setting: i32) -> Result<TcpSetting, AgentError> {
    match pb::TcpSetting::try_from(setting) {
        Ok(pb::TcpSetting::AbortOnOverflow) => Ok(TcpSetting::AbortOnOverflow),
        _ => Err(invalid(format!(
            "setting: {setting} is not TCP_SETTING_ABORT_ON_OVERFLOW (1)"
        ))),
    }
}

/// A degrade request's impairment and selection, checked.
pub(super) fn degradation(
    request: &pb::DegradeRequest,
) -> Result<(Impairment, Selection), AgentError> {
    let impairment = Impairment {
        delay: std::time::Duration::from_micros(u64::from(request.delay_us)),
        jitter: std::time::Duration::from_micros(u64::from(request.jitter_us)),
        distribution: (!request.distribution.is_empty()).then(|| request.distribution.clone()),
        loss_percent: request.loss_percent,
        loss_correlation_percent: request.loss_correlation_percent,
        loss_burst_packets: request.loss_burst_packets,
        duplicate_percent: request.duplicate_percent,
        reorder_percent: request.reorder_percent,
        corrupt_percent: request.corrupt_percent,
        rate_bits_per_second: request.rate_bits_per_second,
    };
    if let Some(problem) = impairment.problem() {
        return Err(invalid(problem.to_string()));
    }
    let peer = match request.peer.as_str() {
        "" => None,
        text => Some(Cidr::parse(text).ok_or_else(|| {
            invalid(format!(
                "peer: {text:?} is not an IP address or network (198.18.1.11, 198.18.1.0/24)"
            ))
        })?),
    };
    let local_port = optional_port("local_port", request.local_port)?;
    let peer_port = optional_port("peer_port", request.peer_port)?;
    let inbound = match request.direction() {
        pb::Direction::Unspecified | pb::Direction::Out => false,
        pb::Direction::In => true,
        pb::Direction::Both => {
            return Err(invalid(
                "direction: one degradation is for what the host sends (out) or what it receives (in), not both".to_owned(),
            ));
        }
    };
    let connection_attempts = match connections(request.connections)? {
        Connections::All => false,
        Connections::New => true,
        Connections::Established => {
            return Err(invalid(
                "connections: a degradation touches every packet (CONNECTIONS_ALL) or only connection attempts (CONNECTIONS_NEW); for an open connection give its ports".to_owned(),
            ));
        }
    };
    Ok((
        impairment,
        Selection {
            inbound,
            peer,
            local_port,
            peer_port,
            connection_attempts,
        },
    ))
}

/// What a capture saw, as its reply. A flood is tens of thousands of
/// segments between a few addresses: each address is written out once.
pub(super) fn stop_capture_reply(captured: Captured) -> pb::StopCaptureReply {
    let mut written: HashMap<SocketAddr, String> = HashMap::new();
    let mut text = |address: SocketAddr| {
        written
            .entry(address)
            .or_insert_with(|| address.to_string())
            .clone()
    };
    pb::StopCaptureReply {
        segments: captured
            .events
            .into_iter()
            .map(|event| pb::WireSegment {
                mono_ns: event.mono_ns,
                source: text(event.segment.source),
                destination: text(event.segment.destination),
                flags: event.segment.flag_letters(),
                seq: event.segment.seq,
                ack: event.segment.ack,
                payload: event.segment.payload,
            })
            .collect(),
        dropped: captured.dropped,
        lost: captured.lost,
    }
}

pub(super) fn host_info(host: HostInfo) -> pb::HostInfoReply {
    pb::HostInfoReply {
        hostname: host.hostname,
        os_family: host.os_family,
        os_version: host.os_version,
        kernel_version: host.kernel_version,
        arch: host.arch,
        cpus: host.cpus,
        memory_bytes: host.memory_bytes,
        agent_version: host.agent_version,
        boot_id: host.boot_id,
        capabilities: host.capabilities,
        mono_ns: Current::monotonic_ns(),
        wall_unix_ns: wall_unix_ns(),
        pid: host.pid,
        unavailable: host.unavailable,
        caller: host.caller,
        denied: host.denied,
    }
}

pub(super) fn audit_entry(entry: crate::audit::Entry) -> pb::AuditEntry {
    pb::AuditEntry {
        at_unix_ns: entry.at_unix_ns,
        caller: entry.caller,
        rpc: entry.rpc,
        capability: entry.capability,
        fault: entry.fault,
        deadline_ms: entry.deadline_ms,
        result: entry.result,
        request: entry.request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_address_names_the_field_and_the_form() {
        let Err(AgentError::InvalidArgument(message)) = address("address", "localhost") else {
            panic!("a host name without port must be refused");
        };
        assert!(
            message.contains("address") && message.contains("ip:port"),
            "{message}"
        );
        assert!(address("address", "198.18.0.1:7000").is_ok());
        assert!(address("address", "[::1]:7000").is_ok());
    }

    #[test]
    fn timeouts_default_and_have_a_ceiling() {
        assert_eq!(timeout("t", 0).ok(), Some(DEFAULT_TIMEOUT_MS));
        assert_eq!(timeout("t", 5).ok(), Some(5));
        assert!(timeout("t", MAX_TIMEOUT_MS + 1).is_err());
    }

    #[test]
    fn keepalive_timers_under_a_second_are_refused() {
        let options = Some(pb::SocketOptions {
            keepalive: Some(pb::Keepalive {
                enabled: true,
                idle_ms: 500,
                interval_ms: 1000,
                count: 3,
            }),
            ..Default::default()
        });
        let Err(AgentError::InvalidArgument(message)) = SocketOptions::try_from(options) else {
            panic!("500 ms keepalive idle must be refused");
        };
        assert!(message.contains("options.keepalive.idle_ms"), "{message}");
    }

    #[test]
    fn options_survive_the_round_trip() -> Result<(), AgentError> {
        let sent = pb::SocketOptions {
            linger: Some(pb::Linger {
                enabled: true,
                seconds: 0,
            }),
            keepalive: Some(pb::Keepalive {
                enabled: true,
                idle_ms: 2000,
                interval_ms: 1000,
                count: 3,
            }),
            user_timeout_ms: Some(1500),
            nodelay: Some(true),
            send_buffer_bytes: Some(4096),
            recv_buffer_bytes: None,
        };
        let domain = SocketOptions::try_from(Some(sent))?;
        assert_eq!(domain.linger, Some(Linger::On { seconds: 0 }));
        assert_eq!(pb::SocketOptions::from(domain), sent);
        Ok(())
    }

    #[test]
    fn messages_smaller_than_their_header_are_refused() {
        let tiny = Some(pb::send_request::Payload::Messages(pb::Messages {
            count: 1,
            size: 4,
            interval_ms: 0,
        }));
        assert!(matches!(payload(tiny), Err(AgentError::InvalidArgument(_))));
        assert!(matches!(payload(None), Err(AgentError::InvalidArgument(_))));
    }

    #[test]
    fn unspecified_and_unknown_modes_are_refused() {
        assert!(recv_mode(0).is_err() && recv_mode(9).is_err());
        assert!(close_mode(0).is_err() && close_mode(-1).is_err());
        assert_eq!(close_mode(2).ok(), Some(CloseMode::Abort));
    }

    #[test]
    fn a_cut_of_some_connections_is_named_and_never_takes_the_control_channel() {
        let request = |connections: i32, include_control_channel: bool| pb::IsolateRequest {
            id: "cut".to_owned(),
            mode: pb::IsolationMode::Drop as i32,
            deadline_ms: 1_000,
            connections,
            include_control_channel,
            ..pb::IsolateRequest::default()
        };
        let connections = |request| Isolation::try_from(request).map(|cut| cut.connections);
        assert_eq!(connections(request(0, true)).ok(), Some(Connections::All));
        assert_eq!(
            connections(request(pb::Connections::New as i32, false)).ok(),
            Some(Connections::New)
        );
        for (wrong, says) in [
            (
                request(pb::Connections::Established as i32, true),
                "include_control_channel",
            ),
            (request(7, false), "connections: 7"),
        ] {
            let Err(AgentError::InvalidArgument(message)) = Isolation::try_from(wrong) else {
                panic!("{says}: accepted");
            };
            assert!(message.contains(says), "{message}");
        }
    }
}
