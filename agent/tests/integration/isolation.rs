//! Isolation on real hosts: network namespaces made by each test (198.18.0.0/15
//! only, removed after), agents inside them, nftables for real. Needs root;
//! fails with a clear message otherwise.

use crate::common;

use common::netns::{CONTROL_PORT, NetLab};
use common::{Host, TestResult, outcome};
use faultlab_proto::v1 as pb;
use pb::{IsolationMode, Outcome};
use std::time::{Duration, Instant};

fn isolate(id: &str, mode: IsolationMode, deadline_ms: u32) -> pb::IsolateRequest {
    pb::IsolateRequest {
        id: id.to_owned(),
        mode: mode as i32,
        peer: String::new(),
        port: 0,
        direction: pb::Direction::Both as i32,
        deadline_ms,
        peer_port: 0,
        include_control_channel: false,
        connections: pb::Connections::All as i32,
    }
}

/// Dial `address` from `host` with a short timeout: the observation's outcome and error name.
async fn dial(
    host: &mut Host,
    holder: u64,
    address: &str,
    timeout_ms: u32,
) -> Result<(Outcome, String), Box<dyn std::error::Error>> {
    Ok(host.dial_within(holder, address, timeout_ms).await?)
}

/// Dial until the outcome is `wanted` (at most `within`); when it came.
async fn dial_until(
    host: &mut Host,
    holder: u64,
    address: &str,
    wanted: Outcome,
    within: Duration,
) -> Result<Instant, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + within;
    // A dropped SYN is retried by the kernel only after a second: dial
    // anew every ~30 ms instead, which bounds the measurement's resolution.
    while Instant::now() < deadline {
        if dial(host, holder, address, 25).await?.0 == wanted {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("{address} never gave {wanted:?} within {within:?}").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropping_host_times_connects_out_keeps_its_control_channel_and_heals_at_its_deadline()
-> TestResult {
    let lab = NetLab::new(2)?;
    let mut client = lab.agent(0, &[]).await?;
    let mut server = lab.agent(1, &["--allow", "isolate"]).await?;
    let info = server
        .rpc
        .host_info(pb::HostInfoRequest {})
        .await?
        .into_inner();
    assert!(
        info.capabilities.contains(&"isolate".to_owned()),
        "{info:?}"
    );
    let holder = client.holder("client").await?;
    let server_holder = server.holder("server").await?;
    let listening = server
        .listen_on(server_holder, format!("{}:7000", lab.ip(1)))
        .await?;
    assert_eq!(
        dial(&mut client, holder, &listening.local_address, 1_000)
            .await?
            .0,
        Outcome::Ok
    );

    server
        .rpc
        .isolate(isolate("cut", IsolationMode::Drop, 2_000))
        .await?;
    let isolated_at = Instant::now();
    assert_eq!(
        dial(&mut client, holder, &listening.local_address, 500)
            .await?
            .0,
        Outcome::Timeout
    );
    // The control channel is exempt: the agent answers while its host is cut off.
    let during = server
        .rpc
        .host_info(pb::HostInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(during.pid, info.pid);
    let healed_at = dial_until(
        &mut client,
        holder,
        &listening.local_address,
        Outcome::Ok,
        Duration::from_secs(5),
    )
    .await?;
    let took = healed_at - isolated_at;
    eprintln!(
        "deadline 2000 ms, traffic flowed again after {} ms",
        took.as_millis()
    );
    assert!(
        took >= Duration::from_millis(1_900),
        "healed too early: {took:?}"
    );
    Ok(())
}

/// Whether the process `pid` has libnftables mapped.
fn has_libnftables(pid: u32) -> Result<bool, std::io::Error> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/maps"))?.contains("libnftables"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libnftables_is_loaded_for_a_run_unloaded_when_idle_and_loaded_again() -> TestResult {
    let lab = NetLab::new(2)?;
    let mut client = lab.agent(0, &[]).await?;
    let mut server = lab.agent(1, &["--allow", "isolate"]).await?;
    let pid = server.process.pid();
    let holder = client.holder("client").await?;
    let server_holder = server.holder("server").await?;
    let address = format!("{}:7009", lab.ip(1));
    server.listen_on(server_holder, address.clone()).await?;
    // Where the host has no library the agent runs nft: nothing to see.
    let known = std::process::Command::new("ldconfig").arg("-p").output()?;
    if !String::from_utf8_lossy(&known.stdout).contains("libnftables.so.1") {
        eprintln!("skipped: this host has no libnftables");
        return Ok(());
    }
    for round in ["first", "after-unload"] {
        server
            .rpc
            .isolate(isolate(round, IsolationMode::Reject, 60_000))
            .await?;
        assert!(has_libnftables(pid)?, "{round}: in use, loaded");
        let refused = dial(&mut client, holder, &address, 2_000).await?;
        assert_eq!(refused.0, Outcome::Error, "{round}");
        server
            .rpc
            .heal(pb::HealRequest {
                id: round.to_owned(),
                all: false,
            })
            .await?;
        assert_eq!(elements_in_place(&lab, 1)?, 0, "{round}");
        // Ten seconds after its last command it goes (bounded wait).
        let idle = Instant::now();
        while has_libnftables(pid)? && idle.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            !has_libnftables(pid)?,
            "{round}: still loaded after {:?}",
            idle.elapsed()
        );
    }
    assert_eq!(
        dial(&mut client, holder, &address, 1_000).await?.0,
        Outcome::Ok
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejecting_host_refuses_at_once_and_heal_lifts_it_early() -> TestResult {
    let lab = NetLab::new(2)?;
    let mut client = lab.agent(0, &[]).await?;
    let mut server = lab.agent(1, &["--allow", "isolate"]).await?;
    let holder = client.holder("client").await?;
    let server_holder = server.holder("server").await?;
    let address = format!("{}:7001", lab.ip(1));
    server.listen_on(server_holder, address.clone()).await?;
    server
        .rpc
        .isolate(isolate("no", IsolationMode::Reject, 60_000))
        .await?;
    let started = Instant::now();
    let refused = dial(&mut client, holder, &address, 2_000).await?;
    assert_eq!(refused, (Outcome::Error, "ECONNREFUSED".to_owned()));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "reject must answer at once"
    );
    let healed = server
        .rpc
        .heal(pb::HealRequest {
            id: "no".to_owned(),
            all: false,
        })
        .await?
        .into_inner();
    assert_eq!(healed.healed, 1);
    assert_eq!(
        dial(&mut client, holder, &address, 1_000).await?.0,
        Outcome::Ok
    );
    let again = server
        .rpc
        .heal(pb::HealRequest {
            id: "no".to_owned(),
            all: false,
        })
        .await;
    assert_eq!(
        again.err().map(|status| status.code()),
        Some(tonic::Code::NotFound)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolation_heals_at_its_deadline_with_no_agent_alive_and_a_restart_leaves_no_rules()
-> TestResult {
    let lab = NetLab::new(2)?;
    let mut client = lab.agent(0, &[]).await?;
    let holder = client.holder("client").await?;
    let nobody = format!("{}:7002", lab.ip(1));
    {
        let mut server = lab.agent(1, &["--allow", "isolate"]).await?;
        server
            .rpc
            .isolate(isolate("orphan", IsolationMode::Drop, 2_500))
            .await?;
        server.process.kill();
    }
    let killed_at = Instant::now();
    // No agent, no listener: while isolated, silence; once the kernel lifts it, refusals.
    assert_eq!(
        dial(&mut client, holder, &nobody, 500).await?.0,
        Outcome::Timeout
    );
    let healed_at = dial_until(
        &mut client,
        holder,
        &nobody,
        Outcome::Error,
        Duration::from_secs(5),
    )
    .await?;
    eprintln!(
        "agent killed; kernel lifted the isolation {} ms later (deadline 2500 ms from isolate)",
        (healed_at - killed_at).as_millis()
    );

    // A long isolation left behind by a crashed agent is removed by the next one.
    let mut server = lab.agent(1, &["--allow", "isolate"]).await?;
    server
        .rpc
        .isolate(isolate("left", IsolationMode::Drop, 60_000))
        .await?;
    server.process.kill();
    let listed = lab.exec(1, &["nft", "list", "set", "inet", "faultlab", "drop_in_v4"])?;
    assert!(listed.contains("0.0.0.0/0"), "{listed}");
    let _restarted = lab.agent(1, &[]).await?;
    let tables = lab.exec(1, &["nft", "list", "tables"])?;
    assert!(
        !tables.contains("faultlab"),
        "a restarted agent without isolate leaves no table: {tables}"
    );
    assert_eq!(
        dial(&mut client, holder, &nobody, 1_000).await?,
        (Outcome::Error, "ECONNREFUSED".to_owned())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn including_the_control_channel_cuts_the_agent_until_the_deadline() -> TestResult {
    let lab = NetLab::new(1)?;
    let mut server = lab.agent(0, &["--allow", "isolate"]).await?;
    let mut request = isolate("all", IsolationMode::Drop, 1_500);
    request.include_control_channel = true;
    let asked = Instant::now();
    server.rpc.isolate(request).await?;
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "the reply must leave before the cut"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{}:{CONTROL_PORT}", lab.ip(0)))?
            .connect_timeout(Duration::from_millis(300));
    assert!(
        endpoint.connect().await.is_err(),
        "the agent must be unreachable while cut off"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let channel = endpoint.connect().await?;
    let mut back = pb::agent_client::AgentClient::new(channel);
    back.host_info(pb::HostInfoRequest {}).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_reboot_leaves_peers_to_meet_a_reset() -> TestResult {
    let lab = NetLab::new(2)?;
    let mut client = lab.agent(0, &[]).await?;
    let mut server = lab.agent(1, &["--allow", "isolate"]).await?;
    let holder = client.holder("client").await?;
    let server_holder = server.holder("server").await?;
    let listening = server
        .listen_on(server_holder, format!("{}:7003", lab.ip(1)))
        .await?;
    let dialled = client.dial(holder, &listening.local_address, None).await?;
    server.accept(listening.listener_id).await?;
    let rebooted = server
        .rpc
        .reboot(pb::RebootRequest {
            simulated: true,
            down_ms: 1_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!((rebooted.sockets_aborted, rebooted.holders_killed), (1, 1));
    let down_ms = (rebooted.down_until_mono_ns - rebooted.down_from_mono_ns) / 1_000_000;
    assert!(down_ms >= 1_000, "down for {down_ms} ms");

    let sent = client.send_data(dialled.conn_id, b"still there?").await?;
    assert_eq!(sent.outcome(), Outcome::Ok);
    let answer = client.recv_to_end(dialled.conn_id).await?;
    assert_eq!(
        (answer.outcome(), answer.error_name.as_str()),
        (Outcome::Error, "ECONNRESET")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_or_one_port_can_be_cut_while_the_rest_flows() -> TestResult {
    let lab = NetLab::new(3)?;
    let mut server = lab.agent(0, &["--allow", "isolate"]).await?;
    let mut cut_off = lab.agent(1, &[]).await?;
    let mut bystander = lab.agent(2, &[]).await?;
    let server_holder = server.holder("server").await?;
    for port in [7005, 7006] {
        server
            .listen_on(server_holder, format!("{}:{port}", lab.ip(0)))
            .await?;
    }
    let (first, second) = (format!("{}:7005", lab.ip(0)), format!("{}:7006", lab.ip(0)));
    let cut_holder = cut_off.holder("cut").await?;
    let bystander_holder = bystander.holder("bystander").await?;

    // One peer, inbound only: host 1 is silenced, host 2 is not.
    server
        .rpc
        .isolate(pb::IsolateRequest {
            peer: lab.ip(1).to_string(),
            direction: pb::Direction::In as i32,
            ..isolate("peer", IsolationMode::Drop, 30_000)
        })
        .await?;
    assert_eq!(
        dial(&mut cut_off, cut_holder, &first, 500).await?.0,
        Outcome::Timeout
    );
    assert_eq!(
        dial(&mut bystander, bystander_holder, &first, 500).await?.0,
        Outcome::Ok
    );
    server
        .rpc
        .heal(pb::HealRequest {
            id: "peer".to_owned(),
            all: false,
        })
        .await?;
    assert_eq!(
        dial(&mut cut_off, cut_holder, &first, 500).await?.0,
        Outcome::Ok
    );

    // One port, rejected: 7005 refuses everyone, 7006 still serves.
    server
        .rpc
        .isolate(pb::IsolateRequest {
            port: 7005,
            ..isolate("port", IsolationMode::Reject, 30_000)
        })
        .await?;
    assert_eq!(
        dial(&mut bystander, bystander_holder, &first, 500).await?,
        (Outcome::Error, "ECONNREFUSED".to_owned())
    );
    assert_eq!(
        dial(&mut bystander, bystander_holder, &second, 500)
            .await?
            .0,
        Outcome::Ok
    );
    let same = server
        .rpc
        .isolate(pb::IsolateRequest {
            port: 7005,
            ..isolate("port-again", IsolationMode::Reject, 30_000)
        })
        .await;
    assert_eq!(
        same.err().map(|status| status.code()),
        Some(tonic::Code::FailedPrecondition)
    );
    Ok(())
}

#[tokio::test]
async fn only_new_or_only_open_connections_can_be_cut() -> TestResult {
    let lab = NetLab::new(2)?;
    let mut server = lab.agent(0, &["--allow", "isolate"]).await?;
    let mut client = lab.agent(1, &[]).await?;
    let server_holder = server.holder("server").await?;
    let listener = server
        .listen_on(server_holder, format!("{}:7007", lab.ip(0)))
        .await?
        .listener_id;
    let address = format!("{}:7007", lab.ip(0));
    let client_holder = client.holder("client").await?;
    let open = client.dial(client_holder, &address, None).await?.conn_id;
    let accepted = server.accept(listener).await?.conn_id;
    let heal = |id: &str| pb::HealRequest {
        id: id.to_owned(),
        all: false,
    };

    // New connections refused (their SYN answered by RST); the open one
    // still carries data.
    server
        .rpc
        .isolate(pb::IsolateRequest {
            connections: pb::Connections::New as i32,
            ..isolate("new", IsolationMode::Reject, 30_000)
        })
        .await?;
    assert_eq!(
        dial(&mut client, client_holder, &address, 500).await?,
        (Outcome::Error, "ECONNREFUSED".to_owned())
    );
    assert_eq!(client.send_data(open, b"still").await?.bytes, 5);
    let read = server.recv(accepted, common::MODE_ALL, 5, 1_000).await?;
    assert_eq!((outcome(&Some(read.clone())), read.bytes), (Outcome::Ok, 5));
    // The firewall counted what it cut: the one SYN it answered.
    let healed = server.rpc.heal(heal("new")).await?.into_inner();
    let cut = healed.cut.ok_or("no counts from nftables")?;
    assert_eq!(
        (cut.arriving_packets, cut.leaving_packets),
        (1, 0),
        "{cut:?}"
    );

    // Open connections cut on the way in: the open one's data waits; a new
    // connection's SYN passes and its SYN-ACK leaves, so the client is
    // connected, but its ACK is dropped and the server never accepts it.
    server
        .rpc
        .isolate(pb::IsolateRequest {
            connections: pb::Connections::Established as i32,
            direction: pb::Direction::In as i32,
            ..isolate("open", IsolationMode::Drop, 30_000)
        })
        .await?;
    assert_eq!(client.send_data(open, b"waits").await?.bytes, 5);
    let read = server.recv(accepted, common::MODE_ALL, 5, 500).await?;
    assert_eq!(
        (outcome(&Some(read.clone())), read.bytes),
        (Outcome::Timeout, 0)
    );
    assert_eq!(
        dial(&mut client, client_holder, &address, 500).await?.0,
        Outcome::Ok
    );
    let waiting = server
        .rpc
        .accept(pb::AcceptRequest {
            listener_id: listener,
            timeout_ms: 500,
        })
        .await?
        .into_inner();
    assert_eq!(outcome(&waiting.observation), Outcome::Timeout);
    server.rpc.heal(heal("open")).await?;
    // The client's retransmission delivers what waited.
    let read = server.recv(accepted, common::MODE_ALL, 5, 5_000).await?;
    assert_eq!((outcome(&Some(read.clone())), read.bytes), (Outcome::Ok, 5));
    Ok(())
}

/// The elements faultlab's table holds in host `index`, read with nft itself.
fn elements_in_place(lab: &NetLab, index: usize) -> Result<usize, Box<dyn std::error::Error>> {
    let listed = lab.exec(index, &["nft", "-j", "list", "table", "inet", "faultlab"])?;
    Ok(listed.matches("\"val\":").count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heal_that_finds_part_of_its_isolation_gone_lifts_the_rest_and_says_so() -> TestResult {
    part_of_an_isolation_gone(false).await
}

/// The same through the `nft` tool, as on a host without libnftables: the
/// same refusal (the one transaction fails), the same words read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_nft_tool_a_heal_that_finds_part_gone_says_the_same() -> TestResult {
    part_of_an_isolation_gone(true).await
}

async fn part_of_an_isolation_gone(by_the_tool: bool) -> TestResult {
    let lab = NetLab::new(2)?;
    let mut client = lab.agent(0, &[]).await?;
    // No such directory first on the path: the tools are the host's.
    let tools = std::path::Path::new("/nonexistent/faultlab-tools");
    let flags = ["--allow", "isolate"];
    let mut server = if by_the_tool {
        lab.agent_with_path(1, &flags, Some(tools)).await?
    } else {
        lab.agent(1, &flags).await?
    };
    let holder = client.holder("client").await?;
    let server_holder = server.holder("server").await?;
    let address = format!("{}:7003", lab.ip(1));
    server.listen_on(server_holder, address.clone()).await?;
    server
        .rpc
        .isolate(isolate("cut", IsolationMode::Drop, 60_000))
        .await?;
    // Someone empties one of the isolation's sets by hand (an interval set:
    // deleting its element again says "element does not exist").
    lab.exec(
        1,
        &["nft", "flush", "set", "inet", "faultlab", "drop_in_v4"],
    )?;
    assert_eq!(
        dial(&mut client, holder, &address, 300).await?.0,
        Outcome::Timeout,
        "the outbound half still cuts the host"
    );
    let healed = server
        .rpc
        .heal(pb::HealRequest {
            id: "cut".to_owned(),
            all: false,
        })
        .await?
        .into_inner();
    assert_eq!(healed.healed, 1);
    assert_eq!(healed.already_gone, ["drop_in_v4 { 0.0.0.0/0 }"]);
    assert_eq!(elements_in_place(&lab, 1)?, 0, "nothing of it is left");
    assert_eq!(
        dial(&mut client, holder, &address, 1_000).await?.0,
        Outcome::Ok
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_lifts_every_entry_of_the_table_booked_or_not_and_says_which() -> TestResult {
    let lab = NetLab::new(2)?;
    let mut client = lab.agent(0, &[]).await?;
    let mut server = lab.agent(1, &["--allow", "isolate"]).await?;
    let holder = client.holder("client").await?;
    let server_holder = server.holder("server").await?;
    let address = format!("{}:7004", lab.ip(1));
    server.listen_on(server_holder, address.clone()).await?;
    server
        .rpc
        .isolate(isolate("cut", IsolationMode::Drop, 60_000))
        .await?;
    // An entry nobody booked: the agent must lift it too.
    let peer = lab.ip(0).to_string();
    lab.exec(
        1,
        &[
            "nft",
            &format!("add element inet faultlab reject_in_v4 {{ {peer} timeout 60s }}"),
        ],
    )?;
    assert_eq!(elements_in_place(&lab, 1)?, 5);
    let reset = server.rpc.reset(pb::ResetRequest {}).await?.into_inner();
    assert_eq!(reset.isolations_lifted, 1);
    assert_eq!(reset.unbooked, [format!("reject_in_v4 {{ {peer} }}")]);
    assert!(reset.not_undone.is_empty(), "{:?}", reset.not_undone);
    assert_eq!(elements_in_place(&lab, 1)?, 0);
    // Its listener went with its holder: a refusal, not silence.
    assert_eq!(
        dial(&mut client, holder, &address, 1_000).await?.0,
        Outcome::Error
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_host_cut_over_an_active_one_peer_cut_is_refused_as_a_clash() -> TestResult {
    let lab = NetLab::new(2)?;
    let mut server = lab.agent(1, &["--allow", "isolate"]).await?;
    let mut one_peer = isolate("peer", IsolationMode::Drop, 60_000);
    one_peer.peer = lab.ip(0).to_string();
    server.rpc.isolate(one_peer).await?;
    let refused = server
        .rpc
        .isolate(isolate("host", IsolationMode::Drop, 60_000))
        .await
        .err()
        .ok_or("a whole-host cut over a one-peer cut was accepted")?;
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("heal it first"), "{refused:?}");
    // Nothing of the refused one is in place; the first is untouched.
    assert_eq!(elements_in_place(&lab, 1)?, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_answers_while_its_firewall_is_slow() -> TestResult {
    // A slow host: once `slow` exists, its nft takes 3 s a call (the real
    // nft, after a sleep), as nft does under emulation on a busy machine.
    let dir = std::env::temp_dir().join(format!("faultlab-slow-nft-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v nft"])
            .output()?
            .stdout,
    )?;
    let wrapper = dir.join("nft");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n[ -e {slow} ] && sleep 3\nexec {real} \"$@\"\n",
            slow = dir.join("slow").display(),
            real = real.trim()
        ),
    )?;
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()?;
    let lab = NetLab::new(1)?;
    let host = lab
        .agent_with_path(0, &["--allow", "isolate"], Some(&dir))
        .await?;
    std::fs::write(dir.join("slow"), "")?;
    // Two isolations at once: as many as the agent has async workers.
    let started = Instant::now();
    let cut = |peer: &str| {
        let mut rpc = host.rpc.clone();
        let request = pb::IsolateRequest {
            peer: peer.to_owned(),
            ..isolate(&format!("slow-{peer}"), IsolationMode::Drop, 30_000)
        };
        tokio::spawn(async move {
            let reply = rpc.isolate(request).await;
            (reply.map(|_| ()), started.elapsed())
        })
    };
    let isolations = [cut("198.18.254.1"), cut("198.18.254.2")];
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut rpc = host.rpc.clone();
    let answered = tokio::time::timeout(
        Duration::from_secs(30),
        rpc.host_info(pb::HostInfoRequest::default()),
    )
    .await;
    let answered_at = started.elapsed();
    let mut isolated_at = Vec::new();
    for isolation in isolations {
        let (reply, at) = isolation.await?;
        reply?;
        isolated_at.push(at);
    }
    let _ = std::fs::remove_dir_all(&dir);
    answered??;
    // The agent answered while both isolations were still in nft.
    assert!(
        isolated_at.iter().all(|&at| answered_at < at),
        "answered after {answered_at:?}, isolations done after {isolated_at:?}"
    );
    Ok(())
}
