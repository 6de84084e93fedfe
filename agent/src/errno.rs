//! Portable names for the OS error codes a socket call can return.
//!
//! Linux says ECONNRESET with 104, Windows with 10054 (WSAECONNRESET). Scenario
//! expectations and reports compare names, so both OS tables live here, not
//! behind `cfg`: a Linux test can check the Windows table too.

use crate::model::OsError;
use std::io;

/// The OS families whose error codes we name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OsFamily {
    /// Linux errno values.
    Linux,
    /// Windows Sockets (WSA) codes.
    Windows,
}

impl OsFamily {
    /// The family this agent was built for (other Unixes share most Linux names
    /// but not all numbers; they are named `ERRNO_<code>` when they differ).
    pub const fn current() -> Self {
        if cfg!(windows) {
            Self::Windows
        } else {
            Self::Linux
        }
    }
}

const LINUX: &[(i32, &str)] = &[
    (1, "EPERM"),
    (4, "EINTR"),
    (9, "EBADF"),
    (11, "EAGAIN"),
    (13, "EACCES"),
    (22, "EINVAL"),
    (24, "EMFILE"),
    (32, "EPIPE"),
    (90, "EMSGSIZE"),
    (97, "EAFNOSUPPORT"),
    (98, "EADDRINUSE"),
    (99, "EADDRNOTAVAIL"),
    (100, "ENETDOWN"),
    (101, "ENETUNREACH"),
    (102, "ENETRESET"),
    (103, "ECONNABORTED"),
    (104, "ECONNRESET"),
    (105, "ENOBUFS"),
    (106, "EISCONN"),
    (107, "ENOTCONN"),
    (108, "ESHUTDOWN"),
    (110, "ETIMEDOUT"),
    (111, "ECONNREFUSED"),
    (112, "EHOSTDOWN"),
    (113, "EHOSTUNREACH"),
    (114, "EALREADY"),
    (115, "EINPROGRESS"),
];

const WINDOWS: &[(i32, &str)] = &[
    (10004, "EINTR"),
    (10009, "EBADF"),
    (10013, "EACCES"),
    (10022, "EINVAL"),
    (10024, "EMFILE"),
    (10035, "EAGAIN"),
    (10036, "EINPROGRESS"),
    (10037, "EALREADY"),
    (10040, "EMSGSIZE"),
    (10047, "EAFNOSUPPORT"),
    (10048, "EADDRINUSE"),
    (10049, "EADDRNOTAVAIL"),
    (10050, "ENETDOWN"),
    (10051, "ENETUNREACH"),
    (10052, "ENETRESET"),
    (10053, "ECONNABORTED"),
    (10054, "ECONNRESET"),
    (10055, "ENOBUFS"),
    (10056, "EISCONN"),
    (10057, "ENOTCONN"),
    (10058, "ESHUTDOWN"),
    (10060, "ETIMEDOUT"),
    (10061, "ECONNREFUSED"),
    (10064, "EHOSTDOWN"),
    (10065, "EHOSTUNREACH"),
];

/// The portable name of `code` on `os`, or `ERRNO_<code>` when we have none.
pub fn portable_name(os: OsFamily, code: i32) -> String {
    let table = match os {
        OsFamily::Linux => LINUX,
        OsFamily::Windows => WINDOWS,
    };
    table
        .iter()
        .find(|(known, _)| *known == code)
        .map_or_else(|| format!("ERRNO_{code}"), |(_, name)| (*name).to_owned())
}

/// Whether an error from send() with this code would have raised SIGPIPE
/// had the agent not suppressed it (Windows has no SIGPIPE).
pub fn raises_sigpipe(os: OsFamily, code: i32) -> bool {
    os == OsFamily::Linux && code == 32
}

/// Describe an `io::Error` from a socket call on this OS.
pub fn describe(error: &io::Error) -> OsError {
    let code = error.raw_os_error().unwrap_or(0);
    OsError {
        code,
        name: if code == 0 {
            format!("{:?}", error.kind()).to_uppercase()
        } else {
            portable_name(OsFamily::current(), code)
        },
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_codes_have_the_same_name_on_both_systems() {
        for (linux, windows, name) in [
            (104, 10054, "ECONNRESET"),
            (103, 10053, "ECONNABORTED"),
            (110, 10060, "ETIMEDOUT"),
            (111, 10061, "ECONNREFUSED"),
            (113, 10065, "EHOSTUNREACH"),
        ] {
            assert_eq!(portable_name(OsFamily::Linux, linux), name);
            assert_eq!(portable_name(OsFamily::Windows, windows), name);
        }
        assert_eq!(portable_name(OsFamily::Linux, 32), "EPIPE");
    }

    #[test]
    fn an_unknown_code_keeps_its_number() {
        assert_eq!(portable_name(OsFamily::Linux, 4242), "ERRNO_4242");
        assert_eq!(portable_name(OsFamily::Windows, 104), "ERRNO_104");
    }

    #[test]
    fn only_epipe_on_linux_raises_sigpipe() {
        assert!(raises_sigpipe(OsFamily::Linux, 32));
        assert!(!raises_sigpipe(OsFamily::Linux, 104));
        assert!(!raises_sigpipe(OsFamily::Windows, 10053));
    }

    #[test]
    fn an_io_error_is_described_by_its_raw_code() {
        let described = describe(&io::Error::from_raw_os_error(if cfg!(windows) {
            10054
        } else {
            104
        }));
        assert_eq!(described.name, "ECONNRESET");
        assert!(!described.message.is_empty());
    }
}
