//! What happened against what was expected: each step's outcome against
//! the expectation for its host's OS, and the observations for the report.

use super::state::{CaseRun, Counted, Outcome};
use super::wire::compare_wire;
use crate::report::{ObservationReport, WireReport};
use crate::scenario::{Action, Expect, NetworkFault, Scenario, Step};
use std::collections::{BTreeMap, HashMap};

pub(super) fn observations(run: &CaseRun<'_>, case: &Scenario) -> Vec<ObservationReport> {
    let mut reports: Vec<ObservationReport> = run
        .results
        .iter()
        .map(|(step, outcome)| {
            let role = step.role.clone().unwrap_or_default();
            let agent = run.agents.get(&role);
            let os = agent
                .map(|agent| agent.info.os_family.clone())
                .unwrap_or_default();
            ObservationReport {
                step: step.name.clone(),
                host: agent.map(|agent| agent.name.clone()).unwrap_or_default(),
                role,
                call: outcome.call.clone(),
                bytes: outcome.bytes,
                outcome: outcome.outcome.as_str().to_owned(),
                errno: outcome.errno,
                errno_name: outcome.errno_name.clone(),
                sigpipe: outcome.sigpipe,
                unread_bytes: outcome.unread_bytes,
                t_ns: outcome.start_ns,
                duration_ns: u64::try_from(outcome.end_ns - outcome.start_ns).unwrap_or(0),
                checked: step.expect.get(&os).map(|expect| {
                    format!("{os} ({})", expect.source.as_deref().unwrap_or("measured"))
                }),
                expected: step.expect.get(&os).map(Expect::summary),
                released_ns: run.released.get(step.name.as_str()).copied(),
                detail: outcome.detail.clone(),
                content_crc32: outcome.content_crc32,
                fault_sent_packets: outcome.counted.map(|counted| counted.sent),
                fault_dropped_packets: outcome.counted.map(|counted| counted.dropped),
                detection: None,
                clock_uncertainty_ns: agent
                    .map(|agent| agent.clock_uncertainty_ns(outcome.start_ns)),
            }
        })
        .collect();
    let order: HashMap<&str, usize> = case
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| (step.name.as_str(), index))
        .collect();
    reports.sort_by_key(|report| {
        order
            .get(report.step.as_str())
            .copied()
            .unwrap_or(usize::MAX)
    });
    reports
}

/// Check every step against the expectation for its host's OS: how many
/// steps were checked, and what differed.
pub(super) fn judge(run: &CaseRun<'_>) -> (usize, Vec<String>) {
    let by_name: BTreeMap<&str, &Outcome> = run
        .results
        .iter()
        .map(|(step, outcome)| (step.name.as_str(), outcome))
        .collect();
    let mut checked = 0;
    let mut differences = Vec::new();
    for (step, outcome) in &run.results {
        let Some(agent) = step.role.as_ref().and_then(|role| run.agents.get(role)) else {
            continue;
        };
        let os = &agent.info.os_family;
        let Some(expect) = step.expect.get(os) else {
            continue;
        };
        if run.unchecked.contains_key(&step.name) {
            continue;
        }
        let expect = &with_application_bytes(expect, &run.names.byte_rewrites);
        checked += 1;
        let mut found = compare(expect, outcome, &by_name);
        // Facing an application, an agent's FIN or RST depends on what the
        // application sent meanwhile (a close with its unread reply is a
        // RST): the scripted wire expectations hold only between agents.
        let facing_application = !run.targets.is_empty()
            && !step
                .role
                .as_ref()
                .is_some_and(|role| run.targets.contains_key(role));
        if run.capture.is_some() && expect.checks_wire() && !facing_application {
            // What this role's sockets sent, as its own host's capture saw it
            // (by address and port: on loopback every host is 127.0.0.1), or
            // as the others saw it when its capture was lost.
            let role = step.role.as_deref().unwrap_or_default();
            let mine = run.names.addresses_of(role);
            let own_capture = !run.wire_lost.contains(&agent.name);
            let sent: Vec<&WireReport> = run
                .wire
                .iter()
                .filter(|segment| (segment.host == agent.name) == own_capture)
                .filter(|segment| mine.contains(&segment.source))
                .collect();
            let window = outcome.start_ns..power_back_ns(run, step, outcome.start_ns);
            found.extend(compare_wire(expect, window, &sent));
        }
        for difference in found {
            differences.push(format!(
                "{} ({} on {os}): {difference}",
                step.name, outcome.call
            ));
        }
    }
    (checked, differences)
}

