//! The run as text for a terminal: one line per case, the differences under
//! it, then the case × OS-pair matrix and the totals.

use super::{CaseReport, RunReport, Verdict, WireReport};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

fn verdict_cell(case: &CaseReport) -> String {
    case.verdict.as_str().to_owned()
}

/// How much of each case's capture the text report lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WireView {
    /// None.
    #[default]
    Hidden,
    /// All of a short capture; the ends of a long one, with counts.
    Summary,
    /// Every segment.
    All,
}

/// The full text report; with `wire`, a summary of each case's captured
/// segments too.
pub fn render(report: &RunReport, wire: bool) -> String {
    render_with(
        report,
        if wire {
            WireView::Summary
        } else {
            WireView::Hidden
        },
    )
}

/// The full text report, with as much of the captures as `wire` says.
pub fn render_with(report: &RunReport, wire: WireView) -> String {
    let mut out = header(report);
    // The HOSTS column is as wide as its longest entry (an application's
    // address can be long), so the columns after it stay aligned.
    let hosts_width = report
        .cases
        .iter()
        .map(|case| hosts_of(case).chars().count())
        .max()
        .unwrap_or(0)
        .max(18);
    let _ = writeln!(
        out,
        "{:<4} {:<28} {:<hosts_width$} {:<11} {:>8}  details",
        "ID", "CASE", "HOSTS", "VERDICT", "TIME"
    );
    for case in &report.cases {
        case_lines(&mut out, case, wire, hosts_width);
    }
    // With one OS pair and one binding per case, the matrix would repeat
    // the lines above.
    let cells = report
        .cases
        .iter()
        .map(|case| (case.id.as_str(), case.os_pair.as_str()))
        .collect::<BTreeSet<_>>();
    let pairs = cells.iter().map(|(_, pair)| *pair).collect::<BTreeSet<_>>();
    if pairs.len() > 1 || cells.len() < report.cases.len() {
        let _ = writeln!(out);
        out.push_str(&matrix(report));
    }
    let _ = writeln!(out, "\n{}", report.summary.counts());
    if let Some(line) = clocks_line(report) {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// The run's worst causality violation on the wire after clock-offset
/// correction, against the offsets' stated error (None without segments
/// seen on two hosts). Beyond it, what that means for the verdicts and
/// what to do.
fn clocks_line(report: &RunReport) -> Option<String> {
    let checks: Vec<(&str, &crate::report::ClockCheck)> = report
        .cases
        .iter()
        .filter_map(|case| Some((case.id.as_str(), case.clock_check.as_ref()?)))
        .collect();
    let (_, worst) = checks
        .iter()
        .max_by_key(|(_, check)| check.worst_violation_ns)?;
    let segments: u64 = checks.iter().map(|(_, check)| check.segments).sum();
    let error = worst.uncertainty_ns as f64 / 1_000.0;
    let by = worst.worst_violation_ns as f64 / 1_000.0;
    if worst.worst_violation_ns <= 0 {
        return Some(format!(
            "clocks: {segments} segments seen on both ends all arrived after they left by the hosts' offsets (the closest by {:.1} µs; offsets' stated error ±{error:.1} µs)",
            -by
        ));
    }
    let mut line = format!(
        "clocks: {segments} segments seen on both ends; by the hosts' offsets the worst arrived {by:.1} µs before it left: {} their stated error ±{error:.1} µs",
        if worst.within_uncertainty() {
            "within"
        } else {
            "BEYOND"
        }
    );
    if !worst.within_uncertainty() {
        let mut beyond: Vec<&str> = checks
            .iter()
            .filter(|(_, check)| !check.within_uncertainty())
            .map(|(id, _)| *id)
            .collect();
        beyond.dedup();
        line.push_str(&format!(
            "\n  what it means: in {} the times compared across hosts (arrows between lanes, a detection timed by another host's capture, a `within_ms` counted from another host's step) can be off by {by:.1} µs, not ±{error:.1} µs; outcomes, errnos, byte counts and times on one host are not affected\n  what to do: a busy machine delayed one side of a clock sample more than the other; run those cases again with fewer at once (--parallel 1) or on quieter hosts",
            beyond.join(", ")
        ));
    }
    Some(line)
}

/// The run, its trace, and its agents.
fn header(report: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "run {}  ({})", report.run_id, report.suite);
    if let Some(trace) = &report.trace_id {
        let _ = writeln!(
            out,
            "  trace {trace}{}",
            report
                .trace_url
                .as_ref()
                .map_or_else(String::new, |url| format!("  {url}"))
        );
    }
    for agent in &report.agents {
        let _ = writeln!(
            out,
            "  agent {:<10} {:<22} {} {}, kernel {}, clock known to ±{} us{}",
            agent.name,
            agent.address,
            agent.hostname,
            agent.os_version,
            agent.kernel_version,
            agent.clock_rtt_ns / 2_000,
            agent
                .clock_drift_ppb
                .map_or_else(String::new, |ppb| format!(
                    ", drifting {:+.2} ppm (±{:.2})",
                    ppb as f64 / 1_000.0,
                    agent.clock_drift_error_ppb.unwrap_or(0) as f64 / 1_000.0
                ))
        );
    }
    let _ = writeln!(out);
    out
}

/// A case's line, its further differences, and with `wire` its segments.
fn case_lines(out: &mut String, case: &CaseReport, wire: WireView, hosts_width: usize) {
    let detail = case
        .reason
        .clone()
        .or_else(|| case.differences.first().cloned())
        .unwrap_or_else(|| {
            let line = summary_line(case);
            [probe_line(case), release_line(case)]
                .into_iter()
                .flatten()
                .fold(line, |line, more| {
                    if line.is_empty() {
                        more
                    } else {
                        format!("{line}; {more}")
                    }
                })
        });
    let _ = writeln!(
        out,
        "{:<4} {:<28} {:<hosts_width$} {:<11} {:>6}ms  {}",
        printable(&case.id),
        printable(&case.name),
        hosts_of(case),
        verdict_cell(case),
        case.duration_ms,
        printable(&detail)
    );
    let indent = 4 + 1 + 28 + 1 + hosts_width + 1 + 11 + 1 + 8 + 2;
    for more in case.differences.iter().skip(1) {
        let _ = writeln!(out, "{:>indent$}{}", "", printable(more));
    }
    for (host, missed) in &case.wire_missed {
        let _ = writeln!(
            out,
            "{:>indent$}wire evidence incomplete: {host}'s capture missed {missed} packets",
            ""
        );
    }
    for leftover in &case.left_in_place {
        let _ = writeln!(out, "{:>indent$}NOT HEALED: {}", "", printable(leftover));
    }
    for (host, logs) in &case.host_logs {
        let _ = writeln!(out, "{:>indent$}{host}'s logs:", "");
        for line in logs.lines() {
            let _ = writeln!(out, "{:>indent$}  {}", "", printable(line));
        }
    }
    wire_lines(out, case, wire);
}

/// Text from outside (a scenario, an agent, a guest's console) as it is
/// safe to print: control characters (escape codes) written as `\u{1b}`.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// Segments shown at each end of a long capture in a summary.
const WIRE_ENDS: usize = 8;

/// A case's captured segments: all of them, or for a long capture (a
/// flood) the first and last few around a count of what is left out.
fn wire_lines(out: &mut String, case: &CaseReport, wire: WireView) {
    let segments = &case.wire;
    let shown: Vec<&WireReport> = match wire {
        WireView::Hidden => return,
        WireView::All => segments.iter().collect(),
        WireView::Summary if segments.len() <= 3 * WIRE_ENDS => segments.iter().collect(),
        WireView::Summary => {
            segments[..WIRE_ENDS]
                .iter()
                .for_each(|segment| segment_line(out, segment));
            let middle = &segments[WIRE_ENDS..segments.len() - WIRE_ENDS];
            let count = |flag: char| middle.iter().filter(|s| s.flags.contains(flag)).count();
            let bytes: u64 = middle
                .iter()
                .map(|segment| u64::from(segment.payload))
                .sum();
            let _ = writeln!(
                out,
                "       ... {} segments not shown ({} with data, {bytes} B; {} SYN, {} FIN, {} RST): --wire=all shows them",
                middle.len(),
                middle.iter().filter(|segment| segment.payload > 0).count(),
                count('S'),
                count('F'),
                count('R'),
            );
            segments[segments.len() - WIRE_ENDS..].iter().collect()
        }
    };
    for segment in shown {
        segment_line(out, segment);
    }
}

fn segment_line(out: &mut String, segment: &WireReport) {
    let _ = writeln!(
        out,
        "       {:>10.3} ms  {:<10} {:>21} > {:<21} {:<4} {} B",
        segment.t_ns as f64 / 1e6,
        segment.host,
        segment.source,
        segment.destination,
        segment.flags,
        segment.payload
    );
}

/// Who played the case, in role order.
fn hosts_of(case: &CaseReport) -> String {
    case.roles
        .values()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("→")
}

/// What the decisive observation said, e.g. "recv: error ECONNRESET after 1000 B".
fn summary_line(case: &CaseReport) -> String {
    case.telling_observation()
        .map_or_else(String::new, |observation| {
            let what = if observation.errno_name.is_empty() {
                observation.outcome.clone()
            } else {
                format!("{} {}", observation.outcome, observation.errno_name)
            };
            format!(
                "{} {}: {what}, {} B",
                observation.role, observation.call, observation.bytes
            )
        })
}

/// The probes in a few words, e.g. "probe: server answered in 4 ms".
fn probe_line(case: &CaseReport) -> Option<String> {
    let parts: Vec<String> = case
        .probes
        .iter()
        .map(|probe| match (probe.healthy, probe.connect_ms) {
            (true, Some(ms)) => format!("probe: {} answered in {ms} ms", probe.role),
            _ => format!("probe: {} did not answer", probe.role),
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// How closely steps released together kept their moment, e.g.
/// "released: 2 steps, latest +3 µs".
fn release_line(case: &CaseReport) -> Option<String> {
    let late: Vec<i64> = case
        .observations
        .iter()
        .filter_map(|observation| {
            observation
                .released_ns
                .map(|moment| observation.t_ns - moment)
        })
        .collect();
    let latest = late.iter().copied().max()?;
    Some(format!(
        "released: {} steps, latest {:+} µs",
        late.len(),
        latest / 1_000
    ))
}

/// Cases as rows, OS pairs as columns.
pub fn matrix(report: &RunReport) -> String {
    let pairs: BTreeSet<&str> = report
        .cases
        .iter()
        .map(|case| case.os_pair.as_str())
        .collect();
    let mut rows: BTreeMap<&str, BTreeMap<&str, Vec<Verdict>>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for case in &report.cases {
        if !order.contains(&case.id.as_str()) {
            order.push(&case.id);
        }
        rows.entry(&case.id)
            .or_default()
            .entry(&case.os_pair)
            .or_default()
            .push(case.verdict);
    }
    let mut out = String::new();
    let _ = write!(out, "{:<6}", "CASE");
    for pair in &pairs {
        let _ = write!(out, " {pair:<16}");
    }
    let _ = writeln!(out);
    for id in order {
        let _ = write!(out, "{id:<6}");
        for pair in &pairs {
            let cell = rows.get(id).and_then(|row| row.get(pair)).map_or_else(
                || "-".to_owned(),
                |verdicts| worst(verdicts).as_str().to_owned(),
            );
            let _ = write!(out, " {cell:<16}");
        }
        let _ = writeln!(out);
    }
    out
}

/// The verdict that matters most when a cell holds several.
fn worst(verdicts: &[Verdict]) -> Verdict {
    verdicts
        .iter()
        .copied()
        .max_by_key(|verdict| match verdict {
            Verdict::Expected => 0,
            Verdict::Skipped => 1,
            Verdict::Differs => 2,
            Verdict::Timeout => 3,
            Verdict::AgentLost => 4,
            Verdict::Error => 5,
        })
        .unwrap_or(Verdict::Skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_codes_from_outside_are_printed_as_text() {
        assert_eq!(printable("plain"), "plain");
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        let mut lost = case("S1", "linux/linux", 0);
        lost.reason = Some("agent said \u{1b}]0;owned\u{7}".to_owned());
        let mut out = String::new();
        case_lines(&mut out, &lost, WireView::Hidden, 11);
        assert!(!out.contains('\u{1b}'), "{out:?}");
        assert!(out.contains("\\u{1b}]0;owned\\u{7}"), "{out:?}");
    }

    fn case(id: &str, os_pair: &str, segments: u32) -> CaseReport {
        let wire = (0..segments)
            .map(|n| WireReport {
                host: "host-1".to_owned(),
                t_ns: i64::from(n) * 1000,
                source: "198.18.1.10:40000".to_owned(),
                destination: "198.18.1.11:7000".to_owned(),
                flags: if n + 1 == segments { "F." } else { "." }.to_owned(),
                seq: n,
                ack: 0,
                payload: 1448,
            })
            .collect();
        CaseReport {
            id: id.to_owned(),
            name: "flood".to_owned(),
            title: "A flood".to_owned(),
            roles: [("client".to_owned(), "host-1".to_owned())].into(),
            os_pair: os_pair.to_owned(),
            verdict: Verdict::Expected,
            wire_evidence: true,
            wire,
            duration_ms: 1,
            ..CaseReport::default()
        }
    }

    fn run(cases: Vec<CaseReport>) -> RunReport {
        RunReport {
            schema: super::super::SCHEMA.to_owned(),
            run_id: "r".to_owned(),
            started_unix_ms: 0,
            finished_unix_ms: 0,
            suite: "s".to_owned(),
            agents: Vec::new(),
            summary: super::super::Summary::of(&cases),
            cases,
            trace_id: None,
            trace_url: None,
        }
    }

    #[test]
    fn clocks_beyond_their_error_say_what_it_means_and_what_to_do() {
        let checked = |id: &str, violation_ns: i64| {
            let mut case = case(id, "linux/linux", 0);
            case.clock_check = Some(crate::report::ClockCheck {
                segments: 10,
                worst_violation_ns: violation_ns,
                uncertainty_ns: 241_900,
            });
            case
        };
        let within = render(&run(vec![checked("S2", 100_000)]), false);
        assert!(within.contains("within their stated error"), "{within}");
        assert!(!within.contains("what to do"), "{within}");
        let beyond = render(
            &run(vec![
                checked("S2", 100_000),
                checked("C3", 1_009_800),
                checked("A1", 300_000),
            ]),
            false,
        );
        assert!(
            beyond.contains("1009.8 µs before it left: BEYOND their stated error ±241.9 µs"),
            "{beyond}"
        );
        assert!(
            beyond.contains("what it means: in C3, A1 the times compared across hosts"),
            "{beyond}"
        );
        assert!(beyond.contains("what to do: "), "{beyond}");
    }

    #[test]
    fn the_details_show_the_step_that_carries_the_cases_point() {
        let observed = |role: &str, call: &str, outcome: &str, t_ns: i64, duration_ns: u64| {
            super::super::ObservationReport {
                step: format!("{role}-{call}"),
                role: role.to_owned(),
                call: call.to_owned(),
                outcome: outcome.to_owned(),
                t_ns,
                duration_ns,
                checked: Some("linux (measured)".to_owned()),
                ..Default::default()
            }
        };
        // A read blocked since 0 that ends with EOF at 5 ms, after a close
        // checked later in the scenario; a restore checked last of all.
        let mut reading = case("W1", "linux/linux", 0);
        reading.observations = vec![
            observed("server", "recv", "eof", 0, 5_000_000),
            observed("client", "close", "ok", 1_000_000, 10_000),
            observed("server", "restore", "ok", 6_000_000, 1_000),
        ];
        let table = render(&run(vec![reading]), false);
        assert!(table.contains("server recv: eof, 0 B"), "{table}");
        // With only a fault checked, it is the one shown.
        let mut fault_only = case("W2", "linux/linux", 0);
        fault_only.observations = vec![observed("server", "restore", "ok", 0, 1_000)];
        let table = render(&run(vec![fault_only]), false);
        assert!(table.contains("server restore: ok, 0 B"), "{table}");
    }

    #[test]
    fn a_long_capture_is_summarised_unless_all_is_asked_for() {
        let report = run(vec![case("S4", "linux/linux", 1000)]);
        let summary = render_with(&report, WireView::Summary);
        let listed = summary
            .lines()
            .filter(|line| line.contains(" ms  host-1"))
            .count();
        assert_eq!(listed, 16, "{summary}");
        assert!(
            summary
                .contains("984 segments not shown (984 with data, 1424832 B; 0 SYN, 0 FIN, 0 RST)"),
            "{summary}"
        );
        let all = render_with(&report, WireView::All);
        assert_eq!(
            all.lines()
                .filter(|line| line.contains(" ms  host-1"))
                .count(),
            1000
        );
        let short = render_with(&run(vec![case("S2", "linux/linux", 5)]), WireView::Summary);
        assert!(!short.contains("not shown"), "{short}");
    }

    #[test]
    fn a_capture_that_missed_packets_says_its_evidence_is_incomplete() {
        let mut flood = case("S4", "linux/linux", 3);
        let whole = render(&run(vec![flood.clone()]), false);
        assert!(!whole.contains("incomplete"), "{whole}");
        flood.wire_missed.insert("host-2".to_owned(), 512);
        let text = render(&run(vec![flood]), false);
        assert!(
            text.contains("wire evidence incomplete: host-2's capture missed 512 packets"),
            "{text}"
        );
    }

    #[test]
    fn a_lost_host_shows_where_its_logs_are_and_their_last_lines() {
        let mut lost = case("R1", "linux/linux", 0);
        lost.verdict = Verdict::AgentLost;
        lost.host_logs.insert(
            "vm-2".to_owned(),
            "console: /run/faultlab-lab/vm-2.console\n  | reboot: Restarting system\n".to_owned(),
        );
        let text = render(&run(vec![lost]), false);
        let at = text.find("vm-2's logs:").unwrap_or(usize::MAX);
        let console = text
            .find("console: /run/faultlab-lab/vm-2.console")
            .unwrap_or(0);
        let quoted = text.find("  | reboot: Restarting system").unwrap_or(0);
        assert!(at < console && console < quoted, "{text}");
    }

    #[test]
    fn one_pair_needs_no_matrix_and_one_case_is_one_case() {
        let one = render(&run(vec![case("S2", "linux/linux", 0)]), false);
        assert!(!one.contains("CASE   linux/linux"), "{one}");
        assert!(one.contains("\n1 case: 1 expected"), "{one}");
        let two_pairs = render(
            &run(vec![
                case("S2", "linux/linux", 0),
                case("S2", "linux/windows", 0),
            ]),
            false,
        );
        assert!(two_pairs.contains("linux/windows"), "{two_pairs}");
        assert!(two_pairs.contains("2 cases"), "{two_pairs}");
    }

    #[test]
    fn a_long_hosts_column_keeps_the_others_aligned() {
        let mut long = case("X1", "linux/app", 0);
        long.roles.insert(
            "server".to_owned(),
            "app echo (198.18.1.11:7000)".to_owned(),
        );
        let text = render(&run(vec![case("S2", "linux/linux", 0), long]), false);
        let verdict_at: Vec<usize> = text
            .lines()
            .filter(|line| line.contains(" flood "))
            .filter_map(|line| line.find("expected").map(|at| line[..at].chars().count()))
            .collect();
        assert_eq!(verdict_at.len(), 2, "{text}");
        assert_eq!(verdict_at[0], verdict_at[1], "{text}");
    }
}
