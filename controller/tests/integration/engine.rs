//! The engine against real agents on loopback: the seed suite, a lost
//! agent, a case out of time, a wrong expectation. The agents come from the
//! workspace build (`cargo test --workspace` builds `faultlab-agent`).

// Tests that run a lab take turns through a std mutex held across awaits:
// each test has a runtime of its own, so no task of another test can be
// blocked by it.
#![allow(clippy::await_holding_lock)]

use crate::common;

use common::local_lab;
use faultlab::engine::{self, AgentHandle, Plan, Quiet, RunClock};
use faultlab::lab::{self, LocalLab};
use faultlab::report::{RunReport, Verdict, junit};
use faultlab::scenario::{self, Scenario};
use faultlab::suites;
use std::sync::Arc;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn plan(
    lab: &LocalLab,
    clock: &RunClock,
    cases: Vec<Scenario>,
) -> Result<Plan, Box<dyn std::error::Error>> {
    let agents =
        AgentHandle::connect_all(&faultlab::agents::Connector::plain(), &lab.inventory, clock)
            .await?;
    Ok(Plan {
        run_id: faultlab::engine::new_run_id(),
        suite: "test".to_owned(),
        cases,
        agents,
        all_bindings: false,
        pinned: Default::default(),
        targets: std::collections::BTreeMap::new(),
        parallel: 4,
        durations: Default::default(),
    })
}

async fn run(
    lab: &LocalLab,
    cases: Vec<Scenario>,
) -> Result<RunReport, Box<dyn std::error::Error>> {
    let clock = RunClock::start();
    let plan = plan(lab, &clock, cases).await?;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    Ok(engine::run(plan, clock, Arc::new(Quiet), stop).await)
}

/// One case of the built-in seed suite.
fn seed_case(id: &str) -> Result<Scenario, Box<dyn std::error::Error>> {
    suites::load("seed")
        .ok_or("no seed suite")??
        .into_iter()
        .find(|case| case.id == id)
        .ok_or_else(|| format!("no seed case {id}").into())
}

