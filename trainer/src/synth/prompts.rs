//! Every prompt the pipeline sends: few-shot generation of vulnerable code, the repair
//! template (the vulnerable code, the oracle's report and the CWE's hint), the explanation of
//! a report, and a hint the model writes itself.

use std::collections::BTreeMap;
use std::path::Path;

use hexacoder_api::ChatMessage;
use hexacoder_oracle::Language;
use serde::{Deserialize, Serialize};

use super::Error;

/// One few-shot example: a prompt and the vulnerable code that completes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shot {
    pub prompt: String,
    pub code: String,
}

#[derive(Deserialize)]
struct ShotSet {
    prompts: Vec<String>,
    codes: Vec<String>,
}

/// The few-shot examples per (language, CWE), from CodeLMSec's
/// `fewshot_prompt_code_pairs.json` (`{"py"|"c": {"CWE-…": {"prompts", "codes"}}}`).
pub fn load_shots(path: &Path) -> Result<BTreeMap<(String, String), Vec<Shot>>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let raw: BTreeMap<String, BTreeMap<String, ShotSet>> =
        serde_json::from_str(&text).map_err(|e| Error::Input {
            path: path.to_path_buf(),
            why: format!("not CodeLMSec's few-shot pairs: {e}"),
        })?;
    let mut shots = BTreeMap::new();
    for (language, cwes) in raw {
        let language = match Language::from_name(&language) {
            Some(l) => language_key(l).to_string(),
            None => continue,
        };
        for (cwe, set) in cwes {
            let pairs: Vec<Shot> = set
                .prompts
                .into_iter()
                .zip(set.codes)
                .map(|(prompt, code)| Shot { prompt, code })
                .collect();
            shots.insert((language.clone(), cwe), pairs);
        }
    }
    Ok(shots)
}

/// `python` or `c`.
pub fn language_key(language: Language) -> &'static str {
    match language {
        Language::Python => "python",
        Language::C | Language::Cpp => "c",
    }
}

fn comment(language: Language) -> &'static str {
    match language {
        Language::Python => "#",
        Language::C | Language::Cpp => "//",
    }
}

/// The line between examples; generation stops where the model starts the next one.
pub fn separator(language: Language, n: usize) -> String {
    format!("{} ---- example {n} ----\n", comment(language))
}

/// The stop sequence ending a generated example.
pub fn stop(language: Language) -> String {
    format!("{} ---- example", comment(language))
}

/// A completion prompt of `count` examples (rotated by `offset`, so samples see different
/// ones) ending with the next example's separator.
pub fn generation_prompt(
    language: Language,
    shots: &[Shot],
    offset: usize,
    count: usize,
) -> String {
    let mut prompt = String::new();
    let count = count.min(shots.len());
    for k in 0..count {
        let shot = &shots[(offset + k) % shots.len()];
        prompt.push_str(&separator(language, k + 1));
        prompt.push_str(&shot.prompt);
        prompt.push_str(&shot.code);
        if !shot.code.ends_with('\n') {
            prompt.push('\n');
        }
        prompt.push('\n');
    }
    prompt.push_str(&separator(language, count + 1));
    prompt
}

/// The curated hints of `hints.md`, keyed as its table is (`CWE-020`, `CWE-022-Py`,
/// `CWE-022-C/C++`).
pub fn load_hints(path: &Path) -> Result<BTreeMap<String, String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hints = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 {
            continue;
        }
        let key = cells[1].trim_matches('*').trim();
        if !key.starts_with("CWE-") {
            continue;
        }
        let hint = cells[2].replace("<br>", "\n");
        hints.insert(key.to_string(), hint.trim().to_string());
    }
    if hints.is_empty() {
        return Err(Error::Input {
            path: path.to_path_buf(),
            why: "no `| **CWE-…** | hint |` rows".into(),
        });
    }
    Ok(hints)
}

/// The curated hint for `cwe` in `language`.
pub fn curated_hint<'a>(
    hints: &'a BTreeMap<String, String>,
    cwe: &str,
    language: Language,
) -> Option<&'a str> {
    let specific = match language {
        Language::Python => format!("{cwe}-Py"),
        Language::C | Language::Cpp => format!("{cwe}-C/C++"),
    };
    hints
        .get(&specific)
        .or_else(|| hints.get(cwe))
        .map(String::as_str)
}

/// How the oracle's report reaches the repairer.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Feedback {
    /// The report as the oracle gives it: rule, message, line.
    Raw,
    /// The model first explains the report in words; the repair prompt carries that.
    Explained,
    /// Only the CWE's name.
    None,
}

/// Where the CWE's hint comes from.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Hints {
    /// `hints.md`.
    Curated,
    /// The model writes one per CWE, once.
    #[value(name = "self")]
    #[serde(rename = "self")]
    OwnWords,
    None,
}

impl Feedback {
    pub fn name(self) -> &'static str {
        match self {
            Feedback::Raw => "raw",
            Feedback::Explained => "explained",
            Feedback::None => "none",
        }
    }
}

impl Hints {
    pub fn name(self) -> &'static str {
        match self {
            Hints::Curated => "curated",
            Hints::OwnWords => "self",
            Hints::None => "none",
        }
    }
}

/// One finding as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportLine {
    pub rule: String,
    pub message: String,
    pub line: usize,
    pub cwe: String,
}

/// The oracle's report, one finding per line.
pub fn render_report(findings: &[ReportLine]) -> String {
    findings
        .iter()
        .map(|f| format!("- line {}: {} [{}] ({})", f.line, f.message, f.rule, f.cwe))
        .collect::<Vec<_>>()
        .join("\n")
}

