//! The guest a VM boots: a kernel, and an initramfs built from what this
//! host has — busybox, this build's `faultlab-agent`, `ip`, `ss` and `nft`
//! with the shared libraries they need, and the kernel modules the agent
//! needs (the virtio network driver chain, nf_tables and its reject
//! modules, the socket-diag modules `ss -K` uses). Its `/init` brings the
//! two NICs up with the addresses on the kernel command line, starts a root
//! shell on the second serial port and the agent (again 5 s after it ends,
//! as a service manager would); after a reboot it does it all again. The image is cached under the
//! lab's state directory and rebuilt when anything in it changes.

use super::VmError;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel modules the agent needs, by name; their dependencies come
/// from the kernel's `modules.dep`.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "nf_tables",
    "nft_numgen",
    "nft_reject_inet",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
    "tcp_diag",
    // Degraded networks: tc's prio root, its u32 filter, netem; a veth
    // pair for the agent to try netem on at start; tbf, for a root set by
    // hand that a degradation must give back.
    "sch_prio",
    "sch_tbf",
    "cls_u32",
    "sch_netem",
    "veth",
];

/// Modules loaded when the kernel has them: `virtio_rng` takes the host's
/// randomness (QEMU's virtio-rng device), so the guest's random number
/// generator is ready at boot, as on real hardware (RDRAND, a TPM). An
/// emulated CPU has none: the kernel then took 5–6 s after boot to seed
/// it, and whatever asked for randomness first waited (nft's JSON output,
/// through jansson: the first heal after a boot took 1.1 s, not 0.1 s).
const MODULES_IF_ANY: &[&str] = &["virtio_rng"];

/// The programs the agent runs, besides itself.
const TOOLS: &[&str] = &["ip", "ss", "nft", "tc"];

/// Files of this host's `/etc` the tools read (`nft` resolves protocol
/// names such as `tcp` through `/etc/protocols`).
const ETC: &[&str] = &["etc/protocols", "etc/services"];

/// Where Debian's iproute2 keeps netem's distribution tables.
const TC_TABLES: &str = "/usr/lib/x86_64-linux-gnu/tc";

/// The guest's `/init` (busybox sh).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
# iproute2's ip, ss and tc before busybox's applets of the same names.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp /run
for module in $(cat /etc/faultlab/modules); do insmod "/lib/modules/$module"; done
for word in $(cat /proc/cmdline); do
  case "$word" in
    faultlab.name=*) NAME="${word#*=}" ;;
    faultlab.mgmt=*) MGMT="${word#*=}" ;;
    faultlab.test=*) TEST="${word#*=}" ;;
    faultlab.allow=*) ALLOW="${word#*=}" ;;
  esac
done
hostname "$NAME"
ip link set lo up
ip addr add "$MGMT" dev eth0 && ip link set eth0 up
ip addr add "$TEST" dev eth1 && ip link set eth1 up
# A root shell on the second serial port (`faultlab lab exec`): its input
# through a pipe, so that it is not interactive (no prompt, no echo). dd,
# not cat: busybox's cat splices, holding the pipe while the port is quiet.
# busybox's sh runs its own applets before anything on PATH: the first
# line makes ip, ss, nft and tc (TOOLS) iproute2's and nftables' again.
stty -F /dev/ttyS1 raw -echo
TOOLS='ip() { /usr/sbin/ip "$@"; }; ss() { /usr/sbin/ss "$@"; }; nft() { /usr/sbin/nft "$@"; }; tc() { /usr/sbin/tc "$@"; }'
( while true; do { echo "$TOOLS"; dd if=/dev/ttyS1 bs=512 2>/dev/null; } | sh > /dev/ttyS1 2>&1; sleep 1; done ) &
echo "faultlab: $NAME up after $(cut -d' ' -f1 /proc/uptime) s, agent on ${MGMT%/*}" > /dev/console
# The agent's log on the third serial port (a file of the lab's), plain.
stty -F /dev/ttyS2 raw -echo
export NO_COLOR=1
# Like a service manager: an agent that ends starts again, 5 s later.
while true; do
  echo "faultlab: agent starting after $(cut -d' ' -f1 /proc/uptime) s of uptime" > /dev/ttyS2
  /usr/bin/faultlab-agent --listen "${MGMT%/*}:7420" --insecure --allow "$ALLOW" > /dev/ttyS2 2>&1
  status=$?
  echo "faultlab: the agent ended ($status); starting it again in 5 s" > /dev/console
  echo "faultlab: the agent ended ($status); starting it again in 5 s" > /dev/ttyS2
  sleep 5
