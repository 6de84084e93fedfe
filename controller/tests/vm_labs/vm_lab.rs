//! The VM lab as a user runs it: `faultlab lab up --vm` makes hosts that are
//! QEMU VMs with their own Linux kernels (not this machine's), the seed and
//! physical suites run on them with wire evidence (cables pulled at the
//! switch side, power cut and back, a real reboot), and `lab down` leaves
//! no QEMU process and no tap or bridge; `faultlab run --lab vm` does the
//! same for one run, and a run whose controller was killed is swept away by
//! the next. Needs root, qemu-system-x86, a kernel in /boot and
//! busybox-static (CI installs them).

use crate::common;

use common::{case_of, faultlab, lab_turn, scratch, suite_report};
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
    let on_the_lab = || -> Result<_, Box<dyn std::error::Error>> {
        let agents = faultlab(&["agents", "--inventory", &inventory], &history)?;
        let physical = suite_report("physical", &inventory, &history)?;
        let degraded = suite_report("degraded", &inventory, &history)?;
        let partitions = suite_report("partitions", &inventory, &history)?;
        let control = control_channel_while_degraded(&inventory, &scratch)?;
        let on_control = control_interface_degraded(&inventory)?;
        let bursty = bursts_read_back(&inventory, &scratch, &history)?;
        let live = degradations_heal_on_a_live_kernel(&state, &inventory, &scratch, &history)?;
        let late = a_case_that_times_out(&inventory, &scratch, &history)?;
        let carrier = cable_across_a_reset(&state, &inventory, &scratch, &history)?;
        let replugged = replugged_then_connected(&inventory, &scratch, &history)?;
        let beside = a_namespace_lab_beside(&state, &scratch, &history)?;
        Ok((
            agents, physical, degraded, partitions, control, on_control, bursty, live, late,
            carrier, replugged, beside,
        ))
    };
    let (
        agents,
        physical,
        degraded,
        partitions,
        (test_delayed, control_during, test_after),
        (closed_port, agent_port),
        bursty,
        live,
        late,
        carrier,
        replugged,
        (beside_run, vm_status),
    ) = match on_the_lab() {
        Ok(found) => found,
        Err(error) => {
            // The lab goes, whatever went wrong on it.
            let _ = faultlab(&["lab", "down", "--state", &state], &history);
            return Err(error);
        }
    };
    let again = faultlab(
        &["lab", "up", "--vm", "--hosts", "2", "--state", &state],
        &history,
    )?;
    let (run, down) = common::seed_suite_then_down(&state, &history)?;
    let _ = std::fs::remove_dir_all(&scratch);

    // A namespace lab ran beside the VM lab, and its down left the VMs be.
    common::succeeded(&beside_run)?;
    assert_eq!(
        vm_status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&vm_status.stdout)
    );

    // A lab that is up is not replaced by another.
    let refused = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{refused}");
    assert!(refused.contains("a lab is up already"), "{refused}");

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
    // Two kernels, two clocks: after each host's offset is applied, every
    // segment seen leaving one guest and arriving at the other arrives
    // after it left, or within the offsets' stated error.
    let mut checked = 0;
    for case in cases {
        let check = &case["clock_check"];
        if check.is_null() {
            continue;
        }
        let violation = check["worst_violation_ns"].as_i64().ok_or("no violation")?;
        let error = check["uncertainty_ns"].as_i64().ok_or("no uncertainty")?;
        assert!(
            violation <= error,
            "{}: a segment arrived {violation} ns before it left, beyond ±{error} ns",
            case["id"]
        );
        checked += check["segments"].as_u64().unwrap_or(0);
    }
    assert!(checked >= 100, "{checked} segments seen on both ends");
    // And a reader that was waiting when its FIN or RST arrived ended
    // after it arrived (kernel stamps, same guest's clock). Which readers
    // were already waiting depends on the guests' pace (S2's server may
    // start reading after the FIN came), so no count is asserted.
    let delays: Vec<(String, i64)> = cases
        .iter()
        .flat_map(|case| {
            case["observations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|observation| observation["detection"]["after_arrival_ns"].as_i64())
                .map(|delay| (case["id"].to_string(), delay))
        })
        .collect();
    assert!(delays.iter().all(|(_, delay)| *delay >= 0), "{delays:?}");
    // R1's reboot was real: the guest's kernel restarted, nothing shut down.
    let r1 = case_of(cases, "R1")?;
    let calls = strings(&r1["observations"], "call");
    assert!(calls.contains(&"reboot (reboot(2))"), "{calls:?}");
    eprintln!("R1: {}", reboot_times(r1));
    let boots = strings(&report["agents"], "boot_id");
    assert_eq!(boots.len(), 2);
    assert_ne!(boots[0], boots[1], "two machines, two boots");
    // S1's cable was pulled at the switch side: a lost carrier.
    let s1 = case_of(cases, "S1")?;
    let calls = strings(&s1["observations"], "call");
    assert!(
        calls
            .iter()
            .any(|call| call.starts_with("link-down (carrier lost")),
        "{calls:?}"
    );

    // The degraded suite: netem in the guests' own kernels, every case as
    // measured, every interface restored (D1 restores it in a step).
    let report = degraded;
    let not_expected = common::not_expected(&report);
    assert!(not_expected.is_empty(), "{not_expected:#?}");
    assert_eq!(report["summary"]["expected"], 9, "{}", report["cases"]);
    // Losses in runs: the guest's kernel read back netem's Gilbert model
    // (10 % in runs of 4: a run starts with 2.7778 %, ends with 25 %).
    assert!(bursty.contains("loss gemodel p 2.7778% r 25%"), "{bursty}");

    // The partitions suite on two VMs: the cases of three and five hosts
    // cannot bind; the others as measured, N7's SYNs held by netem in
    // the guest's kernel (its connect took the second).
    let cases = partitions["cases"].as_array().ok_or("no partition cases")?;
    for case in cases {
        let id = case["id"].as_str().unwrap_or_default();
        match (id, case["verdict"].as_str()) {
            ("N3" | "N4" | "N12", Some("skipped")) => {}
            (_, Some("expected")) => assert_eq!(case["wire_evidence"], true, "{id}"),
            (_, verdict) => return Err(format!("{id}: {verdict:?} {}", case["differences"]).into()),
        }
    }
    let n7 = case_of(cases, "N7")?;
    let slow = n7["observations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|observation| observation["step"] == "connect-slowly")
        .ok_or("N7 has no slow connect")?;
    assert!(
        slow["duration_ns"].as_u64().unwrap_or_default() >= 1_000_000_000,
        "{slow}"
    );

    // Only the test network was degraded: the control channel kept its
    // round trip (a wide margin: 500 ms were added on the test network).
    assert!(
        test_delayed >= 450,
        "the test network's round trip: {test_delayed} ms"
    );
    assert!(
        control_during < 100,
        "the control channel's: {control_during} ms"
    );
    assert!(
        test_after < 100,
        "restored, the test network's: {test_after} ms"
    );

    // Degrading the very interface the control channel uses leaves the
    // agent's replies alone (tc filters keep its port in the untouched
    // band) and delays everything else on it.
    assert!(
        closed_port >= 280,
        "a closed port's round trip: {closed_port} ms"
    );
    assert!(agent_port < 100, "the agent's port's: {agent_port} ms");

    // A root set by hand comes back after a restore, and after the
    // deadline of a degradation whose agent was killed: its watchdog, not
    // the next agent, put it back (that one found nothing to heal).
    assert!(live.before.contains("tbf 8001: root"), "{}", live.before);
    assert_eq!(live.after_restore, live.before);
    assert!(live.degraded.contains("netem"), "{}", live.degraded);
    assert_eq!(live.after_deadline, live.before, "{}", live.console);
    assert!(
        live.snapshots_left.trim().is_empty(),
        "{}",
        live.snapshots_left
    );
    assert!(live.agents_back, "{}", live.console);
    // A case that timed out points to its hosts' logs and quotes them.
    assert_eq!(late["verdict"], "timeout", "{late}");
    let logs = late["host_logs"]["vm-1"].as_str().unwrap_or_default();
    assert!(
        logs.contains(&format!("console: {state}/vm-1.console"))
            && logs.contains(&format!("agent log: {state}/vm-1.agent.log"))
            && logs.contains("  | "),
        "{late}"
    );
    assert!(late["host_logs"]["vm-2"].is_string(), "{late}");
    assert!(
        live.init_said.contains("the agent ended"),
        "{}",
        live.init_said
    );
    assert!(
        !live
            .console
            .contains("healed a degradation an earlier agent left"),
        "{}",
        live.console
    );

    // A guest that resets gets a fresh QEMU, and a cable pulled before
    // the reset is still out after it; the case's cleanup plugs it in.
    let (new_boot, during, after, said) = carrier;
    assert!(new_boot, "the guest did not boot again: {said}");
    assert_eq!(during.trim(), "0", "eth1's carrier after the reset: {said}");
    assert_eq!(after.trim(), "1", "eth1's carrier after the case: {said}");

    // A host whose cable cleanup plugged back reaches its peer before the
    // next case starts: that case's first connect goes through.
    let cases = replugged["cases"].as_array().ok_or("no cases")?;
    let unplugged = case_of(cases, "V6")?;
    assert_ne!(unplugged["verdict"], "not-healed", "{unplugged}");
    let unplugged_connect = unplugged["observations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|observation| observation["step"] == "unplugged-connect")
        .ok_or("V6's connect was not made")?;
    assert_ne!(unplugged_connect["outcome"], "ok", "{unplugged_connect}");
    eprintln!(
        "V6: connect while unplugged: {} {}; case {} ms",
        unplugged_connect["outcome"], unplugged_connect["errno_name"], unplugged["duration_ms"]
    );
    let next = case_of(cases, "V7")?;
    assert_eq!(next["verdict"], "expected", "{next}");

    // The physical suite: cables and power, each case as measured, with
    // wire evidence (a power-cut host's from what its peer saw).
    // P5's orderly reboot needs a service manager, which the initramfs
    // guests do not run: it is skipped, saying so (the Debian lab runs it).
    let report = physical;
    let cases = report["cases"].as_array().ok_or("no cases")?;
    let orderly = case_of(cases, "P5")?;
    assert_eq!(orderly["verdict"], "skipped", "{orderly}");
    assert!(orderly.to_string().contains("orderly-reboot"), "{orderly}");
    let not_expected: Vec<String> = common::not_expected(&report)
        .into_iter()
        .filter(|case| !case.starts_with("\"P5\""))
        .collect();
    assert!(not_expected.is_empty(), "{not_expected:#?}");
    assert_eq!(report["summary"]["expected"], 4, "{}", report["cases"]);
    for case in cases.iter().filter(|case| case["id"] != "P5") {
        assert_eq!(case["wire_evidence"], true, "{}", case["id"]);
    }
    let p2 = case_of(cases, "P2")?;
    let calls = strings(&p2["observations"], "call");
    assert!(
        calls
            .iter()
            .any(|call| call.starts_with("power-cut (QMP stop"))
            && calls
                .iter()
                .any(|call| call.starts_with("power-on (QMP system_reset")),
        "{calls:?}"
    );

    assert_eq!(
        down.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    nothing_left("fll")
}

/// The kernels unpacked from Debian's packages for this test (by
/// `deploy/vm-kernel.sh target/kernels/NAME`, which `.ci/run` runs).
fn unpacked_kernels() -> Vec<std::path::PathBuf> {
    let kernels = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kernels");
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(kernels)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .flat_map(|tree| {
            std::fs::read_dir(tree.path().join("boot"))
                .into_iter()
                .flatten()
        })
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().contains("/vmlinuz-"))
        .collect();
    found.sort();
    found
}

#[test]
fn a_debian_kernel_unpacked_from_its_package_plays_the_seed_suite() -> TestResult {
    let _turn = vm_lab_turn()?;
    let kernels = unpacked_kernels();
    if kernels.is_empty() {
        return Err(
            "no kernel in target/kernels: `bash deploy/vm-kernel.sh target/kernels/6.12` unpacks Debian's 6.12 (CI does)"
                .into(),
        );
    }
    for kernel in kernels {
        // Debian's 6.12: virtio_pci built in, modules packed as .ko.xz, no
        // modules.dep (the package was unpacked, not installed).
        let release = kernel
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("vmlinuz-"))
            .ok_or("a kernel without a release")?
            .to_owned();
        let (scratch, history) = scratch("vm-kernel")?;
        let mut args = VM_RUN.to_vec();
        let path = kernel.display().to_string();
        args.extend(["--format", "json", "--kernel", &path]);
        let run = faultlab(&args, &history)?;
        let _ = std::fs::remove_dir_all(&scratch);
        let report: serde_json::Value = serde_json::from_slice(&run.stdout)
            .map_err(|error| format!("{error}: {}", String::from_utf8_lossy(&run.stderr)))?;
        let releases = strings(&report["agents"], "kernel_version");
        assert_eq!(releases, [release.as_str(); 2], "{}", report["agents"]);
        let not_expected = common::not_expected(&report);
        assert!(not_expected.is_empty(), "{release}: {not_expected:#?}");
        assert_eq!(report["summary"]["expected"], 15, "{release}");
        // Its reboot was real, and a fresh QEMU brought the guest back.
        let r1 = case_of(report["cases"].as_array().ok_or("no cases")?, "R1")?;
        let calls = strings(&r1["observations"], "call");
        assert!(calls.contains(&"reboot (reboot(2))"), "{calls:?}");
        eprintln!("{release}: R1: {}", reboot_times(r1));
    }
    nothing_left("flv")
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

#[test]
fn the_vms_of_a_killed_controller_are_swept_by_the_next_vm_lab() -> TestResult {
    let _turn = vm_lab_turn()?;
    let (scratch, history) = scratch("vm-killed")?;
    let mut args = VM_RUN.to_vec();
    args.extend(["--case", "K1"]);
    let mut doomed = Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(&args)
        .env("FAULTLAB_HISTORY", &history)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let prefix = format!("flv{}", doomed.id());
    // Killed -9 once its VMs run: nothing of it can clean up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while leftovers(&prefix)?
        .iter()
        .filter(|left| left.contains("qemu"))
        .count()
        < 2
    {
        if std::time::Instant::now() > deadline {
            let _ = doomed.kill();
            return Err("the doomed run's VMs never started".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    doomed.kill()?;
    doomed.wait()?;
    assert!(
        !leftovers(&prefix)?.is_empty(),
        "its VMs outlive it until swept"
    );

    let mut args = VM_RUN.to_vec();
    args.extend(["--case", "F1"]);
    let next = faultlab(&args, &history)?;
    let _ = std::fs::remove_dir_all(&scratch);
    assert_eq!(
        next.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );
    nothing_left(&prefix)?;
    let scratch_dir = faultlab::lab::default_state_dir().join(&prefix);
    assert!(!scratch_dir.exists(), "{} left", scratch_dir.display());
    nothing_left("flv")
}

/// Milliseconds until a TCP connection attempt to `address` is answered
/// (accepted or refused: either way one round trip), at most 3 s.
fn round_trip_ms(address: std::net::SocketAddr) -> u128 {
    let started = std::time::Instant::now();
    let _ = std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(3));
    started.elapsed().as_millis()
}

/// Losses in runs of 4 on vm-1 (10 %), made and restored with no traffic
/// (TCP through them stalls for as long as a run lasts, in retransmission
/// timeouts that double: no case can bound it); what its kernel read back.
fn bursts_read_back(
    inventory: &str,
    scratch: &std::path::Path,
    history: &std::path::Path,
) -> Result<String, Box<dyn std::error::Error>> {
    let ran = run_text(
        inventory,
        scratch,
        history,
        "bursty.toml",
        "id = \"V3\"\nname = \"bursty\"\ntitle = \"bursty\"\nroles = [\"client\", \"server\"]\nneeds = [\"degrade\"]\n\n[[step]]\nrole = \"client\"\ndo = \"degrade\"\nloss = 10.0\nloss_burst = 4.0\ndeadline_ms = 20000\nexpect.linux = { outcome = \"ok\" }\n\n[[step]]\nrole = \"client\"\ndo = \"restore\"\nexpect.linux = { outcome = \"ok\" }\n",
    )?;
    common::succeeded(&ran)?;
    let report: serde_json::Value = serde_json::from_slice(&ran.stdout)?;
    let cases = report["cases"].as_array().ok_or("no cases")?;
    Ok(strings(&case_of(cases, "V3")?["observations"], "detail").join("\n"))
}

/// The first agent's (vm-1's) address under `key` in the inventory.
fn first_address(
    inventory: &str,
    key: &str,
) -> Result<std::net::IpAddr, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(inventory)?;
    let line = text
        .lines()
        .find(|line| line.starts_with(key))
        .ok_or(format!("no {key} in the inventory"))?;
    let value = line.split('"').nth(1).ok_or("no value")?;
    let host = value.rsplit_once(':').map_or(value, |(host, _)| host);
    Ok(host.parse()?)
}

/// Degrade the interface vm-1's control channel arrives on (its
/// management NIC) by 300 ms, through the agent's own API, and measure
/// from this machine: the round trip to a closed port there (delayed), the
/// longest of five to the agent's port (its replies exempt), in ms.
fn control_interface_degraded(inventory: &str) -> Result<(u128, u128), Box<dyn std::error::Error>> {
    let management = first_address(inventory, "address")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut agent = faultlab::agents::connect(&format!("{management}:7420")).await?;
        agent
            .degrade(faultlab_proto::v1::DegradeRequest {
                id: "control".to_owned(),
                address: management.to_string(),
                delay_us: 300_000,
                deadline_ms: 20_000,
                ..Default::default()
            })
            .await?;
        let closed = round_trip_ms(std::net::SocketAddr::new(management, 9));
        let control = (0..5)
            .map(|_| round_trip_ms(std::net::SocketAddr::new(management, 7420)))
            .max()
            .unwrap_or(0);
        agent
            .restore(faultlab_proto::v1::RestoreRequest {
                id: "control".to_owned(),
            })
            .await?;
        Ok((closed, control))
    })
}

/// Degrade vm-1's test network by 500 ms (a run of a scenario that holds
/// it for 8 s), and measure from this machine, which has an address on both
/// lab networks: the test network's round trip to vm-1 (a closed port's
/// RST), the control channel's (the agent's port) meanwhile, and the test
/// network's once the run restored it. In milliseconds.
fn control_channel_while_degraded(
    inventory: &str,
    scratch: &std::path::Path,
) -> Result<(u128, u128, u128), Box<dyn std::error::Error>> {
    let case = scratch.join("slow.toml");
    std::fs::write(
        &case,
        r#"id = "V1"
name = "slow-test-network"
title = "vm-1's test network 500 ms slower for 8 s"
roles = ["client", "server"]
needs = ["degrade"]

[[step]]
role = "client"
do = "degrade"
delay_ms = 500
deadline_ms = 30000

[[step]]
do = "sleep"
ms = 8000
"#,
    )?;
    let control = std::net::SocketAddr::new(first_address(inventory, "address")?, 7420);
    let test = std::net::SocketAddr::new(first_address(inventory, "test_ip")?, 9);
    let mut run = common::run_in_background(inventory, &case)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut test_delayed = 0;
    // Paced: a connect to a closed port is answered at once until the
    // delay is in place, and back-to-back SYNs starve a TCG guest (its
    // agent then took 14 s to degrade, and the case lost it).
    while test_delayed < 450 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        test_delayed = round_trip_ms(test);
    }
    let control_during = (0..5).map(|_| round_trip_ms(control)).max().unwrap_or(0);
    run.wait()?;
    let test_after = round_trip_ms(test);
    Ok((test_delayed, control_during, test_after))
}

