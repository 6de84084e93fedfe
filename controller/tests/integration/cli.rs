//! The `faultlab` binary as a user runs it: the README's main command, its
//! JSON and JUnit outputs, the history, and `check` on a bad file.

use crate::common;

use common::{faultlab, lab_turn};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A scratch directory for one test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("faultlab-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_main_command_runs_the_seed_suite_and_keeps_it() -> TestResult {
    let _turn = lab_turn();
    let scratch = Scratch::new("main")?;
    let history = scratch.0.join("history.sqlite");
    let junit = scratch.0.join("junit.xml");
    let junit_arg = junit.display().to_string();
    let (pid, out) = common::faultlab_with_pid(
        &[
            "run", "--suite", "seed", "--format", "json", "--junit", &junit_arg,
        ],
        &history,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let unexpected: Vec<String> = report["cases"]
        .as_array()
        .map(|cases| {
            cases
                .iter()
                .filter(|case| case["verdict"] != "expected" && case["verdict"] != "skipped")
                .map(|case| {
                    format!(
                        "{} {}: {} {}",
                        case["id"], case["verdict"], case["reason"], case["differences"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{unexpected:#?}\n{stderr}");
    let problems = common::schema_problems(&report)?;
    assert!(problems.is_empty(), "{problems:#?}");
    // As root the local lab is made of network namespaces and every case runs;
    // otherwise the five that cut hosts off are skipped.
    let (expected, skipped) = if faultlab::lab::netns_unavailable().is_none() {
        (15, 0)
    } else {
        (10, 5)
    };
    assert_eq!(report["summary"]["expected"], expected, "{stderr}");
    assert_eq!(report["summary"]["skipped"], skipped);
    assert!(stderr.contains("kept as run 1"), "{stderr}");

    let xml = std::fs::read_to_string(&junit)?;
    assert_eq!(xml.matches("<testcase").count(), 15, "{xml}");
    assert_eq!(xml.matches("<skipped").count(), skipped, "{xml}");

    let listed = faultlab(&["runs"], &history)?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("linux/linux"), "{listed}");
    if skipped == 0 {
        let leftovers = common::namespaces_of(pid)?;
        assert!(
            leftovers.is_empty(),
            "the lab left namespaces behind: {leftovers:?}"
        );
    }
    let shown = faultlab(&["runs", "show", "1", "--format", "json"], &history)?;
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout)?;
    assert_eq!(shown["run_id"], report["run_id"]);
    let table = faultlab(&["runs", "show", "1"], &history)?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("C3   close-with-unread-data") && table.contains("ECONNRESET"),
        "{table}"
    );
    let same = faultlab(&["runs", "diff", "1", "1"], &history)?;
    assert!(String::from_utf8_lossy(&same.stdout).contains("no case changed"));
    let missing = faultlab(&["runs", "show", "42"], &history)?;
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no run 42"));
    Ok(())
}

#[test]
fn check_lists_every_error_with_its_place() -> TestResult {
    let scratch = Scratch::new("check")?;
    let bad = scratch.0.join("bad.toml");
    std::fs::write(
        &bad,
        "id = \"B1\"\nname = \"bad\"\ntitle = \"bad\"\nroles = [\"client\"]\n\n[[step]]\nrole = \"client\"\ndo = \"sned\"\n\n[[step]]\nrole = \"nobody\"\ndo = \"kill\"\nextra = 1\n",
    )?;
    let out = faultlab(
        &["check", &bad.display().to_string()],
        &scratch.0.join("h.sqlite"),
    )?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = bad.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:8:1: step[1].do: unknown action \"sned\"")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:13:1: step[2].extra: unknown field `extra`"
        )),
        "{stderr}"
    );

    let good = faultlab(
        &["check", "suites/seed/c3-close-with-unread-data.toml"],
        &scratch.0.join("h.sqlite"),
    )?;
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    Ok(())
}

#[test]
fn a_mistyped_error_name_is_refused_with_the_name_it_meant() -> TestResult {
    let scratch = Scratch::new("errno")?;
    let good = std::fs::read_to_string("suites/seed/c1-send-after-server-close.toml")?;
    assert!(
        good.contains("error = \"EPIPE\""),
        "the seed's C1 expects EPIPE"
    );
    for (typo, said) in [
        ("EPIPPE", "did you mean \"EPIPE\""),
        ("epipe", "did you mean \"EPIPE\""),
        ("32", "on linux it is EPIPE"),
    ] {
        let bad = scratch.0.join(format!("{typo}.toml"));
        std::fs::write(
            &bad,
            good.replacen("error = \"EPIPE\"", &format!("error = \"{typo}\""), 1),
        )?;
        let out = faultlab(&["check", &bad.display().to_string()], &scratch.0.join("h"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{typo}: {stderr}");
        assert!(stderr.contains(".expect.linux.error: "), "{typo}: {stderr}");
        assert!(stderr.contains(said), "{typo}: {stderr}");
    }
    let missing = faultlab(&["check", "no-such-file.toml"], &scratch.0.join("h"))?;
    assert_eq!(
        missing.status.code(),
        Some(2),
        "an unreadable file is a bad argument"
    );
    Ok(())
}

#[test]
fn the_examples_check_and_run_as_written() -> TestResult {
    let scratch = Scratch::new("examples")?;
    let mut examples: Vec<String> = std::fs::read_dir("../examples")?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| path.display().to_string())
        .collect();
    examples.sort();
    assert!(examples.len() >= 4, "{examples:?}");
    let mut check = vec!["check"];
    check.extend(examples.iter().map(String::as_str));
    let out = faultlab(&check, &scratch.0.join("h"))?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if faultlab::lab::netns_unavailable().is_some() {
        return Ok(());
    }
    let _turn = lab_turn();
    let mut run = vec!["run", "--format", "json", "--no-history"];
    run.extend(examples.iter().map(String::as_str));
    let out = faultlab(&run, &scratch.0.join("h"))?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let verdicts: Vec<(String, String)> = report["cases"]
        .as_array()
        .ok_or("no cases")?
        .iter()
        .map(|case| {
            (
                case["id"].as_str().unwrap_or_default().to_owned(),
                format!("{} {}", case["verdict"], case["differences"]),
            )
        })
        .collect();
    assert_eq!(verdicts.len(), examples.len());
    assert!(
        verdicts
            .iter()
            .all(|(_, verdict)| verdict.starts_with("\"expected\"")),
        "{verdicts:#?}"
    );
    Ok(())
}

#[test]
fn an_unknown_case_is_refused_before_anything_starts() -> TestResult {
    let scratch = Scratch::new("unknown")?;
    let out = faultlab(
        &["run", "--suite", "seed", "--case", "s2", "--case", "Z9"],
        &scratch.0.join("h.sqlite"),
    )?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Ids match whatever their case: s2 is S2, only Z9 is unknown.
    assert!(stderr.contains("no case [\"Z9\"]"), "{stderr}");
    Ok(())
}

#[test]
fn an_error_says_each_cause_once() -> TestResult {
    let scratch = Scratch::new("causes")?;
    let history = scratch.0.join("h.sqlite");
    let missing = scratch.0.join("missing.toml").display().to_string();
    let out = faultlab(
        &["run", "--suite", "seed", "--inventory", &missing],
        &history,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    // An agent nobody answers for (a closed port of loopback).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let out = faultlab(&["agents", &closed.to_string()], &history)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Connection refused") && stdout.matches("tcp connect error").count() == 1,
        "{stdout}"
    );
    Ok(())
}

#[test]
fn a_bad_target_is_named_before_anything_starts() -> TestResult {
    let scratch = Scratch::new("targets")?;
    let history = scratch.0.join("h.sqlite");
    let targets = scratch.0.join("app.toml");
    std::fs::write(
        &targets,
        "[[target]]\nname = \"echo\"\naddress = \"tcp://127.0.0.1:7000\"\nreply = \"(\"\n",
    )?;
    let targets = targets.display().to_string();
    for (args, said) in [
        (
            vec!["--target", "server=udp://198.18.1.2:7000"],
            "udp:// is not supported",
        ),
        (
            vec!["--target", "server=nosuch"],
            "no target named \"nosuch\"",
        ),
        (
            vec!["--target", "servr=tcp://127.0.0.1:7000"],
            "no case to run has a role \"servr\"; their roles are client, server",
        ),
        (
            vec!["--bind", "clinet=host-1"],
            "no case to run has a role \"clinet\"",
        ),
        (vec!["--target", "server"], "\"server\" is not ROLE=TARGET"),
        (
            vec!["--targets", &targets, "--target", "server=echo"],
            "target \"echo\": reply",
        ),
    ] {
        let mut all = vec!["run", "--suite", "seed", "--no-history"];
        all.extend(args);
        let out = faultlab(&all, &history)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {stderr}");
        assert!(stderr.contains(said), "{all:?}: {stderr}");
        assert!(!stderr.contains("local lab"), "nothing starts: {stderr}");
    }
    Ok(())
}

#[test]
fn ctrl_c_stops_the_run_and_reports_what_it_has() -> TestResult {
    let scratch = Scratch::new("interrupt")?;
    let slow = scratch.0.join("slow.toml");
    std::fs::write(
        &slow,
        "id = \"X2\"\nname = \"idle\"\ntitle = \"idles\"\nroles = [\"client\", \"server\"]\n\n[[step]]\nrole = \"server\"\ndo = \"listen\"\nas = \"l\"\n\n[[step]]\ndo = \"sleep\"\nms = 20000\n",
    )?;
    let child = Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(["run", "--no-history", &slow.display().to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(1_000));
    let signalled = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    assert!(signalled.success());
    let started = std::time::Instant::now();
    let out = child.wait_with_output()?;
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("X2") && stdout.contains("interrupted before it finished"),
        "{stdout}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heal_all_lifts_every_isolation_of_every_agent() -> TestResult {
    if let Some(why) = faultlab::lab::netns_unavailable() {
        return Err(
            format!("this test needs a network-namespace lab: {why} (CI runs it as root)").into(),
        );
    }
    let exe = faultlab::lab::find_agent()
        .ok_or("faultlab-agent is not built: run cargo test --workspace")?;
    let lab = faultlab::lab::LocalLab::start_netns(&exe, 1)?;
    let address = lab.inventory.agents[0].address.clone();
    let mut client = faultlab::agents::connect(&address).await?;
    for (id, mode) in [("a", 1), ("b", 2)] {
        client
            .isolate(faultlab_proto::v1::IsolateRequest {
                id: id.to_owned(),
                mode,
                port: if id == "a" { 80 } else { 0 },
                deadline_ms: 60_000,
                ..Default::default()
            })
            .await?;
    }
    // A 100 % inbound loss and a held connection's holder go too.
    let test_ip = lab.inventory.agents[0]
        .test_ip
        .ok_or("a namespace host has a test address")?
        .to_string();
    client
        .degrade(faultlab_proto::v1::DegradeRequest {
            id: "lossy".to_owned(),
            address: test_ip,
            deadline_ms: 60_000,
            loss_percent: 100.0,
            direction: faultlab_proto::v1::Direction::In as i32,
            ..Default::default()
        })
        .await?;
    client
        .spawn_holder(faultlab_proto::v1::SpawnHolderRequest {
            label: "held".to_owned(),
            session: String::new(),
        })
        .await?;
    let scratch = Scratch::new("heal")?;
    let out = faultlab(&["heal", "--all", &address], &scratch.0.join("h.sqlite"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("healed: 2 isolation(s), 0 link(s), 1 degradation(s), 1 holder(s)"),
        "{stdout}"
    );
    let again = faultlab(&["heal", "--all", &address], &scratch.0.join("h.sqlite"))?;
    assert!(
        String::from_utf8_lossy(&again.stdout)
            .contains("healed: 0 isolation(s), 0 link(s), 0 degradation(s), 0 holder(s)")
    );
    let nobody = faultlab(
        &["heal", "--all", "127.0.0.1:1"],
        &scratch.0.join("h.sqlite"),
    )?;
    assert_eq!(nobody.status.code(), Some(1));
    Ok(())
}

#[test]
fn a_four_host_lab_runs_cases_at_once_on_disjoint_hosts_with_wire_evidence_and_leaves_nothing()
-> TestResult {
    let _turn = netns_lab_turn()?;
    let scratch = Scratch::new("lab")?;
    let state = scratch.0.join("state").display().to_string();
    let history = scratch.0.join("h.sqlite");
    let up = faultlab(&["lab", "up", "--hosts", "4", "--state", &state], &history)?;
    assert_eq!(
        up.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let status = faultlab(&["lab", "status", "--state", &state], &history)?;
    let listed = String::from_utf8_lossy(&status.stdout);
    assert!(
        listed.contains("4 of 4 agent processes running") && listed.matches(" ok ").count() == 4,
        "{listed}"
    );

    let (run, down) = common::seed_suite_then_down(&state, &history)?;
    let report: serde_json::Value = serde_json::from_slice(&run.stdout)?;
    let not_expected = common::not_expected(&report);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}\n{not_expected:#?}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(report["summary"]["expected"], 15);
    let cases = report["cases"].as_array().ok_or("no cases")?;
    for case in cases {
        assert_eq!(case["wire_evidence"], true, "{}", case["id"]);
        assert!(
            case["wire"].as_array().is_some_and(|wire| !wire.is_empty()),
            "{} has no segments",
            case["id"]
        );
    }
    // Times from the wire are the kernel's: every reader waiting for a FIN
    // or RST noticed it after it arrived (same host, no clock involved),
    // and no segment arrived before it left beyond the offsets' error.
    let mut delays = Vec::new();
    for case in cases {
        for observation in case["observations"].as_array().into_iter().flatten() {
            let detection = &observation["detection"];
            if let Some(delay) = detection["after_arrival_ns"].as_i64() {
                assert_eq!(detection["clocks"], "same-host", "{detection}");
                delays.push((case["id"].clone(), delay));
            }
        }
        if let Some(check) = case["clock_check"].as_object() {
            let violation = check["worst_violation_ns"].as_i64().unwrap_or(i64::MAX);
            let error = check["uncertainty_ns"].as_i64().unwrap_or(0);
            assert!(violation <= error, "{}: {check:?}", case["id"]);
        }
    }
    assert!(delays.len() >= 2, "{delays:?}");
    assert!(delays.iter().all(|(_, delay)| *delay >= 0), "{delays:?}");
    // The plan was printed, on two pairs of hosts.
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(said.contains("plan: 15 cases"), "{said}");
    // Cases that ran at once never shared a host (every host captures, so
    // every case has its hosts to itself), and cases that cut hosts off
    // did run at once: the point of more hosts.
    let window = |case: &serde_json::Value| {
        let start = case["started_ms"].as_u64().unwrap_or(0);
        (start, start + case["duration_ms"].as_u64().unwrap_or(0))
    };
    let hosts = |case: &serde_json::Value| -> Vec<String> {
        case["roles"]
            .as_object()
            .map(|roles| {
                roles
                    .values()
                    .filter_map(|agent| agent.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let cuts_hosts_off = ["S1", "K1", "U1", "F2", "R1"];
    let mut disruptive_at_once = 0;
    for (index, first) in cases.iter().enumerate() {
        for second in &cases[index + 1..] {
            let ((a0, a1), (b0, b1)) = (window(first), window(second));
            if a0 < b1 && b0 < a1 {
                let (mine, theirs) = (hosts(first), hosts(second));
                assert!(
                    mine.iter().all(|host| !theirs.contains(host)),
                    "{} on {mine:?} and {} on {theirs:?} ran at once",
                    first["id"],
                    second["id"]
                );
                let disruptive = |case: &serde_json::Value| {
                    cuts_hosts_off.contains(&case["id"].as_str().unwrap_or_default())
                };
                if disruptive(first) && disruptive(second) {
                    disruptive_at_once += 1;
                }
            }
        }
    }
    assert!(
        disruptive_at_once >= 1,
        "no two cases that cut hosts off ran at once: {said}"
    );

    assert_eq!(down.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&down.stdout).contains("4 namespaces"));
    let namespaces = Command::new("ip").args(["netns", "list"]).output()?;
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains("fll"),
        "namespaces left"
    );
    let links = Command::new("ip").args(["-o", "link"]).output()?;
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(": fll"),
        "links left"
    );
    let again = faultlab(&["lab", "down", "--state", &state], &history)?;
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing was up"));
    Ok(())
}

#[test]
fn lab_down_cleans_up_after_a_crashed_lab() -> TestResult {
    let _turn = netns_lab_turn()?;
    let scratch = Scratch::new("crash")?;
    let state = scratch.0.join("state");
    let state_arg = state.display().to_string();
    let history = scratch.0.join("h.sqlite");
    let up = faultlab(
        &["lab", "up", "--hosts", "2", "--state", &state_arg],
        &history,
    )?;
    assert_eq!(
        up.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // The crash: every agent killed -9, the state files lost.
    let pids = std::fs::read_to_string(state.join("agents.pids"))?;
    for pid in pids.lines() {
        Command::new("kill").args(["-KILL", pid]).status()?;
    }
    std::fs::remove_dir_all(&state)?;
    let down = faultlab(&["lab", "down", "--state", &state_arg], &history)?;
    assert!(
        String::from_utf8_lossy(&down.stdout).contains("2 namespaces"),
        "{}",
        String::from_utf8_lossy(&down.stdout)
    );
    let namespaces = Command::new("ip").args(["netns", "list"]).output()?;
    assert!(!String::from_utf8_lossy(&namespaces.stdout).contains("fll"));

    // The state files lost while the agents live: `lab down` finds them in
    // the lab's namespaces. (It used to delete the namespaces under them:
    // each agent, its listener destroyed, then spun on accept for good.)
    common::succeeded(&faultlab(
        &["lab", "up", "--hosts", "2", "--state", &state_arg],
        &history,
    )?)?;
    let pids: Vec<String> = std::fs::read_to_string(state.join("agents.pids"))?
        .lines()
        .map(str::to_owned)
        .collect();
    std::fs::remove_dir_all(&state)?;
    let down = faultlab(&["lab", "down", "--state", &state_arg], &history)?;
    let said = String::from_utf8_lossy(&down.stdout).into_owned();
    let alive: Vec<&String> = pids
        .iter()
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    assert!(
        alive.is_empty(),
        "agents {alive:?} outlived lab down: {said}"
    );
    assert!(
        said.contains("2 namespaces") && said.contains("agent "),
        "{said}"
    );
    Ok(())
}

/// `lab down` of each state directory when dropped: a test that fails
/// half-way leaves no lab behind.
struct LabsDown(Vec<String>, PathBuf);

impl Drop for LabsDown {
    fn drop(&mut self) {
        for state in &self.0 {
            let _ = faultlab(&["lab", "down", "--state", state], &self.1);
        }
    }
}

/// S2 with the client's close an abort: the same case id, a real change
/// (the server reads ECONNRESET, the wire carries the client's RST).
const S2_ABORTED: &str = r#"id = "S2"
name = "graceful-close"
title = "S2 with an abort where the seed's client closes"
roles = ["client", "server"]

[[step]]
role = "server"
do = "listen"
as = "l"

[[step]]
role = "client"
do = "connect"
to = "l"
as = "c"

[[step]]
role = "server"
do = "accept"
listener = "l"
as = "s"

[[step]]
name = "send"
role = "client"
do = "send"
conn = "c"
messages = { count = 1000, size = 100 }
expect.linux = { outcome = "ok", bytes = 100000 }

[[step]]
do = "sleep"
ms = 200

[[step]]
name = "close"
role = "client"
do = "close"
conn = "c"
mode = "abort"
expect.linux = { outcome = "ok", wire_rst = true }

[[step]]
name = "server-reads"
role = "server"
do = "recv"
conn = "s"
expect.linux = { outcome = "error", error = "ECONNRESET" }
"#;

#[test]
fn two_labs_run_side_by_side_and_a_diff_shows_only_changes_in_meaning() -> TestResult {
    let _turn = netns_lab_turn()?;
    let scratch = Scratch::new("side-by-side")?;
    let history = scratch.0.join("h.sqlite");
    let states = ["a", "b"].map(|lab| scratch.0.join(lab).display().to_string());
    let prefixes = states
        .clone()
        .map(|state| faultlab::lab::lab_prefix(std::path::Path::new(&state)));
    assert_ne!(prefixes[0], prefixes[1]);
    let _down_at_the_end = LabsDown(states.to_vec(), history.clone());
    // Both labs made at once, then the seed suite on both at once.
    let ups = std::thread::scope(|scope| {
        let ups: Vec<_> = states
            .iter()
            .map(|state| {
                let history = &history;
                scope.spawn(move || faultlab(&["lab", "up", "--state", state], history))
            })
            .collect();
        ups.into_iter()
            .map(|up| up.join().map_err(|_| "lab up panicked"))
            .collect::<Result<Vec<_>, _>>()
    })?;
    for up in ups {
        common::succeeded(&up?)?;
    }
    let status_a = faultlab(&["lab", "status", "--state", &states[0]], &history)?;
    let said_a = String::from_utf8_lossy(&status_a.stdout).into_owned();
    let runs = std::thread::scope(|scope| {
        let runs: Vec<_> = states
            .iter()
            .map(|state| {
                let history = &history;
                let inventory = format!("{state}/inventory.toml");
                scope.spawn(move || {
                    faultlab(
                        &[
                            "run",
                            "--suite",
                            "seed",
                            "--inventory",
                            &inventory,
                            "--format",
                            "json",
                        ],
                        history,
                    )
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().map_err(|_| "run panicked"))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let mut subnets = Vec::new();
    for run in runs {
        let run = run?;
        let report: serde_json::Value = serde_json::from_slice(&run.stdout)?;
        assert_eq!(
            run.status.code(),
            Some(0),
            "{}\n{:#?}",
            String::from_utf8_lossy(&run.stderr),
            common::not_expected(&report)
        );
        subnets.push(report["agents"][0]["test_ip"].to_string());
    }
    assert_ne!(subnets[0], subnets[1], "two labs, two subnets");

    // Lab a's down leaves lab b whole.
    let down_a = faultlab(&["lab", "down", "--state", &states[0]], &history)?;
    common::succeeded(&down_a)?;
    let status_b = faultlab(&["lab", "status", "--state", &states[1]], &history)?;
    let said_b = String::from_utf8_lossy(&status_b.stdout).into_owned();
    let status_a_after = faultlab(&["lab", "status", "--state", &states[0]], &history)?;
    let said_a_after = String::from_utf8_lossy(&status_a_after.stdout).into_owned();

    // The same suite on two labs (other subnets, other ports): no change.
    let same = faultlab(&["runs", "diff", "1", "2"], &history)?;
    let same_said = String::from_utf8_lossy(&same.stdout).into_owned();
    // A real change: S2 with an abort, against the seed's S2, on lab b.
    let changed = scratch.0.join("s2-aborted.toml");
    std::fs::write(&changed, S2_ABORTED)?;
    let inventory_b = format!("{}/inventory.toml", states[1]);
    let changed_arg = changed.display().to_string();
    for run in [
        vec![
            "run",
            "--suite",
            "seed",
            "--case",
            "S2",
            "--inventory",
            &inventory_b,
        ],
        vec!["run", &changed_arg, "--inventory", &inventory_b],
    ] {
        common::succeeded(&faultlab(&run, &history)?)?;
    }
    let diff = faultlab(&["runs", "diff", "3", "4"], &history)?;
    let diff_said = String::from_utf8_lossy(&diff.stdout).into_owned();
    let down_b = faultlab(&["lab", "down", "--state", &states[1]], &history)?;
    common::succeeded(&down_b)?;

    assert!(
        said_a.contains(&format!("names {}*", prefixes[0]))
            && said_a.contains(&format!("{} (names {}*)", states[1], prefixes[1])),
        "lab a's status names its own lab and the other: {said_a}"
    );
    assert_eq!(
        status_b.status.code(),
        Some(0),
        "lab b survived a's down: {said_b}"
    );
    assert!(
        said_b.contains("2 of 2 agent processes running"),
        "{said_b}"
    );
    assert_eq!(status_a_after.status.code(), Some(1), "{said_a_after}");
    assert!(
        said_a_after.contains("no lab is up") && said_a_after.contains(&states[1]),
        "{said_a_after}"
    );
    assert_eq!(same.status.code(), Some(0), "{same_said}");
    assert!(same_said.contains("no case changed"), "{same_said}");
    assert_eq!(diff.status.code(), Some(1), "{diff_said}");
    assert!(
        diff_said.starts_with("S2 [")
            && diff_said.contains("server-reads eof")
            && diff_said.contains("server-reads error ECONNRESET")
            && diff_said.contains("wire: FIN from client")
            && diff_said.contains("RST from client"),
        "{diff_said}"
    );
    Ok(())
}

/// This test's turn at a network-namespace lab, or why none can be made.
fn netns_lab_turn() -> Result<std::sync::MutexGuard<'static, ()>, String> {
    match faultlab::lab::netns_unavailable() {
        Some(why) => Err(format!(
            "this test needs root for a network-namespace lab: {why} (CI runs it as root)"
        )),
        None => Ok(lab_turn()),
    }
}

/// Run `case` (whose first fault pulls host-1's cable) on the lab of
/// `inventory` whose names start with `prefix`, and kill -9 the controller
/// once the cable is out (the switch end of host-1's test veth is
/// `<prefix>t0`). What `ip link` then said of host-1's own end.
fn pulled_then_controller_killed(
    inventory: &str,
    prefix: &str,
    case: &std::path::Path,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut controller = common::run_in_background(inventory, case)?;
    let pulled = wait_for_operstate(&format!("{prefix}t0"), "down", Duration::from_secs(30));
    let host_end = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{prefix}h0"),
            "ip",
            "-o",
            "link",
            "show",
            "eth1",
        ])
        .output()?;
    controller.kill()?;
    controller.wait()?;
    if !pulled {
        return Err("the cable was never pulled".into());
    }
    Ok(String::from_utf8_lossy(&host_end.stdout).into_owned())
}

/// Wait (at most `within`) until `link` is in `state`; whether it is.
fn wait_for_operstate(link: &str, state: &str, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while operstate(link) != state && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    operstate(link) == state
}

/// The state of a link of this machine (`up`, `down`, ...).
fn operstate(link: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{link}/operstate"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn a_cable_pulled_at_the_switch_is_plugged_back_by_its_watchdog_after_the_controller_dies()
-> TestResult {
    let _turn = netns_lab_turn()?;
    let scratch = Scratch::new("watchdog")?;
    let state = scratch.0.join("state").display().to_string();
    let history = scratch.0.join("h.sqlite");
    common::succeeded(&faultlab(
        &["lab", "up", "--hosts", "2", "--state", &state],
        &history,
    )?)?;
    let case = scratch.0.join("pull.toml");
    std::fs::write(
        &case,
        r#"id = "W1"
name = "pulled-then-forgotten"
title = "The client's cable is pulled; the controller then dies"
roles = ["client", "server"]
needs = ["link"]
timeout_ms = 120000

[[step]]
role = "server"
do = "listen"
as = "l"

[[step]]
role = "client"
do = "link-down"
deadline_ms = 4000

[[step]]
do = "sleep"
ms = 60000
"#,
    )?;
    let inventory = format!("{state}/inventory.toml");
    let prefix = faultlab::lab::lab_prefix(std::path::Path::new(&state));
    let switch_port = format!("{prefix}t0");
    let host_end = pulled_then_controller_killed(&inventory, &prefix, &case)?;
    let still_down = operstate(&switch_port);
    wait_for_operstate(&switch_port, "up", Duration::from_secs(15));
    let after_kill = operstate(&switch_port);

    // Pulled again with a long deadline, the controller killed again: `lab
    // down` stops the watchdog (it would plug in a cable of the next lab).
    std::fs::write(
        &case,
        std::fs::read_to_string(&case)?.replace("deadline_ms = 4000", "deadline_ms = 600000"),
    )?;
    pulled_then_controller_killed(&inventory, &prefix, &case)?;
    let watchdogs_before = watchdogs(&prefix);
    let down = faultlab(&["lab", "down", "--state", &state], &history)?;
    let watchdogs_after = watchdogs(&prefix);

    // A pulled cable: the host's own end stays UP and loses its carrier.
    assert!(
        host_end.contains("NO-CARRIER") && host_end.contains(",UP"),
        "{host_end}"
    );
    assert_eq!(
        still_down, "down",
        "the controller's death plugs nothing back"
    );
    assert_eq!(
        after_kill, "up",
        "the watchdog plugs it back by the deadline"
    );
    assert_eq!(watchdogs_before, 1, "one watchdog keeps the long deadline");
    assert_eq!(watchdogs_after, 0, "lab down stopped it");
    common::succeeded(&down)?;
    Ok(())
}

/// How many `faultlab lab watchdog` processes of the `lab up` lab whose
/// names start with `prefix` run.
fn watchdogs(prefix: &str) -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|process| std::fs::read(process.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| {
            cmdline.contains(" lab watchdog ") && cmdline.contains(&format!(" {prefix}t"))
        })
        .count()
}

/// The JSON report of `faultlab run --suite SUITE` on the default local lab.
fn suite_on_the_local_lab(suite: &str) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let scratch = Scratch::new(suite)?;
    let history = scratch.0.join("h.sqlite");
    let run = faultlab(
        &["run", "--suite", suite, "--format", "json", "--no-history"],
        &history,
    )?;
    Ok(serde_json::from_slice(&run.stdout)?)
}

#[test]
fn degraded_cases_run_where_the_kernel_has_netem_and_are_skipped_saying_why_elsewhere() -> TestResult
{
    let _turn = netns_lab_turn()?;
    let report = suite_on_the_local_lab("degraded")?;
    let cases = report["cases"].as_array().ok_or("no cases")?;
    assert_eq!(cases.len(), 9);
    for case in cases {
        let reason = case["reason"].as_str().unwrap_or_default();
        // Loss of what a host receives needs only the firewall: it runs
        // everywhere, with the kernel's counts and the very bytes read.
        let loss_only = ["D2", "D3", "D9"].contains(&case["id"].as_str().unwrap_or_default());
        match case["verdict"].as_str() {
            Some("expected") => {}
            // The agent's own word: it tried netem and the kernel said no.
            Some("skipped") if !loss_only => {
                assert!(reason.contains("no sch_netem"), "{reason}")
            }
            verdict => return Err(format!("{}: {verdict:?} {reason}", case["id"]).into()),
        }
    }
    let d9 = common::case_of(cases, "D9")?;
    let observations = d9["observations"].as_array().ok_or("no observations")?;
    let heal = observations
        .iter()
        .find(|observation| observation["step"] == "heal")
        .ok_or("no heal")?;
    let dropped = heal["fault_dropped_packets"].as_u64().unwrap_or_default();
    let sent = heal["fault_sent_packets"].as_u64().unwrap_or_default();
    assert!(dropped > 0 && sent > dropped, "{heal}");
    Ok(())
}

#[test]
fn partitions_cut_only_the_way_and_the_hosts_asked_and_the_wire_shows_it() -> TestResult {
    let _turn = netns_lab_turn()?;
    let report = suite_on_the_local_lab("partitions")?;
    let cases = report["cases"].as_array().ok_or("no cases")?;
    assert_eq!(cases.len(), 12, "the local lab has the five hosts N4 needs");
    // N7 delays SYNs with netem: where the kernel has none, the agent says so.
    let n7 = common::case_of(cases, "N7")?;
    let reason = n7["reason"].as_str().unwrap_or_default();
    if n7["verdict"] == "skipped" {
        assert!(reason.contains("no sch_netem"), "{reason}");
    }
    let wrong: Vec<String> = common::not_expected(&report)
        .into_iter()
        .filter(|wrong| !(wrong.starts_with("\"N7\" \"skipped\"")))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Judged on the wire too: retransmitted data and SYNs, a reset, seen
    // by each host's own capture.
    for id in [
        "N1", "N2", "N3", "N4", "N5", "N6", "N8", "N9", "N10", "N11", "N12",
    ] {
        let case = common::case_of(cases, id)?;
        assert_eq!(case["wire_evidence"], true, "{id}");
    }
    Ok(())
}

#[test]
fn a_lab_of_more_hosts_than_its_address_plan_holds_or_of_none_is_refused() -> TestResult {
    let scratch = Scratch::new("hosts")?;
    let history = scratch.0.join("h.sqlite");
    let state = scratch.0.join("state").display().to_string();
    for hosts in ["0", "241", "300"] {
        let lab_up = ["lab", "up", "--hosts", hosts, "--state", &state];
        let run = ["run", "--suite", "seed", "--hosts", hosts];
        for args in [&lab_up[..], &run[..]] {
            let out = faultlab(args, &history)?;
            let said = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
            assert!(said.contains("1 to 240 hosts"), "{args:?}: {said}");
        }
    }
    Ok(())
}

#[test]
fn a_run_is_in_the_history_from_its_start_and_a_killed_one_is_found_interrupted() -> TestResult {
    // Its killed run leaves a lab for the next to sweep: not beside another lab test.
    let _turn = lab_turn();
    let scratch = Scratch::new("killed-run")?;
    let history = scratch.0.join("h.sqlite");
    // A history that cannot be one stops the run before anything starts.
    let refused = faultlab(
        &["run", "--suite", "seed", "--history", "/proc/version"],
        &history,
    )?;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_ne!(refused.status.code(), Some(0), "{said}");
    assert!(said.contains("/proc/version"), "{said}");
    assert!(!said.contains("local lab"), "nothing starts: {said}");
    assert!(refused.stdout.is_empty(), "no report: {said}");

    let slow = scratch.0.join("slow.toml");
    std::fs::write(
        &slow,
        "id = \"X3\"\nname = \"idle\"\ntitle = \"idles\"\nroles = [\"client\"]\n\n[[step]]\ndo = \"sleep\"\nms = 30000\n",
    )?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(["run", &slow.display().to_string()])
        .env("FAULTLAB_HISTORY", &history)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(scratch.0.join("run.stderr"))?)
        .spawn()?;
    // Running as soon as it starts (bounded: 30 s).
    let started = std::time::Instant::now();
    loop {
        let listed = faultlab(&["runs"], &history)?;
        if String::from_utf8_lossy(&listed.stdout).contains("RUNNING") {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return Err(format!(
                "the run never showed as running: {}{}; the run said: {}",
                String::from_utf8_lossy(&listed.stdout),
                String::from_utf8_lossy(&listed.stderr),
                std::fs::read_to_string(scratch.0.join("run.stderr")).unwrap_or_default()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.id();
    // Its lab is up, agents running in its namespaces (bounded: 30 s).
    while common::processes_in_namespaces_of(pid).len() < 2
        && started.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = common::processes_in_namespaces_of(pid);
    child.kill()?;
    child.wait()?;
    let listed = faultlab(&["runs"], &history)?;
    let said = format!(
        "controller {pid}: {}{}",
        String::from_utf8_lossy(&listed.stdout),
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        said.contains("INTERRUPTED: its controller ended before the run did"),
        "{said}"
    );
    // The next lab sweeps the killed run's: its namespaces, and first the
    // agents it left running in them (no work outlives its owner).
    assert!(left.len() >= 2, "the killed run's agents: {left:?}");
    drop(faultlab::lab::LocalLab::start_netns(
        &faultlab::lab::find_agent().ok_or("no agent")?,
        1,
    )?);
    let still: Vec<&u32> = left
        .iter()
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    assert!(
        still.is_empty(),
        "agents of the killed run left running: {still:?}"
    );
    assert!(common::namespaces_of(pid)?.is_empty());
    Ok(())
}
