//! A degradation gives an interface back the queueing it had, also one set
//! by hand: here a `tbf` root on a veth end (no addresses: it carries no
//! traffic). On a kernel with sch_prio and sch_netem the degradation is
//! made and healed; on one without (this project's CI machines have
//! neither), it fails, and the `tbf` must be there all the same. The VM
//! lab's degraded suite heals kernel-made roots on a kernel that has them.
//! Needs root.
#![cfg(unix)]

mod common;

use faultlab_agent::degrade::tc::Tc;
use faultlab_agent::degrade::{Impairment, Selection, Shaper as _};
use std::process::Command;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| error.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A veth pair of this test's, removed on drop.
struct Pair(String);

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.0]);
    }
}

/// The root qdisc's line without its reference count.
fn root(interface: &str) -> Result<String, String> {
    let shown = run("tc", &["qdisc", "show", "dev", interface, "root"])?;
    Ok(shown
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("refcnt 2 ", ""))
}

#[test]
fn an_interface_gets_back_the_root_qdisc_set_by_hand() -> TestResult {
    if let Some(why) = common::netns::missing_preconditions() {
        return Err(why.into());
    }
    let id = std::process::id() % 100_000;
    let (name, peer) = (format!("fldt{id}"), format!("fldu{id}"));
    run(
        "ip",
        &["link", "add", &name, "type", "veth", "peer", "name", &peer],
    )?;
    let _pair = Pair(name.clone());
    run(
        "tc",
        &[
            "qdisc", "add", "dev", &name, "root", "handle", "8001:", "tbf", "rate", "10mbit",
            "burst", "32kbit", "latency", "50ms",
        ],
    )?;
    let before = root(&name)?;
    assert!(before.contains("tbf 8001: root"), "{before}");

    let shaper = Tc {
        exe: env!("CARGO_BIN_EXE_faultlab-agent").into(),
    };
    let impairment = Impairment {
        delay: Duration::from_millis(50),
        ..Impairment::default()
    };
    match shaper.degrade(&name, &impairment, &Selection::default()) {
        Ok(applied) => {
            assert!(applied.contains("netem"), "{applied}");
            assert!(!root(&name)?.contains("tbf"), "degraded, the root is ours");
            shaper.heal(&name)?;
        }
        // A kernel without the modules says so.
        Err(error) => assert!(
            error.to_string().contains("qdisc kind is unknown"),
            "{error}"
        ),
    }
    assert_eq!(root(&name)?, before);
    assert!(
        shaper.leftovers().iter().all(|left| *left != name),
        "nothing is left to heal"
    );
    Ok(())
}
