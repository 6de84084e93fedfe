//! Faults on the application's process: kill it, freeze it, thaw it,
//! restart it.
//!
//! A server that crashes, or hangs while its kernel goes on ACKing, is a
//! fault its clients must survive as much as a peer's RST; a lab must be
//! able to do it to the *real* application, chosen by pid, name or systemd
//! unit. This touches programs the agent did not start, so it needs the
//! `process` capability, and the agent never acts on itself, its holders,
//! its parent or pid 1. Restarting a process by name runs a command the
//! agent's own configuration gives for that name — never one from a
//! request.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, Signal, System, UpdateKind};

/// How long a restart waits for the old process to go after SIGTERM.
pub const TERM_GRACE: Duration = Duration::from_secs(5);
/// How often it looks.
const POLL: Duration = Duration::from_millis(20);

/// Which process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessTarget {
    /// This process id.
    Pid(u32),
    /// Processes with this name: the OS's process name, or the file name
    /// of the executable or of the first two words of the command line (so
    /// `python3 echo_server.py` is found as `echo_server.py`).
    Name(String),
    /// A systemd unit (every process of it).
    Unit(String),
}

/// What to do to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessAction {
    /// SIGKILL / TerminateProcess.
    Kill,
    /// SIGSTOP.
    Stop,
    /// SIGCONT.
    Continue,
    /// Stop it (SIGTERM, SIGKILL after [`TERM_GRACE`]) and start it again.
    Restart,
}

impl ProcessAction {
    /// As logs and errors say it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Stop => "stop",
            Self::Continue => "continue",
            Self::Restart => "restart",
        }
    }
}

/// What was done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessOutcome {
    /// The processes acted on.
    pub pids: Vec<u32>,
    /// A restart's new process (the restart command's), when known.
    pub new_pid: Option<u32>,
}

/// Why a process fault could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The request names nothing usable.
    #[error("{0}")]
    Invalid(String),
    /// No such process.
    #[error("{0}")]
    NotFound(String),
    /// The agent refuses (itself, its holders, pid 1) or cannot here.
    #[error("{0}")]
    Refused(String),
    /// The OS failed.
    #[error("{0}")]
    System(String),
}

/// Acts on the host's processes.
pub struct Processes {
    /// Name → the command that starts it again (from the agent's config).
    restart_commands: BTreeMap<String, String>,
}

fn valid_unit(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._:-\\".contains(c))
}

fn file_name(path: impl AsRef<OsStr>) -> Option<String> {
    Path::new(path.as_ref())
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
}

impl Processes {
    /// With the restart commands of the agent's configuration.
    pub fn new(restart_commands: BTreeMap<String, String>) -> Self {
        Self { restart_commands }
    }

    /// The names a restart command is configured for.
    pub fn restartable(&self) -> impl Iterator<Item = &str> {
        self.restart_commands.keys().map(String::as_str)
    }

    /// Do `action` to `target`; `protected` are pids never touched (the
    /// agent's holders), besides the agent, its parent and pid 1.
    pub fn act(
        &self,
        target: &ProcessTarget,
        action: ProcessAction,
        protected: &[u32],
    ) -> Result<ProcessOutcome, ProcessError> {
        if let ProcessTarget::Unit(unit) = target {
            return Self::act_on_unit(unit, action);
        }
        if cfg!(windows) && matches!(action, ProcessAction::Stop | ProcessAction::Continue) {
            return Err(ProcessError::Refused(format!(
                "{} is not available on Windows (it has no SIGSTOP/SIGCONT)",
                action.name()
            )));
        }
        let system = Self::snapshot()?;
        let found = Self::find(&system, target);
        let own = std::process::id();
        let parent = system
            .process(Pid::from_u32(own))
            .and_then(|process| process.parent())
            .map(Pid::as_u32);
        if let Some(pid) = found
            .iter()
            .find(|&&pid| pid <= 1 || pid == own || Some(pid) == parent || protected.contains(&pid))
        {
            return Err(ProcessError::Refused(format!(
                "process {pid} is the agent, its parent, one of its holders or pid 1: refused"
            )));
        }
        let restart_command = match action {
            ProcessAction::Restart => Some(self.restart_command(&system, target)?),
            _ => None,
        };
        if found.is_empty() && action != ProcessAction::Restart {
            return Err(ProcessError::NotFound(format!(
                "no process {} is running",
                describe(target)
            )));
        }
        let signal = match action {
            ProcessAction::Kill => Signal::Kill,
            ProcessAction::Stop => Signal::Stop,
            ProcessAction::Continue => Signal::Continue,
            ProcessAction::Restart => Signal::Term,
        };
        for &pid in &found {
            let sent = system
                .process(Pid::from_u32(pid))
                .and_then(|process| process.kill_with(signal));
            match sent {
                Some(true) => {}
                // Gone since the snapshot: nothing to do to it.
                None if Self::snapshot()?.process(Pid::from_u32(pid)).is_none() => {}
                _ => {
                    return Err(ProcessError::System(format!(
                        "could not {} process {pid}",
                        action.name()
                    )));
                }
            }
        }
        let mut outcome = ProcessOutcome {
            pids: found.clone(),
            new_pid: None,
        };
        if let Some(command) = restart_command {
            Self::wait_gone(&found);
            outcome.new_pid = Some(start_detached(&command)?);
        }
        Ok(outcome)
    }

