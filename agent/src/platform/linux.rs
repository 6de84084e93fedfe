//! Linux (and, where the calls exist, other Unix) backend.

#![allow(unsafe_code)]

use super::{
    PacketTap, Platform, StdioPipes, ThreadSchedule, URGENT_PRIORITY, keepalive_params, millis,
};
use crate::model::Keepalive;
use socket2::SockRef;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// The Linux backend.
pub struct Linux;

/// A classic-BPF program for the capture socket, run in the kernel: keep
/// TCP over IPv4 or IPv6 only, and copy just the first 160 bytes of each
/// packet (IP and TCP headers), so a flood of data costs the capture little.
/// Offsets count from the IP header (the socket is SOCK_DGRAM).
#[cfg(target_os = "linux")]
const TCP_HEADERS_ONLY: [socket2::SockFilter; 10] = {
    use socket2::SockFilter;
    const LOAD_BYTE: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const AND: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const JUMP_IF_EQUAL: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const TCP: u32 = 6;
    [
        SockFilter::new(LOAD_BYTE, 0, 0, 0), // 0: A = version << 4 | ...
        SockFilter::new(AND, 0, 0, 0xf0),    // 1: A = version << 4
        SockFilter::new(JUMP_IF_EQUAL, 0, 2, 0x40), // 2: IPv4 ? 3 : 5
        SockFilter::new(LOAD_BYTE, 0, 0, 9), // 3: A = IPv4 protocol
        SockFilter::new(JUMP_IF_EQUAL, 3, 4, TCP), // 4: TCP ? 8 : 9
        SockFilter::new(JUMP_IF_EQUAL, 0, 3, 0x60), // 5: IPv6 ? 6 : 9
        SockFilter::new(LOAD_BYTE, 0, 0, 6), // 6: A = IPv6 next header
        SockFilter::new(JUMP_IF_EQUAL, 0, 1, TCP), // 7: TCP ? 8 : 9
        SockFilter::new(RETURN, 0, 0, 160),  // 8: keep 160 bytes
        SockFilter::new(RETURN, 0, 0, 0),    // 9: drop
    ]
};