/// What vm-1's own kernel showed of degradations made over a root qdisc
/// set by hand (a `tbf`), once healed by a restore and once by the
/// watchdog of an agent killed mid-degradation.
struct LiveHeal {
    /// The root set by hand, before anything.
    before: String,
    /// The root after a degradation and its restore.
    after_restore: String,
    /// The qdiscs while a degradation held (the agent then killed).
    degraded: String,
    /// The root after that degradation's deadline, its agent still dead.
    after_deadline: String,
    /// Degradation snapshots left in the guest's /tmp then.
    snapshots_left: String,
    /// Whether the agents answered again afterwards (restarted 5 s after).
    agents_back: bool,
    /// vm-1's agent log from the kill on.
    console: String,
    /// vm-1's serial console (its init's words) from the kill on.
    init_said: String,
}

/// Run one shell line in vm-1 of the lab in `state`; its output.
fn in_vm(state: &str, history: &std::path::Path, line: &str) -> Result<String, String> {
    in_vm_n(state, history, 1, line)
}

/// Run one shell line in VM `n` of the lab in `state`; its output.
fn in_vm_n(state: &str, history: &std::path::Path, n: usize, line: &str) -> Result<String, String> {
    let n = n.to_string();
    let ran = faultlab(&["lab", "--state", state, "exec", &n, "--", line], history)
        .map_err(|error| error.to_string())?;
    if ran.status.success() {
        Ok(String::from_utf8_lossy(&ran.stdout).into_owned())
    } else {
        Err(format!(
            "{line:?} in vm-{n}: {}{}",
            String::from_utf8_lossy(&ran.stdout),
            String::from_utf8_lossy(&ran.stderr)
        ))
    }
}

