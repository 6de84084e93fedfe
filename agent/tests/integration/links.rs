//! Link down/up on real interfaces of network-namespace hosts (needs root).

use crate::common;

use common::netns::NetLab;
use common::{TestResult, outcome};
use faultlab_proto::v1 as pb;
use std::time::{Duration, Instant};
use tonic::Code;

async fn wait_for_link(
    lab: &NetLab,
    host: usize,
    up: bool,
    within: Duration,
) -> Result<Instant, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if lab.link_is_up(host, "test0")? == up {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!(
        "test0 of host {host} never became {}",
        if up { "up" } else { "down" }
    )
    .into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_goes_down_spares_the_control_interface_and_comes_back_even_without_its_agent()
-> TestResult {
    let lab = NetLab::new(2)?;
    let (_, server_test_ip) = lab.add_test_link(0, 1)?;
    let mut client = lab.agent(0, &[]).await?;
    let mut server = lab.agent(1, &["--allow", "link"]).await?;
    let info = server
        .rpc
        .host_info(pb::HostInfoRequest {})
        .await?
        .into_inner();
    assert!(info.capabilities.contains(&"link".to_owned()), "{info:?}");
    let client_holder = client.holder("client").await?;
    let server_holder = server.holder("server").await?;
    let address = format!("{server_test_ip}:7004");
    server.listen_on(server_holder, address.clone()).await?;
    let dial = |timeout_ms| pb::ConnectRequest {
        holder_id: client_holder,
        address: address.clone(),
        options: None,
        timeout_ms,
    };
    assert_eq!(
        outcome(&client.rpc.dial(dial(1_000)).await?.into_inner().observation),
        pb::Outcome::Ok
    );

    let control = server
        .rpc
        .link_down(pb::LinkDownRequest {
            interface: "eth0".to_owned(),
            deadline_ms: 1_000,
            allow_control_interface: false,
            ..Default::default()
        })
        .await;
    let status = control
        .err()
        .ok_or("taking down the control interface must be refused")?;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("control channel"), "{status:?}");

    server
        .rpc
        .link_down(pb::LinkDownRequest {
            interface: "test0".to_owned(),
            deadline_ms: 1_500,
            allow_control_interface: false,
            ..Default::default()
        })
        .await?;
    let downed = Instant::now();
    assert!(!lab.link_is_up(1, "test0")?);
    let cut = client
        .rpc
        .dial(dial(300))
        .await?
        .into_inner()
        .observation
        .ok_or("no observation")?;
    eprintln!(
        "connect over the pulled link: {:?} {}",
        cut.outcome(),
        cut.error_name
    );
    assert_ne!(cut.outcome(), pb::Outcome::Ok);
    // The control channel (eth0) still answers.
    server.rpc.host_info(pb::HostInfoRequest {}).await?;
    // The watchdog outlives the agent.
    server.process.kill();
    let back = wait_for_link(&lab, 1, true, Duration::from_secs(5)).await?;
    eprintln!(
        "link back up {} ms after a 1500 ms link-down",
        (back - downed).as_millis()
    );
    assert!(back - downed >= Duration::from_millis(1_400));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_up_brings_it_back_early_and_only_what_we_took_down() -> TestResult {
    let lab = NetLab::new(2)?;
    let (_, test_address) = lab.add_test_link(0, 1)?;
    let mut server = lab.agent(1, &["--allow", "link"]).await?;
    // By address: the interface that holds the host's test address.
    server
        .rpc
        .link_down(pb::LinkDownRequest {
            address: test_address.to_string(),
            deadline_ms: 60_000,
            ..Default::default()
        })
        .await?;
    assert!(!lab.link_is_up(1, "test0")?);
    server
        .rpc
        .link_up(pb::LinkUpRequest {
            address: test_address.to_string(),
            ..Default::default()
        })
        .await?;
    assert!(lab.link_is_up(1, "test0")?);
    let nowhere = server
        .rpc
        .link_down(pb::LinkDownRequest {
            address: "198.18.255.254".to_owned(),
            deadline_ms: 1_000,
            ..Default::default()
        })
        .await;
    assert_eq!(
        nowhere.err().map(|status| status.code()),
        Some(Code::NotFound)
    );
    server
        .rpc
        .link_down(pb::LinkDownRequest {
            interface: "test0".to_owned(),
            deadline_ms: 60_000,
            allow_control_interface: false,
            ..Default::default()
        })
        .await?;
    let again = server
        .rpc
        .link_down(pb::LinkDownRequest {
            interface: "test0".to_owned(),
            deadline_ms: 60_000,
            allow_control_interface: false,
            ..Default::default()
        })
        .await;
    assert_eq!(
        again.err().map(|status| status.code()),
        Some(Code::FailedPrecondition)
    );
    server
        .rpc
        .link_up(pb::LinkUpRequest {
            interface: "test0".to_owned(),
            ..Default::default()
        })
        .await?;
    assert!(lab.link_is_up(1, "test0")?);
    let never = server
        .rpc
        .link_up(pb::LinkUpRequest {
            interface: "eth0".to_owned(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        never.err().map(|status| status.code()),
        Some(Code::NotFound)
    );
    let bad = server
        .rpc
        .link_down(pb::LinkDownRequest {
            interface: "eth0; reboot".to_owned(),
            deadline_ms: 1_000,
            allow_control_interface: true,
            ..Default::default()
        })
        .await;
    assert_eq!(
        bad.err().map(|status| status.code()),
        Some(Code::InvalidArgument)
    );
    Ok(())
}

/// The routes host `index` has through `test0`, one line each.
fn routes(lab: &NetLab, index: usize) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    Ok(lab
        .exec(index, &["ip", "route", "show", "dev", "test0"])?
        .lines()
        .map(|line| line.replace(" linkdown", "").trim().to_owned())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_route_survives_a_link_down_and_up() -> TestResult {
    let lab = NetLab::new(2)?;
    let (client_ip, server_ip) = lab.add_test_link(0, 1)?;
    // A route through the test link that only an administrator would add:
    // a link set down loses it, and up alone does not bring it back.
    lab.exec(
        1,
        &[
            "ip",
            "route",
            "add",
            "198.19.0.0/16",
            "via",
            &client_ip.to_string(),
            "dev",
            "test0",
        ],
    )?;
    let before = routes(&lab, 1)?;
    assert!(
        before
            .iter()
            .any(|route| route.starts_with("198.19.0.0/16 via")),
        "{before:?}"
    );
    // Every interface's IPv6 routes: each has its own fe80::/64.
    let all_v6 = || -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let mut routes: Vec<String> = lab
            .exec(1, &["ip", "-6", "route", "show"])?
            .lines()
            .map(|line| line.replace(" linkdown", "").trim().to_owned())
            .collect();
        routes.sort();
        Ok(routes)
    };
    let v6_before = all_v6()?;
    assert!(
        v6_before.iter().any(|route| route.contains("dev eth0")),
        "{v6_before:?}"
    );
    let mut server = lab.agent(1, &["--allow", "link"]).await?;
    let down = |deadline_ms| pb::LinkDownRequest {
        address: server_ip.to_string(),
        deadline_ms,
        ..Default::default()
    };
    // Brought up by the agent.
    server.rpc.link_down(down(60_000)).await?;
    let while_down = routes(&lab, 1)?;
    assert!(
        !while_down.iter().any(|route| route.starts_with("198.19.")),
        "the kernel flushed it: {while_down:?}"
    );
    server
        .rpc
        .link_up(pb::LinkUpRequest {
            address: server_ip.to_string(),
            ..Default::default()
        })
        .await?;
    assert_eq!(routes(&lab, 1)?, before, "put back by link-up");
    assert_eq!(all_v6()?, v6_before, "no other interface's route taken");
    // Brought up by the watchdog, the agent gone.
    server.rpc.link_down(down(800)).await?;
    server.process.kill();
    wait_for_link(&lab, 1, true, Duration::from_secs(5)).await?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while routes(&lab, 1)? != before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(routes(&lab, 1)?, before, "put back by the watchdog");
    Ok(())
}

/// The pids of this host's link watchdogs (`faultlab-agent link-watchdog`).
fn watchdogs(lab: &NetLab, index: usize) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let listed = std::process::Command::new("ip")
        .args(["netns", "pids", &lab.namespace(index)])
        .output()?;
    Ok(String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("link-watchdog"))
        })
        .map(str::to_owned)
        .collect())
}

