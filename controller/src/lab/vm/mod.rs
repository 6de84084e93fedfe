//! The VM lab: each host a QEMU virtual machine with its own Linux kernel,
//! booted from [`guest`]'s initramfs with this build's agent in it. Two NICs
//! per VM, on the lab's management and test bridges through taps, with
//! addresses in 198.18.0.0/15 as on the namespace lab; nothing leaves this
//! machine. KVM when it really works (probed), TCG otherwise. Every QEMU
//! process is the lab's child and dies with it; a lab left by a crashed
//! controller is swept away by the next lab.

pub mod guest;
#[cfg(unix)]
pub mod shell;

use super::agents::AgentGrants;
use super::netns::{self, Network, ip};
use super::outside::LabSide;
use super::{LabError, LocalLab};
use crate::inventory::{AgentEntry, Inventory};
use guest::Kernel;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The QEMU that runs the guests.
const QEMU: &str = "qemu-system-x86_64";
/// Guest memory (MiB) for a release build's image (about 20 MB).
const GUEST_MIB: u64 = 128;
/// The agents' gRPC port in the guests.
pub const VM_CONTROL_PORT: u16 = 7420;
/// How long a guest may take to boot until its agent answers (TCG is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a KVM guest gets to show it boots before KVM is given up.
const KVM_PROBE: Duration = Duration::from_secs(4);
/// Names of a run's VM lab start with this, then the pid.
const VM_PREFIX: &str = "flv";

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
    #[error("VM {name}: {reason} (its console: {log})")]
    Boot {
        /// The VM.
        name: String,
        /// What went wrong.
        reason: String,
        /// Its serial console's log.
        log: String,
    },
}

/// What a VM lab is made of, besides its network: the QEMU processes and
/// their taps.
pub(super) struct Machines {
    children: Vec<Child>,
    taps: Vec<String>,
    /// A run's own directory (consoles, QMP sockets), removed with it.
    scratch: Option<PathBuf>,
}

impl Machines {
    /// Stop every VM (QEMU quits on SIGTERM; SIGKILL if it does not) and
    /// remove the taps.
    pub(super) fn stop(&mut self) {
        for child in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .output();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        for tap in self.taps.drain(..) {
            let _ = ip(&["link", "del", &tap]);
        }
        if let Some(scratch) = self.scratch.take() {
            super::outside::watchdog::disarm_lab(&[scratch.display().to_string()]);
            let _ = std::fs::remove_dir_all(scratch);
        }
    }

