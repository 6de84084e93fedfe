//! A real application under test: a Python echo server (and Python's own
//! http.server) running in a lab host's network namespace, faultlab's
//! agent as its client and, on its host, as the hand that faults it. The
//! seed cases S2–S5 and the app suite X1–X4 run against it; a server that
//! leaks CLOSE-WAIT is caught by the probe. Needs root (CI runs it so).

// Tests that run a lab take turns through a std mutex held across awaits:
// each test has a runtime of its own, so no task of another test can be
// blocked by it.
#![allow(clippy::await_holding_lock)]

use crate::common;

use faultlab::engine::{self, AgentHandle, Plan, Quiet, RunClock, TargetHandle};
use faultlab::lab::{self, AgentGrants, LocalLab};
use faultlab::report::{CaseReport, RunReport, Verdict};
use faultlab::scenario::Scenario;
use faultlab::suites;
use faultlab::targets::{ProcessSpec, Target, TargetEntry};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// How long an application gets to say it listens.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A copy of the example echo server under a name of its own (process
/// faults by name must not reach another test's server), and the
/// applications started from it; all killed on drop.
struct Apps {
    dir: PathBuf,
    script: PathBuf,
    running: Vec<Child>,
}

impl Apps {
    fn new(tag: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("faultlab-apps-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let script = dir.join(format!("echo_{tag}_{}.py", std::process::id()));
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/echo_server.py");
        std::fs::copy(example, &script)?;
        Ok(Self {
            dir,
            script,
            running: Vec::new(),
        })
    }

    fn script_name(&self) -> String {
        self.script
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Start `args` in `namespace` and wait for its first line ("listening on", "Serving HTTP").
    fn start(
        &mut self,
        namespace: &str,
        args: &[&str],
    ) -> Result<String, Box<dyn std::error::Error>> {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", namespace]).args(args);
        self.spawn(command, args)
    }

    /// Start `args` on this host itself, as [`Self::start`].
    fn start_here(&mut self, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
        let mut command = Command::new(args[0]);
        command.args(&args[1..]);
        self.spawn(command, args)
    }

    fn spawn(
        &mut self,
        mut command: Command,
        args: &[&str],
    ) -> Result<String, Box<dyn std::error::Error>> {
        let mut child = command
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .current_dir(&self.dir)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        self.running.push(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START_TIMEOUT)?;
        if line.is_empty() {
            return Err(format!("{args:?} said nothing").into());
        }
        Ok(line)
    }
}

impl Drop for Apps {
    fn drop(&mut self) {
        for child in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A restarted server is the agent's child, in its own session.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &self.script.display().to_string()])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cases(suite: &str, ids: &[&str]) -> Result<Vec<Scenario>, Box<dyn std::error::Error>> {
    Ok(suites::load(suite)
        .ok_or("no such suite")??
        .into_iter()
        .filter(|case| ids.contains(&case.id.as_str()))
        .collect())
}

/// Run `cases` with `server` played by the application `entry`.
async fn run_against(
    lab: &LocalLab,
    entry: &TargetEntry,
    cases: Vec<Scenario>,
) -> Result<RunReport, Box<dyn std::error::Error>> {
    let clock = RunClock::start();
    let agents = AgentHandle::connect_all(
        &faultlab::agents::Connector::plain(),
        &lab.inventory,
        &clock,
    )
    .await?;
    let placed = TargetHandle::place(Target::from_entry(entry, Path::new("."))?, &agents)?;
    let plan = Plan {
        run_id: engine::new_run_id(),
        suite: "applications".to_owned(),
        cases,
        agents,
        all_bindings: false,
        pinned: BTreeMap::new(),
        targets: BTreeMap::from([("server".to_owned(), Arc::new(placed))]),
        parallel: 4,
        durations: Default::default(),
    };
    let (_stop, stop) = tokio::sync::watch::channel(false);
    Ok(engine::run(plan, clock, Arc::new(Quiet), stop).await)
}

fn case<'a>(report: &'a RunReport, id: &str) -> Result<&'a CaseReport, String> {
    report
        .cases
        .iter()
        .find(|case| case.id == id)
        .ok_or_else(|| format!("no case {id} in the report"))
}

/// When the step `step` of `case` ended (its call had returned: a fault
/// was in force from then on).
fn step_end_ns(case: &CaseReport, step: &str) -> Result<i64, String> {
    case.observations
        .iter()
        .find(|observation| observation.step == step)
        .map(|observation| {
            observation.t_ns + i64::try_from(observation.duration_ns).unwrap_or(i64::MAX)
        })
        .ok_or_else(|| format!("{}: no step {step}", case.id))
}

fn step_t_ns(case: &CaseReport, step: &str) -> Result<i64, String> {
    case.observations
        .iter()
        .find(|observation| observation.step == step)
        .map(|observation| observation.t_ns)
        .ok_or_else(|| format!("{}: no step {step}", case.id))
}

/// The report, probes and notes included, is what the JSON schema says.
fn fits_the_schema(report: &RunReport) -> TestResult {
    let problems = common::schema_problems(&serde_json::to_value(report)?)?;
    assert!(
        problems.is_empty(),
        "report does not fit the schema: {problems:#?}"
    );
    Ok(())
}

fn netns_lab(grants: &AgentGrants) -> Result<LocalLab, Box<dyn std::error::Error>> {
    if let Some(why) = lab::netns_unavailable() {
        return Err(
            format!("this test needs a network-namespace lab: {why} (CI runs it as root)").into(),
        );
    }
    let exe = lab::find_agent().ok_or("faultlab-agent is not built: run cargo test --workspace")?;
    Ok(LocalLab::start_netns_with(&exe, 2, grants)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_and_app_cases_run_against_a_real_echo_server() -> TestResult {
    let _turn = crate::common::lab_turn();
    let mut apps = Apps::new("good")?;
    let script = apps.script.display().to_string();
    let grants = AgentGrants {
        units: Vec::new(),
        process: true,
        restart: vec![(
            apps.script_name(),
            format!("python3 {script} --listen 0.0.0.0:7000"),
        )],
    };
    let lab = netns_lab(&grants)?;
    let server_host = lab.namespace(1).ok_or("no namespace for host-2")?;
    let said = apps.start(
        &server_host,
        &["python3", &script, "--listen", "0.0.0.0:7000"],
    )?;
    assert!(said.starts_with("listening on"), "{said}");
    let mut echo = TargetEntry::new("echo", "tcp://host-2:7000");
    echo.payload = Some("PING {seq}\n".to_owned());
    echo.reply = Some("^PING 0\n".to_owned());
    echo.process = Some(ProcessSpec::Name(apps.script_name()));
    let mut all = cases("seed", &["S2", "S3", "S4", "S5"])?;
    all.extend(cases("app", &["X1", "X2", "X3", "X4"])?);
    let report = run_against(&lab, &echo, all).await?;
    fits_the_schema(&report)?;

    for case in &report.cases {
        assert_eq!(
            case.verdict,
            Verdict::Expected,
            "{} {}: {:?} {:?} probes {:?}",
            case.id,
            case.name,
            case.reason,
            case.differences,
            case.probes
        );
        assert_eq!(case.probes.len(), 1, "{}: one probe of the server", case.id);
        let probe = &case.probes[0];
        assert!(probe.healthy, "{}: {probe:?}", case.id);
        assert_eq!(probe.reply.as_deref(), Some("PING 0\n"), "{}", case.id);
        assert!(
            case.roles
                .get("server")
                .is_some_and(|player| player.starts_with("app echo (")),
            "{}: {:?}",
            case.id,
            case.roles
        );
    }
    // S2: the client's 1000 messages became the server's own: "PING 0\n" ... "PING 999\n".
    let s2 = case(&report, "S2")?;
    let send = s2
        .observations
        .iter()
        .find(|observation| observation.step == "send")
        .ok_or("S2 has no send")?;
    assert_eq!(send.bytes, 7 * 10 + 8 * 90 + 9 * 900);
    assert!(
        s2.unchecked
            .iter()
            .any(|note| note.starts_with("server-reads")),
        "the server's own recv is not judged: {:?}",
        s2.unchecked
    );

    // X1: the server's host destroyed the flow: its RST on the wire, the client's ECONNRESET.
    let x1 = case(&report, "X1")?;
    let abort_at = step_t_ns(x1, "abort")?;
    assert!(
        x1.wire.iter().any(|segment| segment.host == "host-2"
            && segment.source.ends_with(":7000")
            && segment.flags.contains('R')
            && segment.t_ns >= abort_at),
        "no RST from the server's host after the abort: {:?}",
        x1.wire
    );
    let sees = x1
        .observations
        .iter()
        .find(|observation| observation.step == "client-sees")
        .ok_or("X1 has no client-sees")?;
    assert_eq!(sees.errno_name, "ECONNRESET");

    // X2: frozen, the server's kernel still answered the client's keepalive
    // probes (the wire shows its ACKs); cut off, nothing answered and the
    // client gave up with ETIMEDOUT.
    let x2 = case(&report, "X2")?;
    let frozen_at = step_t_ns(x2, "freeze")?;
    // A probe answered while the isolation was being put in place can
    // still arrive: the host is cut off once its call has returned.
    let cut_at = step_end_ns(x2, "cut-off")?;
    let acks_while_frozen = x2
        .wire
        .iter()
        .filter(|segment| {
            segment.host == "host-2"
                && segment.source.ends_with(":7000")
                && segment.flags == "."
                && segment.payload == 0
                && (frozen_at..cut_at).contains(&segment.t_ns)
        })
        .count();
    assert!(
        acks_while_frozen >= 2,
        "the frozen server's kernel should ACK the keepalive probes: {acks_while_frozen} ACKs, wire {:?}",
        x2.wire
    );
    let answered_after_cut = x2.wire.iter().any(|segment| {
        segment.host == "host-1" && segment.source.ends_with(":7000") && segment.t_ns > cut_at
    });
    assert!(
        !answered_after_cut,
        "nothing reaches the client once the host is cut off"
    );

    // X3: killed and restarted by the agent's configured command: a new process serves.
    let x3 = case(&report, "X3")?;
    assert!(x3.probes[0].healthy);
    let restarted = Command::new("pgrep").args(["-f", &script]).output()?.stdout;
    assert!(
        !String::from_utf8_lossy(&restarted).trim().is_empty(),
        "the restarted server is running"
    );

    // X4: the cut flow heard nothing, the other one its echo.
    let x4 = case(&report, "X4")?;
    let heard = |step: &str| {
        x4.observations
            .iter()
            .find(|observation| observation.step == step)
            .map(|observation| (observation.outcome.clone(), observation.bytes))
    };
    assert_eq!(heard("cut-hears"), Some(("timeout".to_owned(), 0)));
    assert_eq!(heard("other-hears"), Some(("ok".to_owned(), 7)));
    Ok(())
}

#[test]
fn run_grants_process_faults_to_its_local_lab_only_when_asked() -> TestResult {
    let _turn = crate::common::lab_turn();
    if let Some(why) = faultlab::lab::netns_unavailable() {
        return Err(format!(
            "aborting another program's connection needs root: {why} (CI runs it as root)"
        )
        .into());
    }
    let mut apps = Apps::new("granted")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let script = apps.script.display().to_string();
    apps.start_here(&["python3", &script, "--listen", &format!("127.0.0.1:{port}")])?;
    let targets = apps.dir.join("app.toml");
    std::fs::write(
        &targets,
        format!(
            "[[target]]\nname = \"echo\"\naddress = \"tcp://127.0.0.1:{port}\"\npayload = \"PING {{seq}}\\n\"\nreply = \"^PING 0\\n\"\nprocess = {{ name = \"{}\" }}\n",
            apps.script_name()
        ),
    )?;
    let targets = targets.display().to_string();
    let run = |extra: &[&str]| -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let mut args = vec![
            "run",
            "--suite",
            "app",
            "--case",
            "X1",
            "--targets",
            &targets,
            "--target",
            "server=echo",
            "--no-history",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_faultlab"))
            .args(&args)
            .output()?;
        Ok(serde_json::from_slice(&out.stdout)
            .map_err(|error| format!("{error}: {}", String::from_utf8_lossy(&out.stderr)))?)
    };
    let refused = run(&[])?;
    let granted = run(&["--allow-process"])?;
    let x1 = &refused["cases"][0];
    assert_eq!(x1["verdict"], "skipped", "{x1}");
    assert!(
        x1["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("`faultlab run --allow-process`")),
        "the skip says how to allow it: {x1}"
    );
    let x1 = &granted["cases"][0];
    assert_eq!(x1["verdict"], "expected", "{x1}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaky_server_is_caught_and_a_third_party_server_passes() -> TestResult {
    let _turn = crate::common::lab_turn();
    let mut apps = Apps::new("leaky")?;
    let script = apps.script.display().to_string();
    let lab = netns_lab(&AgentGrants::default())?;
    let server_host = lab.namespace(1).ok_or("no namespace for host-2")?;
    apps.start(
        &server_host,
        &["python3", &script, "--listen", "0.0.0.0:7001", "--leak"],
    )?;
    let mut leaky = TargetEntry::new("leaky", "tcp://host-2:7001");
    leaky.probe.timeout_ms = 1500;
    let report = run_against(&lab, &leaky, cases("seed", &["S5"])?).await?;
    let s5 = case(&report, "S5")?;
    assert_eq!(s5.verdict, Verdict::Differs, "{s5:?}");
    let probe = &s5.probes[0];
    assert!(probe.healthy, "it still answers: {probe:?}");
    assert_eq!(probe.sockets.get("CLOSE-WAIT"), Some(&1), "{probe:?}");
    assert!(
        s5.differences
            .iter()
            .any(|difference| difference.contains("1 connection of port 7001 left in CLOSE-WAIT")),
        "{:?}",
        s5.differences
    );

    // Python's own http.server, request and reply in its protocol.
    let said = apps.start(
        &server_host,
        &["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"],
    )?;
    assert!(said.contains("8000"), "{said}");
    let mut http = TargetEntry::new("http.server", "tcp://host-2:8000");
    http.payload = Some("GET / HTTP/1.0\r\n\r\n".to_owned());
    http.reply = Some("^HTTP/1\\.[01] 200".to_owned());
    // Cases where the client does not pipeline requests: an HTTP/1.0 server
    // answers one and closes (the rest of S2's 1000 would meet EPIPE or ECONNRESET).
    let report = run_against(&lab, &http, cases("seed", &["S5", "C1"])?).await?;
    for case in &report.cases {
        assert_eq!(
            case.verdict,
            Verdict::Expected,
            "{}: {:?} {:?} {:?}",
            case.id,
            case.reason,
            case.differences,
            case.probes
        );
        let reply = case.probes[0].reply.clone().unwrap_or_default();
        assert!(reply.starts_with("HTTP/1.0 200"), "{}: {reply:?}", case.id);
    }
    Ok(())
}
