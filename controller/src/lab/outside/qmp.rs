//! Just enough of QEMU's machine protocol (QMP) to unplug a NIC and work a
//! VM's power: one connection per batch of commands, each answered before
//! the next; events in between are skipped.
// Off Unix there is no socket to speak on: only the refusal is used.
#![cfg_attr(not(unix), allow(dead_code))]

use super::OutsideError;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// How long QEMU may take to answer one command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines (events, greeting) read at most before an answer.
const MAX_LINES: usize = 64;

/// A command without arguments.
pub(super) fn command(name: &str) -> Value {
    json!({ "execute": name })
}

/// Plug (`up`) or unplug a network device's cable.
pub(super) fn set_link(device: &str, up: bool) -> Value {
    json!({ "execute": "set_link", "arguments": { "name": device, "up": up } })
}

/// Whether the VM runs (not paused, not off).
pub(super) fn running(socket: &Path) -> Result<bool, OutsideError> {
    let answers = execute(socket, &[command("query-status")])?;
    Ok(answers
        .first()
        .and_then(|answer| answer.get("running"))
        .and_then(Value::as_bool)
        .unwrap_or(false))
}

/// QMP listens on a Unix socket: a VM lab runs on Linux only.
#[cfg(not(unix))]
pub(super) fn execute(socket: &Path, _commands: &[Value]) -> Result<Vec<Value>, OutsideError> {
    Err(OutsideError::Failed(format!(
        "QMP {}: a VM lab needs a Unix host",
        socket.display()
    )))
}

/// Run `commands` in order on the QMP socket; their answers (`return`s).
#[cfg(unix)]
pub(super) fn execute(socket: &Path, commands: &[Value]) -> Result<Vec<Value>, OutsideError> {
    use std::io::{BufReader, Write as _};
    use std::os::unix::net::UnixStream;
    let failed = |what: &str, error: &dyn std::fmt::Display| {
        OutsideError::Failed(format!("QMP {}: {what}: {error}", socket.display()))
    };
    let stream = UnixStream::connect(socket).map_err(|error| failed("connect", &error))?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|error| failed("timeout", &error))?;
    let mut writer = stream
        .try_clone()
        .map_err(|error| failed("clone", &error))?;
    let mut reader = BufReader::new(stream);
    let mut answers = Vec::new();
    let negotiate = command("qmp_capabilities");
    for (index, message) in std::iter::once(&negotiate).chain(commands).enumerate() {
        writeln!(writer, "{message}").map_err(|error| failed("write", &error))?;
        let answer = read_answer(&mut reader).map_err(|error| failed("read", &error))?;
        if let Some(error) = answer.get("error") {
            return Err(failed(&message.to_string(), error));
        }
        if index > 0 {
            answers.push(answer.get("return").cloned().unwrap_or(Value::Null));
        }
    }
    Ok(answers)
}

/// The next line that answers a command (has `return` or `error`).
fn read_answer(reader: &mut impl std::io::BufRead) -> Result<Value, String> {
    for _ in 0..MAX_LINES {
        let mut line = String::new();
        if reader
            .read_line(&mut line)
            .map_err(|error| error.to_string())?
            == 0
        {
            return Err("QEMU closed the connection".to_owned());
        }
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if message.get("return").is_some() || message.get("error").is_some() {
            return Ok(message);
        }
    }
    Err(format!("no answer in {MAX_LINES} lines"))
}

/// Whether `socket` is the QMP socket of a VM a faultlab lab launched: a
/// VM's keeper (`faultlab lab keeper ... --qmp SOCKET`, only the lab starts
/// them) of this machine names it.
pub(super) fn served_by_a_lab(socket: &Path) -> bool {
    let socket = socket.as_os_str().to_string_lossy();
    crate::lab::processes().into_iter().any(|(_, words)| {
        words
            .windows(2)
            .any(|pair| pair[0] == "--qmp" && pair[1] == socket)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_greeting_and_events_are_skipped_until_the_answer() {
        let said = concat!(
            "{\"QMP\": {\"version\": {}}}\n",
            "{\"event\": \"STOP\", \"timestamp\": {}}\n",
            "{\"return\": {\"running\": false}}\n",
        );
        let answer = read_answer(&mut said.as_bytes()).expect("an answer");
        assert_eq!(answer["return"]["running"], json!(false));
        assert!(read_answer(&mut "{\"event\": \"X\"}\n".as_bytes()).is_err());
    }

    #[test]
    fn set_link_names_the_device_and_its_state() {
        assert_eq!(
            set_link("t", false).to_string(),
            r#"{"arguments":{"name":"t","up":false},"execute":"set_link"}"#
        );
    }
}
