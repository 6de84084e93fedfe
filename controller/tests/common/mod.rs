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