fn degradations_heal_on_a_live_kernel(
    state: &str,
    inventory: &str,
    scratch: &std::path::Path,
    history: &std::path::Path,
) -> Result<LiveHeal, Box<dyn std::error::Error>> {
    in_vm(
        state,
        history,
        "tc qdisc replace dev eth1 root handle 8001: tbf rate 100mbit burst 64kb latency 50ms",
    )?;
    let root = "tc qdisc show dev eth1 root";
    let before = in_vm(state, history, root)?;
    let scenario = |name: &str, deadline_ms: u32, then: &str| {
        format!(
            "id = \"V2\"\nname = \"{name}\"\ntitle = \"{name}\"\nroles = [\"client\", \"server\"]\nneeds = [\"degrade\"]\n\n[[step]]\nrole = \"client\"\ndo = \"degrade\"\ndelay_ms = 50\ndeadline_ms = {deadline_ms}\n{then}"
        )
    };
    let restored = scratch.join("restored.toml");
    std::fs::write(
        &restored,
        scenario(
            "restored",
            20_000,
            "\n[[step]]\ndo = \"sleep\"\nms = 500\n\n[[step]]\nrole = \"client\"\ndo = \"restore\"\nexpect.linux = { outcome = \"ok\" }\n",
        ),
    )?;
    let ran = std::process::Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(["run", "--inventory", inventory, "--no-history"])
        .arg(&restored)
        .output()?;
    common::succeeded(&ran)?;
    let after_restore = in_vm(state, history, root)?;

    // Degraded again, with a 3 s deadline; its agent killed meanwhile (the
    // agent alone: its watchdog and holders are processes of the same
    // executable).
    let killed = scratch.join("killed.toml");
    std::fs::write(
        &killed,
        scenario("killed", 3_000, "\n[[step]]\ndo = \"sleep\"\nms = 20000\n"),
    )?;
    let console_path = std::path::Path::new(state).join("vm-1.agent.log");
    let console_before = std::fs::read_to_string(&console_path)?.len();
    let init_path = std::path::Path::new(state).join("vm-1.console");
    let init_before = std::fs::read_to_string(&init_path)?.len();
    let mut run = common::run_in_background(inventory, &killed)?;
    let waited = std::time::Instant::now();
    let mut degraded = String::new();
    while !degraded.contains("netem") && waited.elapsed() < std::time::Duration::from_secs(30) {
        degraded = in_vm(state, history, "tc qdisc show dev eth1")?;
    }
    // Its filters follow the netem qdisc within a few hundred ms.
    std::thread::sleep(std::time::Duration::from_millis(500));
    in_vm(
        state,
        history,
        "for p in $(pidof faultlab-agent); do if tr '\\0' ' ' < /proc/$p/cmdline | grep -q -- --listen; then kill -9 $p; fi; done",
    )?;
    // The deadline passes (and the watchdog's heal, a few tc commands);
    // the agent comes back only 5 s after it died, and takes 1 s to start.
    std::thread::sleep(std::time::Duration::from_millis(3_500));
    let after_deadline = in_vm(state, history, root)?;
    let snapshots_left = in_vm(state, history, "ls /tmp | grep faultlab-degrade; true")?;
    // The run ends by itself (vm-1's agent lost), stopping what it started
    // on vm-2 (its capture would slow that guest for the cases after).
    let ending = std::time::Instant::now();
    while matches!(run.try_wait(), Ok(None))
        && ending.elapsed() < std::time::Duration::from_secs(90)
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = run.kill();
    let _ = run.wait();
    let back = std::time::Instant::now();
    let mut agents_back = false;
    while !agents_back && back.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(500));
        agents_back = faultlab(&["agents", "--inventory", inventory], history)?
            .status
            .success();
    }
    let console = std::fs::read_to_string(&console_path)?
        .get(console_before..)
        .unwrap_or_default()
        .to_owned();
    let init_said = std::fs::read_to_string(&init_path)?
        .get(init_before..)
        .unwrap_or_default()
        .to_owned();
    // The lab's hosts go back to the root their kernel makes.
    in_vm(state, history, "tc qdisc del dev eth1 root")?;
    Ok(LiveHeal {
        before,
        after_restore,
        degraded,
        after_deadline,
        snapshots_left,
        agents_back,
        console,
        init_said,
    })
}