/// When what `step`'s host sends stops being its own: for a power cut,
/// the start of the next power-on of its role (a new kernel answers then);
/// for anything else, never.
fn power_back_ns(run: &CaseRun<'_>, step: &Step, start_ns: i64) -> i64 {
    if !matches!(step.action, Action::Network(NetworkFault::PowerCut { .. })) {
        return i64::MAX;
    }
    run.results
        .iter()
        .filter(|(later, outcome)| {
            later.role == step.role
                && matches!(later.action, Action::Network(NetworkFault::PowerOn))
                && outcome.start_ns >= start_ns
        })
        .map(|(_, outcome)| outcome.start_ns)
        .min()
        .unwrap_or(i64::MAX)
}

/// An expectation of "all of it" (the bytes a scenario's send meant) made
/// to mean all of what was sent when an application's messages replaced
/// the scenario's.
fn with_application_bytes(expect: &Expect, rewrites: &[(u64, u64)]) -> Expect {
    let rewrite = |bytes: Option<u64>| {
        bytes.map(|bytes| {
            rewrites
                .iter()
                .find(|(meant, _)| *meant == bytes)
                .map_or(bytes, |(_, sent)| *sent)
        })
    };
    Expect {
        bytes: rewrite(expect.bytes),
        wire_bytes_before_fin: rewrite(expect.wire_bytes_before_fin),
        ..expect.clone()
    }
}

fn crc_words(crc: Option<u32>) -> String {
    crc.map_or_else(|| "none".to_owned(), |crc| format!("{crc:08x}"))
}

/// What differs between the TCP counters' expected increase and theirs
/// between the `counters_since` step and this one.
fn counter_differences(
    expect: &Expect,
    outcome: &Outcome,
    steps: &BTreeMap<&str, &Outcome>,
) -> Vec<String> {
    if expect.counters_increase_min.is_empty() {
        return Vec::new();
    }
    let since = expect.counters_since.as_deref().unwrap_or_default();
    let before = steps.get(since).and_then(|step| step.tcp_counters.as_ref());
    let (Some(now), Some(before)) = (outcome.tcp_counters.as_ref(), before) else {
        return vec![format!(
            "no TCP counters to compare (this step and {since} must both be `counters`)"
        )];
    };
    expect
        .counters_increase_min
        .iter()
        .filter_map(|(name, &minimum)| {
            let read = |counters: &BTreeMap<String, u64>| counters.get(name).copied();
            let increase = read(now)?.saturating_sub(read(before)?);
            (increase < minimum).then(|| {
                format!("{name} rose by {increase} since {since}, expected at least {minimum}")
            })
        })
        .chain(
            expect
                .counters_increase_min
                .keys()
                .filter(|name| !now.contains_key(*name))
                .map(|name| format!("{name}: this host has no such counter")),
        )
        .collect()
}

/// What differs between what a degradation was expected to drop and what
/// the kernel counted.
fn counted_differences(expect: &Expect, counted: Option<Counted>) -> Vec<String> {
    let asks = expect.dropped_min.is_some()
        || expect.dropped_max.is_some()
        || expect.dropped_percent_min.is_some()
        || expect.dropped_percent_max.is_some();
    if !asks {
        return Vec::new();
    }
    let Some(counted) = counted else {
        return vec![
            "no counts to check (only a restore, or a heal where the firewall counts, has them)"
                .to_owned(),
        ];
    };
    let mut found = Vec::new();
    let (dropped, percent) = (counted.dropped, counted.dropped_percent());
    if let Some(min) = expect.dropped_min
        && dropped < min
    {
        found.push(format!(
            "{dropped} packets dropped, expected at least {min}"
        ));
    }
    if let Some(max) = expect.dropped_max
        && dropped > max
    {
        found.push(format!("{dropped} packets dropped, expected at most {max}"));
    }
    let met = counted.sent + counted.dropped;
    if let Some(min) = expect.dropped_percent_min
        && percent < min
    {
        found.push(format!(
            "{percent:.2} % of {met} packets dropped, expected at least {min} %"
        ));
    }
    if let Some(max) = expect.dropped_percent_max
        && percent > max
    {
        found.push(format!(
            "{percent:.2} % of {met} packets dropped, expected at most {max} %"
        ));
    }
    found
}

/// What is wrong with `within_ms` of `since`, if anything. It counts from
/// when that step's call returned: a fault is in force then, and its own
/// latency (a kill asked of systemd, which asks polkit) is the lab's, not
/// what the case measures.
fn within_since(
    expect: &Expect,
    outcome: &Outcome,
    steps: &BTreeMap<&str, &Outcome>,
) -> Option<String> {
    let (Some(within), Some(since)) = (expect.within_ms, &expect.since) else {
        return None;
    };
    let Some(reference) = steps.get(since.as_str()) else {
        // A later step the case never reached (it ended before).
        return Some(format!(
            "step {since} did not run, so the time since it cannot be judged"
        ));
    };
    let elapsed_ms = (outcome.end_ns - reference.end_ns) / 1_000_000;
    (elapsed_ms > i64::try_from(within).unwrap_or(i64::MAX))
        .then(|| format!("ended {elapsed_ms} ms after {since}, expected within {within} ms"))
}

