//! The VM lab: each host a QEMU virtual machine with its own Linux kernel,
//! booted from [`guest`]'s initramfs with this build's agent in it. Two NICs
//! per VM, on the lab's management and test bridges through taps, with
//! addresses in 198.18.0.0/15 as on the namespace lab; nothing leaves this
//! machine. KVM when it really works (probed), TCG otherwise. Every QEMU
//! process is the lab's child and dies with it; a lab left by a crashed
//! controller is swept away by the next lab.

pub mod debian;
pub mod guest;
mod install;
pub use install::ansible_playbook;
pub mod keeper;
#[cfg(unix)]
pub mod shell;

use super::agents::AgentGrants;
use super::ip::ip;
use super::netns::{self, Network};
use super::outside::LabSide;
use super::{LabError, LocalLab};
use crate::inventory::{AgentEntry, Inventory};
use faultlab_proto::Capability;
use guest::Kernel;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The QEMU that runs the guests.
const QEMU: &str = "qemu-system-x86_64";
/// Guest memory (MiB) for a release build's image (about 20 MB).
const GUEST_MIB: u64 = 128;
/// Guest memory (MiB) of a whole Debian system.
const DEBIAN_MIB: u64 = 512;
/// The agents' gRPC port in the guests.
pub const VM_CONTROL_PORT: u16 = 7420;
/// How long a guest may take to boot until its agent answers (TCG is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// Lines of each log quoted when a VM does not come up.
const LAST_LINES: usize = 8;
/// How long a KVM guest gets to show it boots before KVM is given up.
const KVM_PROBE: Duration = Duration::from_secs(4);
/// Names of a run's VM lab start with this, then the pid.
const VM_PREFIX: &str = "flv";
/// The word of a VM keeper's command line (`faultlab lab keeper`).
pub const KEEPER: &str = "keeper";
/// Where runs' VM labs keep their logs, under the state directory.
const RUN_LOGS: &str = "vm-logs";
/// How many runs' VM logs are kept.
const RUN_LOGS_KEPT: usize = 5;

/// Why the VM lab could not start.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU is not installed.
    #[error("{QEMU} is missing (apt-get install qemu-system-x86)")]
    NoQemu,
    /// No usable kernel.
    #[error("kernel: {0}")]
    Kernel(String),
    /// The guest image could not be built.
    #[error("guest image: {0}")]
    Guest(String),
    /// A VM did not come up.
    #[error("VM {name}: {reason}\n{logs}")]
    Boot {
        /// The VM.
        name: String,
        /// What went wrong.
        reason: String,
        /// Where its logs are, and their last lines.
        logs: String,
    },
}

/// What a VM lab is made of, besides its network: each VM's keeper (with
/// its QEMU, in the keeper's process group) and their taps.
pub(super) struct Machines {
    keepers: Vec<Child>,
    taps: Vec<String>,
    /// A run's own directory (QMP and shell sockets), removed with it.
    scratch: Option<PathBuf>,
}

impl Machines {
    /// Stop every VM (its keeper and QEMU: see [`stop_groups`]) and remove
    /// the taps.
    pub(super) fn stop(&mut self) {
        stop_groups(&self.pids());
        for keeper in &mut self.keepers {
            let _ = keeper.wait();
        }
        self.keepers.clear();
        for tap in self.taps.drain(..) {
            let _ = ip(&["link", "del", &tap]);
        }
        if let Some(scratch) = self.scratch.take() {
            super::outside::watchdog::disarm_lab(&[scratch.display().to_string()]);
            let _ = std::fs::remove_dir_all(scratch);
        }
    }

    /// The keepers' process ids (each its VM's process group), in host
    /// order.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.keepers.iter().map(Child::id).collect()
    }

    /// Let the VMs outlive this process (`lab up`).
    pub(super) fn detach(&mut self) {
        self.keepers.clear();
        self.taps.clear();
        self.scratch = None;
    }
}

/// Options of a VM lab (also its command-line flags).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct VmOptions {
    /// The guests' kernel (default: the newest /boot/vmlinuz-* whose
    /// modules are installed).
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// That kernel's modules directory (default: /lib/modules/<release>).
    #[arg(long, value_name = "DIR", requires = "kernel")]
    pub kernel_modules: Option<PathBuf>,
    /// What each VM runs.
    #[arg(long, value_enum, default_value_t)]
    pub guest: GuestKind,
}

