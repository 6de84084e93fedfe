//! VM hosts that are whole Debian systems, installed the way users install
//! their own: systemd boots them, sshd lets a lab administrator in with a
//! key, and the agent is not in the image at all — the project's Ansible
//! role puts it there over SSH (see [`super::install`]).
//!
//! The root filesystem is built once from Debian's packages by
//! `debootstrap`, from the package registry apt already uses on this
//! machine, and kept in a cache ([`cache_dir`]); each host boots a
//! copy-on-write overlay of it. What the image carries besides Debian is
//! the lab's stand-in for what a data centre gives a machine (addresses
//! and a name from its boot line, as DHCP or cloud-init would) and the
//! lab's own access (a root shell on a serial port, the agent's journal on
//! another): see [`GLUE`].

use super::VmError;
use super::guest::Kernel;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian release of the image.
const SUITE: &str = "bookworm";
/// Packages besides `minbase`: a booting system with sshd, what Ansible
/// needs (python3, sudo), and the tools the agent calls (ip, tc, ss, nft).
/// dbus, for logind (a clean `systemctl reboot`), and netbase's
/// /etc/protocols, which nft needs to name protocols.
const PACKAGES: &str =
    "systemd-sysv,udev,kmod,dbus,netbase,openssh-server,python3,sudo,iproute2,nftables,procps";
/// Installed once the base system is (its maintainer scripts need one):
/// polkit, which logind asks before it reboots for a user other than root.
const LATER_PACKAGES: &str = "polkitd";
/// The size of the image's disk (sparse: about 400 MB are written).
const DISK_BYTES: u64 = 2 << 30;
/// Bump when [`GLUE`] or [`PACKAGES`] change: a new image is built.
const IMAGE_VERSION: u32 = 3;
/// The user the lab's installer logs in as (sudo without a password).
pub const ADMIN: &str = "faultlab-admin";

/// A built image: its disk and the key that logs in as [`ADMIN`].
#[derive(Clone, Debug)]
pub struct Image {
    /// The root filesystem (raw ext4), read only: hosts boot overlays.
    pub disk: PathBuf,
    /// The SSH private key of [`ADMIN`].
    pub key: PathBuf,
    /// The kernel's initrd (Debian's, made when its package was installed).
    pub initrd: PathBuf,
}

/// Where images are kept: `FAULTLAB_CACHE`, else `/var/cache/faultlab`
/// (root) or `~/.cache/faultlab`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FAULTLAB_CACHE") {
        return PathBuf::from(dir);
    }
    let root = running_as_root();
    match std::env::var_os("HOME") {
        Some(home) if !root => PathBuf::from(home).join(".cache/faultlab"),
        _ => PathBuf::from("/var/cache/faultlab"),
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|line| line.starts_with("Uid:"))
            .and_then(|line| line.split_whitespace().nth(1))
            == Some("0")
    })
}

