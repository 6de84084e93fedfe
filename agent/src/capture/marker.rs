//! The end of a capture's window, put on the wire: when a capture stops,
//! the agent opens a connection to a loopback port it holds closed, and the
//! SYN (and the kernel's RST) pass through the host's tap like any packet.
//! Once the reader has it, everything the kernel took before the stop has
//! been handed over too, since the tap hands packets over in the order they
//! came — so a stop waits as long as the kernel holds its last batch (about
//! 2 ms), not the longest it ever could (12 ms) for every case.

use super::segment::Segment;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// A loopback port held closed (bound, never listening) for markers alone.
pub(super) struct Marker {
    /// Holds the port: nobody else can listen on it, and a connection to
    /// it is refused at once.
    _held: socket2::Socket,
    address: SocketAddrV4,
}

impl Marker {
    pub(super) fn new() -> io::Result<Self> {
        let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        held.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        let address = held
            .local_addr()?
            .as_socket_ipv4()
            .ok_or_else(|| io::Error::other("a loopback socket without an IPv4 address"))?;
        Ok(Self {
            _held: held,
            address,
        })
    }

    /// Put a marker on the wire: a SYN to the held port (refused at once,
    /// so nothing stays open). Fails only if loopback is down, and then the
    /// stop waits the kernel's longest hold instead.
    pub(super) fn send(&self) -> io::Result<()> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&SocketAddr::V4(self.address).into()) {
            // Refused at once, or under way (the SYN is out).
            Err(error)
                if error.kind() != io::ErrorKind::ConnectionRefused && !under_way(&error) =>
            {
                Err(error)
            }
            _ => Ok(()),
        }
    }

    /// Whether `segment` is a marker (the SYN, or the RST refusing it).
    pub(super) fn is(&self, segment: &Segment) -> bool {
        let marker = SocketAddr::V4(self.address);
        segment.destination == marker || segment.source == marker
    }

    /// A marker's SYN as the tap hands it over (tests).
    #[cfg(test)]
    pub(super) fn segment_bytes(&self) -> Vec<u8> {
        let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 40_000);
        super::segment::ipv4_packet(from, self.address, super::segment::SYN)
    }
}

/// A non-blocking connect whose SYN is out: EINPROGRESS (Windows says
/// "would block" for the same).
fn under_way(error: &io::Error) -> bool {
    #[cfg(unix)]
    let in_progress = error.raw_os_error() == Some(libc::EINPROGRESS);
    #[cfg(not(unix))]
    let in_progress = false;
    in_progress || error.kind() == io::ErrorKind::WouldBlock
}
