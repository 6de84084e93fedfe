//! Work never outlives its owner: a flood whose Send RPC is cancelled (the
//! controller stopped waiting, or died and its connection closed) stops
//! sending; holders die with the session that spawned them; an agent keeps
//! to its limits. Network namespaces (198.18.0.0/15 only, removed after),
//! the bytes counted by the sending kernel (`ss`).

use crate::common;

use common::netns::NetLab;
use common::{MODE_ALL, TestResult};
use faultlab_proto::v1 as pb;
use std::time::Duration;

/// Bytes the programs of host `index` have written to their established
/// connections to `port`, as its kernel counts them: acknowledged by the
/// peer, plus still queued (Send-Q). It grows only while a program writes,
/// however slowly the queue drains.
fn bytes_written(lab: &NetLab, index: usize, port: u16) -> Result<u64, Box<dyn std::error::Error>> {
    let filter = format!("( dport = :{port} )");
    let listed = lab.exec(index, &["ss", "-tinH", "state", "established", &filter])?;
    let mut total = 0;
    let mut lines = listed.lines();
    while let Some(socket) = lines.next() {
        let queued: u64 = socket
            .split_whitespace()
            .nth(1)
            .and_then(|send_q| send_q.parse().ok())
            .unwrap_or(0);
        let acked: u64 = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .find_map(|word| word.strip_prefix("bytes_acked:"))
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        total += queued + acked;
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_whose_send_is_cancelled_stops_sending() -> TestResult {
    const PORT: u16 = 7010;
    const MIB: u64 = 1 << 20;
    let lab = NetLab::new(2)?;
    let mut client = lab.agent(0, &[]).await?;
    let mut server = lab.agent(1, &[]).await?;
    let server_holder = server.holder("server").await?;
    let listening = server
        .listen_on(server_holder, format!("{}:{PORT}", lab.ip(1)))
        .await?;
    let holder = client.holder("client").await?;
    let dialed = client.dial(holder, &listening.local_address, None).await?;
    let accepted = server.accept(listening.listener_id).await?;
    // The server drains whatever comes, in the background.
    let mut reader = server.rpc.clone();
    let draining = tokio::spawn(async move {
        reader
            .recv(pb::RecvRequest {
                conn_id: accepted.conn_id,
                mode: MODE_ALL,
                max_bytes: 0,
                timeout_ms: 60_000,
                return_data: false,
            })
            .await
    });
    // A flood of 16 GiB (a terabyte is over the default limit), given up
    // by its caller after a second.
    let mut sender = client.rpc.clone();
    let conn_id = dialed.conn_id;
    let flood = tokio::spawn(async move {
        sender
            .send(pb::SendRequest {
                conn_id,
                payload: Some(pb::send_request::Payload::ByteCount(16 << 30)),
                timeout_ms: 60_000,
            })
            .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = bytes_written(&lab, 0, PORT)?;
    flood.abort();
    // The cancel reaches the holder; from then on it writes nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = bytes_written(&lab, 0, PORT)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = bytes_written(&lab, 0, PORT)?;
    eprintln!(
        "flood: {} MiB written in its first second; {} bytes written in the 2 s from 0.5 s after it was cancelled",
        during / MIB,
        later.saturating_sub(settled)
    );
    assert!(during > 10 * MIB, "the flood never flowed: {during} bytes");
    assert_eq!(
        later, settled,
        "the flood went on after its RPC was cancelled"
    );
    // The connection itself is left as it was: it still carries a message.
    let sent = client.send_data(conn_id, b"still here").await?;
    assert_eq!(sent.bytes, 10);
    draining.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_work_over_its_limits_naming_the_limit() -> TestResult {
    let dir = std::env::temp_dir().join(format!("faultlab-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "[limits]\nholders = 2\nconnections = 3\nsend_bytes = 1000\nfaults = 1\n",
    )?;
    let lab = NetLab::new(1)?;
    let config_arg = config.display().to_string();
    let mut agent = lab
        .agent(0, &["--allow", "isolate", "--config", &config_arg])
        .await?;
    let exhausted = |status: tonic::Status, limit: &str| {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains(limit), "{status:?}");
    };
    // Holders: two, not three.
    let first = agent.holder("one").await?;
    agent.holder("two").await?;
    exhausted(
        agent.holder("three").await.err().ok_or("a third holder")?,
        "limits.holders",
    );
    // Sockets: a listener and two connections, then no more.
    let listening = agent
        .listen_on(first, format!("{}:7011", lab.ip(0)))
        .await?;
    let dialed = agent.dial(first, &listening.local_address, None).await?;
    agent.accept(listening.listener_id).await?;
    exhausted(
        agent
            .dial(first, &listening.local_address, None)
            .await
            .err()
            .ok_or("a fourth socket")?,
        "limits.connections",
    );
    // A send of more bytes than allowed is refused before a byte leaves.
    let flood = agent
        .send(
            dialed.conn_id,
            pb::send_request::Payload::ByteCount(1_001),
            1_000,
        )
        .await
        .err()
        .ok_or("an over-limit send")?;
    exhausted(flood, "limits.send_bytes");
    assert_eq!(
        agent.send_data(dialed.conn_id, &[7; 1000]).await?.bytes,
        1000
    );
    // Faults: one at a time.
    let isolate = |id: &str, port: u32| pb::IsolateRequest {
        id: id.to_owned(),
        mode: pb::IsolationMode::Drop as i32,
        port,
        direction: pb::Direction::In as i32,
        deadline_ms: 5_000,
        ..Default::default()
    };
    agent.rpc.isolate(isolate("a", 7012)).await?;
    exhausted(
        agent
            .rpc
            .isolate(isolate("b", 7013))
            .await
            .err()
            .ok_or("a second fault")?,
        "limits.faults",
    );
    // A reset frees them all.
    let reset = agent.rpc.reset(pb::ResetRequest {}).await?.into_inner();
    assert_eq!((reset.holders_killed, reset.isolations_lifted), (2, 1));
    agent.holder("again").await?;
    agent.rpc.isolate(isolate("b", 7013)).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Whether process `pid` is still there (and not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// Wait (at most 5 s) until `pid` is gone.
async fn gone_within(pid: u32) -> Result<Duration, Box<dyn std::error::Error>> {
    let started = std::time::Instant::now();
    while alive(pid) {
        if started.elapsed() > Duration::from_secs(5) {
            return Err(format!("holder {pid} outlived its session by 5 s").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_die_when_the_last_stream_of_their_session_ends() -> TestResult {
    let mut agent = common::Host::start().await?;
    let spawn = |label: &str, session: &str| pb::SpawnHolderRequest {
        label: label.to_owned(),
        session: session.to_owned(),
    };
    let open = |id: &str| pb::SessionRequest { id: id.to_owned() };
    let first = agent.rpc.clone().session(open("run-1")).await?.into_inner();
    let mut second = agent.rpc.clone().session(open("run-1")).await?.into_inner();
    assert_eq!(
        second.message().await?.map(|event| event.opened),
        Some(true)
    );
    let in_session = agent
        .rpc
        .spawn_holder(spawn("a", "run-1"))
        .await?
        .into_inner();
    let unowned = agent.rpc.spawn_holder(spawn("b", "")).await?.into_inner();
    // One stream of two ends: the session is still open.
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(in_session.pid), "killed while its session was open");
    // The last one ends: its holder goes, the other stays.
    drop(second);
    let took = gone_within(in_session.pid).await?;
    eprintln!("a session's holder was gone {took:?} after its last stream ended");
    assert!(alive(unowned.pid), "a holder of no session was killed");
    let bad = agent.rpc.clone().session(open("no spaces")).await.err();
    assert_eq!(
        bad.map(|status| status.code()),
        Some(tonic::Code::InvalidArgument)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_asked_to_stop_stops_with_sessions_open_and_kills_its_holders() -> TestResult {
    // What systemd does at a reboot or `systemctl stop`: SIGTERM, while a
    // controller's Session and Events streams are open and a holder lives.
    let mut agent = common::Host::start().await?;
    let session = agent
        .rpc
        .clone()
        .session(pb::SessionRequest {
            id: "run-1".to_owned(),
        })
        .await?
        .into_inner();
    let events = agent
        .rpc
        .clone()
        .events(pb::EventsRequest::default())
        .await?
        .into_inner();
    let holder = agent
        .rpc
        .spawn_holder(pb::SpawnHolderRequest {
            label: "a".to_owned(),
            session: "run-1".to_owned(),
        })
        .await?
        .into_inner();
    let pid = agent.process.pid();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(status.success());
    // Bounded: without the grace the agent waited for the streams forever.
    let started = std::time::Instant::now();
    while alive(pid) {
        if started.elapsed() > Duration::from_secs(20) {
            return Err("the agent did not stop within 20 s of SIGTERM with streams open".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("stopped {:?} after SIGTERM", started.elapsed());
    gone_within(holder.pid).await?;
    drop((session, events));
    Ok(())
}