/// What a VM runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GuestKind {
    /// The agent as the guest's init, from an initramfs: boots in seconds.
    #[default]
    Initramfs,
    /// A whole Debian system (systemd, journald, sshd, its own users), the
    /// agent installed by the project's Ansible role over SSH, started by
    /// systemd with the shipped unit and spoken to over mutual TLS.
    Debian,
}

/// How a VM boots.
enum Boot {
    /// The initramfs with the agent as init.
    Initramfs(PathBuf),
    /// A Debian image (each host an overlay of it).
    Debian(debian::Image),
}

/// Why a VM lab cannot be made here, if it cannot.
pub fn unavailable() -> Option<String> {
    if let Some(why) = netns::netns_unavailable() {
        return Some(why);
    }
    if guest::which(QEMU).is_none() {
        return Some(VmError::NoQemu.to_string());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing (taps need it)".to_owned());
    }
    None
}

/// The name prefix of this process's VM lab.
pub(super) fn run_prefix() -> String {
    format!("{VM_PREFIX}{}", std::process::id())
}

/// Where the guest image and the accelerator probe's answer are kept,
/// shared by every VM lab of this machine whatever its state directory:
/// beside the Debian images ([`debian::cache_dir`]), so they also outlive
/// a reboot.
fn cache() -> PathBuf {
    debian::cache_dir().join("vm-cache")
}

/// Make `count` VMs named after `prefix`, each with an agent; `dir` holds
/// their consoles and QMP sockets (removed with the lab when `scratch`).
pub(super) fn start(
    exe: &Path,
    count: usize,
    prefix: String,
    dir: &Path,
    scratch: bool,
    options: &VmOptions,
    grants: &AgentGrants,
) -> Result<LocalLab, LabError> {
    crate::lab::host_count(count)?;
    if let Some(why) = unavailable() {
        return Err(LabError::Network(why));
    }
    sweep_stale();
    let kernel = Kernel::find(
        options.kernel.as_deref(),
        options.kernel_modules.as_deref(),
        &cache(),
    )?;
    let image = guest::initramfs(exe, &kernel, &cache())?;
    let accel = accelerator(&kernel, &image, &cache());
    let boot = match options.guest {
        GuestKind::Initramfs => Boot::Initramfs(image),
        GuestKind::Debian => Boot::Debian(debian::image(&kernel)?),
    };
    let logs = log_dir(scratch, &prefix, dir)?;
    let mut lab = LocalLab {
        agents: Vec::new(),
        network: Some(Network::new(prefix.clone(), 0)),
        machines: Some(Machines {
            keepers: Vec::new(),
            taps: Vec::new(),
            scratch: scratch.then(|| dir.to_owned()),
        }),
        inventory: Inventory::default(),
    };
    let (management, test) = match lab.network.as_mut() {
        Some(network) => network.make_bridges()?,
        None => return Err(LabError::Network("lost the network".to_owned())),
    };
    let allow = allowed(grants);
    let booting = std::time::Instant::now();
    for index in 0..count {
        let vm = Vm {
            name: format!("vm-{}", index + 1),
            index,
            prefix: &prefix,
            management: Network::address(management, index),
            test: Network::address(test, index),
            subnets: (management, test),
        };
        let files = VmFiles::of(&vm.name, dir, &logs);
        for log in [&files.console, &files.agent_log, &files.qemu_log] {
            let _ = std::fs::remove_file(log);
        }
        if let Boot::Debian(image) = &boot {
            debian::overlay(image, &files.disk)?;
        }
        let (child, taps) = vm.launch(&kernel, &boot, dir, &logs, accel, &allow.join(","))?;
        if let Some(machines) = lab.machines.as_mut() {
            machines.keepers.push(child);
            machines.taps.extend(taps);
        }
        lab.inventory.agents.push(vm.entry(files));
    }
    if let Boot::Debian(image) = &boot {
        install_on_debian(&mut lab, image, exe, &allow, grants, dir, booting)?;
    }
    wait_for_port(&lab, VM_CONTROL_PORT, BOOT_TIMEOUT)?;
    tracing::info!(
        took_ms = booting.elapsed().as_millis(),
        "every agent answers"
    );
    Ok(lab)
}

