//! The agents' wire evidence against an independent capture: tcpdump on the
//! lab's bridge sees the same RST and FIN segments, within 1 ms plus the
//! stated uncertainty of the agent's clock offset (needs root and tcpdump;
//! CI installs it).

use faultlab::engine::{self, AgentHandle, Plan, Quiet, RunClock};
use faultlab::lab::{self, LocalLab};
use faultlab::report::{Verdict, WireReport};
use faultlab::suites;
use faultlab_proto::v1 as pb;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A line of `tcpdump -nn -tt --time-stamp-precision=nano`:
/// `1764100000.123456789 IP 198.18.5.10.40000 > 198.18.5.11.7000: Flags [R.], ...`
struct Seen {
    wall_ns: i128,
    source: String,
    destination: String,
    flags: String,
}

fn parse(line: &str) -> Option<Seen> {
    let mut words = line.split_whitespace();
    let stamp = words.next()?;
    let (seconds, nanos) = stamp.split_once('.')?;
    let wall_ns = seconds.parse::<i128>().ok()? * 1_000_000_000 + nanos.parse::<i128>().ok()?;
    if words.next()? != "IP" {
        return None;
    }
    // tcpdump writes address.port; make it address:port.
    let endpoint = |word: &str| {
        let word = word.trim_end_matches(':');
        word.rsplit_once('.')
            .map(|(ip, port)| format!("{ip}:{port}"))
    };
    let source = endpoint(words.next()?)?;
    words.next()?;
    let destination = endpoint(words.next()?)?;
    let flags = line.split("Flags [").nth(1)?.split(']').next()?.to_owned();
    Some(Seen {
        wall_ns,
        source,
        destination,
        flags,
    })
}

/// Its captures want a quiet machine: it takes its turn with the labs of
/// the other tests in this binary (a std lock, held outside the runtime).
#[test]
fn the_agents_evidence_matches_tcpdump_on_the_bridge() -> TestResult {
    let _turn = crate::common::lab_turn();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(evidence_matches_tcpdump())
}

async fn evidence_matches_tcpdump() -> TestResult {
    if let Some(why) = lab::netns_unavailable() {
        return Err(
            format!("this test needs a network-namespace lab: {why} (CI runs it as root)").into(),
        );
    }
    let exe = lab::find_agent().ok_or("faultlab-agent is not built: run cargo test --workspace")?;
    let lab = LocalLab::start_netns(&exe, 2)?;
    let bridge = lab.bridge().ok_or("no bridge")?;
    let mut tcpdump = Command::new("tcpdump")
        .args([
            "-i",
            &bridge,
            "-nn",
            "-tt",
            "-l",
            "--time-stamp-precision=nano",
            "-U",
            "tcp and not port 7420",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run tcpdump (apt-get install tcpdump): {error}"))?;
    // tcpdump says "listening on ..." on stderr once it captures.
    let stderr = tcpdump.stderr.take().ok_or("no tcpdump stderr")?;
    let mut notes = BufReader::new(stderr);
    let mut said = String::new();
    for _ in 0..5 {
        if notes.read_line(&mut said)? == 0 || said.contains("listening") {
            break;
        }
    }
    assert!(said.contains("listening"), "tcpdump: {said}");

    let clock = RunClock::start();
    let agents = AgentHandle::connect_all(
        &faultlab::agents::Connector::plain(),
        &lab.inventory,
        &clock,
    )
    .await?;
    // Each agent's wall clock minus its monotonic clock, to put evidence on tcpdump's clock.
    let mut wall_minus_mono = std::collections::HashMap::new();
    for agent in &agents {
        let mut client = agent.client.clone();
        let info = client.host_info(pb::HostInfoRequest {}).await?.into_inner();
        wall_minus_mono.insert(
            agent.name.clone(),
            (
                i128::from(info.wall_unix_ns) - i128::from(info.mono_ns),
                agent.clock_offset_ns(),
            ),
        );
    }
    let cases = suites::load("seed")
        .ok_or("no seed suite")??
        .into_iter()
        .filter(|case| ["A1", "C3", "S2"].contains(&case.id.as_str()))
        .collect();
    let plan = Plan {
        run_id: faultlab::engine::new_run_id(),
        suite: "wire".to_owned(),
        cases,
        agents,
        all_bindings: false,
        pinned: Default::default(),
        targets: std::collections::BTreeMap::new(),
        parallel: 1,
        durations: Default::default(),
    };
    let (_stop, stop) = tokio::sync::watch::channel(false);
    let report = engine::run(plan, clock, Arc::new(Quiet), stop).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = Command::new("kill")
        .args(["-INT", &tcpdump.id().to_string()])
        .status();
    let stdout = tcpdump.stdout.take().ok_or("no tcpdump stdout")?;
    let bridge_saw: Vec<Seen> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| parse(&line))
        .collect();
    let _ = tcpdump.wait();

    let mut compared = 0;
    let mut worst_ns = 0i128;
    for case in &report.cases {
        assert_eq!(
            case.verdict,
            Verdict::Expected,
            "{} {:?}",
            case.id,
            case.differences
        );
        // Segments with FIN or RST, as the sending host saw them leave.
        let sent: Vec<&WireReport> = case
            .wire
            .iter()
            .filter(|segment| segment.flags.contains('F') || segment.flags.contains('R'))
            .filter(|segment| {
                let ip = segment
                    .source
                    .rsplit_once(':')
                    .map(|(ip, _)| ip)
                    .unwrap_or_default();
                report
                    .agents
                    .iter()
                    .any(|agent| agent.name == segment.host && agent.test_ip == ip)
            })
            .collect();
        assert!(
            !sent.is_empty(),
            "{}: no FIN or RST in the agents' evidence",
            case.id
        );
        for segment in sent {
            let (wall_minus_mono, offset) = wall_minus_mono[&segment.host];
            let wall = i128::from(segment.t_ns) + i128::from(offset) + wall_minus_mono;
            let twin = bridge_saw
                .iter()
                .filter(|seen| {
                    seen.source == segment.source
                        && seen.destination == segment.destination
                        && seen.flags == segment.flags
                })
                .min_by_key(|seen| (seen.wall_ns - wall).abs())
                .ok_or_else(|| {
                    format!(
                        "{}: tcpdump never saw {} > {} [{}]",
                        case.id, segment.source, segment.destination, segment.flags
                    )
                })?;
            let gap = (twin.wall_ns - wall).abs();
            worst_ns = worst_ns.max(gap);
            compared += 1;
            // The agent's times reach the run's axis through its clock
            // offset, known to half the round trip of its best sample:
            // that much is the offset's, not the capture's.
            let stated = report
                .agents
                .iter()
                .find(|agent| agent.name == segment.host)
                .map_or(0, |agent| i128::from(agent.clock_rtt_ns / 2));
            assert!(
                gap < 1_000_000 + stated,
                "{}: [{}] agent vs bridge {} us apart (the agent's clock offset is known to ±{} us)",
                case.id,
                segment.flags,
                gap / 1_000,
                stated / 1_000
            );
        }
    }
    eprintln!(
        "{compared} FIN/RST segments compared with tcpdump on the bridge; worst gap {} us",
        worst_ns / 1_000
    );
    Ok(())
}