/// The image for `kernel`, built now if the cache has none (about two
/// minutes; its log is beside it).
pub fn image(kernel: &Kernel) -> Result<Image, VmError> {
    let release = kernel.release()?;
    let initrd = kernel
        .image
        .parent()
        .map(|boot| boot.join(format!("initrd.img-{release}")))
        .filter(|initrd| initrd.is_file())
        .ok_or_else(|| {
            VmError::Kernel(format!(
                "a Debian host boots with its kernel's initrd, and {} has none beside it (initrd.img-{release}): install the kernel's package",
                kernel.image.display()
            ))
        })?;
    let name = format!("debian-{SUITE}-{release}-v{IMAGE_VERSION}");
    let dir = cache_dir().join(&name);
    let image = Image {
        disk: dir.join("disk.raw"),
        key: dir.join("admin_key"),
        initrd,
    };
    if image.disk.is_file() && image.key.is_file() {
        return Ok(image);
    }
    sweep_builds(&name);
    let building = cache_dir().join(format!("{name}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let built = build(&building, kernel);
    if let Err(error) = built {
        // Keep debootstrap's own log beside the build's; the tree goes.
        let _ = std::fs::copy(
            building.join("root/debootstrap/debootstrap.log"),
            building.join("debootstrap.log"),
        );
        let _ = std::fs::remove_dir_all(building.join("root"));
        return Err(error);
    }
    // Another lab may have finished the same image meanwhile: either is good.
    if std::fs::rename(&building, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    if image.disk.is_file() && image.key.is_file() {
        Ok(image)
    } else {
        Err(VmError::Guest(format!(
            "the Debian image was built but is not in {}",
            dir.display()
        )))
    }
}

/// Remove what builds of image `name` left when their process was killed
/// (`NAME.building-PID` of a PID that is gone).
fn sweep_builds(name: &str) {
    let prefix = format!("{name}.building-");
    for entry in std::fs::read_dir(cache_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|file| file.strip_prefix(&prefix)) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// What went wrong building the image in `dir`.
fn build_failed(dir: &Path, what: &str, error: &dyn std::fmt::Display) -> VmError {
    VmError::Guest(format!(
        "building the Debian image in {}: {what}: {error}",
        dir.display()
    ))
}

/// Build the image in `dir`: debootstrap, the kernel's modules, the glue,
/// the administrator and its key, then one ext4 disk of it all.
fn build(dir: &Path, kernel: &Kernel) -> Result<(), VmError> {
    let failed = |what: &str, error: &dyn std::fmt::Display| build_failed(dir, what, error);
    let root = dir.join("root");
    std::fs::create_dir_all(&root).map_err(|error| failed("mkdir", &error))?;
    let log = dir.join("build.log");
    run(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
            .arg(&root)
            .arg(mirror()),
        &log,
    )?;
    add_modules(dir, &root, kernel, &log)?;
    add_glue(dir, &root)?;
    let public = admin_key(dir, &log)?;
    configure(&root, &public, &log)?;
    let disk = dir.join("disk.raw");
    let file = std::fs::File::create(&disk).map_err(|error| failed("the disk", &error))?;
    file.set_len(DISK_BYTES)
        .map_err(|error| failed("the disk", &error))?;
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "faultlab-root", "-d"])
            .arg(&root)
            .arg(&disk),
        &log,
    )?;
    std::fs::remove_dir_all(&root).map_err(|error| failed("removing the tree", &error))
}

/// The kernel's modules into the tree at `root`, indexed.
fn add_modules(dir: &Path, root: &Path, kernel: &Kernel, log: &Path) -> Result<(), VmError> {
    let release = kernel.release()?;
    let modules = root.join("lib/modules");
    std::fs::create_dir_all(&modules).map_err(|error| build_failed(dir, "mkdir", &error))?;
    run(
        Command::new("cp")
            .arg("-a")
            .arg(&kernel.modules)
            .arg(modules.join(&release)),
        log,
    )?;
    run(
        Command::new("depmod").arg("-b").arg(root).arg(&release),
        log,
    )
}

/// The lab's glue (its units and scripts) into the tree at `root`.
fn add_glue(dir: &Path, root: &Path) -> Result<(), VmError> {
    for (path, contents, mode) in GLUE {
        let file = root.join(path.trim_start_matches('/'));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|error| build_failed(dir, "mkdir", &error))?;
        }
        std::fs::write(&file, contents).map_err(|error| build_failed(dir, path, &error))?;
        set_mode(&file, *mode).map_err(|error| build_failed(dir, path, &error))?;
    }
    Ok(())
}

/// A key pair for the lab's administrator in `dir`; its public half.
fn admin_key(dir: &Path, log: &Path) -> Result<String, VmError> {
    let key = dir.join("admin_key");
    run(
        Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "faultlab lab administrator",
                "-f",
            ])
            .arg(&key),
        log,
    )?;
    std::fs::read_to_string(key.with_extension("pub"))
        .map_err(|error| build_failed(dir, "the key", &error))
}

/// Inside the tree at `root`: the later packages, the administrator who
/// logs in with `public`, no root password, no host keys or machine id
/// (each host makes its own), the lab's units on, timers that would wake
/// during a case off.
fn configure(root: &Path, public: &str, log: &Path) -> Result<(), VmError> {
    let script = format!(
        "set -e
mount -t proc proc /proc
trap 'umount /proc' EXIT
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {}
useradd --create-home --shell /bin/bash {ADMIN}
install -d -m 0700 -o {ADMIN} -g {ADMIN} /home/{ADMIN}/.ssh
printf '%s\\n' '{}' > /home/{ADMIN}/.ssh/authorized_keys
chown {ADMIN}:{ADMIN} /home/{ADMIN}/.ssh/authorized_keys
chmod 0600 /home/{ADMIN}/.ssh/authorized_keys
printf '%s\\n' '{ADMIN} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{ADMIN}
chmod 0440 /etc/sudoers.d/{ADMIN}
passwd --lock root
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
systemctl enable faultlab-lab-setup.service faultlab-lab-shell.service faultlab-lab-journal.service
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer systemd-timesyncd.service 2>/dev/null || true
apt-get clean
",
        LATER_PACKAGES.replace(',', " "),
        public.trim()
    );
    run(
        Command::new("chroot")
            .arg(root)
            .args(["/bin/sh", "-c", &script]),
        log,
    )
}

#[cfg(unix)]
fn set_mode(file: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// Run `command`, its output appended to `log`; a failure quotes the
/// log's last lines.
pub(super) fn run(command: &mut Command, log: &Path) -> Result<(), VmError> {
    let shown = format!("{command:?}");
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|file| Ok((file.try_clone()?, file)))
        .map_err(|error| VmError::Guest(format!("{}: {error}", log.display())))?;
    let status = command
        .stdin(std::process::Stdio::null())
        .stdout(output.0)
        .stderr(output.1)
        .status()
        .map_err(|error| VmError::Guest(format!("{shown}: {error}")))?;
    if status.success() {
        return Ok(());
    }
    let said = std::fs::read_to_string(log).unwrap_or_default();
    let last: Vec<&str> = said.lines().rev().take(8).collect();
    Err(VmError::Guest(format!(
        "{shown} failed ({status}); the last lines of {}:\n{}",
        log.display(),
        last.into_iter().rev().collect::<Vec<_>>().join("\n")
    )))
}