done
"#;

/// A kernel and the modules tree that goes with it.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The bootable image (`vmlinuz`).
    pub image: PathBuf,
    /// Its modules (`/lib/modules/<release>`).
    pub modules: PathBuf,
    /// Their dependencies: the tree's own `modules.dep`, or one `depmod`
    /// made in the lab's cache for a tree that has none (a kernel package
    /// unpacked without installing it).
    pub dep: PathBuf,
}

impl Kernel {
    /// `file`, with its modules in `modules` (by default the tree of its
    /// release in `/lib/modules`, or beside it as a package unpacked with
    /// `dpkg -x` lays it out: `ROOT/boot/vmlinuz-R`, `ROOT/lib/modules/R`);
    /// with no file, the newest kernel of this host's `/boot` whose modules
    /// are installed. A tree without `modules.dep` gets one made by
    /// `depmod` in `cache`.
    pub fn find(
        file: Option<&Path>,
        modules: Option<&Path>,
        cache: &Path,
    ) -> Result<Self, VmError> {
        let (image, modules) = match file {
            Some(image) => {
                let modules = match modules {
                    Some(modules) => modules.to_owned(),
                    None => modules_of(image).ok_or_else(|| {
                        VmError::Kernel(format!(
                            "no modules found for {}: give --kernel-modules DIR",
                            image.display()
                        ))
                    })?,
                };
                (image.to_owned(), modules)
            }
            None => newest_in_boot()?,
        };
        if !modules.is_dir() {
            return Err(VmError::Kernel(format!(
                "{} is not a modules directory",
                modules.display()
            )));
        }
        let dep = match modules.join("modules.dep") {
            dep if dep.is_file() => dep,
            _ => depmod(&modules, cache)?,
        };
        Ok(Self {
            image,
            modules,
            dep,
        })
    }

    /// Its release (`6.1.0-57-cloud-amd64`): its modules tree's name.
    pub fn release(&self) -> Result<String, VmError> {
        self.modules
            .file_name()
            .and_then(|name| name.to_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                VmError::Kernel(format!(
                    "{}: no release in its name",
                    self.modules.display()
                ))
            })
    }

    /// The modules built into the kernel (`modules.builtin`), as paths
    /// like `kernel/drivers/virtio/virtio_pci.ko`; none when the tree does
    /// not say.
    fn builtin(&self) -> String {
        std::fs::read_to_string(self.modules.join("modules.builtin")).unwrap_or_default()
    }
}

/// The newest `/boot/vmlinuz-*` whose modules are installed, and them.
fn newest_in_boot() -> Result<(PathBuf, PathBuf), VmError> {
    let mut images: Vec<(PathBuf, PathBuf)> = std::fs::read_dir("/boot")
        .map_err(|error| VmError::Kernel(format!("cannot read /boot: {error}")))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("vmlinuz-"))
        })
        .filter_map(|image| Some((modules_of(&image)?, image)))
        .map(|(modules, image)| (image, modules))
        .collect();
    images.sort();
    images.pop().ok_or_else(|| {
        VmError::Kernel(
            "no kernel in /boot with its modules (apt-get install linux-image-cloud-amd64), or give --kernel FILE".to_owned(),
        )
    })
}

/// The modules tree of `.../vmlinuz-<release>`: `/lib/modules/<release>`,
/// or `../lib/modules/<release>` beside the image's directory (a package
/// unpacked with `dpkg -x`), when it holds modules.
fn modules_of(image: &Path) -> Option<PathBuf> {
    let release = image.file_name()?.to_str()?.strip_prefix("vmlinuz-")?;
    let unpacked = image
        .parent()
        .and_then(Path::parent)
        .map(|root| root.join("lib/modules").join(release));
    [Some(Path::new("/lib/modules").join(release)), unpacked]
        .into_iter()
        .flatten()
        .find(|tree| tree.join("modules.dep").is_file() || tree.join("kernel").is_dir())
}