fn duration_ms(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

impl Linux {
    /// nftables commands through libnftables in process where the host has
    /// it (see `libnftables`), else by the `nft` tool.
    fn nftables() -> crate::tool::Nft {
        #[cfg(target_os = "linux")]
        return crate::tool::Nft::in_process(super::libnftables::run);
        #[cfg(not(target_os = "linux"))]
        return crate::tool::Nft::tool();
    }
}

impl Platform for Linux {
    fn monotonic_ns() -> u64 {
        super::clock::monotonic_ns()
    }

    fn unread_bytes(socket: &SockRef<'_>) -> io::Result<u64> {
        let mut pending: libc::c_int = 0;
        // SAFETY: the descriptor is a live socket borrowed for this call, and
        // FIONREAD writes one c_int into `pending`, which outlives the call.
        let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut pending) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(u64::try_from(pending).unwrap_or(0))
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
        if !socket.keepalive()? {
            return Ok(Keepalive::Off);
        }
        Ok(Keepalive::On {
            idle_ms: Some(duration_ms(socket.tcp_keepalive_time()?)),
            interval_ms: Some(duration_ms(socket.tcp_keepalive_interval()?)),
            count: Some(socket.tcp_keepalive_retries()?),
        })
    }

    fn set_user_timeout(socket: &SockRef<'_>, millis_: u32) -> io::Result<()> {
        let timeout = (millis_ > 0).then(|| millis(millis_));
        socket.set_tcp_user_timeout(timeout)
    }

    fn user_timeout(socket: &SockRef<'_>) -> io::Result<Option<u32>> {
        Ok(Some(socket.tcp_user_timeout()?.map_or(0, duration_ms)))
    }

    fn allow_address_reuse(socket: &socket2::Socket) -> io::Result<()> {
        socket.set_reuse_address(true)
    }

    fn boot_id() -> String {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|id| id.trim().to_owned())
            .unwrap_or_default()
    }

    fn exit_signal(status: &ExitStatus) -> Option<i32> {
        status.signal()
    }

    fn return_free_memory() {
        // SAFETY: malloc_trim only walks glibc's own heap under its locks; it
        // takes no pointers and is safe to call from any thread at any time.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0);
        }
    }

    fn one_allocator_arena() {
        // SAFETY: mallopt only sets a glibc tunable; it takes no pointers and
        // is called before any other thread exists.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }

    fn firewall(_exe: &std::path::Path) -> Option<Box<dyn crate::isolate::Firewall>> {
        Some(Box::new(crate::isolate::nftables::Nftables::new(
            Self::nftables(),
        )))
    }

    fn links(exe: &std::path::Path) -> Option<Box<dyn crate::link::LinkControl>> {
        Some(Box::new(crate::link::iproute::IpRoute {
            exe: exe.to_path_buf(),
        }))
    }

    fn tcp_settings(exe: &std::path::Path) -> Option<Box<dyn crate::tune::SettingControl>> {
        Some(Box::new(crate::tune::sysctl::Sysctl {
            exe: exe.to_path_buf(),
        }))
    }

    fn shapers(exe: &std::path::Path, control_port: u16) -> crate::degrade::Shapers {
        use crate::degrade::{Shaper, Shapers, nft, tc};
        let outbound = tc::probe().map(|()| {
            Box::new(tc::Tc {
                exe: exe.to_path_buf(),
                control_port,
            }) as Box<dyn Shaper>
        });
        let inbound = nft::probe(Self::nftables()).map(|()| {
            Box::new(nft::NftLoss {
                control_port,
                nft: Self::nftables(),
            }) as Box<dyn Shaper>
        });
        Shapers { outbound, inbound }
    }

    fn tcp_counters() -> io::Result<std::collections::BTreeMap<String, u64>> {
        let mut text = std::fs::read_to_string("/proc/net/snmp")?;
        // TcpExt: retransmission and loss-recovery details; absent on some kernels.
        text.push_str(&std::fs::read_to_string("/proc/net/netstat").unwrap_or_default());
        Ok(crate::counters::parse_mib(&text))
    }

    #[cfg(target_os = "linux")]
    fn packet_tap() -> io::Result<Box<dyn PacketTap>> {
        // ETH_P_ALL in network byte order: every protocol; DGRAM strips the link header.
        let every_protocol = i32::from(0x0003u16.to_be());
        let socket = socket2::Socket::new(
            socket2::Domain::PACKET,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::from(every_protocol)),
        )?;
        socket.attach_filter(&TCP_HEADERS_ONLY)?;
        Ok(Box::new(super::packet_ring::PacketRing::on(socket)?))
    }

    #[cfg(not(target_os = "linux"))]
    fn packet_tap() -> io::Result<Box<dyn PacketTap>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "packet capture needs Linux",
        ))
    }

    fn wake_pair() -> io::Result<(socket2::Socket, socket2::Socket)> {
        socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::STREAM, None)
    }

    fn socket_table() -> Box<dyn crate::sockets::SocketTable> {
        Box::new(crate::sockets::procfs::ProcTable)
    }

    fn reboots_orderly() -> bool {
        std::path::Path::new("/run/systemd/system").is_dir()
    }

    fn reboot(orderly: bool) -> io::Result<&'static str> {
        if orderly {
            return systemctl_reboot();
        }
        // Abrupt: sync, then reboot(2), as a reset button would (after
        // the sync), a moment later so that the reply reaches the
        // controller. Nothing is shut down: no process closes its sockets.
        std::thread::Builder::new()
            .name("reboot".to_owned())
            .spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(300));
                // SAFETY: sync() takes no arguments and cannot fail;
                // reboot(RB_AUTOBOOT) only returns on failure (EPERM
                // without CAP_SYS_BOOT), leaving the process as it was.
                unsafe {
                    libc::sync();
                    if libc::reboot(libc::RB_AUTOBOOT) != 0 {
                        tracing::error!(
                            error = %io::Error::last_os_error(),
                            "reboot(2) failed"
                        );
                    }
                }
            })?;
        Ok("reboot(2)")
    }

    fn stdio_pipes() -> StdioPipes {
        use std::os::fd::AsFd;
        use tokio::net::unix::pipe;
        let pipes = || -> io::Result<StdioPipes> {
            let input = std::io::stdin().as_fd().try_clone_to_owned()?;
            let output = std::io::stdout().as_fd().try_clone_to_owned()?;
            Ok(StdioPipes {
                input: Box::new(pipe::Receiver::from_owned_fd(input)?),
                output: Box::new(pipe::Sender::from_owned_fd(output)?),
            })
        };
        // Not pipes (started by hand from a terminal): use the portable way.
        pipes().unwrap_or_else(|_| StdioPipes::portable())
    }

    fn raise_thread() -> io::Result<ThreadSchedule> {
        // SAFETY: pid 0 is the calling thread; `param` is a valid, writable
        // sched_param for the duration of each call.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut param = libc::sched_param { sched_priority: 0 };
            if policy < 0 || libc::sched_getparam(0, &mut param) != 0 {
                return Err(io::Error::last_os_error());
            }
            let before = ThreadSchedule {
                policy,
                priority: param.sched_priority,
            };
            let urgent = libc::sched_param {
                sched_priority: URGENT_PRIORITY,
            };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &urgent) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(before)
        }
    }

    fn restore_thread(before: ThreadSchedule) {
        let param = libc::sched_param {
            sched_priority: before.priority,
        };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
        // Going back to a lower class is always permitted.
        unsafe {
            libc::sched_setscheduler(0, before.policy, &param);
        }
    }

    fn sleep_until(at_ns: u64) {
        let deadline = libc::timespec {
            tv_sec: libc::time_t::try_from(at_ns / 1_000_000_000).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::try_from(at_ns % 1_000_000_000).unwrap_or(0),
        };
        // Bounded: a signal interrupts the sleep at most once per signal.
        for _ in 0..1_000 {
            // SAFETY: `deadline` is a valid timespec; no remainder is asked
            // for with TIMER_ABSTIME.
            let rc = unsafe {
                libc::clock_nanosleep(
                    libc::CLOCK_MONOTONIC,
                    libc::TIMER_ABSTIME,
                    &deadline,
                    std::ptr::null_mut(),
                )
            };
            if rc != libc::EINTR {
                return;
            }
        }
    }
}

