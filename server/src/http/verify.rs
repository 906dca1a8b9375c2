//! Verify mode (`{"hexacoder": {"verify": true, "candidates": k}}`): sample k candidates from
//! one prefill, check each in context (prompt, completion, suffix) with the oracle's embedded
//! analyzer, and return the most probable candidate without findings; if every candidate has
//! findings, the most probable one with its findings attached.

use std::time::Instant;

use hexacoder_api as api;
use hexacoder_engine::{Generation, Sample};
use hexacoder_oracle::{EmbeddedAnalyzer, Finding, Language, ScanError};

use super::AppState;
use super::error::ApiError;
use super::params::Extension;
use super::params::MAX_N;

/// Candidates when a request asks for verification without saying how many.
pub const DEFAULT_CANDIDATES: usize = 4;

/// A request's verification settings.
#[derive(Clone, Copy, Debug)]
pub struct VerifySettings {
    pub candidates: usize,
    /// The language the request named; else each prompt's is detected from its imports.
    pub language: Option<Language>,
}

/// Whether and how a request verifies. Verification answers with one choice per prompt after
/// every candidate is complete, so it does not combine with `n` > 1 or streaming.
pub fn resolve(
    extension: &Extension,
    n: usize,
    stream: bool,
) -> Result<Option<VerifySettings>, ApiError> {
    if !extension.verify.unwrap_or(false) {
        if extension.candidates.is_some() {
            return Err(ApiError::bad_param(
                "hexacoder.candidates",
                "`candidates` only applies with `\"verify\": true`.",
            ));
        }
        return Ok(None);
    }
    let candidates = extension.candidates.unwrap_or(DEFAULT_CANDIDATES);
    if !(1..=MAX_N).contains(&candidates) {
        return Err(ApiError::bad_param(
            "hexacoder.candidates",
            format!("`candidates` must be between 1 and {MAX_N}, got {candidates}."),
        ));
    }
    if n != 1 {
        return Err(ApiError::bad_param(
            "n",
            "With `hexacoder.verify` the server returns one checked choice per prompt; leave `n` out and set `hexacoder.candidates`.",
        ));
    }
    if stream {
        return Err(ApiError::bad_param(
            "stream",
            "`hexacoder.verify` checks whole candidates before answering, so it cannot stream; set `stream` to false.",
        ));
    }
    let language = match extension.language.as_deref() {
        None => None,
        Some(name) => Some(oracle_language(name).ok_or_else(|| {
            ApiError::bad_param(
                "hexacoder.language",
                format!("Verification checks python, c and cpp code, not {name:?}."),
            )
        })?),
    };
    Ok(Some(VerifySettings {
        candidates,
        language,
    }))
}

fn oracle_language(name: &str) -> Option<Language> {
    Language::from_name(name)
}

/// The language to check `prompt` as: the request's, or the one its imports show.
pub fn language_of(settings: &VerifySettings, prompt: &str) -> Result<Language, ApiError> {
    if let Some(language) = settings.language {
        return Ok(language);
    }
    use hexacoder_two_step::Language as Detected;
    let detected = match Detected::detect(prompt) {
        Some(Detected::Python) => Some(Language::Python),
        Some(Detected::C) => Some(Language::C),
        Some(Detected::Cpp) => Some(Language::Cpp),
        _ => None,
    };
    detected
        .ok_or_else(|| {
            ApiError::bad_param(
                "hexacoder.language",
                "Verification checks python, c and cpp code and could not tell the prompt's language from its imports: set `hexacoder.language`.",
            )
        })
}

/// A finding in a candidate, with where it lies in the completion text.
#[derive(Clone, Debug)]
pub struct Located {
    pub finding: Finding,
    /// Character offsets `[start, end)` in the completion (clamped to it), so that a client
    /// can place the finding where it inserted the completion.
    pub completion_range: [usize; 2],
}

/// One prompt's candidates, checked.
pub struct Verified {
    /// The sample returned.
    pub chosen: usize,
    /// Per candidate, in sample order: its findings inside the completion.
    pub findings: Vec<Vec<Located>>,
    /// Per candidate: why the oracle could not analyze it (then it has no findings but is not
    /// clean either).
    pub not_analyzed: Vec<Option<String>>,
    /// Per candidate: the sum of its tokens' log-probabilities.
    pub logprobs: Vec<f64>,
    /// Ranks candidates by probability, most probable first.
    pub ranking: Vec<usize>,
    pub language: Language,
    pub elapsed_ms: f64,
}

