//! The host's TCP connections — every program's, not only the agent's.
//!
//! The application under test owns its sockets; to judge it (did it free
//! its connections after a peer vanished, or did it leave them in
//! CLOSE_WAIT?) and to fault it (abort one of its connections as a broken
//! middlebox would) the agent must see and act on sockets it did not make.
//! Reading the table is harmless and always offered; destroying a socket
//! belongs to another program and needs the `process` capability.
//!
//! The OS side is the [`SocketTable`] trait: [`procfs`] on Linux (the
//! kernel's `/proc/net/tcp*` tables, and its socket-destroy facility through
//! `ss -K`), the IP Helper API on Windows (listing only; in
//! `platform/windows_tcp_table.rs`, with the other unsafe Windows code).

pub mod procfs;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

/// TCP states, numbered as Linux numbers them (and the contract does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    /// Data flows.
    Established = 1,
    /// connect() sent its SYN.
    SynSent = 2,
    /// A SYN arrived; our SYN-ACK is out.
    SynRecv = 3,
    /// We closed; our FIN is not acknowledged yet.
    FinWait1 = 4,
    /// We closed and our FIN is acknowledged; waiting for the peer's.
    FinWait2 = 5,
    /// Both closed; lingering so late segments die.
    TimeWait = 6,
    /// Closed.
    Close = 7,
    /// The peer closed (its FIN arrived) and the program has not: a server
    /// that never closes leaves its connections here.
    CloseWait = 8,
    /// We closed after the peer; our FIN is not acknowledged yet.
    LastAck = 9,
    /// A listening socket.
    Listen = 10,
    /// Both closed at once.
    Closing = 11,
}

impl TcpState {
    /// From Linux's number.
    pub fn from_linux(number: u8) -> Option<Self> {
        Some(match number {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            _ => return None,
        })
    }

    /// As `ss` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTAB",
            Self::SynSent => "SYN-SENT",
            Self::SynRecv => "SYN-RECV",
            Self::FinWait1 => "FIN-WAIT-1",
            Self::FinWait2 => "FIN-WAIT-2",
            Self::TimeWait => "TIME-WAIT",
            Self::Close => "UNCONN",
            Self::CloseWait => "CLOSE-WAIT",
            Self::LastAck => "LAST-ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
        }
    }
}

/// One TCP socket of the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConnection {
    /// Our end.
    pub local: SocketAddr,
    /// Their end (0.0.0.0:0 for a listener).
    pub remote: SocketAddr,
    /// Its state.
    pub state: TcpState,
    /// Bytes received and not read by the program.
    pub recv_queue: u64,
    /// Bytes sent and not acknowledged.
    pub send_queue: u64,
}

impl fmt::Display for TcpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} → {}", self.state.name(), self.local, self.remote)
    }
}

/// The far end a filter asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remote {
    /// Any port of this address.
    Address(IpAddr),
    /// Exactly this address and port.
    Socket(SocketAddr),
}

/// Which connections a request means.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionFilter {
    /// This port at our end.
    pub local_port: Option<u16>,
    /// Exactly this local address and port.
    pub local: Option<SocketAddr>,
    /// The far end.
    pub remote: Option<Remote>,
    /// Listening sockets too.
    pub include_listening: bool,
}

impl ConnectionFilter {
    /// Whether it narrows anything down (an abort must).
    pub fn is_narrow(&self) -> bool {
        self.local_port.is_some() || self.local.is_some() || self.remote.is_some()
    }

    /// Whether `connection` is one it means.
    pub fn matches(&self, connection: &TcpConnection) -> bool {
        let remote_fits = match self.remote {
            None => true,
            Some(Remote::Address(address)) => same_ip(connection.remote.ip(), address),
            Some(Remote::Socket(address)) => same_socket(connection.remote, address),
        };
        (self.include_listening || connection.state != TcpState::Listen)
            && self
                .local_port
                .is_none_or(|port| connection.local.port() == port)
            && self
                .local
                .is_none_or(|local| same_socket(connection.local, local))
            && remote_fits
    }
}

