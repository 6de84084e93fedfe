//! `faultlab lab`: a lab of hosts on this machine that outlives the
//! command (up, exec, down, status).

use super::agents::{AgentsArgs, agents};
use super::{TlsArgs, parse_pair, say};
use anyhow::Context as _;
use clap::Subcommand;
use faultlab::lab::outside::{LabSide, OutsideFault, watchdog};
use faultlab::lab::vm::VmOptions;
use faultlab::lab::{self, AgentGrants, LabError, LabKind, LabStatus};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What to do with the lab, and where its state is.
#[derive(clap::Args)]
pub struct LabArgs {
    #[command(subcommand)]
    action: LabAction,
    /// Where the lab's state is kept (inventory, agent pids, logs). Each
    /// state directory is a lab of its own: labs of two run side by side.
    #[arg(long, value_name = "DIR", default_value_os_t = lab::default_state_dir(), global = true)]
    state: PathBuf,
}

#[derive(Subcommand)]
enum LabAction {
    /// Make the hosts (management and test network, an agent in each) and
    /// write their inventory.
    Up {
        /// How many hosts (1 to 240); 2, as `run` makes for the built-in
        /// suites.
        #[arg(long, default_value_t = 2, value_parser = host_count)]
        hosts: usize,
        /// Let the agents act on other programs (process faults on an
        /// application, aborting its connections).
        #[arg(long)]
        allow_process: bool,
        /// QEMU VMs with their own kernels instead of network namespaces
        /// (root, qemu-system-x86, a kernel in /boot).
        #[arg(long)]
        vm: bool,
        #[command(flatten)]
        vm_options: VmOptions,
        /// How the agents restart a program, as NAME=COMMAND (repeatable).
        #[arg(long = "restart", value_name = "NAME=COMMAND", value_parser = |text: &str| parse_pair(text, "NAME=COMMAND"))]
        restart: Vec<(String, String)>,
        /// A systemd unit (an application under test) the agents may stop,
        /// kill and restart through systemd (repeatable; with
        /// --allow-process). Hosts whose agent runs as its own user (Debian
        /// VMs) get a polkit rule naming these units and no other.
        #[arg(long = "unit", value_name = "NAME", requires = "allow_process")]
        units: Vec<String>,
    },
    /// Run a command on a lab host (inside its network namespace, or in its
    /// VM through the VM's root shell), e.g. the application under test:
    /// `faultlab lab exec 2 -- python3 server.py`. In a VM the command is one
    /// shell line that must not read its input.
    Exec {
        /// The host's number (1 = host-1).
        host: usize,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Stop the agents and remove every namespace and bridge (also after a crash).
    Down,
    /// The lab's agents and their health.
    Status,
    /// Undo a fault the lab made from outside a host when its deadline
    /// comes (started, detached, by the lab itself).
    #[command(hide = true)]
    Watchdog {
        /// What was cut.
        #[arg(long, value_enum)]
        fault: OutsideFault,
        /// When to give it back (at most the cap every fault has, 600000).
        #[arg(long, value_parser = clap::value_parser!(u64).range(0..=faultlab::MAX_FAULT_MS))]
        after_ms: u64,
        /// The host's switch port.
        #[arg(long)]
        switch_port: Option<String>,
        /// The host's QMP socket.
        #[arg(long)]
        qmp: Option<PathBuf>,
    },
    /// Run a VM's QEMU, and a fresh one each time its guest resets
    /// (started by the VM lab; see `lab::vm::keeper`).
    #[command(hide = true)]
    Keeper {
        /// Where QEMU's output and the keeper's notes go (appended).
        #[arg(long)]
        log: PathBuf,
        /// The VM's QMP socket: a cable still pulled is pulled again on a
        /// fresh QEMU.
        #[arg(long)]
        qmp: PathBuf,
        /// QEMU's arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        qemu: Vec<std::ffi::OsString>,
    },
}

/// Carry out the action; whether it went well.
pub async fn lab(args: LabArgs) -> anyhow::Result<bool> {
    let state = &args.state;
    match args.action {
        LabAction::Up {
            hosts,
            allow_process,
            vm,
            vm_options,
            restart,
            units,
        } => {
            let grants = AgentGrants {
                process: allow_process,
                restart,
                units,
            };
            let kind = if vm { LabKind::Vm } else { LabKind::Auto };
            up(hosts, grants, kind, &vm_options, state)
        }
        LabAction::Exec { host, command } => exec(host, &command, state),
        LabAction::Down => {
            let removed = lab::lab_down(state)?;
            if removed.is_empty() {
                say!("lab down: nothing was up");
            } else {
                say!("lab down: removed {}", removed.join(", "));
            }
            Ok(true)
        }
        LabAction::Status => status(state).await,
        LabAction::Watchdog {
            fault,
            after_ms,
            switch_port,
            qmp,
        } => {
            let side = LabSide {
                switch_port,
                qmp,
                ..LabSide::default()
            };
            let after = std::time::Duration::from_millis(after_ms);
            let how =
                tokio::task::spawn_blocking(move || watchdog::keep(&side, fault, after)).await??;
            say!("watchdog: {how}");
            Ok(true)
        }
        LabAction::Keeper { log, qmp, qemu } => {
            let side = LabSide {
                qmp: Some(qmp),
                ..LabSide::default()
            };
            tokio::task::spawn_blocking(move || {
                lab::vm::keeper::keep(&qemu, &log, || side.pulled_again())
            })
            .await??;
            Ok(true)
        }
    }
}

fn up(
    hosts: usize,
    grants: AgentGrants,
    kind: LabKind,
    vm_options: &VmOptions,
    state: &Path,
) -> anyhow::Result<bool> {
    let exe = lab::find_agent().ok_or(LabError::NoAgent)?;
    match lab::netns_unavailable() {
        _ if kind == LabKind::Vm => {
            say!("lab up: {hosts} QEMU VMs with their own kernels (management and test networks)")
        }
        None => say!("lab up: {hosts} network-namespace hosts (management and test networks)"),
        Some(why) => say!(
            "lab up: {why}: {hosts} agents on loopback instead; cases that cut hosts off will be skipped (run as root for network namespaces)"
        ),
    }
    let inventory = lab::lab_up(&exe, hosts, state, &grants, kind, vm_options)?;
    say!("inventory {}", inventory.display());
    say!(
        "run:    faultlab run --suite seed --inventory {}",
        inventory.display()
    );
    Ok(true)
}

/// How long a command run in a lab VM may take.
#[cfg(unix)]
const EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

fn exec(host: usize, command: &[String], state: &Path) -> anyhow::Result<bool> {
    #[cfg(unix)]
    if let Some(shell) = lab::lab_shell(state, host)? {
        // A VM: its root shell on its second serial port.
        let ran = lab::vm::shell::run(&shell, &command.join(" "), EXEC_TIMEOUT)?;
        print!("{}", ran.output);
        std::io::stdout().flush()?;
        return Ok(ran.status == 0);
    }
    let namespace = lab::lab_namespace(state, host)?;
    let mut process = match &namespace {
        Some(namespace) => {
            let mut process = std::process::Command::new("ip");
            process.args(["netns", "exec", namespace]).args(command);
            process
        }
        None => {
            let mut process = std::process::Command::new(&command[0]);
            process.args(&command[1..]);
            process
        }
    };
    let status = process
        .status()
        .with_context(|| format!("cannot run {:?}", command.join(" ")))?;
    Ok(status.success())
}

async fn status(state: &Path) -> anyhow::Result<bool> {
    let others = lab::other_labs(state);
    let others = match others.is_empty() {
        true => String::new(),
        false => format!(
            "; other labs up on this machine (--state): {}",
            others
                .iter()
                .map(|(state, prefix)| format!("{state} (names {prefix}*)"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let Some(LabStatus {
        inventory_path: path,
        inventory,
        pids,
        prefix,
    }) = lab::lab_status(state)
    else {
        say!("no lab is up (state {}){others}", state.display());
        return Ok(false);
    };
    say!("inventory {} (names {prefix}*{others})", path.display());
    let running = pids.iter().filter(|(_, alive)| *alive).count();
    say!("{running} of {} agent processes running", pids.len());
    let healthy = agents(AgentsArgs::of_inventory(path), &TlsArgs::default()).await?;
    Ok(healthy && running == inventory.agents.len())
}

/// A number of hosts a lab can have (`--hosts`).
pub(super) fn host_count(text: &str) -> Result<usize, String> {
    let count: usize = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of hosts"))?;
    lab::host_count(count).map_err(|error| error.to_string())
}
