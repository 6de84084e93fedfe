//! One trace per run, across every host, in a real OpenTelemetry backend.
//!
//! Arize Phoenix (from PyPI, installed into `target/otel/venv` on first use
//! by `deploy/tracing/phoenix.sh`, the script the README gives users)
//! receives the spans: the controller sends them over OTLP/gRPC, the
//! agents over OTLP/HTTP, so both exporters are proven. The trace is then
//! read back from Phoenix's REST API and checked: one trace id, spans from
//! the controller and from both agents, run → case → step → agent request
//! → socket call, and the errno name on the failing calls of A1 and C3.
//! No exporter is mocked.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Phoenix takes 20-40 s to answer on a fresh start.
const PHOENIX_READY: Duration = Duration::from_secs(180);
/// How long spans may take to show up in Phoenix's queries.
const SPANS_ARRIVE: Duration = Duration::from_secs(60);

fn otel_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/otel")
}

fn phoenix_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tracing/phoenix.sh")
}

/// The virtualenv with Phoenix, installed by the deploy script if missing.
fn phoenix_venv() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let venv = otel_dir().join("venv");
    if !venv.join("bin/phoenix").exists() {
        eprintln!(
            "installing Phoenix into {} (about 2 minutes)",
            venv.display()
        );
        let installed = Command::new("bash")
            .arg(phoenix_script())
            .arg("install")
            .arg(otel_dir())
            .status()?;
        if !installed.success() {
            return Err("deploy/tracing/phoenix.sh install failed".into());
        }
    }
    Ok(venv)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A process killed (and waited for) on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Phoenix on loopback ports of its own, with a scratch working directory.
struct Phoenix {
    _process: Running,
    venv: PathBuf,
    http_port: u16,
    grpc_port: u16,
    dir: PathBuf,
}

