//! The HTML report of a real local run, opened in headless Chromium
//! (Debian's, installed by CI): the DOM has the matrix and one SVG ladder per
//! case, nothing fails to load, and a screenshot is kept under target/.

// Tests that run a lab take turns through a std mutex held across awaits:
// each test has a runtime of its own, so no task of another test can be
// blocked by it.
#![allow(clippy::await_holding_lock)]

use faultlab::engine::{self, AgentHandle, Plan, Quiet, RunClock};
use faultlab::lab::{self, LocalLab};
use faultlab::report::html;
use faultlab::suites;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium(
    args: &[&str],
    profile: &Path,
) -> Result<std::process::Output, Box<dyn std::error::Error>> {
    Ok(Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_renders_in_a_real_browser() -> TestResult {
    let _turn = crate::common::lab_turn();
    if !Path::new(CHROMIUM).exists() {
        return Err(
            "this test needs Debian's chromium (apt-get install chromium); CI installs it".into(),
        );
    }
    let exe = lab::find_agent().ok_or("faultlab-agent is not built: run cargo test --workspace")?;
    // Real hosts (with wire evidence) as root, loopback agents otherwise.
    let lab = match lab::netns_unavailable() {
        None => LocalLab::start_netns(&exe, 2)?,
        Some(_) => LocalLab::start(&exe, 2)?,
    };
    let clock = RunClock::start();
    let agents = AgentHandle::connect_all(
        &faultlab::agents::Connector::plain(),
        &lab.inventory,
        &clock,
    )
    .await?;
    let cases: Vec<_> = suites::load("seed")
        .ok_or("no seed suite")??
        .into_iter()
        .filter(|case| ["A1", "C3", "S2", "F1"].contains(&case.id.as_str()))
        .collect();
    let count = cases.len();
    let plan = Plan {
        run_id: faultlab::engine::new_run_id(),
        suite: "seed".to_owned(),
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

    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report");
    std::fs::create_dir_all(&out)?;
    let page = out.join("report.html");
    let rendered = html::render(&report);
    assert!(!rendered.contains("<script"), "the report needs no script");
    assert!(
        !rendered.contains("http://")
            || rendered
                .matches("http://")
                .all(|_| rendered.contains("xmlns=\"http://www.w3.org/2000/svg\""))
    );
    std::fs::write(&page, &rendered)?;
    let url = format!("file://{}", page.display());
    let profile = out.join("profile");

    let dumped = chromium(&["--dump-dom", &url], &profile)?;
    let dom = String::from_utf8_lossy(&dumped.stdout);
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    assert!(dom.contains("id=\"matrix\""), "no matrix in the DOM");
    assert_eq!(
        dom.matches("<svg class=\"ladder\"").count(),
        count,
        "one ladder per case"
    );
    for index in 0..count {
        assert!(
            dom.contains(&format!("href=\"#case-{index}\"")),
            "the matrix links to case {index}"
        );
        assert!(dom.contains(&format!("id=\"case-{index}\"")));
    }
    let errors = String::from_utf8_lossy(&dumped.stderr);
    assert!(
        !errors.contains("Uncaught") && !errors.contains("ERR_FILE_NOT_FOUND"),
        "{errors}"
    );

    let shot = out.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let taken = chromium(
        &[
            "--window-size=1200,1800",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
        &profile,
    )?;
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let size = std::fs::metadata(&shot)?.len();
    assert!(
        size > 20_000,
        "the screenshot is suspiciously small: {size} bytes"
    );
    eprintln!(
        "report: {} · screenshot: {} ({size} bytes)",
        page.display(),
        shot.display()
    );
    Ok(())
}