    /// The QEMU processes' ids, in host order.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Let the VMs outlive this process (`lab up`).
    pub(super) fn detach(&mut self) {
        self.children.clear();
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
/// shared by every VM lab of this machine.
fn cache() -> PathBuf {
    super::default_state_dir().join("vm-cache")
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
    if let Some(why) = unavailable() {
        return Err(LabError::Network(why));
    }
    sweep_stale();
    let kernel = Kernel::find(options.kernel.as_deref(), options.kernel_modules.as_deref())?;
    let image = guest::initramfs(exe, &kernel, &cache())?;
    let accel = accelerator(&kernel, &image, &cache());
    std::fs::create_dir_all(dir)
        .map_err(|error| LabError::Network(format!("cannot create {}: {error}", dir.display())))?;
    let mut lab = LocalLab {
        agents: Vec::new(),
        network: Some(Network::new(prefix.clone(), 0)),
        machines: Some(Machines {
            children: Vec::new(),
            taps: Vec::new(),
            scratch: scratch.then(|| dir.to_owned()),
        }),
        inventory: Inventory::default(),
    };
    let (management, test) = match lab.network.as_mut() {
        Some(network) => network.make_bridges()?,
        None => return Err(LabError::Network("lost the network".to_owned())),
    };
    let mut allow = vec!["isolate", "link", "reboot", "degrade"];
    if grants.process {
        allow.push("process");
    }
    for index in 0..count {
        let vm = Vm {
            name: format!("vm-{}", index + 1),
            index,
            prefix: &prefix,
            management: Network::address(management, index),
            test: Network::address(test, index),
            subnets: (management, test),
        };
        let (child, taps) = vm.launch(&kernel, &image, dir, accel, &allow.join(","))?;
        if let Some(machines) = lab.machines.as_mut() {
            machines.children.push(child);
            machines.taps.extend(taps);
        }
        lab.inventory.agents.push(AgentEntry {
            name: vm.name.clone(),
            address: SocketAddr::from((vm.management, VM_CONTROL_PORT)).to_string(),
            test_ip: Some(vm.test.into()),
            lab: Some(LabSide {
                switch_port: None,
                qmp: Some(dir.join(format!("{}.qmp", vm.name))),
                shell: Some(dir.join(format!("{}.shell", vm.name))),
            }),
        });
    }
    wait_for_agents(&lab, dir)?;
    Ok(lab)
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
    /// Its taps on the bridges, and QEMU booting the guest.
    fn launch(
        &self,
        kernel: &Kernel,
        image: &Path,
        dir: &Path,
        accel: &str,
        allow: &str,
    ) -> Result<(Child, Vec<String>), LabError> {
        let mut taps = Vec::new();
        let mut command = Command::new(QEMU);
        command.args([
            "-name",
            &format!("{}v{}", self.prefix, self.index),
            "-accel",
            accel,
            "-m",
            &guest_mib(image).to_string(),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ]);
        for (tag, bridge, subnet) in [
            ("m", format!("{}mb", self.prefix), self.subnets.0),
            ("t", format!("{}tb", self.prefix), self.subnets.1),
        ] {
            let tap = format!("{}{tag}{}", self.prefix, self.index);
            ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
            taps.push(tap.clone());
            ip(&["link", "set", &tap, "master", &bridge, "up"])?;
            command.args([
                "-netdev",
                &format!("tap,id={tag},ifname={tap},script=no,downscript=no"),
                "-device",
                &format!(
                    "virtio-net-pci,netdev={tag},mac=52:54:00:{subnet:02x}:{:02x}:{:02x}",
                    self.index,
                    if tag == "m" { 1 } else { 2 }
                ),
            ]);
        }
        let log = dir.join(format!("{}.console", self.name));
        let qmp = dir.join(format!("{}.qmp", self.name));
        let shell = dir.join(format!("{}.shell", self.name));
        command
            .args(["-serial", &format!("file:{}", log.display())])
            // The guest's ttyS1: a root shell for `faultlab lab exec`.
            .args([
                "-serial",
                &format!("unix:{},server=on,wait=off", shell.display()),
            ])
            .args(["-qmp", &format!("unix:{},server=on,wait=off", qmp.display())])
            .arg("-kernel")
            .arg(&kernel.image)
            .arg("-initrd")
            .arg(image)
            .args([
                "-append",
                &format!(
                    "console=ttyS0 panic=-1 faultlab.name={} faultlab.mgmt={}/24 faultlab.test={}/24 faultlab.allow={allow}",
                    self.name, self.management, self.test
                ),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: a Ctrl-C at the terminal reaches the
        // controller, which stops the VMs itself after its last word.
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let child = command.spawn().map_err(|error| LabError::Start {
            exe: QEMU.to_owned(),
            reason: error.to_string(),
        })?;
        Ok((child, taps))
    }
}

/// The guest's memory: [`GUEST_MIB`], or for a bigger image (a test
/// build's agent) enough to hold it twice while it unpacks, and run.
fn guest_mib(image: &Path) -> u64 {
    let image_mib = std::fs::metadata(image).map_or(0, |meta| meta.len() >> 20);
    GUEST_MIB.max(3 * image_mib + 64)
}

/// Wait until every VM's agent accepts connections (its guest booted).
fn wait_for_agents(lab: &LocalLab, dir: &Path) -> Result<(), LabError> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    for entry in &lab.inventory.agents {
        let address: SocketAddr = entry
            .address
            .parse()
            .map_err(|_| LabError::Network(format!("bad address {}", entry.address)))?;
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(VmError::Boot {
                    name: entry.name.clone(),
                    reason: format!("its agent did not answer within {BOOT_TIMEOUT:?}"),
                    log: dir
                        .join(format!("{}.console", entry.name))
                        .display()
                        .to_string(),
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

/// Whether a QEMU of the lab named `prefix` runs.
pub(super) fn lab_machines_running(prefix: &str) -> bool {
    qemu_processes().iter().any(|(_, name)| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('v'))
    })
}

/// The QEMU processes of this machine: pid, and `-name`.
fn qemu_processes() -> Vec<(String, String)> {
    super::processes()
        .into_iter()
        .filter(|(_, words)| words.first().is_some_and(|exe| exe.ends_with(QEMU)))
        .filter_map(|(pid, words)| {
            let name = words.windows(2).find(|pair| pair[0] == "-name")?[1].clone();
            Some((pid.to_string(), name))
        })
        .collect()
}

/// Kill the VMs and remove the links of VM labs whose controller is gone.
fn sweep_stale() {
    let alive = |pid: &str| Path::new(&format!("/proc/{pid}")).exists();
    for (pid, name) in qemu_processes() {
        let owner = name
            .strip_prefix(VM_PREFIX)
            .and_then(|rest| rest.split('v').next());
        if owner.is_some_and(|owner| !alive(owner)) {
            let _ = Command::new("kill").args(["-KILL", &pid]).output();
        }
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
