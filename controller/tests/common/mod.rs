//! Shared by the controller's test binaries.

#![allow(dead_code, missing_docs)]

/// A loopback lab of `agents` agents from the workspace build.
pub fn local_lab(agents: usize) -> Result<faultlab::lab::LocalLab, Box<dyn std::error::Error>> {
    let exe = faultlab::lab::find_agent().ok_or(
        "faultlab-agent is not built: run `cargo test --workspace` (or cargo build -p faultlab-agent)",
    )?;
    Ok(faultlab::lab::LocalLab::start(&exe, agents)?)
}

/// Check a JSON report against `controller/schema/run.schema.json`; the
/// problems found, each with where it is.
pub fn schema_problems(
    report: &serde_json::Value,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schema/run.schema.json"))?;
    let validator = jsonschema::validator_for(&schema)?;
    Ok(validator
        .iter_errors(report)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect())
}

/// Run the `faultlab` binary of this build with its history in `history`.
pub fn faultlab(args: &[&str], history: &std::path::Path) -> std::io::Result<std::process::Output> {
    std::process::Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(args)
        .env("FAULTLAB_HISTORY", history)
        .output()
}

/// [`faultlab`], and the process id it ran under (a local lab it makes
/// names its namespaces `flr<pid>…`).
pub fn faultlab_with_pid(
    args: &[&str],
    history: &std::path::Path,
) -> std::io::Result<(u32, std::process::Output)> {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(args)
        .env("FAULTLAB_HISTORY", history)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    Ok((pid, child.wait_with_output()?))
}

/// Whether `ip netns list` shows a namespace of the local lab that the
/// process `pid` made (other tests' labs may run beside it).
pub fn namespaces_of(pid: u32) -> std::io::Result<Vec<String>> {
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let ours = [format!("flr{pid}h"), format!("flr{pid}x")];
    Ok(String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|line| ours.iter().any(|prefix| line.starts_with(prefix.as_str())))
        .map(str::to_owned)
        .collect())
}

/// The processes (agents, holders) running in the local-lab namespaces
/// that the process `pid` made.
pub fn processes_in_namespaces_of(pid: u32) -> Vec<u32> {
    namespaces_of(pid)
        .unwrap_or_default()
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .flat_map(|namespace| {
            let listed = std::process::Command::new("ip")
                .args(["netns", "pids", namespace])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default();
            listed
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// A run of the scenario file `case` on the lab of `inventory`, in the
/// background (no history, its output discarded): for tests that do
/// something to the lab, or to the controller, while it runs.
pub fn run_in_background(
    inventory: &str,
    case: &std::path::Path,
) -> std::io::Result<std::process::Child> {
    std::process::Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(["run", "--inventory", inventory, "--no-history"])
        .arg(case)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
}

/// The cases of a JSON report that did not come out `expected`, with why.
pub fn not_expected(report: &serde_json::Value) -> Vec<String> {
    report["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|case| case["verdict"] != "expected")
        .map(|case| {
            // A lost or late case quotes its hosts' logs (a VM lab's).
            format!(
                "{} {} {} {} {}",
                case["id"],
                case["verdict"],
                case["reason"],
                case["differences"],
                case["host_logs"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(host, logs)| format!(
                        "\n{host}'s logs:\n{}",
                        logs.as_str().unwrap_or_default()
                    ))
                    .collect::<String>()
            )
        })
        .collect()
}

/// Run the seed suite (JSON report) on the lab `faultlab lab up` keeps in
/// `state`, then take that lab down: (the run, the lab down).
pub fn seed_suite_then_down(
    state: &str,
    history: &std::path::Path,
) -> std::io::Result<(std::process::Output, std::process::Output)> {
    let inventory = format!("{state}/inventory.toml");
    let run = faultlab(
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
    )?;
    let down = faultlab(&["lab", "down", "--state", state], history)?;
    Ok((run, down))
}

/// A whole seed suite wants quiet hosts (its captures and timing bounds
/// suffer when another suite floods the same two cores; guests under TCG
/// take a core each), and `faultlab lab up` makes the one lab of a machine:
/// the tests of one binary that run labs take turns.
static ONE_LAB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Wait for this test's turn at running a lab.
pub fn lab_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `output` of a command that must succeed, or an error with what it said.
pub fn succeeded(output: &std::process::Output) -> Result<(), String> {
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "exit {:?}: {}{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        ))
    }
}

/// The case `id` of a report's cases.
pub fn case_of<'a>(
    cases: &'a [serde_json::Value],
    id: &str,
) -> Result<&'a serde_json::Value, String> {
    cases
        .iter()
        .find(|case| case["id"] == id)
        .ok_or_else(|| format!("no {id}"))
}

/// The JSON report of `suite` run on the lab of `inventory`.
pub fn suite_report(
    suite: &str,
    inventory: &str,
    history: &std::path::Path,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let args = [
        "run",
        "--suite",
        suite,
        "--inventory",
        inventory,
        "--format",
        "json",
    ];
    let run = faultlab(&args, history)?;
    Ok(serde_json::from_slice(&run.stdout)?)
}

/// A scratch directory for one test, and a history file in it.
pub fn scratch(name: &str) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("faultlab-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let history = dir.join("h.sqlite");
    Ok((dir, history))
}
