//! Windows backend (Winsock through windows-sys).

#![allow(unsafe_code)]

use super::{PacketTap, Platform, StdioPipes, ThreadSchedule, keepalive_params};
use crate::model::Keepalive;
use socket2::SockRef;
use std::io;
use std::os::windows::io::AsRawSocket;
use std::process::ExitStatus;
use windows_sys::Win32::Networking::WinSock::{
    FIONREAD, IPPROTO_TCP, SOCKET, SOCKET_ERROR, TCP_MAXRT, WSAGetLastError, ioctlsocket,
    setsockopt,
};
use windows_sys::Win32::System::Performance::{QueryPerformanceCounter, QueryPerformanceFrequency};

/// The Windows backend.
pub struct Windows;

fn last_wsa_error() -> io::Error {
    // SAFETY: WSAGetLastError only reads the calling thread's last error.
    io::Error::from_raw_os_error(unsafe { WSAGetLastError() })
}

impl Platform for Windows {
    fn monotonic_ns() -> u64 {
        let (mut counter, mut frequency) = (0i64, 0i64);
        // SAFETY: both pointers are valid i64 locals for the duration of the calls;
        // these calls cannot fail on Windows XP and later.
        unsafe {
            QueryPerformanceCounter(&mut counter);
            QueryPerformanceFrequency(&mut frequency);
        }
        if frequency <= 0 {
            return 0;
        }
        let nanos = i128::from(counter) * 1_000_000_000 / i128::from(frequency);
        u64::try_from(nanos).unwrap_or(0)
    }

    fn unread_bytes(socket: &SockRef<'_>) -> io::Result<u64> {
        let mut pending: u32 = 0;
        // SAFETY: the socket is live for this call and FIONREAD writes one u32
        // into `pending`, which outlives the call.
        let rc = unsafe { ioctlsocket(socket.as_raw_socket() as SOCKET, FIONREAD, &mut pending) };
        if rc == SOCKET_ERROR {
            return Err(last_wsa_error());
        }
        Ok(u64::from(pending))
    }

    fn set_keepalive(socket: &SockRef<'_>, keepalive: Keepalive) -> io::Result<()> {
        match keepalive {
            Keepalive::Off => socket.set_keepalive(false),
            Keepalive::On {
                idle_ms,
                interval_ms,
                count,
            } => socket.set_tcp_keepalive(&keepalive_params(idle_ms, interval_ms, count)),
        }
    }

    fn keepalive(socket: &SockRef<'_>) -> io::Result<Keepalive> {
        // Windows does not let the timers be read back.
        Ok(if socket.keepalive()? {
            Keepalive::On {
                idle_ms: None,
                interval_ms: None,
                count: None,
            }
        } else {
            Keepalive::Off
        })
    }

    fn set_user_timeout(socket: &SockRef<'_>, millis: u32) -> io::Result<()> {
        // TCP_MAXRT counts whole seconds; round up so a short timeout stays short
        // but never becomes "no timeout". -1 would mean "forever"; 0 the default.
        let seconds: i32 = i32::try_from(millis.div_ceil(1000)).unwrap_or(i32::MAX);
        // SAFETY: the socket is live; the option value is a valid i32 whose
        // size is passed alongside it.
        let rc = unsafe {
            setsockopt(
                socket.as_raw_socket() as SOCKET,
                IPPROTO_TCP,
                TCP_MAXRT,
                (&seconds as *const i32).cast(),
                std::mem::size_of::<i32>() as i32,
            )
        };
        if rc == SOCKET_ERROR {
            return Err(last_wsa_error());
        }
        Ok(())
    }

    fn user_timeout(_socket: &SockRef<'_>) -> io::Result<Option<u32>> {
        Ok(None)
    }

    fn allow_address_reuse(_socket: &socket2::Socket) -> io::Result<()> {
        Ok(())
    }

    fn boot_id() -> String {
        // Windows has no boot id; the boot time (seconds since the epoch)
        // changes on every boot, which is all the controller needs.
        format!("boot-{}", sysinfo::System::boot_time().unwrap_or(0))
    }

    fn exit_signal(_status: &ExitStatus) -> Option<i32> {
        None
    }

    fn return_free_memory() {
        // The Windows heap gives large free blocks back by itself.
    }

