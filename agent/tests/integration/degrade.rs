//! Degradations on real interfaces. Needs root.
//!
//! A degradation gives an interface back the queueing it had, also one set
//! by hand: here a `tbf` root on a veth end (no addresses: it carries no
//! traffic). On a kernel with sch_prio and sch_netem the degradation is
//! made and healed; on one without (this project's CI machines have
//! neither), it fails, and the `tbf` must be there all the same. The VM
//! lab's degraded suite heals kernel-made roots on a kernel that has them.
//!
//! Without netem an agent still offers loss of what its host receives,
//! through nftables, with the deadline kept by the kernel: tested here on
//! namespace hosts, agent killed mid-fault.
#![cfg(unix)]

use crate::common;

use common::netns::{CONTROL_PORT, NetLab};
use common::{Host, TestResult};
use faultlab_agent::degrade::tc::Tc;
use faultlab_agent::degrade::{Impairment, Selection, Shaper as _};
use faultlab_proto::v1 as pb;
use std::process::Command;
use std::time::{Duration, Instant};

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| error.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A veth pair of this test's, removed on drop.
struct Pair(String);

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.0]);
    }
}

/// The root qdisc's line without its reference count.
fn root(interface: &str) -> Result<String, String> {
    let shown = run("tc", &["qdisc", "show", "dev", interface, "root"])?;
    Ok(shown
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("refcnt 2 ", ""))
}

#[test]
fn an_interface_gets_back_the_root_qdisc_set_by_hand() -> TestResult {
    if let Some(why) = common::netns::missing_preconditions() {
        return Err(why.into());
    }
    let id = std::process::id() % 100_000;
    let (name, peer) = (format!("fldt{id}"), format!("fldu{id}"));
    run(
        "ip",
        &["link", "add", &name, "type", "veth", "peer", "name", &peer],
    )?;
    let _pair = Pair(name.clone());
    run(
        "tc",
        &[
            "qdisc", "add", "dev", &name, "root", "handle", "8001:", "tbf", "rate", "10mbit",
            "burst", "32kbit", "latency", "50ms",
        ],
    )?;
    let before = root(&name)?;
    assert!(before.contains("tbf 8001: root"), "{before}");

    let shaper = Tc {
        exe: env!("CARGO_BIN_EXE_faultlab-agent").into(),
        control_port: 0,
    };
    let impairment = Impairment {
        delay: Duration::from_millis(50),
        ..Impairment::default()
    };
    match shaper.degrade(
        "d1",
        &name,
        &impairment,
        &Selection::default(),
        Duration::from_secs(10),
    ) {
        Ok(applied) => {
            assert!(applied.contains("netem"), "{applied}");
            assert!(!root(&name)?.contains("tbf"), "degraded, the root is ours");
            shaper.heal(&name)?;
        }
        // A kernel without the modules says so.
        Err(error) => assert!(
            error.to_string().contains("qdisc kind is unknown"),
            "{error}"
        ),
    }
    assert_eq!(root(&name)?, before);
    assert!(
        shaper.leftovers().iter().all(|left| left.interface != name),
        "nothing is left to heal"
    );
    Ok(())
}

fn loss(
    id: &str,
    address: std::net::Ipv4Addr,
    percent: f64,
    deadline_ms: u32,
) -> pb::DegradeRequest {
    pb::DegradeRequest {
        id: id.to_owned(),
        address: address.to_string(),
        deadline_ms,
        loss_percent: percent,
        direction: pb::Direction::In as i32,
        ..pb::DegradeRequest::default()
    }
}

