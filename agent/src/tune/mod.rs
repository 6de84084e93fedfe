//! TCP settings of the host changed for a case, until a deadline. Today
//! one: what the kernel does with a connection whose handshake ends while
//! its listener's accept queue is full (`tcp_abort_on_overflow`: forget
//! the handshake's last ACK, so the client retries, or answer it with RST).
//!
//! A setting is a value of the host's kernel (of its network namespace, on
//! a namespace lab) that every program there shares, and the kernel keeps
//! no deadline for it: each change arms a watchdog process that puts the
//! value back at the deadline even if the agent is gone, and the value
//! before is written down first, where that process and an agent started
//! again after a crash find it. A value put back is read back and
//! compared, never assumed. The privileged part is [`SettingControl`].

#[cfg(target_os = "linux")]
pub mod sysctl;

use crate::timed::{Timed, TimedBook, Watchdog, armed_first};
use std::time::{Duration, Instant};

/// A TCP setting of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpSetting {
    /// 1: a handshake that ends on a full accept queue is answered with
    /// RST; 0 (Linux's default): its last ACK is dropped.
    AbortOnOverflow,
}

impl TcpSetting {
    /// Every setting.
    pub const ALL: [Self; 1] = [Self::AbortOnOverflow];

    /// Its name, as `sysctl` says it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::AbortOnOverflow => "net.ipv4.tcp_abort_on_overflow",
        }
    }

    /// The setting named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|setting| setting.name() == name)
    }

    /// Whether `value` is one it takes.
    pub fn takes(self, value: u32) -> bool {
        match self {
            Self::AbortOnOverflow => value <= 1,
        }
    }
}

/// Why a setting could not be changed or put back.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// A value the setting does not take.
    #[error("{setting} takes 0 or 1, not {value}")]
    BadValue {
        /// The setting's name.
        setting: &'static str,
        /// The value asked.
        value: u32,
    },
    /// The id is in use.
    #[error("setting change {0:?} is in place already; put it back first or use another id")]
    IdInUse(String),
    /// Another change of the same setting is in place.
    #[error("{setting} is changed already (by {id:?}); put it back first")]
    AlreadyChanged {
        /// The setting's name.
        setting: &'static str,
        /// The change in place.
        id: String,
    },
    /// No such change is in place.
    #[error("no setting change {0:?} on this agent")]
    Unknown(String),
    /// Read back after a write, it holds another value than was written.
    #[error("{setting} reads {now} after {wanted} was written{}", if *putting_back { " to put it back" } else { "" })]
    ReadsOther {
        /// The setting's name.
        setting: &'static str,
        /// What it reads now.
        now: u32,
        /// What was written.
        wanted: u32,
        /// Whether the write was putting the value from before back.
        putting_back: bool,
    },
    /// The OS refused.
    #[error("{0}")]
    System(String),
}

/// One change in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The setting.
    pub setting: TcpSetting,
    /// Its value before, put back at the end.
    pub before: u32,
    /// Its value now.
    pub value: u32,
}

/// The privileged side: the host's TCP settings.
pub trait SettingControl: Send + Sync {
    /// Its value now.
    fn read(&self, setting: TcpSetting) -> Result<u32, TuneError>;
    /// Write down `change` under `id`, its deadline `left` from now (for a
    /// watchdog, or an agent started again), then set the new value.
    fn change(&self, id: &str, change: Change, left: Duration) -> Result<(), TuneError>;
    /// Set `setting` to `value`.
    fn write(&self, setting: TcpSetting, value: u32) -> Result<(), TuneError>;
    /// Forget what was written down for `setting` (it reads as before).
    fn forget(&self, setting: TcpSetting) -> Result<(), TuneError>;
    /// Changes an earlier life of the agent made and did not put back:
    /// each with its id and the time left until its deadline.
    fn leftovers(&self) -> Vec<(String, Change, Duration)>;
    /// Start a watchdog that puts `setting` back after `after`.
    fn arm(&self, setting: TcpSetting, after: Duration) -> Result<Box<dyn Watchdog>, TuneError>;
}

/// The book of the settings this agent changed.
pub struct Settings {
    control: Box<dyn SettingControl>,
    changed: TimedBook<Change>,
}

impl Settings {
    /// Keep the book for `control`, with the changes an earlier life of the
    /// agent left: each kept until its deadline under a new watchdog, or
    /// put back now when that has passed.
    pub fn new(control: Box<dyn SettingControl>) -> Self {
        let changed = TimedBook::default();
        for (id, change, left) in control.leftovers() {
            let arm = |change: &Change, left| control.arm(change.setting, left);
            let put_back = |change: &Change| Self::put_back_checked(control.as_ref(), *change);
            changed.take_over(id, change, left, "a TCP setting", arm, put_back);
        }
        Self { control, changed }
    }

