//! Hostile scenario files: whatever the bytes, the parser answers with a
//! scenario or with errors that point inside the file, and never panics.
//! Bounded for CI (PROPTEST_CASES raises it for longer runs).

use faultlab::scenario::{self, ScenarioErrors};
use faultlab::suites;
use proptest::prelude::*;

fn every_seed_file() -> Vec<String> {
    [
        "a1-linger-abort",
        "c3-close-with-unread-data",
        "s4-kill-while-sending",
        "f2-connect-to-isolated",
    ]
    .iter()
    .filter_map(|name| std::fs::read_to_string(format!("suites/seed/{name}.toml")).ok())
    .collect()
}

fn check(text: &str) {
    match scenario::parse("hostile.toml", text) {
        // Whatever parses keeps the validator's promises.
        Ok(parsed) => {
            assert!(!parsed.roles.is_empty());
            for step in &parsed.steps {
                if let Some(role) = &step.role {
                    assert!(parsed.roles.contains(role), "{role} is not a declared role");
                }
            }
        }
        Err(ScenarioErrors(errors)) => {
            assert!(!errors.is_empty(), "an error result must say something");
            let lines = text.lines().count().max(1) + 1;
            for error in errors {
                assert!(
                    error.line >= 1 && error.line <= lines,
                    "{error} (file has {lines} lines)"
                );
                assert!(error.column >= 1, "{error}");
                assert!(!error.message.is_empty());
            }
        }
    }
}

/// Field names of a scenario's header and steps, and some that are none.
const FIELDS: &[&str] = &[
    "id",
    "name",
    "title",
    "seed",
    "roles",
    "needs",
    "timeout_ms",
    "application",
    "role",
    "do",
    "as",
    "to",
    "conn",
    "bytes",
    "ms",
    "deadline_ms",
    "mode",
    "direction",
    "loss",
    "delay_ms",
    "expect",
    "since",
    "options",
    "messages",
    "at",
    "timeout",
    "bogus",
    "step",
];

/// 256 cases in CI; `PROPTEST_CASES` for longer runs.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(text in "\\PC{0,400}") {
        check(&text);
    }

    #[test]
    fn a_real_scenario_cut_anywhere_never_panics(cut in 0usize..4000, which in 0usize..4) {
        let files = every_seed_file();
        prop_assume!(!files.is_empty());
        let text = &files[which % files.len()];
        let mut end = cut.min(text.len());
        while !text.is_char_boundary(end) { end -= 1; }
        check(&text[..end]);
    }

    #[test]
    fn a_real_scenario_with_a_line_replaced_never_panics(
        line in 0usize..80,
        replacement in "[a-z_.\\[\\]= \"{}0-9-]{0,40}",
        which in 0usize..4,
    ) {
        let files = every_seed_file();
        prop_assume!(!files.is_empty());
        let text = &files[which % files.len()];
        let mutated: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(index, original)| if index == line { replacement.clone() } else { original.to_owned() })
            .collect();
        check(&mutated.join("\n"));
    }

    #[test]
    fn a_field_of_any_value_anywhere_is_refused_at_its_field_and_line(
        line in 0usize..80,
        key in prop::sample::select(FIELDS),
        value in prop_oneof![
            any::<i64>().prop_map(|number| number.to_string()),
            "\\PC{0,12}".prop_map(|text| format!("{text:?}")),
            Just("-1".to_owned()),
            Just("1e99".to_owned()),
            Just("true".to_owned()),
            Just("[1, \"x\"]".to_owned()),
            Just("{ x = 1 }".to_owned()),
        ],
        which in 0usize..4,
    ) {
        let files = every_seed_file();
        prop_assume!(!files.is_empty());
        let text = &files[which % files.len()];
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let at = line.min(lines.len());
        lines.insert(at, format!("{key} = {value}"));
        let mutated = lines.join("\n");
        // Only well-formed TOML: a syntax error has no field to name.
        prop_assume!(mutated.parse::<toml::Table>().is_ok());
        if let Err(ScenarioErrors(errors)) = scenario::parse("hostile.toml", &mutated) {
            for error in errors {
                prop_assert!(
                    !error.field.is_empty() && error.field != "(file)",
                    "{error}: names no field ({key} = {value} at line {})", at + 1
                );
                prop_assert!(error.line >= 1 && error.line <= lines.len() + 1, "{error}");
            }
        }
    }

    #[test]
    fn absurd_numbers_are_refused_or_kept_never_wrapped(
        count in any::<i64>(),
        size in any::<i64>(),
        timeout in any::<i64>(),
    ) {
        let text = format!(
            "id = \"X\"\nname = \"x\"\ntitle = \"x\"\nroles = [\"c\", \"s\"]\n\n[[step]]\nrole = \"s\"\ndo = \"listen\"\nas = \"l\"\n\n[[step]]\nrole = \"c\"\ndo = \"connect\"\nto = \"l\"\nas = \"k\"\ntimeout_ms = {timeout}\n\n[[step]]\nrole = \"c\"\ndo = \"send\"\nconn = \"k\"\nmessages = {{ count = {count}, size = {size} }}\n"
        );
        check(&text);
    }
}

#[test]
fn the_built_in_suite_still_parses() {
    let parsed = suites::load("seed").map(|suite| suite.map(|cases| cases.len()));
    assert!(matches!(parsed, Some(Ok(15))), "{parsed:?}");
}
