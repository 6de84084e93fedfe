//! The local default lab: agent processes started on this machine's
//! loopback, so a run needs no setup and no inventory. They stop when the
//! lab is dropped.

use crate::inventory::{AgentEntry, Inventory};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long an agent may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The agent executable's file name.
pub const AGENT_EXE: &str = if cfg!(windows) {
    "faultlab-agent.exe"
} else {
    "faultlab-agent"
};

/// Why the local lab could not start.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// No agent executable was found.
    #[error(
        "cannot find {AGENT_EXE}: set FAULTLAB_AGENT, put it next to faultlab or on PATH \
         (cargo build --release --workspace builds both)"
    )]
    NoAgent,
    /// An agent did not start.
    #[error("agent {exe} did not start: {reason}")]
    Start {
        /// The executable.
        exe: String,
        /// What went wrong.
        reason: String,
    },
}

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
struct LocalAgent {
    child: Child,
    _stdout: ChildStdout,
}

/// Agents on loopback, stopped on drop.
pub struct LocalLab {
    agents: Vec<LocalAgent>,
    /// Their inventory (names `local-1`, `local-2`, ...).
    pub inventory: Inventory,
}

impl LocalLab {
    /// Start `count` agents from `exe` on 127.0.0.1 with free ports.
    pub fn start(exe: &Path, count: usize) -> Result<Self, LabError> {
        let mut lab = Self {
            agents: Vec::new(),
            inventory: Inventory::default(),
        };
        for index in 1..=count {
            let (agent, address) = start_agent(exe)?;
            lab.agents.push(agent);
            lab.inventory.agents.push(AgentEntry {
                name: format!("local-{index}"),
                address,
                test_ip: None,
            });
        }
        Ok(lab)
    }

    /// Process ids of the agents, in inventory order.
    pub fn pids(&self) -> Vec<u32> {
        self.agents.iter().map(|agent| agent.child.id()).collect()
    }
}

fn start_agent(exe: &Path) -> Result<(LocalAgent, String), LabError> {
    let failed = |reason: String| LabError::Start {
        exe: exe.display().to_string(),
        reason,
    };
    let mut child = Command::new(exe)
        .args(["--listen", "127.0.0.1:0"])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
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

impl Drop for LocalLab {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            let _ = agent.child.kill();
            let _ = agent.child.wait();
        }
    }
}
