//! JUnit XML, for CI systems: one test suite per run, one test case per case
//! and binding; `differs` is a failure, `error`, `agent-lost` and `timeout`
//! are errors, `skipped` is skipped.

use super::{RunReport, Verdict};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use std::time::Duration;

/// The run as JUnit XML.
pub fn render(report: &RunReport) -> Result<String, quick_junit::SerializeError> {
    let mut suite = TestSuite::new(format!("faultlab {}", report.suite));
    for case in &report.cases {
        let hosts: Vec<&str> = case.roles.values().map(String::as_str).collect();
        let detail = case
            .reason
            .iter()
            .chain(case.differences.iter())
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        let mut status = match case.verdict {
            Verdict::Expected => TestCaseStatus::success(),
            Verdict::Skipped => TestCaseStatus::skipped(),
            Verdict::Differs => TestCaseStatus::non_success(NonSuccessKind::Failure),
            Verdict::Error | Verdict::AgentLost | Verdict::Timeout => {
                TestCaseStatus::non_success(NonSuccessKind::Error)
            }
        };
        if !detail.is_empty() {
            status.set_message(format!("{}: {detail}", case.verdict.as_str()));
            status.set_type(case.verdict.as_str());
        }
        let mut test = TestCase::new(
            format!("{} {} [{}]", case.id, case.name, hosts.join("→")),
            status,
        );
        test.set_classname(format!("faultlab.{}", case.os_pair.replace('/', "_")));
        test.set_time(Duration::from_millis(case.duration_ms));
        suite.add_test_case(test);
    }
    let mut junit = Report::new("faultlab");
    junit.add_test_suite(suite);
    junit.to_string()
}
