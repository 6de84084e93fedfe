//! Reading a TCP segment out of an IP packet: just the fields wire evidence
//! needs (addresses, ports, flags, sequence numbers, payload length), with
//! every length checked, so a malformed packet is skipped, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP flag bits.
pub const FIN: u8 = 0x01;
/// SYN.
pub const SYN: u8 = 0x02;
/// RST.
pub const RST: u8 = 0x04;
/// PSH.
pub const PSH: u8 = 0x08;
/// ACK.
pub const ACK: u8 = 0x10;

const TCP: u8 = 6;

/// One TCP segment as seen on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Sender.
    pub source: SocketAddr,
    /// Receiver.
    pub destination: SocketAddr,
    /// Flag bits (FIN, SYN, RST, PSH, ACK, ...).
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Payload bytes.
    pub payload: u32,
}

impl Segment {
    /// Flags as letters, tcpdump style: "S", "S.", "F.", "R", "P." ...
    pub fn flag_letters(&self) -> String {
        let mut letters = String::new();
        for (bit, letter) in [(SYN, 'S'), (FIN, 'F'), (RST, 'R'), (PSH, 'P')] {
            if self.flags & bit != 0 {
                letters.push(letter);
            }
        }
        if self.flags & ACK != 0 {
            letters.push('.');
        }
        letters
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *bytes.get(at)?,
        *bytes.get(at + 1)?,
        *bytes.get(at + 2)?,
        *bytes.get(at + 3)?,
    ]))
}

/// Parse an IPv4 or IPv6 packet (no link-layer header); `None` when it is
/// not TCP or is cut short.
pub fn parse(packet: &[u8]) -> Option<Segment> {
    let version = packet.first()? >> 4;
    let (source_ip, destination_ip, tcp, tcp_len): (IpAddr, IpAddr, &[u8], usize) = match version {
        4 => {
            let header = usize::from(packet.first()? & 0x0f) * 4;
            if *packet.get(9)? != TCP || header < 20 {
                return None;
            }
            let total = usize::from(u16_at(packet, 2)?);
            let source = Ipv4Addr::new(
                *packet.get(12)?,
                *packet.get(13)?,
                *packet.get(14)?,
                *packet.get(15)?,
            );
            let destination = Ipv4Addr::new(
                *packet.get(16)?,
                *packet.get(17)?,
                *packet.get(18)?,
                *packet.get(19)?,
            );
            let tcp = packet.get(header..)?;
            (
                source.into(),
                destination.into(),
                tcp,
                total.checked_sub(header)?,
            )
        }
        6 => {
            if *packet.get(6)? != TCP {
                return None;
            }
            let payload = usize::from(u16_at(packet, 4)?);
            let address = |at: usize| -> Option<Ipv6Addr> {
                let bytes: [u8; 16] = packet.get(at..at + 16)?.try_into().ok()?;
                Some(Ipv6Addr::from(bytes))
            };
            (
                address(8)?.into(),
                address(24)?.into(),
                packet.get(40..)?,
                payload,
            )
        }
        _ => return None,
    };
    let offset = usize::from(tcp.get(12)? >> 4) * 4;
    if offset < 20 {
        return None;
    }
    Some(Segment {
        source: SocketAddr::new(source_ip, u16_at(tcp, 0)?),
        destination: SocketAddr::new(destination_ip, u16_at(tcp, 2)?),
        flags: *tcp.get(13)?,
        seq: u32_at(tcp, 4)?,
        ack: u32_at(tcp, 8)?,
        payload: u32::try_from(tcp_len.saturating_sub(offset)).unwrap_or(u32::MAX),
    })
}

/// The IP and TCP headers of an IPv4 segment with `flags`, no payload (tests
/// feed them to what reads the tap).
#[cfg(test)]
pub(crate) fn ipv4_packet(
    source: std::net::SocketAddrV4,
    destination: std::net::SocketAddrV4,
    flags: u8,
) -> Vec<u8> {
    let mut packet = vec![0u8; 40];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&40u16.to_be_bytes());
    packet[9] = TCP;
    packet[12..16].copy_from_slice(&source.ip().octets());
    packet[16..20].copy_from_slice(&destination.ip().octets());
    packet[20..22].copy_from_slice(&source.port().to_be_bytes());
    packet[22..24].copy_from_slice(&destination.port().to_be_bytes());
    packet[32] = 5 << 4;
    packet[33] = flags;
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP packet 198.18.0.10:40000 -> 198.18.0.11:7000 with `flags` and `payload` bytes.
    fn ipv4(flags: u8, payload: usize) -> Vec<u8> {
        let mut packet = ipv4_packet(
            std::net::SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 40000),
            std::net::SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 7000),
            flags,
        );
        packet.resize(packet.len() + payload, 0);
        let total = u16::try_from(packet.len()).unwrap_or(0);
        packet[2..4].copy_from_slice(&total.to_be_bytes());
        packet[24..28].copy_from_slice(&1000u32.to_be_bytes());
        packet[28..32].copy_from_slice(&2000u32.to_be_bytes());
        packet
    }

    #[test]
    fn a_data_segment_is_read() {
        let segment = parse(&ipv4(PSH | ACK, 100));
        assert_eq!(
            segment,
            Some(Segment {
                source: "198.18.0.10:40000"
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
                destination: "198.18.0.11:7000"
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
                flags: PSH | ACK,
                seq: 1000,
                ack: 2000,
                payload: 100,
            })
        );
        assert_eq!(segment.map(|s| s.flag_letters()), Some("P.".to_owned()));
    }

    #[test]
    fn flags_read_like_tcpdump() {
        let letters = |flags| parse(&ipv4(flags, 0)).map(|s| s.flag_letters());
        assert_eq!(letters(SYN), Some("S".to_owned()));
        assert_eq!(letters(SYN | ACK), Some("S.".to_owned()));
        assert_eq!(letters(FIN | ACK), Some("F.".to_owned()));
        assert_eq!(letters(RST), Some("R".to_owned()));
    }

    #[test]
    fn anything_cut_short_or_not_tcp_is_skipped_without_a_panic() {
        let whole = ipv4(ACK, 10);
        for cut in 0..whole.len() {
            let _ = parse(&whole[..cut]);
        }
        assert_eq!(parse(&whole[..30]), None);
        let mut udp = whole.clone();
        udp[9] = 17;
        assert_eq!(parse(&udp), None);
        assert_eq!(parse(&[0x60]), None);
        assert_eq!(parse(&[]), None);
    }
}
