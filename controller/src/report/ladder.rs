//! The ladder (sequence) diagram of one case, as coordinates: hosts as
//! vertical lanes, time flowing down, each socket call as a mark on its
//! host's lane, each SYN/FIN/RST (and a few data segments) as an arrow from
//! the sender's lane to the receiver's, and the delay between a FIN/RST
//! arriving and the call that noticed it as a bracket.
//!
//! Rows are moments, not a linear time scale: a case mixes microseconds and
//! 50 ms sleeps, so every distinct moment gets a row and the axis says its
//! time. Moments within [`SAME_MOMENT_NS`] share a row (two hosts at once).
//! This is a pure function so tests can check it without a browser.

use super::{ObservationReport, SAME_HOST_UNCERTAINTY_NS, WireReport};

/// Events closer than this are drawn on one row.
pub const SAME_MOMENT_NS: i64 = 50_000;
/// At most this many data segments are drawn; more are summed up in a note.
pub const MAX_DATA_ARROWS: usize = 8;
const TOP: f64 = 50.0;
const ROW: f64 = 26.0;
const LEFT: f64 = 110.0;
const LANE_GAP: f64 = 340.0;

/// A host lane.
#[derive(Clone, Debug, PartialEq)]
pub struct Lane {
    /// Its x.
    pub x: f64,
    /// "client · host-1".
    pub title: String,
}

/// What kind of thing a mark or an arrow is (its CSS class).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A call that succeeded.
    Ok,
    /// A call that ended in EOF.
    Eof,
    /// A call that failed or timed out.
    Error,
    /// A SYN.
    Syn,
    /// A FIN.
    Fin,
    /// A RST.
    Rst,
    /// Data.
    Data,
    /// An error or timeout the case expected: what it is about, not a
    /// failure (drawn apart from [`Kind::Error`], which differed or was
    /// not judged).
    ExpectedError,
}

impl Kind {
    /// CSS class name.
    pub fn class(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Eof => "eof",
            Self::Error => "error",
            Self::Syn => "syn",
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::Data => "data",
            Self::ExpectedError => "expected-error",
        }
    }
}

/// A call on a lane.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    /// Lane x.
    pub x: f64,
    /// Row y.
    pub y: f64,
    /// "recv → error ECONNRESET, 1000 B".
    pub text: String,
    /// Its kind.
    pub kind: Kind,
}

/// A segment from one lane to another.
#[derive(Clone, Debug, PartialEq)]
pub struct Arrow {
    /// From.
    pub x1: f64,
    /// From.
    pub y1: f64,
    /// To.
    pub x2: f64,
    /// To.
    pub y2: f64,
    /// "R." or "P. 1000 B".
    pub text: String,
    /// Its kind.
    pub kind: Kind,
    /// By the hosts' clocks it arrived before it left (by less than their
    /// error): drawn going forward in time all the same.
    pub skewed: bool,
}

/// How far a causally drawn arrow goes down, and how far arrows of one
/// exchange on the same rows are set apart.
const NUDGE: f64 = 8.0;

/// The time from a FIN/RST arriving to the call that noticed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Bracket {
    /// Just left of the lane.
    pub x: f64,
    /// The arrival.
    pub y1: f64,
    /// The detection.
    pub y2: f64,
    /// "+0.512 ms".
    pub text: String,
}

/// An axis tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    /// Row y.
    pub y: f64,
    /// "12.345 ms".
    pub text: String,
}

/// The whole diagram.
#[derive(Clone, Debug, PartialEq)]
pub struct Ladder {
    /// SVG width.
    pub width: f64,
    /// SVG height.
    pub height: f64,
    /// Lanes, in role order.
    pub lanes: Vec<Lane>,
    /// One per row.
    pub ticks: Vec<Tick>,
    /// Calls.
    pub marks: Vec<Mark>,
    /// Segments.
    pub arrows: Vec<Arrow>,
    /// Detection delays.
    pub brackets: Vec<Bracket>,
    /// What was left out.
    pub notes: Vec<String>,
}

