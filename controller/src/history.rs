//! Every run, kept in SQLite: list them, show one again, compare two (for
//! instance the same suite on two kernels, or against Windows).
//!
//! One row per run holds its summary (for listing) and the full JSON report
//! (the same document `--format json` prints), so nothing is lost and old
//! runs re-render with the current code.

use crate::report::{AgentReport, CaseReport, RunReport};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why the history could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// SQLite failed.
    #[error("history database {path}: {source}")]
    Database {
        /// The file.
        path: String,
        /// Why.
        source: rusqlite::Error,
    },
    /// Its directory could not be made.
    #[error("cannot create {path}: {source}")]
    Directory {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A stored report does not parse.
    #[error("run {run} in the history is unreadable: {source}")]
    Corrupt {
        /// Which run.
        run: String,
        /// Why.
        source: serde_json::Error,
    },
    /// No run has that number or id.
    #[error("no run {0} in the history (faultlab runs lists them)")]
    NoSuchRun(String),
    /// The run has no report: it is running, was interrupted, or failed.
    #[error("run {run} has no report: it {state}")]
    NoReport {
        /// Which run.
        run: String,
        /// What became of it, in words.
        state: String,
    },
}

/// What became of a run: in the history from its start, it ends one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Under way (or its controller is on another machine).
    Running,
    /// Played to its end (whatever its verdicts); its report is kept.
    Finished,
    /// Its controller was killed: found by the next one to open the history.
    Interrupted,
    /// It could not be played (the lab, an agent, a file); `note` says why.
    Failed,
}

impl RunState {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Interrupted => "interrupted",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "running" => Self::Running,
            "interrupted" => Self::Interrupted,
            "failed" => Self::Failed,
            _ => Self::Finished,
        }
    }
}

/// How long a write waits for a database another process holds locked
/// (another run saving, someone reading it): a run's result is not lost to
/// a lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// A run as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRow {
    /// Number in this history (what `runs show` takes).
    pub number: i64,
    /// The run's id.
    pub run_id: String,
    /// Start, ms since the epoch.
    pub started_unix_ms: i64,
    /// Suite.
    pub suite: String,
    /// OS pairs that ran, comma-separated.
    pub os_pairs: String,
    /// Cases.
    pub total: i64,
    /// Expected ones.
    pub expected: i64,
    /// Everything else that did not pass (differs, error, agent-lost, timeout).
    pub failed: i64,
    /// Skipped ones.
    pub skipped: i64,
    /// The run's trace id, when traces were exported.
    pub trace_id: Option<String>,
    /// What became of it.
    pub state: RunState,
    /// Why it failed, for a failed run.
    pub note: Option<String>,
}

/// A case whose result changed between two runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Case id and binding, e.g. "C2 [local-1→local-2]".
    pub case: String,
    /// In the first run: verdict and what it observed.
    pub before: String,
    /// In the second.
    pub after: String,
}

/// The history database.
pub struct History {
    connection: Connection,
    path: String,
}

