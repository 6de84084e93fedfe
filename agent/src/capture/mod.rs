//! Wire evidence: the TCP segments a host really sent and received while a
//! case ran, so a verdict can rest on the packets (a RST and no FIN, a FIN
//! after all data), as the seed's author proved each claim with a capture.
//!
//! A capture is a thread reading a [`PacketTap`] (every interface of the
//! host, both directions), keeping the TCP segments whose ports match, each
//! stamped by the kernel as it reached or left the host's stack (converted
//! to the host's monotonic clock, the same clock as observations), not when
//! the thread got to it: on a busy host the reader lags by up to
//! milliseconds, and an arrival stamped late made readers look as if they
//! saw a FIN before it came. The kernel hands packets over in batches, so
//! the capture is not woken by each one (a wake-up per packet delayed the
//! very readers whose FIN it was timing).
//! It is bounded in events and in lifetime, and needs CAP_NET_RAW.

pub mod segment;

use crate::platform::{Current, PacketTap, Platform};
pub use segment::Segment;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// At most this many segments are kept per capture (the rest are counted).
pub const MAX_EVENTS: usize = 100_000;
/// A capture nobody stops ends by itself after this.
pub const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// How often an idle reader looks at its lifetime (a stop wakes it at once).
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// The same segment seen again this soon is the loopback echo of itself.
const ECHO_WINDOW_NS: u64 = 1_000_000;

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
    /// Keep segments with one of these ports (either end); empty = all.
    pub ports: Vec<u16>,
    /// Never keep segments with one of these ports (the control channel).
    pub exclude_ports: Vec<u16>,
}

impl Filter {
    fn keeps(&self, segment: &Segment) -> bool {
        let ports = [segment.source.port(), segment.destination.port()];
        let excluded = ports.iter().any(|port| self.exclude_ports.contains(port));
        let wanted = self.ports.is_empty() || ports.iter().any(|port| self.ports.contains(port));
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
    /// The packet socket could not be opened.
    #[error("cannot capture here: {0}")]
    Unavailable(String),
}

struct Running {
    stop: Arc<AtomicBool>,
    /// A byte written here wakes the reader at once.
    wake: socket2::Socket,
    /// What the reader saw, sent when it stops. Not the thread's join:
    /// closing a packet socket waits for an RCU grace period (10–20 ms
    /// measured here), which the reader spends after handing over.
    handed_over: std::sync::mpsc::Receiver<Captured>,
}

/// The captures running on this agent.
pub struct Captures {
    running: Mutex<HashMap<String, Running>>,
}

impl Captures {
    /// Captures on this host, if it can capture (tried for real).
    pub fn new() -> Result<Self, CaptureError> {
        drop(Current::packet_tap().map_err(|error| CaptureError::Unavailable(error.to_string()))?);
        Ok(Self {
            running: Mutex::default(),
        })
    }

    fn running(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        crate::sync::lock(&self.running)
    }

    /// Start capturing segments that `filter` keeps.
    pub fn start(&self, id: &str, filter: Filter) -> Result<(), CaptureError> {
        let mut running = self.running();
        if running.contains_key(id) {
            return Err(CaptureError::IdInUse(id.to_owned()));
        }
        let unavailable = |error: std::io::Error| CaptureError::Unavailable(error.to_string());
        let mut tap = Current::packet_tap().map_err(unavailable)?;
        let (wake, woken) = Current::wake_pair().map_err(unavailable)?;
        woken.set_nonblocking(true).map_err(unavailable)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let (hand_over, handed_over) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("capture-{id}"))
            .spawn(move || {
                let _ = hand_over.send(read(tap.as_mut(), &woken, &filter, &stopped));
                // The tap closes here, after the hand-over.
            })
            .map_err(unavailable)?;
        running.insert(
            id.to_owned(),
            Running {
                stop,
                wake,
                handed_over,
            },
        );
        Ok(())
    }

    /// Stop a capture and hand over what it saw.
    pub fn stop(&self, id: &str) -> Result<Captured, CaptureError> {
        let capture = self
            .running()
            .remove(id)
            .ok_or_else(|| CaptureError::Unknown(id.to_owned()))?;
        capture.stop.store(true, Ordering::Relaxed);
        // If the byte cannot be written the reader still ends, within IDLE_WAIT.
        let _ = (&capture.wake).write(&[1]);
        capture
            .handed_over
            .recv()
            .map_err(|_| CaptureError::Unavailable("the capture thread failed".to_owned()))
    }

