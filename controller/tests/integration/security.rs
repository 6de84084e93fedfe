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

fn agent_exe() -> Result<PathBuf, Box<dyn std::error::Error>> {
    Ok(faultlab::lab::find_agent().ok_or("no faultlab-agent next to the tests")?)
}

fn start_agent(dir: &Path, args: &[&str]) -> Result<Agent, Box<dyn std::error::Error>> {
    let log = dir.join(format!("agent-{}.log", args.len()));
    let mut child = Command::new(agent_exe()?)
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
                line.contains("caller=controller")
                    && line.contains(&format!("rpc=\"{rpc}\""))
                    && line.contains("PermissionDenied")
            })
        };
        if found("SpawnHolder") && found("Isolate") {
            assert!(
                !audits.iter().any(|line| line.contains("rpc=\"HostInfo\"")),
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