/// `$FAULTLAB_HISTORY`, else `$XDG_DATA_HOME/faultlab/history.sqlite`, else
/// `~/.local/share/faultlab/history.sqlite` (on Windows `%LOCALAPPDATA%`).
pub fn default_path() -> PathBuf {
    if let Some(path) = std::env::var_os("FAULTLAB_HISTORY") {
        return PathBuf::from(path);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("LOCALAPPDATA").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("faultlab").join("history.sqlite")
}

impl History {
    /// Open (and create if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| HistoryError::Directory {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let database = |source| HistoryError::Database {
            path: shown.clone(),
            source,
        };
        let mut connection = Connection::open(path).map_err(database)?;
        // Before anything else: another controller may be making or
        // changing the tables at this moment (one polling `runs` while its
        // run starts); wait for it rather than fail.
        connection.busy_timeout(LOCK_WAIT).map_err(database)?;
        // Made and brought up to date in one write transaction, so two
        // controllers never both add a column.
        let schema = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(database)?;
        schema
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS runs (
                    number INTEGER PRIMARY KEY AUTOINCREMENT,
                    run_id TEXT NOT NULL UNIQUE,
                    started_unix_ms INTEGER NOT NULL,
                    suite TEXT NOT NULL,
                    os_pairs TEXT NOT NULL,
                    total INTEGER NOT NULL,
                    expected INTEGER NOT NULL,
                    failed INTEGER NOT NULL,
                    skipped INTEGER NOT NULL,
                    report TEXT NOT NULL
                );
                CREATE TABLE IF NOT EXISTS case_durations (
                    case_id TEXT PRIMARY KEY,
                    duration_ms INTEGER NOT NULL
                );",
            )
            .map_err(database)?;
        // Databases made before traces, or before runs were kept from their
        // start, get the columns.
        for (column, definition) in [
            ("trace_id", "trace_id TEXT"),
            ("state", "state TEXT NOT NULL DEFAULT 'finished'"),
            ("pid", "pid INTEGER"),
            ("note", "note TEXT"),
        ] {
            let exists = schema
                .prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = ?1")
                .and_then(|mut statement| statement.exists([column]))
                .map_err(database)?;
            if !exists {
                schema
                    .execute_batch(&format!("ALTER TABLE runs ADD COLUMN {definition};"))
                    .map_err(database)?;
            }
        }
        schema.commit().map_err(database)?;
        let history = Self {
            connection,
            path: shown,
        };
        history.find_interrupted()?;
        Ok(history)
    }

    /// Runs still marked running whose controller (on this machine) is
    /// gone were interrupted: say so.
    fn find_interrupted(&self) -> Result<(), HistoryError> {
        let mut statement = self
            .connection
            .prepare("SELECT number, pid FROM runs WHERE state = 'running'")
            .map_err(|source| self.database(source))?;
        let running: Vec<(i64, Option<i64>)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(|source| self.database(source))?
            .collect::<Result<_, _>>()
            .map_err(|source| self.database(source))?;
        for (number, pid) in running {
            let gone = pid
                .and_then(|pid| u32::try_from(pid).ok())
                .is_some_and(|pid| !controller_alive(pid));
            if gone {
                self.connection
                    .execute(
                        "UPDATE runs SET state = 'interrupted', note = 'its controller ended before the run did' WHERE number = ?1 AND state = 'running'",
                        params![number],
                    )
                    .map_err(|source| self.database(source))?;
            }
        }
        Ok(())
    }

    /// Keep a run from its start (`running`, this process's id); returns
    /// its number, for [`History::finish`] or [`History::fail`].
    pub fn begin(
        &self,
        run_id: &str,
        suite: &str,
        started_unix_ms: u64,
    ) -> Result<i64, HistoryError> {
        self.connection
            .execute(
                "INSERT INTO runs (run_id, started_unix_ms, suite, os_pairs, total, expected, failed, skipped, report, state, pid)
                 VALUES (?1, ?2, ?3, '', 0, 0, 0, 0, '', 'running', ?4)",
                params![
                    run_id,
                    i64::try_from(started_unix_ms).unwrap_or(i64::MAX),
                    suite,
                    std::process::id()
                ],
            )
            .map_err(|source| self.database(source))?;
        Ok(self.connection.last_insert_rowid())
    }

    /// A run begun could not be played: why.
    pub fn fail(&self, number: i64, why: &str) -> Result<(), HistoryError> {
        self.connection
            .execute(
                "UPDATE runs SET state = 'failed', note = ?2 WHERE number = ?1",
                params![number, why],
            )
            .map_err(|source| self.database(source))?;
        Ok(())
    }

    /// A run begun played to its end: its report, in its row.
    pub fn finish(&self, number: i64, report: &RunReport) -> Result<(), HistoryError> {
        self.write(Some(number), report).map(drop)
    }

    /// The database file, as given.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn database(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::Database {
            path: self.path.clone(),
            source,
        }
    }

    /// Keep a run that has ended; returns its number.
    pub fn save(&self, report: &RunReport) -> Result<i64, HistoryError> {
        self.write(None, report)
    }

    /// Write a finished run into row `number`, or a new row.
    fn write(&self, number: Option<i64>, report: &RunReport) -> Result<i64, HistoryError> {
        let json = serde_json::to_string(report).map_err(|source| HistoryError::Corrupt {
            run: report.run_id.clone(),
            source,
        })?;
        let mut pairs: Vec<&str> = report
            .cases
            .iter()
            .map(|case| case.os_pair.as_str())
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let s = &report.summary;
        let failed = s.differs + s.error + s.agent_lost + s.timeout;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let values = params![
            report.run_id,
            report.started_unix_ms,
            report.suite,
            pairs.join(","),
            count(s.total),
            count(s.expected),
            count(failed),
            count(s.skipped),
            json,
            report.trace_id,
        ];
        let written = match number {
            Some(number) => {
                let mut values = values.to_vec();
                values.push(&number);
                self.connection.execute(
                    "UPDATE runs SET run_id = ?1, started_unix_ms = ?2, suite = ?3, os_pairs = ?4,
                         total = ?5, expected = ?6, failed = ?7, skipped = ?8, report = ?9,
                         trace_id = ?10, state = 'finished'
                     WHERE number = ?11",
                    values.as_slice(),
                )
            }
            None => self.connection.execute(
                "INSERT INTO runs (run_id, started_unix_ms, suite, os_pairs, total, expected, failed, skipped, report, trace_id, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'finished')",
                values,
            ),
        };
        written.map_err(|source| self.database(source))?;
        let number = number.unwrap_or_else(|| self.connection.last_insert_rowid());
        // What each case took, for placing it next time (a skipped case
        // took nothing worth knowing).
        for case in &report.cases {
            if case.verdict != crate::report::Verdict::Skipped {
                self.connection
                    .execute(
                        "INSERT OR REPLACE INTO case_durations (case_id, duration_ms) VALUES (?1, ?2)",
                        params![case.id, i64::try_from(case.duration_ms).unwrap_or(i64::MAX)],
                    )
                    .map_err(|source| self.database(source))?;
            }
        }
        Ok(number)
    }

    /// How long each case took when it last ran, by case id (ms).
    pub fn durations(&self) -> Result<std::collections::BTreeMap<String, u64>, HistoryError> {
        let mut statement = self
            .connection
            .prepare("SELECT case_id, duration_ms FROM case_durations")
            .map_err(|source| self.database(source))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(|source| self.database(source))?;
        let mut durations = std::collections::BTreeMap::new();
        for row in rows {
            let (id, ms) = row.map_err(|source| self.database(source))?;
            durations.insert(id, u64::try_from(ms).unwrap_or(0));
        }
        Ok(durations)
    }

    /// The newest `limit` runs, newest first.
    pub fn list(&self, limit: usize) -> Result<Vec<RunRow>, HistoryError> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT number, run_id, started_unix_ms, suite, os_pairs, total, expected, failed, skipped, trace_id, state, note
                 FROM runs ORDER BY number DESC LIMIT ?1",
            )
            .map_err(|source| self.database(source))?;
        let rows = statement
            .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
                Ok(RunRow {
                    number: row.get(0)?,
                    run_id: row.get(1)?,
                    started_unix_ms: row.get(2)?,
                    suite: row.get(3)?,
                    os_pairs: row.get(4)?,
                    total: row.get(5)?,
                    expected: row.get(6)?,
                    failed: row.get(7)?,
                    skipped: row.get(8)?,
                    trace_id: row.get(9)?,
                    state: RunState::parse(&row.get::<_, String>(10)?),
                    note: row.get(11)?,
                })
            })
            .map_err(|source| self.database(source))?;
        rows.collect::<Result<_, _>>()
            .map_err(|source| self.database(source))
    }

    /// A run by its number or its id.
    pub fn get(&self, run: &str) -> Result<RunReport, HistoryError> {
        let found: Option<(String, String, Option<String>)> = self
            .connection
            .query_row(
                "SELECT report, state, note FROM runs WHERE run_id = ?1 OR CAST(number AS TEXT) = ?1",
                params![run],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(|source| self.database(source))?;
        let (json, state, note) = found.ok_or_else(|| HistoryError::NoSuchRun(run.to_owned()))?;
        if json.is_empty() {
            let state = match (RunState::parse(&state), note) {
                (RunState::Running, _) => "is still running".to_owned(),
                (state, Some(note)) => format!("{}: {note}", state.as_str()),
                (state, None) => state.as_str().to_owned(),
            };
            return Err(HistoryError::NoReport {
                run: run.to_owned(),
                state,
            });
        }
        serde_json::from_str(&json).map_err(|source| HistoryError::Corrupt {
            run: run.to_owned(),
            source,
        })
    }

    /// The cases whose verdict or observations differ between runs `a` and `b`.
    pub fn diff(&self, a: &str, b: &str) -> Result<Vec<Change>, HistoryError> {
        Ok(changes(&self.get(a)?, &self.get(b)?))
    }
}