/// What a VM's agent may do: everything a VM can survive, and process
/// faults when granted.
fn allowed(grants: &AgentGrants) -> Vec<&'static str> {
    grants
        .allowed(vec![
            Capability::Isolate,
            Capability::Link,
            Capability::Reboot,
            Capability::Degrade,
            Capability::Tune,
        ])
        .into_iter()
        .map(Capability::name)
        .collect()
}

/// Once every Debian host of `lab` (booting since `booting`) lets SSH in,
/// install the agents there with the project's Ansible role, allowed
/// `allow` and `grants`; the lab's inventory gets the controller's side of
/// mutual TLS.
fn install_on_debian(
    lab: &mut LocalLab,
    image: &debian::Image,
    exe: &Path,
    allow: &[&str],
    grants: &AgentGrants,
    dir: &Path,
    booting: std::time::Instant,
) -> Result<(), LabError> {
    wait_for_port(lab, SSH_PORT, DEBIAN_BOOT_TIMEOUT)?;
    tracing::info!(
        took_ms = booting.elapsed().as_millis(),
        "Debian hosts booted: sshd answers on each"
    );
    let hosts: Vec<install::Host> = lab
        .inventory
        .agents
        .iter()
        .filter_map(|agent| {
            let address: SocketAddr = agent.address.parse().ok()?;
            match address.ip() {
                std::net::IpAddr::V4(management) => Some(install::Host {
                    name: agent.name.clone(),
                    management,
                }),
                std::net::IpAddr::V6(_) => None,
            }
        })
        .collect();
    let installing = std::time::Instant::now();
    lab.inventory.tls = Some(install::agents(exe, &hosts, image, allow, grants, dir)?);
    tracing::info!(
        took_ms = installing.elapsed().as_millis(),
        "agents installed by the Ansible role"
    );
    Ok(())
}

/// sshd's port on a Debian host.
const SSH_PORT: u16 = 22;
/// How long a Debian host may take to boot until sshd answers (systemd
/// under TCG: about 25 s measured).
const DEBIAN_BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Where a VM lab keeps its logs, made with the lab's directory `dir`: a
/// run's outlive its lab (the newest few runs'); a `lab up` lab's are in
/// its state directory, begun anew.
fn log_dir(scratch: bool, prefix: &str, dir: &Path) -> Result<PathBuf, LabError> {
    let logs = if scratch {
        run_logs(prefix)
    } else {
        dir.to_owned()
    };
    for made in [dir, &logs] {
        std::fs::create_dir_all(made).map_err(|error| {
            LabError::Network(format!("cannot create {}: {error}", made.display()))
        })?;
    }
    Ok(logs)
}

/// Where the logs of a run's VM lab named `prefix` are kept: beside those
/// of the [`RUN_LOGS_KEPT`] runs before it, older ones removed.
fn run_logs(prefix: &str) -> PathBuf {
    let all = super::default_state_dir().join(RUN_LOGS);
    let mut earlier: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&all)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .collect();
    earlier.sort();
    let surplus = earlier.len().saturating_sub(RUN_LOGS_KEPT - 1);
    for (_, old) in earlier.into_iter().take(surplus) {
        let _ = std::fs::remove_dir_all(old);
    }
    all.join(prefix)
}

/// One VM to launch.
struct Vm<'a> {
    name: String,
    index: usize,
    prefix: &'a str,
    management: Ipv4Addr,
    test: Ipv4Addr,
    subnets: (u8, u8),
}

