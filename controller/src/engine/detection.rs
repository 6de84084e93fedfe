//! How long after a FIN or RST reached a host the call waiting there
//! noticed it, and how far each time in a report can be trusted.
//!
//! Why: users compare these delays across OSes and kernels, so they must be
//! right to tens of microseconds and say how right. A delay measured on one
//! host (the kernel's stamp of the segment against the call's end, both on
//! that host's clock) involves no clock offset: its only error is the
//! stamping's. A time placed on the run's axis next to other hosts' carries
//! the host's clock-offset error (±RTT/2 of the sample it came from).

use crate::report::{ClockCheck, ObservationReport, WireReport};
use std::collections::HashMap;
use std::net::IpAddr;

/// The calls that wait for what the peer sends.
const WAITING_CALLS: [&str; 3] = ["recv", "watch", "wait-end"];

/// A segment that came this long after a call ended did not end it.
const UNRELATED_AFTER_NS: i64 = 5_000_000;

/// Each observation of a call already waiting when the FIN (EOF) or RST
/// (ECONNRESET) that ended it reached its host gets the delay from that
/// arrival to the call's end, in ns (`detected_after_arrival_ns`): the first
/// such segment the host's own capture saw arriving at its test address
/// after the call began. Negative would mean the call ended before the
/// segment arrived, which cannot be: a sign of a stamp taken late. `hosts`
/// gives each host's test address (and its clock error, unused here).
pub(super) fn annotate(
    observations: &mut [ObservationReport],
    wire: &[WireReport],
    hosts: &HashMap<String, (IpAddr, u64)>,
) {
    for observation in observations {
        let flag = match (
            observation.outcome.as_str(),
            observation.errno_name.as_str(),
        ) {
            ("eof", _) => 'F',
            ("error", "ECONNRESET") => 'R',
            _ => continue,
        };
        if !WAITING_CALLS.contains(&observation.call.as_str()) {
            continue;
        }
        let Some((ip, _)) = hosts.get(&observation.host) else {
            continue;
        };
        let end = observation.t_ns + i64::try_from(observation.duration_ns).unwrap_or(i64::MAX);
        let arrival = wire
            .iter()
            .filter(|segment| segment.host == observation.host && segment.flags.contains(flag))
            .filter(|segment| arrives_at(segment, *ip))
            .map(|segment| segment.t_ns)
            .filter(|&t_ns| t_ns >= observation.t_ns && t_ns <= end + UNRELATED_AFTER_NS)
            .min();
        if let Some(arrived) = arrival {
            observation.detected_after_arrival_ns = Some(end - arrived);
        }
    }
}

/// Check the hosts' clock offsets against causality: each segment seen
/// leaving its sender (the host whose test address is its source, by that
/// host's capture) and arriving at its receiver (by the receiver's) must
/// arrive after it left, once both times are on the run clock. `hosts`
/// gives each host's test address and stated clock error (ns). `None` when
/// no segment was seen on both ends (one host, or no captures).
pub(super) fn clock_check(
    wire: &[WireReport],
    hosts: &HashMap<String, (IpAddr, u64)>,
) -> Option<ClockCheck> {
    let host_at = |address: &str| {
        let ip = address.parse::<std::net::SocketAddr>().ok()?.ip();
        hosts
            .iter()
            .find(|(_, (test_ip, _))| *test_ip == ip)
            .map(|(name, (_, error))| (name.as_str(), *error))
    };
    // Each segment's first sighting by its sender's capture.
    let mut sent: HashMap<SegmentKey<'_>, (i64, u64)> = HashMap::new();
    for segment in wire {
        if let Some((sender, error)) = host_at(&segment.source)
            && segment.host == sender
        {
            sent.entry(SegmentKey::of(segment))
                .or_insert((segment.t_ns, error));
        }
    }
    let mut check: Option<ClockCheck> = None;
    for segment in wire {
        let Some((receiver, receiver_error)) = host_at(&segment.destination) else {
            continue;
        };
        let Some((sender, _)) = host_at(&segment.source) else {
            continue;
        };
        if segment.host != receiver || receiver == sender {
            continue;
        }
        let Some((sent_ns, sender_error)) = sent.get(&SegmentKey::of(segment)) else {
            continue;
        };
        let violation = sent_ns - segment.t_ns;
        let checked = check.get_or_insert(ClockCheck {
            segments: 0,
            worst_violation_ns: i64::MIN,
            uncertainty_ns: 0,
        });
        checked.segments += 1;
        if violation > checked.worst_violation_ns {
            checked.worst_violation_ns = violation;
            checked.uncertainty_ns = sender_error + receiver_error;
        }
    }
    check
}

/// What makes a segment the same segment on both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SegmentKey<'a> {
    source: &'a str,
    destination: &'a str,
    flags: &'a str,
    seq: u32,
    ack: u32,
    payload: u32,
}

