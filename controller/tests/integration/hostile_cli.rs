//! Hostile command lines for `faultlab certs` and `faultlab check`: whatever
//! the values (names with control characters, absurd or negative day
//! counts, text where a number goes, files that are not scenarios), the
//! binary answers with an exit code of its own and a message, never a
//! panic. Real processes of the built binary; bounded for CI
//! (`PROPTEST_CASES` raises it).

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// 48 cases per property in CI; `PROPTEST_CASES` for longer runs.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(48)
}

/// A scratch directory with a CA in it, made once for this test binary
/// (under the build's own scratch directory, emptied at each run).
fn ca_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-cli");
        let _ = std::fs::remove_dir_all(&dir);
        let made = faultlab::certs::init(&dir, "hostile test CA");
        assert!(made.is_ok(), "{made:?}");
        dir
    })
}

/// Run the binary with `args`: it must end by itself with 0, 1 (refused or
/// failed) or 2 (a usage error), and never say it panicked.
fn answers_without_a_panic(args: &[String]) -> Result<(), TestCaseError> {
    let output = Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .map_err(|error| TestCaseError::fail(format!("cannot start faultlab: {error}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    prop_assert!(
        matches!(output.status.code(), Some(0..=2)),
        "{args:?} ended {:?}: {stderr}",
        output.status
    );
    prop_assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    if output.status.code() != Some(0) {
        prop_assert!(!stderr.trim().is_empty(), "{args:?} failed without a word");
    }
    Ok(())
}

/// Text a user could type: printable or not, but no NUL (which no command
/// line can carry).
fn typed() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "[\\x01-\\x1f\\x7f a-z0-9./-]{0,24}",
        any::<i64>().prop_map(|number| number.to_string()),
        any::<u128>().prop_map(|number| number.to_string()),
        Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn certs_issue_takes_any_name_san_and_days_without_a_panic(
        name in typed(),
        san in typed(),
        days in typed(),
    ) {
        let dir = ca_dir().display().to_string();
        answers_without_a_panic(&[
            "certs".into(), "--dir".into(), dir, "issue".into(), name,
            "--san".into(), san, "--days".into(), days,
        ])?;
    }

    #[test]
    fn check_takes_any_file_and_any_words_without_a_panic(
        contents in prop::collection::vec(any::<u8>(), 0..600),
        word in typed(),
        which in 0usize..5,
    ) {
        let file = ca_dir().join(format!("case-{which}.toml"));
        std::fs::write(&file, &contents)
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        let target = match which {
            0 => file.display().to_string(),
            1 => "/".to_owned(),
            2 => "/dev/null".to_owned(),
            3 => word.clone(),
            _ => ca_dir().display().to_string(),
        };
        answers_without_a_panic(&["check".into(), target, word.clone()])?;
        answers_without_a_panic(&["check".into(), "--".into(), word])?;
    }
}
