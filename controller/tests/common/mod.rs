//! Shared by the controller's test binaries.

#![allow(dead_code, missing_docs)]

/// Check a JSON report against `controller/schema/run.schema.json`; the
/// problems found, each with where it is.
pub fn schema_problems(
    report: &serde_json::Value,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schema/run.schema.json"))?;
    let validator = jsonschema::validator_for(&schema)?;
    Ok(validator
        .iter_errors(report)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect())
}

/// Run the `faultlab` binary of this build with its history in `history`.
pub fn faultlab(args: &[&str], history: &std::path::Path) -> std::io::Result<std::process::Output> {
    std::process::Command::new(env!("CARGO_BIN_EXE_faultlab"))
        .args(args)
        .env("FAULTLAB_HISTORY", history)
        .output()
}

/// The cases of a JSON report that did not come out `expected`, with why.
pub fn not_expected(report: &serde_json::Value) -> Vec<String> {
    report["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|case| case["verdict"] != "expected")
        .map(|case| {
            format!(
                "{} {} {} {}",
                case["id"], case["verdict"], case["reason"], case["differences"]
            )
        })
        .collect()
}