/// A lane to draw: the host's name, its role, and its test address (to
/// tell who sent a segment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Agent name.
    pub name: String,
    /// Role in the case.
    pub role: String,
    /// Test address.
    pub ip: String,
}

fn kind_of_flags(flags: &str) -> Kind {
    if flags.contains('R') {
        Kind::Rst
    } else if flags.contains('F') {
        Kind::Fin
    } else if flags.contains('S') {
        Kind::Syn
    } else {
        Kind::Data
    }
}

/// The IP of an `ADDRESS:PORT` ("198.18.4.11:40112", "[fd00::1]:7000").
pub(crate) fn ip_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map_or(address, |(ip, _)| ip)
        .trim_matches(['[', ']'])
}

/// Lay out a case: `hosts` in role order, its observations and wire
/// segments, and its differences (which steps' outcomes differed).
pub fn layout(
    hosts: &[Host],
    observations: &[ObservationReport],
    wire: &[WireReport],
    differences: &[String],
) -> Ladder {
    let lanes = Lanes::new(hosts);
    let mut flights = pair_flights(&lanes, wire);
    let notes = thin_data(&mut flights);
    let rows = Rows::new(observations, &flights);
    let arrows = arrows(&lanes, &rows, &flights);
    let mut notes = notes;
    if arrows.iter().any(|arrow| arrow.skewed) {
        notes.push(
            "* arrived before it left by the hosts' clocks, which differ by less than their error: drawn forward in time".to_owned(),
        );
    }
    Ladder {
        width: lanes.x(hosts.len().saturating_sub(1)) + 260.0,
        height: TOP + ROW * rows.moments.len().max(1) as f64 + 20.0,
        lanes: hosts
            .iter()
            .enumerate()
            .map(|(index, host)| Lane {
                x: lanes.x(index),
                title: format!("{} · {}", host.role, host.name),
            })
            .collect(),
        ticks: rows.ticks(),
        marks: marks(&lanes, &rows, observations, differences),
        arrows,
        brackets: brackets(&lanes, &rows, observations, &flights),
        notes,
    }
}

/// The hosts' lanes: where each is drawn, and which lane a segment's
/// address belongs to.
struct Lanes<'h> {
    hosts: &'h [Host],
    /// Sender/receiver lanes by address only when addresses tell hosts
    /// apart (on loopback every host is 127.0.0.1).
    distinct: bool,
}

impl<'h> Lanes<'h> {
    fn new(hosts: &'h [Host]) -> Self {
        let mut ips: Vec<&str> = hosts.iter().map(|host| host.ip.as_str()).collect();
        ips.sort_unstable();
        ips.dedup();
        Self {
            hosts,
            distinct: ips.len() == hosts.len(),
        }
    }

    fn x(&self, index: usize) -> f64 {
        LEFT + 80.0 + LANE_GAP * index as f64
    }

    fn of_host(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|host| host.name == name)
    }

    /// The lane of the role an observation's step played, else of the host
    /// that acted (an application's lane is named after the application,
    /// while its SIGSTOP is done by the agent on its host).
    fn of(&self, observation: &ObservationReport) -> Option<usize> {
        self.hosts
            .iter()
            .position(|host| !observation.role.is_empty() && host.role == observation.role)
            .or_else(|| self.of_host(&observation.host))
    }

    fn of_ip(&self, ip: &str) -> Option<usize> {
        if self.distinct {
            self.hosts.iter().position(|host| host.ip == ip)
        } else {
            None
        }
    }
}

/// One segment's flight: as sent (seen by the sender's host) and as
/// received (seen by the receiver's host), from one lane to another.
struct Flight<'a> {
    sent: Option<&'a WireReport>,
    received: Option<&'a WireReport>,
    from: Option<usize>,
    to: Option<usize>,
}

impl Flight<'_> {
    fn segment(&self) -> Option<&WireReport> {
        self.sent.or(self.received)
    }

    fn is_data(&self) -> bool {
        self.segment()
            .is_some_and(|segment| kind_of_flags(&segment.flags) == Kind::Data)
    }

    fn payload(&self) -> u32 {
        self.segment().map_or(0, |segment| segment.payload)
    }
}

