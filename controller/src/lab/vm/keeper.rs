//! A VM's keeper: the process that runs the VM's QEMU and, when the guest
//! resets, starts a fresh QEMU in its place.
//!
//! Why not let QEMU reset the guest itself: under TCG a warm reset keeps
//! the old boot's translated code, and every page of it that the new boot
//! writes over (the kernel's decompressor, the initramfs it unpacks) takes
//! QEMU's slow path for self-modifying code. Measured on this project's CI
//! machines with a test build's 47 MB image: from the guest's reset to its
//! new kernel's first line 1.4–19.2 s (bimodal, on where the new kernel
//! landed), and always 8.6–11.8 s with `nokaslr`, against 1.2 s for a
//! fresh QEMU; R1 took 10–29 s and timed out in CI. So QEMU runs with
//! `-no-reboot`: a guest's reset (reboot(2), a panic with `panic=-1`, the
//! lab's power-on after a cut, QMP `system_reset`) ends it with status 0,
//! and its keeper starts the same command again: the guest boots from its
//! firmware with empty memory, as a machine does after a reset or a power
//! cycle, in the time a first boot takes. A cable pulled when the guest
//! reset stays pulled (its watchdog is still armed), so the fresh QEMU's
//! NIC is unplugged again at once.
//!
//! QEMU and its keeper share a process group (the keeper's own): the lab
//! stops a VM by signalling the group. A QEMU that fails (non-zero status,
//! killed by a signal) or ends within [`TOO_SOON`] of its start is not
//! started again: the keeper says why on its log and ends with an error.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A QEMU that ends this soon after its start is failing, not rebooting (a
/// guest takes seconds to boot before it can reset).
const TOO_SOON: Duration = Duration::from_secs(2);

/// Why a keeper stopped keeping its VM.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    /// QEMU could not be started.
    #[error("cannot start {0}: {1}")]
    Start(String, std::io::Error),
    /// QEMU failed.
    #[error("QEMU ended: {0}")]
    Failed(String),
}

/// Run QEMU with `args` until it fails, starting it again each time it
/// ends because its guest reset, and then calling `after_restart` (whose
/// word, if any, is logged); QEMU's own output and the keeper's notes go
/// to `log` (appended). Blocking; the process ends by the lab's signal.
pub fn keep(
    args: &[OsString],
    log: &Path,
    after_restart: impl Fn() -> Option<String>,
) -> Result<(), KeeperError> {
    let qemu = super::QEMU;
    let note = |text: &str| {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(file, "faultlab keeper: {text}");
        }
    };
    let mut starts = 0_u64;
    loop {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|error| KeeperError::Start(log.display().to_string(), error))?;
        let errors = output
            .try_clone()
            .map_err(|error| KeeperError::Start(log.display().to_string(), error))?;
        starts += 1;
        note(&format!("start {starts} of QEMU"));
        let started = Instant::now();
        let mut child = Command::new(qemu)
            .args(args)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .map_err(|error| KeeperError::Start(qemu.to_owned(), error))?;
        if starts > 1
            && let Some(said) = after_restart()
        {
            note(&said);
        }
        let status = child
            .wait()
            .map_err(|error| KeeperError::Failed(error.to_string()))?;
        let ran = started.elapsed();
        if !status.success() {
            let why = format!("{status} after {ran:.1?}; not started again");
            note(&why);
            return Err(KeeperError::Failed(why));
        }
        if ran < TOO_SOON {
            let why = format!("it ended {ran:.1?} after its start; not started again");
            note(&why);
            return Err(KeeperError::Failed(why));
        }
        note(&format!("the guest reset after {ran:.1?}: a fresh QEMU"));
    }
}