    /// Stop every capture (a reset), dropping what they saw.
    pub fn stop_all(&self) {
        let ids: Vec<String> = self.running().keys().cloned().collect();
        for id in ids {
            let _ = self.stop(&id);
        }
    }
}

/// The reader thread: each batch is read as the kernel hands it over; a
/// stop wakes it, and it goes on reading until everything from before the
/// stop has been handed over, then hands what it kept over. Traffic after
/// the stop (the control channel carrying other hosts' captures) does not
/// keep it reading.
fn read(
    tap: &mut dyn PacketTap,
    woken: &socket2::Socket,
    filter: &Filter,
    stop: &AtomicBool,
) -> Captured {
    let started = Instant::now();
    let mut captured = Captured::default();
    let mut stopped_at: Option<Instant> = None;
    loop {
        if let Err(error) = tap.drain(&mut |packet, kernel_ns| {
            keep(packet, kernel_ns, filter, &mut captured);
        }) {
            tracing::error!(%error, "capture stopped reading");
            break;
        }
        let now = Instant::now();
        let wait = match stopped_at {
            None if stop.load(Ordering::Relaxed) => {
                stopped_at = Some(now);
                // The wake-up byte: read it, or every wait would end at once.
                let _ = (&*woken).read(&mut [0u8; 8]);
                tap.handed_over_within()
            }
            None if now.duration_since(started) >= MAX_LIFETIME => break,
            None => IDLE_WAIT,
            Some(at) => match (at + tap.handed_over_within()).checked_duration_since(now) {
                Some(left) if !left.is_zero() => left,
                // Everything from before the stop was handed over, and read above.
                _ => break,
            },
        };
        if let Err(error) = tap.wait(woken, wait) {
            tracing::error!(%error, "capture stopped waiting");
            break;
        }
    }
    match tap.lost() {
        Ok(lost) => captured.lost = lost,
        Err(error) => tracing::warn!(%error, "capture: cannot read the kernel's drop count"),
    }
    if captured.lost > 0 {
        tracing::warn!(
            lost = captured.lost,
            "capture: the kernel had no room for packets"
        );
    }
    if captured.reader_stamped > 0 {
        tracing::warn!(
            packets = captured.reader_stamped,
            "capture: kernel stamps not believed (the clock stepped?); stamped when read"
        );
    }
    captured
}

/// Keep one packet if it is a segment `filter` keeps (not the loopback echo
/// of one just kept), stamped with the kernel's time of it.
fn keep(packet: &[u8], kernel_ns: Option<u64>, filter: &Filter, captured: &mut Captured) {
    let Some(segment) = segment::parse(packet) else {
        return;
    };
    if !filter.keeps(&segment) {
        return;
    }
    // The reader's time only where the kernel's cannot be believed
    // (counted: those times are late by the reader's lag).
    let mono_ns = kernel_ns.unwrap_or_else(|| {
        captured.reader_stamped += 1;
        Current::monotonic_ns()
    });
    let echo = captured.events.iter().rev().take(4).any(|seen| {
        seen.segment == segment && mono_ns.saturating_sub(seen.mono_ns) < ECHO_WINDOW_NS
    });
    if echo {
        return;
    }
    if captured.events.len() < MAX_EVENTS {
        captured.events.push(WireEvent { mono_ns, segment });
    } else {
        captured.dropped += 1;
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
        let mut captured = Captured::default();
        let filter = Filter {
            ports: vec![port],
            exclude_ports: Vec::new(),
        };
        tap.drain(&mut |packet, kernel_ns| keep(packet, kernel_ns, &filter, &mut captured))?;
        assert_eq!(
            captured.reader_stamped, 0,
            "the kernel stamped every packet"
        );
        let handshake: Vec<u8> = captured
            .events
            .iter()
            .map(|event| event.segment.flags)
            .collect();
        assert!(captured.events.len() >= 3, "{handshake:?}");
        for event in &captured.events {
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

    #[test]
    fn the_filter_keeps_the_case_and_never_the_control_channel() {
        let filter = Filter {
            ports: vec![7000],
            exclude_ports: vec![7420],
        };
        assert!(filter.keeps(&segment(40_000, 7000)));
        assert!(filter.keeps(&segment(7000, 40_000)));
        assert!(!filter.keeps(&segment(40_000, 8000)));
        let everything_but_control = Filter {
            ports: Vec::new(),
            exclude_ports: vec![7420],
        };
        assert!(everything_but_control.keeps(&segment(1, 2)));
        assert!(!everything_but_control.keeps(&segment(7420, 2)));
    }
}