/// An orderly reboot through systemd: `systemctl reboot`, which logind
/// lets a user other than root do only when polkit says so.
fn systemctl_reboot() -> io::Result<&'static str> {
    if !Linux::reboots_orderly() {
        return Err(io::Error::other(
            "an orderly reboot needs systemd, and this host does not run it (an abrupt reboot does not)",
        ));
    }
    let ran = std::process::Command::new("systemctl")
        .arg("reboot")
        .stdin(std::process::Stdio::null())
        .output()?;
    if ran.status.success() {
        return Ok("systemctl reboot");
    }
    let said = String::from_utf8_lossy(&ran.stderr).trim().to_owned();
    let hint = if said.contains("Access denied") {
        " (logind asks polkit: install polkitd and deploy/systemd/50-faultlab-reboot.rules)"
    } else {
        ""
    };
    Err(io::Error::other(format!(
        "systemctl reboot: {}: {said}{hint}",
        ran.status
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let first = Linux::monotonic_ns();
        let second = Linux::monotonic_ns();
        assert!(first > 0 && second >= first);
    }

    #[test]
    fn a_raised_thread_is_real_time_until_restored() {
        // SAFETY: reads the calling thread's policy.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        match Linux::raise_thread() {
            Ok(saved) => {
                assert_eq!(policy(), libc::SCHED_FIFO);
                assert_eq!(saved.policy, before);
                Linux::restore_thread(saved);
                assert_eq!(policy(), before);
            }
            // Not root: refused, and nothing changed.
            Err(error) => {
                assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}");
                assert_eq!(policy(), before);
            }
        }
    }

    #[test]
    fn a_sleep_until_ends_at_its_deadline_not_before() {
        let at = Linux::monotonic_ns() + 5_000_000;
        Linux::sleep_until(at);
        assert!(Linux::monotonic_ns() >= at);
    }

    #[test]
    fn the_boot_id_is_a_uuid() {
        assert_eq!(Linux::boot_id().len(), 36);
    }
}