/// Make the `modules.dep` a tree lacks with `depmod -b`, in `cache` (the
/// tree itself may be read-only): a directory laid out as depmod wants
/// it, `lib/modules/<release>/kernel` a link to the tree's modules. Made
/// once per tree; its path.
fn depmod(modules: &Path, cache: &Path) -> Result<PathBuf, VmError> {
    let release = modules
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| VmError::Kernel(format!("{}: no release in its name", modules.display())))?;
    let command = format!(
        "depmod -b {} {release}",
        modules
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .unwrap_or(Path::new("ROOT"))
            .display()
    );
    let refused = |why: String| {
        VmError::Kernel(format!(
            "{} has no modules.dep and {why}; make it with `{command}`",
            modules.display()
        ))
    };
    let base = cache.join("depmod").join(release);
    let tree = base.join("lib/modules").join(release);
    let link = tree.join("kernel");
    let made = tree.join("modules.dep");
    let target = modules.join("kernel");
    if made.is_file() && std::fs::read_link(&link).is_ok_and(|to| to == target) {
        return Ok(made);
    }
    let depmod = which("depmod")
        .ok_or_else(|| refused("depmod is missing (apt-get install kmod)".to_owned()))?;
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&tree)
        .map_err(|error| refused(format!("{}: {error}", tree.display())))?;
    #[cfg(unix)]
    std::os::unix::fs::symlink(&target, &link)
        .map_err(|error| refused(format!("{}: {error}", link.display())))?;
    for file in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let from = modules.join(file);
        if from.is_file() {
            std::fs::copy(&from, tree.join(file))
                .map_err(|error| refused(format!("{}: {error}", from.display())))?;
        }
    }
    let output = Command::new(depmod)
        .arg("-b")
        .arg(&base)
        .arg(release)
        .output()
        .map_err(|error| refused(format!("depmod did not run: {error}")))?;
    if !output.status.success() || !made.is_file() {
        return Err(refused(format!(
            "depmod failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(made)
}

/// The modules to load, dependencies first, as paths relative to the
/// modules tree, from `modules.dep` (`path: dep dep ...`); a wanted module
/// listed in `modules.builtin` is in the kernel already.
pub fn module_order(
    modules_dep: &str,
    modules_builtin: &str,
    wanted: &[&str],
) -> Result<Vec<String>, VmError> {
    let deps: Vec<(&str, Vec<&str>)> = modules_dep
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(module, deps)| (module.trim(), deps.split_whitespace().collect()))
        .collect();
    let builtin: BTreeSet<String> = modules_builtin.lines().map(module_name).collect();
    let path_of = |name: &str| {
        deps.iter()
            .map(|(path, _)| *path)
            .find(|path| module_name(path) == name.replace('-', "_"))
    };
    let mut order: Vec<String> = Vec::new();
    for name in wanted {
        if builtin.contains(&name.replace('-', "_")) {
            continue;
        }
        let path = path_of(name).ok_or_else(|| {
            VmError::Kernel(format!(
                "the kernel has no module {name}, built in or loadable (the agent needs it); build it or give another --kernel"
            ))
        })?;
        visit(path, &deps, &mut order, 0);
    }
    Ok(order)
}

/// Depth-first: a module's dependencies before it (bounded: modules.dep
/// has no cycles, and no chain is deeper than a few dozen).
fn visit(path: &str, deps: &[(&str, Vec<&str>)], order: &mut Vec<String>, depth: usize) {
    if depth > 64 || order.iter().any(|done| done == path) {
        return;
    }
    if let Some((_, needs)) = deps.iter().find(|(module, _)| *module == path) {
        for need in needs.iter().rev() {
            visit(need, deps, order, depth + 1);
        }
    }
    order.push(path.to_owned());
}

/// How a module file is compressed, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Packing {
    Plain,
    Xz,
    Zstd,
}

impl Packing {
    /// `virtio_net.ko.xz` → (`virtio_net.ko`, xz).
    fn of(path: &str) -> Result<(&str, Self), VmError> {
        if let Some(plain) = path.strip_suffix(".xz") {
            Ok((plain, Self::Xz))
        } else if let Some(plain) = path.strip_suffix(".zst") {
            Ok((plain, Self::Zstd))
        } else if path.ends_with(".ko") {
            Ok((path, Self::Plain))
        } else {
            Err(VmError::Kernel(format!(
                "module {path}: only .ko, .ko.xz and .ko.zst modules can go into the guest"
            )))
        }
    }

    /// `data` as it is in the guest: decompressed (busybox's insmod reads
    /// plain modules only).
    fn unpack(self, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let mut plain = Vec::with_capacity(data.len() * 4);
        match self {
            Self::Plain => return Ok(data),
            Self::Xz => lzma_rs::xz_decompress(&mut data.as_slice(), &mut plain)
                .map_err(|error| std::io::Error::other(format!("xz: {error}")))?,
            Self::Zstd => {
                let mut decoder = ruzstd::decoding::StreamingDecoder::new(data.as_slice())
                    .map_err(|error| std::io::Error::other(format!("zstd: {error}")))?;
                std::io::Read::read_to_end(&mut decoder, &mut plain)?;
            }
        }
        Ok(plain)
    }
}

/// `kernel/drivers/net/virtio_net.ko` → `virtio_net`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The shared libraries `program` needs (and the dynamic loader), from `ldd`.
fn libraries(program: &Path) -> Result<Vec<PathBuf>, VmError> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|error| VmError::Guest(format!("cannot run ldd: {error}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Where a program is on this host's PATH (and the sbin directories).
pub(in crate::lab) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// What goes into the image: (path in the guest, where to read it on this
/// host), and the `/etc/faultlab/modules` list.
struct Contents {
    files: Vec<(String, PathBuf)>,
    module_list: String,
}

fn contents(agent: &Path, kernel: &Kernel) -> Result<Contents, VmError> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .map(PathBuf::from)
        .into_iter()
        .find(|path| path.is_file())
        .ok_or_else(|| {
            VmError::Guest("busybox is missing (apt-get install busybox-static)".to_owned())
        })?;
    let mut files: Vec<(String, PathBuf)> = vec![
        ("bin/busybox".to_owned(), busybox.clone()),
        ("usr/bin/faultlab-agent".to_owned(), agent.to_owned()),
    ];
    let mut programs = vec![busybox, agent.to_owned()];
    for tool in TOOLS {
        let found = which(tool).ok_or_else(|| {
            VmError::Guest(format!(
                "`{tool}` is missing (apt-get install iproute2 nftables)"
            ))
        })?;
        files.push((format!("usr/sbin/{tool}"), found.clone()));
        programs.push(found);
    }
    // netem's jitter distributions, where tc looks for them.
    for table in std::fs::read_dir(TC_TABLES)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let name = table.file_name().to_string_lossy().into_owned();
        if name.ends_with(".dist") {
            files.push((
                format!("{}/{name}", TC_TABLES.trim_start_matches('/')),
                table.path(),
            ));
        }
    }
    for file in ETC {
        let host = Path::new("/").join(file);
        if !host.is_file() {
            return Err(VmError::Guest(format!(
                "{} is missing (apt-get install netbase)",
                host.display()
            )));
        }
        files.push(((*file).to_owned(), host));
    }
    let mut libs = BTreeSet::new();
    for program in &programs {
        libs.extend(libraries(program)?);
    }
    for lib in libs {
        let inside = lib.to_string_lossy().trim_start_matches('/').to_owned();
        files.push((inside, lib));
    }
    let dep = std::fs::read_to_string(&kernel.dep).map_err(|error| {
        VmError::Kernel(format!("cannot read {}: {error}", kernel.dep.display()))
    })?;
    let builtin = kernel.builtin();
    let mut order = Vec::new();
    for module in module_order(&dep, &builtin, &wanted_modules(&dep, &builtin))? {
        // Plain in the guest (see `Packing::unpack`).
        let (plain, _) = Packing::of(&module)?;
        files.push((format!("lib/modules/{plain}"), kernel.modules.join(&module)));
        order.push(plain.to_owned());
    }
    Ok(Contents {
        files,
        module_list: order.join("\n") + "\n",
    })
}

/// [`MODULES`], and those of [`MODULES_IF_ANY`] the kernel has.
fn wanted_modules<'a>(modules_dep: &str, modules_builtin: &str) -> Vec<&'a str> {
    let mut wanted = MODULES.to_vec();
    wanted.extend(
        MODULES_IF_ANY
            .iter()
            .filter(|name| module_order(modules_dep, modules_builtin, &[name]).is_ok()),
    );
    wanted
}

/// Build the initramfs for `agent` and `kernel` into `dir` (or reuse the
/// one there when nothing in it changed); its path.
pub fn initramfs(agent: &Path, kernel: &Kernel, dir: &Path) -> Result<PathBuf, VmError> {
    let mut contents = contents(agent, kernel)?;
    let stamp = stamp(&contents)?;
    let image = dir.join("guest.cpio");
    let stamp_file = dir.join("guest.stamp");
    if image.is_file() && std::fs::read_to_string(&stamp_file).is_ok_and(|old| old == stamp) {
        return Ok(image);
    }
    std::fs::create_dir_all(dir)
        .map_err(|error| VmError::Guest(format!("cannot create {}: {error}", dir.display())))?;
    // Debug information is most of a test build's agent, and the guest
    // holds its image in RAM twice while it unpacks it.
    for (_, host) in &mut contents.files {
        *host = without_debug_info(host, dir);
    }
    // Written aside, then renamed: a lab starting beside this one reads a
    // whole image or none.
    let fresh = dir.join(format!("guest.cpio.{}", std::process::id()));
    write_cpio(&contents, &fresh)?;
    let failed = |error: std::io::Error| {
        VmError::Guest(format!("cannot write {}: {error}", image.display()))
    };
    std::fs::rename(&fresh, &image).map_err(failed)?;
    std::fs::write(&stamp_file, stamp).map_err(failed)?;
    Ok(image)
}

/// A copy of `program` without debug information (binutils' `strip`), in
/// `dir`; the program itself when that cannot be made (or is no smaller).
fn without_debug_info(program: &Path, dir: &Path) -> PathBuf {
    let Some(name) = program.file_name() else {
        return program.to_owned();
    };
    let big = std::fs::metadata(program).is_ok_and(|meta| meta.len() > 16 << 20);
    if !big {
        return program.to_owned();
    }
    let stripped = dir.join(name).with_extension("stripped");
    let made = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(program)
        .status()
        .is_ok_and(|status| status.success());
    if made { stripped } else { program.to_owned() }
}

/// What the image was built from: every file's path, size and time, and
/// the program that built it (whose code decides the image's layout).
fn stamp(contents: &Contents) -> Result<String, VmError> {
    let mut stamp = format!("{INIT}\n{}", contents.module_list);
    let builder = std::env::current_exe()
        .map_err(|error| VmError::Guest(format!("which program is this: {error}")))?;
    let ourselves = ("(builder)".to_owned(), builder);
    for (inside, host) in contents.files.iter().chain([&ourselves]) {
        let meta = std::fs::metadata(host)
            .map_err(|error| VmError::Guest(format!("cannot read {}: {error}", host.display())))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |time| time.as_nanos());
        stamp.push_str(&format!("{inside} {} {}\n", meta.len(), modified));
    }
    Ok(stamp)
}