    /// Set `setting` to `value` until `deadline`; returns the change (with
    /// the value before) and when it is put back by itself.
    pub fn change(
        &self,
        id: &str,
        setting: TcpSetting,
        value: u32,
        deadline: Duration,
    ) -> Result<(Change, Instant), TuneError> {
        if !setting.takes(value) {
            return Err(TuneError::BadValue {
                setting: setting.name(),
                value,
            });
        }
        let mut changed = self.changed.open();
        if changed.contains_key(id) {
            return Err(TuneError::IdInUse(id.to_owned()));
        }
        if let Some((other, _)) = changed
            .iter()
            .find(|(_, entry)| entry.fault.setting == setting)
        {
            return Err(TuneError::AlreadyChanged {
                setting: setting.name(),
                id: other.clone(),
            });
        }
        let change = Change {
            setting,
            before: self.control.read(setting)?,
            value,
        };
        let ((), watchdog) = armed_first(
            || self.control.arm(setting, deadline),
            || {
                self.control.change(id, change, deadline)?;
                let taken = Self::reads(self.control.as_ref(), setting, value, false);
                if taken.is_err() {
                    // Not what was asked: the host gets its value back.
                    let _ = Self::put_back_checked(self.control.as_ref(), change);
                }
                taken
            },
        )?;
        tracing::warn!(%id, setting = setting.name(), before = change.before, value, deadline_ms = deadline.as_millis(), "TCP setting changed");
        let entry = Timed::watched(change, deadline, watchdog);
        let expires = entry.expires;
        changed.insert(id.to_owned(), entry);
        Ok((change, expires))
    }

    /// Put the change `id` back now; it leaves the book only once the
    /// setting reads its value from before.
    pub fn put_back(&self, id: &str) -> Result<Change, TuneError> {
        let control = self.control.as_ref();
        self.changed
            .undo(
                id,
                |change| Self::put_back_checked(control, *change).map(|()| *change),
                |change, left| control.arm(change.setting, left),
            )
            .ok_or_else(|| TuneError::Unknown(id.to_owned()))?
            .map_err(|failed| failed.into_error(TuneError::System))
    }

    /// Put every change back: how many were, and what was not, with why.
    pub fn put_all_back(&self) -> (usize, Vec<String>) {
        self.changed
            .undo_all("TCP setting", |id| self.put_back(id).map(drop))
    }

    /// How many changes are in place.
    pub fn count(&self) -> usize {
        self.changed.count()
    }

    /// Write the value from before, read it back, and only then forget
    /// what was written down (a watchdog armed again still finds it).
    fn put_back_checked(control: &dyn SettingControl, change: Change) -> Result<(), TuneError> {
        control.write(change.setting, change.before)?;
        Self::reads(control, change.setting, change.before, true)?;
        control.forget(change.setting)
    }