/// Whether process `pid` on this machine is a faultlab controller still
/// running. Where that cannot be known (no /proc), it is taken as alive:
/// a run is never called interrupted on a guess.
fn controller_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.is_dir() {
        return true;
    }
    let Ok(cmdline) = std::fs::read(proc.join(pid.to_string()).join("cmdline")) else {
        return false;
    };
    // A reused pid of another program is not our controller.
    cmdline
        .split(|&byte| byte == 0)
        .next()
        .is_some_and(|exe| String::from_utf8_lossy(exe).contains("faultlab"))
}

/// A case's key across runs: its id and its binding's position among the
/// case's bindings (so the same case on Linux and on Windows compares).
fn keyed(report: &RunReport) -> BTreeMap<(String, usize), &CaseReport> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    report
        .cases
        .iter()
        .map(|case| {
            let position = seen.entry(case.id.clone()).or_default();
            let key = (case.id.clone(), *position);
            *position += 1;
            (key, case)
        })
        .collect()
}

/// What a case came to, in one line: verdict, each checked step's outcome
/// and errno and whether data moved, and which role's host sent a FIN or
/// RST. What varies from run to run by nature is left out — how many bytes
/// a flood moved before its kill, timings, and the lab's addresses and
/// ephemeral ports (two labs give the same case other subnets): a diff
/// lists what changed in meaning.
fn gist(case: &CaseReport, agents: &[AgentReport]) -> String {
    let steps: Vec<String> = case
        .observations
        .iter()
        .filter(|observation| observation.checked.is_some())
        .map(|observation| {
            let errno = if observation.errno_name.is_empty() {
                String::new()
            } else {
                format!(" {}", observation.errno_name)
            };
            let data = if observation.bytes > 0 {
                "data"
            } else {
                "no data"
            };
            format!(
                "{} {}{errno}, {data}",
                observation.step, observation.outcome
            )
        })
        .collect();
    let mut ends: Vec<String> = case
        .wire
        .iter()
        .flat_map(|segment| {
            [('F', "FIN"), ('R', "RST")]
                .into_iter()
                .filter(|(flag, _)| segment.flags.contains(*flag))
                .map(|(_, name)| {
                    format!("{name} from {}", sender_role(case, agents, &segment.source))
                })
        })
        .collect();
    ends.sort();
    ends.dedup();
    let wire = if ends.is_empty() {
        String::new()
    } else {
        format!("; wire: {}", ends.join(", "))
    };
    format!(
        "{} [{}] {}{wire}",
        case.verdict.as_str(),
        case.os_pair,
        steps.join("; ")
    )
}

