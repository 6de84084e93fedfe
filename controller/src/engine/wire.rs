//! Wire evidence of a case: a capture on every agent before the first step,
//! stopped on all of them at once after the last; the case's own segments
//! kept on the run clock, and the wire expectations judged against them.

use super::handles::AgentHandle;
use super::state::{CLEANUP_TIMEOUT, CaseRun};
use crate::report::WireReport;
use crate::scenario::Expect;
use faultlab_proto::Capability;
use faultlab_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::JoinSet;
use tracing::Span;

/// Start a capture on every agent of the case, if all of them can capture,
/// on all of them at once.
pub(super) async fn start_wire(run: &mut CaseRun<'_>) {
    let agents = run.hosts();
    if agents.is_empty() || !agents.iter().all(|agent| agent.offers(Capability::Capture)) {
        return;
    }
    let id = format!("{}-{:x}", run.case_id, run.clock.now_ns());
    // Each agent keeps its own sockets' segments (the case's connections,
    // known to it before their first segment, and not yet to us), and the
    // applications' (whose sockets are no agent's).
    let ports: Vec<u32> = run
        .targets
        .values()
        .map(|target| u32::from(target.address.port()))
        .collect();
    let mut starting = JoinSet::new();
    for agent in agents {
        let request = pb::StartCaptureRequest {
            id: id.clone(),
            ports: ports.clone(),
        };
        starting.spawn(async move {
            let started = agent.client.clone().start_capture(request).await.is_ok();
            (agent, started)
        });
    }
    let mut started = Vec::new();
    let mut all = true;
    while let Some(joined) = starting.join_next().await {
        match joined {
            Ok((agent, true)) => started.push(agent),
            _ => all = false,
        }
    }
    if all {
        run.capture = Some(id);
    } else {
        // No partial evidence: stop what started and go without.
        stop_captures(&id, started).await;
    }
}

/// Stop the captures and keep the segments of the case's own connections
/// (its listeners' ports), each on the run clock.
pub(super) async fn collect_wire(run: &mut CaseRun<'_>) {
    let Some(id) = run.capture.clone() else {
        return;
    };
    let ports: Vec<u16> = run
        .names
        .listeners
        .values()
        .map(|listener| listener.address.port())
        .collect();
    let agents = run.hosts();
    // A host without power has lost its capture with its memory.
    let dark: Vec<&str> = run
        .names
        .undo
        .powered_off()
        .filter_map(|role| run.agents.get(role))
        .map(|agent| agent.name.as_str())
        .collect();
    let (dark, agents): (Vec<_>, Vec<_>) = agents
        .into_iter()
        .partition(|agent| dark.contains(&agent.name.as_str()));
    run.wire_lost = dark.iter().map(|agent| agent.name.clone()).collect();
    let mut seen = Vec::new();
    for (agent, stopped) in stop_captures(&id, agents).await {
        // A host that rebooted or was power cycled forgot the capture.
        let Some(reply) = stopped else {
            run.wire_lost.push(agent.name.clone());
            continue;
        };
        let missed = reply.dropped + reply.lost;
        if missed > 0 {
            tracing::warn!(host = %agent.name, missed, "the capture missed packets");
            run.wire_missed.insert(agent.name.clone(), missed);
        }
        seen.extend(segments_of_ports(&agent, reply.segments, &ports));
    }
    seen.sort_by_key(|segment| segment.t_ns);
    trace_wire(run, &seen);
    run.wire = seen;
}

