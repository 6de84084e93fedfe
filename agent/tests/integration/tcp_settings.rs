//! TCP settings changed for a case, on real network-namespace hosts: the
//! namespace's own /proc/sys value changes, is put back and read back, and
//! comes back by itself at the deadline with no agent alive. Needs root.
#![cfg(target_os = "linux")]

use crate::common;

use common::TestResult;
use common::netns::NetLab;
use faultlab_proto::v1 as pb;
use std::time::{Duration, Instant};

const SETTING: &str = "/proc/sys/net/ipv4/tcp_abort_on_overflow";

fn change(id: &str, value: u32, deadline_ms: u32) -> pb::ChangeTcpSettingRequest {
    pb::ChangeTcpSettingRequest {
        id: id.to_owned(),
        setting: pb::TcpSetting::AbortOnOverflow as i32,
        value,
        deadline_ms,
    }
}

fn value_in(lab: &NetLab, index: usize) -> Result<String, Box<dyn std::error::Error>> {
    Ok(lab.exec(index, &["cat", SETTING])?.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_changes_in_its_namespace_only_is_read_back_and_put_back() -> TestResult {
    let lab = NetLab::new(1)?;
    let outside = std::fs::read_to_string(SETTING)?;
    let before = value_in(&lab, 0)?;
    let mut agent = lab.agent(0, &["--allow", "tune"]).await?;
    let info = agent
        .rpc
        .host_info(pb::HostInfoRequest {})
        .await?
        .into_inner();
    assert!(info.capabilities.iter().any(|c| c == "tune"), "{info:?}");

    let reply = agent
        .rpc
        .change_tcp_setting(change("reset-mode", 1, 30_000))
        .await?
        .into_inner();
    assert_eq!(reply.before.to_string(), before);
    assert_eq!(value_in(&lab, 0)?, "1");
    assert_eq!(
        std::fs::read_to_string(SETTING)?,
        outside,
        "the machine's own"
    );
    let twice = agent
        .rpc
        .change_tcp_setting(change("again", 1, 30_000))
        .await;
    assert_eq!(
        twice.err().map(|status| status.code()),
        Some(tonic::Code::FailedPrecondition)
    );
    for (bad, code) in [
        (change("no-deadline", 1, 0), tonic::Code::InvalidArgument),
        (change("two", 2, 1_000), tonic::Code::InvalidArgument),
        (
            pb::ChangeTcpSettingRequest {
                setting: 0,
                ..change("none", 1, 1_000)
            },
            tonic::Code::InvalidArgument,
        ),
    ] {
        let refused = agent.rpc.change_tcp_setting(bad).await;
        assert_eq!(refused.err().map(|status| status.code()), Some(code));
    }
    let put_back = agent
        .rpc
        .put_back_tcp_setting(pb::PutBackTcpSettingRequest {
            id: "reset-mode".to_owned(),
        })
        .await?
        .into_inner();
    assert_eq!(put_back.value.to_string(), before);
    assert_eq!(value_in(&lab, 0)?, before);

    // Without `tune`, an agent refuses, naming the flag.
    agent.process.kill();
    let mut plain = lab.agent(0, &[]).await?;
    let refused = plain.rpc.change_tcp_setting(change("x", 1, 1_000)).await;
    let status = refused.err().ok_or("accepted without --allow tune")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("--allow tune"), "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_setting_comes_back_at_its_deadline_with_no_agent() -> TestResult {
    let lab = NetLab::new(1)?;
    let before = value_in(&lab, 0)?;
    let mut agent = lab.agent(0, &["--allow", "tune"]).await?;
    // The agent dies; its watchdog puts the value back at the deadline.
    agent
        .rpc
        .change_tcp_setting(change("orphan", 1, 1_500))
        .await?;
    agent.process.kill();
    let killed = Instant::now();
    assert_eq!(value_in(&lab, 0)?, "1");
    let mut back_after = None;
    for _ in 0..50 {
        if value_in(&lab, 0)? == before {
            back_after = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back_after = back_after.ok_or("the watchdog did not put the value back within 5 s")?;
    eprintln!(
        "agent killed; the value came back {} ms later (deadline 1500 ms)",
        back_after.as_millis()
    );
    Ok(())
}