/// Run a scenario file's text on the lab of `inventory`, with a JSON
/// report on its standard output.
fn run_text(
    inventory: &str,
    scratch: &std::path::Path,
    history: &std::path::Path,
    name: &str,
    text: &str,
) -> Result<std::process::Output, Box<dyn std::error::Error>> {
    let case = scratch.join(name);
    std::fs::write(&case, text)?;
    let case = case.display().to_string();
    let ran = faultlab(
        &[
            "run",
            "--inventory",
            inventory,
            "--no-history",
            "--format",
            "json",
            &case,
        ],
        history,
    )?;
    Ok(ran)
}

/// A namespace lab made beside the VM lab of `state` (another state
/// directory), a case run on it, and it taken down: that run, and the VM
/// lab's status after.
fn a_namespace_lab_beside(
    state: &str,
    scratch: &std::path::Path,
    history: &std::path::Path,
) -> Result<(std::process::Output, std::process::Output), Box<dyn std::error::Error>> {
    let beside = scratch.join("beside").display().to_string();
    common::succeeded(&faultlab(&["lab", "up", "--state", &beside], history)?)?;
    let inventory = format!("{beside}/inventory.toml");
    let run = faultlab(
        &[
            "run",
            "--suite",
            "seed",
            "--case",
            "S2",
            "--inventory",
            &inventory,
        ],
        history,
    );
    let down = faultlab(&["lab", "down", "--state", &beside], history);
    let status = faultlab(&["lab", "status", "--state", state], history)?;
    common::succeeded(&down?)?;
    Ok((run?, status))
}

