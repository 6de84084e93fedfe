//! Secure by default: mutual TLS between controller and agent, an agent
//! that will not serve in plain text off loopback, capabilities from the
//! config file refused with the setting's name, and the audit log.
//!
//! Real agent processes, real TLS handshakes, certificates from
//! `faultlab::certs` (what `faultlab certs` runs).

use faultlab::agents::{ClientTls, Connector};
use faultlab::certs::{self, CertRole, Validity};
use faultlab_proto::v1 as pb;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A scratch directory, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("faultlab-sec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An agent process; killed on drop. Its stderr goes to a file.
struct Agent {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// Wait (10 s at most) until its log has a line with each of `texts`.
    fn wait_for_log(&self, texts: &[&str]) -> TestResult {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(&self.log)?;
            if texts
                .iter()
                .all(|text| log.lines().any(|line| line.contains(text)))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no line with each of {texts:#?} in:\n{log}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn agent_exe() -> Result<PathBuf, Box<dyn std::error::Error>> {
    Ok(faultlab::lab::find_agent().ok_or("no faultlab-agent next to the tests")?)
}

fn start_agent(dir: &Path, args: &[&str]) -> Result<Agent, Box<dyn std::error::Error>> {
    start_agent_by(dir, Command::new(agent_exe()?), args)
}

/// [`start_agent`], `command` starting it (`ip netns exec NS faultlab-agent`).
fn start_agent_by(
    dir: &Path,
    mut command: Command,
    args: &[&str],
) -> Result<Agent, Box<dyn std::error::Error>> {
    let log = dir.join(format!("agent-{}.log", args.len()));
    let mut child = command
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(address) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "agent said {line:?}; log: {}",
            std::fs::read_to_string(&log)?
        )
        .into());
    };
    Ok(Agent {
        address: address.to_owned(),
        child,
        log,
    })
}

/// A lab CA with an agent certificate for 127.0.0.1 and a controller one.
fn lab(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    certs::init(dir, "test lab")?;
    certs::issue(
        dir,
        "agent-1",
        &["127.0.0.1".to_owned()],
        Validity::days(1),
        CertRole::Agent,
    )?;
    certs::issue(dir, "controller", &[], Validity::days(1), CertRole::Client)?;
    Ok(())
}

fn tls_agent(dir: &Path, extra: &[&str]) -> Result<Agent, Box<dyn std::error::Error>> {
    tls_agent_serving(dir, "agent-1", extra)
}

/// An agent on 127.0.0.1 serving certificate `name` of the lab in `dir`.
fn tls_agent_serving(
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Result<Agent, Box<dyn std::error::Error>> {
    let file = |file: &str| dir.join(file).display().to_string();
    let (cert, key, ca) = (
        file(&format!("{name}.pem")),
        file(&format!("{name}.key")),
        file("ca.pem"),
    );
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-ca",
        &ca,
    ];
    args.extend_from_slice(extra);
    start_agent(dir, &args)
}

/// HostInfo over TLS with the given client identity (None: no certificate).
async fn host_info(
    address: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<pb::HostInfoReply, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
        std::fs::read(ca).map_err(|e| e.to_string())?,
    ));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).map_err(|e| e.to_string())?,
            std::fs::read(key).map_err(|e| e.to_string())?,
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    pb::agent_client::AgentClient::new(channel)
        .host_info(pb::HostInfoRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| format!("{status:?}"))
}

