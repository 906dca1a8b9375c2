//! Reading SARIF 2.1.0 logs (flawfinder's and CodeQL's output; our own, in tests) into
//! [`RawReport`]s: the rule, where, what, and the CWE the tool attached, wherever it put it.

use serde_json::Value;

use crate::external::RawReport;
use crate::finding::{Severity, Span, normalize_cwe};

/// Every result in a SARIF log. A log that is not SARIF is an error naming what is missing.
pub(crate) fn parse(text: &str) -> Result<Vec<RawReport>, String> {
    let log: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let runs = log["runs"]
        .as_array()
        .ok_or("not a SARIF log: no `runs` array")?;
    let mut reports = Vec::new();
    for run in runs {
        let driver_rules = run["tool"]["driver"]["rules"].as_array();
        for result in run["results"].as_array().into_iter().flatten() {
            let rule = result["ruleIndex"]
                .as_u64()
                .and_then(|i| driver_rules.and_then(|rules| rules.get(usize::try_from(i).ok()?)))
                .or_else(|| {
                    let id = result["ruleId"].as_str()?;
                    driver_rules?.iter().find(|r| r["id"].as_str() == Some(id))
                });
            let rule_id = result["ruleId"]
                .as_str()
                .or_else(|| rule.and_then(|r| r["id"].as_str()))
                .unwrap_or("unknown")
                .to_string();
            let level = result["level"]
                .as_str()
                .or_else(|| rule.and_then(|r| r["defaultConfiguration"]["level"].as_str()))
                .unwrap_or("warning");
            let location = &result["locations"][0]["physicalLocation"];
            let Some(uri) = location["artifactLocation"]["uri"].as_str() else {
                continue;
            };
            let region = &location["region"];
            let line = |key: &str| region[key].as_u64().map(|v| v as usize);
            let start_line = line("startLine").unwrap_or(1);
            let start_column = line("startColumn").unwrap_or(1);
            reports.push(RawReport {
                path: uri.trim_start_matches("file://").to_string(),
                rule_id,
                message: result["message"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                span: Span {
                    start_line,
                    start_column,
                    end_line: line("endLine").unwrap_or(start_line),
                    end_column: line("endColumn").unwrap_or(start_column),
                },
                severity: match level {
                    "error" => Severity::Error,
                    "warning" => Severity::Warning,
                    _ => Severity::Note,
                },
                cwe: result_cwe(result).or_else(|| rule.and_then(rule_cwe)),
            });
        }
    }
    Ok(reports)
}

/// A CWE the result itself carries: a CWE taxon, or our own `properties.cwe`.
fn result_cwe(result: &Value) -> Option<String> {
    result["taxa"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["toolComponent"]["name"].as_str() == Some("CWE"))
        .find_map(|t| t["id"].as_str().and_then(normalize_cwe))
        .or_else(|| result["properties"]["cwe"].as_str().and_then(normalize_cwe))
}

/// A CWE the rule carries: a relationship to the CWE taxonomy (flawfinder), or a tag
/// `external/cwe/cwe-079` (CodeQL) or `CWE-79`.
fn rule_cwe(rule: &Value) -> Option<String> {
    let related = rule["relationships"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["target"]["toolComponent"]["name"].as_str() == Some("CWE"))
        .find_map(|r| r["target"]["id"].as_str().and_then(normalize_cwe));
    related.or_else(|| {
        rule["properties"]["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|tag| {
                let lower = tag.to_ascii_lowercase();
                let cwe = lower.strip_prefix("external/cwe/").unwrap_or(&lower);
                cwe.starts_with("cwe").then(|| normalize_cwe(cwe)).flatten()
            })
    })
}