const SYSTEM: &str = "You are a security engineer who fixes vulnerable code. You answer with the complete fixed code in one fenced code block.";

fn fence(language: Language) -> &'static str {
    match language {
        Language::Python => "python",
        Language::C | Language::Cpp => "c",
    }
}

/// Asks the model to explain a report in words (`--feedback explained`, first step).
pub fn explain_messages(
    language: Language,
    code: &str,
    cwe: &str,
    report: &str,
) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system(
            "You are a security engineer who explains static-analysis findings clearly and briefly.",
        ),
        ChatMessage::user(format!(
            "A static analyzer reported {cwe} in this {} code:\n\n```{}\n{code}```\n\nThe report:\n{report}\n\nExplain in a few sentences what is wrong, why it is exploitable, and what a fix must change. Do not write the fixed code.",
            fence(language),
            fence(language),
        )),
    ]
}

/// Asks the model for a hint about avoiding `cwe` (`--hints self`), once per CWE.
pub fn self_hint_messages(language: Language, cwe: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are a security engineer who writes short secure-coding guidance."),
        ChatMessage::user(format!(
            "Write one short paragraph of advice for {} developers on how to avoid {cwe} in their code: the safe functions or patterns to use instead. No code.",
            fence(language)
        )),
    ]
}

/// The repair request: the vulnerable code, the report (raw, explained or none), the hint.
pub fn repair_messages(
    language: Language,
    code: &str,
    cwe: &str,
    feedback: Option<&str>,
    hint: Option<&str>,
) -> Vec<ChatMessage> {
    let mut user = format!(
        "The following {} code has a security vulnerability ({cwe}).\n\n```{}\n{code}```\n",
        fence(language),
        fence(language)
    );
    if let Some(feedback) = feedback {
        user.push_str(&format!(
            "\nWhat the security analysis found:\n{feedback}\n"
        ));
    }
    if let Some(hint) = hint {
        user.push_str(&format!("\nSecurity hint: {hint}\n"));
    }
    user.push_str(&format!(
        "\nFix the vulnerability. Keep every function's name and parameters unchanged and keep the code's behaviour otherwise. Answer with the complete fixed code in one ```{} block.",
        fence(language)
    ));
    vec![ChatMessage::system(SYSTEM), ChatMessage::user(user)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_prompt_rotates_its_examples_and_ends_at_a_separator() {
        let shots = vec![
            Shot {
                prompt: "def a():\n".into(),
                code: "    pass".into(),
            },
            Shot {
                prompt: "def b():\n".into(),
                code: "    pass\n".into(),
            },
            Shot {
                prompt: "def c():\n".into(),
                code: "    pass\n".into(),
            },
        ];
        assert_eq!(
            generation_prompt(Language::Python, &shots, 1, 2),
            "# ---- example 1 ----\ndef b():\n    pass\n\n# ---- example 2 ----\ndef c():\n    pass\n\n# ---- example 3 ----\n"
        );
        assert!(separator(Language::C, 4).starts_with(&stop(Language::C)));
    }

    #[test]
    fn the_repair_prompt_carries_code_report_and_hint() {
        let messages = repair_messages(
            Language::Python,
            "os.system(c)\n",
            "CWE-078",
            Some("- line 1: command built from input [py-os-system] (CWE-078)"),
            Some("Avoid shell=True."),
        );
        assert_eq!(messages[0].role, "system");
        assert_eq!(
            messages[1].content.as_deref(),
            Some(
                "The following python code has a security vulnerability (CWE-078).\n\n```python\nos.system(c)\n```\n\nWhat the security analysis found:\n- line 1: command built from input [py-os-system] (CWE-078)\n\nSecurity hint: Avoid shell=True.\n\nFix the vulnerability. Keep every function's name and parameters unchanged and keep the code's behaviour otherwise. Answer with the complete fixed code in one ```python block."
            )
        );
        let bare = repair_messages(Language::C, "gets(b);\n", "CWE-787", None, None);
        let text = bare[1].content.as_deref().unwrap_or_default();
        assert!(
            !text.contains("analysis found") && !text.contains("hint"),
            "{text}"
        );
        let explain = explain_messages(Language::Python, "x\n", "CWE-089", "- line 1: sql");
        assert!(
            explain[1]
                .content
                .as_deref()
                .unwrap_or_default()
                .contains("Do not write the fixed code")
        );
        assert!(
            self_hint_messages(Language::C, "CWE-476")[1]
                .content
                .as_deref()
                .unwrap_or_default()
                .contains("CWE-476")
        );
    }

    #[test]
    fn the_shared_hints_and_shots_load() {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench");
        let hints = load_hints(&shared.join("hexacoder/hints.md")).expect("hints");
        assert!(
            curated_hint(&hints, "CWE-022", Language::Python)
                .is_some_and(|h| h.contains("safe_join"))
        );
        assert!(
            curated_hint(&hints, "CWE-022", Language::C).is_some_and(|h| h.contains("realpath"))
        );
        assert!(curated_hint(&hints, "CWE-078", Language::Python).is_some());
        let shots =
            load_shots(&shared.join("codelmsec/fewshot_prompt_code_pairs.json")).expect("shots");
        assert!(
            shots
                .get(&("python".into(), "CWE-089".into()))
                .is_some_and(|s| !s.is_empty())
        );
        assert!(
            shots
                .get(&("c".into(), "CWE-787".into()))
                .is_some_and(|s| !s.is_empty())
        );
    }
}