impl Vm<'_> {
    /// Its line of the lab's inventory: where its agent answers, its test
    /// address, and what its lab can do to it from outside (through `files`).
    fn entry(&self, files: VmFiles) -> AgentEntry {
        AgentEntry {
            name: self.name.clone(),
            address: SocketAddr::from((self.management, VM_CONTROL_PORT)).to_string(),
            test_ip: Some(self.test.into()),
            lab: Some(LabSide {
                switch_port: None,
                qmp: Some(files.qmp),
                shell: Some(files.shell),
                console: Some(files.console),
                agent_log: Some(files.agent_log),
            }),
        }
    }

    /// Its taps on the bridges, and its keeper running QEMU, which boots
    /// the guest.
    fn launch(
        &self,
        kernel: &Kernel,
        boot: &Boot,
        dir: &Path,
        logs: &Path,
        accel: &str,
        allow: &str,
    ) -> Result<(Child, Vec<String>), LabError> {
        let files = VmFiles::of(&self.name, dir, logs);
        let (args, taps) = self.qemu_args(kernel, boot, &files, accel, allow)?;
        let exe = super::outside::watchdog::faultlab_exe().ok_or_else(|| LabError::Start {
            exe: "faultlab".to_owned(),
            reason: "a VM's keeper is faultlab itself, and it was not found (set FAULTLAB_EXE)"
                .to_owned(),
        })?;
        let mut command = Command::new(&exe);
        command
            .args(["lab", KEEPER, "--log"])
            .arg(&files.qemu_log)
            .arg("--qmp")
            .arg(&files.qmp)
            .arg("--")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, shared with its QEMU: the lab stops both
        // with one signal, and a Ctrl-C at the terminal reaches only the
        // controller, which stops the VMs itself after its last word.
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let child = command.spawn().map_err(|error| LabError::Start {
            exe: exe.display().to_string(),
            reason: error.to_string(),
        })?;
        Ok((child, taps))
    }

    /// QEMU's command line for this VM, and the taps made for it on the
    /// lab's bridges.
    fn qemu_args(
        &self,
        kernel: &Kernel,
        boot: &Boot,
        files: &VmFiles,
        accel: &str,
        allow: &str,
    ) -> Result<(Vec<OsString>, Vec<String>), LabError> {
        let memory = match boot {
            Boot::Initramfs(image) => guest_mib(image),
            Boot::Debian(_) => DEBIAN_MIB,
        };
        let mut args: Vec<OsString> = [
            "-name",
            &format!("{}v{}", self.prefix, self.index),
            "-accel",
            accel,
            "-m",
            &memory.to_string(),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            // A reset ends QEMU and its keeper starts a fresh one (see
            // `keeper`).
            "-no-reboot",
        ]
        .map(OsString::from)
        .into();
        // Randomness from the host (see `guest::MODULES_IF_ANY`); /dev/urandom
        // never blocks.
        args.extend(
            [
                "-object",
                "rng-random,id=rng,filename=/dev/urandom",
                "-device",
                "virtio-rng-pci,rng=rng",
            ]
            .map(OsString::from),
        );
        let taps = self.nics(&mut args)?;
        args.extend(serial_ports(files));
        args.extend(
            [
                "-qmp".to_owned(),
                format!("unix:{},server=on,wait=off", files.qmp.display()),
                "-kernel".to_owned(),
            ]
            .map(OsString::from),
        );
        args.push(kernel.image.clone().into());
        args.push("-initrd".into());
        let host = format!(
            "faultlab.name={} faultlab.mgmt={}/24 faultlab.test={}/24",
            self.name, self.management, self.test
        );
        let line = match boot {
            Boot::Initramfs(image) => {
                args.push(image.into());
                format!("console=ttyS0 panic=-1 {host} faultlab.allow={allow}")
            }
            Boot::Debian(image) => {
                args.push(image.initrd.clone().into());
                args.push("-drive".into());
                args.push(format!("file={},if=virtio,format=qcow2", files.disk.display()).into());
                // eth0 and eth1 in the NICs' order: management, test.
                format!("root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0 {host}")
            }
        };
        args.push("-append".into());
        args.push(line.into());
        Ok((args, taps))
    }

    /// Its two NICs (management, test), each a tap on its lab's bridge:
    /// their arguments added to `args`; the taps made.
    fn nics(&self, args: &mut Vec<OsString>) -> Result<Vec<String>, LabError> {
        let mut taps = Vec::new();
        for (tag, bridge, subnet) in [
            ("m", format!("{}mb", self.prefix), self.subnets.0),
            ("t", format!("{}tb", self.prefix), self.subnets.1),
        ] {
            let tap = format!("{}{tag}{}", self.prefix, self.index);
            ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
            taps.push(tap.clone());
            ip(&["link", "set", &tap, "master", &bridge, "up"])?;
            args.extend(
                [
                    "-netdev".to_owned(),
                    format!("tap,id={tag},ifname={tap},script=no,downscript=no"),
                    "-device".to_owned(),
                    format!(
                        "virtio-net-pci,netdev={tag},mac=52:54:00:{subnet:02x}:{:02x}:{:02x}",
                        self.index,
                        if tag == "m" { 1 } else { 2 }
                    ),
                ]
                .map(OsString::from),
            );
        }
        Ok(taps)
    }
}

