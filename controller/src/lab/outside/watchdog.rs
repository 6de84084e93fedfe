//! The deadline of a fault a lab made from outside a host, kept by a
//! process of its own (`faultlab lab watchdog`, started detached): it
//! sleeps until the deadline and undoes the fault, even if the controller
//! that made it crashed or was killed. Undoing the fault earlier kills its
//! watchdog first; watchdogs are found by their command line, so no pid
//! file can go stale.

use super::{LabSide, OutsideError, OutsideFault};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The word that marks a watchdog's command line.
const WATCHDOG: &str = "watchdog";

/// Start the watchdog that undoes `fault` on `side` after `deadline`.
pub(super) fn arm(
    side: &LabSide,
    fault: OutsideFault,
    deadline: Duration,
) -> Result<(), OutsideError> {
    let exe = faultlab_exe().ok_or_else(|| {
        OutsideError::NoWatchdog("cannot find the faultlab executable".to_owned())
    })?;
    let mut command = Command::new(&exe);
    command
        .args(["lab", WATCHDOG, "--fault", fault.into()])
        .args(["--after-ms", &deadline.as_millis().to_string()]);
    if let Some(port) = &side.switch_port {
        command.args(["--switch-port", port]);
    }
    if let Some(socket) = &side.qmp {
        command.arg("--qmp").arg(socket);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its own process group: a Ctrl-C for the controller does not reach it.
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    command
        .spawn()
        .map(drop)
        .map_err(|error| OutsideError::NoWatchdog(format!("{}: {error}", exe.display())))
}

/// The watchdogs of `fault` on `side` (there is at most one).
fn watchdogs(side: &LabSide, fault: OutsideFault) -> Vec<u32> {
    let fault: &str = fault.into();
    let key = side.key();
    crate::lab::processes()
        .into_iter()
        .filter(|(pid, words)| {
            words.iter().any(|word| word == WATCHDOG)
                && words
                    .windows(2)
                    .any(|pair| pair[0] == "--fault" && pair[1] == fault)
                && words.contains(&key)
                && *pid != std::process::id()
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Whether `fault` on `side` is made and waits for its deadline.
pub(super) fn armed(side: &LabSide, fault: OutsideFault) -> bool {
    !watchdogs(side, fault).is_empty()
}

/// Stop the watchdogs of `fault` on `side`.
pub(super) fn disarm(side: &LabSide, fault: OutsideFault) {
    for pid in watchdogs(side, fault) {
        let _ = Command::new("kill").arg(pid.to_string()).output();
    }
}

/// Stop every watchdog of a lab that is going away: those whose switch
/// port or QMP socket starts with one of `marks` (its name prefix, its
/// directory). They would only fail later, or, worse, plug in a cable of
/// the next lab of the same name.
pub fn disarm_lab(marks: &[String]) {
    for (pid, words) in crate::lab::processes() {
        let ours = words.iter().any(|word| word == WATCHDOG)
            && words
                .iter()
                .skip(1)
                .any(|word| marks.iter().any(|mark| word.starts_with(mark.as_str())));
        if ours && pid != std::process::id() {
            let _ = Command::new("kill").arg(pid.to_string()).output();
        }
    }
}

/// The watchdog itself: wait `after`, then undo `fault` (and say how).
pub fn keep(
    side: &LabSide,
    fault: OutsideFault,
    after: Duration,
) -> Result<&'static str, OutsideError> {
    std::thread::sleep(after);
    // An undo that fails (a QEMU busy at that moment) is tried again, a
    // second apart, a bounded number of times.
    let mut tries = UNDO_TRIES;
    loop {
        match side.apply(fault, false) {
            Ok(how) => return Ok(how),
            Err(error) if tries <= 1 => return Err(error),
            Err(_) => {
                tries -= 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// How many times a watchdog tries its undo.
const UNDO_TRIES: u32 = 10;

/// The faultlab executable: `FAULTLAB_EXE`, this one, the one beside a
/// test binary (`target/<profile>/deps/..`), or one on PATH.
pub(crate) fn faultlab_exe() -> Option<PathBuf> {
    if let Some(exe) = std::env::var_os("FAULTLAB_EXE") {
        return Some(exe.into());
    }
    let me = std::env::current_exe().ok()?;
    if me.file_name().is_some_and(|name| name == "faultlab") {
        return Some(me);
    }
    let beside = me
        .parent()
        .into_iter()
        .flat_map(|dir| [dir.join("faultlab"), dir.join("../faultlab")])
        .find(|candidate| candidate.is_file());
    beside.or_else(|| crate::lab::vm::guest::which("faultlab"))
}
