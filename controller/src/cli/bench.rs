//! `faultlab bench`: the engine's numbers on a local lab (fan-out skew,
//! release skew against the machine's floor, idle or under a load made on
//! purpose, memory, suite overhead), or the suite's overhead alone on any
//! inventory's lab.

use super::TlsArgs;
use super::say;
use anyhow::bail;
use faultlab::agents::Connector;
use faultlab::bench::{self, Spread};
use faultlab::engine::{AgentHandle, RunClock};
use faultlab::inventory::Inventory;
use faultlab::lab::{self, LabError, LocalLab};
use faultlab::scenario::Scenario;
use faultlab::suites;
use std::io::Write as _;
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
    /// Times to repeat the sequential suite run (0: not at all).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Times to repeat the release and its floor (their samples pooled).
    #[arg(long, default_value_t = 5)]
    releases: usize,
    /// CPU-bound busy loops running beside the agents while the fan-out
    /// and the releases are measured (a busy host, reproducibly).
    #[arg(long, default_value_t = 0)]
    load: usize,
    /// Measure the seed suite's overhead on this inventory's agents (the
    /// first two, e.g. a lab made by `faultlab lab up`) rather than on a
    /// local loopback lab: only the suite rounds run (the fan-out and the
    /// release measure this machine against its own floor).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["agents", "load"])]
    inventory: Option<std::path::PathBuf>,
}

/// Run every measurement and print it; whether every case came out expected.
pub async fn bench(args: &BenchArgs, tls: &TlsArgs) -> anyhow::Result<bool> {
    let seed = suites::load("seed").unwrap_or(Ok(Vec::new()))?;
    if let Some(path) = &args.inventory {
        let inventory = Inventory::load(path)?;
        let connector = tls.connector(Some(&inventory))?;
        let clock = RunClock::start();
        let handles = AgentHandle::connect_all(&connector, &inventory, &clock).await?;
        if handles.len() < 2 {
            bail!("{}: the suite needs two agents", path.display());
        }
        return suite_rounds(&seed, &handles[..2], args.rounds, clock).await;
    }
    let Some(fanned) = seed.iter().find(|scenario| scenario.id == args.case) else {
        bail!("no seed case {:?}", args.case);
    };
    let exe = lab::find_agent().ok_or(LabError::NoAgent)?;
    let local = LocalLab::start(&exe, args.agents.max(2))?;
    let clock = RunClock::start();
    let handles = AgentHandle::connect_all(&Connector::plain(), &local.inventory, &clock).await?;
    let load = bench::Load::start(args.load);
    if args.load > 0 {
        say!("load: {} busy loops beside the agents", args.load);
    }
    let fanned_out = fanout(fanned, &handles, clock).await?;
    let released = release(&handles, &exe, args.releases.max(1), clock).await?;
    drop(load);
    if let Some((rss, peak)) = bench::own_memory_kib() {
        say!(
            "controller memory with {} agents connected: RSS {:.1} MiB, peak {:.1} MiB",
            handles.len(),
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
    let suite_expected = suite_rounds(&seed, &handles[..2], args.rounds, clock).await?;
    Ok(fanned_out && released && suite_expected)
}

/// The seed suite `rounds` times, one case at a time on `agents`: its wall
/// time against its inherent waits; whether every case came out expected.
async fn suite_rounds(
    seed: &[Scenario],
    agents: &[Arc<AgentHandle>],
    rounds: usize,
    clock: RunClock,
) -> anyhow::Result<bool> {
    let mut all_expected = true;
    for round in 1..=rounds {
        let timing = bench::suite(seed, agents, clock).await;
        all_expected &= timing.expected == timing.cases;
        let most_over: Vec<String> = timing
            .most_over
            .iter()
            .map(|(case, ms)| format!("{case} +{ms} ms"))
            .collect();
        say!(
            "suite round {round}: {} cases one at a time ({} expected): {:.0} ms wall, {} ms inherent waits: {:.2}x (most over: {})",
            timing.cases,
            timing.expected,
            timing.wall_ms,
            timing.inherent_ms,
            timing.wall_ms / timing.inherent_ms.max(1) as f64,
            most_over.join(", ")
        );
    }
    Ok(all_expected)
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

/// Every agent acting at one released moment, `times` times, against the
/// machine's floor (as many bare processes doing the same act); whether
/// every release came out expected.
async fn release(
    handles: &[Arc<AgentHandle>],
    agent_exe: &std::path::Path,
    times: usize,
    clock: RunClock,
) -> anyhow::Result<bool> {
    let pairs = handles.len() / 2;
    let release_case = bench::release_case(pairs * 2)
        .map_err(|errors| anyhow::anyhow!("the release case does not parse: {errors}"))?;
    let (mut skews, mut late, mut floors) = (Vec::new(), Vec::new(), Vec::new());
    let mut all_expected = true;
    for _ in 0..times {
        let release = bench::release(&release_case, handles, clock).await;
        if release.verdict != faultlab::report::Verdict::Expected {
            all_expected = false;
            say!(
                "release: {:?}: {}",
                release.verdict,
                release.problems.join("; ")
            );
        }
        skews.extend(release.skew_ns);
        late.extend(release.lateness_ns);
        floors.extend(bench::act_floor(agent_exe, pairs * 2)?);
    }
    let (skew, late, floor) = (Spread::of(skews), Spread::of(late), Spread::of(floors));
    say!(
        "release: {} agents send 1 byte at one released moment, {times} times: skew p50 {:.0} us, p99 {:.0} us, max {:.0} us: p99 {:.1}x the floor",
        pairs * 2,
        skew.p50_us,
        skew.p99_us,
        skew.max_us,
        skew.p99_us / floor.p99_us.max(1.0)
    );
    print_spread("after the moment (clock offsets included)", &late)?;
    print_spread(
        &format!(
            "floor ({} bare processes send 1 byte at one moment, waiting as agents do)",
            pairs * 2
        ),
        &floor,
    )?;
    Ok(all_expected)
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
