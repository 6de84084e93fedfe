//! A case never says "expected" over a host it may have left cut off: each
//! way a cleanup can fail is made to happen for real on a namespace lab —
//! the agent killed or stopped while its host is cut off, a rule removed
//! by hand — and the run's verdict, its exit code and the host's filter are
//! read afterwards.

type TestResult = Result<(), Box<dyn std::error::Error>>;
use faultlab::lab::{self, LocalLab};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A two-host namespace lab, its inventory file, and a scratch directory.
struct Lab {
    lab: LocalLab,
    dir: PathBuf,
    inventory: PathBuf,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Lab {
    fn start(name: &str) -> Result<Self, Box<dyn std::error::Error>> {
        if let Some(why) = lab::netns_unavailable() {
            return Err(format!("this test needs network namespaces: {why}").into());
        }
        let turn = crate::common::lab_turn();
        let exe =
            lab::find_agent().ok_or("faultlab-agent is not built: run cargo test --workspace")?;
        let lab = LocalLab::start_netns(&exe, 2)?;
        let dir = std::env::temp_dir().join(format!("faultlab-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let inventory = dir.join("lab.toml");
        std::fs::write(&inventory, lab.inventory.agents_toml("a test's lab")?)?;
        Ok(Self {
            lab,
            dir,
            inventory,
            _turn: turn,
        })
    }

    /// The first host's test address (role `a` is bound to it).
    fn first_ip(&self) -> Result<IpAddr, Box<dyn std::error::Error>> {
        Ok(self
            .lab
            .inventory
            .agents
            .first()
            .and_then(|agent| agent.test_ip)
            .ok_or("the lab's first host has no test address")?)
    }

    /// Start `faultlab run` on `scenario` (JSON to a pipe).
    fn run(&self, scenario: &str) -> Result<Child, Box<dyn std::error::Error>> {
        let file = self.dir.join("case.toml");
        std::fs::write(&file, scenario)?;
        Ok(Command::new(env!("CARGO_BIN_EXE_faultlab"))
            .args(["run", "--no-history", "--format", "json", "--inventory"])
            .arg(&self.inventory)
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?)
    }

    /// Run `command` inside the first host.
    fn in_first_host(
        &self,
        command: &[&str],
    ) -> Result<std::process::Output, Box<dyn std::error::Error>> {
        let namespace = self.lab.namespace(0).ok_or("no namespace")?;
        Ok(Command::new("ip")
            .args(["netns", "exec", &namespace])
            .args(command)
            .output()?)
    }

    /// How many elements faultlab's table holds in the first host.
    fn elements_in_place(&self) -> Result<usize, Box<dyn std::error::Error>> {
        let listed = self.in_first_host(&["nft", "-j", "list", "table", "inet", "faultlab"])?;
        Ok(String::from_utf8_lossy(&listed.stdout)
            .matches("\"val\":")
            .count())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `ip` answers a TCP connect (a refusal counts: only silence does not).
fn reachable(ip: IpAddr) -> bool {
    match TcpStream::connect_timeout(&SocketAddr::new(ip, 9), Duration::from_millis(150)) {
        Ok(_) => true,
        Err(error) => error.kind() != std::io::ErrorKind::TimedOut,
    }
}

/// Wait (at most 15 s) until `ip` is cut off.
fn wait_until_cut(ip: IpAddr) -> TestResult {
    let started = Instant::now();
    while reachable(ip) {
        if started.elapsed() > Duration::from_secs(15) {
            return Err(format!("{ip} was never cut off").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn signal(signal: &str, pid: u32) -> TestResult {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    if !status.success() {
        return Err(format!("kill {signal} {pid} failed").into());
    }
    Ok(())
}

/// The run's exit code and its only case (as JSON).
fn finish(run: Child) -> Result<(Option<i32>, serde_json::Value), Box<dyn std::error::Error>> {
    let output = run.wait_with_output()?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok((output.status.code(), report["cases"][0].clone()))
}

/// A case that cuts host `a` off with `fault` (a step's lines), checks a
/// connection made before, then sleeps while the test does its harm.
fn cut_then_sleep(needs: &str, fault: &str) -> String {
    format!(
        "id = \"Z7\"\nname = \"cut-then-sleep\"\ntitle = \"A host cut off, then a wait\"\n\
         roles = [\"a\", \"b\"]\nneeds = [\"{needs}\"]\ntimeout_ms = 60000\n\n\
         [[step]]\nrole = \"a\"\ndo = \"listen\"\nas = \"l\"\n\n\
         [[step]]\nrole = \"b\"\ndo = \"connect\"\nto = \"l\"\nas = \"c\"\nexpect.linux = {{ outcome = \"ok\" }}\n\n\
         [[step]]\nrole = \"a\"\n{fault}\ndeadline_ms = 30000\n\n\
         [[step]]\ndo = \"sleep\"\nms = 3000\n"
    )
}

/// A two-host lab running `cut_then_sleep(needs, fault)`, once the first
/// host is cut off.
fn cut_off(
    name: &str,
    needs: &str,
    fault: &str,
) -> Result<(Lab, Child), Box<dyn std::error::Error>> {
    let lab = Lab::start(name)?;
    let run = lab.run(&cut_then_sleep(needs, fault))?;
    wait_until_cut(lab.first_ip()?)?;
    Ok((lab, run))
}

fn left_in_place(case: &serde_json::Value) -> String {
    case["left_in_place"].to_string()
}

#[test]
fn an_agent_killed_while_its_host_is_cut_off_makes_the_case_agent_lost_naming_the_isolation()
-> TestResult {
    let (lab, run) = cut_off("killed", "isolate", "do = \"isolate\"\nmode = \"drop\"")?;
    let agent = *lab.lab.pids().first().ok_or("no agent")?;
    signal("-KILL", agent)?;
    let (code, case) = finish(run)?;
    assert_eq!(case["verdict"], "agent-lost", "{case}");
    let left = left_in_place(&case);
    assert!(
        left.contains("isolation") && left.contains("faultlab heal --all"),
        "{left}"
    );
    assert_ne!(
        code,
        Some(0),
        "a case that left a host cut off fails the run"
    );
    // And truly so: the kernel still holds it (until its deadline).
    assert_eq!(lab.elements_in_place()?, 4);
    Ok(())
}

#[test]
fn an_agent_stopped_while_its_host_loses_everything_makes_the_case_agent_lost() -> TestResult {
    let (lab, run) = cut_off(
        "stopped",
        "loss",
        "do = \"degrade\"\ndirection = \"in\"\nloss = 100.0",
    )?;
    let agent = *lab.lab.pids().first().ok_or("no agent")?;
    signal("-STOP", agent)?;
    let finished = finish(run);
    signal("-CONT", agent)?;
    let (code, case) = finished?;
    assert_eq!(case["verdict"], "agent-lost", "{case}");
    assert!(left_in_place(&case).contains("degradation"), "{case}");
    assert_ne!(code, Some(0));
    Ok(())
}

#[test]
fn a_rule_removed_by_hand_mid_case_is_found_gone_and_the_rest_is_lifted() -> TestResult {
    let (lab, run) = cut_off("by-hand", "isolate", "do = \"isolate\"\nmode = \"drop\"")?;
    let ip = lab.first_ip()?;
    let flushed = lab.in_first_host(&["nft", "flush", "set", "inet", "faultlab", "drop_in_v4"])?;
    assert!(flushed.status.success());
    let (code, case) = finish(run)?;
    // The heal found one entry gone, removed the other three and read the
    // filter back: nothing is left, so the case may say what it saw.
    assert_eq!(case["verdict"], "expected", "{case}");
    assert_eq!(code, Some(0));
    assert_eq!(lab.elements_in_place()?, 0);
    assert!(reachable(ip));
    Ok(())
}

#[test]
fn a_cable_plugged_back_whose_host_sees_no_carrier_is_not_called_healed() -> TestResult {
    // The lab pulls host a's cable at the switch side; meanwhile the
    // host's own end is taken down by hand, so plugging the switch end
    // back gives it no carrier.
    let (lab, run) = cut_off("carrier", "link", "do = \"link-down\"")?;
    let ip = lab.first_ip()?.to_string();
    let holder = lab.in_first_host(&["ip", "-o", "address", "show", "to", &ip])?;
    let listed = String::from_utf8_lossy(&holder.stdout).into_owned();
    let interface = listed
        .split_whitespace()
        .nth(1)
        .ok_or(format!("no interface holds {ip}: {listed}"))?
        .to_owned();
    let down = lab.in_first_host(&["ip", "link", "set", &interface, "down"])?;
    assert!(down.status.success());
    let finished = finish(run);
    let up = lab.in_first_host(&["ip", "link", "set", &interface, "up"])?;
    let (code, case) = finished?;
    assert!(up.status.success());
    assert_eq!(case["verdict"], "error", "{case}");
    let left = left_in_place(&case);
    assert!(
        left.contains("pulled cable") && left.contains("no carrier"),
        "{left}"
    );
    assert_ne!(code, Some(0));
    Ok(())
}

#[test]
fn a_cable_plugged_back_over_which_its_host_reaches_no_peer_is_not_called_healed() -> TestResult {
    // The lab pulls host a's cable at the switch side; meanwhile a route
    // that drops everything to host b is put in host a by hand, so the
    // cable comes back with its carrier and the lab's bridge answered,
    // but host a does not reach its peer through it.
    let (lab, run) = cut_off("path", "link", "do = \"link-down\"")?;
    let peer = lab
        .lab
        .inventory
        .agents
        .get(1)
        .and_then(|agent| agent.test_ip)
        .ok_or("the lab's second host has no test address")?
        .to_string();
    let blackhole = format!("{peer}/32");
    let added = lab.in_first_host(&["ip", "route", "add", "blackhole", &blackhole])?;
    assert!(added.status.success(), "{added:?}");
    let finished = finish(run);
    let removed = lab.in_first_host(&["ip", "route", "del", "blackhole", &blackhole])?;
    let (code, case) = finished?;
    assert!(removed.status.success(), "{removed:?}");
    assert_eq!(case["verdict"], "error", "{case}");
    let left = left_in_place(&case);
    assert!(
        left.contains("pulled cable") && left.contains("does not reach") && left.contains(&peer),
        "{left}"
    );
    assert_ne!(code, Some(0));
    Ok(())
}

/// Whether process `pid` holds a TCP socket (a holder started ahead for
/// the next case holds none: only its runtime's own Unix sockets).
fn holds_a_tcp_socket(pid: u32) -> bool {
    let tcp_inodes: Vec<String> = ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| line.split_whitespace().nth(9).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .any(|inode| tcp_inodes.contains(&inode))
}

/// Holder processes of the agent `agent_pid` that hold TCP sockets (its
/// children running `holder`).
fn holders_of(agent_pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // "pid (comm) state ppid ...": the fields after the command's ')'.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let mut fields = after.split_whitespace();
            let state = fields.next();
            let parent = fields.next().and_then(|ppid| ppid.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            parent == Some(agent_pid)
                && state != Some("Z")
                && cmdline
                    .split(|&byte| byte == 0)
                    .any(|word| word == b"holder")
                && holds_a_tcp_socket(*pid)
        })
        .count()
}

/// Bytes received by the first host on its connections other than the
/// agent's own (the flood's).
fn flood_bytes(lab: &Lab) -> Result<u64, Box<dyn std::error::Error>> {
    let filter = format!("( not sport = :{} )", lab::NETNS_CONTROL_PORT);
    let listed = lab.in_first_host(&["ss", "-tinH", "state", "established", &filter])?;
    Ok(String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("bytes_received:"))
        .filter_map(|count| count.parse::<u64>().ok())
        .sum())
}

#[test]
fn a_controller_killed_mid_flood_leaves_no_holder_and_no_traffic() -> TestResult {
    const TRIALS: usize = 20;
    let lab = Lab::start("flood-kill")?;
    let scenario = "id = \"Z8\"\nname = \"flood-then-wait\"\ntitle = \"A flood, then a long wait\"\n\
        roles = [\"server\", \"client\"]\ntimeout_ms = 60000\n\n\
        [[step]]\nrole = \"server\"\ndo = \"listen\"\nas = \"l\"\n\n\
        [[step]]\nrole = \"client\"\ndo = \"connect\"\nto = \"l\"\nas = \"c\"\n\n\
        [[step]]\nrole = \"server\"\ndo = \"accept\"\nlistener = \"l\"\nas = \"s\"\n\n\
        [[step]]\nrole = \"server\"\ndo = \"watch\"\nconn = \"s\"\n\n\
        [[step]]\nname = \"flood\"\nrole = \"client\"\ndo = \"send\"\nconn = \"c\"\n\
        bytes = 17179869184\ntimeout_ms = 50000\nbackground = true\n\n\
        [[step]]\ndo = \"sleep\"\nms = 40000\n";
    let agents = lab.lab.pids();
    let mut left_holders = 0;
    let mut moved_after = 0;
    for trial in 1..=TRIALS {
        let mut controller = lab.run(scenario)?;
        // Wait (at most 15 s) until the flood flows, then kill -9.
        let started = Instant::now();
        let before = flood_bytes(&lab)?;
        while flood_bytes(&lab)? < before + (1 << 20) {
            if started.elapsed() > Duration::from_secs(15) {
                let _ = controller.kill();
                return Err(format!("trial {trial}: the flood never flowed").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        controller.kill()?;
        controller.wait()?;
        std::thread::sleep(Duration::from_secs(2));
        left_holders += agents.iter().map(|&agent| holders_of(agent)).sum::<usize>();
        let settled = flood_bytes(&lab)?;
        std::thread::sleep(Duration::from_millis(500));
        moved_after += flood_bytes(&lab)?.saturating_sub(settled);
    }
    eprintln!(
        "{TRIALS} controllers killed mid-flood: {left_holders} holders left, {moved_after} bytes moved 2 s after"
    );
    assert_eq!(left_holders, 0);
    assert_eq!(moved_after, 0);
    Ok(())
}

#[test]
fn a_bridge_left_by_a_run_that_is_gone_is_swept_by_the_next_lab() -> TestResult {
    // A run killed while it took its lab down: its namespaces gone, its
    // management bridge left. Named after a pid no process can have.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?
        .trim()
        .parse()?;
    let bridge = format!("flr{}mb", pid_max + 1);
    let made = Command::new("ip")
        .args(["link", "add", &bridge, "type", "bridge"])
        .output()?;
    assert!(made.status.success(), "{made:?}");
    let _lab = Lab::start("swept")?;
    let shown = Command::new("ip")
        .args(["link", "show", &bridge])
        .output()?;
    if shown.status.success() {
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
    }
    assert!(!shown.status.success(), "{bridge} is still there");
    Ok(())
}

#[test]
fn a_lab_acts_only_on_the_switch_ports_and_vms_it_made() -> TestResult {
    use faultlab::lab::outside::{LabSide, OutsideError, OutsideFault};
    let lab = Lab::start("ours")?;
    let side = lab
        .lab
        .inventory
        .agents
        .first()
        .and_then(|agent| agent.lab.clone())
        .ok_or("a namespace host has a lab side")?;
    let port = side.switch_port.clone().ok_or("no switch port")?;
    // Its own test port: pulled and plugged back.
    side.make(OutsideFault::Cable, Duration::from_secs(5))?;
    side.undo(OutsideFault::Cable)?;
    // The management port beside it, loopback, a path: refused, untouched.
    let management = {
        // "<prefix>t<index>" → "<prefix>m<index>"
        let at = port.rfind('t').ok_or("a test port ends in t<index>")?;
        format!("{}m{}", &port[..at], &port[at + 1..])
    };
    for stranger in [management.as_str(), "lo", "../../x"] {
        let other = LabSide {
            switch_port: Some(stranger.to_owned()),
            ..side.clone()
        };
        match other.make(OutsideFault::Cable, Duration::from_secs(5)) {
            Err(OutsideError::NotOurs(why)) => assert!(why.contains(stranger), "{why}"),
            done => return Err(format!("{stranger}: {done:?}").into()),
        }
    }
    let up = lab.in_first_host(&["cat", "/sys/class/net/eth0/operstate"])?;
    assert_eq!(String::from_utf8_lossy(&up.stdout).trim(), "up");
    // A QMP socket no lab VM serves.
    let stray = LabSide {
        qmp: Some(std::env::temp_dir().join("not-a-lab-vm.qmp")),
        switch_port: None,
        ..side
    };
    match stray.make(OutsideFault::Power, Duration::from_secs(5)) {
        Err(OutsideError::NotOurs(why)) => assert!(why.contains("not-a-lab-vm.qmp"), "{why}"),
        done => return Err(format!("stray QMP: {done:?}").into()),
    }
    Ok(())
}
