//! Commands run in a lab VM through the root shell on its second serial
//! port: what `faultlab lab exec` does on a VM lab, and how tests look
//! inside a guest (its qdiscs, its processes) without the agent.
//!
//! The guest's shell reads commands from the port and writes their output
//! back; each command is followed by an `echo` of a marker with its exit
//! status, and the output is read up to that marker. A command must not
//! read its standard input (it would read the marker's line).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Why a command could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The socket cannot be reached (no VM, or another client holds it).
    #[error("cannot reach the VM's shell at {path}: {reason}")]
    Unreachable {
        /// The socket.
        path: String,
        /// What the OS said.
        reason: String,
    },
    /// The command did not finish in time.
    #[error(
        "{command:?} did not finish within {seconds} s in the VM (its output so far: {output:?})"
    )]
    Timeout {
        /// The command.
        command: String,
        /// The time it had.
        seconds: u64,
        /// What it printed.
        output: String,
    },
    /// The connection broke.
    #[error("the VM's shell: {0}")]
    Io(#[from] std::io::Error),
}

/// What a command printed (stdout and stderr together) and its exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ran {
    /// Its output, `\r` removed.
    pub output: String,
    /// Its exit status.
    pub status: i32,
}

/// Run `command` (one shell line) in the VM whose shell socket is `path`,
/// waiting at most `timeout`.
pub fn run(path: &Path, command: &str, timeout: Duration) -> Result<Ran, ShellError> {
    let stream = UnixStream::connect(path).map_err(|error| ShellError::Unreachable {
        path: path.display().to_string(),
        reason: error.to_string(),
    })?;
    let marker = format!("faultlab-end-{:016x}", rand_word());
    let mut writer = stream.try_clone()?;
    let deadline = Instant::now() + timeout;
    let mut reader = BufReader::new(stream);
    let timed_out = |output: String| ShellError::Timeout {
        command: command.to_owned(),
        seconds: timeout.as_secs(),
        output,
    };
    // The shell answers once its guest has booted: what is written to the
    // port before (while the guest's kernel or init has it) is lost. So a
    // word is echoed first, again each second, until it comes back.
    let ready = format!("{marker}-ready");
    let mut answered = false;
    while !answered {
        if Instant::now() >= deadline {
            return Err(timed_out("(the VM's shell never answered)".to_owned()));
        }
        // A newline first ends whatever an earlier client left half-written.
        writer.write_all(format!("\necho {ready}\n").as_bytes())?;
        let round = (Instant::now() + READY_POLL).min(deadline);
        while let Some(line) = read_line_until(&mut reader, round)? {
            if line.trim_end() == ready {
                answered = true;
                break;
            }
        }
    }
    writer.write_all(format!("{command}\necho \"{marker} $?\"\n").as_bytes())?;
    let mut output = String::new();
    loop {
        let Some(line) = read_line_until(&mut reader, deadline)? else {
            return Err(timed_out(output));
        };
        if let Some(status) = line.trim_end().strip_prefix(&format!("{marker} ")) {
            return Ok(Ran {
                output,
                status: status.trim().parse().unwrap_or(-1),
            });
        }
        output.push_str(&line);
    }
}

/// How long to wait for the shell's answer before asking again.
const READY_POLL: Duration = Duration::from_secs(1);

/// The next line (`\r` removed), or `None` when `deadline` passed first.
fn read_line_until(
    reader: &mut BufReader<UnixStream>,
    deadline: Instant,
) -> Result<Option<String>, ShellError> {
    let mut line = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        reader.get_ref().set_read_timeout(Some(left))?;
        match reader.read_line(&mut line) {
            Ok(0) => {
                return Err(ShellError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the VM closed its shell",
                )));
            }
            Ok(_) if line.ends_with('\n') => return Ok(Some(line.replace('\r', ""))),
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

/// A word that differs between calls of one process (the marker must not
/// be one an earlier, abandoned command could still print).
fn rand_word() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}
