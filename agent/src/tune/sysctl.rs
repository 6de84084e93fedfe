//! Linux: the settings are files under /proc/sys, of the agent's network
//! namespace. What a change replaced is written down in the agent's keep
//! directory (one file per namespace and setting: hosts of a namespace lab
//! share it); the watchdog is this executable run as `faultlab-agent
//! tune-watchdog SETTING MILLIS`, one detached process that sleeps, then
//! puts the value back (see [`watchdog_main`]).

use super::{Change, SettingControl, TcpSetting, TuneError};
use crate::link::iproute::Sleeper;
use crate::timed::Watchdog;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// /proc/sys files; `exe` is the agent executable, run as the watchdog.
pub struct Sysctl {
    /// The agent executable.
    pub exe: PathBuf,
}

/// The watchdog process's whole life: wait, then put `setting` back.
pub fn watchdog_main(setting: &str, after: Duration) -> Result<(), TuneError> {
    let setting = TcpSetting::from_name(setting).ok_or_else(|| {
        TuneError::System(format!("{setting:?} is not a setting faultlab changes"))
    })?;
    std::thread::sleep(after);
    let record = std::fs::read_to_string(record_path(setting))
        .map_err(|error| TuneError::System(format!("nothing written down to put back: {error}")))?;
    let (_, change, _) = parse_record(setting, &record).ok_or_else(|| {
        TuneError::System(format!("cannot read what was written down: {record:?}"))
    })?;
    let control = Sysctl {
        exe: PathBuf::new(),
    };
    super::Settings::put_back_checked(&control, change)
}

/// The file of `setting`: its name with `/` for `.`, under /proc/sys.
fn proc_path(setting: TcpSetting) -> PathBuf {
    Path::new("/proc/sys").join(setting.name().replace('.', "/"))
}

/// The start of the names of this network namespace's records.
fn record_prefix() -> String {
    use std::os::unix::fs::MetadataExt;
    let namespace = std::fs::metadata("/proc/self/ns/net").map_or(0, |meta| meta.ino());
    format!("faultlab-tune-{namespace}-")
}

fn record_path(setting: TcpSetting) -> PathBuf {
    crate::keep::dir().join(format!("{}{}", record_prefix(), setting.name()))
}

/// A record's id, change and time left (its body: "BEFORE VALUE").
fn parse_record(setting: TcpSetting, record: &str) -> Option<(String, Change, Duration)> {
    let kept = crate::keep::read(record);
    let mut values = kept.body.split_whitespace().map(str::parse::<u32>);
    let (Some(Ok(before)), Some(Ok(value))) = (values.next(), values.next()) else {
        return None;
    };
    let change = Change {
        setting,
        before,
        value,
    };
    Some((kept.id.to_owned(), change, kept.left))
}

impl SettingControl for Sysctl {
    fn read(&self, setting: TcpSetting) -> Result<u32, TuneError> {
        let path = proc_path(setting);
        let text = std::fs::read_to_string(&path).map_err(|error| {
            TuneError::System(format!("cannot read {}: {error}", path.display()))
        })?;
        text.trim().parse().map_err(|error| {
            TuneError::System(format!("{} holds {text:?}: {error}", path.display()))
        })
    }

    fn change(&self, id: &str, change: Change, left: Duration) -> Result<(), TuneError> {
        let record =
            crate::keep::with_deadline(&format!("{} {}\n", change.before, change.value), left, id);
        let path = record_path(change.setting);
        std::fs::write(&path, record).map_err(|error| {
            TuneError::System(format!("cannot write {}: {error}", path.display()))
        })?;
        self.write(change.setting, change.value)
    }

    fn write(&self, setting: TcpSetting, value: u32) -> Result<(), TuneError> {
        let path = proc_path(setting);
        std::fs::write(&path, format!("{value}\n"))
            .map_err(|error| TuneError::System(format!("cannot write {}: {error}", path.display())))
    }

    fn forget(&self, setting: TcpSetting) -> Result<(), TuneError> {
        let path = record_path(setting);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(TuneError::System(
                format!("cannot remove {}: {error}", path.display()),
            )),
            _ => Ok(()),
        }
    }

    fn leftovers(&self) -> Vec<(String, Change, Duration)> {
        TcpSetting::ALL
            .into_iter()
            .filter_map(|setting| {
                let record = std::fs::read_to_string(record_path(setting)).ok()?;
                parse_record(setting, &record)
            })
            .collect()
    }

    fn arm(&self, setting: TcpSetting, after: Duration) -> Result<Box<dyn Watchdog>, TuneError> {
        let millis = after.as_millis().to_string();
        Sleeper::start(&self.exe, &["tune-watchdog", setting.name(), &millis])
            .map(|sleeper| Box::new(sleeper) as Box<dyn Watchdog>)
            .map_err(|error| TuneError::System(format!("cannot start the watchdog: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_is_its_proc_file_and_a_record_gives_back_the_change() {
        let setting = TcpSetting::AbortOnOverflow;
        assert_eq!(
            proc_path(setting),
            Path::new("/proc/sys/net/ipv4/tcp_abort_on_overflow")
        );
        let record = crate::keep::with_deadline("0 1\n", Duration::from_secs(30), "N8-1-listen");
        let Some((id, change, left)) = parse_record(setting, &record) else {
            panic!("not read back: {record:?}");
        };
        assert_eq!(id, "N8-1-listen");
        assert_eq!((change.before, change.value), (0, 1));
        assert!(left > Duration::from_secs(29), "{left:?}");
        assert!(parse_record(setting, "# nothing\n").is_none());
    }
}
