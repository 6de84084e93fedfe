//! Hosts installed the way users install them: `faultlab lab up --vm
//! --guest debian` boots whole Debian systems (systemd, journald, sshd),
//! the project's Ansible role installs the agent on them over SSH, systemd
//! starts it with the shipped unit, and the controller speaks mutual TLS to
//! it; then the seed and physical suites run there: R1 a real abrupt
//! reboot, P5 an orderly one through systemd (logind and polkit).
//! Needs root, QEMU, debootstrap, qemu-img, Debian's cloud kernel with its
//! initrd and ansible-playbook (CI installs them).

use crate::common;

use common::{case_of, faultlab, lab_turn, not_expected, scratch, suite_report};
use faultlab_proto::v1 as pb;
use std::process::Command;
use std::time::{Duration, Instant};

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
    let ran = Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(["lab", "exec", "--state", state, host, "--", command])
        .output()?;
    Ok(String::from_utf8_lossy(&ran.stdout).into_owned())
}

/// What a host's network is: routes, addresses, queueing, firewall.
const SNAPSHOT: &str = "ip route; ip -6 route; ip address; tc qdisc; nft list ruleset";

/// A case that cuts host b (role `b`) off and delays what it sends, each
/// until `deadline_ms`, then waits past it.
fn faults_then_wait(deadline_ms: u64) -> String {
    format!(
        "id = \"Z9\"\nname = \"faults-then-wait\"\ntitle = \"Host b cut off and degraded, then a wait\"\n\
roles = [\"a\", \"b\"]\nneeds = [\"isolate\", \"degrade\"]\ntimeout_ms = {timeout}\n\n\
[[step]]\nrole = \"b\"\ndo = \"isolate\"\nmode = \"drop\"\ndeadline_ms = {deadline_ms}\n\n\
[[step]]\nrole = \"b\"\ndo = \"degrade\"\ndelay_ms = 100\ndeadline_ms = {deadline_ms}\n\n\
[[step]]\ndo = \"sleep\"\nms = {sleep}\n",
        timeout = deadline_ms + 60_000,
        sleep = deadline_ms + 10_000,
    )
}

/// Start `faults_then_wait(deadline_ms)` in the background; once host 2
/// is cut off and degraded: the run, and host 2's network then.
fn faults_in_place(
    state: &str,
    inventory: &str,
    scratch: &std::path::Path,
    deadline_ms: u64,
) -> Result<(std::process::Child, String), Box<dyn std::error::Error>> {
    let case = scratch.join("faults.toml");
    std::fs::write(&case, faults_then_wait(deadline_ms))?;
    // Its report kept, to say why if the faults never come.
    let log = scratch.join("faults.out");
    let mut run = Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(["run", "--inventory", inventory, "--no-history"])
        .arg(&case)
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let started = Instant::now();
    loop {
        let now = on_host(state, "2", SNAPSHOT)?;
        if now.contains("netem") && now.contains("0.0.0.0/0") {
            return Ok((run, now));
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = run.kill();
            let _ = run.wait();
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("the faults were never in place: {said}\n{now}").into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The agent of the lab's host `index` (in the inventory's order) takes
/// that host's test interface down itself (an admin down, as on a host
/// whose lab cannot pull cables) until `deadline_ms`: over mutual TLS,
/// with the lab's controller certificate.
fn agent_link_down(
    inventory: &str,
    index: usize,
    deadline_ms: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let inventory = faultlab::inventory::Inventory::load(std::path::Path::new(inventory))?;
    let agent = inventory.agents.get(index).ok_or("no such agent")?;
    let tls = inventory
        .tls
        .as_ref()
        .ok_or("the lab's inventory has no [tls]")?;
    let connector = faultlab::agents::Connector::with_tls(tls)?;
    let test_ip = agent.test_ip.ok_or("the agent has no test address")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut client = connector.connect(&agent.address).await?;
            client
                .link_down(pb::LinkDownRequest {
                    address: test_ip.to_string(),
                    deadline_ms,
                    ..Default::default()
                })
                .await?;
            Ok(())
        })
}

