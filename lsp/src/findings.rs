//! The security oracle's findings on accepted suggestions, kept per document as the text they
//! flag (so they follow edits) and published as diagnostics with CWE codes.

use hexacoder_api::VerifiedFinding;

use crate::client::Completion;
use crate::document::{Document, PositionEncoding};
use crate::lsp_types::{Code, CodeDescription, Diagnostic, DiagnosticSeverity, Range, Uri};

/// One diagnostic, anchored to the text it flags.
#[derive(Clone, Debug, PartialEq)]
pub struct Flagged {
    /// The flagged text as it was inserted.
    pub snippet: String,
    /// Byte offset of the snippet the last time it was found.
    pub start: usize,
    /// How the editor shows it.
    pub severity: DiagnosticSeverity,
    /// `CWE-094` style; the diagnostic's code.
    pub cwe: Option<String>,
    /// What the oracle said, with its rule id.
    pub message: String,
}

/// Where `inserted` begins in `text`: the occurrence nearest `near` (the request's cursor;
/// popup items start at the word being typed, before it).
pub fn locate(text: &str, inserted: &str, near: usize) -> Option<usize> {
    if inserted.is_empty() {
        return None;
    }
    text.match_indices(inserted)
        .map(|(i, _)| i)
        .min_by_key(|&i| i.abs_diff(near))
}

/// The findings of an accepted `completion`, whose text `inserted` now starts at byte `at` of
/// `text`. A suggestion that replaced more probable flagged ones gets a note saying so.
pub fn flag_accepted(
    completion: &Completion,
    inserted: &str,
    at: usize,
    text: &str,
) -> Vec<Flagged> {
    let Some(verification) = &completion.verification else {
        return Vec::new();
    };
    let mut flagged: Vec<Flagged> = verification
        .findings
        .iter()
        .filter_map(|finding| flag_one(finding, inserted, at, text))
        .collect();
    if !verification.replaced_cwes.is_empty() && verification.findings.is_empty() {
        let first_line = inserted
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or(inserted);
        let start = at + inserted.find(first_line).unwrap_or(0);
        flagged.push(Flagged {
            snippet: first_line.to_string(),
            start,
            severity: DiagnosticSeverity::Information,
            cwe: None,
            message: format!(
                "HexaCoder checked this suggestion: it replaced a more probable one the security oracle flagged ({}).",
                verification.replaced_cwes.join(", ")
            ),
        });
    }
    flagged
}

fn flag_one(finding: &VerifiedFinding, inserted: &str, at: usize, text: &str) -> Option<Flagged> {
    let byte_of = |chars: usize| {
        inserted
            .char_indices()
            .nth(chars)
            .map_or(inserted.len(), |(i, _)| i)
    };
    // A finding without a place in the completion is placed at its start.
    let [first, last] = finding.completion_range.unwrap_or([0, 0]);
    let (start, end) = (byte_of(first), byte_of(last));
    // A finding that lies wholly in the prompt's part of the checked text has an empty range
    // at the completion's start; flag the completion's first line instead.
    let (start, end) = if start < end {
        (start, end)
    } else {
        (
            start,
            inserted[start..]
                .find('\n')
                .map_or(inserted.len(), |n| start + n),
        )
    };
    let snippet = text.get(at + start..at + end)?.to_string();
    if snippet.trim().is_empty() {
        return None;
    }
    Some(Flagged {
        snippet,
        start: at + start,
        severity: match finding.severity.as_deref().unwrap_or("error") {
            "error" => DiagnosticSeverity::Error,
            "warning" => DiagnosticSeverity::Warning,
            _ => DiagnosticSeverity::Information,
        },
        cwe: Some(finding.cwe.clone()),
        message: format!("{} [{}]", finding.message, finding.rule_id),
    })
}

/// Follows the flagged snippets through an edit: each moves to its nearest occurrence, and a
/// snippet that is gone (the user changed or deleted it) is dropped. Whether anything moved.
pub fn follow(flagged: &mut Vec<Flagged>, text: &str) -> bool {
    let before = flagged.clone();
    flagged.retain_mut(|f| match locate(text, &f.snippet, f.start) {
        Some(start) => {
            f.start = start;
            true
        }
        None => false,
    });
    *flagged != before
}

/// The diagnostics for `flagged` in `doc`.
pub fn diagnostics(
    flagged: &[Flagged],
    doc: &Document,
    encoding: PositionEncoding,
) -> Vec<Diagnostic> {
    flagged
        .iter()
        .filter(|f| doc.text().get(f.start..f.start + f.snippet.len()) == Some(f.snippet.as_str()))
        .map(|f| Diagnostic {
            range: Range {
                start: doc.position(f.start, encoding),
                end: doc.position(f.start + f.snippet.len(), encoding),
            },
            severity: Some(f.severity),
            code: f.cwe.clone().map(Code::String),
            code_description: f.cwe.as_deref().and_then(cwe_link),
            source: Some("hexacoder".into()),
            message: f.message.clone().into(),
            ..Diagnostic::default()
        })
        .collect()
}

fn cwe_link(cwe: &str) -> Option<CodeDescription> {
    let number = cwe.trim_start_matches("CWE-").trim_start_matches('0');
    let href = Uri::from(format!(
        "https://cwe.mitre.org/data/definitions/{number}.html"
    ));
    Some(CodeDescription { href })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_follow_edits_and_vanish_when_changed() {
        let mut flagged = vec![Flagged {
            snippet: "eval(d)".into(),
            start: 20,
            severity: DiagnosticSeverity::Error,
            cwe: Some("CWE-094".into()),
            message: "m".into(),
        }];
        let text = "def f(d):\n    return eval(d)\n";
        assert!(follow(&mut flagged, text));
        assert_eq!(flagged[0].start, text.find("eval").expect("eval"));
        assert!(!follow(&mut flagged, text));
        let moved = format!("import os\n{text}");
        assert!(follow(&mut flagged, &moved));
        assert_eq!(flagged[0].start, moved.find("eval").expect("eval"));
        assert!(follow(&mut flagged, "def f(d):\n    return int(d)\n"));
        assert!(flagged.is_empty());
    }

    #[test]
    fn the_nearest_occurrence_is_the_inserted_one() {
        let text = "x = eval(d)\ny = 1\nz = eval(d)\n";
        assert_eq!(locate(text, "eval(d)", 22), Some(22));
        assert_eq!(locate(text, "eval(d)", 0), Some(4));
        assert_eq!(locate(text, "", 0), None);
    }
}