/// Stop the capture `id` on every one of `agents` at once (each stop
/// waits for its capture to drain); each agent's reply, none when it did
/// not answer.
async fn stop_captures(
    id: &str,
    agents: Vec<Arc<AgentHandle>>,
) -> Vec<(Arc<AgentHandle>, Option<pb::StopCaptureReply>)> {
    let mut stopping = JoinSet::new();
    for agent in agents {
        let id = id.to_owned();
        stopping.spawn(async move {
            let mut client = agent.client.clone();
            let stopped = tokio::time::timeout(
                CLEANUP_TIMEOUT,
                client.stop_capture(pb::StopCaptureRequest { id }),
            )
            .await;
            let reply = match stopped {
                Ok(Ok(reply)) => Some(reply.into_inner()),
                _ => None,
            };
            (agent, reply)
        });
    }
    let mut stopped = Vec::new();
    while let Some(joined) = stopping.join_next().await {
        if let Ok(one) = joined {
            stopped.push(one);
        }
    }
    stopped
}

/// The segments `agent` captured to or from one of `ports`, on the run clock.
fn segments_of_ports(
    agent: &AgentHandle,
    segments: Vec<pb::WireSegment>,
    ports: &[u16],
) -> Vec<WireReport> {
    let port_of = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
    };
    // The offset read once, not per segment (a flood is tens of thousands).
    let run_ns = agent.to_run_clock();
    segments
        .into_iter()
        .filter(|segment| {
            [&segment.source, &segment.destination]
                .iter()
                .any(|address| port_of(address).is_some_and(|port| ports.contains(&port)))
        })
        .map(|segment| WireReport {
            host: agent.name.clone(),
            t_ns: run_ns(segment.mono_ns),
            source: segment.source,
            destination: segment.destination,
            flags: segment.flags,
            seq: segment.seq,
            ack: segment.ack,
            payload: segment.payload,
        })
        .collect()
}

/// Put each FIN and RST the captures saw on the case's span (the current
/// one), at the moment it was seen, naming the step that had last started
/// then: in a trace viewer the packet sits next to the call that caused it.
fn trace_wire(run: &CaseRun<'_>, seen: &[WireReport]) {
    if !faultlab_telemetry::enabled() {
        return;
    }
    let span = Span::current();
    for segment in seen {
        let name = if segment.flags.contains('R') {
            "RST on the wire"
        } else if segment.flags.contains('F') {
            "FIN on the wire"
        } else {
            continue;
        };
        let after_step = run
            .results
            .iter()
            .filter(|(_, outcome)| outcome.start_ns <= segment.t_ns)
            .max_by_key(|(_, outcome)| outcome.start_ns)
            .map_or_else(String::new, |(step, _)| step.name.clone());
        faultlab_telemetry::event_at(
            &span,
            name,
            run.clock.wall(segment.t_ns),
            vec![
                faultlab_telemetry::Attribute::new("faultlab.wire.host", segment.host.clone()),
                faultlab_telemetry::Attribute::new("faultlab.wire.source", segment.source.clone()),
                faultlab_telemetry::Attribute::new(
                    "faultlab.wire.destination",
                    segment.destination.clone(),
                ),
                faultlab_telemetry::Attribute::new("faultlab.wire.flags", segment.flags.clone()),
                faultlab_telemetry::Attribute::new("faultlab.wire.seq", i64::from(segment.seq)),
                faultlab_telemetry::Attribute::new("faultlab.wire.after_step", after_step),
            ],
        );
    }
}