#[tokio::test]
async fn only_clients_with_a_certificate_of_the_lab_ca_get_in() -> TestResult {
    let scratch = Scratch::new("mtls")?;
    let dir = &scratch.0;
    lab(dir)?;
    // Another CA, and an expired certificate of the right one.
    let other = dir.join("other");
    certs::init(&other, "someone else")?;
    certs::issue(&other, "intruder", &[], Validity::days(1), CertRole::Client)?;
    // Another agent of the same lab: its certificate serves, it calls no one.
    certs::issue(
        dir,
        "agent-2",
        &["127.0.0.1".to_owned()],
        Validity::days(1),
        CertRole::Agent,
    )?;
    let now = time::OffsetDateTime::now_utc();
    certs::issue(
        dir,
        "expired",
        &[],
        Validity {
            not_before: now - time::Duration::days(3),
            not_after: now - time::Duration::days(1),
        },
        CertRole::Client,
    )?;
    let agent = tls_agent(dir, &[])?;
    let ca = dir.join("ca.pem");

    let right = host_info(
        &agent.address,
        &ca,
        Some((&dir.join("controller.pem"), &dir.join("controller.key"))),
    )
    .await;
    assert!(right.is_ok(), "the lab's controller is refused: {right:?}");

    for (who, identity) in [
        ("no certificate", None),
        (
            "another CA's certificate",
            Some((other.join("intruder.pem"), other.join("intruder.key"))),
        ),
        (
            "an expired certificate",
            Some((dir.join("expired.pem"), dir.join("expired.key"))),
        ),
        (
            "another agent's (server) certificate",
            Some((dir.join("agent-2.pem"), dir.join("agent-2.key"))),
        ),
    ] {
        let refused = host_info(
            &agent.address,
            &ca,
            identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .await;
        assert!(refused.is_err(), "a client with {who} got in: {refused:?}");
    }
    // Plain text to a TLS agent gets nowhere either.
    let plain = Connector::plain().host_info(&agent.address).await;
    assert!(plain.is_err(), "plain text got in: {plain:?}");

    // The controller's own connector, as an inventory's [tls] gives it.
    let connector = Connector::with_tls(&ClientTls {
        ca,
        cert: dir.join("controller.pem"),
        key: dir.join("controller.key"),
    })?;
    let info = connector.host_info(&agent.address).await?;
    assert!(info.capabilities.contains(&"connections".to_owned()));
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_cannot_serve_as_an_agent() -> TestResult {
    let scratch = Scratch::new("mtls-roles")?;
    let dir = &scratch.0;
    lab(dir)?;
    certs::issue(
        dir,
        "client-as-agent",
        &["127.0.0.1".to_owned()],
        Validity::days(1),
        CertRole::Client,
    )?;
    let agent = tls_agent_serving(dir, "client-as-agent", &[])?;
    let connector = Connector::with_tls(&ClientTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("controller.pem"),
        key: dir.join("controller.key"),
    })?;
    let refused = connector.host_info(&agent.address).await;
    let said = format!("{refused:?}");
    assert!(refused.is_err(), "a client certificate served: {said}");
    Ok(())
}

#[tokio::test]
async fn capabilities_that_are_off_are_refused_naming_the_setting_and_every_change_is_audited()
-> TestResult {
    let scratch = Scratch::new("audit")?;
    let dir = &scratch.0;
    lab(dir)?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n[allow]\nconnections = false\n[tls]\ncert = \"agent-1.pem\"\nkey = \"agent-1.key\"\nca = \"ca.pem\"\n",
    )?;
    let agent = start_agent(dir, &["--config", &config.display().to_string()])?;
    let connector = Connector::with_tls(&ClientTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("controller.pem"),
        key: dir.join("controller.key"),
    })?;
    let mut client = connector.connect(&agent.address).await?;
    let info = client.host_info(pb::HostInfoRequest {}).await?.into_inner();
    assert!(
        !info.capabilities.contains(&"connections".to_owned()),
        "{:?}",
        info.capabilities
    );
    let holder = client
        .spawn_holder(pb::SpawnHolderRequest {
            label: "refused".to_owned(),
            session: String::new(),
        })
        .await;
    let status = holder
        .err()
        .ok_or("a holder was started with connections off")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("allow.connections"), "{status:?}");
    let isolate = client
        .isolate(pb::IsolateRequest {
            id: "x".to_owned(),
            mode: pb::IsolationMode::Drop as i32,
            deadline_ms: 1000,
            ..Default::default()
        })
        .await;
    let status = isolate.err().ok_or("isolated without being allowed")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("allow.isolate"), "{status:?}");

    // Each of those calls left an audit line naming the caller's certificate.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&agent.log)?;
        let audits: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("faultlab_agent::audit"))
            .collect();
        let found = |rpc: &str| {
            audits.iter().any(|line| {
                line.contains("caller=\"controller\"")
                    && line.contains(&format!(" rpc={rpc} "))
                    && line.contains("result=\"PermissionDenied")
            })
        };
        if found("SpawnHolder") && found("Isolate") {
            assert!(
                !audits.iter().any(|line| line.contains(" rpc=HostInfo ")),
                "reads are not audited: {audits:?}"
            );
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("no audit lines for the calls in:\n{log}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // `faultlab agents` reaches it with the TLS flags and shows its capabilities.
    let out = Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(["agents", &agent.address])
        .args(["--tls-ca", &dir.join("ca.pem").display().to_string()])
        .args([
            "--tls-cert",
            &dir.join("controller.pem").display().to_string(),
        ])
        .args([
            "--tls-key",
            &dir.join("controller.key").display().to_string(),
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" ok "), "{stdout}");
    Ok(())
}

#[test]
fn an_agent_will_not_serve_in_plain_text_off_loopback_unless_told() -> TestResult {
    let scratch = Scratch::new("exposed")?;
    // Refused, and the message says what to do.
    let out = Command::new(agent_exe()?)
        .args(["--listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it served: {stderr}");
    assert!(
        stderr.contains("refusing to serve on 0.0.0.0:0 without TLS")
            && stderr.contains("--insecure"),
        "{stderr}"
    );
    // With --insecure it serves, and says so loudly.
    let agent = start_agent(&scratch.0, &["--listen", "0.0.0.0:0", "--insecure"])?;
    let log = std::fs::read_to_string(&agent.log)?;
    assert!(log.contains("INSECURE"), "{log}");
    Ok(())
}

#[test]
fn certs_take_any_days_value_without_a_panic() -> TestResult {
    let scratch = Scratch::new("days")?;
    let dir = scratch.0.display().to_string();
    let faultlab = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_faultlab"))
            .args(args)
            .output()
    };
    let init = faultlab(&["certs", "init", "--dir", &dir])?;
    assert!(init.status.success(), "{init:?}");
    for days in ["99999999", "0", "-5", "9223372036854775807", "x"] {
        let asked = format!("--days={days}");
        let issued = faultlab(&[
            "certs", "issue", "x", "--role", "agent", "--dir", &dir, &asked,
        ])?;
        // A clear refusal from the argument parser, never a panic (101).
        assert_eq!(issued.status.code(), Some(2), "--days {days}: {issued:?}");
        assert!(
            String::from_utf8_lossy(&issued.stderr).contains("--days"),
            "--days {days}: {issued:?}"
        );
    }
    // The role is said: no certificate serves both ends.
    let unsaid = faultlab(&["certs", "issue", "x", "--dir", &dir])?;
    assert_eq!(unsaid.status.code(), Some(2), "{unsaid:?}");
    assert!(
        String::from_utf8_lossy(&unsaid.stderr).contains("--role"),
        "{unsaid:?}"
    );
    let issued = faultlab(&[
        "certs", "issue", "x", "--role", "client", "--dir", &dir, "--days", "36500",
    ])?;
    assert!(issued.status.success(), "{issued:?}");
    Ok(())
}

/// A lab with the team's callers: `intern` (no rule names it), `ci-job`
/// (group ci), `owner`; and an agent config giving each its part.
fn team_lab(dir: &Path, agent_address: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    certs::init(dir, "team lab")?;
    certs::issue(
        dir,
        "agent-1",
        &[agent_address.to_owned()],
        Validity::days(1),
        CertRole::Agent,
    )?;
    for (name, groups) in [
        ("intern", vec![]),
        ("ci-job", vec!["ci".to_owned()]),
        ("owner", vec![]),
    ] {
        certs::issue_in_groups(dir, name, &[], Validity::days(1), CertRole::Client, &groups)?;
    }
    // A release bot the rules know by its certificate's alternative name.
    certs::issue(
        dir,
        "release-bot",
        &["release.bot.lab.example".to_owned()],
        Validity::days(1),
        CertRole::Client,
    )?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{agent_address}:0\"\n[allow]\nisolate = true\nlink = true\n\
             [access]\ndefault = [\"connections\"]\n\
             [[access.rules]]\ngroup = \"ci\"\nmay = [\"connections\", \"isolate\", \"link\", \"degrade\", \"loss\", \"capture\"]\n\
             [[access.rules]]\ncaller = \"owner\"\nmay = [\"all\"]\n\
             [[access.rules]]\ncaller = \"release.bot.lab.example\"\nmay = [\"connections\", \"process\"]\n\
             [tls]\ncert = \"agent-1.pem\"\nkey = \"agent-1.key\"\nca = \"ca.pem\"\n"
        ),
    )?;
    Ok(config)
}

