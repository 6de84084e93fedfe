//! Setting socket options and reading them back.

use crate::model::{Linger, SocketOptions};
use crate::platform::{Current, Platform};
use socket2::SockRef;
use std::io;
use std::time::Duration;

/// Set every option that `options` names; leave the others.
pub fn apply(socket: &SockRef<'_>, options: &SocketOptions) -> io::Result<()> {
    if let Some(linger) = options.linger {
        socket.set_linger(match linger {
            Linger::Off => None,
            Linger::On { seconds } => Some(Duration::from_secs(u64::from(seconds))),
        })?;
    }
    if let Some(keepalive) = options.keepalive {
        Current::set_keepalive(socket, keepalive)?;
    }
    if let Some(millis) = options.user_timeout_ms {
        Current::set_user_timeout(socket, millis)?;
    }
    if let Some(nodelay) = options.nodelay {
        socket.set_tcp_nodelay(nodelay)?;
    }
    if let Some(bytes) = options.send_buffer_bytes {
        socket.set_send_buffer_size(bytes as usize)?;
    }
    if let Some(bytes) = options.recv_buffer_bytes {
        socket.set_recv_buffer_size(bytes as usize)?;
    }
    Ok(())
}

/// The options as the OS reports them (Linux doubles buffer sizes for its
/// bookkeeping; they are reported as the OS says).
pub fn read(socket: &SockRef<'_>) -> io::Result<SocketOptions> {
    let clamp = |bytes: usize| u32::try_from(bytes).unwrap_or(u32::MAX);
    Ok(SocketOptions {
        linger: Some(match socket.linger()? {
            None => Linger::Off,
            Some(time) => Linger::On {
                seconds: u32::try_from(time.as_secs()).unwrap_or(u32::MAX),
            },
        }),
        keepalive: Some(Current::keepalive(socket)?),
        user_timeout_ms: Current::user_timeout(socket)?,
        nodelay: Some(socket.tcp_nodelay()?),
        send_buffer_bytes: Some(clamp(socket.send_buffer_size()?)),
        recv_buffer_bytes: Some(clamp(socket.recv_buffer_size()?)),
    })
}