    fn one_allocator_arena() {
        // One process heap already, with per-thread caches of its own.
    }

    fn firewall(exe: &std::path::Path) -> Option<Box<dyn crate::isolate::Firewall>> {
        Some(Box::new(
            crate::isolate::windows_firewall::WindowsFirewall::new(exe.to_path_buf()),
        ))
    }

    fn links(_exe: &std::path::Path) -> Option<Box<dyn crate::link::LinkControl>> {
        // netsh-based link control is not written yet.
        None
    }

    fn tcp_settings(_exe: &std::path::Path) -> Option<Box<dyn crate::tune::SettingControl>> {
        // Windows has no tcp_abort_on_overflow: a full backlog is its own
        // (it answers the SYN with RST).
        None
    }

    fn shapers(_exe: &std::path::Path, _control_port: u16) -> crate::degrade::Shapers {
        let missing = "degrading the network is not implemented on Windows (it would need a WFP callout or a NDIS filter driver; netem is Linux's)";
        crate::degrade::Shapers {
            outbound: Err(missing.to_owned()),
            inbound: Err(missing.to_owned()),
        }
    }

    fn tcp_counters() -> io::Result<std::collections::BTreeMap<String, u64>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP counters are not read on Windows yet (GetTcpStatisticsEx would give them)",
        ))
    }

    fn packet_tap() -> io::Result<Box<dyn PacketTap>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "packet capture is not implemented on Windows yet",
        ))
    }

    fn wake_pair() -> io::Result<(socket2::Socket, socket2::Socket)> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "packet capture is not implemented on Windows yet",
        ))
    }

    fn socket_table() -> Box<dyn crate::sockets::SocketTable> {
        Box::new(super::windows_tcp_table::IpHelperTable)
    }

    fn reboots_orderly() -> bool {
        true
    }

    fn reboot(_orderly: bool) -> io::Result<&'static str> {
        // Windows gives a service no abrupt reboot: both are `shutdown /r`
        // (the reply's method says which way was used).
        let status = std::process::Command::new("shutdown")
            .args(["/r", "/t", "0"])
            .status()?;
        if status.success() {
            Ok("shutdown /r")
        } else {
            Err(io::Error::other(format!("shutdown /r: {status}")))
        }
    }

    fn stdio_pipes() -> StdioPipes {
        StdioPipes::portable()
    }

    fn raise_thread() -> io::Result<ThreadSchedule> {
        use windows_sys::Win32::System::Threading::{
            GetCurrentThread, GetThreadPriority, SetThreadPriority, THREAD_PRIORITY_TIME_CRITICAL,
        };
        /// GetThreadPriority's failure (MAXLONG; windows-sys has no name for it).
        const THREAD_PRIORITY_ERROR_RETURN: i32 = i32::MAX;
        use windows_sys::Win32::Media::timeBeginPeriod;
        // Process-wide and counted by the OS: asked for once, kept while the
        // process lives. Refused only for a period out of range.
        static PERIOD: std::sync::Once = std::sync::Once::new();
        // SAFETY: timeBeginPeriod takes a period in ms and has no pointers.
        PERIOD.call_once(|| unsafe {
            timeBeginPeriod(1);
        });
        // SAFETY: GetCurrentThread returns a pseudo-handle valid on this
        // thread; both calls only read or set this thread's priority.
        unsafe {
            let priority = GetThreadPriority(GetCurrentThread());
            if priority == THREAD_PRIORITY_ERROR_RETURN {
                return Err(io::Error::last_os_error());
            }
            if SetThreadPriority(GetCurrentThread(), THREAD_PRIORITY_TIME_CRITICAL) == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(ThreadSchedule {
                policy: 0,
                priority,
            })
        }
    }

    fn restore_thread(before: ThreadSchedule) {
        use windows_sys::Win32::System::Threading::{GetCurrentThread, SetThreadPriority};
        // SAFETY: as in raise_thread.
        unsafe {
            SetThreadPriority(GetCurrentThread(), before.priority);
        }
    }

    fn sleep_until(at_ns: u64) {
        // std's sleep uses a high-resolution waitable timer where Windows has one.
        let left = at_ns.saturating_sub(Self::monotonic_ns());
        std::thread::sleep(std::time::Duration::from_nanos(left));
    }
}
