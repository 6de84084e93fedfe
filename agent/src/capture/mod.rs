//! Wire evidence: the TCP segments a host really sent and received while a
//! case ran, so a verdict can rest on the packets (a RST and no FIN, a FIN
//! after all data), as the seed's author proved each claim with a capture.
//!
//! One reader thread per agent reads the host's [`PacketTap`] (every
//! interface, both directions) and each capture is a window on what it
//! reads ([`windows`]): from its start to the marker its stop puts on the
//! wire ([`marker`]). Packets keep the kernel's stamp of when they reached
//! or left the host's stack (converted to the host's monotonic clock, the
//! same clock as observations), not when the thread got to them: on a busy
//! host the reader lags by up to milliseconds, and an arrival stamped late
//! made readers look as if they saw a FIN before it came. The kernel hands
//! packets over in batches, so the reader is not woken by each one (a
//! wake-up per packet delayed the very readers whose FIN it was timing).
//!
//! Why one tap kept open across captures, not one per capture: opening a
//! ring and closing it each wait for the kernel's RCU grace period (8 ms and
//! 24 ms measured here), paid by every case on every host. The tap closes
//! once no capture has run for [`LINGER`]. Captures are bounded in number,
//! events and lifetime, and need CAP_NET_RAW.

mod marker;
mod ports;
pub mod segment;
mod windows;

use crate::platform::{Current, PacketTap, Platform};
use marker::Marker;
pub use ports::OwnPorts;
pub use segment::Segment;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use windows::{Window, Windows};

/// At most this many segments are kept per capture (the rest are counted).
pub const MAX_EVENTS: usize = 100_000;
/// A capture nobody stops keeps nothing more after this.
pub const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// At most this many captures run at once on an agent.
pub const MAX_RUNNING: usize = 64;
/// The tap stays open this long after the last capture stopped, for the
/// next case's.
pub const LINGER: Duration = Duration::from_secs(10);
/// How often an idle reader looks at the time (a stop wakes it at once).
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// The longest a stop waits for its reader to hand over.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(5);

/// One segment and when this host saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireEvent {
    /// Host monotonic clock.
    pub mono_ns: u64,
    /// The segment.
    pub segment: Segment,
}

/// Which segments a capture keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Keep segments with one of these ports (either end), besides those
    /// of this agent's own sockets ([`OwnPorts`]): an application's, say.
    pub ports: Vec<u16>,
    /// Never keep segments with one of these ports (the control channel).
    pub exclude_ports: Vec<u16>,
}

impl Filter {
    fn keeps(&self, segment: &Segment, own: &OwnPorts) -> bool {
        let ports = [segment.source.port(), segment.destination.port()];
        let excluded = ports.iter().any(|port| self.exclude_ports.contains(port));
        let wanted = ports
            .iter()
            .any(|&port| own.has(port) || self.ports.contains(&port));
        wanted && !excluded
    }
}

/// What a stopped capture found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captured {
    /// The segments, in the order seen.
    pub events: Vec<WireEvent>,
    /// Segments not kept because of [`MAX_EVENTS`].
    pub dropped: u64,
    /// Packets the kernel had no room for (the reader fell too far behind):
    /// the capture is incomplete.
    pub lost: u64,
    /// Packets whose kernel stamp could not be believed (a clock stepped
    /// meanwhile), stamped when read instead: late by the reader's lag.
    pub reader_stamped: u64,
}

/// Why a capture request failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The id is in use.
    #[error("capture {0:?} is already running")]
    IdInUse(String),
    /// No such capture.
    #[error("no capture {0:?}")]
    Unknown(String),
    /// Too many at once.
    #[error("{MAX_RUNNING} captures are running on this agent already: stop some first")]
    TooMany,
    /// The packet socket could not be opened.
    #[error("cannot capture here: {0}")]
    Unavailable(String),
}

/// The captures and whether a reader runs: what requests and the reader share.
#[derive(Default)]
struct Shared {
    windows: Windows,
    /// The running reader, if one runs.
    reader: Option<Running>,
    /// Readers started so far (each knows its number).
    readers_started: u64,
}

/// The running reader.
struct Running {
    /// Its number: one that ended must not take a later one's place.
    number: u64,
    /// A byte written here wakes it.
    wake: socket2::Socket,
}

/// Opens the host's packet tap.
type OpenTap = fn() -> std::io::Result<Box<dyn PacketTap>>;

/// The captures running on this agent.
pub struct Captures {
    open_tap: OpenTap,
    shared: Arc<Mutex<Shared>>,
    marker: Arc<Marker>,
    own: Arc<OwnPorts>,
}