/// What differs between an expectation and an outcome, in words.
fn compare(expect: &Expect, outcome: &Outcome, steps: &BTreeMap<&str, &Outcome>) -> Vec<String> {
    let mut found = how_it_ended(expect, outcome);
    found.extend(bytes_moved(expect, outcome, steps));
    found.extend(within_since(expect, outcome, steps));
    found.extend(same_bytes(expect, outcome, steps));
    found.extend(counted_differences(expect, outcome.counted));
    found.extend(counter_differences(expect, outcome, steps));
    found.extend(how_long_it_took(expect, outcome));
    found
}

/// The call's outcome, error and SIGPIPE against the expected ones.
fn how_it_ended(expect: &Expect, outcome: &Outcome) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(wanted) = expect.outcome
        && wanted != outcome.outcome
    {
        let errno = if outcome.errno_name.is_empty() {
            String::new()
        } else {
            format!(" {}", outcome.errno_name)
        };
        found.push(format!(
            "outcome {}{errno}, expected {}",
            outcome.outcome.as_str(),
            wanted.as_str()
        ));
    }
    if let Some(wanted) = &expect.error
        && wanted != &outcome.errno_name
    {
        let got = if outcome.errno_name.is_empty() {
            "none"
        } else {
            &outcome.errno_name
        };
        found.push(format!("error {got}, expected {wanted}"));
    }
    if let Some(wanted) = expect.sigpipe
        && wanted != outcome.sigpipe
    {
        found.push(format!("sigpipe {}, expected {wanted}", outcome.sigpipe));
    }
    found
}

/// The bytes the call moved (and left unread) against the expected counts.
fn bytes_moved(
    expect: &Expect,
    outcome: &Outcome,
    steps: &BTreeMap<&str, &Outcome>,
) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(wanted) = expect.bytes
        && wanted != outcome.bytes
    {
        found.push(format!("{} bytes, expected {wanted}", outcome.bytes));
    }
    if let Some(minimum) = expect.bytes_min
        && outcome.bytes < minimum
    {
        found.push(format!(
            "{} bytes, expected at least {minimum}",
            outcome.bytes
        ));
    }
    if let Some(other) = &expect.bytes_below
        && let Some(other_outcome) = steps.get(other.as_str())
        && outcome.bytes >= other_outcome.bytes
    {
        found.push(format!(
            "{} bytes, expected fewer than the {} of step {other}",
            outcome.bytes, other_outcome.bytes
        ));
    }
    if let Some(minimum) = expect.unread_bytes_min
        && outcome.unread_bytes < minimum
    {
        found.push(format!(
            "{} unread bytes, expected at least {minimum}",
            outcome.unread_bytes
        ));
    }
    found
}

/// Whether the call moved the very bytes another step did (same count,
/// same CRC-32).
fn same_bytes(
    expect: &Expect,
    outcome: &Outcome,
    steps: &BTreeMap<&str, &Outcome>,
) -> Option<String> {
    let other = expect.same_bytes_as.as_ref()?;
    let other_outcome = steps.get(other.as_str())?;
    let (mine, theirs) = (outcome.content_crc32, other_outcome.content_crc32);
    if outcome.bytes != other_outcome.bytes {
        Some(format!(
            "{} bytes, expected the {} of step {other}",
            outcome.bytes, other_outcome.bytes
        ))
    } else if mine.is_none() || mine != theirs {
        Some(format!(
            "other bytes than step {other}'s (CRC-32 {}, expected {})",
            crc_words(mine),
            crc_words(theirs)
        ))
    } else {
        None
    }
}

