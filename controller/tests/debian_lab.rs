//! Hosts installed the way users install them: `faultlab lab up --vm
//! --guest debian` boots whole Debian systems (systemd, journald, sshd),
//! the project's Ansible role installs the agent on them over SSH, systemd
//! starts it with the shipped unit, and the controller speaks mutual TLS to
//! it; then the seed and physical suites run there: R1 a real abrupt
//! reboot, P5 an orderly one through systemd (logind and polkit).
//! Needs root, QEMU, debootstrap, qemu-img, Debian's cloud kernel with its
//! initrd and ansible-playbook (CI installs them).

mod common;

use common::{case_of, faultlab, lab_turn, not_expected, scratch, suite_report};
use std::time::Instant;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The cases of `suite` run on the lab of `inventory`: `count` of them,
/// each `expected`.
fn all_expected(
    suite: &str,
    inventory: &str,
    history: &std::path::Path,
    count: usize,
) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
    let report = suite_report(suite, inventory, history)?;
    let cases = report["cases"].as_array().cloned().unwrap_or_default();
    let wrong = not_expected(&report);
    if cases.len() != count || !wrong.is_empty() {
        return Err(format!("{suite}: {} cases, not expected: {wrong:#?}", cases.len()).into());
    }
    Ok(cases)
}

/// What a shell line on lab host `host` (its number) printed (`faultlab
/// lab exec`).
fn on_host(state: &str, host: &str, command: &str) -> Result<String, Box<dyn std::error::Error>> {
    let ran = std::process::Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(["lab", "exec", "--state", state, host, "--", command])
        .output()?;
    Ok(String::from_utf8_lossy(&ran.stdout).into_owned())
}

/// What a host's network is: routes, addresses, queueing, firewall.
const SNAPSHOT: &str = "ip route; ip -6 route; ip address; tc qdisc; nft list ruleset";

/// A case that cuts host b (role `b`) off and delays what it sends, each
/// until a deadline of 20 s, then waits.
const FAULTS_THEN_WAIT: &str = "id = \"Z9\"\nname = \"faults-then-wait\"\ntitle = \"Host b cut off and degraded, then a wait\"\n\
roles = [\"a\", \"b\"]\nneeds = [\"isolate\", \"degrade\"]\ntimeout_ms = 90000\n\n\
[[step]]\nrole = \"b\"\ndo = \"isolate\"\nmode = \"drop\"\ndeadline_ms = 20000\n\n\
[[step]]\nrole = \"b\"\ndo = \"degrade\"\ndelay_ms = 100\ndeadline_ms = 20000\n\n\
[[step]]\ndo = \"sleep\"\nms = 30000\n";