/// Whether `address` answers a connect from `client` within `timeout_ms`
/// (an accept, or a refusal once nothing listens there).
async fn answers(
    client: &mut Host,
    holder: u64,
    address: &str,
    timeout_ms: u32,
) -> Result<bool, Box<dyn std::error::Error>> {
    let (outcome, error) = client.dial_within(holder, address, timeout_ms).await?;
    Ok(outcome == pb::Outcome::Ok || error == "ECONNREFUSED")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_netem_loss_is_dropped_by_nftables_until_its_deadline_even_if_the_agent_dies()
-> TestResult {
    let lab = NetLab::new(2)?;
    let mut client = lab.agent(0, &[]).await?;
    let mut server = lab.agent(1, &["--allow", "degrade"]).await?;
    let info = server
        .rpc
        .host_info(pb::HostInfoRequest {})
        .await?
        .into_inner();
    assert!(info.capabilities.iter().any(|c| c == "loss"), "{info:?}");
    if info.capabilities.iter().any(|c| c == "degrade") {
        // This kernel has netem, so the agent uses it (the VM lab tests
        // that path); the firewall's way is for kernels without.
        eprintln!("this kernel has sch_netem: the nftables path is not used here");
        return Ok(());
    }
    let why = info.unavailable.join("; ");
    assert!(
        why.contains("degrade: this kernel has no sch_netem"),
        "{why}"
    );

    let server_holder = server.holder("server").await?;
    let listener = server
        .listen_on(server_holder, format!("{}:0", lab.ip(1)))
        .await?;
    let address = listener.local_address.clone();
    let client_holder = client.holder("client").await?;
    assert!(answers(&mut client, client_holder, &address, 1_000).await?);

    // What it cannot do is refused, saying why: anything but loss on what
    // arrives, anything at all on what leaves.
    let mut delayed = loss("slow", lab.ip(1), 0.0, 5_000);
    delayed.delay_us = 50_000;
    let mut sent_loss = loss("out", lab.ip(1), 10.0, 5_000);
    sent_loss.direction = pb::Direction::Out as i32;
    for (request, said) in [
        (delayed, "can only be lost"),
        (
            sent_loss,
            "cannot degrade what this host sends: this kernel has no sch_netem",
        ),
    ] {
        let refused = server.rpc.degrade(request).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains(said), "{refused:?}");
    }

    // All the server receives is dropped: the clients' SYNs too, so
    // connects time out; its gRPC requests arrive by the same interface
    // and are still answered.
    let deadline_ms = 3_000;
    let made = Instant::now();
    let reply = server
        .rpc
        .degrade(loss("all", lab.ip(1), 100.0, deadline_ms))
        .await?
        .into_inner();
    assert_eq!(reply.mechanism, "nftables numgen random drop on arrival");
    assert_eq!(reply.interface, "eth0");
    assert!(
        reply.applied.contains("iifname @lossy"),
        "{}",
        reply.applied
    );
    assert!(!answers(&mut client, client_holder, &address, 300).await?);
    server.rpc.host_info(pb::HostInfoRequest {}).await?;

    // The agent dies; the kernel ends the loss at the deadline.
    server.process.kill();
    let mut healed_after = None;
    for _ in 0..100 {
        if made.elapsed() > Duration::from_millis(u64::from(deadline_ms) + 5_000) {
            break;
        }
        if answers(&mut client, client_holder, &address, 100).await? {
            healed_after = Some(made.elapsed());
            break;
        }
    }
    let healed_after = healed_after.ok_or("the loss outlived its deadline")?;
    assert!(
        healed_after >= Duration::from_millis(u64::from(deadline_ms) - 100),
        "healed before the deadline: {healed_after:?}"
    );
    eprintln!("loss ended {healed_after:?} after it was made (deadline {deadline_ms} ms)");
    let tables = lab.exec(1, &["nft", "list", "tables"])?;
    assert!(
        tables.contains("faultlab_degrade"),
        "the dead agent's chain is still there: {tables}"
    );

    // The next agent removes what the dead one left; a loss it makes and
    // restores counts what it met and dropped.
    let mut server = lab.agent(1, &["--allow", "degrade"]).await?;
    let tables = lab.exec(1, &["nft", "list", "tables"])?;
    assert!(!tables.contains("faultlab_degrade"), "{tables}");
    let server_holder = server.holder("server").await?;
    let listener = server
        .listen_on(server_holder, format!("{}:{}", lab.ip(1), CONTROL_PORT + 1))
        .await?;
    server
        .rpc
        .degrade(loss("half", lab.ip(1), 50.0, 30_000))
        .await?;
    let mut made_it = 0;
    for _ in 0..20 {
        if answers(&mut client, client_holder, &listener.local_address, 100).await? {
            made_it += 1;
        }
    }
    let healed = server
        .rpc
        .restore(pb::RestoreRequest {
            id: "half".to_owned(),
        })
        .await?
        .into_inner();
    assert!(
        healed.counters.contains("numgen random"),
        "{}",
        healed.counters
    );
    assert!(
        healed.dropped_packets > 0 && healed.sent_packets > 0,
        "{healed:?} ({made_it} of 20 connects made it)"
    );
    assert!(
        made_it > 0 && made_it < 20,
        "{made_it} of 20 connects made it through 50 % loss"
    );
    let tables = lab.exec(1, &["nft", "list", "tables"])?;
    assert!(
        !tables.contains("faultlab_degrade"),
        "restored, nothing is left: {tables}"
    );
    Ok(())
}
