//! What each capture keeps of the one stream of packets the host's tap
//! hands over: a capture is a window on that stream, from the moment it
//! started to the marker sent when it was stopped. Plain data, fed packet
//! by packet, so what a window keeps is tested without a packet socket.

use super::marker::Marker;
use super::ports::OwnPorts;
use super::segment::{self, Segment};
use super::{Captured, Filter, MAX_EVENTS, MAX_LIFETIME, WireEvent};
use crate::platform::{Current, Platform};
use std::collections::HashMap;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

/// The same segment seen again this soon is the loopback echo of itself.
const ECHO_WINDOW_NS: u64 = 1_000_000;

/// One running capture.
pub(super) struct Window {
    filter: Filter,
    /// Packets stamped before this (host monotonic ns) are not the window's.
    from_ns: u64,
    started: Instant,
    captured: Captured,
}

impl Window {
    pub(super) fn new(filter: Filter, from_ns: u64) -> Self {
        Self {
            filter,
            from_ns,
            started: Instant::now(),
            captured: Captured::default(),
        }
    }

    /// Past [`MAX_LIFETIME`] a window nobody stopped keeps nothing more.
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.started) >= MAX_LIFETIME
    }

    /// Keep `segment` if the filter wants it (not the loopback echo of one
    /// just kept).
    fn keep(&mut self, segment: &Segment, mono_ns: u64, kernel_stamped: bool, own: &OwnPorts) {
        if mono_ns < self.from_ns || !self.filter.keeps(segment, own) {
            return;
        }
        let echo = self.captured.events.iter().rev().take(4).any(|seen| {
            seen.segment == *segment && mono_ns.saturating_sub(seen.mono_ns) < ECHO_WINDOW_NS
        });
        if echo {
            return;
        }
        // The reader's time only where the kernel's cannot be believed
        // (counted: those times are late by the reader's lag).
        self.captured.reader_stamped += u64::from(!kernel_stamped);
        if self.captured.events.len() < MAX_EVENTS {
            self.captured.events.push(WireEvent {
                mono_ns,
                segment: segment.clone(),
            });
        } else {
            self.captured.dropped += 1;
        }
    }
}

/// A stopped window, still keeping packets until its marker comes by.
struct Closing {
    window: Window,
    /// When the stop was asked (host monotonic ns): a marker stamped
    /// earlier was sent for an earlier stop.
    stopped_ns: u64,
    stopped: Instant,
    marker_seen: bool,
    hand_over: SyncSender<Captured>,
}

/// Every capture on this host: running, and stopped but not handed over.
#[derive(Default)]
pub(super) struct Windows {
    open: HashMap<String, Window>,
    closing: Vec<Closing>,
}

impl Windows {
    pub(super) fn contains(&self, id: &str) -> bool {
        self.open.contains_key(id)
    }

    pub(super) fn running(&self) -> usize {
        self.open.len()
    }

    pub(super) fn open(&mut self, id: &str, window: Window) {
        self.open.insert(id.to_owned(), window);
    }

    /// Stop window `id` at `stopped_ns`: it is handed over on `hand_over`
    /// once the marker sent after this has come by. False if no such window.
    pub(super) fn close(
        &mut self,
        id: &str,
        stopped_ns: u64,
        hand_over: SyncSender<Captured>,
    ) -> Option<()> {
        let window = self.open.remove(id)?;
        self.closing.push(Closing {
            window,
            stopped_ns,
            stopped: Instant::now(),
            marker_seen: false,
            hand_over,
        });
        Some(())
    }

    /// Whether anything waits for packets (or for its marker).
    pub(super) fn idle(&self, now: Instant) -> bool {
        self.closing.is_empty() && self.open.values().all(|window| window.expired(now))
    }

    /// One packet the tap handed over, and the kernel's stamp of it (host
    /// monotonic ns; `None` when it cannot be believed: then the reader's).
    pub(super) fn see(
        &mut self,
        packet: &[u8],
        kernel_ns: Option<u64>,
        marker: &Marker,
        own: &OwnPorts,
    ) {
        if self.open.is_empty() && self.closing.is_empty() {
            return;
        }
        let Some(segment) = segment::parse(packet) else {
            return;
        };
        let mono_ns = kernel_ns.unwrap_or_else(Current::monotonic_ns);
        let kernel_stamped = kernel_ns.is_some();
        if marker.is(&segment) {
            for closing in &mut self.closing {
                closing.marker_seen |= mono_ns >= closing.stopped_ns;
            }
            return;
        }
        let now = Instant::now();
        for window in self.open.values_mut() {
            if !window.expired(now) {
                window.keep(&segment, mono_ns, kernel_stamped, own);
            }
        }
        for closing in self
            .closing
            .iter_mut()
            .filter(|closing| !closing.marker_seen)
        {
            closing.window.keep(&segment, mono_ns, kernel_stamped, own);
        }
    }

    /// Packets the kernel had no room for since the last count: every
    /// window that was keeping packets is incomplete.
    pub(super) fn lost(&mut self, packets: u64) {
        if packets == 0 {
            return;
        }
        let now = Instant::now();
        let open = self.open.values_mut().filter(|window| !window.expired(now));
        let closing = self.closing.iter_mut().map(|closing| &mut closing.window);
        for window in open.chain(closing) {
            window.captured.lost += packets;
        }
    }