/// Host 2's network before a case cuts it off and degrades it, while it is,
/// and after its agent was SIGKILLed by systemd mid-case and the case and
/// the deadlines are over.
fn agent_killed_mid_faults(
    state: &str,
    inventory: &str,
    scratch: &std::path::Path,
) -> Result<(String, String, String), Box<dyn std::error::Error>> {
    let before = on_host(state, "2", SNAPSHOT)?;
    let case = scratch.join("faults.toml");
    std::fs::write(&case, FAULTS_THEN_WAIT)?;
    let mut run = common::run_in_background(inventory, &case)?;
    let started = Instant::now();
    let during = loop {
        let now = on_host(state, "2", SNAPSHOT)?;
        if now.contains("netem") && now.contains("0.0.0.0/0") {
            break now;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            let _ = run.kill();
            return Err(format!("the faults were never in place: {now}").into());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    on_host(state, "2", "systemctl kill --signal=KILL faultlab-agent")?;
    run.wait()?;
    // Past the deadlines, whoever healed (the agent systemd started again,
    // or the watchdogs).
    std::thread::sleep(std::time::Duration::from_secs(5));
    let after = on_host(state, "2", SNAPSHOT)?;
    Ok((before, during, after))
}

#[test]
fn debian_hosts_installed_by_ansible_over_ssh_play_the_seed_suite_over_mtls() -> TestResult {
    if let Some(why) = faultlab::lab::vm::unavailable() {
        return Err(format!("this test needs a VM lab: {why} (CI installs what it needs)").into());
    }
    let _turn = lab_turn();
    let (scratch, history) = scratch("debian")?;
    let state = scratch.join("state").display().to_string();
    let started = Instant::now();
    let up = faultlab(
        &[
            "lab", "up", "--vm", "--guest", "debian", "--hosts", "2", "--state", &state,
        ],
        &history,
    )?;
    let up_took = started.elapsed();
    common::succeeded(&up)?;
    let inventory = format!("{state}/inventory.toml");
    let on_the_lab = || -> Result<_, Box<dyn std::error::Error>> {
        let listed = faultlab(&["agents", "--inventory", &inventory], &history)?;
        // Without the lab's certificates, the agent will not talk.
        let address = std::fs::read_to_string(&inventory)?
            .lines()
            .find_map(|line| line.strip_prefix("address = "))
            .map(|address| address.trim_matches('"').to_owned())
            .ok_or("no address in the inventory")?;
        let plain = faultlab(&["agents", &address], &history)?;
        let unit = on_host(
            &state,
            "1",
            "systemctl is-active faultlab-agent; systemctl show -p FragmentPath,User faultlab-agent",
        )?;
        let seed_started = Instant::now();
        let seed = all_expected("seed", &inventory, &history, 15)?;
        let seed_took = seed_started.elapsed();
        let physical = all_expected("physical", &inventory, &history, 5)?;
        let killed = agent_killed_mid_faults(&state, &inventory, &scratch)?;
        let journal = on_host(
            &state,
            "2",
            "journalctl -u faultlab-agent --no-pager -o cat | grep -c 'caller=controller'",
        )?;
        Ok((
            listed, plain, unit, seed, seed_took, physical, killed, journal,
        ))
    };
    let found = on_the_lab();
    let down = faultlab(&["lab", "down", "--state", &state], &history)?;
    let _ = std::fs::remove_dir_all(&scratch);
    let (listed, plain, unit, seed, seed_took, physical, killed, journal) = found?;
    common::succeeded(&down)?;
    common::succeeded(&listed)?;
    let said = String::from_utf8_lossy(&listed.stdout);
    assert!(said.contains("Debian GNU/Linux 12"), "{said}");
    let refused = String::from_utf8_lossy(&plain.stdout);
    assert!(
        plain.status.code() != Some(0) && refused.contains("down"),
        "a plain-text client is refused: {refused}"
    );
    assert!(
        unit.contains("active") && unit.contains("/etc/systemd/system/faultlab-agent.service"),
        "{unit}"
    );
    assert!(unit.contains("User=faultlab"), "{unit}");
    // R1 is the seed's abrupt reboot (nothing shut down first), real.
    let abrupt = case_of(&seed, "R1")?;
    assert!(
        abrupt.to_string().contains("reboot (reboot(2))"),
        "{abrupt}"
    );
    // The physical suite: cables and power by the lab, and P5's orderly
    // reboot through systemd (logind, polkit): the FIN of the stopped
    // server before the host goes.
    let orderly = case_of(&physical, "P5")?;
    assert!(
        orderly.to_string().contains("reboot (systemctl reboot)"),
        "{orderly}"
    );
    let fin_from_server = orderly["wire"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|segment| {
            segment["flags"]
                .as_str()
                .is_some_and(|flags| flags.contains('F'))
                && segment["source"]
                    .as_str()
                    .is_some_and(|source| source.starts_with("198.18."))
                && segment["host"] == "vm-1"
                && segment["destination"]
                    .as_str()
                    .is_some_and(|to| orderly["wire"][0]["source"].as_str() == Some(to))
        });
    assert!(
        fin_from_server,
        "the stopped server's FIN reached the client: {orderly}"
    );
    // The agent SIGKILLed by systemd while its host was cut off and
    // degraded: systemd started it again, and the host is exactly as it
    // was (routes, addresses, qdiscs, the whole ruleset).
    let (before, during, after) = killed;
    assert!(
        during.contains("drop_in_v4") && during.contains("netem"),
        "{during}"
    );
    assert_eq!(before, after, "the host is not as it was");
    let audited: u32 = journal.trim().parse().unwrap_or(0);
    assert!(
        audited > 0,
        "the agent's journal shows no audited call: {journal:?}"
    );
    eprintln!(
        "debian lab: up (image, boot, Ansible) {:.1} s; seed suite {:.1} s; {audited} audited calls in vm-2's journal",
        up_took.as_secs_f64(),
        seed_took.as_secs_f64()
    );
    Ok(())
}