/// How long the call took against the expected bounds.
fn how_long_it_took(expect: &Expect, outcome: &Outcome) -> Vec<String> {
    let mut found = Vec::new();
    let took_ms = u64::try_from((outcome.end_ns - outcome.start_ns) / 1_000_000).unwrap_or(0);
    if let Some(min) = expect.took_ms_min
        && took_ms < min
    {
        found.push(format!("took {took_ms} ms, expected at least {min} ms"));
    }
    if let Some(max) = expect.took_ms_max
        && took_ms > max
    {
        found.push(format!("took {took_ms} ms, expected at most {max} ms"));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::ExpectedOutcome;

    fn outcome(kind: ExpectedOutcome, errno_name: &str, bytes: u64) -> Outcome {
        Outcome {
            call: "recv".to_owned(),
            outcome: kind,
            bytes,
            errno: 0,
            errno_name: errno_name.to_owned(),
            sigpipe: false,
            unread_bytes: 0,
            start_ns: 0,
            end_ns: 5_000_000,
            detail: None,
            content_crc32: None,
            counted: None,
            tcp_counters: None,
        }
    }

    #[test]
    fn the_same_bytes_are_as_many_with_the_same_crc() {
        let mut sent = outcome(ExpectedOutcome::Ok, "", 100);
        sent.content_crc32 = Some(0xdead_beef);
        let mut read = outcome(ExpectedOutcome::Eof, "", 100);
        read.content_crc32 = Some(0xdead_beef);
        let expect = Expect {
            same_bytes_as: Some("send".to_owned()),
            ..Expect::default()
        };
        let steps = BTreeMap::from([("send", &sent)]);
        assert!(compare(&expect, &read, &steps).is_empty());
        read.content_crc32 = Some(0xbeef_dead);
        assert_eq!(
            compare(&expect, &read, &steps),
            ["other bytes than step send's (CRC-32 beefdead, expected deadbeef)"]
        );
        read.bytes = 99;
        assert_eq!(
            compare(&expect, &read, &steps),
            ["99 bytes, expected the 100 of step send"]
        );
    }

    #[test]
    fn tcp_counters_must_rise_as_expected_between_two_readings() {
        let reading = |csum: u64| {
            let mut step = outcome(ExpectedOutcome::Ok, "", 0);
            step.tcp_counters = Some(BTreeMap::from([
                ("Tcp.InCsumErrors".to_owned(), csum),
                ("Tcp.InSegs".to_owned(), 10 + csum),
            ]));
            step
        };
        let before = reading(3);
        let steps = BTreeMap::from([("before", &before)]);
        let expect = Expect {
            counters_increase_min: BTreeMap::from([("Tcp.InCsumErrors".to_owned(), 1)]),
            counters_since: Some("before".to_owned()),
            ..Expect::default()
        };
        assert!(compare(&expect, &reading(5), &steps).is_empty());
        assert_eq!(
            compare(&expect, &reading(3), &steps),
            ["Tcp.InCsumErrors rose by 0 since before, expected at least 1"]
        );
        let unknown = Expect {
            counters_increase_min: BTreeMap::from([("Tcp.Nope".to_owned(), 1)]),
            ..expect.clone()
        };
        assert_eq!(
            compare(&unknown, &reading(5), &steps),
            ["Tcp.Nope: this host has no such counter"]
        );
        assert_eq!(
            compare(&expect, &outcome(ExpectedOutcome::Ok, "", 0), &steps),
            ["no TCP counters to compare (this step and before must both be `counters`)"]
        );
    }

    #[test]
    fn the_kernels_counts_are_held_to_the_expected_share() {
        let expect = Expect {
            dropped_min: Some(10),
            dropped_percent_min: Some(9.0),
            dropped_percent_max: Some(11.0),
            ..Expect::default()
        };
        let mut restore = outcome(ExpectedOutcome::Ok, "", 0);
        assert_eq!(
            compare(&expect, &restore, &BTreeMap::new()),
            ["no counts to check (only a restore, or a heal where the firewall counts, has them)"]
        );
        restore.counted = Some(Counted {
            sent: 900,
            dropped: 100,
        });
        assert!(compare(&expect, &restore, &BTreeMap::new()).is_empty());
        restore.counted = Some(Counted {
            sent: 80,
            dropped: 5,
        });
        assert_eq!(
            compare(&expect, &restore, &BTreeMap::new()),
            [
                "5 packets dropped, expected at least 10",
                "5.88 % of 85 packets dropped, expected at least 9 %"
            ]
        );
    }

    #[test]
    fn matching_outcomes_have_no_differences() {
        let expect = Expect {
            outcome: Some(ExpectedOutcome::Error),
            error: Some("ECONNRESET".to_owned()),
            bytes: Some(10),
            ..Expect::default()
        };
        let got = outcome(ExpectedOutcome::Error, "ECONNRESET", 10);
        assert!(compare(&expect, &got, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn each_difference_is_named() {
        let expect = Expect {
            outcome: Some(ExpectedOutcome::Error),
            error: Some("ECONNABORTED".to_owned()),
            bytes_min: Some(100),
            within_ms: Some(1),
            since: Some("kill".to_owned()),
            ..Expect::default()
        };
        // The kill took 4 ms; the recv ended 7 ms after it had returned.
        let kill = Outcome {
            end_ns: 4_000_000,
            ..outcome(ExpectedOutcome::Ok, "", 0)
        };
        let steps = BTreeMap::from([("kill", &kill)]);
        let got = Outcome {
            end_ns: 11_000_000,
            ..outcome(ExpectedOutcome::Eof, "", 10)
        };
        let found = compare(&expect, &got, &steps);
        assert_eq!(
            found,
            [
                "outcome eof, expected error",
                "error none, expected ECONNABORTED",
                "10 bytes, expected at least 100",
                "ended 7 ms after kill, expected within 1 ms"
            ]
        );
    }
}