fn same_segment(a: &WireReport, b: &WireReport) -> bool {
    a.source == b.source
        && a.destination == b.destination
        && a.flags == b.flags
        && a.seq == b.seq
        && a.ack == b.ack
        && a.payload == b.payload
}

/// Pair each segment as sent with itself as received, whatever their
/// order: clock offsets are known only to a fraction of a millisecond.
fn pair_flights<'a>(lanes: &Lanes<'_>, wire: &'a [WireReport]) -> Vec<Flight<'a>> {
    let mut flights: Vec<Flight<'a>> = Vec::new();
    for segment in wire {
        let from = lanes.of_ip(ip_of(&segment.source));
        let to = lanes.of_ip(ip_of(&segment.destination));
        let seen_at = lanes.of_host(&segment.host);
        let received = seen_at.is_some() && seen_at == to && from.is_some();
        let sent = seen_at.is_some() && seen_at == from && to.is_some();
        if !(received || sent) {
            // Lanes cannot be told apart: show it where it was seen.
            flights.push(Flight {
                sent: Some(segment),
                received: None,
                from: seen_at,
                to: seen_at,
            });
            continue;
        }
        let twin = flights.iter_mut().find(|flight| {
            let (other, open) = if received {
                (flight.sent, flight.received.is_none())
            } else {
                (flight.received, flight.sent.is_none())
            };
            open && other.is_some_and(|other| same_segment(other, segment))
        });
        match (twin, received) {
            (Some(flight), true) => flight.received = Some(segment),
            (Some(flight), false) => flight.sent = Some(segment),
            (None, received) => flights.push(Flight {
                sent: (!received).then_some(segment),
                received: received.then_some(segment),
                from,
                to,
            }),
        }
    }
    flights
}

/// Every SYN/FIN/RST is drawn; data only when there is little of it. Says
/// what was left out.
fn thin_data(flights: &mut Vec<Flight<'_>>) -> Vec<String> {
    let data_flights = flights
        .iter()
        .filter(|flight| flight.is_data() && flight.payload() > 0)
        .count();
    if data_flights <= MAX_DATA_ARROWS * 2 {
        flights.retain(|flight| !flight.is_data() || flight.payload() > 0);
        return Vec::new();
    }
    let bytes: u64 = flights
        .iter()
        .filter(|flight| flight.is_data())
        .map(|flight| u64::from(flight.payload()))
        .sum();
    flights.retain(|flight| !flight.is_data());
    vec![format!(
        "{data_flights} data segments ({bytes} B) not drawn"
    )]
}

/// The diagram's rows: one per moment that something happened (moments
/// closer than [`SAME_MOMENT_NS`] share a row).
struct Rows {
    moments: Vec<i64>,
}