/// What `systemctl kill` does to a unit: the agent and every process of
/// it, its link watchdog too. The agent systemd starts again finds the
/// link's record, keeps it down until its deadline and brings it up then,
/// with its routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_with_its_watchdog_is_replaced_by_one_that_brings_the_link_up_at_its_deadline()
-> TestResult {
    let lab = NetLab::new(2)?;
    lab.add_test_link(0, 1)?;
    let before = routes(&lab, 1)?;
    let mut server = lab.agent(1, &["--allow", "link"]).await?;
    server
        .rpc
        .link_down(pb::LinkDownRequest {
            interface: "test0".to_owned(),
            deadline_ms: 3_000,
            ..Default::default()
        })
        .await?;
    let downed = Instant::now();
    let pids = watchdogs(&lab, 1)?;
    assert_eq!(pids.len(), 1, "one watchdog: {pids:?}");
    server.process.kill();
    for pid in &pids {
        std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status()?;
    }
    let log = std::env::temp_dir().join(format!("faultlab-takeover-{}.log", std::process::id()));
    let _again = lab.agent_auditing_to(1, &["--allow", "link"], &log).await?;
    assert!(
        !lab.link_is_up(1, "test0")?,
        "the new agent keeps the link down until its deadline"
    );
    let back = wait_for_link(&lab, 1, true, Duration::from_secs(10)).await?;
    eprintln!(
        "link back up {} ms after a 3000 ms link-down whose agent and watchdog were killed",
        (back - downed).as_millis()
    );
    assert!(back - downed >= Duration::from_millis(2_900));
    let deadline = Instant::now() + Duration::from_secs(2);
    while routes(&lab, 1)? != before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(routes(&lab, 1)?, before, "its routes are back");
    // The take-over is in the audit trail, with the time that was left.
    let audit = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    assert!(
        audit.lines().any(|line| line.contains(
            "audit caller=\"agent\" rpc=TakeOver capability=- fault=\"test0\" deadline_ms="
        ) && line.contains("result=\"ok\"")),
        "{audit}"
    );
    Ok(())
}