impl Verified {
    /// How the choice came about: the most probable candidate was clean, a less probable
    /// clean one replaced it, or every candidate had findings.
    pub fn outcome(&self) -> api::VerificationOutcome {
        if self.not_analyzed[self.chosen].is_some() {
            api::VerificationOutcome::Unchecked
        } else if !self.findings[self.chosen].is_empty() {
            api::VerificationOutcome::AllFlagged
        } else if self.ranking.first() == Some(&self.chosen) {
            api::VerificationOutcome::FirstClean
        } else {
            api::VerificationOutcome::Replaced
        }
    }

    /// Whether candidate `i` was analyzed and has no findings.
    fn is_clean(&self, i: usize) -> bool {
        self.not_analyzed[i].is_none() && self.findings[i].is_empty()
    }

    /// The choice's `hexacoder.verification` object.
    pub fn wire(&self) -> api::Verification {
        api::Verification {
            analyzer: Some("embedded".into()),
            candidate_summaries: self
                .ranking
                .iter()
                .map(|&i| api::CandidateSummary {
                    cwes: self.findings[i]
                        .iter()
                        .map(|f| f.finding.cwe.clone())
                        .collect(),
                    logprob: self.logprobs[i],
                    sample: i as u32,
                    not_analyzed: self.not_analyzed[i].clone(),
                })
                .collect(),
            candidates: self.findings.len() as u32,
            chosen: self.chosen as u32,
            chosen_rank: self
                .ranking
                .iter()
                .position(|&i| i == self.chosen)
                .map(|r| r as u32),
            clean_candidates: (0..self.findings.len())
                .filter(|&i| self.is_clean(i))
                .count() as u32,
            findings: self.findings[self.chosen]
                .iter()
                .map(Located::wire)
                .collect(),
            language: Some(self.language.extension().to_string()),
            outcome: self.outcome(),
            verify_ms: Some(self.elapsed_ms),
        }
    }
}

impl Located {
    fn wire(&self) -> api::VerifiedFinding {
        let finding = &self.finding;
        api::VerifiedFinding {
            analyzer: Some(finding.analyzer.clone()),
            completion_range: Some(self.completion_range),
            cwe: finding.cwe.clone(),
            message: finding.message.clone(),
            path: Some(finding.path.clone()),
            rule_id: finding.rule_id.clone(),
            severity: Some(finding.severity.sarif_level().to_string()),
            span: Some(api::FindingSpan {
                end_column: finding.span.end_column as u32,
                end_line: finding.span.end_line as u32,
                start_column: finding.span.start_column as u32,
                start_line: finding.span.start_line as u32,
            }),
        }
    }
}

/// Checks every sample of `generation` as `context` + sample text + `suffix`, where `contexts`
/// gives each sample's context (two-step samples may each have their own imports).
pub fn check(
    analyzer: &EmbeddedAnalyzer,
    language: Language,
    generation: &Generation,
    contexts: &[&str],
    suffix: &str,
) -> Verified {
    let started = Instant::now();
    let mut findings = Vec::with_capacity(generation.samples.len());
    let mut not_analyzed = Vec::with_capacity(generation.samples.len());
    let mut logprobs: Vec<f64> = Vec::with_capacity(generation.samples.len());
    for (i, sample) in generation.samples.iter().enumerate() {
        let context = contexts.get(i).copied().unwrap_or_default();
        match check_sample(analyzer, language, context, sample, suffix) {
            Ok(located) => {
                findings.push(located);
                not_analyzed.push(None);
            }
            Err(error) => {
                findings.push(Vec::new());
                not_analyzed.push(Some(error.to_string()));
            }
        }
        logprobs.push(sample.tokens.iter().map(|t| f64::from(t.logprob)).sum());
    }
    let mut ranking: Vec<usize> = (0..logprobs.len()).collect();
    ranking.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]).then(a.cmp(&b)));
    let chosen = ranking
        .iter()
        .copied()
        .find(|&i| not_analyzed[i].is_none() && findings[i].is_empty())
        .or_else(|| ranking.first().copied())
        .unwrap_or(0);
    Verified {
        chosen,
        findings,
        not_analyzed,
        logprobs,
        ranking,
        language,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    }
}