impl Captures {
    /// Captures on this host, if it can capture (tried for real).
    pub fn new() -> Result<Self, CaptureError> {
        Self::on(Current::packet_tap)
    }

    /// Captures on the taps `open_tap` opens, if it opens one.
    fn on(open_tap: OpenTap) -> Result<Self, CaptureError> {
        let unavailable = |error: std::io::Error| CaptureError::Unavailable(error.to_string());
        drop(open_tap().map_err(unavailable)?);
        Ok(Self {
            open_tap,
            shared: Arc::default(),
            marker: Arc::new(Marker::new().map_err(unavailable)?),
            own: Arc::default(),
        })
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        crate::sync::lock(&self.shared)
    }

    /// This agent's sockets use `port` (see [`OwnPorts`]).
    pub fn own_port(&self, port: u16) {
        self.own.mark(port);
    }

    /// Start capturing segments that `filter` keeps, from now.
    pub fn start(&self, id: &str, filter: Filter) -> Result<(), CaptureError> {
        let mut shared = self.shared();
        if shared.windows.contains(id) {
            return Err(CaptureError::IdInUse(id.to_owned()));
        }
        if shared.windows.running() >= MAX_RUNNING {
            return Err(CaptureError::TooMany);
        }
        if shared.reader.is_none() {
            shared.readers_started += 1;
            let number = shared.readers_started;
            let wake = self.spawn_reader(number)?;
            shared.reader = Some(Running { number, wake });
        }
        shared
            .windows
            .open(id, Window::new(filter, Current::monotonic_ns()));
        Ok(())
    }

    /// Reader `number`, on a freshly opened tap; the way to wake it.
    fn spawn_reader(&self, number: u64) -> Result<socket2::Socket, CaptureError> {
        let unavailable = |error: std::io::Error| CaptureError::Unavailable(error.to_string());
        let tap = (self.open_tap)().map_err(unavailable)?;
        let (wake, woken) = Current::wake_pair().map_err(unavailable)?;
        woken.set_nonblocking(true).map_err(unavailable)?;
        let reader = Reader {
            number,
            tap,
            woken,
            shared: Arc::clone(&self.shared),
            marker: Arc::clone(&self.marker),
            own: Arc::clone(&self.own),
        };
        std::thread::Builder::new()
            .name("capture".to_owned())
            .spawn(move || reader.run())
            .map_err(unavailable)?;
        Ok(wake)
    }

    /// Stop a capture and hand over what it saw: everything up to the
    /// marker this stop puts on the wire.
    pub fn stop(&self, id: &str) -> Result<Captured, CaptureError> {
        let (hand_over, handed_over) = std::sync::mpsc::sync_channel(1);
        {
            let mut shared = self.shared();
            let stopped_ns = Current::monotonic_ns();
            shared
                .windows
                .close(id, stopped_ns, hand_over)
                .ok_or_else(|| CaptureError::Unknown(id.to_owned()))?;
            match &shared.reader {
                // Wakes the reader to wait for the marker, not its idle wait.
                Some(running) => drop((&running.wake).write(&[1])),
                // The reader failed: nothing more will come.
                None => shared.windows.hand_over_all(),
            }
        }
        if let Err(error) = self.marker.send() {
            tracing::warn!(%error, "capture: cannot send the stop marker; waiting the kernel's longest hold");
        }
        // A reader hands over within the kernel's longest hold, and one that
        // ends hands everything over (see `Reader`'s drop): this bound is a
        // last resort.
        handed_over.recv_timeout(HAND_OVER_TIMEOUT).map_err(|_| {
            CaptureError::Unavailable("the capture thread did not hand over".to_owned())
        })
    }

    /// Stop every capture and forget this agent's ports (a reset), dropping
    /// what the captures saw.
    pub fn stop_all(&self) {
        self.shared().windows.clear();
        self.own.clear();
    }
}

/// The reader thread and what it owns. However it ends (its tap failed,
/// nothing to do for [`LINGER`], a panic), it leaves its place and hands
/// every stopped capture over as it is (its drop).
struct Reader {
    number: u64,
    tap: Box<dyn PacketTap>,
    /// Readable when a request wants the reader to look again.
    woken: socket2::Socket,
    shared: Arc<Mutex<Shared>>,
    marker: Arc<Marker>,
    own: Arc<OwnPorts>,
}