/// A case that outlasts its timeout on the VM lab: its report.
fn a_case_that_times_out(
    inventory: &str,
    scratch: &std::path::Path,
    history: &std::path::Path,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let ran = run_text(
        inventory,
        scratch,
        history,
        "late.toml",
        "id = \"V4\"\nname = \"late\"\ntitle = \"late\"\nroles = [\"client\", \"server\"]\ntimeout_ms = 1000\n\n[[step]]\ndo = \"sleep\"\nms = 5000\n",
    )?;
    let report: serde_json::Value = serde_json::from_slice(&ran.stdout)?;
    Ok(report["cases"][0].clone())
}

/// vm-1's cable pulled while it tries to reach vm-2 (its neighbour entry
/// for vm-2 fails), then, in the very next case, vm-1 connects to vm-2:
/// both reports. Right after a plug-back that connect failed at once with
/// EHOSTUNREACH in 2 runs of 4; the cleanup now ends only once vm-1
/// reaches vm-2 again, so the next case starts on a working path.
fn replugged_then_connected(
    inventory: &str,
    scratch: &std::path::Path,
    history: &std::path::Path,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let unplugged = scratch.join("v6.toml");
    std::fs::write(
        &unplugged,
        "id = \"V6\"\nname = \"unreachable-unplugged\"\ntitle = \"unreachable-unplugged\"\nroles = [\"client\", \"server\"]\nneeds = [\"link\"]\ntimeout_ms = 30000\n\n[[step]]\nrole = \"server\"\ndo = \"listen\"\nas = \"l\"\n\n[[step]]\nrole = \"client\"\ndo = \"link-down\"\ndeadline_ms = 20000\n\n[[step]]\nname = \"unplugged-connect\"\nrole = \"client\"\ndo = \"connect\"\nto = \"l\"\nas = \"c\"\ntimeout_ms = 5000\n",
    )?;
    let next = scratch.join("v7.toml");
    std::fs::write(
        &next,
        "id = \"V7\"\nname = \"connect-after-replug\"\ntitle = \"connect-after-replug\"\nroles = [\"client\", \"server\"]\ntimeout_ms = 30000\n\n[[step]]\nrole = \"server\"\ndo = \"listen\"\nas = \"l\"\n\n[[step]]\nname = \"first-connect\"\nrole = \"client\"\ndo = \"connect\"\nto = \"l\"\nas = \"c\"\ntimeout_ms = 3000\nexpect.linux = { outcome = \"ok\" }\n",
    )?;
    let ran = faultlab(
        &[
            "run",
            "--inventory",
            inventory,
            "--no-history",
            "--format",
            "json",
            "--bind",
            "client=vm-1",
            "--bind",
            "server=vm-2",
            &unplugged.display().to_string(),
            &next.display().to_string(),
        ],
        history,
    )?;
    Ok(serde_json::from_slice(&ran.stdout)?)
}