/// The findings that touch the completion: weaknesses already in the prompt are the user's
/// code, not the model's, and would flag every candidate alike.
fn check_sample(
    analyzer: &EmbeddedAnalyzer,
    language: Language,
    context: &str,
    sample: &Sample,
    suffix: &str,
) -> Result<Vec<Located>, ScanError> {
    let text = format!("{context}{}{suffix}", sample.text);
    let start = position(context);
    let end = position(&format!("{context}{}", sample.text));
    let context_chars = context.chars().count();
    let completion_chars = sample.text.chars().count();
    // Character offset of each line's start, to turn (line, column) into an offset.
    let mut line_starts = vec![0];
    for (i, c) in text.chars().enumerate() {
        if c == '\n' {
            line_starts.push(i + 1);
        }
    }
    let offset = |line: usize, column: usize| {
        let line_start = line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        (line_start + column.saturating_sub(1))
            .saturating_sub(context_chars)
            .min(completion_chars)
    };
    Ok(analyzer
        .scan(language, "completion", &text)?
        .into_iter()
        .filter(|f| {
            let finding_start = (f.span.start_line, f.span.start_column);
            let finding_end = (f.span.end_line, f.span.end_column);
            finding_end > start && finding_start < end
        })
        .map(|finding| Located {
            completion_range: [
                offset(finding.span.start_line, finding.span.start_column),
                offset(finding.span.end_line, finding.span.end_column),
            ],
            finding,
        })
        .collect())
}

/// The 1-based (line, column in characters) just after `text`, as findings count them.
fn position(text: &str) -> (usize, usize) {
    let line = text.matches('\n').count() + 1;
    let last = text.rsplit('\n').next().unwrap_or_default();
    (line, last.chars().count() + 1)
}

/// Records a verified prompt in the metrics.
pub fn observe(state: &AppState, verified: &Verified, mode: &str) {
    let metrics = &state.metrics;
    metrics
        .verify_requests
        .with_label_values(&[verified.outcome().as_str()])
        .inc();
    metrics.verify_seconds.observe(verified.elapsed_ms / 1e3);
    for located in verified.findings.iter().flatten() {
        metrics
            .oracle_findings
            .with_label_values(&[located.finding.cwe.as_str(), mode])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hexacoder_engine::{FinishReason, GeneratedToken};

    use super::*;

    fn sample(text: &str, logprob: f32) -> Sample {
        Sample {
            text: text.to_string(),
            tokens: vec![GeneratedToken {
                id: 0,
                logprob,
                top: Vec::new(),
            }],
            finish_reason: FinishReason::Length,
            stop_string: None,
            cumulative_logprob: f64::from(logprob),
        }
    }

    fn generation(samples: Vec<Sample>) -> Generation {
        Generation {
            samples,
            prompt_tokens: Vec::new(),
            cached_prompt_tokens: 0,
            time_to_first_token: Duration::ZERO,
            elapsed: Duration::ZERO,
        }
    }

    const CONTEXT: &str = "#include <stdlib.h>\nint *zero(void) {\n";
    const FLAGGED: &str = "    int *p = malloc(sizeof *p);\n    *p = 0;\n    return p;\n}\n";
    const CLEAN: &str = "    int *p = malloc(sizeof *p);\n    if (!p) return NULL;\n    *p = 0;\n    return p;\n}\n";

    #[test]
    fn a_candidate_the_oracle_could_not_analyze_is_never_taken_for_clean() {
        let analyzer = EmbeddedAnalyzer::builtin().expect("rules");
        let generation = generation(vec![sample(FLAGGED, -1.0), sample(CLEAN, -2.0)]);
        let contexts = [CONTEXT, CONTEXT];
        let verified = check(&analyzer, Language::C, &generation, &contexts, "");
        assert_eq!(verified.chosen, 1);
        assert_eq!(verified.outcome(), api::VerificationOutcome::Replaced);

        // No time to parse anything: nothing is clean, and the most probable candidate
        // comes back marked unchecked, not clean and not flagged.
        let stingy = EmbeddedAnalyzer::builtin()
            .expect("rules")
            .with_parse_budget(Duration::ZERO, Duration::ZERO);
        // Long enough that the parser checks its budget at least once.
        let long = format!("{CLEAN}{}", "int unused_global;\n".repeat(200));
        let generation = generation_with(&[&long, &long]);
        let verified = check(&stingy, Language::C, &generation, &contexts, "");
        assert_eq!(verified.chosen, 0);
        assert_eq!(verified.outcome(), api::VerificationOutcome::Unchecked);
        let wire = verified.wire();
        assert_eq!(wire.clean_candidates, 0);
        assert!(
            wire.candidate_summaries.iter().all(|c| c
                .not_analyzed
                .as_deref()
                .is_some_and(|r| r.contains("parsing stopped"))),
            "{wire:?}"
        );
    }

    fn generation_with(texts: &[&str]) -> Generation {
        generation(
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| sample(t, -(i as f32)))
                .collect(),
        )
    }
}