    fn snapshot() -> Result<System, ProcessError> {
        let mut system = System::new().map_err(|error| {
            ProcessError::System(format!("cannot read the process table: {error}"))
        })?;
        system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .with_cmd(UpdateKind::Always)
                .with_exe(UpdateKind::Always),
        );
        Ok(system)
    }

    fn find(system: &System, target: &ProcessTarget) -> Vec<u32> {
        let mut found: Vec<u32> = match target {
            ProcessTarget::Pid(pid) => system
                .process(Pid::from_u32(*pid))
                .map(|_| vec![*pid])
                .unwrap_or_default(),
            ProcessTarget::Name(name) => system
                .processes()
                .iter()
                .filter(|(_, process)| {
                    // Threads show up as processes on Linux; only the leader counts.
                    process.thread_kind().is_none()
                        && (process.name() == name.as_str()
                            || process.exe().and_then(file_name).as_deref() == Some(name)
                            || process
                                .cmd()
                                .iter()
                                .take(2)
                                .any(|word| file_name(word).as_deref() == Some(name)))
                })
                .map(|(pid, _)| pid.as_u32())
                .collect(),
            ProcessTarget::Unit(_) => Vec::new(),
        };
        found.sort_unstable();
        found
    }

    /// The configured command for the target's name (for a pid: its process name).
    fn restart_command(
        &self,
        system: &System,
        target: &ProcessTarget,
    ) -> Result<String, ProcessError> {
        let names: Vec<String> = match target {
            ProcessTarget::Name(name) => vec![name.clone()],
            ProcessTarget::Pid(pid) => system
                .process(Pid::from_u32(*pid))
                .map(|process| {
                    let mut names = vec![process.name().to_string_lossy().into_owned()];
                    names.extend(process.cmd().iter().take(2).filter_map(file_name));
                    names
                })
                .unwrap_or_default(),
            ProcessTarget::Unit(_) => Vec::new(),
        };
        names
            .iter()
            .find_map(|name| self.restart_commands.get(name).cloned())
            .ok_or_else(|| {
                ProcessError::Refused(format!(
                    "no restart command is configured for {}: add it under [restart] in the agent's config (or --restart NAME=COMMAND)",
                    describe(target)
                ))
            })
    }

    /// Wait until the processes are gone; SIGKILL those still there after [`TERM_GRACE`].
    fn wait_gone(pids: &[u32]) {
        let deadline = Instant::now() + TERM_GRACE;
        loop {
            let Ok(system) = Self::snapshot() else {
                return;
            };
            let left: Vec<&sysinfo::Process> = pids
                .iter()
                .filter_map(|pid| system.process(Pid::from_u32(*pid)))
                .filter(|process| process.status() != sysinfo::ProcessStatus::Zombie)
                .collect();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                for process in left {
                    process.kill();
                }
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    fn act_on_unit(unit: &str, action: ProcessAction) -> Result<ProcessOutcome, ProcessError> {
        if !valid_unit(unit) {
            return Err(ProcessError::Invalid(format!(
                "unit: {unit:?} is not a systemd unit name"
            )));
        }
        if cfg!(windows) {
            return Err(ProcessError::Refused(
                "systemd units do not exist on Windows; name the process or its pid".to_owned(),
            ));
        }
        let main_pid = || -> Option<u32> {
            let output = Command::new("systemctl")
                .args(["show", "--property=MainPID", "--value", unit])
                .output()
                .ok()?;
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .ok()
                .filter(|&pid| pid != 0)
        };
        let before = main_pid();
        let arguments: Vec<String> = match action {
            ProcessAction::Restart => vec!["restart".into(), unit.into()],
            _ => {
                let signal = match action {
                    ProcessAction::Kill => "KILL",
                    ProcessAction::Stop => "STOP",
                    _ => "CONT",
                };
                vec!["kill".into(), format!("--signal={signal}"), unit.into()]
            }
        };
        let output = Command::new("systemctl")
            .args(&arguments)
            .output()
            .map_err(|error| ProcessError::System(format!("cannot run systemctl: {error}")))?;
        if !output.status.success() {
            return Err(ProcessError::System(format!(
                "systemctl {}: {}",
                arguments.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(ProcessOutcome {
            pids: before.into_iter().collect(),
            new_pid: if action == ProcessAction::Restart {
                main_pid()
            } else {
                None
            },
        })
    }
}

fn describe(target: &ProcessTarget) -> String {
    match target {
        ProcessTarget::Pid(pid) => format!("with pid {pid}"),
        ProcessTarget::Name(name) => format!("named {name:?}"),
        ProcessTarget::Unit(unit) => format!("of unit {unit:?}"),
    }
}

/// Start `command` through the shell, in a session of its own (it outlives
/// the agent), and reap it when it ends; its pid.
fn start_detached(command: &str) -> Result<u32, ProcessError> {
    let mut shell = if cfg!(windows) {
        let mut shell = Command::new("cmd");
        shell.args(["/C", command]);
        shell
    } else {
        let mut shell = Command::new("sh");
        shell.args(["-c", &format!("exec {command}")]);
        shell
    };
    shell
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        shell.process_group(0);
    }
    let mut child = shell
        .spawn()
        .map_err(|error| ProcessError::System(format!("cannot start {command:?}: {error}")))?;
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn state(pid: u32) -> Option<char> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        text.rsplit_once(") ")?.1.chars().next()
    }

    #[test]
    fn a_process_is_frozen_thawed_and_killed_by_pid() -> Result<(), Box<dyn std::error::Error>> {
        let mut child = Command::new("sleep").arg("30").spawn()?;
        let pid = child.id();
        let processes = Processes::new(BTreeMap::new());
        let target = ProcessTarget::Pid(pid);
        processes.act(&target, ProcessAction::Stop, &[])?;
        let frozen = (0..100).find_map(|_| {
            std::thread::sleep(POLL);
            state(pid).filter(|&s| s == 'T')
        });
        assert_eq!(frozen, Some('T'), "SIGSTOP did not stop {pid}");
        processes.act(&target, ProcessAction::Continue, &[])?;
        let thawed = (0..100).find_map(|_| {
            std::thread::sleep(POLL);
            state(pid).filter(|&s| s != 'T')
        });
        assert!(thawed.is_some(), "SIGCONT did not continue {pid}");
        let outcome = processes.act(&target, ProcessAction::Kill, &[])?;
        assert_eq!(outcome.pids, [pid]);
        let status = child.wait()?;
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        Ok(())
    }

    #[test]
    fn the_agent_its_holders_and_pid_1_are_never_touched() {
        let processes = Processes::new(BTreeMap::new());
        for pid in [1, std::process::id()] {
            let refused = processes.act(&ProcessTarget::Pid(pid), ProcessAction::Kill, &[]);
            assert!(
                matches!(refused, Err(ProcessError::Refused(_))),
                "{pid}: {refused:?}"
            );
        }
        let missing = processes.act(&ProcessTarget::Pid(u32::MAX - 7), ProcessAction::Kill, &[]);
        assert!(
            matches!(missing, Err(ProcessError::NotFound(_))),
            "{missing:?}"
        );
        let bad_unit = processes.act(
            &ProcessTarget::Unit("--now; reboot".into()),
            ProcessAction::Kill,
            &[],
        );
        assert!(
            matches!(bad_unit, Err(ProcessError::Invalid(_))),
            "{bad_unit:?}"
        );
    }

    #[test]
    fn a_restart_runs_only_the_configured_command_for_the_name()
    -> Result<(), Box<dyn std::error::Error>> {
        let marker = std::env::temp_dir().join(format!("faultlab-restart-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let name = format!("faultlab-test-{}", std::process::id());
        let processes = Processes::new(BTreeMap::from([(
            name.clone(),
            format!("touch {}", marker.display()),
        )]));
        let unknown = processes.act(
            &ProcessTarget::Name("not-configured".into()),
            ProcessAction::Restart,
            &[],
        );
        assert!(
            matches!(unknown, Err(ProcessError::Refused(_))),
            "{unknown:?}"
        );
        // Not running: a restart just starts it.
        let outcome = processes.act(&ProcessTarget::Name(name), ProcessAction::Restart, &[])?;
        assert!(outcome.pids.is_empty() && outcome.new_pid.is_some());
        let appeared = (0..250).any(|_| {
            std::thread::sleep(POLL);
            marker.exists()
        });
        assert!(appeared, "the restart command did not run");
        std::fs::remove_file(&marker)?;
        Ok(())
    }
}
