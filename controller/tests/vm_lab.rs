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

#[test]
fn vms_with_their_own_kernels_play_the_seed_suite_and_leave_nothing() -> TestResult {
    if let Some(why) = faultlab::lab::vm::unavailable() {
        return Err(format!("this test needs a VM lab: {why} (CI installs what it needs)").into());
    }
    let _turn = lab_turn();
    let scratch = std::env::temp_dir().join(format!("faultlab-vm-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let history = scratch.join("h.sqlite");
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
    let calls: Vec<&str> = r1["observations"]
        .as_array()
        .ok_or("no observations")?
        .iter()
        .filter_map(|observation| observation["call"].as_str())
        .collect();
    assert!(calls.contains(&"reboot (reboot(2))"), "{calls:?}");
    let boots: Vec<&str> = report["agents"]
        .as_array()
        .ok_or("no agents")?
        .iter()
        .filter_map(|agent| agent["boot_id"].as_str())
        .collect();
    assert_eq!(boots.len(), 2);
    assert_ne!(boots[0], boots[1], "two machines, two boots");

    assert_eq!(
        down.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let left = leftovers("fll")?;
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

#[test]
fn a_one_shot_vm_run_removes_its_vms() -> TestResult {
    if let Some(why) = faultlab::lab::vm::unavailable() {
        return Err(format!("this test needs a VM lab: {why} (CI installs what it needs)").into());
    }
    let history =
        std::env::temp_dir().join(format!("faultlab-vm-once-{}.sqlite", std::process::id()));
    let run = faultlab(
        &[
            "run",
            "--lab",
            "vm",
            "--suite",
            "seed",
            "--case",
            "C3",
            "--no-history",
            "--format",
            "json",
        ],
        &history,
    )?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("QEMU VMs with their own kernels"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout)?;
    assert_eq!(report["summary"]["expected"], 1, "{}", report["cases"]);
    let left = leftovers("flv")?;
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

#[test]
fn a_kernel_that_cannot_serve_is_refused_before_anything_starts() -> TestResult {
    if let Some(why) = faultlab::lab::vm::unavailable() {
        return Err(format!("this test needs a VM lab: {why} (CI installs what it needs)").into());
    }
    let _turn = lab_turn();
    let scratch = std::env::temp_dir().join(format!("faultlab-vm-bad-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let history = scratch.join("h.sqlite");
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
        let mut all = vec![
            "run",
            "--lab",
            "vm",
            "--suite",
            "seed",
            "--case",
            "F1",
            "--no-history",
        ];
        all.extend(args);
        let out = faultlab(&all, &history)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {stderr}");
        assert!(stderr.contains(said), "{all:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let left = leftovers("flv")?;
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}
