//! Wire evidence: the TCP segments a host really sent and received while a
//! case ran, so a verdict can rest on the packets (a RST and no FIN, a FIN
//! after all data), as the seed's author proved each claim with a capture.
//!
//! A capture is a thread reading a raw packet socket (every interface of the
//! host, both directions), keeping the TCP segments whose ports match, each
//! stamped by the kernel as it reached or left the host's stack (converted
//! to the host's monotonic clock, the same clock as observations), not when
//! the thread got to it: on a busy host the reader lags by up to
//! milliseconds, and an arrival stamped late made readers look as if they
//! saw a FIN before it came.
//! It is bounded in events and in lifetime, and needs CAP_NET_RAW.

pub mod segment;

use crate::platform::{Current, Platform};
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
/// After a stop, the reader still drains what the kernel queued for it
/// (it may lag behind a busy host), for at most this long.
const DRAIN: Duration = Duration::from_millis(500);
/// Once the queue is empty after a stop, the reader waits this long for a
/// straggler (a loopback packet's receive side runs a moment after its
/// send) and then ends: the kernel queues a packet for the capture as the
/// host sends or receives it, so nothing done before the stop comes later.
const DRAIN_QUIET: Duration = Duration::from_millis(1);
/// Packets read between two looks at the stop flag.
const BATCH: usize = 1024;
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
    /// Packets the kernel gave no timestamp, stamped when read instead.
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
    /// Keeps the kernel stamping packets for as long as the agent runs.
    _stamping: socket2::Socket,
}

impl Captures {
    /// Captures on this host, if it can capture; from now on the kernel
    /// stamps every packet (see [`Platform::stamp_packets`]).
    pub fn new() -> Result<Self, CaptureError> {
        let unavailable = |error: std::io::Error| CaptureError::Unavailable(error.to_string());
        // A packet socket must be possible here, not only a stamping one.
        drop(Current::packet_socket().map_err(unavailable)?);
        Ok(Self {
            running: Mutex::default(),
            _stamping: Current::stamp_packets().map_err(unavailable)?,
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
        let socket = Current::packet_socket().map_err(unavailable)?;
        socket.set_nonblocking(true).map_err(unavailable)?;
        let (wake, woken) = Current::wake_pair().map_err(unavailable)?;
        woken.set_nonblocking(true).map_err(unavailable)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let (hand_over, handed_over) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("capture-{id}"))
            .spawn(move || {
                let _ = hand_over.send(read(&socket, &woken, &filter, &stopped));
                // `socket` closes here, after the hand-over.
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

/// The reader thread: everything queued is read as it comes; a stop wakes
/// it, it reads what is queued (bounded by [`DRAIN`]), gives stragglers one
/// [`DRAIN_QUIET`], and hands over. Traffic after the stop (the control
/// channel carrying other hosts' captures) does not keep it reading.
fn read(
    socket: &socket2::Socket,
    woken: &socket2::Socket,
    filter: &Filter,
    stop: &AtomicBool,
) -> Captured {
    let started = Instant::now();
    let mut captured = Captured::default();
    let mut buffer = vec![0u8; 65_536];
    let mut draining_until: Option<Instant> = None;
    let mut waited_for_stragglers = false;
    while started.elapsed() < MAX_LIFETIME {
        let emptied = match read_queued(socket, filter, &mut buffer, &mut captured) {
            Ok(emptied) => emptied,
            Err(error) => {
                tracing::error!(%error, "capture stopped reading");
                break;
            }
        };
        let wait = match draining_until {
            None if stop.load(Ordering::Relaxed) => {
                draining_until = Some(Instant::now() + DRAIN);
                // The wake-up byte: read it, or every wait would end at once.
                let _ = (&*woken).read(&mut [0u8; 8]);
                continue;
            }
            None => IDLE_WAIT,
            Some(until) if Instant::now() >= until || (emptied && waited_for_stragglers) => {
                break;
            }
            Some(_) if emptied => {
                waited_for_stragglers = true;
                DRAIN_QUIET
            }
            Some(_) => continue,
        };
        if let Err(error) = Current::wait_readable(socket, woken, wait) {
            tracing::error!(%error, "capture stopped waiting");
            break;
        }
    }
    captured
}

/// Read what the kernel has queued (the socket is non-blocking), keeping
/// the segments `filter` keeps; at most [`BATCH`] packets, so that a flood
/// cannot keep the reader from its stop. True when the queue is empty.
fn read_queued(
    socket: &socket2::Socket,
    filter: &Filter,
    buffer: &mut [u8],
    captured: &mut Captured,
) -> std::io::Result<bool> {
    for _ in 0..BATCH {
        let (length, kernel_ns) = match Current::read_packet(socket, buffer) {
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        // The kernel's time of the packet; the reader's only where the
        // kernel gave none (counted: those times are late by the reader's lag).
        let mono_ns = kernel_ns.unwrap_or_else(|| {
            captured.reader_stamped += 1;
            Current::monotonic_ns()
        });
        let Some(segment) = segment::parse(&buffer[..length]) else {
            continue;
        };
        if !filter.keeps(&segment) {
            continue;
        }
        let echo = captured.events.iter().rev().take(4).any(|seen| {
            seen.segment == segment && mono_ns.saturating_sub(seen.mono_ns) < ECHO_WINDOW_NS
        });
        if echo {
            continue;
        }
        if captured.events.len() < MAX_EVENTS {
            captured.events.push(WireEvent { mono_ns, segment });
        } else {
            captured.dropped += 1;
        }
    }
    Ok(false)
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
        let socket = Current::packet_socket().map_err(|error| {
            std::io::Error::other(format!(
                "this test needs a packet socket (root or CAP_NET_RAW; CI runs it as root): {error}"
            ))
        })?;
        socket.set_nonblocking(true)?;
        // The kernel turns stamping on a moment after it is first asked
        // (a deferred static-key switch); an agent asks once, at its start.
        let _stamping = Current::stamp_packets()?;
        std::thread::sleep(Duration::from_millis(100));
        // A connection on loopback: its handshake is captured.
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let before = Current::monotonic_ns();
        let _client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (_server, _) = listener.accept()?;
        let after = Current::monotonic_ns();
        // The reader comes 50 ms late, on purpose (a busy host).
        std::thread::sleep(Duration::from_millis(50));
        let mut captured = Captured::default();
        let filter = Filter {
            ports: vec![port],
            exclude_ports: Vec::new(),
        };
        read_queued(&socket, &filter, &mut vec![0u8; 65_536], &mut captured)?;
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
