//! Running the host's own tools (`ip`, `tc`, `nft`): what they printed, or
//! what they said went wrong. One place, so that every fault's error names
//! the command and the tool's own words the same way.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Why a tool gave no output.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// It could not be run at all (not installed, not executable).
    #[error("{0}")]
    CannotRun(String),
    /// It ran and failed.
    #[error("{command}: {said}")]
    Failed {
        /// The command line.
        command: String,
        /// Its standard error, trimmed.
        said: String,
    },
}

impl From<ToolError> for String {
    fn from(error: ToolError) -> Self {
        error.to_string()
    }
}

/// Run `program` with `args`, `input` on its standard input when given; its
/// standard output, or what went wrong.
pub fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, ToolError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| ToolError::CannotRun(format!("cannot run {program}: {error}")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|error| ToolError::CannotRun(format!("cannot write to {program}: {error}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| ToolError::CannotRun(format!("{program}: {error}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(ToolError::Failed {
            command: format!("{program} {}", args.join(" ")),
            said: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn output_input_and_failure_are_told_apart() {
        assert_eq!(run("cat", &[], Some("fed\n")), Ok("fed\n".to_owned()));
        let failed = run("sh", &["-c", "echo said >&2; exit 3"], None).map_err(String::from);
        assert_eq!(failed, Err("sh -c echo said >&2; exit 3: said".to_owned()));
        let missing = run("faultlab-no-such-tool", &[], None).expect_err("no such tool");
        assert!(matches!(missing, ToolError::CannotRun(_)), "{missing}");
    }
}
