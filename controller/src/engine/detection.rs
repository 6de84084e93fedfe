//! How long after a FIN or RST reached a host the call waiting there
//! noticed it, and how far each time in a report can be trusted.
//!
//! Why: users compare these delays across OSes and kernels, so they must be
//! right to tens of microseconds and say how right. A delay measured on one
//! host (the kernel's stamp of the segment against the call's end, both on
//! that host's clock) involves no clock offset: its only error is the
//! stamping's. A time placed on the run's axis next to other hosts' carries
//! the host's clock-offset error (±RTT/2 of the sample it came from).

use crate::report::{
    ClockCheck, Detection, DetectionClocks, ObservationReport, SAME_HOST_UNCERTAINTY_NS, WireReport,
};
use std::collections::HashMap;
use std::net::IpAddr;

/// The calls that wait for what the peer sends.
const WAITING_CALLS: [&str; 3] = ["recv", "watch", "wait-end"];

/// A segment that came this long after a call ended did not end it.
const UNRELATED_AFTER_NS: i64 = 5_000_000;

/// Each observation of a call already waiting when the FIN (EOF) or RST
/// (ECONNRESET) that ended it reached its host gets its [`Detection`]: from
/// the first such segment the host's own capture saw arriving at its test
/// address after the call began, to the call's end (same host, one clock).
/// When that host captured nothing (`lost_captures`: it rebooted or lost
/// power meanwhile), from the segment leaving its sender instead, by the
/// sender's capture (cross-host: two clocks, and the time on the wire).
/// Negative would mean the call ended before the segment arrived, which
/// cannot be: a sign of a stamp taken late. `hosts` gives each host's test
/// address and clock error.
pub(super) fn annotate(
    observations: &mut [ObservationReport],
    wire: &[WireReport],
    hosts: &HashMap<String, (IpAddr, u64)>,
    lost_captures: &[String],
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
        let Some(&(ip, reader_error)) = hosts.get(&observation.host) else {
            continue;
        };
        let end = observation.t_ns + i64::try_from(observation.duration_ns).unwrap_or(i64::MAX);
        let same_host = !lost_captures.contains(&observation.host);
        let first = |seen_by: &dyn Fn(&WireReport) -> Option<u64>| {
            wire.iter()
                .filter(|segment| segment.flags.contains(flag) && arrives_at(segment, ip))
                .filter(|segment| {
                    segment.t_ns >= observation.t_ns && segment.t_ns <= end + UNRELATED_AFTER_NS
                })
                .filter_map(|segment| Some((segment.t_ns, seen_by(segment)?)))
                .min_by_key(|(t_ns, _)| *t_ns)
        };
        let found = if same_host {
            first(&|segment| (segment.host == observation.host).then_some(SAME_HOST_UNCERTAINTY_NS))
                .map(|found| (found, DetectionClocks::SameHost))
        } else {
            // Seen leaving by its sender (the host whose address it came from).
            first(&|segment| {
                let &(sender_ip, sender_error) = hosts.get(&segment.host)?;
                (segment.host != observation.host && leaves(segment, sender_ip))
                    .then_some(reader_error + sender_error + SAME_HOST_UNCERTAINTY_NS)
            })
            .map(|found| (found, DetectionClocks::CrossHost))
        };
        if let Some(((arrived, uncertainty_ns), clocks)) = found {
            observation.detection = Some(Detection {
                after_arrival_ns: end - arrived,
                uncertainty_ns,
                clocks,
            });
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
    // A few addresses, tens of thousands of segments in a flood: each
    // address is read once.
    let mut hosts_at: HashMap<&str, Option<(&str, u64)>> = HashMap::new();
    for segment in wire {
        for address in [segment.source.as_str(), segment.destination.as_str()] {
            hosts_at.entry(address).or_insert_with(|| {
                let ip = address.parse::<std::net::SocketAddr>().ok()?.ip();
                hosts
                    .iter()
                    .find(|(_, (test_ip, _))| *test_ip == ip)
                    .map(|(name, (_, error))| (name.as_str(), *error))
            });
        }
    }
    let host_at = |address: &str| hosts_at.get(address).copied().flatten();
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

/// Whether `segment` comes from `ip`.
fn leaves(segment: &WireReport, ip: IpAddr) -> bool {
    segment
        .source
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|source| source.ip() == ip)
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
        WireReport::seen(host, t_ns, "198.18.0.10:40000", destination, flags)
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
        annotate(&mut seen, &wire, &ips, &[]);
        let after = |observation: &ObservationReport| {
            observation.detection.map(|detection| {
                assert_eq!(detection.clocks, DetectionClocks::SameHost);
                assert_eq!(detection.uncertainty_ns, SAME_HOST_UNCERTAINTY_NS);
                detection.after_arrival_ns
            })
        };
        // The calls ended at 1 001 000 ns: 39 µs after the FIN arrived,
        // 50 µs after the RST.
        assert_eq!(after(&seen[0]), Some(39_000));
        assert_eq!(after(&seen[1]), Some(50_000));
        // Had only the late FIN been seen, the delay is negative, and said so.
        let mut late = [observation("recv", "eof", "", 1_000)];
        annotate(&mut late, &wire[2..3], &ips, &[]);
        assert_eq!(after(&late[0]), None, "leaving b");
        annotate(&mut late, &wire[5..], &ips, &[]);
        assert_eq!(after(&late[0]), Some(-39_000));
        assert_eq!(after(&seen[2]), None, "a send does not wait");
        assert_eq!(after(&seen[3]), None, "nothing ended it");
    }

    #[test]
    fn a_reader_whose_host_lost_its_capture_is_timed_from_the_senders() {
        let hosts = HashMap::from([
            ("a".to_owned(), (IpAddr::from([198, 18, 0, 10]), 30_000)),
            ("b".to_owned(), (IpAddr::from([198, 18, 0, 11]), 20_000)),
        ]);
        let wire = [
            // a's capture saw its FIN leave for b at 950 µs (run clock).
            segment("a", 950_000, "198.18.0.11:7000", "F."),
            // Something else's sighting on a third host: not the sender's.
            segment("c", 900_000, "198.18.0.11:7000", "F."),
        ];
        let mut seen = [observation("recv", "eof", "", 1_000)];
        annotate(&mut seen, &wire, &hosts, &["b".to_owned()]);
        assert_eq!(
            seen[0].detection,
            Some(Detection {
                after_arrival_ns: 51_000,
                uncertainty_ns: 50_000 + SAME_HOST_UNCERTAINTY_NS,
                clocks: DetectionClocks::CrossHost,
            })
        );
        // With its own capture, another host's sighting is not used.
        let mut own = [observation("recv", "eof", "", 1_000)];
        annotate(&mut own, &wire, &hosts, &[]);
        assert_eq!(own[0].detection, None);
    }
}