/// The Debian archive apt uses on this machine (its `URIs:` or `deb`
/// line), `FAULTLAB_DEBIAN_MIRROR` first, else Debian's own.
fn mirror() -> String {
    if let Ok(mirror) = std::env::var("FAULTLAB_DEBIAN_MIRROR") {
        return mirror;
    }
    let sources =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let deb822 = sources
        .lines()
        .find_map(|line| line.strip_prefix("URIs:"))
        .and_then(|uris| uris.split_whitespace().next().map(str::to_owned));
    let classic = || {
        std::fs::read_to_string("/etc/apt/sources.list")
            .unwrap_or_default()
            .lines()
            .filter(|line| line.starts_with("deb "))
            .find_map(|line| {
                line.split_whitespace()
                    .find(|word| word.starts_with("http"))
                    .map(str::to_owned)
            })
    };
    deb822
        .or_else(classic)
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned())
}

/// A copy-on-write overlay of `image` for one host, at `path`.
pub fn overlay(image: &Image, path: &Path) -> Result<(), VmError> {
    let _ = std::fs::remove_file(path);
    let output = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&image.disk)
        .arg(path)
        .output()
        .map_err(|error| {
            VmError::Guest(format!("qemu-img (apt-get install qemu-utils): {error}"))
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(VmError::Guest(format!(
            "qemu-img create {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// What the image carries besides Debian (path, contents, mode).
///
/// - `faultlab-lab-setup`: at each boot, the host's name and addresses from
///   its boot line (`faultlab.name`, `faultlab.mgmt`, `faultlab.test`; eth0
///   is the management NIC, eth1 the test NIC), and SSH host keys of its
///   own on first boot — what DHCP and cloud-init give a real machine.
/// - `faultlab-lab-shell`: a root shell on the second serial port, as on
///   the initramfs VMs (`faultlab lab exec`), read from a pipe so that it
///   is not interactive.
/// - `faultlab-lab-journal`: the agent's journal on the third serial port,
///   so that a lab keeps its log when the host is lost.
const GLUE: &[(&str, &str, u32)] = &[
    ("/etc/fstab", "LABEL=faultlab-root / ext4 rw,errors=remount-ro 0 1\n", 0o644),
    (
        "/usr/local/sbin/faultlab-lab-setup",
        r#"#!/bin/sh
# The lab's stand-in for DHCP and cloud-init: a name and addresses from the
# kernel's command line, host keys of its own.
set -e
for word in $(cat /proc/cmdline); do
  case "$word" in
    faultlab.name=*) NAME="${word#*=}" ;;
    faultlab.mgmt=*) MGMT="${word#*=}" ;;
    faultlab.test=*) TEST="${word#*=}" ;;
  esac
done
[ -n "$NAME" ] && hostname "$NAME" && echo "$NAME" > /etc/hostname
ip link set lo up
ip addr replace "$MGMT" dev eth0 && ip link set eth0 up
ip addr replace "$TEST" dev eth1 && ip link set eth1 up
ssh-keygen -A
echo "faultlab: $NAME set up after $(cut -d' ' -f1 /proc/uptime) s" > /dev/console
"#,
        0o755,
    ),
    (
        "/etc/systemd/system/faultlab-lab-setup.service",
        "[Unit]
Description=faultlab lab: this host's name and addresses
DefaultDependencies=no
Wants=network-pre.target sys-subsystem-net-devices-eth0.device sys-subsystem-net-devices-eth1.device
After=sys-subsystem-net-devices-eth0.device sys-subsystem-net-devices-eth1.device local-fs.target
Before=network.target network-online.target ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/faultlab-lab-setup

[Install]
WantedBy=multi-user.target network-online.target
",
        0o644,
    ),
    (
        "/etc/systemd/system/faultlab-lab-shell.service",
        "[Unit]
Description=faultlab lab: a root shell on ttyS1 (faultlab lab exec)

[Service]
ExecStartPre=/bin/stty -F /dev/ttyS1 raw -echo
ExecStart=/bin/sh -c 'while true; do dd if=/dev/ttyS1 bs=512 2>/dev/null | /bin/sh > /dev/ttyS1 2>&1; sleep 1; done'
Restart=always

[Install]
WantedBy=multi-user.target
",
        0o644,
    ),
    (
        "/etc/systemd/system/faultlab-lab-journal.service",
        "[Unit]
Description=faultlab lab: the agent's journal on ttyS2
After=systemd-journald.service

[Service]
ExecStartPre=/bin/stty -F /dev/ttyS2 raw -echo
ExecStart=/bin/sh -c 'exec journalctl --follow --no-tail --output=short-precise --unit=faultlab-agent > /dev/ttyS2'
Restart=always

[Install]
WantedBy=multi-user.target
",
        0o644,
    ),
];
