//! faultlab: the controller that drives faultlab agents on lab hosts.
//!
//! # Layout
//! - [`scenario`]: scenario files: the model, the actions by family, parsing and checks.
//! - [`engine`]: binds roles to agents, plays timelines, judges outcomes, probes applications.
//! - [`lab`]: labs on this machine (network namespaces as root, else loopback), for a run or
//!   kept up between commands.
//! - [`agents`]: reaching agents (plain or mutual TLS) and asking them what they host.
//! - [`inventory`]: which agents and applications a lab has.
//! - [`targets`]: applications under test: address, payload, reply, process, probe bounds.
//! - [`suites`]: the built-in suites (the seed catalogue, the application cases), compiled in.
//! - [`report`]: the run's results and their renderings (terminal, JSON, JUnit, HTML, Markdown).
//! - [`history`]: every run kept in SQLite; list, show, diff.
//! - [`certs`]: the lab's certificate authority for mutual TLS.
//! - [`bench`](mod@bench): benchmarks of the engine (release and fan-out skew, suite overhead).
//!
//! The binary `faultlab` is thin: `main.rs` dispatches to one file of `cli/` per subcommand.

/// The longest any fault may last before it heals itself, in ms: 10
/// minutes, the cap the agents put on theirs by default (`max_isolation_ms`),
/// and the cap on what a lab does from outside (cable pulls, power cuts).
/// `faultlab check` refuses a longer `deadline_ms`.
pub const MAX_FAULT_MS: u64 = 600_000;

pub mod agents;
pub mod bench;
pub mod certs;
pub mod engine;
pub mod history;
pub mod inventory;
pub mod lab;
pub mod report;
pub mod scenario;
pub mod suites;
pub mod targets;

/// An error and its causes in one line, each said once: a message that
/// already carries its cause's words ("cannot read inventory x: No such
/// file or directory") is not followed by them again, and of a cause that
/// repeats the one before and adds to it ("tcp connect error", then "tcp
/// connect error: Connection refused") only the longer stays.
pub fn error_chain(causes: impl IntoIterator<Item = impl std::fmt::Display>) -> String {
    let mut said: Vec<String> = Vec::new();
    for cause in causes {
        let text = cause.to_string();
        if said.iter().any(|before| before.contains(&text)) {
            continue;
        }
        if let Some(last) = said.last_mut()
            && text.starts_with(last.as_str())
        {
            *last = text;
            continue;
        }
        said.push(text);
    }
    said.join(": ")
}

/// The causes of `error`, itself first.
pub fn causes_of<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |cause| cause.source())
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Said {
        text: &'static str,
        #[source]
        source: Option<Box<Said>>,
    }

    fn chain(texts: &[&'static str]) -> Said {
        texts
            .iter()
            .rev()
            .fold(None, |source, text| {
                Some(Said {
                    text,
                    source: source.map(Box::new),
                })
            })
            .unwrap_or(Said {
                text: "",
                source: None,
            })
    }

    #[test]
    fn each_cause_is_said_once() {
        let cases: [(&[&'static str], &str); 4] = [
            (
                &[
                    "cannot read inventory x.toml: No such file or directory (os error 2)",
                    "No such file or directory (os error 2)",
                ],
                "cannot read inventory x.toml: No such file or directory (os error 2)",
            ),
            (
                &[
                    "transport error",
                    "tcp connect error",
                    "tcp connect error: Connection refused",
                    "Connection refused",
                ],
                "transport error: tcp connect error: Connection refused",
            ),
            (&["a", "b", "c"], "a: b: c"),
            (
                &["cannot run the case", "agent lost"],
                "cannot run the case: agent lost",
            ),
        ];
        for (texts, said) in cases {
            let error = chain(texts);
            assert_eq!(super::error_chain(super::causes_of(&error)), said);
        }
    }
}
