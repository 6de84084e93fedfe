//! Portable names for the OS error codes a socket call can return, shared
//! by the agent (which names what the OS said) and the scenario language
//! (which checks that an expectation names an error that OS can report).
//!
//! Linux says ECONNRESET with 104, Windows with 10054 (WSAECONNRESET). Scenario
//! expectations and reports compare names, so both OS tables live here, not
//! behind `cfg`: a Linux build can check the Windows table too.

/// The OS families whose error codes we name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OsFamily {
    /// Linux errno values.
    Linux,
    /// Windows Sockets (WSA) codes.
    Windows,
}

impl OsFamily {
    /// The family of the OS this was built for (other Unixes share most Linux names
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
    names(os)
        .iter()
        .find(|(known, _)| *known == code)
        .map_or_else(|| format!("ERRNO_{code}"), |(_, name)| (*name).to_owned())
}

/// Every name `os` reports, with its code.
pub fn names(os: OsFamily) -> &'static [(i32, &'static str)] {
    match os {
        OsFamily::Linux => LINUX,
        OsFamily::Windows => WINDOWS,
    }
}

impl OsFamily {
    /// The family an OS name of the reports stands for ("linux", "windows").
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "linux" => Some(Self::Linux),
            "windows" => Some(Self::Windows),
            _ => None,
        }
    }
}
