//! `POST /v1/completions` (OpenAI's legacy completions) and the `hexacoder` extension it
//! carries in requests, choices and responses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A completions request. Fields left `None` are not sent, so the server's defaults apply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Alternatives per position to return; 0 returns the chosen tokens' log-probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hexacoder: Option<HexacoderRequest>,
}

/// One prompt or several.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

impl Default for Prompt {
    fn default() -> Self {
        Prompt::One(String::new())
    }
}

/// The request's `hexacoder` object: HexaCoder's own generation settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HexacoderRequest {
    /// Sample only among the K most likely tokens (0: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// The LoRA adapter to apply (alternative to naming it in `model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Two-step generation: imports first, then code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_step: Option<bool>,
    /// The prompt's language (`python`, `c`, …); detected from its imports when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Tokens step 1 may spend (out of `max_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_step_tokens: Option<u32>,
    /// Drop added imports the completion never uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_unused_imports: Option<bool>,
    /// With `n` > 1, run step 1 once per sample instead of once for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_sample_imports: Option<bool>,
    /// Check candidates with the security oracle and return the most probable clean one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    /// Candidates verification samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<u32>,
    /// End at the first line indented by fewer than this many spaces or tabs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_indent: Option<u32>,
    /// After this long generating, end at the next newline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_max_predict_ms: Option<u64>,
}

/// A completions response.
///
/// Response types declare their fields in alphabetical order: the order the server has
/// always written them in, which `server/tests/golden/wire.txt` pins byte for byte.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub created: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hexacoder: Option<HexacoderResponse>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default)]
    pub system_fingerprint: Option<String>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// One `data:` event of a streamed completion. The last one (with `stream_options.include_usage`)
/// has no choices and carries `usage` and `hexacoder`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionChunk {
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub created: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hexacoder: Option<HexacoderResponse>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One generated text (or, streamed, a piece of one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hexacoder: Option<HexacoderChoice>,
    pub index: u32,
    #[serde(default)]
    pub logprobs: Option<Logprobs>,
    pub text: String,
}

/// OpenAI's legacy log-probabilities, one entry per generated token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Logprobs {
    /// Byte offset of each token in the choice's text.
    #[serde(default)]
    pub text_offset: Vec<usize>,
    /// `null` for an echoed prompt's first token.
    #[serde(default)]
    pub token_logprobs: Vec<Option<f64>>,
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Per token, the most likely alternatives by their text.
    #[serde(default)]
    pub top_logprobs: Option<Vec<Option<BTreeMap<String, f64>>>>,
}

impl Logprobs {
    /// The summed log-probability of the tokens that start before byte `end` of the text.
    pub fn sum_before(&self, end: usize) -> f64 {
        self.token_logprobs
            .iter()
            .zip(self.text_offset.iter().chain(std::iter::repeat(&0)))
            .filter(|&(_, &offset)| offset < end)
            .filter_map(|(lp, _)| *lp)
            .sum()
    }
}

/// Token counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default)]
    pub total_tokens: u64,
}

/// `usage.prompt_tokens_details`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV state was reused.
    #[serde(default)]
    pub cached_tokens: u64,
}

/// A choice's `hexacoder` object: what two-step generation and verification did. Two-step
/// fields are absent on choices that ran one step; a stream's first chunk of a choice has
/// only the two-step fields known before the code (`added_imports`, `imports_edit`,
/// `two_step`, `first_step_skipped`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HexacoderChoice {
    /// Import statements step 1 added and the completion kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_imports: Option<Vec<String>>,
    /// Why step 1 did not run, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_step_skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_step_tokens: Option<u64>,
    /// The kept imports as one edit of the prompt: `null` when there are none (absent when
    /// the choice ran one step; both read as `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imports_edit: Option<Option<TextEdit>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_imports: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_step_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_step: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

impl HexacoderChoice {
    /// The imports edit, if the choice has one.
    pub fn edit(&self) -> Option<&TextEdit> {
        self.imports_edit.as_ref().and_then(Option::as_ref)
    }
}

/// An LSP `TextEdit`: zero-based lines and UTF-16 columns of the original prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextEdit {
    #[serde(rename = "newText")]
    pub new_text: String,
    pub range: Range,
}

/// An LSP range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub end: Position,
    pub start: Position,
}

/// An LSP position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// UTF-16 code units from the line's start.
    pub character: u32,
    pub line: u32,
}

impl TextEdit {
    /// Replaces `start..end`, each `(line, character)`, with `new_text`.
    pub fn new(start: (u32, u32), end: (u32, u32), new_text: impl Into<String>) -> Self {
        let position = |(line, character): (u32, u32)| Position { character, line };
        TextEdit {
            new_text: new_text.into(),
            range: Range {
                end: position(end),
                start: position(start),
            },
        }
    }

    /// `(line, character)` where the replaced text starts.
    pub fn start(&self) -> (u32, u32) {
        (self.range.start.line, self.range.start.character)
    }

    /// `(line, character)` where it ends.
    pub fn end(&self) -> (u32, u32) {
        (self.range.end.line, self.range.end.character)
    }

    /// `text` with this edit applied; `None` when the range is not in `text`.
    pub fn apply(&self, text: &str) -> Option<String> {
        let start = byte_offset(text, self.range.start)?;
        let end = byte_offset(text, self.range.end)?;
        if start > end {
            return None;
        }
        Some(format!(
            "{}{}{}",
            &text[..start],
            self.new_text,
            &text[end..]
        ))
    }
}