/// The newc archive: directories, the files, `/init` and the module list.
fn write_cpio(contents: &Contents, image: &Path) -> Result<(), VmError> {
    use cpio::newc::{Builder, ModeFileType, trailer};
    use std::io::Write as _;
    let failed = |error: std::io::Error| {
        VmError::Guest(format!("cannot write {}: {error}", image.display()))
    };
    let file = std::fs::File::create(image).map_err(failed)?;
    let mut out = std::io::BufWriter::new(file);
    let mut dirs: BTreeSet<String> = ["proc", "sys", "dev", "tmp", "run"]
        .map(str::to_owned)
        .into();
    let files = contents
        .files
        .iter()
        .map(|(inside, _)| inside.as_str())
        .chain(["etc/faultlab/modules"]);
    for inside in files {
        let mut parent = Path::new(inside).parent();
        while let Some(dir) = parent.filter(|dir| !dir.as_os_str().is_empty()) {
            dirs.insert(dir.to_string_lossy().into_owned());
            parent = dir.parent();
        }
    }
    let mut ino = 1;
    let mut entry = |out: &mut std::io::BufWriter<std::fs::File>,
                     name: &str,
                     mode: u32,
                     kind: ModeFileType,
                     data: &[u8]|
     -> std::io::Result<()> {
        ino += 1;
        let size = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other(format!("{name} is over 4 GiB")))?;
        let mut writer = Builder::new(name)
            .ino(ino)
            .mode(mode)
            .set_mode_file_type(kind)
            .nlink(1)
            .write(&mut *out, size);
        writer.write_all(data)?;
        writer.finish().map(|_| ())
    };
    for dir in &dirs {
        entry(&mut out, dir, 0o755, ModeFileType::Directory, &[]).map_err(failed)?;
    }
    for (inside, host) in &contents.files {
        let unreadable = |error: std::io::Error| {
            VmError::Guest(format!("cannot read {}: {error}", host.display()))
        };
        let mut data = std::fs::read(host).map_err(unreadable)?;
        if inside.starts_with("lib/modules/") {
            let (_, packing) = Packing::of(&host.to_string_lossy())?;
            data = packing.unpack(data).map_err(unreadable)?;
        }
        entry(&mut out, inside, 0o755, ModeFileType::Regular, &data).map_err(failed)?;
    }
    entry(
        &mut out,
        "init",
        0o755,
        ModeFileType::Regular,
        INIT.as_bytes(),
    )
    .map_err(failed)?;
    entry(
        &mut out,
        "etc/faultlab/modules",
        0o644,
        ModeFileType::Regular,
        contents.module_list.as_bytes(),
    )
    .map_err(failed)?;
    trailer(&mut out).map_err(failed)?;
    out.flush().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
