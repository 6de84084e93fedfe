//! `faultlab cases`: the cases of the built-in suites.

use super::say;
use faultlab::suites;
use std::io::Write;

/// Print each suite's cases with what they need.
pub fn cases() -> anyhow::Result<bool> {
    for name in suites::NAMES {
        let scenarios = suites::load(name).unwrap_or(Ok(Vec::new()))?;
        say!("suite {name}:");
        for case in scenarios {
            let mut needs = case.needs.clone();
            if let Some(role) = &case.application {
                needs.push(format!("an application as {role}"));
            }
            let needs = if needs.is_empty() {
                String::new()
            } else {
                format!("  (needs {})", needs.join(", "))
            };
            say!("  {:<4} {:<30} {}{needs}", case.id, case.name, case.title);
        }
    }
    Ok(true)
}
