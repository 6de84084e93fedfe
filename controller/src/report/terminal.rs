//! The run as text for a terminal: one line per case, the differences under
//! it, then the case × OS-pair matrix and the totals.

use super::{CaseReport, RunReport, Verdict};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

fn verdict_cell(case: &CaseReport) -> String {
    case.verdict.as_str().to_owned()
}

/// The full text report; with `wire`, each case's captured segments too.
pub fn render(report: &RunReport, wire: bool) -> String {
    let mut out = header(report);
    let _ = writeln!(
        out,
        "{:<4} {:<28} {:<18} {:<11} {:>8}  details",
        "ID", "CASE", "HOSTS", "VERDICT", "TIME"
    );
    for case in &report.cases {
        case_lines(&mut out, case, wire);
    }
    let _ = writeln!(out);
    out.push_str(&matrix(report));
    let s = &report.summary;
    let _ = writeln!(
        out,
        "\n{} cases: {} expected, {} differs, {} error, {} skipped, {} agent-lost, {} timeout",
        s.total, s.expected, s.differs, s.error, s.skipped, s.agent_lost, s.timeout
    );
    out
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
            "  agent {:<10} {:<22} {} {}, kernel {}, clock known to ±{} us",
            agent.name,
            agent.address,
            agent.hostname,
            agent.os_version,
            agent.kernel_version,
            agent.clock_rtt_ns / 2_000
        );
    }
    let _ = writeln!(out);
    out
}

/// A case's line, its further differences, and with `wire` its segments.
fn case_lines(out: &mut String, case: &CaseReport, wire: bool) {
    let hosts: Vec<&str> = case.roles.values().map(String::as_str).collect();
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
        "{:<4} {:<28} {:<18} {:<11} {:>6}ms  {}",
        case.id,
        case.name,
        hosts.join("→"),
        verdict_cell(case),
        case.duration_ms,
        detail
    );
    for more in case.differences.iter().skip(1) {
        let _ = writeln!(out, "{:>77}{more}", "");
    }
    if wire {
        for segment in &case.wire {
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
    }
}

/// What the decisive observation said, e.g. "recv: error ECONNRESET after 1000 B".
fn summary_line(case: &CaseReport) -> String {
    let decisive = case
        .observations
        .iter()
        .rev()
        .find(|observation| observation.checked.is_some());
    decisive.map_or_else(String::new, |observation| {
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
