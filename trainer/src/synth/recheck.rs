//! Whether a repair counts: it parses, the oracle no longer finds the target CWE, it calls no
//! standard-library name that does not exist, it runs no command line as one program name,
//! it brings no CWE the vulnerable code did not have, and it keeps the functions' signatures.

use std::collections::BTreeSet;

use hexacoder_oracle::Language;
use regex::Regex;
use serde::{Deserialize, Serialize};

/// Why a repair was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    /// No usable code in the answer.
    NoCode { why: String },
    /// The code does not parse or compile.
    Unparsable { error: String },
    /// The oracle still finds the target CWE.
    StillFlagged,
    /// It uses standard-library names that do not exist (it would raise when run).
    UnknownNames { names: Vec<String> },
    /// It passes a whole command line to `subprocess` without a shell: safe, and it runs no
    /// command with arguments.
    CommandLineWithoutShell { calls: Vec<String> },
    /// The oracle finds a CWE the vulnerable code did not have.
    NewCwe { cwes: Vec<String> },
    /// A function of the vulnerable code is gone or has other parameters.
    SignatureChanged { missing: Vec<String> },
    /// Most of the code is gone: deleting the vulnerable lines is not a repair.
    Gutted { kept_percent: usize },
    /// The request failed for good.
    RequestFailed { error: String },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NoCode { why } => write!(f, "{why}"),
            Rejection::Unparsable { error } => write!(f, "does not parse: {error}"),
            Rejection::StillFlagged => write!(f, "still flagged for the target CWE"),
            Rejection::UnknownNames { names } => {
                write!(
                    f,
                    "uses names its modules do not define: {}",
                    names.join(", ")
                )
            }
            Rejection::CommandLineWithoutShell { calls } => write!(
                f,
                "runs a whole command line as one program name, without a shell: {}",
                calls.join("; ")
            ),
            Rejection::NewCwe { cwes } => write!(f, "brings new weaknesses: {}", cwes.join(", ")),
            Rejection::SignatureChanged { missing } => {
                write!(f, "changed or dropped: {}", missing.join("; "))
            }
            Rejection::Gutted { kept_percent } => {
                write!(f, "keeps only {kept_percent}% of the code")
            }
            Rejection::RequestFailed { error } => write!(f, "request failed: {error}"),
        }
    }
}

/// The functions defined in `code`, as `name(parameters)` with whitespace normalized.
pub fn signatures(language: Language, code: &str) -> BTreeSet<String> {
    static PYTHON: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    static C: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let regex = match language {
        Language::Python => PYTHON.get_or_init(|| {
            Regex::new(r"(?m)^[ \t]*(?:async[ \t]+)?def[ \t]+(\w+)[ \t]*\(([^)]*)\)")
                .unwrap_or_else(|e| panic!("a valid regex: {e}"))
        }),
        Language::C | Language::Cpp => C.get_or_init(|| {
            Regex::new(r"(?m)^[A-Za-z_][\w \t\*]*?\b(\w+)[ \t]*\(([^;{)]*)\)[ \t\r\n]*\{")
                .unwrap_or_else(|e| panic!("a valid regex: {e}"))
        }),
    };
    regex
        .captures_iter(code)
        .filter(|c| !matches!(&c[1], "if" | "while" | "for" | "switch" | "return"))
        .map(|c| {
            let params: Vec<String> = c[2]
                .split(',')
                .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            format!("{}({})", &c[1], params.join(", "))
        })
        .collect()
}

/// A repair must keep at least this share of the vulnerable code's tokens.
pub const MIN_KEPT: f64 = 0.6;

fn token_count(code: &str) -> usize {
    super::dedup::normalize(code)
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|t| !t.is_empty())
        .count()
}

/// What the checks found on one version of the code.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Findings {
    pub parses: bool,
    pub parse_error: Option<String>,
    /// The target CWE (or its family) is found.
    pub flagged: bool,
    pub cwes: BTreeSet<String>,
    /// Standard-library names it uses that do not exist (`Compilers::unknown_names`);
    /// absent from caches written before the rule.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub unknown_names: BTreeSet<String>,
    /// `subprocess` calls that run a command line without a shell
    /// (`Compilers::string_commands`); absent from caches written before the rule.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub string_commands: BTreeSet<String>,
}