fn validate(report: &RunReport) -> TestResult {
    let problems = common::schema_problems(&serde_json::to_value(report)?)?;
    assert!(
        problems.is_empty(),
        "report does not fit the schema: {problems:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_suite_comes_out_as_linux_really_behaves() -> TestResult {
    let lab = local_lab(2)?;
    let cases = suites::load("seed").ok_or("no seed suite")??;
    let report = run(&lab, cases).await?;
    for case in &report.cases {
        let wanted =
            if case.id.starts_with(['K', 'U', 'R']) || ["S1", "F2"].contains(&case.id.as_str()) {
                Verdict::Skipped
            } else {
                Verdict::Expected
            };
        assert_eq!(
            case.verdict, wanted,
            "{} {}: {:?} {:?}",
            case.id, case.name, case.reason, case.differences
        );
    }
    assert_eq!(report.summary.expected, 10);
    assert!(report.passed(false) && !report.passed(true));
    validate(&report)?;
    // Every expected case shows where its decisive call was checked.
    let c3 = report
        .cases
        .iter()
        .find(|case| case.id == "C3")
        .ok_or("no C3")?;
    let reset = c3
        .observations
        .iter()
        .find(|observation| observation.step == "client-reads")
        .ok_or("no client-reads")?;
    assert_eq!(
        (reset.errno, reset.errno_name.as_str()),
        (104, "ECONNRESET")
    );
    assert_eq!(reset.checked.as_deref(), Some("linux (measured)"));
    Ok(())
}

const SLOW: &str = r#"
id = "X1"
name = "slow"
title = "A case that idles long enough for its server's agent to die"
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
do = "sleep"
ms = 1500

[[step]]
role = "server"
do = "send"
conn = "s"
text = "too late"
expect.linux = { outcome = "ok" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_ends_only_its_case() -> TestResult {
    // The slow case's server is pinned to the third agent, which dies; the
    // quick case never uses it, whichever runs first (as root, with
    // captures, cases run one at a time in no fixed order).
    let lab = local_lab(3)?;
    let victim = SLOW
        .replace(
            "roles = [\"client\", \"server\"]",
            "roles = [\"client\", \"victim\"]",
        )
        .replace("role = \"server\"", "role = \"victim\"");
    let slow = scenario::parse("slow.toml", &victim)?;
    let quick = vec![seed_case("S2")?];
    let clock = RunClock::start();
    let mut cases = vec![slow];
    cases.extend(quick);
    let mut plan = plan(&lab, &clock, cases).await?;
    plan.pinned
        .insert("victim".to_owned(), "local-3".to_owned());
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(engine::run(plan, clock, Arc::new(Quiet), stop));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let server_pid = lab.pids()[2];
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &server_pid.to_string()])
        .status()?;
    assert!(killed.success());
    let report = tokio::time::timeout(Duration::from_secs(30), running).await??;

    let slow = report
        .cases
        .iter()
        .find(|case| case.id == "X1")
        .ok_or("no X1")?;
    assert_eq!(slow.verdict, Verdict::AgentLost, "{slow:?}");
    assert!(
        slow.reason.as_deref().unwrap_or("").contains("local-3"),
        "{slow:?}"
    );
    let quick = report
        .cases
        .iter()
        .find(|case| case.id == "S2")
        .ok_or("no S2")?;
    assert_eq!(quick.verdict, Verdict::Expected, "{quick:?}");
    validate(&report)?;
    let xml = junit::render(&report)?;
    assert!(xml.contains("agent-lost"), "{xml}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_out_of_time_is_a_timeout_and_its_holders_are_cleaned_up() -> TestResult {
    let lab = local_lab(2)?;
    let short = SLOW.replace("name = \"slow\"", "name = \"slow\"\ntimeout_ms = 300");
    let report = run(&lab, vec![scenario::parse("short.toml", &short)?]).await?;
    let case = &report.cases[0];
    assert_eq!(case.verdict, Verdict::Timeout, "{case:?}");
    assert!(
        case.duration_ms < 1_500,
        "the timeout must cut the 1.5 s sleep: {case:?}"
    );
    // The case's holders were killed: the agent has none left to reset.
    let mut client = faultlab::agents::connect(&lab.inventory.agents[0].address).await?;
    let reset = client
        .reset(faultlab_proto::v1::ResetRequest {})
        .await?
        .into_inner();
    assert_eq!(reset.holders_killed, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expectation_differs_and_says_how() -> TestResult {
    let lab = local_lab(2)?;
    let s2 = seed_case("S2")?;
    let mut wrong = s2.clone();
    let reads = wrong
        .steps
        .iter_mut()
        .find(|step| step.name == "server-reads")
        .ok_or("no server-reads")?;
    let linux = reads
        .expect
        .get_mut("linux")
        .ok_or("no linux expectation")?;
    linux.bytes = Some(99_999);
    linux.error = Some("ECONNRESET".to_owned());
    let report = run(&lab, vec![wrong]).await?;
    let case = &report.cases[0];
    assert_eq!(case.verdict, Verdict::Differs);
    assert_eq!(
        case.differences,
        [
            "server-reads (recv on linux): error none, expected ECONNRESET",
            "server-reads (recv on linux): 100000 bytes, expected 99999"
        ]
    );
    assert!(!report.passed(false));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_with_no_expectation_names_the_steps_that_went_wrong_unjudged() -> TestResult {
    let lab = local_lab(2)?;
    // A read that waits for data no one sends, and nothing expected.
    let text = r#"id = "N1"
name = "nothing-expected"
title = "A read that times out, and no expectation"
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
name = "waits"
role = "server"
do = "recv"
conn = "s"
timeout_ms = 300
"#;
    let report = run(&lab, vec![scenario::parse("n1.toml", text)?]).await?;
    let case = &report.cases[0];
    assert_eq!(case.verdict, Verdict::Differs);
    assert_eq!(case.differences.len(), 2, "{:?}", case.differences);
    assert!(
        case.differences[0].starts_with("no expectation is written for linux/linux"),
        "{:?}",
        case.differences
    );
    assert!(
        case.differences[1].starts_with("waits (recv) ended timeout after ")
            && case.differences[1].ends_with(" ms, unjudged"),
        "{:?}",
        case.differences
    );
    Ok(())
}

/// A read blocked in the background, bounded from the close that comes
/// after it started.
const BOUNDED_FROM_LATER: &str = r#"id = "L1"
name = "bounded-from-a-later-close"
title = "A blocked read ends within 1 s of the peer's later close"
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
name = "blocked-read"
role = "server"
do = "recv"
conn = "s"
background = true
timeout_ms = 10000
expect.linux = { outcome = "eof", within_ms = 1000, since = "client-closes" }

[[step]]
do = "sleep"
ms = 300

[[step]]
name = "client-closes"
role = "client"
do = "close"
conn = "c"

[[step]]
do = "join"
step = "blocked-read"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_read_is_bounded_from_a_later_step() -> TestResult {
    let lab = local_lab(2)?;
    let case = scenario::parse("l1.toml", BOUNDED_FROM_LATER)?;
    // The same bound from a step the case never reaches is not met.
    let mut unreached = case.clone();
    unreached.id = "L2".to_owned();
    unreached.steps.retain(|step| step.name != "client-closes");
    if let Some(read) = unreached
        .steps
        .iter_mut()
        .find(|step| step.name == "blocked-read")
    {
        read.background = false;
        if let Some(linux) = read.expect.get_mut("linux") {
            linux.outcome = Some(faultlab::scenario::ExpectedOutcome::Timeout);
        }
        if let faultlab::scenario::Action::Socket(faultlab::scenario::SocketCall::Recv {
            timeout_ms,
            ..
        }) = &mut read.action
        {
            *timeout_ms = 200;
        }
    }
    unreached
        .steps
        .retain(|step| !matches!(step.action, faultlab::scenario::Action::Timing(_)));
    let report = run(&lab, vec![case, unreached]).await?;
    let bounded = &report.cases[0];
    assert_eq!(
        bounded.verdict,
        Verdict::Expected,
        "{:?}",
        bounded.differences
    );
    let never = &report.cases[1];
    assert_eq!(never.verdict, Verdict::Differs);
    assert!(
        never
            .differences
            .iter()
            .any(|difference| difference.contains("step client-closes did not run")),
        "{:?}",
        never.differences
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_bindings_play_a_case_on_every_ordered_pair() -> TestResult {
    let lab = local_lab(3)?;
    let s2 = vec![seed_case("S2")?];
    let clock = RunClock::start();
    let mut plan = plan(&lab, &clock, s2).await?;
    plan.all_bindings = true;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let report = engine::run(plan, clock, Arc::new(Quiet), stop).await;
    let mut pairs: Vec<String> = report
        .cases
        .iter()
        .map(|case| format!("{}>{}", case.roles["client"], case.roles["server"]))
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            "local-1>local-2",
            "local-1>local-3",
            "local-2>local-1",
            "local-2>local-3",
            "local-3>local-1",
            "local-3>local-2"
        ]
    );
    for case in &report.cases {
        assert_eq!(
            case.verdict,
            Verdict::Expected,
            "{} on {:?}: {:?} {:?}",
            case.id,
            case.roles,
            case.reason,
            case.differences
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_role_always_gets_its_agent() -> TestResult {
    let lab = local_lab(3)?;
    let s2 = vec![seed_case("S2")?];
    let clock = RunClock::start();
    let mut plan = plan(&lab, &clock, s2).await?;
    plan.pinned
        .insert("server".to_owned(), "local-3".to_owned());
    let names: Vec<Vec<String>> = plan
        .bindings(&plan.cases[0])
        .iter()
        .map(|binding| binding.iter().map(|agent| agent.name.clone()).collect())
        .collect();
    assert_eq!(names, [["local-1", "local-3"]]);
    plan.all_bindings = true;
    assert_eq!(plan.bindings(&plan.cases[0]).len(), 2);
    plan.pinned.insert("server".to_owned(), "nobody".to_owned());
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let report = engine::run(plan, clock, Arc::new(Quiet), stop).await;
    assert_eq!(
        report.cases[0].verdict,
        Verdict::Skipped,
        "{:?}",
        report.cases[0]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_expectations_are_judged_from_the_captures() -> TestResult {
    let _turn = crate::common::lab_turn();
    if let Some(why) = lab::netns_unavailable() {
        return Err(
            format!("this test needs a network-namespace lab: {why} (CI runs it as root)").into(),
        );
    }
    let exe = lab::find_agent().ok_or("faultlab-agent is not built: run cargo test --workspace")?;
    let lab = LocalLab::start_netns(&exe, 2)?;
    let mut a1 = seed_case("A1")?;
    let right = run(&lab, vec![a1.clone()]).await?;
    let case = &right.cases[0];
    assert!(case.wire_evidence, "{case:?}");
    assert_eq!(case.verdict, Verdict::Expected, "{:?}", case.differences);
    assert!(case.wire.iter().any(|segment| segment.flags.contains('R')));
    validate(&right)?;

    // Claim the abort sends a FIN and no RST: the wire says otherwise.
    let abort = a1
        .steps
        .iter_mut()
        .find(|step| step.name == "abort")
        .ok_or("no abort")?;
    let linux = abort
        .expect
        .get_mut("linux")
        .ok_or("no linux expectation")?;
    linux.wire_rst = Some(false);
    linux.wire_fin = Some(true);
    let wrong = run(&lab, vec![a1]).await?;
    assert_eq!(
        wrong.cases[0].differences,
        [
            "abort (close on linux): wire: this host sent a RST, expected none",
            "abort (close on linux): wire: this host sent no FIN, expected one"
        ]
    );
    Ok(())
}

/// Two hosts, one released moment: the client's read and the server's
/// answer start together. Played one after the other, the read would time
/// out before the answer was sent.
const TOGETHER: &str = r#"
id = "T1"
name = "released-together"
title = "A read and the answer it waits for start at one moment"
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
name = "read"
role = "client"
do = "recv"
conn = "c"
mode = "once"
timeout_ms = 1500
expect.linux = { outcome = "ok", bytes = 6 }

[[step]]
name = "answer"
role = "server"
do = "send"
conn = "s"
text = "answer"
with = "read"
expect.linux = { outcome = "ok", bytes = 6 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_released_together_start_at_one_moment() -> TestResult {
    let lab = local_lab(2)?;
    let report = run(&lab, vec![scenario::parse("together.toml", TOGETHER)?]).await?;
    let case = &report.cases[0];
    assert_eq!(case.verdict, Verdict::Expected, "{case:#?}");
    let at = |step: &str| {
        case.observations
            .iter()
            .find(|observation| observation.step == step)
            .ok_or_else(|| format!("no observation of {step}"))
    };
    let (read, answer) = (at("read")?, at("answer")?);
    // The answer started before the read ended (it is what ended it).
    assert!(
        answer.t_ns < read.t_ns + i64::try_from(read.duration_ns)?,
        "{read:?} {answer:?}"
    );
    // Both carry the one moment they were released at; the others none.
    assert!(read.released_ns.is_some(), "{read:?}");
    assert_eq!(read.released_ns, answer.released_ns);
    assert!(at("3-accept")?.released_ns.is_none());
    validate(&report)?;
    let table = faultlab::report::terminal::render(&report, false);
    assert!(table.contains("released: 2 steps"), "{table}");
    Ok(())
}