/// What differs between the wire expectations and the segments the role's
/// host sent (`sent`, in time order); `window` runs from the step's start
/// (to when its host's power came back, for a power cut: the new kernel's
/// first words are not the cut host's).
pub(super) fn compare_wire(
    expect: &Expect,
    window: std::ops::Range<i64>,
    sent: &[&WireReport],
) -> Vec<String> {
    let mut found = Vec::new();
    let since: Vec<&WireReport> = sent
        .iter()
        .copied()
        .filter(|segment| window.contains(&segment.t_ns))
        .collect();
    for (wanted, flag, name) in [(expect.wire_rst, 'R', "RST"), (expect.wire_fin, 'F', "FIN")] {
        if let Some(wanted) = wanted {
            let seen = since.iter().any(|segment| segment.flags.contains(flag));
            if seen != wanted {
                found.push(if seen {
                    format!("wire: this host sent a {name}, expected none")
                } else {
                    format!("wire: this host sent no {name}, expected one")
                });
            }
        }
    }
    if let Some(wanted) = expect.wire_bytes_before_fin {
        let fin = sent.iter().position(|segment| segment.flags.contains('F'));
        let before = sequence_span(&sent[..fin.map_or(sent.len(), |at| at + 1)]);
        match fin {
            None => found.push("wire: no FIN from this host".to_owned()),
            Some(_) if before != wanted => found.push(format!(
                "wire: {before} payload bytes before the FIN, expected {wanted}"
            )),
            Some(_) => {}
        }
    }
    if let Some(wanted) = expect.wire_silent {
        let silent = since.is_empty();
        if silent != wanted {
            found.push(if silent {
                "wire: this host sent nothing, expected some segment".to_owned()
            } else {
                format!(
                    "wire: this host sent {} segment(s) (first: {} at {} ms), expected nothing",
                    since.len(),
                    since[0].flags,
                    since[0].t_ns / 1_000_000
                )
            });
        }
    }
    if let Some(wanted) = expect.wire_retransmits {
        let again = retransmits(&since);
        if again != wanted {
            found.push(if again {
                "wire: this host sent a segment again (its bytes, SYN or FIN), expected no retransmission".to_owned()
            } else {
                "wire: this host sent no segment twice (bytes, SYN or FIN), expected a retransmission".to_owned()
            });
        }
    }
    found
}

/// Whether some of `segments`' sequence space (in time order) was sent
/// again: a segment of a flow starts below the highest sequence number
/// that flow has already covered. Payload bytes count, and so do SYN and
/// FIN (one number each): a SYN sent again is a connection attempt that
/// got no answer. A segment lost before the capture saw it (a degradation
/// drops it in the sender's own kernel) shows as the hole its
/// retransmission fills, late.
fn retransmits(segments: &[&WireReport]) -> bool {
    let mut covered: HashMap<(&str, &str), (u32, i64)> = HashMap::new();
    segments
        .iter()
        .map(|segment| (segment, sequence_length(segment)))
        .filter(|(_, length)| *length > 0)
        .any(|(segment, length)| {
            let flow = (segment.source.as_str(), segment.destination.as_str());
            let (first, end) = covered.entry(flow).or_insert((segment.seq, i64::MIN));
            // Offsets from the flow's first segment seen, modulo 2^32:
            // negative for one that fills a hole before it.
            let start = i64::from(segment.seq.wrapping_sub(*first) as i32);
            let again = start < *end;
            *end = (*end).max(start + length);
            again
        })
}

/// How much sequence space a segment takes: its payload, plus one for a
/// SYN and one for a FIN.
fn sequence_length(segment: &WireReport) -> i64 {
    let flag = |name: char| i64::from(segment.flags.contains(name));
    i64::from(segment.payload) + flag('S') + flag('F')
}