impl Rows {
    fn new(observations: &[ObservationReport], flights: &[Flight<'_>]) -> Self {
        let mut all: Vec<i64> = observations.iter().map(end_of).collect();
        for flight in flights {
            all.extend(flight.sent.map(|segment| segment.t_ns));
            all.extend(flight.received.map(|segment| segment.t_ns));
        }
        all.sort_unstable();
        let mut moments: Vec<i64> = Vec::new();
        for moment in all {
            if moments
                .last()
                .is_none_or(|last| moment - last > SAME_MOMENT_NS)
            {
                moments.push(moment);
            }
        }
        Self { moments }
    }

    /// The y of the row a moment falls in.
    fn y(&self, t: i64) -> f64 {
        let index = self
            .moments
            .partition_point(|row| *row <= t)
            .saturating_sub(1);
        TOP + ROW * index as f64
    }

    fn ticks(&self) -> Vec<Tick> {
        let origin = self.moments.first().copied().unwrap_or(0);
        self.moments
            .iter()
            .map(|row| Tick {
                y: self.y(*row),
                text: format!("{:.3} ms", (row - origin) as f64 / 1e6),
            })
            .collect()
    }
}

/// When an observed call ended.
fn end_of(observation: &ObservationReport) -> i64 {
    observation.t_ns + i64::try_from(observation.duration_ns).unwrap_or(0)
}

/// Each call as a mark where it ended, on its role's lane. An error the
/// case expected is not drawn as one that differed.
fn marks(
    lanes: &Lanes<'_>,
    rows: &Rows,
    observations: &[ObservationReport],
    differences: &[String],
) -> Vec<Mark> {
    observations
        .iter()
        .filter_map(|observation| {
            let lane = lanes.of(observation)?;
            let differed = differences
                .iter()
                .any(|difference| difference.starts_with(&format!("{} (", observation.step)));
            let kind = match observation.outcome.as_str() {
                "ok" => Kind::Ok,
                "eof" => Kind::Eof,
                _ if observation.checked.is_some() && !differed => Kind::ExpectedError,
                _ => Kind::Error,
            };
            let errno = if observation.errno_name.is_empty() {
                String::new()
            } else {
                format!(" {}", observation.errno_name)
            };
            let bytes = if observation.bytes > 0 {
                format!(", {} B", observation.bytes)
            } else {
                String::new()
            };
            Some(Mark {
                x: lanes.x(lane),
                y: rows.y(end_of(observation)),
                text: format!(
                    "{} → {}{errno}{bytes}",
                    observation.call, observation.outcome
                ),
                kind,
            })
        })
        .collect()
}

/// Each flight as an arrow from when it was sent to when it arrived. An
/// arrival that the clocks put before the departure is drawn forward all
/// the same (the clocks differ by less than their error, the segment did
/// not travel back in time); arrows of one exchange on the same rows (a SYN
/// and its SYN-ACK) are set apart.
fn arrows(lanes: &Lanes<'_>, rows: &Rows, flights: &[Flight<'_>]) -> Vec<Arrow> {
    let mut arrows: Vec<Arrow> = Vec::new();
    for flight in flights {
        let (Some(segment), Some(from), Some(to)) = (flight.segment(), flight.from, flight.to)
        else {
            continue;
        };
        let y1 = rows.y(flight.sent.unwrap_or(segment).t_ns);
        let arrived = flight.received.map_or(y1, |received| rows.y(received.t_ns));
        let skewed = arrived < y1;
        let y2 = if skewed { y1 + NUDGE } else { arrived };
        let text = if segment.payload > 0 {
            format!("{} {} B", segment.flags, segment.payload)
        } else {
            segment.flags.clone()
        };
        let (x1, x2) = (lanes.x(from), lanes.x(to));
        let same_place = arrows
            .iter()
            .filter(|other| {
                (other.y1 - y1).abs() < NUDGE
                    && (other.x1 - x1).abs().min((other.x1 - x2).abs()) < 1.0
                    && (other.x2 - x2).abs().min((other.x2 - x1).abs()) < 1.0
            })
            .count() as f64;
        arrows.push(Arrow {
            x1,
            y1: y1 + same_place * NUDGE,
            x2,
            y2: y2 + same_place * NUDGE,
            text,
            kind: kind_of_flags(&segment.flags),
            skewed,
        });
    }
    arrows
}

/// "52 µs" under a millisecond, "1.234 ms" from there.
fn short_duration(ns: i64) -> String {
    if ns.abs() < 1_000_000 {
        format!("{} µs", ns / 1_000)
    } else {
        format!("{:.3} ms", ns as f64 / 1e6)
    }
}

