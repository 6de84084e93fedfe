//! Bad requests get clear errors, crashed holders are reported, and the
//! agent outlives them all. Real agent processes on loopback.

use crate::common;

use common::{Host, MODE_ONCE, Pair, TestResult};
use faultlab_proto::v1 as pb;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

fn expect_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    words: &[&str],
) -> TestResult {
    let status = match result {
        Ok(value) => return Err(format!("expected {code:?}, got {value:?}").into()),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{status:?}");
    for word in words {
        assert!(
            status.message().contains(word),
            "{word:?} not in {status:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn unknown_ids_are_not_found() -> TestResult {
    let mut host = Host::start().await?;
    expect_status(
        host.send_data(999, b"x").await,
        Code::NotFound,
        &["connection 999"],
    )?;
    expect_status(host.accept(998).await, Code::NotFound, &["listener 998"])?;
    expect_status(
        host.listen(997, None).await,
        Code::NotFound,
        &["holder 997"],
    )?;
    let killed = host
        .rpc
        .kill_holder(pb::KillHolderRequest { holder_id: 996 })
        .await;
    expect_status(killed, Code::NotFound, &["holder 996"])?;
    Ok(())
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments_that_name_the_field() -> TestResult {
    let mut host = Host::start().await?;
    let holder = host.holder("h").await?;
    expect_status(
        host.dial(holder, "example.org", None).await,
        Code::InvalidArgument,
        &["address", "ip:port"],
    )?;
    let bad_listen = host
        .rpc
        .listen(pb::ListenRequest {
            holder_id: holder,
            address: "127.0.0.1:99999".to_owned(),
            backlog: 1,
            options: None,
        })
        .await;
    expect_status(bad_listen, Code::InvalidArgument, &["address"])?;

    let mut lab = Pair::connect().await?;
    let conn = lab.client_conn;
    expect_status(
        lab.client.recv(conn, 0, 10, 100).await,
        Code::InvalidArgument,
        &["mode"],
    )?;
    expect_status(
        lab.client.recv(conn, 7, 10, 100).await,
        Code::InvalidArgument,
        &["mode"],
    )?;
    let tiny = pb::send_request::Payload::Messages(pb::Messages {
        count: 1,
        size: 3,
        interval_ms: 0,
    });
    expect_status(
        lab.client.send(conn, tiny, 100).await,
        Code::InvalidArgument,
        &["messages.size"],
    )?;
    let no_payload = lab
        .client
        .rpc
        .send(pb::SendRequest {
            conn_id: conn,
            payload: None,
            timeout_ms: 0,
        })
        .await;
    expect_status(no_payload, Code::InvalidArgument, &["payload"])?;
    let forever = lab
        .client
        .send(conn, pb::send_request::Payload::ByteCount(1), u32::MAX)
        .await;
    expect_status(forever, Code::InvalidArgument, &["timeout_ms"])?;
    let no_mode = lab
        .client
        .rpc
        .close(pb::CloseRequest {
            conn_id: conn,
            mode: 0,
            timeout_ms: 0,
        })
        .await;
    expect_status(no_mode, Code::InvalidArgument, &["mode"])?;
    let no_target = lab
        .client
        .rpc
        .set_options(pb::SetOptionsRequest {
            target: None,
            options: None,
        })
        .await;
    expect_status(no_target, Code::InvalidArgument, &["target"])?;
    let sub_second_keepalive = lab
        .client
        .rpc
        .set_options(pb::SetOptionsRequest {
            target: Some(pb::set_options_request::Target::ConnId(conn)),
            options: Some(pb::SocketOptions {
                keepalive: Some(pb::Keepalive {
                    enabled: true,
                    idle_ms: 10,
                    interval_ms: 0,
                    count: 0,
                }),
                ..Default::default()
            }),
        })
        .await;
    expect_status(
        sub_second_keepalive,
        Code::InvalidArgument,
        &["keepalive.idle_ms"],
    )?;

    // None of that broke the connection.
    let sent = lab.client.send_data(conn, b"still fine").await?;
    assert_eq!(sent.outcome(), pb::Outcome::Ok);
    Ok(())
}

#[tokio::test]
async fn a_port_in_use_is_a_failed_precondition() -> TestResult {
    let mut host = Host::start().await?;
    let holder = host.holder("h").await?;
    let (_, address) = host.listen(holder, None).await?;
    let again = host
        .rpc
        .listen(pb::ListenRequest {
            holder_id: holder,
            address: address.clone(),
            backlog: 1,
            options: None,
        })
        .await;
    expect_status(
        again,
        Code::FailedPrecondition,
        &[address.as_str(), "in use"],
    )?;
    Ok(())
}

#[tokio::test]
async fn options_are_applied_and_read_back() -> TestResult {
    let mut lab = Pair::connect().await?;
    let read = lab
        .client
        .rpc
        .set_options(pb::SetOptionsRequest {
            target: Some(pb::set_options_request::Target::ConnId(lab.client_conn)),
            options: Some(pb::SocketOptions {
                linger: Some(pb::Linger {
                    enabled: true,
                    seconds: 0,
                }),
                keepalive: Some(pb::Keepalive {
                    enabled: true,
                    idle_ms: 2_000,
                    interval_ms: 1_000,
                    count: 3,
                }),
                user_timeout_ms: Some(1_500),
                nodelay: Some(true),
                send_buffer_bytes: Some(32 * 1024),
                recv_buffer_bytes: None,
            }),
        })
        .await?
        .into_inner();
    assert_eq!(
        read.linger,
        Some(pb::Linger {
            enabled: true,
            seconds: 0
        })
    );
    assert_eq!(
        read.keepalive,
        Some(pb::Keepalive {
            enabled: true,
            idle_ms: 2_000,
            interval_ms: 1_000,
            count: 3
        })
    );
    assert_eq!(read.user_timeout_ms, Some(1_500));
    assert_eq!(read.nodelay, Some(true));
    // Linux doubles SO_SNDBUF for its bookkeeping and reports the doubled value.
    assert_eq!(read.send_buffer_bytes, Some(64 * 1024));
    Ok(())
}

#[tokio::test]
async fn a_killed_holder_is_reported_and_the_agent_lives_on() -> TestResult {
    let mut lab = Pair::connect().await?;
    let killed = lab
        .client
        .rpc
        .kill_holder(pb::KillHolderRequest {
            holder_id: lab.client_holder,
        })
        .await?
        .into_inner();
    assert_eq!((killed.exit_code, killed.signal), (None, Some(9)));

    expect_status(
        lab.client.send_data(lab.client_conn, b"x").await,
        Code::FailedPrecondition,
        &["signal 9", "connections are gone"],
    )?;
    let again = lab
        .client
        .rpc
        .kill_holder(pb::KillHolderRequest {
            holder_id: lab.client_holder,
        })
        .await;
    expect_status(again, Code::FailedPrecondition, &["signal 9"])?;

    let exit = lab.client.first_holder_exit().await?;
    assert_eq!((exit.holder_id, exit.signal), (lab.client_holder, Some(9)));

    let info = lab
        .client
        .rpc
        .host_info(pb::HostInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(info.pid, lab.client.process.pid());
    Ok(())
}

#[tokio::test]
async fn a_holder_that_dies_on_its_own_is_reported() -> TestResult {
    let mut host = Host::start().await?;
    let spawned = host
        .rpc
        .spawn_holder(pb::SpawnHolderRequest {
            label: "crashy".to_owned(),
            session: String::new(),
        })
        .await?
        .into_inner();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &spawned.pid.to_string()])
        .status()?;
    assert!(status.success());
    let exit = host.first_holder_exit().await?;
    assert_eq!((exit.holder_id, exit.signal), (spawned.holder_id, Some(15)));
    let info = host
        .rpc
        .host_info(pb::HostInfoRequest {})
        .await?
        .into_inner();
    assert!(!info.boot_id.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_watched_connection_cannot_also_be_read() -> TestResult {
    let mut lab = Pair::connect().await?;
    let watch = pb::WatchRequest {
        conn_id: lab.server_conn,
    };
    lab.server.rpc.watch(watch).await?;
    expect_status(
        lab.server.rpc.watch(watch).await,
        Code::FailedPrecondition,
        &["already watched"],
    )?;
    expect_status(
        lab.server.recv(lab.server_conn, MODE_ONCE, 0, 100).await,
        Code::FailedPrecondition,
        &["watched"],
    )?;
    // Closing a watched connection stops its reader and really closes.
    let closed = lab
        .server
        .close(lab.server_conn, pb::CloseMode::Graceful)
        .await?;
    assert_eq!(closed.outcome(), pb::Outcome::Ok);
    let seen = lab.client.recv_to_end(lab.client_conn).await?;
    assert_eq!(seen.outcome(), pb::Outcome::Eof);
    expect_status(
        lab.server
            .close(lab.server_conn, pb::CloseMode::Graceful)
            .await,
        Code::NotFound,
        &["connection"],
    )?;
    Ok(())
}

#[tokio::test]
async fn events_can_be_replayed_from_a_sequence_number() -> TestResult {
    let mut host = Host::start().await?;
    for label in ["a", "b"] {
        let holder = host.holder(label).await?;
        host.rpc
            .kill_holder(pb::KillHolderRequest { holder_id: holder })
            .await?;
    }
    assert_eq!(host.first_event(2).await?.seq, 2);
    Ok(())
}

#[tokio::test]
async fn reset_kills_every_holder() -> TestResult {
    let mut lab = Pair::connect().await?;
    let extra = lab.client.holder("extra").await?;
    let reset = lab
        .client
        .rpc
        .reset(pb::ResetRequest {})
        .await?
        .into_inner();
    assert_eq!(reset.holders_killed, 2);
    expect_status(
        lab.client.listen(extra, None).await,
        Code::NotFound,
        &["holder"],
    )?;
    // The server saw the client's sockets closed by the kernel.
    let seen = lab.server.recv_to_end(lab.server_conn).await?;
    assert_eq!(seen.outcome(), pb::Outcome::Eof);
    Ok(())
}

fn process_exists(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter is 'Z'.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// The live holder processes whose parent is `agent_pid`.
fn holders_of(agent_pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let mut fields = after.split_whitespace();
            let alive = fields.next() != Some("Z");
            let parent = fields.next().and_then(|ppid| ppid.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            alive
                && parent == Some(agent_pid)
                && cmdline
                    .split(|&byte| byte == 0)
                    .any(|word| word == b"holder")
        })
        .collect()
}

/// The holders of `agent_pid`, once there are `count` of them (the one
/// started ahead starts just after a spawn's reply), within 5 s.
async fn holders_once(agent_pid: u32, count: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut holders = holders_of(agent_pid);
    while holders.len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        holders = holders_of(agent_pid);
    }
    holders
}

async fn spawn(host: &mut Host, label: &str) -> Result<pb::SpawnHolderReply, tonic::Status> {
    host.rpc
        .spawn_holder(pb::SpawnHolderRequest {
            label: label.to_owned(),
            session: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_holder_started_ahead_is_the_next_one_taken() -> TestResult {
    if !Path::new("/proc/self/stat").exists() {
        return Err("this test reads /proc; run it on Linux".into());
    }
    let mut host = Host::start().await?;
    let agent_pid = host.process.pid();
    let first = spawn(&mut host, "first").await?;
    // The first spawn started the next holder ahead, beside its own.
    let ahead: Vec<u32> = holders_once(agent_pid, 2)
        .await
        .into_iter()
        .filter(|&pid| pid != first.pid)
        .collect();
    assert_eq!(ahead.len(), 1, "holders besides the first: {ahead:?}");
    let second = spawn(&mut host, "second").await?;
    assert_eq!(
        second.pid, ahead[0],
        "the second spawn took the holder started ahead"
    );
    // And it works like any.
    let (listener, address) = host.listen(second.holder_id, None).await?;
    assert!(listener > 0 && !address.is_empty(), "{listener} {address}");
    Ok(())
}

#[tokio::test]
async fn holders_do_not_outlive_a_killed_agent() -> TestResult {
    if !Path::new("/proc/self/stat").exists() {
        return Err("this test reads /proc; run it on Linux".into());
    }
    let mut host = Host::start().await?;
    let agent_pid = host.process.pid();
    let spawned = spawn(&mut host, "orphan?").await?;
    assert!(process_exists(spawned.pid));
    // The one it took, and the one started ahead for the next spawn.
    let holders = holders_once(agent_pid, 2).await;
    assert_eq!(holders.len(), 2, "{holders:?}");
    host.process.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while holders.iter().any(|&pid| process_exists(pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<u32> = holders
        .into_iter()
        .filter(|&pid| process_exists(pid))
        .collect();
    assert!(left.is_empty(), "holders {left:?} outlived their agent");
    Ok(())
}

#[tokio::test]
async fn dangerous_capabilities_are_off_unless_allowed_and_say_how_to_allow_them() -> TestResult {
    let mut host = Host::start().await?;
    let info = host
        .rpc
        .host_info(pb::HostInfoRequest {})
        .await?
        .into_inner();
    // Capture only reads and is offered where the OS allows (root); nothing
    // that cuts or reboots is on without --allow.
    for dangerous in ["isolate", "link", "reboot"] {
        assert!(
            !info.capabilities.contains(&dangerous.to_owned()),
            "{info:?}"
        );
    }
    assert!(info.capabilities.contains(&"connections".to_owned()));
    let isolate = host
        .rpc
        .isolate(pb::IsolateRequest {
            id: "x".to_owned(),
            mode: pb::IsolationMode::Drop as i32,
            deadline_ms: 1_000,
            ..Default::default()
        })
        .await;
    expect_status(isolate, Code::PermissionDenied, &["--allow isolate"])?;
    let reboot = host
        .rpc
        .reboot(pb::RebootRequest {
            simulated: false,
            down_ms: 0,
            orderly: true,
        })
        .await;
    expect_status(reboot, Code::PermissionDenied, &["--allow reboot"])?;
    let simulated = host
        .rpc
        .reboot(pb::RebootRequest {
            simulated: true,
            down_ms: 100,
            ..Default::default()
        })
        .await;
    expect_status(simulated, Code::PermissionDenied, &["--allow isolate"])?;
    let link = host
        .rpc
        .link_down(pb::LinkDownRequest {
            interface: "eth9".to_owned(),
            deadline_ms: 1_000,
            allow_control_interface: false,
            ..Default::default()
        })
        .await;
    expect_status(link, Code::PermissionDenied, &["--allow link"])?;
    Ok(())
}

#[tokio::test]
async fn malformed_isolations_are_invalid_arguments() -> TestResult {
    let mut host = Host::start().await?;
    let base = pb::IsolateRequest {
        id: "ok".to_owned(),
        mode: pb::IsolationMode::Drop as i32,
        deadline_ms: 1_000,
        ..Default::default()
    };
    for (request, field) in [
        (
            pb::IsolateRequest {
                deadline_ms: 0,
                ..base.clone()
            },
            "deadline_ms",
        ),
        (
            pb::IsolateRequest {
                mode: 0,
                ..base.clone()
            },
            "mode",
        ),
        (
            pb::IsolateRequest {
                id: "bad id!".to_owned(),
                ..base.clone()
            },
            "id",
        ),
        (
            pb::IsolateRequest {
                peer: "10.0.0.0/99".to_owned(),
                ..base.clone()
            },
            "peer",
        ),
        (
            pb::IsolateRequest {
                port: 70_000,
                ..base.clone()
            },
            "port",
        ),
    ] {
        expect_status(
            host.rpc.isolate(request).await,
            Code::InvalidArgument,
            &[field],
        )?;
    }
    let neither = host
        .rpc
        .heal(pb::HealRequest {
            id: String::new(),
            all: false,
        })
        .await;
    expect_status(neither, Code::InvalidArgument, &["id"])?;
    Ok(())
}

/// A scheduled start (`faultlab-start-at`): the send waits for its moment on
/// the host's clock, and a malformed or too distant moment is refused.
#[tokio::test]
async fn a_scheduled_send_acts_at_its_moment_and_bad_moments_are_refused() -> TestResult {
    let mut pair = Pair::connect().await?;
    let now = pair
        .client
        .rpc
        .host_info(pb::HostInfoRequest {})
        .await?
        .into_inner()
        .mono_ns;
    let scheduled = |start: String| {
        let mut request = tonic::Request::new(pb::SendRequest {
            conn_id: pair.client_conn,
            payload: Some(pb::send_request::Payload::Data(b"x".to_vec())),
            timeout_ms: 1_000,
        });
        if let Ok(value) = start.parse() {
            request
                .metadata_mut()
                .insert(faultlab_proto::START_AT_METADATA, value);
        }
        request
    };
    let start_at = now + 300_000_000;
    let sent = pair
        .client
        .rpc
        .send(scheduled(start_at.to_string()))
        .await?
        .into_inner();
    assert_eq!(sent.bytes, 1, "{sent:?}");
    assert!(
        sent.start_mono_ns >= start_at,
        "acted {} µs before its moment",
        (start_at - sent.start_mono_ns) / 1_000
    );
    expect_status(
        pair.client.rpc.send(scheduled("soon".into())).await,
        Code::InvalidArgument,
        &["faultlab-start-at", "\"soon\""],
    )?;
    expect_status(
        pair.client
            .rpc
            .send(scheduled((now + 60_000_000_000).to_string()))
            .await,
        Code::InvalidArgument,
        &["at most 10 s ahead"],
    )?;
    Ok(())
}

#[tokio::test]
async fn an_agent_whose_listener_is_destroyed_stops_instead_of_spinning() -> TestResult {
    if !std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| status.lines().any(|line| line.starts_with("Uid:\t0")))
    {
        return Err(
            "destroying another program's socket (`ss -K`) needs root (CI runs as root)".into(),
        );
    }
    let mut host = Host::start().await?;
    let port = host
        .process
        .address
        .rsplit_once(':')
        .map(|(_, port)| port.to_owned())
        .ok_or("no port")?;
    // What a lab's clean-up does to every socket of a namespace: the
    // listener is destroyed under the agent.
    let killed = std::process::Command::new("ss")
        .args([
            "-K",
            "-t",
            "state",
            "listening",
            "sport",
            "=",
            &format!(":{port}"),
        ])
        .output()?;
    assert!(killed.status.success(), "{killed:?}");
    // It used to answer every accept with EINVAL in a busy loop, forever.
    let ended = host.process.wait_exit(Duration::from_secs(10));
    assert!(
        ended.is_some_and(|status| !status.success()),
        "the agent did not stop with an error: {ended:?}"
    );
    Ok(())
}