/// A client of the agent at `address` holding certificate `name`.
async fn client_as(
    dir: &Path,
    name: &str,
    address: &str,
) -> Result<faultlab::agents::Client, Box<dyn std::error::Error>> {
    let connector = Connector::with_tls(&ClientTls {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    })?;
    Ok(connector.connect(address).await?)
}

type Answer = Result<(), tonic::Status>;

/// What `faultlab COMMAND ADDRESS` prints for the holder of certificate
/// `name` (an error when it fails).
fn cli_as(
    dir: &Path,
    name: &str,
    command: &str,
    address: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let file = |suffix: &str| dir.join(format!("{name}.{suffix}")).display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args([command, address])
        .args(["--tls-ca", &dir.join("ca.pem").display().to_string()])
        .args(["--tls-cert", &file("pem"), "--tls-key", &file("key")])
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("{said}{}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(said)
}

/// One call of each kind of fault (and its undo), and the capability the
/// access rules must find for it.
async fn each_fault_kind(client: &mut faultlab::agents::Client) -> Vec<(&'static str, Answer)> {
    let mut answers = network_faults(client).await;
    answers.extend(host_faults(client).await);
    answers
}

/// Isolation, reboots (simulated and real), links.
async fn network_faults(client: &mut faultlab::agents::Client) -> Vec<(&'static str, Answer)> {
    let isolate = pb::IsolateRequest {
        id: "cut".to_owned(),
        mode: pb::IsolationMode::Drop as i32,
        deadline_ms: 1000,
        ..Default::default()
    };
    let heal = pb::HealRequest {
        id: "cut".to_owned(),
        all: false,
    };
    let reboot = |simulated: bool| pb::RebootRequest {
        simulated,
        down_ms: 100,
        orderly: false,
    };
    let link_down = pb::LinkDownRequest {
        interface: "nonexistent0".to_owned(),
        deadline_ms: 1000,
        ..Default::default()
    };
    let link_up = pb::LinkUpRequest {
        interface: "nonexistent0".to_owned(),
        address: String::new(),
    };
    vec![
        ("isolate", client.isolate(isolate).await.map(drop)),
        ("isolate", client.heal(heal).await.map(drop)),
        ("isolate", client.reboot(reboot(true)).await.map(drop)),
        ("reboot", client.reboot(reboot(false)).await.map(drop)),
        ("link", client.link_down(link_down).await.map(drop)),
        ("link", client.link_up(link_up).await.map(drop)),
    ]
}

/// Degradations, TCP settings, capture, faults on other programs.
async fn host_faults(client: &mut faultlab::agents::Client) -> Vec<(&'static str, Answer)> {
    let degrade = |direction: pb::Direction| pb::DegradeRequest {
        id: "bad".to_owned(),
        interface: "lo".to_owned(),
        deadline_ms: 1000,
        delay_us: 1000,
        direction: direction as i32,
        ..Default::default()
    };
    let restore = pb::RestoreRequest {
        id: "bad".to_owned(),
    };
    let tune = pb::ChangeTcpSettingRequest {
        id: "queue".to_owned(),
        setting: pb::TcpSetting::AbortOnOverflow as i32,
        value: 1,
        deadline_ms: 1000,
    };
    let put_back = pb::PutBackTcpSettingRequest {
        id: "queue".to_owned(),
    };
    let capture = pb::StartCaptureRequest {
        id: "wire".to_owned(),
        ports: vec![1],
    };
    let stop_capture = pb::StopCaptureRequest {
        id: "wire".to_owned(),
    };
    let process = pb::ProcessFaultRequest {
        target: Some(pb::process_fault_request::Target::Name(
            "nothing-here".to_owned(),
        )),
        action: pb::ProcessAction::Stop as i32,
    };
    let abort = pb::AbortConnectionsRequest {
        filter: Some(pb::ConnectionFilter {
            local_port: 1,
            ..Default::default()
        }),
    };
    vec![
        (
            "degrade",
            client.degrade(degrade(pb::Direction::Out)).await.map(drop),
        ),
        (
            "loss",
            client.degrade(degrade(pb::Direction::In)).await.map(drop),
        ),
        ("degrade", client.restore(restore).await.map(drop)),
        ("tune", client.change_tcp_setting(tune).await.map(drop)),
        (
            "tune",
            client.put_back_tcp_setting(put_back).await.map(drop),
        ),
        ("capture", client.start_capture(capture).await.map(drop)),
        ("capture", client.stop_capture(stop_capture).await.map(drop)),
        ("process", client.process_fault(process).await.map(drop)),
        ("process", client.abort_connections(abort).await.map(drop)),
    ]
}

/// The team's agent on this machine's loopback. Isolation and links are
/// not allowed: an agent here must not touch the machine's own firewall,
/// so those calls end at the rules or at the host's own refusal.
fn team_agent_on_loopback(dir: &Path) -> Result<Agent, Box<dyn std::error::Error>> {
    let config = team_lab(dir, "127.0.0.1")?;
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)?
            .replace("isolate = true\n", "")
            .replace("link = true\n", ""),
    )?;
    start_agent(dir, &["--config", &config.display().to_string()])
}

