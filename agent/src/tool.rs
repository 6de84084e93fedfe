//! Running the host's own tools (`ip`, `tc`, `nft`): what they printed, or
//! what they said went wrong. One place, so that every fault's error names
//! the command and the tool's own words the same way.
//!
//! `nft` is run inside the agent through libnftables where the host has it
//! (see [`Nft`]): the same commands and words, without starting a process.

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

/// nftables commands run in process: what they printed, or what went
/// wrong in nft's own words; `None` when they cannot be (run the tool).
pub type InProcess = fn(commands: &str, json: bool) -> Option<Result<String, String>>;

/// How nftables commands are run: handed to the platform's library in
/// process where it has one (the platform chooses: libnftables on Linux),
/// else by starting the `nft` tool; the same output and errors either way.
#[derive(Clone, Copy, Default)]
pub struct Nft {
    in_process: Option<InProcess>,
}

impl Nft {
    /// Always by the `nft` tool.
    pub fn tool() -> Self {
        Self { in_process: None }
    }

    /// Through `in_process` when it can, else by the tool.
    pub fn in_process(run: InProcess) -> Self {
        Self {
            in_process: Some(run),
        }
    }

    /// Run `nft` with `args` (`-j` for JSON, `-f -` to read `input`, then
    /// a command's words).
    pub fn run(&self, args: &[&str], input: Option<&str>) -> Result<String, ToolError> {
        let in_process = self.in_process.and_then(|run_in_process| {
            nft_commands(args, input).and_then(|(commands, json)| run_in_process(&commands, json))
        });
        match in_process {
            None => run("nft", args, input),
            Some(Ok(output)) => Ok(output),
            Some(Err(said)) => Err(ToolError::Failed {
                command: format!("nft {}", args.join(" ")),
                said: said.trim().to_owned(),
            }),
        }
    }
}

/// What `nft args` (with `input` on its stdin) asks libnftables to run, and
/// whether as JSON; `None` for options only the tool reads.
fn nft_commands(args: &[&str], input: Option<&str>) -> Option<(String, bool)> {
    let (json, words) = match args.split_first() {
        Some((&"-j", words)) => (true, words),
        _ => (false, args),
    };
    match (words, input) {
        (["-f", "-"], Some(input)) => Some((input.to_owned(), json)),
        ([first, ..], None) if !first.starts_with('-') => Some((words.join(" "), json)),
        _ => None,
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

    #[test]
    fn nft_in_process_answers_as_the_tool_would() {
        fn fake(commands: &str, json: bool) -> Option<Result<String, String>> {
            match commands {
                "list table inet faultlab" if json => Some(Ok("{\"nftables\": []}".to_owned())),
                _ => Some(Err("Error: No such file or directory\n".to_owned())),
            }
        }
        let nft = Nft::in_process(fake);
        assert_eq!(
            nft.run(&["-j", "list", "table", "inet", "faultlab"], None),
            Ok("{\"nftables\": []}".to_owned())
        );
        assert_eq!(
            nft.run(&["-f", "-"], Some("delete table inet faultlab\n")),
            Err(ToolError::Failed {
                command: "nft -f -".to_owned(),
                said: "Error: No such file or directory".to_owned(),
            })
        );
    }

    #[test]
    fn nft_arguments_become_the_commands_libnftables_runs() {
        let script = "add table inet t\n";
        assert_eq!(
            nft_commands(&["-f", "-"], Some(script)),
            Some((script.to_owned(), false))
        );
        assert_eq!(
            nft_commands(&["-j", "list", "table", "inet", "faultlab"], None),
            Some(("list table inet faultlab".to_owned(), true))
        );
        assert_eq!(
            nft_commands(&["delete", "table", "inet", "faultlab"], None),
            Some(("delete table inet faultlab".to_owned(), false))
        );
        // Anything else is left to the tool.
        assert_eq!(nft_commands(&["-f", "/etc/nftables.conf"], None), None);
        assert_eq!(nft_commands(&["-a", "list", "ruleset"], None), None);
        assert_eq!(nft_commands(&[], None), None);
    }
}
