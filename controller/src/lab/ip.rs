//! `ip` (iproute2), run and its answer read: how every lab makes and
//! inspects its namespaces, links and addresses. A leaf, so that what a
//! lab does to a host from outside it (`outside`) needs no kind of lab.

use super::LabError;
use std::process::Command;

/// Run `ip ARGS`: its output, or an error with what it said.
pub(crate) fn ip(args: &[&str]) -> Result<String, LabError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| LabError::Network(format!("cannot run ip: {error}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LabError::Network(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
