//! Staying power: what a lab tool must survive. Many cases in a row leak
//! nothing; a controller killed -9 mid-isolation leaves no host cut off
//! past its deadline; a control channel that drops for seconds does not
//! wedge a run. Bounded for CI; `FAULTLAB_SOAK=1` runs the soak sizes
//! (1000 cases, 50 kills).

// Tests take turns through a std mutex held across awaits: each test has a
// runtime of its own, so no task of another test can be blocked by it.
#![allow(clippy::await_holding_lock)]

use faultlab::agents::Connector;
use faultlab::engine::{self, AgentHandle, Plan, Quiet, RunClock};
use faultlab::lab::{self, LocalLab};
use faultlab::report::{RunReport, Verdict};
use faultlab::scenario::{self, Scenario};
use faultlab::suites;
use faultlab_proto::v1 as pb;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn soak() -> bool {
    std::env::var_os("FAULTLAB_SOAK").is_some()
}

/// Labs of namespaces want the machine's network to themselves.
static ONE_LAB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lab_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn agent_exe() -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    Ok(lab::find_agent().ok_or("faultlab-agent is not built: run `cargo test --workspace`")?)
}

async fn run(
    lab: &LocalLab,
    cases: Vec<Scenario>,
    parallel: usize,
) -> Result<RunReport, Box<dyn std::error::Error>> {
    let clock = RunClock::start();
    let agents = AgentHandle::connect_all(&Connector::plain(), &lab.inventory, &clock).await?;
    let plan = Plan {
        run_id: engine::new_run_id(),
        suite: "staying-power".to_owned(),
        cases,
        agents,
        all_bindings: false,
        pinned: Default::default(),
        targets: std::collections::BTreeMap::new(),
        parallel,
        durations: Default::default(),
    };
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    Ok(engine::run(plan, clock, Arc::new(Quiet), stop).await)
}

/// What a process holds: open files, resident memory, live children.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Footprint {
    fds: usize,
    rss_kib: u64,
    children: usize,
}

fn footprint(pid: u32) -> Result<Footprint, Box<dyn std::error::Error>> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS")?;
    let mut children = 0;
    for entry in std::fs::read_dir("/proc")? {
        let stat = entry.map(|e| e.path().join("stat"))?;
        if let Ok(text) = std::fs::read_to_string(stat) {
            // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            let ppid = text
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            if ppid == Some(pid) {
                children += 1;
            }
        }
    }
    Ok(Footprint {
        fds,
        rss_kib,
        children,
    })
}

fn namespaces() -> usize {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).lines().count())
        .unwrap_or(0)
}

