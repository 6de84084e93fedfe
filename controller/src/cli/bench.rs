//! `faultlab bench`: the engine's numbers on a local lab (fan-out skew,
//! release skew against the machine's floor, memory, suite overhead).

use super::say;
use anyhow::bail;
use faultlab::agents::Connector;
use faultlab::bench::{self, Spread};
use faultlab::engine::{AgentHandle, RunClock};
use faultlab::lab::{self, LabError, LocalLab};
use faultlab::scenario::Scenario;
use faultlab::suites;
use std::io::Write;
use std::sync::Arc;

/// What to measure.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Agents for the fan-out (pairs = agents / 2).
    #[arg(long, default_value_t = 64)]
    agents: usize,
    /// The case the fan-out plays on every pair.
    #[arg(long, default_value = "C1")]
    case: String,
    /// Times to repeat the sequential suite run.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// When to wake.
#[derive(clap::Args)]
pub struct WakeArgs {
    /// The moment, in ns since the Unix epoch.
    at_unix_ns: u128,
}

/// Run every measurement and print it; whether every case came out expected.
pub async fn bench(args: &BenchArgs) -> anyhow::Result<bool> {
    let seed = suites::load("seed").unwrap_or(Ok(Vec::new()))?;
    let Some(fanned) = seed.iter().find(|scenario| scenario.id == args.case) else {
        bail!("no seed case {:?}", args.case);
    };
    let exe = lab::find_agent().ok_or(LabError::NoAgent)?;
    let local = LocalLab::start(&exe, args.agents.max(2))?;
    let clock = RunClock::start();
    let handles = AgentHandle::connect_all(&Connector::plain(), &local.inventory, &clock).await?;
    let fanned_out = fanout(fanned, &handles, clock).await?;
    let released = release(&handles, clock).await?;
    if let Some((rss, peak)) = bench::own_memory_kib() {
        say!(
            "controller memory with {} agents connected: RSS {:.1} MiB, peak {:.1} MiB",
            handles.len(),
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
    for round in 1..=args.rounds {
        let timing = bench::suite(&seed, &handles[..2], clock).await;
        say!(
            "suite round {round}: {} cases one at a time ({} expected): {:.0} ms wall, {} ms inherent waits: {:.2}x",
            timing.cases,
            timing.expected,
            timing.wall_ms,
            timing.inherent_ms,
            timing.wall_ms / timing.inherent_ms.max(1) as f64
        );
    }
    Ok(fanned_out && released)
}

/// One process of the wake-up floor: sleep until the moment, print how late.
pub fn wake(args: &WakeArgs) -> anyhow::Result<bool> {
    let late = bench::wake_at(args.at_unix_ns);
    let mut out = std::io::stdout();
    writeln!(out, "{late}")?;
    out.flush()?;
    // Exiting is work too: stay until the others have woken.
    std::thread::sleep(std::time::Duration::from_millis(500));
    Ok(true)
}

/// The case on every pair at once; whether all came out expected.
async fn fanout(
    fanned: &Scenario,
    handles: &[Arc<AgentHandle>],
    clock: RunClock,
) -> anyhow::Result<bool> {
    let result = bench::fanout(fanned, handles, clock).await;
    say!(
        "fan-out: {} on {} pairs at once ({} agents): {} expected, {:.0} ms wall",
        fanned.id,
        result.pairs,
        handles.len(),
        result.expected,
        result.wall_ms
    );
    print_spread(
        "hand-off (step end on one host -> next step start on the other)",
        &result.handoff,
    )?;
    print_spread("spread (same step's start across pairs)", &result.spread)?;
    Ok(result.expected == result.pairs)
}

/// Every agent acting at one released moment, against the machine's floor;
/// whether the release case came out expected.
async fn release(handles: &[Arc<AgentHandle>], clock: RunClock) -> anyhow::Result<bool> {
    let pairs = handles.len() / 2;
    let release_case = bench::release_case(pairs * 2)
        .map_err(|errors| anyhow::anyhow!("the release case does not parse: {errors}"))?;
    let release = bench::release(&release_case, handles, clock).await;
    say!(
        "release: {} agents act at one released moment ({:?}{}): skew p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        release.agents,
        release.verdict,
        if release.problems.is_empty() {
            String::new()
        } else {
            format!(": {}", release.problems.join("; "))
        },
        release.skew.p50_us,
        release.skew.p99_us,
        release.skew.max_us
    );
    print_spread(
        "after the moment (clock offsets included)",
        &release.lateness,
    )?;
    let floor = bench::wake_floor(&std::env::current_exe()?, release.agents.max(2))?;
    say!(
        "  floor: {} bare processes woken at one moment on this machine: spread p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        floor.samples,
        floor.p50_us,
        floor.p99_us,
        floor.max_us
    );
    Ok(release.verdict == faultlab::report::Verdict::Expected)
}

fn print_spread(what: &str, spread: &Spread) -> anyhow::Result<()> {
    say!(
        "  {what}: p50 {:.0} us, p99 {:.0} us, max {:.0} us ({} samples)",
        spread.p50_us,
        spread.p99_us,
        spread.max_us,
        spread.samples
    );
    Ok(())
}
