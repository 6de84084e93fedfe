//! Windows: the IPv4 TCP table from the IP Helper API (GetExtendedTcpTable).
//!
//! Windows has no equivalent of Linux's SOCK_DESTROY that faultlab uses:
//! `destroy` says so (SetTcpEntry's DELETE_TCB could abort IPv4
//! connections, but it is not implemented or verified here). To cut one of
//! the application's connections on Windows, isolate its flow instead.

#![allow(unsafe_code)]

use crate::sockets::{SocketTable, TcpConnection, TcpState};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    GetExtendedTcpTable, MIB_TCPROW_OWNER_PID, TCP_TABLE_OWNER_PID_ALL,
};
use windows_sys::Win32::Networking::WinSock::AF_INET;

/// Attempts at reading a table that grows between the size query and the read.
const ATTEMPTS: usize = 4;

fn state(number: u32) -> Option<TcpState> {
    Some(match number {
        1 => TcpState::Close,
        2 => TcpState::Listen,
        3 => TcpState::SynSent,
        4 => TcpState::SynRecv,
        5 => TcpState::Established,
        6 => TcpState::FinWait1,
        7 => TcpState::FinWait2,
        8 => TcpState::CloseWait,
        9 => TcpState::Closing,
        10 => TcpState::LastAck,
        11 => TcpState::TimeWait,
        _ => return None,
    })
}

fn socket(address: u32, port: u32) -> SocketAddr {
    // Both in network byte order; the port in the low 16 bits.
    let ip = Ipv4Addr::from(address.to_ne_bytes());
    let port = u16::from_be(u16::try_from(port & 0xFFFF).unwrap_or(0));
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// The IP Helper API.
pub struct IpHelperTable;

impl SocketTable for IpHelperTable {
    fn list(&self) -> io::Result<Vec<TcpConnection>> {
        let mut size: u32 = 0;
        let mut buffer: Vec<u64> = Vec::new();
        for _ in 0..ATTEMPTS {
            // SAFETY: `buffer` holds at least `size` bytes (u64 elements keep
            // the rows aligned), and the call writes at most `size` bytes.
            let result = unsafe {
                GetExtendedTcpTable(
                    buffer.as_mut_ptr().cast(),
                    &mut size,
                    0,
                    u32::from(AF_INET),
                    TCP_TABLE_OWNER_PID_ALL,
                    0,
                )
            };
            match result {
                0 => return Ok(rows(&buffer)),
                // ERROR_INSUFFICIENT_BUFFER: `size` now says how much.
                122 => buffer = vec![0u64; (size as usize).div_ceil(8) + 1],
                code => {
                    return Err(io::Error::from_raw_os_error(
                        i32::try_from(code).unwrap_or(0),
                    ));
                }
            }
        }
        Err(io::Error::other(
            "the TCP table kept growing while it was read",
        ))
    }

    fn destroy(&self, _connection: &TcpConnection) -> io::Result<bool> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "aborting another program's connection is not available on Windows; isolate its flow instead",
        ))
    }
}

/// The rows of a MIB_TCPTABLE_OWNER_PID: a u32 count, then the rows.
fn rows(buffer: &[u64]) -> Vec<TcpConnection> {
    let bytes = std::mem::size_of_val(buffer);
    if bytes < 4 {
        return Vec::new();
    }
    let base = buffer.as_ptr().cast::<u8>();
    // SAFETY: the buffer has at least 4 bytes; the API wrote the count there.
    let count = unsafe { base.cast::<u32>().read_unaligned() } as usize;
    let row_size = std::mem::size_of::<MIB_TCPROW_OWNER_PID>();
    let first = std::mem::align_of::<MIB_TCPROW_OWNER_PID>().max(4);
    let count = count.min(bytes.saturating_sub(first) / row_size);
    (0..count)
        .filter_map(|index| {
            // SAFETY: the row lies inside the buffer (count was bounded by its size).
            let row = unsafe {
                base.add(first + index * row_size)
                    .cast::<MIB_TCPROW_OWNER_PID>()
                    .read_unaligned()
            };
            Some(TcpConnection {
                local: socket(row.dwLocalAddr, row.dwLocalPort),
                remote: socket(row.dwRemoteAddr, row.dwRemotePort),
                state: state(row.dwState)?,
                recv_queue: 0,
                send_queue: 0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn this_hosts_table_has_the_listener_and_connection_we_open()
    -> Result<(), Box<dyn std::error::Error>> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let client = TcpStream::connect(address)?;
        let (_server, _) = listener.accept()?;
        let found = IpHelperTable.list()?;
        assert!(
            found
                .iter()
                .any(|c| c.local == address && c.state == TcpState::Listen),
            "{address} listening is not in {found:?}"
        );
        assert!(
            found
                .iter()
                .any(|c| c.local == client.local_addr().unwrap_or(address)
                    && c.remote == address
                    && c.state == TcpState::Established),
            "the client's connection is not in {found:?}"
        );
        let refused = IpHelperTable.destroy(&found[0]);
        assert!(
            refused.is_err_and(|error| error.kind() == io::ErrorKind::Unsupported),
            "Windows cannot abort another program's connection: it must say so"
        );
        Ok(())
    }
}