/// Host 2's network before a case cuts it off and degrades it and its
/// agent takes its test link down, while all three hold, and after its
/// agent was SIGKILLed by systemd mid-case and the case and the deadlines
/// are over.
fn agent_killed_mid_faults(
    state: &str,
    inventory: &str,
    scratch: &std::path::Path,
) -> Result<(String, String, String), Box<dyn std::error::Error>> {
    let before = on_host(state, "2", SNAPSHOT)?;
    let (mut run, _) = faults_in_place(state, inventory, scratch, 20_000)?;
    let linked = agent_link_down(inventory, 1, 20_000);
    let during = on_host(state, "2", SNAPSHOT)?;
    on_host(state, "2", "systemctl kill --signal=KILL faultlab-agent")?;
    run.wait()?;
    linked?;
    // Past the deadlines, whoever healed (the agent systemd started again,
    // or the watchdogs).
    std::thread::sleep(Duration::from_secs(5));
    let after = on_host(state, "2", SNAPSHOT)?;
    Ok((before, during, after))
}

/// What `faultlab heal --all` does for a lab whose controller was SIGKILLed
/// mid-case, long before the faults' deadline: host 2's network before,
/// after the kill, and after the heal; what heal said; how long it took.
struct HealAll {
    before: String,
    after_kill: String,
    after_heal: String,
    said: std::process::Output,
    took: Duration,
}

fn heal_all_after_controller_killed(
    state: &str,
    inventory: &str,
    scratch: &std::path::Path,
    history: &std::path::Path,
) -> Result<HealAll, Box<dyn std::error::Error>> {
    let before = on_host(state, "2", SNAPSHOT)?;
    let (mut run, _) = faults_in_place(state, inventory, scratch, 120_000)?;
    run.kill()?;
    run.wait()?;
    let after_kill = on_host(state, "2", SNAPSHOT)?;
    let started = Instant::now();
    let said = faultlab(&["heal", "--all", "--inventory", inventory], history)?;
    let took = started.elapsed();
    let after_heal = on_host(state, "2", SNAPSHOT)?;
    Ok(HealAll {
        before,
        after_kill,
        after_heal,
        said,
        took,
    })
}