/// The seed cases that need no isolation, repeated to make `count` cases.
fn many_cases(count: usize) -> Result<Vec<Scenario>, Box<dyn std::error::Error>> {
    let quick: Vec<Scenario> = suites::load("seed")
        .ok_or("no seed suite")??
        .into_iter()
        .filter(|case| case.needs.is_empty())
        .collect();
    Ok(quick.iter().cycle().take(count).cloned().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cases_in_a_row_leak_nothing() -> TestResult {
    let _turn = lab_turn();
    let count = if soak() { 1000 } else { 200 };
    let lab = LocalLab::start(&agent_exe()?, 2)?;
    let namespaces_before = namespaces();
    // Four rounds warm the agents up (allocator arenas, gRPC buffers, the
    // largest capture: S4's flood); growth is measured from there.
    let warm = run(&lab, many_cases(40)?, 1).await?;
    assert_eq!(warm.summary.expected, 40, "{:?}", warm.summary);
    // Measured after a small case (F1): its start gives the memory freed
    // after the last big capture back to the OS, so what is left is what
    // the agent still holds, not the peak of a flood (S4) just past.
    let settle = || async {
        let f1 = many_cases(20)?
            .into_iter()
            .filter(|case| case.id == "F1")
            .take(1)
            .collect();
        run(&lab, f1, 1).await
    };
    settle().await?;
    let before: Vec<Footprint> = lab
        .pids()
        .iter()
        .map(|&pid| footprint(pid))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let report = run(&lab, many_cases(count)?, 1).await?;
    let took = started.elapsed();
    let unexpected: Vec<String> = report
        .cases
        .iter()
        .filter(|case| case.verdict != Verdict::Expected)
        .map(|case| {
            format!(
                "{} {:?} {:?} {:?}",
                case.id, case.verdict, case.reason, case.differences
            )
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    settle().await?;
    let after: Vec<Footprint> = lab
        .pids()
        .iter()
        .map(|&pid| footprint(pid))
        .collect::<Result<_, _>>()?;
    eprintln!("{count} cases in {took:?}; agents before {before:?}, after {after:?}");
    for (before, after) in before.iter().zip(&after) {
        // The one holder each agent keeps started ahead for the next case
        // (it holds nothing); a leak is one per case.
        assert!(
            after.children <= 1,
            "holder processes left behind: {}",
            after.children
        );
        assert_eq!(
            after.children, before.children,
            "holder processes left behind"
        );
        // A leak is one per case (200 here); a descriptor or two come and
        // go with the controller's connections and the capture sockets.
        assert!(
            after.fds <= before.fds + 2,
            "file descriptors grew from {} to {}",
            before.fds,
            after.fds
        );
        // Issue 9's bound. Growth was 2 to 17 % until the agent kept the C
        // allocator to one arena (each thread had its own, ~1.2 MB each);
        // what is left is the event log filling towards its bound.
        let growth = after.rss_kib as f64 / before.rss_kib as f64 - 1.0;
        assert!(
            growth < 0.05,
            "agent RSS grew {:.1} % ({} → {} KiB)",
            growth * 100.0,
            before.rss_kib,
            after.rss_kib
        );
    }
    assert_eq!(namespaces(), namespaces_before, "namespaces appeared");
    let tables = Command::new("nft").args(["list", "tables"]).output();
    if let Ok(tables) = tables {
        assert!(
            !String::from_utf8_lossy(&tables.stdout).contains("faultlab"),
            "an nftables table was left"
        );
    }
    Ok(())
}

/// Whether `ip` answers on the test network: a refusal (nothing listens on
/// port 9) or an accept means the path is open; a timeout means it is cut.
fn reachable(ip: IpAddr) -> bool {
    match TcpStream::connect_timeout(&SocketAddr::new(ip, 9), Duration::from_millis(150)) {
        Ok(_) => true,
        Err(error) => error.kind() != std::io::ErrorKind::TimedOut,
    }
}

fn inventory_file(
    lab: &LocalLab,
    dir: &Path,
) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    let mut text = String::new();
    for agent in &lab.inventory.agents {
        text.push_str(&format!(
            "[[agent]]\nname = \"{}\"\naddress = \"{}\"\n",
            agent.name, agent.address
        ));
        if let Some(ip) = agent.test_ip {
            text.push_str(&format!("test_ip = \"{ip}\"\n"));
        }
        text.push('\n');
    }
    let file = dir.join("lab.toml");
    std::fs::write(&file, text)?;
    Ok(file)
}

#[test]
fn a_controller_killed_mid_isolation_leaves_no_host_cut_off_past_its_deadline() -> TestResult {
    if let Some(why) = lab::netns_unavailable() {
        return Err(format!("this test needs network namespaces: {why}").into());
    }
    let _turn = lab_turn();
    const DEADLINE: Duration = Duration::from_millis(2000);
    let trials = if soak() { 50 } else { 20 };
    let lab = LocalLab::start_netns(&agent_exe()?, 3)?;
    let dir = std::env::temp_dir().join(format!("faultlab-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let inventory = inventory_file(&lab, &dir)?;
    let scenario = dir.join("cut-all.toml");
    let isolate = |role: &str| {
        format!(
            "[[step]]\nrole = \"{role}\"\ndo = \"isolate\"\nmode = \"drop\"\ndeadline_ms = {}\n\n",
            DEADLINE.as_millis()
        )
    };
    std::fs::write(
        &scenario,
        format!(
            "id = \"Z2\"\nname = \"cut-all\"\ntitle = \"Three hosts cut off, then a long wait\"\nroles = [\"a\", \"b\", \"c\"]\nneeds = [\"isolate\"]\ntimeout_ms = 60000\n\n{}{}{}[[step]]\ndo = \"sleep\"\nms = 30000\n",
            isolate("a"),
            isolate("b"),
            isolate("c")
        ),
    )?;
    scenario::parse(
        &scenario.display().to_string(),
        &std::fs::read_to_string(&scenario)?,
    )?;
    let ips: Vec<IpAddr> = lab
        .inventory
        .agents
        .iter()
        .filter_map(|agent| agent.test_ip)
        .collect();
    assert_eq!(ips.len(), 3);
    let mut worst = Duration::ZERO;
    for trial in 1..=trials {
        let mut controller = Command::new(env!("CARGO_BIN_EXE_faultlab"))
            .arg("run")
            .arg(&scenario)
            .arg("--inventory")
            .arg(&inventory)
            .arg("--no-history")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Wait until every host is cut off (bounded), then kill -9.
        let started = Instant::now();
        let cut = loop {
            if ips.iter().all(|&ip| !reachable(ip)) {
                break Instant::now();
            }
            if started.elapsed() > Duration::from_secs(15) {
                let _ = controller.kill();
                return Err(format!("trial {trial}: the hosts were never all cut off").into());
            }
        };
        controller.kill()?;
        controller.wait()?;
        let back = loop {
            if ips.iter().all(|&ip| reachable(ip)) {
                break Instant::now();
            }
            if cut.elapsed() > DEADLINE + Duration::from_secs(10) {
                return Err(format!("trial {trial}: a host is still cut off").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = back - cut;
        worst = worst.max(took);
        assert!(
            took <= DEADLINE + Duration::from_secs(1),
            "trial {trial}: healed {took:?} after the cut, deadline {DEADLINE:?} + 1 s"
        );
    }
    eprintln!(
        "{trials} controller kills: every host back within {worst:?} of being cut ({DEADLINE:?} deadline)"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_channel_dropped_for_seconds_does_not_wedge_the_run() -> TestResult {
    let _turn = lab_turn();
    if lab::netns_unavailable().is_some() {
        return Err("this test needs root (isolation with nftables)".into());
    }
    let lab = LocalLab::start_netns(&agent_exe()?, 2)?;
    // Drop only the server's control channel (its gRPC port) for 2 s,
    // while a case runs: test traffic is untouched.
    let server = &lab.inventory.agents[1];
    let control_port: u16 = server
        .address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .ok_or("no port")?;
    let mut cases = Vec::new();
    let s2 = suites::load("seed")
        .ok_or("no seed suite")??
        .into_iter()
        .find(|case| case.id == "S2")
        .ok_or("no S2")?;
    cases.push(s2);
    let mut client = faultlab::agents::connect(&server.address).await?;
    let drop_for = Duration::from_millis(2000);
    client
        .isolate(pb::IsolateRequest {
            id: "control-drop".to_owned(),
            mode: pb::IsolationMode::Drop as i32,
            port: u32::from(control_port),
            direction: pb::Direction::Both as i32,
            deadline_ms: u32::try_from(drop_for.as_millis())?,
            include_control_channel: true,
            ..Default::default()
        })
        .await?;
    // The drop starts 100 ms after that reply; the case starts within it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let report = run(&lab, cases, 1).await?;
    let took = started.elapsed();
    let case = &report.cases[0];
    eprintln!(
        "control channel dropped {drop_for:?}: case {} {:?} after {took:?} ({:?})",
        case.id, case.verdict, case.reason
    );
    assert!(
        matches!(
            case.verdict,
            Verdict::Expected | Verdict::AgentLost | Verdict::Timeout
        ),
        "{:?}: {:?}",
        case.verdict,
        case.reason
    );
    assert!(
        took < Duration::from_secs(40),
        "the run took {took:?}, more than the case's timeout"
    );
    Ok(())
}