impl Reader {
    /// Read each batch as the kernel hands it over into the windows, hand
    /// stopped ones over, and end after [`LINGER`] with nothing to do (or
    /// when the tap fails).
    fn run(mut self) {
        let mut lost_so_far = 0;
        let mut idle_since: Option<Instant> = None;
        loop {
            // The wake-up bytes: read them first, or every wait would end
            // at once (a byte written from here on ends the next one).
            let _ = (&self.woken).read(&mut [0u8; 64]);
            let wait = {
                let mut shared = crate::sync::lock(&self.shared);
                let Shared {
                    windows, reader, ..
                } = &mut *shared;
                let drained = self.tap.drain(&mut |packet, kernel_ns| {
                    windows.see(packet, kernel_ns, &self.marker, &self.own);
                });
                if let Err(error) = drained {
                    tracing::error!(%error, "capture stopped reading");
                    return;
                }
                match self.tap.lost() {
                    Ok(lost) => {
                        windows.lost(lost.saturating_sub(lost_so_far));
                        lost_so_far = lost;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "capture: cannot read the kernel's drop count")
                    }
                }
                let now = Instant::now();
                let give_up = self.tap.handed_over_within();
                let waiting = windows.hand_over(now, give_up);
                if windows.idle(now) {
                    let since = *idle_since.get_or_insert(now);
                    if now.duration_since(since) >= LINGER {
                        // Under the lock: a start from now on opens a new tap.
                        *reader = None;
                        return;
                    }
                } else {
                    idle_since = None;
                }
                waiting.unwrap_or(IDLE_WAIT)
            };
            if let Err(error) = self.tap.wait(&self.woken, wait) {
                tracing::error!(%error, "capture stopped waiting");
                return;
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut shared = crate::sync::lock(&self.shared);
        let still_ours = shared
            .reader
            .as_ref()
            .is_some_and(|running| running.number == self.number);
        if still_ours {
            // A start from now on opens a new tap; every stop is answered.
            shared.reader = None;
            shared.windows.hand_over_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(source_port: u16, destination_port: u16) -> Segment {
        Segment {
            source: std::net::SocketAddr::from(([198, 18, 0, 10], source_port)),
            destination: std::net::SocketAddr::from(([198, 18, 0, 11], destination_port)),
            flags: segment::ACK,
            seq: 1,
            ack: 1,
            payload: 0,
        }
    }

    // Packet capture is Linux's (Windows says it cannot capture yet).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_late_reader_still_gets_the_kernels_times() -> std::io::Result<()> {
        let mut tap = Current::packet_tap().map_err(|error| {
            std::io::Error::other(format!(
                "this test needs a packet socket (root or CAP_NET_RAW; CI runs it as root): {error}"
            ))
        })?;
        // A connection on loopback: its handshake is captured.
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let before = Current::monotonic_ns();
        let _client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (_server, _) = listener.accept()?;
        let after = Current::monotonic_ns();
        // The reader comes late, on purpose (a busy host): well after the
        // kernel handed the packets over.
        std::thread::sleep(tap.handed_over_within() + Duration::from_millis(50));
        let mut events = Vec::new();
        let mut unstamped = 0;
        tap.drain(&mut |packet, kernel_ns| {
            let Some(segment) = segment::parse(packet) else {
                return;
            };
            if [segment.source.port(), segment.destination.port()].contains(&port) {
                unstamped += u32::from(kernel_ns.is_none());
                events.push(WireEvent {
                    mono_ns: kernel_ns.unwrap_or(0),
                    segment,
                });
            }
        })?;
        assert_eq!(unstamped, 0, "the kernel stamped every packet");
        let handshake: Vec<u8> = events.iter().map(|event| event.segment.flags).collect();
        assert!(events.len() >= 3, "{handshake:?}");
        for event in &events {
            // Within 100 µs of when it really happened, not 50 ms later.
            assert!(
                event.mono_ns >= before && event.mono_ns <= after + 100_000,
                "stamped {} ns after the connect returned",
                i128::from(event.mono_ns) - i128::from(after)
            );
        }
        Ok(())
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_tap_that_falls_behind_counts_what_the_kernel_had_no_room_for() -> std::io::Result<()> {
        use std::io::Write as _;
        let mut tap = Current::packet_tap()?;
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
        let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
        client.set_nodelay(true)?;
        let (mut server, _) = listener.accept()?;
        let reader = std::thread::spawn(move || std::io::copy(&mut server, &mut std::io::sink()));
        // One-byte segments, nobody draining the tap, until the ring is full.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut writes = 0u32;
        while tap.lost()? == 0 && writes < 1_000_000 && Instant::now() < deadline {
            for _ in 0..1000 {
                client.write_all(&[1])?;
            }
            writes += 1000;
        }
        let lost = tap.lost()?;
        drop(client);
        let _ = reader.join();
        assert!(lost > 0, "{writes} one-byte writes and nothing lost");
        // What the ring kept is still there, stamped by the kernel.
        let mut kept = 0u64;
        let mut unstamped = 0u64;
        tap.drain(&mut |_, kernel_ns| {
            kept += 1;
            unstamped += u64::from(kernel_ns.is_none());
        })?;
        assert!(kept > 1000, "kept {kept}, lost {lost}");
        assert_eq!(unstamped, 0);
        Ok(())
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn captures_share_one_tap_and_each_keeps_its_own_window()
    -> Result<(), Box<dyn std::error::Error>> {
        let captures = Captures::new()?;
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let only = |port| Filter {
            ports: vec![port],
            exclude_ports: Vec::new(),
        };
        captures.start("early", only(port))?;
        let _first = std::net::TcpStream::connect(listener.local_addr()?)?;
        let _accepted_first = listener.accept()?;
        captures.start("late", only(port))?;
        assert!(matches!(
            captures.start("late", only(port)),
            Err(CaptureError::IdInUse(_))
        ));
        let _second = std::net::TcpStream::connect(listener.local_addr()?)?;
        let _accepted_second = listener.accept()?;
        let syns = |captured: &Captured| {
            captured
                .events
                .iter()
                .filter(|event| event.segment.flags == segment::SYN)
                .count()
        };
        // Each stop hands over everything before it (its marker came by).
        let late = captures.stop("late")?;
        let early = captures.stop("early")?;
        assert_eq!(syns(&early), 2, "{early:?}");
        assert_eq!(
            syns(&late),
            1,
            "the late one started after the first SYN: {late:?}"
        );
        assert!(
            late.events
                .iter()
                .all(|event| event.segment.destination.port() == port
                    || event.segment.source.port() == port)
        );
        assert!(matches!(
            captures.stop("late"),
            Err(CaptureError::Unknown(_))
        ));
        // The tap is still open for the next one, which sees only its own time.
        captures.start("next", only(port))?;
        let next = captures.stop("next")?;
        assert_eq!(next.events, Vec::new());
        Ok(())
    }

    /// A tap that hands nothing over and fails at its second drain.
    #[cfg(target_os = "linux")]
    struct FailingTap {
        drains: usize,
    }

    #[cfg(target_os = "linux")]
    impl PacketTap for FailingTap {
        fn drain(&mut self, _: &mut dyn FnMut(&[u8], Option<u64>)) -> std::io::Result<usize> {
            self.drains += 1;
            if self.drains > 1 {
                return Err(std::io::Error::other("the tap broke"));
            }
            Ok(0)
        }
        fn wait(&self, _: &socket2::Socket, timeout: Duration) -> std::io::Result<()> {
            std::thread::sleep(timeout.min(Duration::from_millis(5)));
            Ok(())
        }
        fn handed_over_within(&self) -> Duration {
            Duration::from_secs(60)
        }
        fn lost(&mut self) -> std::io::Result<u64> {
            Ok(0)
        }
    }

    #[cfg(target_os = "linux")]
    fn failing_tap() -> std::io::Result<Box<dyn PacketTap>> {
        Ok(Box::new(FailingTap { drains: 0 }))
    }

    // Capture is Linux's (Windows has no wake pair for a reader yet).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_reader_that_fails_answers_every_stop_and_the_next_start_opens_a_new_one()
    -> Result<(), CaptureError> {
        let captures = Captures::on(failing_tap)?;
        captures.start("first", Filter::default())?;
        // Its reader fails at once; the stop is answered (with nothing), not
        // left waiting for a marker nobody reads.
        let started = Instant::now();
        let first = captures.stop("first")?;
        assert_eq!(first, Captured::default());
        assert!(
            started.elapsed() < HAND_OVER_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        // A new reader for the next capture.
        captures.start("second", Filter::default())?;
        assert!(captures.shared().reader.is_some());
        assert_eq!(captures.stop("second")?, Captured::default());
        Ok(())
    }

    #[test]
    fn the_filter_keeps_the_case_and_never_the_control_channel() {
        let own = OwnPorts::default();
        own.mark(2);
        own.mark(7420);
        let filter = Filter {
            ports: vec![7000],
            exclude_ports: vec![7420],
        };
        // Asked for (an application's port), or this agent's own.
        assert!(filter.keeps(&segment(40_000, 7000), &own));
        assert!(filter.keeps(&segment(7000, 40_000), &own));
        assert!(filter.keeps(&segment(2, 8000), &own));
        assert!(!filter.keeps(&segment(40_000, 8000), &own), "nobody's");
        assert!(
            !filter.keeps(&segment(7420, 2), &own),
            "the control channel"
        );
        let own_only = Filter {
            ports: Vec::new(),
            exclude_ports: vec![7420],
        };
        assert!(own_only.keeps(&segment(1, 2), &own));
        assert!(!own_only.keeps(&segment(1, 7000), &own), "not this agent's");
    }
}