/// The lab's own Ansible inventory, playbook and `ansible-playbook`.
fn lab_playbook(state: &str) -> Result<Command, Box<dyn std::error::Error>> {
    let playbook = faultlab::lab::vm::ansible_playbook().ok_or("no ansible-playbook")?;
    let mut command = Command::new(playbook);
    command
        .arg("-i")
        .arg(format!("{state}/ansible-inventory.ini"))
        .arg(format!("{state}/deploy/ansible/site.yml"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_PIPELINING", "True");
    Ok(command)
}

/// What sha256sum says of a file's contents (first word).
fn sha256(output: &str) -> String {
    output
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A newer agent rolled out by re-running the lab's playbook unchanged but
/// for the binary (this build's with bytes appended, so it differs):
/// the playbook's output, the new binary's checksum, and what each host
/// then has installed and running.
fn rolling_upgrade(
    state: &str,
    scratch: &std::path::Path,
) -> Result<(std::process::Output, String, Vec<String>), Box<dyn std::error::Error>> {
    let agent = faultlab::lab::find_agent().ok_or("faultlab-agent is not built")?;
    let mut newer = std::fs::read(agent)?;
    newer.extend_from_slice(b"\0faultlab rolling upgrade\0");
    let binary = scratch.join("faultlab-agent");
    std::fs::write(&binary, &newer)?;
    let checksum = Command::new("sha256sum").arg(&binary).output()?;
    let output = lab_playbook(state)?
        .arg("-e")
        .arg(format!("faultlab_agent_binary={}", binary.display()))
        .output()?;
    let installed = ["1", "2"]
        .iter()
        .map(|host| {
            on_host(
                state,
                host,
                "sha256sum /usr/local/bin/faultlab-agent; systemctl is-active faultlab-agent; \
                 sha256sum /proc/$(systemctl show -p MainPID --value faultlab-agent)/exe",
            )
        })
        .collect::<Result<_, _>>()?;
    Ok((
        output,
        sha256(&String::from_utf8_lossy(&checksum.stdout)),
        installed,
    ))
}

/// The lab's administrator over SSH, as a user reaches their hosts: the
/// key and addresses the lab's Ansible inventory names.
struct Admin {
    ini: String,
    key: String,
}

impl Admin {
    fn of(state: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let ini = std::fs::read_to_string(format!("{state}/ansible-inventory.ini"))?;
        let key = ini
            .split_whitespace()
            .find_map(|word| word.strip_prefix("ansible_ssh_private_key_file="))
            .ok_or("no SSH key in the inventory")?
            .to_owned();
        Ok(Self { ini, key })
    }

    fn address(&self, host: &str) -> Result<String, Box<dyn std::error::Error>> {
        Ok(self
            .ini
            .lines()
            .find(|line| line.starts_with(&format!("{host} ")))
            .and_then(|line| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix("ansible_host="))
            })
            .ok_or_else(|| format!("{host} is not in the Ansible inventory"))?
            .to_owned())
    }

    fn options(&self) -> [&str; 10] {
        [
            "-i",
            &self.key,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
        ]
    }

    /// Copy `files` (and directories) to `/tmp/` on `host`.
    fn copy(&self, host: &str, files: &[&std::path::Path]) -> TestResult {
        let copied = Command::new("scp")
            .args(self.options())
            .arg("-r")
            .args(files)
            .arg(format!("faultlab-admin@{}:/tmp/", self.address(host)?))
            .output()?;
        if !copied.status.success() {
            return Err(format!("scp: {}", String::from_utf8_lossy(&copied.stderr)).into());
        }
        Ok(())
    }

    fn run(&self, host: &str, command: &str) -> std::io::Result<std::process::Output> {
        let address = self
            .address(host)
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        Command::new("ssh")
            .args(self.options())
            .arg(format!("faultlab-admin@{address}"))
            .arg(command)
            .output()
    }
}

/// On host 2, the agent the role installed is removed (unit, binary,
/// configuration, user), then installed again by `deploy/systemd/install.sh`
/// as a user would: the binary, the script and the host's certificate
/// copied over SSH, the script run with sudo, its default configuration
/// kept. What the script and systemd then said.
fn install_sh_on_host_2(
    state: &str,
    scratch: &std::path::Path,
) -> Result<(std::process::Output, String), Box<dyn std::error::Error>> {
    let admin = Admin::of(state)?;
    let upload = scratch.join("upload");
    let certs = upload.join("certs");
    std::fs::create_dir_all(&certs)?;
    for file in ["ca.pem", "vm-2.pem", "vm-2.key"] {
        std::fs::copy(format!("{state}/certs/{file}"), certs.join(file))?;
    }
    let agent = faultlab::lab::find_agent().ok_or("faultlab-agent is not built")?;
    let binary = upload.join("faultlab-agent");
    std::fs::copy(agent, &binary)?;
    let systemd = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd"));
    admin.copy("vm-2", &[&certs, &binary, systemd])?;
    let installed = admin.run(
        "vm-2",
        "sudo systemctl disable --now faultlab-agent \
         && sudo rm -rf /etc/faultlab /usr/local/bin/faultlab-agent \
            /etc/systemd/system/faultlab-agent.service /etc/systemd/system/faultlab-agent.service.d \
         && sudo userdel faultlab \
         && sudo bash /tmp/systemd/install.sh /tmp/faultlab-agent /tmp/certs vm-2",
    )?;
    let unit = on_host(
        state,
        "2",
        "systemctl is-active faultlab-agent; systemctl show -p FragmentPath,User faultlab-agent",
    )?;
    Ok((installed, unit))
}

/// The application under test as a real service of host 1: the example
/// echo server, run by systemd as user `nobody`.
const ECHO_UNIT: &str = "faultlab-echo.service";

/// Targets for it: by its unit (the agent asks systemd, as polkit allows)
/// and by its process name (the agent signals it itself: the
/// allow-process drop-in).
const ECHO_TARGETS: &str = "[[target]]\nname = \"echo\"\naddress = \"tcp://vm-1:7000\"\n\
payload = \"PING {seq}\\n\"\nreply = \"^PING 0\\n\"\nprocess = { unit = \"faultlab-echo.service\" }\n\n\
[[target]]\nname = \"echo-by-name\"\naddress = \"tcp://vm-1:7000\"\n\
payload = \"PING {seq}\\n\"\nreply = \"^PING 0\\n\"\nprocess = { name = \"echo_server.py\" }\n";

/// Once the echo service listens on host 1 (30 s at most).
fn echo_listening(state: &str) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    loop {
        let listening = on_host(state, "1", "ss -Hltn 'sport = :7000'")?;
        if !listening.trim().is_empty() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            let journal = on_host(state, "1", &format!("journalctl -u {ECHO_UNIT} -n 20"))?;
            return Err(format!("the echo service is not listening after 30 s:\n{journal}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The app suite's process faults against that service: X1 (its
/// connection aborted), X2 (frozen, by name) and X3 (killed, restarted by
/// systemd); then who runs the server.
fn application_cases(
    state: &str,
    inventory: &str,
    scratch: &std::path::Path,
    history: &std::path::Path,
) -> Result<(Vec<serde_json::Value>, String), Box<dyn std::error::Error>> {
    let admin = Admin::of(state)?;
    let script = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/echo_server.py"
    ));
    admin.copy("vm-1", &[script])?;
    on_host(
        state,
        "1",
        &format!(
            "install -m 0755 /tmp/echo_server.py /opt/echo_server.py && \
             printf '[Service]\\nUser=nobody\\nExecStart=/usr/bin/python3 /opt/echo_server.py --listen 0.0.0.0:7000\\n' \
             > /etc/systemd/system/{ECHO_UNIT} && systemctl daemon-reload && systemctl start {ECHO_UNIT}"
        ),
    )?;
    let targets = scratch.join("app.toml");
    std::fs::write(&targets, ECHO_TARGETS)?;
    let targets = targets.display().to_string();
    let mut cases = Vec::new();
    for (target, ids) in [("echo", &["X1", "X3"][..]), ("echo-by-name", &["X2"][..])] {
        // systemd calls a simple service started once its process is:
        // Python binds its port a second later in an emulated guest, and
        // X3 ends with the server restarted.
        echo_listening(state)?;
        let mut args = vec![
            "run",
            "--suite",
            "app",
            "--inventory",
            inventory,
            "--targets",
            &targets,
            "--format",
            "json",
            "--no-history",
        ];
        let bind = format!("server={target}");
        args.extend(["--target", &bind]);
        for id in ids {
            args.extend(["--case", id]);
        }
        let ran = faultlab(&args, history)?;
        let report: serde_json::Value = serde_json::from_slice(&ran.stdout).map_err(|error| {
            format!(
                "app suite: {error}: {}",
                String::from_utf8_lossy(&ran.stderr)
            )
        })?;
        let wrong = not_expected(&report);
        let found = report["cases"].as_array().cloned().unwrap_or_default();
        if found.len() != ids.len() || !wrong.is_empty() {
            return Err(format!(
                "app suite on {target}: {} cases, not expected: {wrong:#?}",
                found.len()
            )
            .into());
        }
        cases.extend(found);
    }
    let runs_as = on_host(
        state,
        "1",
        &format!("ps -o user= -p $(systemctl show -p MainPID --value {ECHO_UNIT})"),
    )?;
    Ok((cases, runs_as))
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
    // With its phases' times (boot, Ansible) in its log.
    let up = Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args([
            "lab",
            "up",
            "--vm",
            "--guest",
            "debian",
            "--hosts",
            "2",
            "--state",
            &state,
            "--allow-process",
            "--unit",
            ECHO_UNIT,
            "--restart",
            "echo_server.py=python3 /opt/echo_server.py --listen 0.0.0.0:7000",
        ])
        .env("FAULTLAB_HISTORY", &history)
        .env("RUST_LOG", "faultlab=info")
        .output()?;
    for line in String::from_utf8_lossy(&up.stderr).lines() {
        if line.contains("took_ms") {
            eprintln!("lab up: {line}");
        }
    }
    let up_took = started.elapsed();
    common::succeeded(&up)?;
    let inventory = format!("{state}/inventory.toml");
    let found = on_the_lab(&state, &inventory, &scratch, &history);
    let down = faultlab(&["lab", "down", "--state", &state], &history)?;
    let _ = std::fs::remove_dir_all(&scratch);
    let found = found?;
    common::succeeded(&down)?;
    installed_as_users_install(&found)?;
    suites_played(&found)?;
    agents_that_die_heal(&found)?;
    upgraded_and_reinstalled(&found)?;
    eprintln!(
        "debian lab: up (image, boot, Ansible) {:.1} s; seed suite {:.1} s; degraded suite {:.1} s; \
         heal --all {:.1} s; rolling upgrade {:.1} s; {} audited calls in vm-2's journal",
        up_took.as_secs_f64(),
        found.seed_took.as_secs_f64(),
        found.degraded_took.as_secs_f64(),
        found.heal_all.took.as_secs_f64(),
        found.upgrade_took.as_secs_f64(),
        found.journal.trim(),
    );
    Ok(())
}

/// What the test saw on the lab, checked once the lab is down.
struct Found {
    listed: std::process::Output,
    plain: std::process::Output,
    unit: String,
    seed: Vec<serde_json::Value>,
    seed_took: Duration,
    physical: Vec<serde_json::Value>,
    boots_before: Vec<String>,
    boots_after: Vec<String>,
    degraded_took: Duration,
    application: (Vec<serde_json::Value>, String),
    killed: (String, String, String),
    heal_all: HealAll,
    journal: String,
    upgrade: (std::process::Output, String, Vec<String>),
    upgrade_took: Duration,
    after_upgrade: Vec<serde_json::Value>,
    install_sh: (std::process::Output, String),
    after_install_sh: Vec<serde_json::Value>,
}

/// Each host's boot id, its agent's state and since when (systemd's
/// monotonic clock), one line each.
const BOOT: &str = "cat /proc/sys/kernel/random/boot_id; systemctl is-active faultlab-agent; \
                    systemctl show -p NRestarts,ActiveEnterTimestampMonotonic faultlab-agent";

fn on_the_lab(
    state: &str,
    inventory: &str,
    scratch: &std::path::Path,
    history: &std::path::Path,
) -> Result<Found, Box<dyn std::error::Error>> {
    let listed = faultlab(&["agents", "--inventory", inventory], history)?;
    // Without the lab's certificates, the agent will not talk.
    let address = std::fs::read_to_string(inventory)?
        .lines()
        .find_map(|line| line.strip_prefix("address = "))
        .map(|address| address.trim_matches('"').to_owned())
        .ok_or("no address in the inventory")?;
    let plain = faultlab(&["agents", &address], history)?;
    let unit = on_host(
        state,
        "1",
        "systemctl is-active faultlab-agent; systemctl show -p FragmentPath,User faultlab-agent",
    )?;
    let seed_started = Instant::now();
    let seed = all_expected("seed", inventory, history, 15)?;
    let seed_took = seed_started.elapsed();
    let boots = || -> Result<Vec<String>, Box<dyn std::error::Error>> {
        ["1", "2"]
            .iter()
            .map(|host| on_host(state, host, BOOT))
            .collect()
    };
    let boots_before = boots()?;
    let physical = all_expected("physical", inventory, history, 5)?;
    let boots_after = boots()?;
    let degraded_started = Instant::now();
    all_expected("degraded", inventory, history, 9)?;
    let degraded_took = degraded_started.elapsed();
    let application = application_cases(state, inventory, scratch, history)?;
    let killed = agent_killed_mid_faults(state, inventory, scratch)?;
    let heal_all = heal_all_after_controller_killed(state, inventory, scratch, history)?;
    let journal = on_host(
        state,
        "2",
        "journalctl -u faultlab-agent --no-pager -o cat | grep -c 'caller=\"controller\"'",
    )?;
    let upgrade_started = Instant::now();
    let upgrade = rolling_upgrade(state, scratch)?;
    let upgrade_took = upgrade_started.elapsed();
    let after_upgrade = one_case_expected("S2", inventory, history)?;
    let install_sh = install_sh_on_host_2(state, scratch)?;
    let after_install_sh = one_case_expected("S2", inventory, history)?;
    Ok(Found {
        listed,
        plain,
        unit,
        seed,
        seed_took,
        physical,
        boots_before,
        boots_after,
        degraded_took,
        application,
        killed,
        heal_all,
        journal,
        upgrade,
        upgrade_took,
        after_upgrade,
        install_sh,
        after_install_sh,
    })
}

/// The seed case `id` run on the lab: its report, once it is `expected`.
fn one_case_expected(
    id: &str,
    inventory: &str,
    history: &std::path::Path,
) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
    let ran = faultlab(
        &[
            "run",
            "--suite",
            "seed",
            "--case",
            id,
            "--inventory",
            inventory,
            "--format",
            "json",
            "--no-history",
        ],
        history,
    )?;
    let report: serde_json::Value = serde_json::from_slice(&ran.stdout)
        .map_err(|error| format!("{id}: {error}: {}", String::from_utf8_lossy(&ran.stderr)))?;
    let wrong = not_expected(&report);
    let cases = report["cases"].as_array().cloned().unwrap_or_default();
    if cases.len() != 1 || !wrong.is_empty() {
        return Err(format!("{id}: {} cases, not expected: {wrong:#?}", cases.len()).into());
    }
    Ok(cases)
}

/// Installed by the role over SSH, started by systemd with the shipped
/// unit as its own user, spoken to over mutual TLS only.
fn installed_as_users_install(found: &Found) -> TestResult {
    common::succeeded(&found.listed)?;
    let said = String::from_utf8_lossy(&found.listed.stdout);
    assert!(said.contains("Debian GNU/Linux 12"), "{said}");
    let refused = String::from_utf8_lossy(&found.plain.stdout);
    assert!(
        found.plain.status.code() != Some(0) && refused.contains("down"),
        "a plain-text client is refused: {refused}"
    );
    let unit = &found.unit;
    assert!(
        unit.contains("active") && unit.contains("/etc/systemd/system/faultlab-agent.service"),
        "{unit}"
    );
    assert!(unit.contains("User=faultlab"), "{unit}");
    Ok(())
}

/// The seed, physical and degraded suites, all expected (checked when
/// they ran); R1 and P5 real reboots, abrupt and orderly; every host a
/// power cut or a reboot took down has its agent back through systemd.
fn suites_played(found: &Found) -> TestResult {
    // R1 is the seed's abrupt reboot (nothing shut down first), real.
    let abrupt = case_of(&found.seed, "R1")?;
    assert!(
        abrupt.to_string().contains("reboot (reboot(2))"),
        "{abrupt}"
    );
    // The physical suite: cables and power by the lab, and P5's orderly
    // reboot through systemd (logind, polkit): the FIN of the stopped
    // server before the host goes.
    let orderly = case_of(&found.physical, "P5")?;
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
    // Each host whose boot changed during the physical suite (P2 and P3
    // cut the power, P5 reboots) has its agent running again: nothing but
    // systemd starts it there.
    let mut came_back = 0;
    for (before, after) in found.boots_before.iter().zip(&found.boots_after) {
        let boot = |text: &str| text.lines().next().unwrap_or_default().to_owned();
        if boot(before) != boot(after) {
            came_back += 1;
            assert!(after.lines().nth(1) == Some("active"), "{after}");
        }
    }
    assert!(came_back > 0, "no host went down: {:?}", found.boots_after);
    // The app suite against a service run by another user: by its unit
    // (systemd killed and restarted it, as polkit allows), by its name (the
    // agent froze it itself: the allow-process drop-in).
    let (cases, runs_as) = &found.application;
    assert_eq!(cases.len(), 3, "{cases:#?}");
    assert_eq!(runs_as.trim(), "nobody", "restarted by systemd as its user");
    Ok(())
}

/// The agent SIGKILLed by systemd while its host was cut off, degraded and
/// its test link down by the agent itself: systemd started it again, and
/// the host is exactly as it was (routes, addresses and links, qdiscs, the
/// whole ruleset). `faultlab heal --all` after a controller was SIGKILLed
/// puts back what the kill left, long before the deadlines. Every call
/// is in the journal with the caller's certificate name.
fn agents_that_die_heal(found: &Found) -> TestResult {
    let (before, during, after) = &found.killed;
    assert!(
        during.contains("drop_in_v4") && during.contains("netem"),
        "{during}"
    );
    let test_link_down = during
        .lines()
        .any(|line| line.contains(": eth1:") && line.contains("state DOWN"));
    assert!(test_link_down, "{during}");
    assert_eq!(before, after, "the host is not as it was");
    let heal = &found.heal_all;
    assert!(
        heal.after_kill.contains("drop_in_v4") && heal.after_kill.contains("netem"),
        "the controller's death healed nothing by itself (the deadline is 120 s): {}",
        heal.after_kill
    );
    common::succeeded(&heal.said)?;
    assert_eq!(
        heal.before,
        heal.after_heal,
        "heal --all: {}",
        String::from_utf8_lossy(&heal.said.stdout)
    );
    assert!(heal.took < Duration::from_secs(60), "{:?}", heal.took);
    let audited: u32 = found.journal.trim().parse().unwrap_or(0);
    assert!(
        audited > 0,
        "the agent's journal shows no audited call: {:?}",
        found.journal
    );
    Ok(())
}

/// A re-run of the playbook with a newer binary replaced the agents one
/// host at a time, and a case passed after it; `deploy/systemd/install.sh`
/// installed an agent that serves with its default configuration.
fn upgraded_and_reinstalled(found: &Found) -> TestResult {
    let (played, checksum, installed) = &found.upgrade;
    let log = String::from_utf8_lossy(&played.stdout);
    common::succeeded(played)?;
    // One batch per host (serial 1), each restarting its agent and
    // waiting for it before the next.
    assert_eq!(
        log.matches("RUNNING HANDLER [faultlab_agent : Restart faultlab-agent]")
            .count(),
        2,
        "{log}"
    );
    assert_eq!(
        log.matches("TASK [faultlab_agent : The agent listens again]")
            .count(),
        2,
        "{log}"
    );
    assert!(!checksum.is_empty());
    for host in installed {
        // The file, the unit's state, and the running process's binary.
        let lines: Vec<&str> = host.lines().collect();
        assert_eq!(lines.len(), 3, "{host}");
        assert_eq!(sha256(lines[0]), *checksum, "{host}");
        assert_eq!(lines[1], "active", "{host}");
        assert_eq!(sha256(lines[2]), *checksum, "the new binary runs: {host}");
    }
    assert_eq!(found.after_upgrade.len(), 1);
    let (script, unit) = &found.install_sh;
    common::succeeded(script)?;
    assert!(
        String::from_utf8_lossy(&script.stdout).contains("faultlab-agent installed and started"),
        "{}",
        String::from_utf8_lossy(&script.stdout)
    );
    assert!(unit.starts_with("active"), "{unit}");
    assert!(unit.contains("User=faultlab"), "{unit}");
    assert_eq!(found.after_install_sh.len(), 1);
    Ok(())
}
