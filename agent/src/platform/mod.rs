//! Everything that differs between operating systems, behind one trait.
//!
//! The rest of the agent calls [`Current`] and never uses `cfg`. Each backend
//! is a zero-sized type implementing [`Platform`]; only this module and its
//! backends may use `unsafe` (each block says why it is sound).

use crate::model::Keepalive;
use socket2::SockRef;
use std::io;
use std::process::ExitStatus;

#[cfg(unix)]
pub mod clock;
pub mod wall;
pub use wall::wall_unix_ns;
#[cfg(target_os = "linux")]
mod libnftables;
#[cfg(unix)]
mod linux;
#[cfg(target_os = "linux")]
mod packet_ring;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub mod windows_service;
#[cfg(windows)]
mod windows_tcp_table;

/// The backend for the OS this agent was built for.
#[cfg(unix)]
pub type Current = linux::Linux;
/// The backend for the OS this agent was built for.
#[cfg(windows)]
pub type Current = windows::Windows;

/// A capture's kernel side ([`Platform::packet_tap`]): the kernel queues
/// each packet for it as the host sends or receives it, stamped then, and
/// hands them over in batches.
pub trait PacketTap: Send {
    /// Give each packet handed over so far to `each`: its bytes from the IP
    /// header (TCP headers included, payload cut), and when the kernel
    /// received or sent it, on [`Platform::monotonic_ns`] (`None` when the
    /// stamp cannot be believed). Not when the reader got to it: a capture
    /// thread may lag behind a busy host. Returns how many batches.
    fn drain(&mut self, each: &mut dyn FnMut(&[u8], Option<u64>)) -> io::Result<usize>;

    /// Wait until packets are handed over, `wake` is readable, or `timeout`
    /// has passed. Precise to the millisecond (unlike a socket's read
    /// timeout, which the kernel counts in scheduler ticks).
    fn wait(&self, wake: &socket2::Socket, timeout: std::time::Duration) -> io::Result<()>;

    /// The longest the kernel holds a packet before handing it over: after
    /// a stop, waiting this long (draining) sees everything from before it.
    fn handed_over_within(&self) -> std::time::Duration;

    /// Packets the kernel had no room for since the tap opened.
    fn lost(&mut self) -> io::Result<u64>;
}

/// What the agent needs from the OS beyond what `socket2` and `tokio` offer.
pub trait Platform {
    /// The host's monotonic clock in nanoseconds, comparable across all
    /// processes of the host (the agent and its holders).
    fn monotonic_ns() -> u64;