/// The role whose host sent from `source` ("198.18.4.11:40112"): the case's
/// roles name agents, the run's agents name their test addresses. Roles
/// sharing a host are named together ("client+server").
fn sender_role(case: &CaseReport, agents: &[AgentReport], source: &str) -> String {
    let ip = crate::report::ladder::ip_of(source);
    let roles: Vec<&str> = case
        .roles
        .iter()
        .filter(|(_, agent)| {
            agents
                .iter()
                .any(|known| &known.name == *agent && known.test_ip == ip)
        })
        .map(|(role, _)| role.as_str())
        .collect();
    if roles.is_empty() {
        "a host that plays no role".to_owned()
    } else {
        roles.join("+")
    }
}

/// Cases whose gist differs between two reports (or that exist in one only).
pub fn changes(before: &RunReport, after: &RunReport) -> Vec<Change> {
    let (old, new) = (keyed(before), keyed(after));
    let mut keys: Vec<&(String, usize)> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let was = old
                .get(key)
                .map_or_else(|| "(not run)".to_owned(), |case| gist(case, &before.agents));
            let is = new
                .get(key)
                .map_or_else(|| "(not run)".to_owned(), |case| gist(case, &after.agents));
            let hosts = new
                .get(key)
                .or_else(|| old.get(key))
                .map_or_else(String::new, |case| {
                    case.roles.values().cloned().collect::<Vec<_>>().join("→")
                });
            (was != is).then(|| Change {
                case: format!("{} [{hosts}]", key.0),
                before: was,
                after: is,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ObservationReport, SCHEMA, Summary, Verdict};

    fn report(run_id: &str, verdict: Verdict, errno_name: &str) -> RunReport {
        let case = CaseReport {
            id: "C2".to_owned(),
            name: "send-close-then-client-sends".to_owned(),
            roles: BTreeMap::from([("client".to_owned(), "a".to_owned())]),
            os_pair: "linux/linux".to_owned(),
            verdict,
            observations: vec![ObservationReport {
                step: "client-reads".to_owned(),
                host: "a".to_owned(),
                role: "client".to_owned(),
                call: "recv".to_owned(),
                bytes: 100,
                outcome: if errno_name.is_empty() {
                    "eof"
                } else {
                    "error"
                }
                .to_owned(),
                errno_name: errno_name.to_owned(),
                checked: Some("linux (measured)".to_owned()),
                expected: Some("eof".to_owned()),
                ..Default::default()
            }],
            duration_ms: 1,
            ..CaseReport::default()
        };
        let cases = vec![case];
        RunReport {
            schema: SCHEMA.to_owned(),
            run_id: run_id.to_owned(),
            started_unix_ms: 1,
            finished_unix_ms: 2,
            suite: "seed".to_owned(),
            agents: Vec::new(),
            summary: Summary::of(&cases),
            cases,
            trace_id: None,
            trace_url: None,
        }
    }

    #[test]
    fn a_database_from_before_traces_gets_the_column() -> Result<(), Box<dyn std::error::Error>> {
        let path = std::env::temp_dir().join(format!(
            "faultlab-history-old-{}.sqlite",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let old = Connection::open(&path)?;
        old.execute_batch(
            "CREATE TABLE runs (
                number INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE,
                started_unix_ms INTEGER NOT NULL, suite TEXT NOT NULL, os_pairs TEXT NOT NULL,
                total INTEGER NOT NULL, expected INTEGER NOT NULL, failed INTEGER NOT NULL,
                skipped INTEGER NOT NULL, report TEXT NOT NULL);",
        )?;
        let json = serde_json::to_string(&report("old", Verdict::Expected, ""))?;
        old.execute(
            "INSERT INTO runs (run_id, started_unix_ms, suite, os_pairs, total, expected, failed, skipped, report)
             VALUES ('old', 1, 'seed', 'linux/linux', 1, 1, 0, 0, ?1)",
            params![json],
        )?;
        drop(old);
        let history = History::open(&path)?;
        history.save(&report("new", Verdict::Expected, ""))?;
        let listed = history.list(10)?;
        assert_eq!(listed.len(), 2);
        assert_eq!(history.get("old")?.run_id, "old");
        drop(history);
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    #[test]
    fn runs_are_kept_listed_and_compared() -> Result<(), HistoryError> {
        let path =
            std::env::temp_dir().join(format!("faultlab-history-{}.sqlite", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let history = History::open(&path)?;
        let mut traced = report("r1", Verdict::Expected, "");
        traced.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned());
        assert_eq!(history.save(&traced)?, 1);
        assert_eq!(
            history.save(&report("r2", Verdict::Differs, "ECONNABORTED"))?,
            2
        );
        let listed = history.list(10)?;
        assert_eq!(
            listed.iter().map(|row| row.number).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!((listed[0].failed, listed[1].expected), (1, 1));
        assert_eq!(
            (listed[0].trace_id.as_deref(), listed[1].trace_id.as_deref()),
            (None, Some("4bf92f3577b34da6a3ce929d0e0e4736"))
        );
        assert_eq!(history.get("r1")?.run_id, "r1");
        assert_eq!(history.get("2")?.run_id, "r2");
        assert!(matches!(history.get("9"), Err(HistoryError::NoSuchRun(_))));
        let changes = history.diff("1", "2")?;
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].case, "C2 [a]");
        assert_eq!(
            changes[0].before,
            "expected [linux/linux] client-reads eof, data"
        );
        assert_eq!(
            changes[0].after,
            "differs [linux/linux] client-reads error ECONNABORTED, data"
        );
        assert!(history.diff("1", "1")?.is_empty());
        // A flood that moved other byte counts, or ran at other times, is
        // the same outcome.
        let mut again = report("r3", Verdict::Expected, "");
        for observation in &mut again.cases[0].observations {
            observation.bytes += 12_345;
            observation.t_ns += 777;
        }
        history.save(&again)?;
        assert!(
            history.diff("1", "3")?.is_empty(),
            "{:?}",
            history.diff("1", "3")
        );
        // What each case took last time, for placing it: the newest run
        // that played it (a skipped case says nothing).
        let mut slow = report("r4", Verdict::Differs, "");
        slow.cases[0].duration_ms = 4_200;
        history.save(&slow)?;
        let mut skipped = report("r5", Verdict::Skipped, "");
        skipped.cases[0].duration_ms = 0;
        history.save(&skipped)?;
        assert_eq!(
            history.durations()?,
            BTreeMap::from([("C2".to_owned(), 4_200)])
        );
        drop(history);
        // Opening again (the column exists now) keeps everything.
        assert_eq!(History::open(&path)?.list(10)?.len(), 5);
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    /// `report` on a lab whose two hosts have the addresses `ips`, with the
    /// case's server ("b") sending `flags` to its client ("a").
    fn on_lab(run_id: &str, ips: [&str; 2], ports: [u16; 2], flags: &str) -> RunReport {
        let mut run = report(run_id, Verdict::Expected, "");
        run.agents = ["a", "b"]
            .into_iter()
            .zip(ips)
            .map(|(name, ip)| AgentReport {
                name: name.to_owned(),
                address: format!("{ip}:7420"),
                test_ip: ip.to_owned(),
                hostname: name.to_owned(),
                os_family: "linux".to_owned(),
                os_version: String::new(),
                kernel_version: String::new(),
                arch: String::new(),
                agent_version: String::new(),
                boot_id: String::new(),
                capabilities: Vec::new(),
                clock_offset_ns: 0,
                clock_rtt_ns: 0,
                clock_drift_ppb: None,
                clock_drift_error_ppb: None,
            })
            .collect();
        let case = &mut run.cases[0];
        case.roles.insert("server".to_owned(), "b".to_owned());
        case.wire = vec![crate::report::WireReport::seen(
            "a",
            1,
            &format!("{}:{}", ips[1], ports[1]),
            &format!("{}:{}", ips[0], ports[0]),
            flags,
        )];
        run
    }

    #[test]
    fn the_same_outcome_on_another_lab_is_no_change_and_another_sender_is() {
        let here = on_lab("r1", ["198.18.154.10", "198.18.154.11"], [46615, 7000], "R");
        let there = on_lab("r2", ["198.18.217.10", "198.18.217.11"], [36473, 7000], "R");
        assert_eq!(changes(&here, &there), Vec::new());
        // The RST now comes from the client's host: a change in meaning.
        let mut turned = there.clone();
        let segment = &mut turned.cases[0].wire[0];
        std::mem::swap(&mut segment.source, &mut segment.destination);
        let found = changes(&here, &turned);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].before.ends_with("wire: RST from server"),
            "{found:?}"
        );
        assert!(
            found[0].after.ends_with("wire: RST from client"),
            "{found:?}"
        );
        // A FIN where there was an RST is one too.
        let fin = on_lab(
            "r3",
            ["198.18.217.10", "198.18.217.11"],
            [36473, 7000],
            "F.",
        );
        assert_eq!(changes(&here, &fin).len(), 1);
    }

    fn scratch(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "faultlab-history-{name}-{}.sqlite",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn controllers_opening_a_new_history_at_once_all_get_it() {
        // `faultlab runs` and `faultlab run` started together (a CI job
        // polling its own run) both make the tables of a new history.
        for attempt in 0..20 {
            let path = scratch(&format!("race-{attempt}"));
            let _ = std::fs::remove_file(&path);
            let opened: Vec<Result<(), String>> = std::thread::scope(|scope| {
                let openers: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| History::open(&path).map(drop)))
                    .collect();
                openers
                    .into_iter()
                    .map(|opener| match opener.join() {
                        Ok(opened) => opened.map_err(|error| error.to_string()),
                        Err(_) => Err("the opener panicked".to_owned()),
                    })
                    .collect()
            });
            let _ = std::fs::remove_file(&path);
            for result in opened {
                assert!(result.is_ok(), "attempt {attempt}: {result:?}");
            }
        }
    }

    #[test]
    fn a_run_is_kept_from_its_start_and_ends_finished_failed_or_interrupted()
    -> Result<(), Box<dyn std::error::Error>> {
        let path = scratch("states");
        let history = History::open(&path)?;
        let finished = history.begin("r-finished", "seed", 1)?;
        let failed = history.begin("r-failed", "seed", 2)?;
        let killed = history.begin("r-killed", "seed", 3)?;
        let state = |history: &History, number: i64| -> Result<RunState, HistoryError> {
            Ok(history
                .list(10)?
                .into_iter()
                .find(|row| row.number == number)
                .map_or(RunState::Finished, |row| row.state))
        };
        assert_eq!(state(&history, killed)?, RunState::Running);
        assert!(matches!(
            history.get("r-killed"),
            Err(HistoryError::NoReport { .. })
        ));
        history.finish(finished, &report("r-finished", Verdict::Expected, ""))?;
        history.fail(failed, "cannot make the lab network")?;
        // The third's controller dies: a process that has ended.
        let mut gone = std::process::Command::new("true").spawn()?;
        gone.wait()?;
        history.connection.execute(
            "UPDATE runs SET pid = ?1 WHERE number = ?2",
            params![gone.id(), killed],
        )?;
        drop(history);
        let history = History::open(&path)?;
        assert_eq!(state(&history, finished)?, RunState::Finished);
        assert_eq!(history.get("r-finished")?.cases.len(), 1);
        assert_eq!(state(&history, failed)?, RunState::Failed);
        assert_eq!(state(&history, killed)?, RunState::Interrupted);
        match history.get("r-failed") {
            Err(HistoryError::NoReport { state, .. }) => {
                assert_eq!(state, "failed: cannot make the lab network");
            }
            other => panic!("{other:?}"),
        }
        drop(history);
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    #[test]
    fn a_history_locked_for_seconds_is_waited_for_not_lost()
    -> Result<(), Box<dyn std::error::Error>> {
        let path = scratch("locked");
        let history = History::open(&path)?;
        let holder_path = path.clone();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        // Another process's lock, longer than SQLite's usual 5 s.
        let holder = std::thread::spawn(move || -> Result<(), rusqlite::Error> {
            let other = Connection::open(&holder_path)?;
            other.execute_batch("BEGIN EXCLUSIVE;")?;
            let _ = locked_tx.send(());
            std::thread::sleep(std::time::Duration::from_millis(5_500));
            other.execute_batch("COMMIT;")
        });
        locked_rx.recv()?;
        let number = history.save(&report("late", Verdict::Expected, ""))?;
        assert_eq!(history.get("late")?.run_id, "late");
        assert_eq!(number, 1);
        holder.join().map_err(|_| "the lock holder panicked")??;
        drop(history);
        let _ = std::fs::remove_file(&path);
        Ok(())
    }
}