impl Phoenix {
    fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let venv = phoenix_venv()?;
        let dir = otel_dir().join(format!("phoenix-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (http_port, grpc_port) = (free_port()?, free_port()?);
        let log = std::fs::File::create(dir.join("phoenix.log"))?;
        let process = Running(
            Command::new("bash")
                .arg(phoenix_script())
                .arg("serve")
                .arg(otel_dir())
                .env("PHOENIX_PORT", http_port.to_string())
                .env("PHOENIX_GRPC_PORT", grpc_port.to_string())
                .env("PHOENIX_WORKING_DIR", &dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        let phoenix = Self {
            _process: process,
            venv,
            http_port,
            grpc_port,
            dir,
        };
        let started = Instant::now();
        while phoenix.get("/healthz").is_err() {
            if started.elapsed() > PHOENIX_READY {
                let log = std::fs::read_to_string(phoenix.dir.join("phoenix.log"))?;
                return Err(format!("Phoenix not ready after {PHOENIX_READY:?}:\n{log}").into());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("Phoenix ready after {:?}", started.elapsed());
        Ok(phoenix)
    }

    /// GET a path of Phoenix's HTTP API (with the venv's Python: no HTTP
    /// client in the test's dependencies).
    fn get(&self, path: &str) -> Result<String, Box<dyn std::error::Error>> {
        let url = format!("http://127.0.0.1:{}{path}", self.http_port);
        let out = Command::new(self.venv.join("bin/python"))
            .args([
                "-c",
                "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
                &url,
            ])
            .stderr(Stdio::null())
            .output()?;
        if out.status.success() {
            Ok(String::from_utf8(out.stdout)?)
        } else {
            Err(format!("GET {url} failed").into())
        }
    }

    /// Every span of `trace_id` in `project`.
    fn spans(
        &self,
        project: &str,
        trace_id: &str,
    ) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
        let body = self.get(&format!(
            "/v1/projects/{project}/spans?trace_id={trace_id}&limit=1000"
        ))?;
        let reply: Value = serde_json::from_str(&body)?;
        Ok(reply["data"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An agent on loopback with the given environment.
fn start_agent(env: &[(&str, String)]) -> Result<(Running, String), Box<dyn std::error::Error>> {
    let exe = faultlab::lab::find_agent().ok_or("no faultlab-agent next to the tests")?;
    let mut child = Command::new(exe)
        .args(["--listen", "127.0.0.1:0"])
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("agent said {line:?}"))?
        .to_owned();
    Ok((Running(child), address))
}

/// Stop an agent as systemd would (SIGTERM), so it flushes its spans.
fn stop(agent: Running) -> std::io::Result<()> {
    Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()?;
    let mut agent = agent;
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.0.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].get(key)
}

fn text<'a>(span: &'a Value, key: &str) -> &'a str {
    attribute(span, key).and_then(Value::as_str).unwrap_or("")
}

#[test]
fn a_run_is_one_trace_across_the_controller_and_both_agents() -> TestResult {
    let _turn = crate::common::lab_turn();
    let phoenix = Phoenix::start()?;
    let project = format!("faultlab-e2e-{}", std::process::id());
    let resource = format!("openinference.project.name={project}");
    // The agents send over HTTP/protobuf, the controller over gRPC.
    let agent_env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", phoenix.http_port),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ("OTEL_RESOURCE_ATTRIBUTES", resource.clone()),
    ];
    let (agent_a, address_a) = start_agent(&agent_env)?;
    let (agent_b, address_b) = start_agent(&agent_env)?;
    let inventory = phoenix.dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "[[agent]]\nname = \"a\"\naddress = \"{address_a}\"\n\n[[agent]]\nname = \"b\"\naddress = \"{address_b}\"\n"
        ),
    )?;
    let out = Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(["run", "--suite", "seed", "--case", "A1", "--case", "C3"])
        .args(["--no-history", "--format", "json", "--inventory"])
        .arg(&inventory)
        .args([
            "--otlp-protocol",
            "grpc",
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{}", phoenix.grpc_port),
            "--trace-url",
            "http://viewer.invalid/trace/{trace_id}?span={span_id}",
        ])
        .env("OTEL_RESOURCE_ATTRIBUTES", &resource)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "faultlab failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let trace_id = report["trace_id"]
        .as_str()
        .ok_or("no trace_id in the report")?;
    assert!(
        stderr.contains(&format!("trace {trace_id}")),
        "the run id and trace id are printed together: {stderr}"
    );
    assert_eq!(
        report["trace_url"].as_str(),
        Some(format!("http://viewer.invalid/trace/{trace_id}?span=").as_str())
    );
    let interrupted_trace = interrupted_run(&phoenix, &inventory, &resource)?;
    stop(agent_a)?;
    stop(agent_b)?;

    // Spans arrive in batches: wait until both agents' socket calls are in.
    let started = Instant::now();
    let spans = loop {
        // 404 until the project's first span arrives.
        let spans = phoenix.spans(&project, trace_id).unwrap_or_default();
        let agents: BTreeSet<&str> = spans
            .iter()
            .map(|span| text(span, "server.address"))
            .filter(|address| !address.is_empty())
            .collect();
        let has_socket_calls = spans
            .iter()
            .any(|span| attribute(span, "faultlab.holder.pid").is_some());
        if agents.len() == 2 && has_socket_calls {
            break spans;
        }
        if started.elapsed() > SPANS_ARRIVE {
            return Err(format!(
                "after {SPANS_ARRIVE:?} Phoenix has {} spans of trace {trace_id}, from agents {agents:?}",
                spans.len()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .filter_map(|span| Some((span["context"]["span_id"].as_str()?, span)))
        .collect();
    let parent = |span: &Value| {
        span["parent_id"]
            .as_str()
            .and_then(|id| by_id.get(id).copied())
    };
    for span in &spans {
        assert_eq!(span["context"]["trace_id"].as_str(), Some(trace_id));
    }
    // One root: the run.
    let roots: Vec<&Value> = spans
        .iter()
        .filter(|span| span["parent_id"].is_null())
        .collect();
    assert_eq!(roots.len(), 1, "one root span, got {roots:?}");
    let root = roots[0];
    assert_eq!(
        text(root, "faultlab.run.id"),
        report["run_id"].as_str().unwrap_or("?")
    );
    // Cases under the run, with the ids and verdicts the report has.
    for case in report["cases"].as_array().ok_or("no cases")? {
        let span_id = case["span_id"].as_str().ok_or("a case without span_id")?;
        let span = by_id
            .get(span_id)
            .ok_or("the case's span is not in the trace")?;
        assert_eq!(parent(span).map(|p| &p["context"]), Some(&root["context"]));
        assert_eq!(
            text(span, "faultlab.case.id"),
            case["id"].as_str().unwrap_or("?")
        );
        assert_eq!(
            text(span, "faultlab.verdict"),
            case["verdict"].as_str().unwrap_or("?")
        );
        assert_eq!(text(span, "faultlab.os_pair"), "linux/linux");
        assert_eq!(
            case["trace_url"].as_str(),
            Some(format!("http://viewer.invalid/trace/{trace_id}?span={span_id}").as_str())
        );
    }
    // Both agents served requests in this trace, each under a controller span.
    let requests: Vec<&Value> = spans
        .iter()
        .filter(|span| !text(span, "server.address").is_empty())
        .collect();
    let servers: BTreeSet<&str> = requests
        .iter()
        .map(|span| text(span, "server.address"))
        .collect();
    assert_eq!(
        servers,
        BTreeSet::from([address_a.as_str(), address_b.as_str()])
    );
    for request in &requests {
        let caller = parent(request).ok_or("an agent request without its controller span")?;
        assert!(
            attribute(caller, "faultlab.step").is_some()
                || attribute(caller, "faultlab.case.id").is_some()
                || attribute(caller, "faultlab.run.id").is_some(),
            "agent request {} hangs under {}",
            request["name"],
            caller["name"]
        );
    }
    // The failing recv of A1 and of C3: socket call → agent request →
    // step → case, with ECONNRESET on the socket call and on the step.
    for case_id in ["A1", "C3"] {
        let failing = spans.iter().find(|span| {
            text(span, "faultlab.errno_name") == "ECONNRESET"
                && attribute(span, "faultlab.holder.pid").is_some()
                && {
                    let step = parent(span).and_then(parent);
                    let case = step.and_then(parent);
                    case.is_some_and(|case| text(case, "faultlab.case.id") == case_id)
                }
        });
        let failing = failing.ok_or(format!(
            "no socket call with ECONNRESET under case {case_id}"
        ))?;
        assert_eq!(failing["name"].as_str(), Some("recv"));
        assert_eq!(text(failing, "faultlab.outcome"), "error");
        let request = parent(failing).ok_or("no request")?;
        assert_eq!(request["name"].as_str(), Some("faultlab.v1.Agent/Recv"));
        let step = parent(request).ok_or("no step")?;
        assert_eq!(text(step, "faultlab.call"), "recv");
        assert_eq!(text(step, "faultlab.errno_name"), "ECONNRESET");
    }
    // Wire evidence, when captured, is on the case spans as events.
    for case in report["cases"].as_array().ok_or("no cases")? {
        if case["wire_evidence"].as_bool() == Some(true) {
            let span = by_id
                .get(case["span_id"].as_str().unwrap_or(""))
                .ok_or("no case span")?;
            let events: Vec<&str> = span["events"]
                .as_array()
                .map(|events| events.iter().filter_map(|e| e["name"].as_str()).collect())
                .unwrap_or_default();
            assert!(
                events.contains(&"RST on the wire"),
                "case {} captured packets but its span has events {events:?}",
                case["id"]
            );
        }
    }
    // Ctrl-C: the run stops, and its spans still reach the backend.
    let started = Instant::now();
    loop {
        let spans = phoenix
            .spans(&project, &interrupted_trace)
            .unwrap_or_default();
        let case = spans
            .iter()
            .find(|span| text(span, "faultlab.case.id") == "Z1");
        let has_root = spans.iter().any(|span| span["parent_id"].is_null());
        if let (Some(case), true) = (case, has_root) {
            assert_eq!(text(case, "faultlab.verdict"), "error");
            assert_eq!(case["status_code"].as_str(), Some("ERROR"));
            break;
        }
        if started.elapsed() > SPANS_ARRIVE {
            return Err(format!("the interrupted run's spans never arrived: {spans:?}").into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// A run interrupted by Ctrl-C (SIGINT) in a long sleep; its trace id.
fn interrupted_run(
    phoenix: &Phoenix,
    inventory: &Path,
    resource: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let scenario = phoenix.dir.join("long-wait.toml");
    std::fs::write(
        &scenario,
        "id = \"Z1\"\nname = \"long-wait\"\ntitle = \"Waits until interrupted\"\nroles = [\"client\", \"server\"]\n\n[[step]]\nrole = \"server\"\ndo = \"listen\"\nas = \"l\"\n\n[[step]]\ndo = \"sleep\"\nms = 60000\n",
    )?;
    let mut controller = Running(
        Command::new(env!("CARGO_BIN_EXE_faultlab"))
            .arg("run")
            .arg(&scenario)
            .args(["--no-history", "--inventory"])
            .arg(inventory)
            .args([
                "--otlp-protocol",
                "grpc",
                "--otlp-endpoint",
                &format!("http://127.0.0.1:{}", phoenix.grpc_port),
            ])
            .env("OTEL_RESOURCE_ATTRIBUTES", resource)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let stderr = controller.0.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let trace = loop {
        let line = lines
            .next()
            .ok_or("faultlab ended before printing its trace id")??;
        if let Some((_, trace)) = line.split_once(": trace ") {
            break trace.trim().to_owned();
        }
    };
    std::thread::sleep(Duration::from_millis(1500));
    Command::new("kill")
        .args(["-INT", &controller.0.id().to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = controller.0.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            return Err("faultlab did not stop within 30 s of Ctrl-C".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "an interrupted run fails");
    Ok(trace)
}

#[test]
fn an_unreachable_backend_is_said_once_and_changes_nothing_else() -> TestResult {
    let _turn = crate::common::lab_turn();
    // Port 9 on loopback: nobody listens; every export is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(["run", "--suite", "seed", "--case", "S2", "--no-history"])
        .args([
            "--otlp-endpoint",
            "http://127.0.0.1:9",
            "--otlp-protocol",
            "grpc",
        ])
        .env("FAULTLAB_HISTORY", "/nonexistent/never-written.sqlite")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the run must pass: {stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 expected"), "{stdout}");
    let said = stderr.matches("traces are not being delivered").count();
    assert_eq!(said, 1, "said {said} times:\n{stderr}");
    Ok(())
}