    /// Bytes waiting in the socket's receive buffer (FIONREAD).
    fn unread_bytes(socket: &SockRef<'_>) -> io::Result<u64>;

    /// Set SO_KEEPALIVE and its timers.
    fn set_keepalive(socket: &SockRef<'_>, keepalive: Keepalive) -> io::Result<()>;

    /// Read SO_KEEPALIVE and whatever timers the OS lets us read back.
    fn keepalive(socket: &SockRef<'_>) -> io::Result<Keepalive>;

    /// Set how long sent data may stay unacknowledged before the connection
    /// is dropped (TCP_USER_TIMEOUT, TCP_MAXRT); 0 restores the default.
    fn set_user_timeout(socket: &SockRef<'_>, millis: u32) -> io::Result<()>;

    /// Read it back, when the OS allows.
    fn user_timeout(socket: &SockRef<'_>) -> io::Result<Option<u32>>;

    /// Let a listener bind a port that connections in TIME_WAIT still use
    /// (SO_REUSEADDR on Unix; Windows allows it already, and its SO_REUSEADDR
    /// would let two listeners share a port).
    fn allow_address_reuse(socket: &socket2::Socket) -> io::Result<()>;

    /// An id that changes on every boot of the host.
    fn boot_id() -> String;

    /// The signal that ended a process, if one did.
    fn exit_signal(status: &ExitStatus) -> Option<i32>;

    /// Give memory freed since the last call back to the OS. A case's
    /// capture can briefly hold 100 000 segments; without this the C
    /// allocator keeps that peak, and a long-lived agent drifts upwards.
    fn return_free_memory();

    /// Called first thing in `main`, before any thread: keep the C
    /// allocator to one arena. glibc gives each new thread (runtime
    /// workers, capture readers, the blocking pool) an arena of its own, up
    /// to 8 per core, each keeping about 1.2 MB after use: an agent grew
    /// from 11.5 to 15.2 MB over 400 cases that way, and from 8.4 to 8.6 MB
    /// with one arena. The agent allocates too little for contention to
    /// matter.
    fn one_allocator_arena();

    /// The packet filter isolation works through, where there is one;
    /// `exe` is the agent executable (a watchdog where the OS needs one).
    fn firewall(exe: &std::path::Path) -> Option<Box<dyn crate::isolate::Firewall>>;

    /// Control of network interfaces (link down/up), where supported;
    /// `exe` is the agent executable (its watchdog).
    fn links(exe: &std::path::Path) -> Option<Box<dyn crate::link::LinkControl>>;

    /// The host's TCP settings, where faultlab changes them; `exe` is the
    /// agent executable (its watchdog).
    fn tcp_settings(exe: &std::path::Path) -> Option<Box<dyn crate::tune::SettingControl>>;

    /// Ways of degrading the network (delay, loss, ...), run as `exe
    /// degrade-watchdog` for deadlines, never touching `control_port`; or
    /// why this host cannot (found by really trying).
    fn shapers(exe: &std::path::Path, control_port: u16) -> crate::degrade::Shapers;

    /// Every TCP packet of the host from now on, both directions, headers
    /// only, each with the kernel's time of it (needs CAP_NET_RAW).
    fn packet_tap() -> io::Result<Box<dyn PacketTap>>;

    /// The host's TCP counters by `Section.Name` (see [`crate::counters`]).
    fn tcp_counters() -> io::Result<std::collections::BTreeMap<String, u64>>;

    /// A pair of connected sockets: a byte written to the first makes the
    /// second readable, which wakes a [`PacketTap::wait`] at once.
    fn wake_pair() -> io::Result<(socket2::Socket, socket2::Socket)>;

    /// The host's table of TCP connections (every program's).
    fn socket_table() -> Box<dyn crate::sockets::SocketTable>;

    /// Reboot the host now; how. `orderly`: through the service manager,
    /// services stopped first (systemctl reboot; shutdown /r); else
    /// abruptly, nothing shut down first (sync, then reboot(2); Windows
    /// has no such call for a service, and says so).
    fn reboot(orderly: bool) -> io::Result<&'static str>;

    /// Whether an orderly reboot can be asked of a service manager here
    /// (Linux: systemd runs; Windows: always).
    fn reboots_orderly() -> bool;

    /// A holder's stdin and stdout as async streams, driven by the reactor
    /// where the OS allows (tokio's own stdio goes through a thread pool,
    /// which costs two thread hand-offs per request).
    fn stdio_pipes() -> StdioPipes;

    /// Make the calling thread run as soon as it is woken, even on a busy
    /// host: a real-time class (Linux: `SCHED_FIFO`, priority
    /// [`URGENT_PRIORITY`]; Windows: time-critical priority, and a 1 ms
    /// timer period for the process, as Windows' default tick is 15.6 ms
    /// where sleeps have no high-resolution timer). Returns how it was
    /// scheduled before, for [`Platform::restore_thread`]; an error when the
    /// OS does not permit it (Linux: neither root nor `CAP_SYS_NICE`).
    fn raise_thread() -> io::Result<ThreadSchedule>;

    /// Schedule the calling thread as it was before [`Platform::raise_thread`].
    fn restore_thread(before: ThreadSchedule);

    /// Block the calling thread until [`Platform::monotonic_ns`] reads
    /// `at_ns` (an absolute deadline: no drift from computing what is left).
    fn sleep_until(at_ns: u64);
}

/// The real-time priority of a thread waiting for a scheduled moment: above
/// every ordinary thread, below the kernel's own real-time threads (50 and
/// up on Linux) and what audio or control software usually takes.
pub const URGENT_PRIORITY: i32 = 10;

/// How a thread was scheduled, to put back (see [`Platform::raise_thread`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadSchedule {
    /// The OS's scheduling class or policy.
    pub policy: i32,
    /// The priority within it.
    pub priority: i32,
}

/// A process's stdin and stdout, ready for tokio.
pub struct StdioPipes {
    /// Standard input.
    pub input: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    /// Standard output.
    pub output: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
}

impl StdioPipes {
    /// tokio's portable stdio (through its blocking thread pool).
    pub fn portable() -> Self {
        Self {
            input: Box::new(tokio::io::stdin()),
            output: Box::new(tokio::io::stdout()),
        }
    }
}

/// Convert milliseconds from a request into a `Duration`.
pub(crate) fn millis(ms: u32) -> std::time::Duration {
    std::time::Duration::from_millis(u64::from(ms))
}

/// Build socket2's keepalive parameters from ours.
pub(crate) fn keepalive_params(
    idle_ms: Option<u32>,
    interval_ms: Option<u32>,
    count: Option<u32>,
) -> socket2::TcpKeepalive {
    let mut params = socket2::TcpKeepalive::new();
    if let Some(idle) = idle_ms {
        params = params.with_time(millis(idle));
    }
    if let Some(interval) = interval_ms {
        params = params.with_interval(millis(interval));
    }
    if let Some(count) = count {
        params = params.with_retries(count);
    }
    params
}