/// The byte offset of an LSP position (UTF-16 column) in `text`.
fn byte_offset(text: &str, position: Position) -> Option<usize> {
    let mut line_start = 0;
    for _ in 0..position.line {
        line_start += text[line_start..].find('\n')? + 1;
    }
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let mut units = 0u32;
    for (i, c) in text[line_start..line_end].char_indices() {
        if units >= position.character {
            return (units == position.character).then_some(line_start + i);
        }
        units += c.len_utf16() as u32;
    }
    (units == position.character).then_some(line_end)
}

/// How a verified choice came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationOutcome {
    /// The most probable candidate was clean.
    FirstClean,
    /// A less probable clean candidate replaced it.
    Replaced,
    /// Every candidate had findings; the most probable is returned with them.
    AllFlagged,
    /// No candidate was found clean, and the most probable, returned, could not be analyzed
    /// (its parse ran past the oracle's time budget): it is neither clean nor flagged.
    Unchecked,
}

impl VerificationOutcome {
    /// Its wire name (`first_clean`, `replaced`, `all_flagged`, `unchecked`), also a metrics
    /// label.
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationOutcome::FirstClean => "first_clean",
            VerificationOutcome::Replaced => "replaced",
            VerificationOutcome::AllFlagged => "all_flagged",
            VerificationOutcome::Unchecked => "unchecked",
        }
    }
}

/// A verified choice's `verification` object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    #[serde(default)]
    pub analyzer: Option<String>,
    /// Every candidate, most probable first.
    #[serde(default)]
    pub candidate_summaries: Vec<CandidateSummary>,
    pub candidates: u32,
    /// The sample returned.
    pub chosen: u32,
    /// Its place in the ranking by probability.
    #[serde(default)]
    pub chosen_rank: Option<u32>,
    pub clean_candidates: u32,
    /// The returned candidate's findings.
    #[serde(default)]
    pub findings: Vec<VerifiedFinding>,
    #[serde(default)]
    pub language: Option<String>,
    pub outcome: VerificationOutcome,
    #[serde(default)]
    pub verify_ms: Option<f64>,
}

/// A finding in a verified choice: the oracle's finding, placed in the completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifiedFinding {
    #[serde(default)]
    pub analyzer: Option<String>,
    /// Character offsets `[start, end)` in the completion text.
    #[serde(default)]
    pub completion_range: Option<[usize; 2]>,
    pub cwe: String,
    pub message: String,
    /// The file the analyzer saw.
    #[serde(default)]
    pub path: Option<String>,
    pub rule_id: String,
    #[serde(default)]
    pub severity: Option<String>,
    /// Where, in the analyzed text (one-based lines and columns).
    #[serde(default)]
    pub span: Option<FindingSpan>,
}

/// A finding's place in the analyzed text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingSpan {
    pub end_column: u32,
    pub end_line: u32,
    pub start_column: u32,
    pub start_line: u32,
}

/// One candidate of a verified choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateSummary {
    /// Its findings' CWEs.
    #[serde(default)]
    pub cwes: Vec<String>,
    /// The sum of its tokens' log-probabilities.
    pub logprob: f64,
    pub sample: u32,
    /// Why the oracle could not analyze it; absent when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_analyzed: Option<String>,
}

/// The response's `hexacoder` object: timings and which adapter answered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HexacoderResponse {
    #[serde(default)]
    pub adapter: Option<String>,
    #[serde(default)]
    pub adapter_generation: Option<u64>,
    #[serde(default)]
    pub cached_prompt_tokens: Option<u64>,
    #[serde(default)]
    pub elapsed_ms: Option<f64>,
    #[serde(default)]
    pub time_to_first_token_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_edit_applies_at_utf16_columns() {
        let edit = TextEdit {
            range: Range {
                start: Position {
                    line: 1,
                    character: 2,
                },
                end: Position {
                    line: 1,
                    character: 2,
                },
            },
            new_text: "X".into(),
        };
        assert_eq!(edit.apply("a\n😀b\n").as_deref(), Some("a\n😀Xb\n"));
        let past = TextEdit {
            range: Range {
                start: Position {
                    line: 5,
                    character: 0,
                },
                end: Position {
                    line: 5,
                    character: 0,
                },
            },
            new_text: String::new(),
        };
        assert_eq!(past.apply("a\n"), None);
        let mid_surrogate = TextEdit {
            range: Range {
                start: Position {
                    line: 0,
                    character: 1,
                },
                end: Position {
                    line: 0,
                    character: 1,
                },
            },
            new_text: String::new(),
        };
        assert_eq!(mid_surrogate.apply("😀"), None);
    }

    #[test]
    fn logprobs_sum_only_tokens_before_the_cut() {
        let logprobs = Logprobs {
            tokens: vec!["a".into(), "b".into(), "c".into()],
            token_logprobs: vec![Some(-1.0), Some(-2.0), Some(-4.0)],
            top_logprobs: None,
            text_offset: vec![0, 1, 2],
        };
        assert_eq!(logprobs.sum_before(2), -3.0);
        assert_eq!(logprobs.sum_before(usize::MAX), -7.0);
    }

    #[test]
    fn responses_from_other_servers_parse() {
        // vLLM-shaped: extra fields, prompt_logprobs, no hexacoder.
        let body = r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m",
            "choices":[{"index":0,"text":"x","logprobs":null,"finish_reason":"length",
            "stop_reason":null,"prompt_logprobs":null}],
            "usage":{"prompt_tokens":1,"total_tokens":2,"completion_tokens":1,"prompt_tokens_details":null},
            "kv_transfer_params":null}"#;
        let response: CompletionResponse = serde_json::from_str(body).expect("parses");
        assert_eq!(response.choices[0].text, "x");
        let request = CompletionRequest {
            prompt: Prompt::One("p".into()),
            max_tokens: Some(3),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&request).expect("serializes"),
            r#"{"prompt":"p","max_tokens":3}"#
        );
    }
}
