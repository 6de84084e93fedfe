//! The VM lab as a user runs it: `faultlab lab up --vm` makes hosts that are
//! QEMU VMs with their own Linux kernels (not this machine's), the seed
//! suite runs on them with wire evidence, and `lab down` leaves no QEMU
//! process and no tap or bridge; `faultlab run --lab vm` does the same for
//! one run. Needs root, qemu-system-x86, a kernel in /boot and
//! busybox-static (CI installs them).

mod common;

use common::{faultlab, lab_turn};
use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A one-shot run of the seed suite on a VM lab (add `--case`s).
const VM_RUN: [&str; 6] = ["run", "--lab", "vm", "--suite", "seed", "--no-history"];

/// Whether any QEMU process of faultlab's, or any link of its, is left.
fn leftovers(prefix: &str) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut left = Vec::new();
    for process in std::fs::read_dir("/proc")?.filter_map(Result::ok) {
        let cmdline = std::fs::read(process.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("qemu-system") && cmdline.contains(&format!("-name {prefix}")) {
            left.push(cmdline);
        }
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output()?;
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if let Some(name) = line.split(": ").nth(1)
            && name.starts_with(prefix)
        {
            left.push(format!("link {name}"));
        }
    }
    Ok(left)
}

/// The string `field` of every item of a JSON list.
fn strings<'a>(list: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item[field].as_str())
        .collect()
}

/// An error naming what a lab left behind, if it left anything.
fn nothing_left(prefix: &str) -> TestResult {
    let left = leftovers(prefix)?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("left behind: {left:?}").into())
    }
}

/// This test's turn at a VM lab, or why none can be made here.
fn vm_lab_turn() -> Result<std::sync::MutexGuard<'static, ()>, String> {
    match faultlab::lab::vm::unavailable() {
        Some(why) => Err(format!(
            "this test needs a VM lab: {why} (CI installs what it needs)"
        )),
        None => Ok(lab_turn()),
    }
}

/// A scratch directory for one test, and a history file in it.
fn scratch(name: &str) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("faultlab-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let history = dir.join("h.sqlite");
    Ok((dir, history))
}

#[test]
fn vms_with_their_own_kernels_play_the_seed_suite_and_leave_nothing() -> TestResult {
    let _turn = vm_lab_turn()?;
    let (scratch, history) = scratch("vm")?;
    let state = scratch.join("state").display().to_string();
    let up = faultlab(
        &["lab", "up", "--vm", "--hosts", "2", "--state", &state],
        &history,
    )?;
    common::succeeded(&up)?;
    let inventory = format!("{state}/inventory.toml");
    let agents = faultlab(&["agents", "--inventory", &inventory], &history)?;
    let (run, down) = common::seed_suite_then_down(&state, &history)?;
    let _ = std::fs::remove_dir_all(&scratch);

    // Their own kernels: not this machine's, and each its own boot.
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let listed = String::from_utf8_lossy(&agents.stdout);
    let rows: Vec<&str> = listed
        .lines()
        .filter(|line| line.starts_with("vm-"))
        .collect();
    assert_eq!(rows.len(), 2, "{listed}");
    for row in &rows {
        assert!(row.contains(" ok "), "{listed}");
        assert!(
            !row.contains(host_kernel.trim()),
            "a guest kernel, not the host's: {row}"
        );
        assert!(
            row.contains("isolate") && row.contains("link") && row.contains("capture"),
            "{row}"
        );
    }

    let report: serde_json::Value = serde_json::from_slice(&run.stdout)?;
    let cases = report["cases"].as_array().ok_or("no cases")?;
    let not_expected = common::not_expected(&report);
    assert_eq!(cases.len(), 15);
    assert!(not_expected.is_empty(), "{not_expected:#?}");
    for case in cases {
        assert_eq!(case["wire_evidence"], true, "{}", case["id"]);
    }
    // R1's reboot was real: the guest's kernel restarted, nothing shut down.
    let r1 = cases
        .iter()
        .find(|case| case["id"] == "R1")
        .ok_or("no R1")?;
    let calls = strings(&r1["observations"], "call");
    assert!(calls.contains(&"reboot (reboot(2))"), "{calls:?}");
    let boots = strings(&report["agents"], "boot_id");
    assert_eq!(boots.len(), 2);
    assert_ne!(boots[0], boots[1], "two machines, two boots");

    assert_eq!(
        down.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    nothing_left("fll")
}

#[test]
fn a_one_shot_vm_run_removes_its_vms() -> TestResult {
    let _turn = vm_lab_turn()?;
    let (scratch, history) = scratch("vm-once")?;
    let mut args = VM_RUN.to_vec();
    args.extend(["--case", "C3", "--format", "json"]);
    let run = faultlab(&args, &history)?;
    let _ = std::fs::remove_dir_all(&scratch);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("QEMU VMs with their own kernels"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout)?;
    assert_eq!(report["summary"]["expected"], 1, "{}", report["cases"]);
    nothing_left("flv")
}

#[test]
fn a_kernel_that_cannot_serve_is_refused_before_anything_starts() -> TestResult {
    let _turn = vm_lab_turn()?;
    let (scratch, history) = scratch("vm-bad")?;
    // A modules tree without the virtio network driver the guests need.
    let modules = scratch.join("modules");
    std::fs::create_dir_all(&modules)?;
    std::fs::write(modules.join("modules.dep"), "kernel/fs/fat/fat.ko:\n")?;
    let image = scratch.join("vmlinuz-test");
    std::fs::write(&image, b"not a kernel")?;
    let (image, modules) = (image.display().to_string(), modules.display().to_string());
    for (args, said) in [
        (vec!["--kernel", &image], "no modules found for"),
        (
            vec!["--kernel", &image, "--kernel-modules", &modules],
            "the kernel has no module virtio_pci",
        ),
    ] {
        let mut all = VM_RUN.to_vec();
        all.extend(["--case", "F1"]);
        all.extend(args);
        let out = faultlab(&all, &history)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {stderr}");
        assert!(stderr.contains(said), "{all:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&scratch);
    nothing_left("flv")
}