/// Where a VM's sockets and logs are: sockets in the lab's directory,
/// logs in its log directory (the same for `lab up`; kept after a run).
pub struct VmFiles {
    /// The guest's serial console (its kernel, its init).
    pub console: PathBuf,
    /// The guest's agent's log (its third serial port).
    pub agent_log: PathBuf,
    /// What QEMU and its keeper said.
    pub qemu_log: PathBuf,
    /// QEMU's machine protocol.
    pub qmp: PathBuf,
    /// The guest's root shell.
    pub shell: PathBuf,
    /// A Debian guest's disk (an overlay of the lab's image).
    pub disk: PathBuf,
}

/// A VM's serial ports: its console (ttyS0), a root shell for `faultlab lab
/// exec` (ttyS1) and its agent's log (ttyS2). Logs are appended: a fresh
/// QEMU after a reset writes on.
fn serial_ports(files: &VmFiles) -> Vec<OsString> {
    let mut args = Vec::new();
    let shell = files.shell.display();
    for (id, log) in [("console", &files.console), ("agent", &files.agent_log)] {
        args.extend(
            [
                "-chardev".to_owned(),
                format!("file,id={id},path={},append=on", log.display()),
                "-serial".to_owned(),
                format!("chardev:{id}"),
            ]
            .map(OsString::from),
        );
        if id == "console" {
            // The guest's ttyS1, between its console (ttyS0) and its
            // agent's log (ttyS2): a root shell for `faultlab lab exec`.
            args.extend(
                [
                    "-serial".to_owned(),
                    format!("unix:{shell},server=on,wait=off"),
                ]
                .map(OsString::from),
            );
        }
    }
    args
}

impl VmFiles {
    fn of(name: &str, dir: &Path, logs: &Path) -> Self {
        Self {
            console: logs.join(format!("{name}.console")),
            agent_log: logs.join(format!("{name}.agent.log")),
            qemu_log: logs.join(format!("{name}.qemu.log")),
            qmp: dir.join(format!("{name}.qmp")),
            shell: dir.join(format!("{name}.shell")),
            disk: dir.join(format!("{name}.qcow2")),
        }
    }
}

/// The guest's memory: [`GUEST_MIB`], or for a bigger image (a test
/// build's agent) enough to hold it twice while it unpacks, and run.
fn guest_mib(image: &Path) -> u64 {
    let image_mib = std::fs::metadata(image).map_or(0, |meta| meta.len() >> 20);
    GUEST_MIB.max(3 * image_mib + 64)
}

