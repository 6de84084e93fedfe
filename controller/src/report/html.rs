//! The run as one self-contained HTML file (inline CSS and SVG, no script,
//! no fetch), and as Markdown for a ticket.
//!
//! HTML: the run's header (agents, verdict counts), the case × OS-pair matrix
//! linking to each case, a comparison across OS pairs when there are several,
//! then per case what was expected and what was observed side by side (the
//! differences highlighted) and its ladder diagram.

use super::ladder::{self, Host, Ladder};
use super::{CaseReport, RunReport, Verdict};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use std::collections::BTreeSet;
use std::fmt::Write;

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d2330; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 6px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #d6dae3; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f9; }
.expected { background: #dff5e3; } .differs { background: #fde2e1; } .error, .agent-lost, .timeout { background: #fdecc8; }
.skipped { background: #eceef2; color: #666; }
td a { color: inherit; text-decoration: none; display: block; }
tr.diff td { background: #fde2e1; }
.muted { color: #667; } .differences li { color: #b3261e; }
section.case { border-top: 2px solid #d6dae3; margin-top: 24px; }
svg.ladder { background: #fcfcfe; border: 1px solid #e3e6ee; }
svg .lane { stroke: #9aa3b5; stroke-width: 1.5; } svg .tick { fill: #667; font-size: 11px; }
svg .title { font-weight: 600; font-size: 13px; } svg text { font-size: 12px; }
svg .ok { fill: #2e7d32; } svg .eof { fill: #1565c0; } svg .error { fill: #c62828; } svg .expected-error { fill: #6a1b9a; }
svg line.rst, svg line.rst-stub { stroke: #d32f2f; stroke-width: 2; } svg text.rst { fill: #d32f2f; }
svg line.fin { stroke: #1e63d6; stroke-width: 2; } svg text.fin { fill: #1e63d6; }
svg line.skewed { stroke-dasharray: 5 3; }
svg line.syn { stroke: #8a8f99; } svg text.syn { fill: #8a8f99; }
svg line.data { stroke: #b0b6c2; stroke-dasharray: 3 3; } svg text.data { fill: #8a8f99; }
svg .bracket { fill: none; stroke: #e65100; stroke-width: 1.5; } svg text.bracket { fill: #e65100; stroke: none; }
"#;

/// Civil date and time (UTC) of a Unix time in ms.
pub fn utc(unix_ms: i64) -> String {
    let seconds = unix_ms.div_euclid(1000);
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn hosts_of(report: &RunReport, case: &CaseReport) -> Vec<Host> {
    case.roles
        .iter()
        .map(|(role, name)| Host {
            name: name.clone(),
            role: role.clone(),
            ip: report
                .agents
                .iter()
                .find(|agent| &agent.name == name)
                .map(|agent| agent.test_ip.clone())
                .unwrap_or_default(),
        })
        .collect()
}

/// The decisive observation's result, for tables: "recv: error ECONNRESET, 1000 B".
fn gist(case: &CaseReport) -> String {
    case.telling_observation().map_or_else(
        || case.reason.clone().unwrap_or_default(),
        |observation| {
            let errno = if observation.errno_name.is_empty() {
                String::new()
            } else {
                format!(" {}", observation.errno_name)
            };
            format!(
                "{}: {}{errno}, {} B",
                observation.call, observation.outcome, observation.bytes
            )
        },
    )
}

fn svg(ladder: &Ladder) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="ladder" xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}">"#,
        w = ladder.width,
        h = ladder.height
    );
    svg.push_str(r##"<defs>"##);
    for (id, color) in [
        ("rst", "#d32f2f"),
        ("fin", "#1e63d6"),
        ("syn", "#8a8f99"),
        ("data", "#b0b6c2"),
    ] {
        let _ = write!(
            svg,
            r#"<marker id="head-{id}" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="{color}"/></marker>"#
        );
    }
    svg.push_str("</defs>");
    svg_axes(&mut svg, ladder);
    svg_arrows(&mut svg, ladder);
    svg_marks(&mut svg, ladder);
    svg.push_str("</svg>");
    svg
}

/// The lanes with their titles, and the time axis.
fn svg_axes(svg: &mut String, ladder: &Ladder) {
    for lane in &ladder.lanes {
        let _ = write!(
            svg,
            r#"<text class="title" x="{x:.1}" y="20" text-anchor="middle">{title}</text><line class="lane" x1="{x:.1}" y1="30" x2="{x:.1}" y2="{bottom:.1}"/>"#,
            x = lane.x,
            title = maud::html! { (lane.title) }.into_string(),
            bottom = ladder.height - 10.0
        );
    }
    for tick in &ladder.ticks {
        let _ = write!(
            svg,
            r#"<text class="tick" x="8" y="{y:.1}">{text}</text>"#,
            y = tick.y + 4.0,
            text = tick.text
        );
    }
}

/// The segments, as arrows from sender to receiver (or a stub where only
/// one host saw them).
fn svg_arrows(svg: &mut String, ladder: &Ladder) {
    for arrow in &ladder.arrows {
        let class = arrow.kind.class();
        if (arrow.x1 - arrow.x2).abs() < 1.0 {
            let _ = write!(
                svg,
                r#"<line class="{class}" x1="{x:.1}" y1="{y:.1}" x2="{x2:.1}" y2="{y:.1}"/><text class="{class}" x="{tx:.1}" y="{ty:.1}">{text} (seen here)</text>"#,
                x = arrow.x1,
                x2 = arrow.x1 + 24.0,
                y = arrow.y1,
                tx = arrow.x1 + 28.0,
                ty = arrow.y1 + 4.0,
                text = maud::html! { (arrow.text) }.into_string()
            );
            continue;
        }
        // The label sits near the arrow's start, so the labels of a
        // segment and its answer between the same lanes do not overlap.
        let skew = if arrow.skewed { " *" } else { "" };
        let _ = write!(
            svg,
            r##"<line class="{class}{dashed}" x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" marker-end="url(#head-{class})"/><text class="{class}" x="{tx:.1}" y="{ty:.1}" text-anchor="middle">{text}{skew}</text>"##,
            dashed = if arrow.skewed { " skewed" } else { "" },
            x1 = arrow.x1,
            y1 = arrow.y1,
            x2 = arrow.x2,
            y2 = arrow.y2,
            tx = arrow.x1 + (arrow.x2 - arrow.x1) * 0.3,
            ty = arrow.y1 + (arrow.y2 - arrow.y1) * 0.3 - 4.0,
            text = maud::html! { (arrow.text) }.into_string()
        );
    }
}

/// The detection brackets and the calls.
fn svg_marks(svg: &mut String, ladder: &Ladder) {
    for bracket in &ladder.brackets {
        let _ = write!(
            svg,
            r#"<path class="bracket" d="M{x:.1},{y1:.1} h-6 V{y2:.1} h6"/><text class="bracket" x="{tx:.1}" y="{ty:.1}" text-anchor="end">{text}</text>"#,
            x = bracket.x,
            y1 = bracket.y1,
            y2 = bracket.y2,
            tx = bracket.x - 8.0,
            ty = (bracket.y1 + bracket.y2) / 2.0 + 4.0,
            text = bracket.text
        );
    }
    for mark in &ladder.marks {
        let _ = write!(
            svg,
            r#"<circle class="{class}" cx="{x:.1}" cy="{y:.1}" r="4"/><text class="{class}" x="{tx:.1}" y="{ty:.1}">{text}</text>"#,
            class = mark.kind.class(),
            x = mark.x,
            y = mark.y,
            tx = mark.x + 8.0,
            ty = mark.y + 4.0,
            text = maud::html! { (mark.text) }.into_string()
        );
    }
}

fn case_section(report: &RunReport, index: usize, case: &CaseReport) -> Markup {
    let ladder = ladder::layout(
        &hosts_of(report, case),
        &case.observations,
        &case.wire,
        &case.differences,
    );
    let differing: BTreeSet<&str> = case
        .differences
        .iter()
        .filter_map(|difference| difference.split(" (").next())
        .collect();
    let hosts: Vec<String> = case
        .roles
        .iter()
        .map(|(role, agent)| format!("{role} on {agent}"))
        .collect();
    html! {
        section.case id=(format!("case-{index}")) {
            h2 {
                (case.id) " " (case.name) " — "
                span class=(case.verdict.as_str()) { (case.verdict.as_str()) }
            }
            p {
                (case.title) br;
                span.muted {
                    (hosts.join(", ")) " · " (case.os_pair) " · " (case.duration_ms) " ms"
                    @if let Some(url) = &case.trace_url { " · " a.trace href=(url) { "trace" } }
                }
            }
            @if let Some(seed) = &case.seed { p.muted { "Seed: " (seed) } }
            @if let Some(reason) = &case.reason { p { b { "Why: " } (reason) } }
            @if !case.differences.is_empty() {
                ul.differences { @for difference in &case.differences { li { (difference) } } }
            }
            table {
                tr { th { "step" } th { "host" } th { "call" } th { "expected" } th { "observed" } }
                @for observation in &case.observations {
                    tr class=[differing.contains(observation.step.as_str()).then_some("diff")] {
                        td { (observation.step) }
                        td { (observation.host) " (" (observation.role) ")" }
                        td {
                            (observation.call)
                            @if let Some(moment) = observation.released_ns {
                                br; span.muted { "released together, " (format!("{:+}", (observation.t_ns - moment) / 1_000)) " µs" }
                            }
                        }
                        td { (observation.expected.clone().unwrap_or_else(|| "—".to_owned())) }
                        td {
                            (observation.outcome)
                            @if !observation.errno_name.is_empty() { " " (observation.errno_name) " (" (observation.errno) ")" }
                            @if observation.bytes > 0 { ", " (observation.bytes) " B" }
                            @if observation.sigpipe { ", SIGPIPE" }
                            @if observation.unread_bytes > 0 { ", " (observation.unread_bytes) " B unread" }
                        }
                    }
                }
            }
            @for probe in &case.probes {
                p {
                    b { "Probe of " (probe.role) " (" (probe.target) ", " (probe.address) "): " }
                    @if probe.healthy { "answered" } @else { "did not answer" }
                    @if let Some(ms) = probe.connect_ms { ", connected in " (ms) " ms" }
                    @if let Some(reply) = &probe.reply { ", reply " code { (reply.chars().take(60).collect::<String>()) } }
                    @if !probe.sockets.is_empty() {
                        ". Its port's sockets: "
                        (probe.sockets.iter().map(|(state, count)| format!("{count} {state}")).collect::<Vec<_>>().join(", "))
                    }
                }
            }
            @for note in &case.unchecked { p.muted { "Not checked: " (note) } }
            @if !case.wire_evidence { p.muted { "No wire evidence (the agents could not capture)." } }
            @for note in &ladder.notes { p.muted { (note) } }
            (PreEscaped(svg(&ladder)))
        }
    }
}

/// The run as one self-contained HTML page.
pub fn render(report: &RunReport) -> String {
    let s = &report.summary;
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "faultlab run " (report.run_id) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "faultlab run " (report.run_id) }
                p.muted { (report.suite) " · started " (utc(report.started_unix_ms)) " · "
                    (report.finished_unix_ms.saturating_sub(report.started_unix_ms)) " ms" }
                p {
                    span.expected { " " (s.expected) " expected " } " "
                    span.differs { " " (s.differs) " differs " } " "
                    span.error { " " (s.error + s.agent_lost + s.timeout) " error / lost / timeout " } " "
                    span.skipped { " " (s.skipped) " skipped " }
                }
                table {
                    tr { th { "agent" } th { "host" } th { "OS" } th { "kernel" } th { "capabilities" } }
                    @for agent in &report.agents {
                        tr { td { (agent.name) } td { (agent.hostname) " (" (agent.address) ")" } td { (agent.os_version) }
                             td { (agent.kernel_version) } td { (agent.capabilities.join(", ")) } }
                    }
                }
                (matrix(report))
                @for (index, case) in report.cases.iter().enumerate() { (case_section(report, index, case)) }
            }
        }
    };
    page.into_string()
}

/// Cases × OS pairs, each cell linking to its case; and when there are
/// several pairs, what each case did on each.
fn matrix(report: &RunReport) -> Markup {
    let pairs: Vec<&str> = report
        .cases
        .iter()
        .map(|case| case.os_pair.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut ids: Vec<&str> = Vec::new();
    for case in &report.cases {
        if !ids.contains(&case.id.as_str()) {
            ids.push(&case.id);
        }
    }
    let cell = |id: &str, pair: &str| {
        report
            .cases
            .iter()
            .enumerate()
            .find(|(_, case)| case.id == id && case.os_pair == pair)
    };
    html! {
        h2 { "Cases × OS pairs" }
        table #matrix {
            tr { th { "case" } @for pair in &pairs { th { (pair) } } }
            @for id in &ids {
                tr {
                    th { (id) }
                    @for pair in &pairs {
                        @match cell(id, pair) {
                            Some((index, case)) => td class=(case.verdict.as_str()) {
                                a href=(format!("#case-{index}")) { (case.verdict.as_str()) }
                            },
                            None => td { "—" },
                        }
                    }
                }
            }
        }
        @if pairs.len() > 1 {
            h2 { "Across OS pairs" }
            table #comparison {
                tr { th { "case" } @for pair in &pairs { th { (pair) } } }
                @for id in &ids {
                    tr { th { (id) } @for pair in &pairs {
                        td { (cell(id, pair).map_or_else(String::new, |(_, case)| gist(case))) }
                    } }
                }
            }
        }
    }
}

/// The run as Markdown, for pasting into a ticket.
pub fn markdown(report: &RunReport) -> String {
    let mut out = format!(
        "## faultlab run {} ({})\n\n{}\n\n| case | hosts | OS pair | verdict | observed |\n|---|---|---|---|---|\n",
        report.run_id,
        report.suite,
        report.summary.counts()
    );
    for case in &report.cases {
        let hosts: Vec<&str> = case.roles.values().map(String::as_str).collect();
        let verdict = if case.verdict == Verdict::Expected {
            "expected".to_owned()
        } else {
            format!("**{}**", case.verdict.as_str())
        };
        let id = match &case.trace_url {
            Some(url) => format!("[{} {}]({url})", case.id, case.name),
            None => format!("{} {}", case.id, case.name),
        };
        let _ = writeln!(
            out,
            "| {id} | {} | {} | {verdict} | {} |",
            hosts.join(" → "),
            case.os_pair,
            gist(case).replace('|', "\\|")
        );
    }
    for case in report
        .cases
        .iter()
        .filter(|case| !case.differences.is_empty())
    {
        let _ = writeln!(out, "\n**{} {}**", case.id, case.name);
        for difference in &case.differences {
            let _ = writeln!(out, "- {difference}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{AgentReport, SCHEMA, Summary};
    use std::collections::BTreeMap;

    fn case(id: &str, os_pair: &str, verdict: Verdict, differences: &[&str]) -> CaseReport {
        CaseReport {
            id: id.to_owned(),
            name: "case".to_owned(),
            title: "a case".to_owned(),
            roles: BTreeMap::from([("client".to_owned(), "a".to_owned())]),
            os_pair: os_pair.to_owned(),
            verdict,
            differences: differences.iter().map(|d| (*d).to_owned()).collect(),
            duration_ms: 3,
            ..CaseReport::default()
        }
    }

    fn report(cases: Vec<CaseReport>) -> RunReport {
        RunReport {
            schema: SCHEMA.to_owned(),
            run_id: "r1".to_owned(),
            started_unix_ms: 0,
            finished_unix_ms: 5,
            suite: "seed".to_owned(),
            agents: Vec::<AgentReport>::new(),
            summary: Summary::of(&cases),
            cases,
            trace_id: None,
            trace_url: None,
        }
    }

    #[test]
    fn cases_link_to_their_trace_when_the_run_was_traced() {
        let mut traced = report(vec![case("S2", "linux/linux", Verdict::Expected, &[])]);
        traced.cases[0].span_id = Some("00f067aa0ba902b7".to_owned());
        let untraced = traced.clone();
        traced.link_traces("http://localhost:16686/trace/{trace_id}?uiFind={span_id}");
        assert_eq!(traced.trace_url, None, "no trace id: nothing to link");
        traced.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned());
        traced.link_traces("http://localhost:16686/trace/{trace_id}?uiFind={span_id}");
        let url =
            "http://localhost:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736?uiFind=00f067aa0ba902b7";
        assert_eq!(traced.cases[0].trace_url.as_deref(), Some(url));
        assert!(render(&traced).contains(&format!("href=\"{}\"", url.replace('&', "&amp;"))));
        assert!(markdown(&traced).contains(&format!("[S2 case]({url})")));
        assert!(!render(&untraced).contains("class=\"trace\""));
    }

    #[test]
    fn a_released_step_says_how_late_it_acted() {
        let mut run = report(vec![case("T1", "linux/linux", Verdict::Expected, &[])]);
        run.cases[0]
            .observations
            .push(crate::report::ObservationReport {
                step: "answer".to_owned(),
                host: "a".to_owned(),
                role: "server".to_owned(),
                call: "send".to_owned(),
                bytes: 6,
                outcome: "ok".to_owned(),
                t_ns: 5_003_000,
                duration_ns: 1_000,
                released_ns: Some(5_000_000),
                ..Default::default()
            });
        assert!(render(&run).contains("released together, +3 µs"));
    }

    #[test]
    fn the_page_has_the_matrix_a_comparison_across_os_pairs_and_a_ladder_per_case() {
        let page = render(&report(vec![
            case("C2", "linux/linux", Verdict::Expected, &[]),
            case(
                "C2",
                "windows/linux",
                Verdict::Differs,
                &["client-reads (recv on windows): outcome eof, expected error"],
            ),
        ]));
        assert!(page.contains("id=\"matrix\""));
        assert!(
            page.contains("id=\"comparison\""),
            "two OS pairs: a comparison table"
        );
        assert_eq!(page.matches("<svg class=\"ladder\"").count(), 2);
        assert!(page.contains("href=\"#case-1\"") && page.contains("class=\"differs\""));
        assert!(page.contains("outcome eof, expected error"));
        let one_pair = render(&report(vec![case(
            "S2",
            "linux/linux",
            Verdict::Expected,
            &[],
        )]));
        assert!(!one_pair.contains("id=\"comparison\""));
    }

    #[test]
    fn markdown_is_a_table_with_the_differences_under_it() {
        let text = markdown(&report(vec![
            case("S2", "linux/linux", Verdict::Expected, &[]),
            case(
                "C3",
                "linux/linux",
                Verdict::Differs,
                &["close (close on linux): wire: this host sent no RST, expected one"],
            ),
        ]));
        assert!(
            text.contains("| S2 case | a | linux/linux | expected |"),
            "{text}"
        );
        assert!(
            text.contains("| C3 case | a | linux/linux | **differs** |"),
            "{text}"
        );
        assert!(
            text.contains("- close (close on linux): wire: this host sent no RST, expected one"),
            "{text}"
        );
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_764_100_800_000), "2025-11-25 20:00:00 UTC");
    }
}
