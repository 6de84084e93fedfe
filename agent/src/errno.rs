//! What the OS said, in the portable words of the contract: the error's
//! name (the tables are in `faultlab_proto::errno`, shared with the
//! scenario language), and whether SIGPIPE would have been raised.

use crate::model::OsError;
pub use faultlab_proto::errno::{OsFamily, portable_name};
use std::io;

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