    /// Whether `setting` reads `wanted`, just written.
    fn reads(
        control: &dyn SettingControl,
        setting: TcpSetting,
        wanted: u32,
        putting_back: bool,
    ) -> Result<(), TuneError> {
        let now = control.read(setting)?;
        if now == wanted {
            return Ok(());
        }
        tracing::error!(
            setting = setting.name(),
            now,
            wanted,
            putting_back,
            "TCP setting reads another value than written"
        );
        Err(TuneError::ReadsOther {
            setting: setting.name(),
            now,
            wanted,
            putting_back,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    /// Settings in memory; `stuck` ones ignore writes; `records` is what
    /// was written down; every watchdog armed is counted.
    #[derive(Default)]
    struct Kernel {
        values: Mutex<HashMap<&'static str, u32>>,
        stuck: Mutex<bool>,
        records: Mutex<HashMap<&'static str, (String, Change, Duration)>>,
        armed: Mutex<usize>,
    }

    struct Dog;

    impl Watchdog for Dog {
        fn disarm(&mut self) {}
        fn finished(&mut self) -> bool {
            false
        }
    }

    impl Kernel {
        fn set(&self, setting: TcpSetting, value: u32) {
            if !*crate::sync::lock(&self.stuck) {
                crate::sync::lock(&self.values).insert(setting.name(), value);
            }
        }
    }

    impl SettingControl for Arc<Kernel> {
        fn read(&self, setting: TcpSetting) -> Result<u32, TuneError> {
            Ok(crate::sync::lock(&self.values)
                .get(setting.name())
                .copied()
                .unwrap_or(0))
        }
        fn change(&self, id: &str, change: Change, left: Duration) -> Result<(), TuneError> {
            crate::sync::lock(&self.records)
                .insert(change.setting.name(), (id.to_owned(), change, left));
            self.set(change.setting, change.value);
            Ok(())
        }
        fn write(&self, setting: TcpSetting, value: u32) -> Result<(), TuneError> {
            self.set(setting, value);
            Ok(())
        }
        fn forget(&self, setting: TcpSetting) -> Result<(), TuneError> {
            crate::sync::lock(&self.records).remove(setting.name());
            Ok(())
        }
        fn leftovers(&self) -> Vec<(String, Change, Duration)> {
            crate::sync::lock(&self.records).values().cloned().collect()
        }
        fn arm(&self, _: TcpSetting, _: Duration) -> Result<Box<dyn Watchdog>, TuneError> {
            *crate::sync::lock(&self.armed) += 1;
            Ok(Box::new(Dog))
        }
    }

    const OVERFLOW: TcpSetting = TcpSetting::AbortOnOverflow;
    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_change_is_read_back_refused_twice_and_put_back_as_it_was() -> Result<(), TuneError> {
        let kernel = Arc::new(Kernel::default());
        let settings = Settings::new(Box::new(Arc::clone(&kernel)));
        let (change, _) = settings.change("a", OVERFLOW, 1, MINUTE)?;
        assert_eq!((change.before, kernel.read(OVERFLOW)?), (0, 1));
        assert_eq!(
            *crate::sync::lock(&kernel.armed),
            1,
            "armed before the change"
        );
        assert!(matches!(
            settings.change("b", OVERFLOW, 0, MINUTE),
            Err(TuneError::AlreadyChanged { id, .. }) if id == "a"
        ));
        assert!(matches!(
            settings.change("c", OVERFLOW, 2, MINUTE),
            Err(TuneError::BadValue { value: 2, .. })
        ));
        assert_eq!(settings.put_back("a")?.before, 0);
        assert_eq!(kernel.read(OVERFLOW)?, 0);
        assert!(crate::sync::lock(&kernel.records).is_empty());
        assert!(matches!(settings.put_back("a"), Err(TuneError::Unknown(_))));
        Ok(())
    }

    #[test]
    fn a_value_that_does_not_come_back_is_said_and_stays_booked() -> Result<(), TuneError> {
        let kernel = Arc::new(Kernel::default());
        let settings = Settings::new(Box::new(Arc::clone(&kernel)));
        settings.change("a", OVERFLOW, 1, MINUTE)?;
        *crate::sync::lock(&kernel.stuck) = true;
        assert!(matches!(
            settings.put_back("a"),
            Err(TuneError::ReadsOther {
                now: 1,
                wanted: 0,
                putting_back: true,
                ..
            })
        ));
        assert_eq!(settings.count(), 1, "still to put back");
        assert_eq!(
            crate::sync::lock(&kernel.records).len(),
            1,
            "still written down"
        );
        let (put_back, failed) = settings.put_all_back();
        assert_eq!((put_back, failed.len()), (0, 1), "{failed:?}");
        *crate::sync::lock(&kernel.stuck) = false;
        assert_eq!(settings.put_all_back(), (1, Vec::new()));
        assert_eq!(kernel.read(OVERFLOW)?, 0);
        Ok(())
    }

    #[test]
    fn a_change_an_earlier_agent_left_is_taken_over_or_put_back() -> Result<(), TuneError> {
        let kernel = Arc::new(Kernel::default());
        let earlier = Settings::new(Box::new(Arc::clone(&kernel)));
        earlier.change("left", OVERFLOW, 1, MINUTE)?;
        drop(earlier);
        // Time left: kept, under a new watchdog, and put back on request.
        let again = Settings::new(Box::new(Arc::clone(&kernel)));
        assert_eq!((again.count(), kernel.read(OVERFLOW)?), (1, 1));
        again.put_back("left")?;
        assert_eq!(kernel.read(OVERFLOW)?, 0);
        // Past its deadline: put back at once.
        kernel.change(
            "late",
            Change {
                setting: OVERFLOW,
                before: 0,
                value: 1,
            },
            Duration::ZERO,
        )?;
        let third = Settings::new(Box::new(Arc::clone(&kernel)));
        assert_eq!((third.count(), kernel.read(OVERFLOW)?), (0, 0));
        Ok(())
    }
}