/// Pull vm-2's cable, then reboot vm-2 and read its test NIC's carrier
/// while the case still holds the cable out, and once the case is over:
/// whether vm-2 booted anew, the carrier then, and after.
fn cable_across_a_reset(
    state: &str,
    inventory: &str,
    scratch: &std::path::Path,
    history: &std::path::Path,
) -> Result<(bool, String, String, String), Box<dyn std::error::Error>> {
    let boot_before = in_vm_n(state, history, 2, "cat /proc/sys/kernel/random/boot_id")?;
    let case = scratch.join("reset.toml");
    std::fs::write(
        &case,
        "id = \"V5\"\nname = \"reset-unplugged\"\ntitle = \"reset-unplugged\"\nroles = [\"client\", \"server\"]\nneeds = [\"link\", \"isolate\"]\ntimeout_ms = 90000\n\n[[step]]\nrole = \"server\"\ndo = \"link-down\"\ndeadline_ms = 60000\n\n[[step]]\nrole = \"server\"\ndo = \"reboot\"\n\n[[step]]\ndo = \"sleep\"\nms = 20000\n",
    )?;
    let said = scratch.join("reset.out");
    let mut run = std::process::Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(["run", "--inventory", inventory, "--no-history"])
        .arg(&case)
        .stdout(std::fs::File::create(&said)?)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // The reboot step ends once the agent answers from its new boot.
    let waited = std::time::Instant::now();
    let mut boot_after = boot_before.clone();
    while boot_after == boot_before && waited.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(500));
        boot_after = in_vm_n(state, history, 2, "cat /proc/sys/kernel/random/boot_id")
            .unwrap_or_else(|_| boot_before.clone());
    }
    let during = in_vm_n(state, history, 2, "cat /sys/class/net/eth1/carrier")?;
    let ending = std::time::Instant::now();
    while matches!(run.try_wait(), Ok(None))
        && ending.elapsed() < std::time::Duration::from_secs(60)
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = run.kill();
    let _ = run.wait();
    // The plugged cable's carrier is back within a second.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let after = in_vm_n(state, history, 2, "cat /sys/class/net/eth1/carrier")?;
    let said = std::fs::read_to_string(said).unwrap_or_default();
    Ok((boot_after != boot_before, during, after, said))
}

/// How long R1 took, and its reboot step (the reboot, until the agent
/// answered from its new boot), for the test's output.
fn reboot_times(r1: &serde_json::Value) -> String {
    let reboot_ns = r1["observations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|observation| observation["call"] == "reboot (reboot(2))")
        .and_then(|observation| observation["duration_ns"].as_u64())
        .unwrap_or(0);
    format!(
        "case {} ms, reboot until its agent was back {} ms",
        r1["duration_ms"],
        reboot_ns / 1_000_000
    )
}