/// Applies the rules to a repair, given the checks on the vulnerable code and on the repair.
pub fn judge(
    language: Language,
    vulnerable: &str,
    vulnerable_findings: &Findings,
    fixed: &str,
    fixed_findings: &Findings,
) -> Result<(), Rejection> {
    if !fixed_findings.parses {
        return Err(Rejection::Unparsable {
            error: fixed_findings.parse_error.clone().unwrap_or_default(),
        });
    }
    if fixed_findings.flagged {
        return Err(Rejection::StillFlagged);
    }
    // What the repair brings that the vulnerable code did not have.
    let added = |fixed: &BTreeSet<String>, vulnerable: &BTreeSet<String>| -> Vec<String> {
        fixed.difference(vulnerable).cloned().collect()
    };
    let unknown = added(
        &fixed_findings.unknown_names,
        &vulnerable_findings.unknown_names,
    );
    if !unknown.is_empty() {
        return Err(Rejection::UnknownNames { names: unknown });
    }
    let calls = added(
        &fixed_findings.string_commands,
        &vulnerable_findings.string_commands,
    );
    if !calls.is_empty() {
        return Err(Rejection::CommandLineWithoutShell { calls });
    }
    let new = added(&fixed_findings.cwes, &vulnerable_findings.cwes);
    if !new.is_empty() {
        return Err(Rejection::NewCwe { cwes: new });
    }
    let kept = signatures(language, fixed);
    let missing: Vec<String> = signatures(language, vulnerable)
        .into_iter()
        .filter(|s| !kept.contains(s))
        .collect();
    if !missing.is_empty() {
        return Err(Rejection::SignatureChanged { missing });
    }
    let before = token_count(vulnerable).max(1);
    let kept = token_count(fixed) as f64 / before as f64;
    if kept < MIN_KEPT {
        return Err(Rejection::Gutted {
            kept_percent: (kept * 100.0).round() as usize,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(parses: bool, flagged: bool, cwes: &[&str]) -> Findings {
        Findings {
            parses,
            parse_error: (!parses).then(|| "SyntaxError".to_string()),
            flagged,
            cwes: cwes.iter().map(|c| c.to_string()).collect(),
            unknown_names: Default::default(),
            string_commands: Default::default(),
        }
    }

    const VULNERABLE: &str = "import os\n\ndef run(cmd,  user):\n    os.system(cmd)\n";

    #[test]
    fn a_clean_repair_that_keeps_the_signature_counts() {
        let fixed = "import subprocess\n\ndef run(cmd, user):\n    subprocess.run([cmd])\n\ndef helper():\n    pass\n";
        assert_eq!(
            judge(
                Language::Python,
                VULNERABLE,
                &findings(true, true, &["CWE-078"]),
                fixed,
                &findings(true, false, &[])
            ),
            Ok(())
        );
    }

    #[test]
    fn each_rule_rejects_what_it_should() {
        let vulnerable = findings(true, true, &["CWE-078"]);
        let judge_fixed =
            |fixed: &str, f: Findings| judge(Language::Python, VULNERABLE, &vulnerable, fixed, &f);
        assert!(matches!(
            judge_fixed(VULNERABLE, findings(true, true, &["CWE-078"])),
            Err(Rejection::StillFlagged)
        ));
        assert_eq!(
            judge_fixed(
                "def run(cmd, user):\n    eval(cmd)\n",
                findings(true, false, &["CWE-094"])
            ),
            Err(Rejection::NewCwe {
                cwes: vec!["CWE-094".into()]
            })
        );
        let mut hallucinated = findings(true, false, &[]);
        hallucinated.unknown_names = ["subprocess.listescape".to_string()].into();
        assert_eq!(
            judge_fixed(
                "import subprocess\n\ndef run(cmd, user):\n    subprocess.run(subprocess.listescape(cmd))\n",
                hallucinated
            ),
            Err(Rejection::UnknownNames {
                names: vec!["subprocess.listescape".into()]
            })
        );
        let shell_less = "import subprocess\n\ndef run(cmd, user):\n    subprocess.run(f'sh -c {cmd}', shell=False)\n";
        let mut not_run = findings(true, false, &[]);
        not_run.string_commands =
            ["subprocess.run(f'sh -c {cmd}', shell=False)".to_string()].into();
        assert_eq!(
            judge_fixed(shell_less, not_run),
            Err(Rejection::CommandLineWithoutShell {
                calls: vec!["subprocess.run(f'sh -c {cmd}', shell=False)".into()]
            })
        );
        assert!(matches!(
            judge_fixed("def run(cmd:\n", findings(false, false, &[])),
            Err(Rejection::Unparsable { .. })
        ));
        assert_eq!(
            judge_fixed(
                "def run(cmd, user):\n    pass\n",
                findings(true, false, &[])
            ),
            Err(Rejection::Gutted { kept_percent: 56 })
        );
        assert_eq!(
            judge_fixed("def run(command):\n    pass\n", findings(true, false, &[])),
            Err(Rejection::SignatureChanged {
                missing: vec!["run(cmd, user)".into()]
            })
        );
    }

    #[test]
    fn c_signatures_are_found_and_control_flow_is_not_one() {
        let code = "#include <stdio.h>\nstatic int add(int a,\n    int b) {\n    if (a) {\n        return a;\n    }\n    return a + b;\n}\nint main(void)\n{\n    return add(1, 2);\n}\n";
        let found = signatures(Language::C, code);
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            vec!["add(int a, int b)".to_string(), "main(void)".to_string()]
        );
    }
}
