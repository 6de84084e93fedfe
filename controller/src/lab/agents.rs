//! The lab's agent processes: where the executable is, what they may do,
//! starting one and reading where it listens, letting it outlive this
//! process, and stopping them all.

use super::LabError;
use faultlab_proto::Capability;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long an agent may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long agents get to stop by themselves (and send their last spans).
const AGENT_STOP_GRACE: Duration = Duration::from_secs(6);
/// The agent executable's file name.
pub const AGENT_EXE: &str = if cfg!(windows) {
    "faultlab-agent.exe"
} else {
    "faultlab-agent"
};

/// Where the agent executable is: `$FAULTLAB_AGENT`, next to this
/// executable (or one directory up, for test binaries in `deps/`), or on PATH.
pub fn find_agent() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FAULTLAB_AGENT") {
        return Some(PathBuf::from(path));
    }
    let here = std::env::current_exe().ok()?;
    let beside = here.parent().map(|dir| dir.join(AGENT_EXE));
    let above = here
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(AGENT_EXE));
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(AGENT_EXE))
            .find(|candidate| candidate.is_file())
    });
    beside
        .into_iter()
        .chain(above)
        .find(|candidate| candidate.is_file())
        .or(on_path)
}

/// A running agent process of the lab.
pub(super) struct LocalAgent {
    pub(super) child: Child,
    _stdout: ChildStdout,
}

/// What a lab's agents may do beyond the lab's defaults (loopback agents:
/// connections; namespace hosts: also isolate and link).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentGrants {
    /// Act on other programs (process faults, aborting their connections).
    pub process: bool,
    /// Restart commands by process name (`--restart NAME=COMMAND`).
    pub restart: Vec<(String, String)>,
    /// Systemd units of applications the agents may stop, kill and restart
    /// through systemd (`--unit NAME`): on hosts whose agent runs as its
    /// own user (the Debian VM lab's), a polkit rule names them.
    pub units: Vec<String>,
}

impl AgentGrants {
    /// The capabilities an agent of a lab may have: `base`, and process
    /// faults when granted.
    pub(super) fn allowed(&self, mut base: Vec<Capability>) -> Vec<Capability> {
        if self.process {
            base.push(Capability::Process);
        }
        base
    }

    pub(super) fn arguments(&self, allow: Vec<Capability>) -> Vec<String> {
        let allow = self.allowed(allow);
        let mut arguments = Vec::new();
        if !allow.is_empty() {
            arguments.push("--allow".to_owned());
            arguments.push(Capability::names(&allow));
        }
        for (name, command) in &self.restart {
            arguments.push("--restart".to_owned());
            arguments.push(format!("{name}={command}"));
        }
        arguments
    }
}

/// The agent's audit log target (`faultlab_agent::audit`).
const AUDIT_TARGET: &str = "faultlab_agent::audit";

/// Let an agent outlive this process: its own process group (spared by the
/// terminal's Ctrl-C), its log in a file.
pub(super) fn detach(command: &mut Command, log: &Path) -> Result<(), LabError> {
    let log = std::fs::File::create(log)
        .map_err(|error| LabError::Network(format!("cannot write {}: {error}", log.display())))?;
    command.stderr(log);
    // The host's log keeps its audit trail (who changed what, and its
    // watchdogs' heals); everything else only when it goes wrong.
    command.env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| format!("error,{AUDIT_TARGET}=info")),
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    Ok(())
}

/// Start an agent; it traces where this process does (`gateway`: this
/// host's address on the agent's network, when that is another namespace).
pub(super) fn start_agent(
    exe: &Path,
    mut command: Command,
    gateway: Option<std::net::IpAddr>,
) -> Result<(LocalAgent, String), LabError> {
    let failed = |reason: String| LabError::Start {
        exe: exe.display().to_string(),
        reason,
    };
    // An agent writing to this terminal says only what goes wrong (its
    // audit trail is still kept: `faultlab audit`); one with a log file of
    // its own says what `detach` set.
    if !command.get_envs().any(|(name, _)| name == "RUST_LOG") {
        command.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error".to_owned()),
        );
    }
    let mut child = command
        .envs(faultlab_telemetry::child_environment(gateway))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| failed(error.to_string()))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        return Err(failed("no stdout".to_owned()));
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line).map(|_| line);
        let _ = tx.send((read, reader.into_inner()));
    });
    let (line, stdout) = match rx.recv_timeout(START_TIMEOUT) {
        Ok((Ok(line), stdout)) => (line, stdout),
        Ok((Err(error), _)) => {
            let _ = child.kill();
            return Err(failed(error.to_string()));
        }
        Err(_) => {
            let _ = child.kill();
            return Err(failed(format!("said nothing within {START_TIMEOUT:?}")));
        }
    };
    let Some(address) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        return Err(failed(format!("unexpected first line {line:?}")));
    };
    let address = address.to_owned();
    Ok((
        LocalAgent {
            child,
            _stdout: stdout,
        },
        address,
    ))
}

/// Stop agents: SIGTERM first (an agent then kills its holders and
/// flushes its traces), SIGKILL for any that has not ended after the grace
/// time.
pub(super) fn stop_all(agents: &mut [LocalAgent]) {
    for agent in agents.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &agent.child.id().to_string()])
            .output();
    }
    let deadline = Instant::now() + AGENT_STOP_GRACE;
    for agent in agents.iter_mut() {
        while matches!(agent.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = agent.child.kill();
        let _ = agent.child.wait();
    }
}

/// Whether process `pid` is alive.
pub(super) fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Stop processes that are not our children (agents of a standing lab, or
/// of a run that was killed): SIGTERM first, SIGKILL for any still alive
/// after the grace time.
pub(super) fn stop_pids(pids: &[u32]) {
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let deadline = Instant::now() + AGENT_STOP_GRACE;
    while pids.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in pids.iter().copied().filter(|&pid| alive(pid)) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}