/// Detection: a FIN/RST arriving at a host, then the call there that ended
/// with EOF/error.
fn brackets(
    lanes: &Lanes<'_>,
    rows: &Rows,
    observations: &[ObservationReport],
    flights: &[Flight<'_>],
) -> Vec<Bracket> {
    let mut brackets = Vec::new();
    for observation in observations {
        let wanted = match observation.outcome.as_str() {
            "eof" => 'F',
            "error" if observation.errno_name == "ECONNRESET" => 'R',
            _ => continue,
        };
        let Some(lane) = lanes.of(observation) else {
            continue;
        };
        let end = end_of(observation);
        // Measured for a call that was waiting: the engine's own figure,
        // with how far it can be off (rows of other hosts may carry more).
        if let Some(detection) = observation.detection {
            let arrived = end - detection.after_arrival_ns;
            brackets.push(Bracket {
                x: lanes.x(lane) - 14.0,
                y1: rows.y(arrived.min(end)),
                y2: rows.y(end),
                text: format!(
                    "{}{} ±{}",
                    if detection.after_arrival_ns < 0 {
                        ""
                    } else {
                        "+"
                    },
                    short_duration(detection.after_arrival_ns),
                    short_duration(i64::try_from(detection.uncertainty_ns).unwrap_or(i64::MAX))
                ),
            });
            continue;
        }
        let arrival = flights
            .iter()
            .filter(|flight| flight.to == Some(lane) && flight.from != Some(lane))
            .filter_map(|flight| flight.received)
            .filter(|segment| {
                segment.flags.contains(wanted) && segment.t_ns <= end + SAME_MOMENT_NS
            })
            .map(|segment| segment.t_ns)
            .max();
        // Only a call that was waiting when the segment arrived detected
        // it; one made later (after a sleep of the scenario's) found it
        // waiting, and the time between is the scenario's, not the stack's.
        if let Some(arrived) = arrival
            && observation.t_ns <= arrived
        {
            brackets.push(Bracket {
                x: lanes.x(lane) - 14.0,
                y1: rows.y(arrived),
                y2: rows.y(end),
                // The arrival is the reader's own host's capture: one clock.
                text: format!(
                    "+{} ±{}",
                    short_duration((end - arrived).max(0)),
                    short_duration(i64::try_from(SAME_HOST_UNCERTAINTY_NS).unwrap_or(i64::MAX))
                ),
            });
        }
    }
    brackets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, role: &str, ip: &str) -> Host {
        Host {
            name: name.to_owned(),
            role: role.to_owned(),
            ip: ip.to_owned(),
        }
    }

    fn observation(
        host: &str,
        call: &str,
        outcome: &str,
        errno: &str,
        t_ns: i64,
    ) -> ObservationReport {
        ObservationReport {
            step: call.to_owned(),
            host: host.to_owned(),
            role: String::new(),
            call: call.to_owned(),
            bytes: 0,
            outcome: outcome.to_owned(),
            errno: 0,
            errno_name: errno.to_owned(),
            sigpipe: false,
            unread_bytes: 0,
            t_ns,
            duration_ns: 0,
            checked: None,
            expected: None,
            released_ns: None,
            detail: None,
            content_crc32: None,
            fault_sent_packets: None,
            fault_dropped_packets: None,
            detection: None,
            clock_uncertainty_ns: None,
        }
    }

    fn segment(
        seen_by: &str,
        source: &str,
        destination: &str,
        flags: &str,
        t_ns: i64,
    ) -> WireReport {
        WireReport::seen(seen_by, t_ns, source, destination, flags)
    }

    #[test]
    fn a_waiting_reads_bracket_is_the_measured_delay_with_its_uncertainty() {
        // The reader's clock is 300 µs behind the server's by the offsets:
        // the arrow would go back in time, the bracket must not.
        let mut read = observation("a", "recv", "eof", "", 1_052_000);
        read.detection = Some(crate::report::Detection {
            after_arrival_ns: 52_000,
            uncertainty_ns: 1_000,
            clocks: crate::report::DetectionClocks::SameHost,
        });
        let wire = [
            segment(
                "b",
                "198.18.1.11:7000",
                "198.18.1.10:40000",
                "F.",
                1_300_000,
            ),
            segment(
                "a",
                "198.18.1.11:7000",
                "198.18.1.10:40000",
                "F.",
                1_000_000,
            ),
        ];
        let ladder = layout(&two_hosts(), &[read], &wire, &[]);
        assert_eq!(ladder.brackets.len(), 1);
        let bracket = &ladder.brackets[0];
        assert_eq!(bracket.text, "+52 µs ±1 µs");
        assert!(bracket.y2 > bracket.y1, "from the arrival down to the end");
    }

    #[test]
    fn an_applications_process_faults_are_marked_on_its_lane() {
        // The application plays the server; the agent on its host stops it.
        let hosts = vec![
            host("a", "client", "198.18.1.10"),
            host("echo (tcp://198.18.1.11:7000)", "server", "198.18.1.11"),
        ];
        let mut stop = observation("b", "stop", "ok", "", 1_000_000);
        stop.role = "server".to_owned();
        let mut resume = observation("b", "continue", "ok", "", 2_000_000);
        resume.role = "server".to_owned();
        let ladder = layout(&hosts, &[stop, resume], &[], &[]);
        let server_lane = ladder.lanes[1].x;
        let marked: Vec<&str> = ladder
            .marks
            .iter()
            .filter(|mark| mark.x == server_lane)
            .map(|mark| mark.text.as_str())
            .collect();
        assert_eq!(marked, ["stop → ok", "continue → ok"]);
    }

    fn two_hosts() -> Vec<Host> {
        vec![
            host("a", "client", "198.18.1.10"),
            host("b", "server", "198.18.1.11"),
        ]
    }

    #[test]
    fn an_abort_is_a_red_arrow_from_the_server_and_a_bracket_to_the_read_that_saw_it() {
        // The read waits from 0.9 ms; the RST arrives at 1.1 ms; it ends at 1.6 ms.
        let mut read = observation("a", "recv", "error", "ECONNRESET", 900_000);
        read.duration_ns = 700_000;
        let observations = [observation("b", "close", "ok", "", 1_000_000), read];
        let wire = [
            segment(
                "b",
                "198.18.1.11:7000",
                "198.18.1.10:40000",
                "R.",
                1_010_000,
            ),
            segment(
                "a",
                "198.18.1.11:7000",
                "198.18.1.10:40000",
                "R.",
                1_100_000,
            ),
        ];
        let ladder = layout(&two_hosts(), &observations, &wire, &[]);
        assert_eq!(ladder.lanes.len(), 2);
        assert_eq!(ladder.arrows.len(), 1, "the two sightings are one flight");
        let reset = &ladder.arrows[0];
        assert_eq!((reset.kind, reset.text.as_str()), (Kind::Rst, "R."));
        assert!(
            reset.x1 > reset.x2,
            "from the server lane (right) to the client lane (left)"
        );
        assert!(reset.y2 > reset.y1, "it arrives after it leaves");
        assert_eq!(ladder.brackets.len(), 1);
        assert_eq!(ladder.brackets[0].text, "+500 µs ±1 µs");
        assert!(
            ladder
                .marks
                .iter()
                .any(|mark| mark.text == "recv → error ECONNRESET" && mark.kind == Kind::Error)
        );
        // The same read judged and found as expected is no failure.
        let mut judged = observations.clone();
        judged[1].checked = Some("linux (measured)".to_owned());
        let expected = layout(&two_hosts(), &judged, &wire, &[]);
        assert!(
            expected
                .marks
                .iter()
                .any(|mark| mark.text == "recv → error ECONNRESET"
                    && mark.kind == Kind::ExpectedError)
        );
        let differed = ["recv (recv on linux): error ECONNRESET, expected none".to_owned()];
        let differs = layout(&two_hosts(), &judged, &wire, &differed);
        assert!(differs.marks.iter().any(|mark| mark.kind == Kind::Error));
        // A read made after the RST arrived (C3: the scenario sleeps first)
        // did not detect it: no bracket.
        let mut late = observations.clone();
        late[1].t_ns = 1_600_000;
        late[1].duration_ns = 0;
        assert!(layout(&two_hosts(), &late, &wire, &[]).brackets.is_empty());
        // Rows are in time order and labelled from the first moment.
        assert_eq!(
            ladder.ticks.first().map(|tick| tick.text.as_str()),
            Some("0.000 ms")
        );
        assert!(ladder.ticks.windows(2).all(|pair| pair[1].y > pair[0].y));
    }

    #[test]
    fn a_segment_received_before_it_was_sent_by_the_clocks_is_still_one_arrow() {
        let wire = [
            segment("b", "198.18.1.10:40000", "198.18.1.11:7000", "S", 1_000_000),
            segment("a", "198.18.1.10:40000", "198.18.1.11:7000", "S", 1_200_000),
        ];
        let ladder = layout(&two_hosts(), &[], &wire, &[]);
        assert_eq!(ladder.arrows.len(), 1);
        assert!(
            ladder.arrows[0].x1 < ladder.arrows[0].x2,
            "from the client lane to the server lane"
        );
    }

    #[test]
    fn an_arrival_the_clocks_put_first_is_drawn_forward_in_time() {
        // Sent by the client at 1.2 ms by its clock, seen by the server at
        // 1.1 ms by its own: 100 µs "back in time", within the clocks' error.
        let wire = [
            segment("a", "198.18.1.10:40000", "198.18.1.11:7000", "S", 1_200_000),
            segment("b", "198.18.1.10:40000", "198.18.1.11:7000", "S", 1_100_000),
        ];
        let ladder = layout(&two_hosts(), &[], &wire, &[]);
        assert_eq!(ladder.arrows.len(), 1);
        let arrow = &ladder.arrows[0];
        assert!(arrow.y2 > arrow.y1, "{arrow:?}");
        assert!(arrow.skewed);
    }

    #[test]
    fn a_syn_and_its_syn_ack_on_the_same_rows_are_drawn_apart() {
        let wire = [
            segment("a", "198.18.1.10:40000", "198.18.1.11:7000", "S", 1_000_000),
            segment("b", "198.18.1.10:40000", "198.18.1.11:7000", "S", 1_010_000),
            segment(
                "b",
                "198.18.1.11:7000",
                "198.18.1.10:40000",
                "S.",
                1_020_000,
            ),
            segment(
                "a",
                "198.18.1.11:7000",
                "198.18.1.10:40000",
                "S.",
                1_030_000,
            ),
        ];
        let ladder = layout(&two_hosts(), &[], &wire, &[]);
        assert_eq!(ladder.arrows.len(), 2);
        let (syn, syn_ack) = (&ladder.arrows[0], &ladder.arrows[1]);
        assert!(syn.x1 < syn.x2 && syn_ack.x1 > syn_ack.x2);
        assert!(
            (syn_ack.y1 - syn.y1).abs() >= NUDGE,
            "not on top of each other: {syn:?} {syn_ack:?}"
        );
        assert!(!syn.skewed && !syn_ack.skewed);
    }

    #[test]
    fn simultaneous_events_on_two_hosts_share_a_row() {
        let observations = [
            observation("a", "send", "ok", "", 5_000_000),
            observation("b", "send", "ok", "", 5_020_000),
            observation("b", "recv", "eof", "", 9_000_000),
        ];
        let ladder = layout(&two_hosts(), &observations, &[], &[]);
        assert_eq!(ladder.ticks.len(), 2);
        assert_eq!(ladder.marks[0].y, ladder.marks[1].y);
        assert!(ladder.marks[2].y > ladder.marks[0].y);
    }

    #[test]
    fn without_wire_evidence_there_are_marks_only() {
        let observations = [observation("a", "connect", "error", "ECONNREFUSED", 1)];
        let ladder = layout(&two_hosts(), &observations, &[], &[]);
        assert!(ladder.arrows.is_empty() && ladder.brackets.is_empty());
        assert_eq!(ladder.marks.len(), 1);
        assert!(ladder.height > 0.0 && ladder.width > ladder.lanes[1].x);
    }

    #[test]
    fn many_data_segments_are_summed_up_not_drawn() {
        let mut wire = Vec::new();
        for index in 0..40 {
            let mut data = segment(
                "a",
                "198.18.1.10:40000",
                "198.18.1.11:7000",
                ".",
                index * 1_000,
            );
            data.payload = 1448;
            wire.push(data);
        }
        wire.push(segment(
            "a",
            "198.18.1.10:40000",
            "198.18.1.11:7000",
            "F.",
            50_000_000,
        ));
        let ladder = layout(&two_hosts(), &[], &wire, &[]);
        assert_eq!(ladder.arrows.len(), 1);
        assert_eq!(ladder.arrows[0].kind, Kind::Fin);
        assert_eq!(ladder.notes, ["40 data segments (57920 B) not drawn"]);
    }
}