/// Wait until every VM accepts connections on `port` of its management
/// address (its guest booted, its sshd or its agent serves).
fn wait_for_port(lab: &LocalLab, port: u16, within: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + within;
    for entry in &lab.inventory.agents {
        let mut address: SocketAddr = entry
            .address
            .parse()
            .map_err(|_| LabError::Network(format!("bad address {}", entry.address)))?;
        address.set_port(port);
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let side = entry.lab.clone().unwrap_or_default();
                return Err(VmError::Boot {
                    name: entry.name.clone(),
                    reason: format!("nothing answered on {address} within {within:?}"),
                    logs: side.last_words(LAST_LINES),
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// "kvm" when a KVM guest really boots here, else "tcg" (on this machine
/// kind /dev/kvm exists but a KVM guest hangs in its firmware). The answer
/// is kept in `dir`.
fn accelerator(kernel: &Kernel, image: &Path, dir: &Path) -> &'static str {
    let kept = dir.join("accelerator");
    match std::fs::read_to_string(&kept).as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "tcg",
        _ => {}
    }
    let found = if Path::new("/dev/kvm").exists() && kvm_boots(kernel, image, dir) {
        "kvm"
    } else {
        "tcg"
    };
    let _ = std::fs::write(&kept, found);
    found
}

/// Whether a KVM guest prints its kernel's first line within [`KVM_PROBE`].
fn kvm_boots(kernel: &Kernel, image: &Path, dir: &Path) -> bool {
    let log = dir.join("kvm-probe.console");
    let _ = std::fs::remove_file(&log);
    let child = Command::new(QEMU)
        .args([
            "-accel",
            "kvm",
            "-m",
            "64",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none"])
        .args(["-serial", &format!("file:{}", log.display())])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(image)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let deadline = Instant::now() + KVM_PROBE;
    let mut booted = false;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        booted = std::fs::read_to_string(&log).is_ok_and(|text| text.contains("Linux version"));
        if booted {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    booted
}

/// Stop the VMs whose keepers are `leaders`: SIGTERM to each keeper's
/// process group (the keeper ends; QEMU quits), SIGKILL to what is left
/// of them after 3 s.
pub(super) fn stop_groups(leaders: &[u32]) {
    let signal = |signal: &str, leader: u32| {
        Command::new("kill")
            .args([signal, "--", &format!("-{leader}")])
            .output()
            .is_ok_and(|output| output.status.success())
    };
    for &leader in leaders {
        signal("-TERM", leader);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while leaders.iter().any(|&leader| signal("-0", leader)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &leader in leaders {
        signal("-KILL", leader);
    }
}

/// Whether a QEMU (or its keeper) of the lab named `prefix` runs.
pub(super) fn lab_machines_running(prefix: &str) -> bool {
    vm_processes().iter().any(|vm| {
        vm.name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('v'))
    })
}

/// The keepers of the VMs of the lab named `prefix` (each leads its
/// QEMU's process group), found by their names: what a lab whose state
/// files are lost left running.
pub(super) fn lab_keepers(prefix: &str) -> Vec<u32> {
    vm_processes()
        .into_iter()
        .filter(|vm| {
            vm.keeper
                && vm
                    .name
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('v'))
        })
        .map(|vm| vm.pid)
        .collect()
}

/// A QEMU process of a VM lab, or its keeper.
struct VmProcess {
    pid: u32,
    /// Its `-name`.
    name: String,
    keeper: bool,
}

/// The QEMU processes of this machine and their keepers.
fn vm_processes() -> Vec<VmProcess> {
    super::processes()
        .into_iter()
        .filter_map(|(pid, words)| {
            let qemu = words.first().is_some_and(|exe| exe.ends_with(QEMU));
            let keeper = words
                .windows(2)
                .any(|pair| pair[0] == "lab" && pair[1] == KEEPER);
            if !qemu && !keeper {
                return None;
            }
            let name = words.windows(2).find(|pair| pair[0] == "-name")?[1].clone();
            Some(VmProcess { pid, name, keeper })
        })
        .collect()
}

/// Whether the process `pid` is a VM's keeper.
pub(super) fn is_keeper(pid: u32) -> bool {
    vm_processes().iter().any(|vm| vm.keeper && vm.pid == pid)
}

/// Kill the VMs and remove the links of VM labs whose controller is gone:
/// keepers first (they would start a killed QEMU again), then QEMU.
fn sweep_stale() {
    let alive = |pid: &str| Path::new(&format!("/proc/{pid}")).exists();
    let mut stale: Vec<VmProcess> = vm_processes()
        .into_iter()
        .filter(|vm| {
            let owner = vm
                .name
                .strip_prefix(VM_PREFIX)
                .and_then(|rest| rest.split('v').next());
            owner.is_some_and(|owner| !alive(owner))
        })
        .collect();
    stale.sort_by_key(|vm| !vm.keeper);
    for vm in stale {
        let _ = Command::new("kill")
            .args(["-KILL", &vm.pid.to_string()])
            .output();
    }
    netns::sweep_links(VM_PREFIX, alive);
    // Their scratch directories (consoles, QMP sockets).
    let Ok(entries) = std::fs::read_dir(super::default_state_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name
            .strip_prefix(VM_PREFIX)
            .is_some_and(|owner| owner.parse::<u32>().is_ok() && !alive(owner))
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