";

    #[test]
    fn modules_come_after_what_they_need_and_once() -> Result<(), VmError> {
        let order = module_order(DEP, "", &["virtio_pci", "virtio_net"])?;
        let at = |name: &str| {
            order
                .iter()
                .position(|path| path.ends_with(&format!("/{name}.ko")))
        };
        for (before, after) in [
            ("virtio_ring", "virtio"),
            ("virtio", "virtio_pci"),
            ("virtio_pci_modern_dev", "virtio_pci"),
            ("failover", "net_failover"),
            ("net_failover", "virtio_net"),
        ] {
            assert!(at(before) < at(after), "{before} before {after}: {order:?}");
        }
        assert_eq!(order.len(), 8, "each once: {order:?}");
        let missing = module_order(DEP, "", &["sch_netem"]);
        assert!(matches!(missing, Err(VmError::Kernel(message)) if message.contains("sch_netem")));
        Ok(())
    }

    #[test]
    fn the_random_number_driver_comes_when_the_kernel_has_it() {
        let with = format!(
            "{DEP}kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko\n"
        );
        assert!(wanted_modules(&with, "").contains(&"virtio_rng"));
        assert!(
            wanted_modules(DEP, "kernel/drivers/char/hw_random/virtio-rng.ko\n")
                .contains(&"virtio_rng")
        );
        // A kernel without it still boots a lab (its guests seed later).
        let without = wanted_modules(DEP, "");
        assert!(!without.contains(&"virtio_rng"));
        assert_eq!(without, MODULES);
    }

    #[test]
    fn a_built_in_driver_needs_no_module() -> Result<(), VmError> {
        // As in Debian's 6.12 kernels: the virtio PCI transport built in.
        let dep = DEP
            .lines()
            .filter(|line| !line.starts_with("kernel/drivers/virtio/virtio_pci"))
            .collect::<Vec<_>>()
            .join("\n");
        let builtin =
            "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/virtio/virtio_pci_modern_dev.ko\n";
        let order = module_order(&dep, builtin, &["virtio_pci", "virtio_net"])?;
        assert!(
            order.iter().all(|path| !path.contains("virtio_pci")),
            "{order:?}"
        );
        assert!(
            order
                .last()
                .is_some_and(|last| last.ends_with("virtio_net.ko"))
        );
        let missing = module_order(&dep, "", &["virtio_pci"]);
        assert!(
            matches!(missing, Err(VmError::Kernel(message)) if message.contains("virtio_pci, built in or loadable"))
        );
        Ok(())
    }

    #[test]
    fn packed_modules_go_into_the_guest_plain() -> Result<(), Box<dyn std::error::Error>> {
        let module = b"\x7fELF a module's bytes, again and again and again".repeat(100);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut module.as_slice(), &mut xz)?;
        let zstd = ruzstd::encoding::compress_to_vec(
            module.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        for (name, packed) in [
            ("m.ko.xz", xz),
            ("m.ko.zst", zstd),
            ("m.ko", module.clone()),
        ] {
            let (plain, packing) = Packing::of(name)?;
            assert_eq!(plain, "m.ko");
            assert_eq!(packing.unpack(packed)?, module, "{name}");
        }
        assert!(Packing::of("m.ko.gz").is_err());
        assert!(Packing::Xz.unpack(b"not xz".to_vec()).is_err());
        Ok(())
    }

    #[test]
    fn a_kernel_package_unpacked_beside_its_modules_is_found()
    -> Result<(), Box<dyn std::error::Error>> {
        let root = std::env::temp_dir().join(format!("faultlab-kernel-{}", std::process::id()));
        let release = "6.12.0-test";
        let modules = root.join("lib/modules").join(release);
        std::fs::create_dir_all(modules.join("kernel"))?;
        std::fs::create_dir_all(root.join("boot"))?;
        let image = root.join("boot").join(format!("vmlinuz-{release}"));
        std::fs::write(&image, b"a kernel")?;
        std::fs::write(modules.join("modules.dep"), "kernel/a.ko:\n")?;
        let kernel = Kernel::find(Some(&image), None, &root.join("cache"))?;
        assert_eq!(kernel.modules, modules);
        assert_eq!(kernel.dep, modules.join("modules.dep"));
        let _ = std::fs::remove_dir_all(&root);
        Ok(())
    }
}
