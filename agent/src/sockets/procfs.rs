//! Linux: the TCP table from `/proc/net/tcp` and `/proc/net/tcp6` (the
//! kernel's own text, stable for decades; it shows the agent's network
//! namespace), and socket destruction through `ss -K` (iproute2's front
//! end to the kernel's SOCK_DESTROY, which needs CONFIG_INET_DIAG_DESTROY,
//! on in every mainstream distribution kernel, and CAP_NET_ADMIN).
//!
//! The parser is a pure function, tested anywhere.

use super::{SocketTable, TcpConnection, TcpState};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;

/// The kernel's tables.
pub const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

/// Parse one of the kernel's tables; lines it cannot read are skipped.
pub fn parse_table(text: &str) -> Vec<TcpConnection> {
    text.lines().skip(1).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<TcpConnection> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let local = parse_socket(fields.next()?)?;
    let remote = parse_socket(fields.next()?)?;
    let state = TcpState::from_linux(u8::from_str_radix(fields.next()?, 16).ok()?)?;
    let (send_queue, recv_queue) = fields.next()?.split_once(':')?;
    Some(TcpConnection {
        local,
        remote,
        state,
        recv_queue: u64::from_str_radix(recv_queue, 16).ok()?,
        send_queue: u64::from_str_radix(send_queue, 16).ok()?,
    })
}

/// "0100007F:1F90": the address as the kernel's native-endian 32-bit words
/// in hex, then the port in hex.
fn parse_socket(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(address)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (index, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(address.get(index * 8..index * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The `ss` filter that means exactly one connection.
pub fn destroy_arguments(connection: &TcpConnection) -> Vec<String> {
    let host = |address: &SocketAddr| match address.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    vec![
        "-K".to_owned(),
        "-t".to_owned(),
        "-n".to_owned(),
        "-H".to_owned(),
        "src".to_owned(),
        host(&connection.local),
        "sport".to_owned(),
        "=".to_owned(),
        format!(":{}", connection.local.port()),
        "dst".to_owned(),
        host(&connection.remote),
        "dport".to_owned(),
        "=".to_owned(),
        format!(":{}", connection.remote.port()),
    ]
}

/// The kernel's tables, and `ss -K`.
pub struct ProcTable;

impl SocketTable for ProcTable {
    fn list(&self) -> io::Result<Vec<TcpConnection>> {
        let mut found = Vec::new();
        for table in TABLES {
            match std::fs::read_to_string(table) {
                Ok(text) => found.extend(parse_table(&text)),
                // No IPv6 in this kernel: no tcp6 table.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        Ok(found)
    }

    fn destroy(&self, connection: &TcpConnection) -> io::Result<bool> {
        let output = Command::new("ss")
            .args(destroy_arguments(connection))
            .output()
            .map_err(|error| io::Error::new(error.kind(), format!("cannot run ss: {error}")))?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "ss -K failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        // ss prints each socket it destroyed; nothing when the kernel
        // refused (no CAP_NET_ADMIN, or no SOCK_DESTROY) or it was gone.
        if !String::from_utf8_lossy(&output.stdout).trim().is_empty() {
            return Ok(true);
        }
        let still_there = self.list()?.iter().any(|other| {
            other.local == connection.local
                && other.remote == connection.remote
                && other.state == connection.state
        });
        if still_there {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the kernel did not destroy it (the agent needs CAP_NET_ADMIN, and the kernel CONFIG_INET_DIAG_DESTROY)",
            ));
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 030112C6:1B58 020112C6:9C40 08 00000000:00000005 00:00000000 00000000     0        0 1235 1 0000000000000000 20 4 30 10 -1
   2: garbage
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF0000030112C6:1B58 0000000000000000FFFF0000020112C6:9C41 01 0000000A:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn the_kernels_tables_read_as_connections() {
        let found = parse_table(TCP);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].local.to_string(), "127.0.0.1:8080");
        assert_eq!(found[0].state, TcpState::Listen);
        assert_eq!(found[1].local.to_string(), "198.18.1.3:7000");
        assert_eq!(found[1].remote.to_string(), "198.18.1.2:40000");
        assert_eq!(found[1].state, TcpState::CloseWait);
        assert_eq!(found[1].recv_queue, 5);
        let six = parse_table(TCP6);
        assert_eq!(six.len(), 1);
        assert_eq!(six[0].local.to_string(), "[::ffff:198.18.1.3]:7000");
        assert_eq!(six[0].remote.to_string(), "[::ffff:198.18.1.2]:40001");
        assert_eq!(six[0].send_queue, 10);
    }

    #[test]
    fn one_connection_is_one_exact_ss_filter() {
        let found = parse_table(TCP);
        assert_eq!(
            destroy_arguments(&found[1]).join(" "),
            "-K -t -n -H src 198.18.1.3 sport = :7000 dst 198.18.1.2 dport = :40000"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_hosts_table_has_the_listener_we_open() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let found = ProcTable.list().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            found
                .iter()
                .any(|c| c.local == address && c.state == TcpState::Listen),
            "{address} not in {found:?}"
        );
    }
}