impl<'a> SegmentKey<'a> {
    fn of(segment: &'a WireReport) -> Self {
        Self {
            source: &segment.source,
            destination: &segment.destination,
            flags: &segment.flags,
            seq: segment.seq,
            ack: segment.ack,
            payload: segment.payload,
        }
    }
}

/// Whether `segment` is addressed to `ip`.
fn arrives_at(segment: &WireReport, ip: IpAddr) -> bool {
    segment
        .destination
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|destination| destination.ip() == ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(call: &str, outcome: &str, errno_name: &str, t_ns: i64) -> ObservationReport {
        ObservationReport {
            step: "reads".to_owned(),
            host: "b".to_owned(),
            call: call.to_owned(),
            outcome: outcome.to_owned(),
            errno_name: errno_name.to_owned(),
            t_ns,
            duration_ns: 1_000_000,
            ..ObservationReport::default()
        }
    }

    fn segment(host: &str, t_ns: i64, destination: &str, flags: &str) -> WireReport {
        WireReport {
            host: host.to_owned(),
            t_ns,
            source: "198.18.0.10:40000".to_owned(),
            destination: destination.to_owned(),
            flags: flags.to_owned(),
            seq: 1,
            ack: 1,
            payload: 0,
        }
    }

    #[test]
    fn a_segment_must_arrive_after_it_left_by_the_offsets_error_at_most() {
        let hosts = HashMap::from([
            ("a".to_owned(), (IpAddr::from([198, 18, 0, 10]), 30_000)),
            ("b".to_owned(), (IpAddr::from([198, 18, 0, 11]), 20_000)),
        ]);
        let mut wire = vec![
            // a's SYN leaves at 1 000 µs and reaches b at 1 050 µs.
            segment("a", 1_000_000, "198.18.0.11:7000", "S"),
            segment("b", 1_050_000, "198.18.0.11:7000", "S"),
            // b's FIN: by the clocks it arrived 40 µs before it left.
            WireReport {
                source: "198.18.0.11:7000".to_owned(),
                destination: "198.18.0.10:40000".to_owned(),
                ..segment("b", 2_000_000, "", "F.")
            },
            WireReport {
                source: "198.18.0.11:7000".to_owned(),
                destination: "198.18.0.10:40000".to_owned(),
                ..segment("a", 1_960_000, "", "F.")
            },
        ];
        let check = clock_check(&wire, &hosts);
        assert_eq!(
            check,
            Some(ClockCheck {
                segments: 2,
                worst_violation_ns: 40_000,
                uncertainty_ns: 50_000
            })
        );
        assert!(check.is_some_and(|check| check.within_uncertainty()));
        // Seen by one end only: nothing to check.
        wire.retain(|segment| segment.host == "a");
        assert_eq!(clock_check(&wire, &hosts), None);
    }

    #[test]
    fn the_delay_runs_from_the_arrival_the_reader_waited_for() {
        let ips = HashMap::from([("b".to_owned(), (IpAddr::from([198, 18, 0, 11]), 0))]);
        let wire = [
            // Before the read began: not what ended it.
            segment("b", 500, "198.18.0.11:7000", "F."),
            // Seen by the other host's capture: another clock.
            segment("a", 1_200_000, "198.18.0.11:7000", "F."),
            // Leaving b: not an arrival.
            segment("b", 1_000_000, "198.18.0.10:40000", "F."),
            segment("b", 962_000, "198.18.0.11:7000", "F."),
            segment("b", 951_000, "198.18.0.11:7000", "R"),
            // After the call's end (a stamp taken late would look so).
            segment("b", 1_040_000, "198.18.0.11:7000", "F."),
        ];
        let mut seen = [
            observation("recv", "eof", "", 1_000),
            observation("recv", "error", "ECONNRESET", 1_000),
            observation("send", "error", "ECONNRESET", 1_000),
            observation("recv", "ok", "", 1_000),
        ];
        annotate(&mut seen, &wire, &ips);
        // The calls ended at 1 001 000 ns: 39 µs after the FIN arrived,
        // 50 µs after the RST.
        assert_eq!(seen[0].detected_after_arrival_ns, Some(39_000));
        assert_eq!(seen[1].detected_after_arrival_ns, Some(50_000));
        // Had only the late FIN been seen, the delay is negative, and said so.
        let mut late = [observation("recv", "eof", "", 1_000)];
        annotate(&mut late, &wire[2..3], &ips);
        assert_eq!(late[0].detected_after_arrival_ns, None, "leaving b");
        annotate(&mut late, &wire[5..], &ips);
        assert_eq!(late[0].detected_after_arrival_ns, Some(-39_000));
        assert_eq!(
            seen[2].detected_after_arrival_ns, None,
            "a send does not wait"
        );
        assert_eq!(seen[3].detected_after_arrival_ns, None, "nothing ended it");
    }
}