    /// Hand over every stopped window whose marker came by, or that waited
    /// `give_up_after` for it (a marker the host could not send: everything
    /// from before the stop was handed over by then). How long until the
    /// next such give-up, if any window still waits.
    pub(super) fn hand_over(&mut self, now: Instant, give_up_after: Duration) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        let mut waiting = Vec::with_capacity(self.closing.len());
        for closing in self.closing.drain(..) {
            let left = (closing.stopped + give_up_after).saturating_duration_since(now);
            if closing.marker_seen || left.is_zero() {
                // The stop may have given up waiting: nobody to tell then.
                let _ = closing.hand_over.send(closing.window.captured);
            } else {
                next = Some(next.map_or(left, |next| next.min(left)));
                waiting.push(closing);
            }
        }
        self.closing = waiting;
        next
    }

    /// Hand over every stopped window at once (the reader is ending).
    pub(super) fn hand_over_all(&mut self) {
        for closing in self.closing.drain(..) {
            let _ = closing.hand_over.send(closing.window.captured);
        }
    }

    /// Drop every window (a reset).
    pub(super) fn clear(&mut self) {
        self.open.clear();
        self.hand_over_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn packet(source: SocketAddrV4, destination: SocketAddrV4, flags: u8) -> Vec<u8> {
        segment::ipv4_packet(source, destination, flags)
    }

    fn host(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), port)
    }

    fn all_but_control() -> Filter {
        Filter {
            ports: vec![7000],
            exclude_ports: vec![7420],
        }
    }

    #[test]
    fn a_window_keeps_what_came_between_its_start_and_its_marker() -> std::io::Result<()> {
        let marker = Marker::new()?;
        let own = OwnPorts::default();
        let mut windows = Windows::default();
        windows.open("case", Window::new(all_but_control(), 1_000));
        let data = packet(host(40_000), host(7000), segment::ACK);
        // Stamped before the start: a packet from before, handed over late.
        windows.see(&data, Some(999), &marker, &own);
        windows.see(&data, Some(1_000), &marker, &own);
        let control = packet(host(40_000), host(7420), segment::ACK);
        windows.see(&control, Some(1_100), &marker, &own);
        let (hand_over, handed_over) = std::sync::mpsc::sync_channel(1);
        windows
            .close("case", 2_000, hand_over)
            .ok_or(std::io::ErrorKind::NotFound)?;
        // Still before the marker: kept.
        let fin = packet(host(7000), host(40_000), segment::FIN | segment::ACK);
        windows.see(&fin, Some(2_050), &marker, &own);
        let waiting = windows.hand_over(Instant::now(), Duration::from_secs(60));
        assert!(waiting.is_some(), "no marker yet: still waiting");
        assert!(
            handed_over.try_recv().is_err(),
            "handed over before its marker"
        );
        // A marker stamped before the stop is an earlier stop's.
        windows.see(&marker.segment_bytes(), Some(1_900), &marker, &own);
        windows.hand_over(Instant::now(), Duration::from_secs(60));
        assert!(
            handed_over.try_recv().is_err(),
            "an earlier stop's marker closed it"
        );
        windows.see(&marker.segment_bytes(), Some(2_100), &marker, &own);
        windows.see(&data, Some(2_200), &marker, &own);
        assert_eq!(
            windows.hand_over(Instant::now(), Duration::from_secs(60)),
            None
        );
        let captured = handed_over
            .try_recv()
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        let stamps: Vec<u64> = captured.events.iter().map(|event| event.mono_ns).collect();
        assert_eq!(stamps, vec![1_000, 2_050]);
        Ok(())
    }

    #[test]
    fn a_stop_whose_marker_never_comes_is_handed_over_after_the_kernels_hold() -> std::io::Result<()>
    {
        let mut windows = Windows::default();
        windows.open("case", Window::new(all_but_control(), 0));
        let (hand_over, handed_over) = std::sync::mpsc::sync_channel(1);
        windows
            .close("case", 10, hand_over)
            .ok_or(std::io::ErrorKind::NotFound)?;
        let hold = Duration::from_millis(12);
        let waited = windows.hand_over(Instant::now(), hold);
        assert!(waited.is_some_and(|left| left <= hold), "{waited:?}");
        assert!(handed_over.try_recv().is_err());
        assert_eq!(windows.hand_over(Instant::now() + hold, hold), None);
        assert!(handed_over.try_recv().is_ok());
        Ok(())
    }

    #[test]
    fn a_window_keeps_this_agents_own_traffic_and_not_another_agents() -> std::io::Result<()> {
        let marker = Marker::new()?;
        let own = OwnPorts::default();
        own.mark(7000);
        let mut windows = Windows::default();
        let own_only = Filter {
            ports: Vec::new(),
            exclude_ports: vec![7420],
        };
        windows.open("case", Window::new(own_only, 0));
        let loopback = |port| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        windows.see(
            &packet(loopback(40_000), loopback(7000), segment::SYN),
            Some(1),
            &marker,
            &own,
        );
        // Another agent's pair on the same loopback.
        windows.see(
            &packet(loopback(40_001), loopback(7002), segment::SYN),
            Some(2),
            &marker,
            &own,
        );
        let (hand_over, handed_over) = std::sync::mpsc::sync_channel(1);
        windows
            .close("case", 3, hand_over)
            .ok_or(std::io::ErrorKind::NotFound)?;
        windows.hand_over(Instant::now(), Duration::ZERO);
        let captured = handed_over
            .try_recv()
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        let ports: Vec<u16> = captured
            .events
            .iter()
            .map(|event| event.segment.destination.port())
            .collect();
        assert_eq!(ports, vec![7000]);
        Ok(())
    }
}