/// How many distinct payload bytes `segments` (one sender's, in time
/// order) carried: the span of sequence numbers their payloads cover. A
/// retransmission (a slow or lossy link) covers bytes already counted, so
/// summing payloads would count them twice.
fn sequence_span(segments: &[&WireReport]) -> u64 {
    let data: Vec<&&WireReport> = segments
        .iter()
        .filter(|segment| segment.payload > 0)
        .collect();
    let Some(first) = data.first() else {
        return 0;
    };
    // Offsets from the first data byte seen, modulo 2^32 like the
    // sequence numbers themselves.
    let offset = |segment: &WireReport| u64::from(segment.seq.wrapping_sub(first.seq));
    let start = data
        .iter()
        .map(|segment| offset(segment))
        .min()
        .unwrap_or(0);
    let end = data
        .iter()
        .map(|segment| offset(segment) + u64::from(segment.payload))
        .max()
        .unwrap_or(0);
    end - start
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seq: u32, payload: u32) -> WireReport {
        WireReport {
            host: "a".to_owned(),
            t_ns: 0,
            source: "198.18.1.10:40000".to_owned(),
            destination: "198.18.1.11:7000".to_owned(),
            flags: ".".to_owned(),
            seq,
            ack: 0,
            payload,
        }
    }

    #[test]
    fn a_segment_sent_again_is_a_retransmission_a_new_one_is_not() {
        let (first, second, again) = (data(1_000, 100), data(1_100, 100), data(1_000, 100));
        assert!(!retransmits(&[&first, &second]));
        assert!(retransmits(&[&first, &second, &again]));
        // Another flow's sequence numbers are its own.
        let mut other = data(1_050, 100);
        other.source = "198.18.1.10:40001".to_owned();
        assert!(!retransmits(&[&first, &second, &other]));
        // Keepalive probes carry nothing.
        assert!(!retransmits(&[&first, &data(1_099, 0)]));
        // The first segment never reached the capture (dropped by the
        // sender's own kernel); its retransmission comes after the next.
        assert!(retransmits(&[&second, &first]));
        // Sequence numbers wrap.
        assert!(retransmits(&[
            &data(u32::MAX - 50, 100),
            &data(49, 100),
            &data(u32::MAX - 50, 100)
        ]));
        assert!(!retransmits(&[&data(u32::MAX - 50, 100), &data(49, 100)]));
    }

    #[test]
    fn a_syn_or_fin_sent_again_is_a_retransmission() {
        let flagged = |flags: &str, seq: u32, payload: u32| WireReport {
            flags: flags.to_owned(),
            ..data(seq, payload)
        };
        let syn = flagged("S", 999, 0);
        // The SYN takes one number: the first data byte is the next.
        assert!(!retransmits(&[&syn, &data(1_000, 100)]));
        assert!(retransmits(&[&syn, &syn]));
        let fin = flagged("F.", 1_100, 0);
        assert!(!retransmits(&[&data(1_000, 100), &fin]));
        assert!(retransmits(&[&data(1_000, 100), &fin, &fin]));
        // A FIN carrying the last bytes, sent again.
        let last = flagged("FP.", 1_000, 100);
        assert!(retransmits(&[&last, &last]));
    }

    #[test]
    fn a_power_cut_host_is_silent_only_until_its_power_is_back() {
        let expect = Expect {
            wire_silent: Some(true),
            ..Expect::default()
        };
        let mut before = data(1_000, 0);
        before.t_ns = 100;
        let mut rst_after_boot = data(1_000, 0);
        rst_after_boot.t_ns = 9_000;
        rst_after_boot.flags = "R".to_owned();
        let sent = [&before, &rst_after_boot];
        // Cut at 1 000 ns, back at 8 000 ns: nothing in between.
        assert!(compare_wire(&expect, 1_000..8_000, &sent).is_empty());
        // Without the power-on bound the new kernel's RST counts.
        let found = compare_wire(&expect, 1_000..i64::MAX, &sent);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("expected nothing"), "{found:?}");
    }

    #[test]
    fn a_retransmitted_segment_is_counted_once() {
        let sent = [
            data(1000, 1448),
            data(2448, 1448),
            data(2448, 1448),
            data(3896, 100),
        ];
        let sent: Vec<&WireReport> = sent.iter().collect();
        assert_eq!(sequence_span(&sent), 2996);
        // Resent as one bigger segment: still the same bytes.
        let coalesced = [data(1000, 1448), data(1000, 2896), data(3896, 100)];
        let coalesced: Vec<&WireReport> = coalesced.iter().collect();
        assert_eq!(sequence_span(&coalesced), 2996);
        // Sequence numbers that wrap around 2^32.
        let wrapped = [data(u32::MAX - 99, 100), data(0, 50)];
        let wrapped: Vec<&WireReport> = wrapped.iter().collect();
        assert_eq!(sequence_span(&wrapped), 150);
        assert_eq!(sequence_span(&[]), 0);
    }
}