/// IPv4 addresses also match their IPv4-mapped IPv6 form (a dual-stack
/// server's sockets show its IPv4 peers as ::ffff:a.b.c.d).
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && same_ip(a.ip(), b.ip())
}

/// What the OS offers.
pub trait SocketTable: Send + Sync {
    /// Every TCP socket of the host (of the agent's network namespace).
    fn list(&self) -> io::Result<Vec<TcpConnection>>;

    /// Destroy one socket: its peer gets a RST, its program ECONNABORTED.
    /// `Ok(false)` when it was gone already.
    fn destroy(&self, connection: &TcpConnection) -> io::Result<bool>;
}

/// Why a socket request failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketsError {
    /// The OS could not say or do it.
    #[error("{0}")]
    System(String),
    /// This OS cannot do it at all.
    #[error("{0}")]
    Unsupported(String),
}

/// The host's connections, through the OS's table.
pub struct Sockets {
    table: Box<dyn SocketTable>,
}

impl Sockets {
    /// Over `table`.
    pub fn new(table: Box<dyn SocketTable>) -> Self {
        Self { table }
    }

    /// The connections `filter` means, sorted by local then remote address.
    pub fn list(&self, filter: &ConnectionFilter) -> Result<Vec<TcpConnection>, SocketsError> {
        let mut found: Vec<TcpConnection> = self
            .table
            .list()
            .map_err(|error| SocketsError::System(format!("cannot read the TCP table: {error}")))?
            .into_iter()
            .filter(|connection| filter.matches(connection))
            .collect();
        found.sort_by_key(|connection| (connection.local, connection.remote));
        Ok(found)
    }

    /// Destroy the connections `filter` means (never listeners); the ones destroyed.
    pub fn abort(&self, filter: &ConnectionFilter) -> Result<Vec<TcpConnection>, SocketsError> {
        let filter = ConnectionFilter {
            include_listening: false,
            ..filter.clone()
        };
        let mut aborted = Vec::new();
        for connection in self.list(&filter)? {
            match self.table.destroy(&connection) {
                Ok(true) => aborted.push(connection),
                Ok(false) => {}
                Err(error) if error.kind() == io::ErrorKind::Unsupported => {
                    return Err(SocketsError::Unsupported(error.to_string()));
                }
                Err(error) => {
                    return Err(SocketsError::System(format!(
                        "cannot abort {connection}: {error}"
                    )));
                }
            }
        }
        Ok(aborted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(local: &str, remote: &str, state: TcpState) -> TcpConnection {
        TcpConnection {
            local: local.parse().unwrap_or_else(|_| panic!("{local}")),
            remote: remote.parse().unwrap_or_else(|_| panic!("{remote}")),
            state,
            recv_queue: 0,
            send_queue: 0,
        }
    }

    #[test]
    fn a_filter_means_what_it_names_and_mapped_addresses_count() {
        let server = connection(
            "[::ffff:198.18.1.3]:7000",
            "[::ffff:198.18.1.2]:40000",
            TcpState::CloseWait,
        );
        let listener = connection("0.0.0.0:7000", "0.0.0.0:0", TcpState::Listen);
        let by_port = ConnectionFilter {
            local_port: Some(7000),
            ..ConnectionFilter::default()
        };
        assert!(by_port.matches(&server));
        assert!(!by_port.matches(&listener));
        let flow = ConnectionFilter {
            local: Some("198.18.1.3:7000".parse().unwrap_or_else(|_| panic!())),
            remote: Some(Remote::Socket(
                "198.18.1.2:40000".parse().unwrap_or_else(|_| panic!()),
            )),
            ..ConnectionFilter::default()
        };
        assert!(flow.matches(&server));
        let other_peer = ConnectionFilter {
            remote: Some(Remote::Address(
                "198.18.1.9".parse().unwrap_or_else(|_| panic!()),
            )),
            ..ConnectionFilter::default()
        };
        assert!(!other_peer.matches(&server));
        assert!(!ConnectionFilter::default().is_narrow());
        assert!(flow.is_narrow());
    }
}