#[tokio::test]
async fn access_rules_deny_each_kind_of_fault_to_whom_they_do_not_give_it() -> TestResult {
    let scratch = Scratch::new("access")?;
    let dir = &scratch.0;
    let agent = team_agent_on_loopback(dir)?;

    // The intern (no rule names it) gets the default: connections only.
    let mut intern = client_as(dir, "intern", &agent.address).await?;
    for (capability, result) in each_fault_kind(&mut intern).await {
        let status = result
            .err()
            .ok_or(format!("the intern used {capability}"))?;
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        let said = status.message();
        assert!(
            said.starts_with(&format!(
                "caller \"intern\" may not use {capability} on this agent"
            )) && said.contains("callers no rule names connections"),
            "{capability}: {said}"
        );
    }
    let info = intern.host_info(pb::HostInfoRequest {}).await?.into_inner();
    assert_eq!(info.caller, "intern");
    assert_eq!(info.capabilities, ["connections"], "{info:?}");
    for denied in ["isolate", "reboot", "power", "capture", "tune", "process"] {
        assert!(
            info.denied.iter().any(|name| name == denied),
            "{:?}",
            info.denied
        );
    }

    // The CI job's rules let isolation through, to what the host allows
    // (here: not isolation, so the agent's own refusal names the setting);
    // a reboot its rules do not give.
    let mut ci = client_as(dir, "ci-job", &agent.address).await?;
    let isolate = ci
        .isolate(pb::IsolateRequest {
            id: "ci-cut".to_owned(),
            mode: pb::IsolationMode::Drop as i32,
            deadline_ms: 2000,
            ..Default::default()
        })
        .await
        .err()
        .ok_or("isolated on a host that does not allow it")?;
    assert!(isolate.message().contains("allow.isolate"), "{isolate:?}");
    let reboot = ci
        .reboot(pb::RebootRequest {
            simulated: false,
            down_ms: 0,
            orderly: true,
        })
        .await
        .err()
        .ok_or("the CI job rebooted")?;
    assert!(
        reboot.message().starts_with(
            "caller \"ci-job\" may not use reboot on this agent: its access rules give it connections,isolate,link,degrade,loss,capture"
        ),
        "{reboot:?}"
    );
    // The owner may do all, and the bot (named by its alternative name)
    // process faults: only the host's own settings stop them.
    for caller in ["owner", "release-bot"] {
        let mut client = client_as(dir, caller, &agent.address).await?;
        let process = client
            .process_fault(pb::ProcessFaultRequest {
                target: Some(pb::process_fault_request::Target::Name(
                    "nothing-here".to_owned(),
                )),
                action: pb::ProcessAction::Stop as i32,
            })
            .await
            .err()
            .ok_or("a process fault on a host that does not allow them")?;
        assert!(
            process.message().contains("allow.process"),
            "{caller}: {process:?}"
        );
    }
    Ok(())
}

/// Calls for the trail: the intern's isolation (denied by the rules) and
/// holder (allowed), the CI job's isolation (let through by the rules,
/// refused by the host). The intern's client and its holder's id.
async fn calls_to_audit(
    dir: &Path,
    address: &str,
) -> Result<(faultlab::agents::Client, u64), Box<dyn std::error::Error>> {
    let mut intern = client_as(dir, "intern", address).await?;
    let denied = intern
        .isolate(pb::IsolateRequest {
            id: "cut".to_owned(),
            mode: pb::IsolationMode::Drop as i32,
            deadline_ms: 1000,
            ..Default::default()
        })
        .await;
    assert!(denied.is_err(), "{denied:?}");
    let holder = intern
        .spawn_holder(pb::SpawnHolderRequest {
            label: "interns-own".to_owned(),
            session: String::new(),
        })
        .await?
        .into_inner()
        .holder_id;
    let mut ci = client_as(dir, "ci-job", address).await?;
    let refused = ci
        .isolate(pb::IsolateRequest {
            id: "ci-cut".to_owned(),
            mode: pb::IsolationMode::Drop as i32,
            deadline_ms: 2000,
            ..Default::default()
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");

    Ok((intern, holder))
}

#[tokio::test]
async fn the_audit_trail_keeps_allowed_and_denied_calls_over_grpc_in_the_log_and_for_the_cli()
-> TestResult {
    let scratch = Scratch::new("audit-trail")?;
    let dir = &scratch.0;
    let agent = team_agent_on_loopback(dir)?;
    let (mut intern, holder) = calls_to_audit(dir, &agent.address).await?;

    // The trail, over gRPC: allowed and denied calls, with caller, fault
    // and deadline.
    let trail = intern
        .audit_trail(pb::AuditTrailRequest { last: 0 })
        .await?
        .into_inner()
        .entries;
    let found = |caller: &str, rpc: &str, result: &str| {
        trail.iter().find(|entry| {
            entry.caller == caller && entry.rpc == rpc && entry.result.starts_with(result)
        })
    };
    let denied = found("intern", "Isolate", "PermissionDenied: caller \"intern\"")
        .ok_or(format!("no denied isolation in {trail:#?}"))?;
    assert_eq!(
        (
            denied.capability.as_str(),
            denied.fault.as_str(),
            denied.deadline_ms
        ),
        ("isolate", "cut", 1000)
    );
    assert!(denied.at_unix_ns > 0);
    let allowed = found("intern", "SpawnHolder", "ok").ok_or("no allowed call")?;
    assert_eq!(allowed.capability, "connections");
    assert!(
        found("ci-job", "Isolate", "PermissionDenied: isolation is off").is_some(),
        "{trail:#?}"
    );
    assert!(
        !trail
            .iter()
            .any(|entry| entry.rpc == "HostInfo" || entry.rpc == "AuditTrail")
    );
    // Each the same in the log, in the documented form.
    agent.wait_for_log(&[
        "faultlab_agent::audit: audit caller=\"intern\" rpc=Isolate capability=isolate fault=\"cut\" deadline_ms=1000 result=\"PermissionDenied: caller \\\"intern\\\" may not use isolate",
        "faultlab_agent::audit: audit caller=\"intern\" rpc=SpawnHolder capability=connections fault=\"\" deadline_ms=0 result=\"ok\" request=\"SpawnHolderRequest",
    ])?;

    // The CLI as the intern: what it may do, and the last entries.
    let agents = cli_as(dir, "intern", "agents", &agent.address)?;
    assert!(
        agents.contains("not for you (intern), by its access rules: ")
            && agents.contains("isolate")
            && !agents.contains("not offered: isolate: caller"),
        "{agents}"
    );
    let audit = cli_as(dir, "intern", "audit", &agent.address)?;
    assert!(
        audit.lines().any(|line| line.contains("intern")
            && line.contains("Isolate")
            && line.contains("cut")
            && line.contains("1000 ms")
            && line.contains("PermissionDenied")),
        "{audit}"
    );
    intern
        .exit_holder(pb::ExitHolderRequest {
            holder_id: holder,
            exit_code: 0,
        })
        .await?;
    Ok(())
}

/// A lab host of this test's own: a network namespace reached over a veth
/// (198.19.250.1 here, 198.19.250.2 there), with a spare veth pair
/// (`spare0`, `spare1`) whose link may go down. Removed on drop.
struct OwnHost {
    namespace: String,
}

impl OwnHost {
    const ADDRESS: &str = "198.19.250.2";

    fn new() -> Result<Self, Box<dyn std::error::Error>> {
        if let Some(why) = faultlab::lab::netns_unavailable() {
            return Err(format!(
                "this test needs root for a network namespace: {why} (CI runs it as root)"
            )
            .into());
        }
        let id = std::process::id() % 100_000;
        let host = Self {
            namespace: format!("flacc{id}"),
        };
        let veth = format!("flacc{id}h");
        let inside = |args: &str| format!("-n {} {args}", host.namespace);
        for args in [
            format!("netns add {}", host.namespace),
            format!(
                "link add {veth} type veth peer name eth0 netns {}",
                host.namespace
            ),
            format!("addr add 198.19.250.1/30 dev {veth}"),
            format!("link set {veth} up"),
            inside(&format!("addr add {}/30 dev eth0", Self::ADDRESS)),
            inside("link set eth0 up"),
            inside("link set lo up"),
            inside("link add spare0 type veth peer name spare1"),
            inside("link set spare0 up"),
        ] {
            let ran = Command::new("ip").args(args.split(' ')).output()?;
            if !ran.status.success() {
                return Err(format!("ip {args}: {}", String::from_utf8_lossy(&ran.stderr)).into());
            }
        }
        Ok(host)
    }

    /// `faultlab-agent`, started in this host.
    fn agent_command(&self) -> Result<Command, Box<dyn std::error::Error>> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(agent_exe()?);
        Ok(command)
    }
}

impl Drop for OwnHost {
    fn drop(&mut self) {
        // The veth goes with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .output();
    }
}

/// A case on one host that cuts it off: it needs `isolate`.
const CUT_OFF_CASE: &str = r#"id = "P1"
name = "cut-off-by-whom"
title = "An isolation that the caller's access rules may or may not give"
roles = ["host"]
needs = ["isolate"]
timeout_ms = 15000

[[step]]
role = "host"
do = "listen"
as = "l"

[[step]]
name = "cut"
role = "host"
do = "isolate"
deadline_ms = 3000

[[step]]
name = "heal"
role = "host"
do = "heal"
expect.linux = { outcome = "ok" }
"#;

#[test]
fn a_case_needing_what_the_rules_deny_is_skipped_saying_so_and_a_watchdog_heal_is_audited()
-> TestResult {
    let host = OwnHost::new()?;
    let scratch = Scratch::new("access-host")?;
    let dir = &scratch.0;
    let config = team_lab(dir, OwnHost::ADDRESS)?;
    let agent = start_agent_by(
        dir,
        host.agent_command()?,
        &["--config", &config.display().to_string()],
    )?;
    let case = dir.join("p1.toml");
    std::fs::write(&case, CUT_OFF_CASE)?;
    let history = dir.join("history.sqlite");
    let play_as = |caller: &str| -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let inventory = dir.join(format!("{caller}.toml"));
        std::fs::write(
            &inventory,
            format!(
                "[[agent]]\nname = \"own\"\naddress = \"{}\"\n[tls]\nca = \"ca.pem\"\ncert = \"{caller}.pem\"\nkey = \"{caller}.key\"\n",
                agent.address
            ),
        )?;
        let inventory = inventory.display().to_string();
        let case = case.display().to_string();
        let ran = crate::common::faultlab(
            &["run", "--inventory", &inventory, &case, "--format", "json"],
            &history,
        )?;
        let said = String::from_utf8_lossy(&ran.stderr);
        assert!(ran.status.code().is_some_and(|code| code < 2), "{said}");
        Ok(serde_json::from_slice(&ran.stdout)?)
    };
    // The intern's rules give no isolation: skipped, saying whose rules.
    let report = play_as("intern")?;
    let p1 = crate::common::case_of(report["cases"].as_array().ok_or("no cases")?, "P1")?;
    assert_eq!(p1["verdict"], "skipped", "{p1:#}");
    let reason = p1["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("needs capability \"isolate\", which the access rules of agent own do not give you (intern)"),
        "{reason}"
    );
    // The CI job's do: the same case runs and passes on the same host.
    let report = play_as("ci-job")?;
    let p1 = crate::common::case_of(report["cases"].as_array().ok_or("no cases")?, "P1")?;
    assert_eq!(p1["verdict"], "expected", "{p1:#}");

    // A link taken down by the CI job comes back by its watchdog, which
    // leaves its own entry in the agent's log.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut ci = client_as(dir, "ci-job", &agent.address).await?;
        ci.link_down(pb::LinkDownRequest {
            interface: "spare0".to_owned(),
            deadline_ms: 300,
            ..Default::default()
        })
        .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    agent.wait_for_log(&[
        "audit caller=\"ci-job\" rpc=LinkDown capability=link fault=\"spare0\" deadline_ms=300 result=\"ok\"",
        "audit caller=\"watchdog\" rpc=link-watchdog capability=- fault=\"spare0\" deadline_ms=300 result=\"ok\"",
    ])?;
    Ok(())
}
