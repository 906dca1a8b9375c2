use std::time::Duration;

use hexacoder_engine::tokenizer::Tokenizer;
use hexacoder_engine::{FinishReason, GeneratedToken, Sample};
use hexacoder_testkit::{Arch, Tiny};
use hexacoder_two_step::{Language, TwoStepOptions};

use super::*;

const PROMPT: &str = "import os\n\n\ndef run(cmd):\n";

fn tokenizer() -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = Tiny::small(Arch::Qwen2).write_hf_dir(&dir.path().join("m"), 1);
    let tokenizer = Tokenizer::from_hf_dir(&model).expect("tokenizer");
    (dir, tokenizer)
}

fn plan(tokenizer: &Tokenizer, n: usize, per_sample_imports: bool) -> Box<TwoStepPlan> {
    let request = GenerateRequest {
        prompt: PROMPT.into(),
        max_tokens: 20,
        n,
        ..Default::default()
    };
    let options = TwoStepOptions {
        per_sample_imports,
        ..TwoStepOptions::default()
    };
    Box::new(TwoStepPlan::new(
        tokenizer,
        Language::Python,
        request,
        options,
    ))
}

/// A finished generation with these samples, `tokens` tokens each.
fn generation(texts: &[&str], tokens: usize, elapsed_ms: u64) -> Generation {
    let token = GeneratedToken {
        id: 1,
        logprob: -0.5,
        top: Vec::new(),
    };
    Generation {
        samples: texts
            .iter()
            .map(|text| Sample {
                text: text.to_string(),
                tokens: vec![token.clone(); tokens],
                finish_reason: FinishReason::Stop,
                cumulative_logprob: -0.5 * tokens as f64,
                stop_string: None,
            })
            .collect(),
        prompt_tokens: vec![1; 5],
        cached_prompt_tokens: 2,
        time_to_first_token: Duration::from_millis(elapsed_ms / 2),
        elapsed: Duration::from_millis(elapsed_ms),
    }
}

#[test]
fn shared_step_one_then_one_step_two_for_every_sample() {
    let (_dir, tokenizer) = tokenizer();
    let (mut job, first) = TwoStepJob::new(plan(&tokenizer, 2, false));
    let first = first.expect("step 1 runs");
    assert_eq!(first.n, 1, "one step 1 for all samples");
    assert!(!job.second_step_started());
    assert_eq!(job.skipped(), None);

    let (requests, samples) =
        job.begin_second_step(Some(generation(&["\nimport subprocess\n"], 3, 10)));
    assert!(job.second_step_started());
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].n, 2);
    assert_eq!(
        requests[0].max_tokens,
        20 - 3,
        "step 2 gets what step 1 left"
    );
    assert!(
        requests[0]
            .prompt
            .contains("import os\nimport subprocess\n"),
        "{}",
        requests[0].prompt
    );
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[1].0, 1);
    assert_eq!(samples[0].1.added, ["import subprocess"]);
    assert_eq!(job.sample_of(0, 1), 1);

    let done = job.second_finished(
        0,
        generation(
            &["    subprocess.run(cmd)\n", "    os.system(cmd)\n"],
            4,
            30,
        ),
    );
    assert!(done);
    let (generation, report) = job.finish();
    assert_eq!(generation.samples.len(), 2);
    // The user waited for both steps.
    assert_eq!(generation.elapsed, Duration::from_millis(40));
    assert_eq!(generation.time_to_first_token, Duration::from_millis(25));
    assert_eq!(report.skipped, None);
    assert_eq!(
        report.first.as_ref().map(Generation::completion_tokens),
        Some(3)
    );
    assert_eq!(report.samples[0].outcome.added, ["import subprocess"]);
    assert!(report.samples[0].outcome.pruned.is_empty());
    // The second sample never uses subprocess: its import is pruned.
    assert!(report.samples[1].outcome.added.is_empty());
    assert_eq!(report.samples[1].outcome.pruned, ["import subprocess"]);
    assert_eq!(
        (
            report.samples[1].first_step_tokens,
            report.samples[1].second_step_tokens
        ),
        (3, 4)
    );
}

#[test]
fn per_sample_step_ones_each_get_their_own_step_two_and_finish_together() {
    let (_dir, tokenizer) = tokenizer();
    let (mut job, first) = TwoStepJob::new(plan(&tokenizer, 2, true));
    assert_eq!(first.expect("step 1").n, 2);
    let (requests, samples) = job.begin_second_step(Some(generation(
        &["\nimport re\n", "\nimport json\n"],
        2,
        10,
    )));
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.n == 1));
    assert!(requests[0].prompt.contains("import re\n"));
    assert!(requests[1].prompt.contains("import json\n"));
    assert_eq!(
        samples
            .iter()
            .map(|(s, o)| (*s, o.added.clone()))
            .collect::<Vec<_>>(),
        [
            (0, vec!["import re".to_string()]),
            (1, vec!["import json".to_string()])
        ]
    );
    assert_eq!(job.sample_of(1, 0), 1);
    // Step 2 results may arrive in any order; the prompt is done when all have.
    assert!(!job.second_finished(1, generation(&["    json.dumps(cmd)\n"], 5, 20)));
    assert!(job.second_finished(0, generation(&["    re.escape(cmd)\n"], 6, 15)));
    let (generation, report) = job.finish();
    assert_eq!(
        generation
            .samples
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>(),
        ["    re.escape(cmd)\n", "    json.dumps(cmd)\n"],
        "samples in sample order"
    );
    assert_eq!(report.samples[0].outcome.added, ["import re"]);
    assert_eq!(report.samples[1].outcome.added, ["import json"]);
    assert_eq!(
        generation.prompt_tokens.len(),
        10,
        "both step-2 prompts count"
    );
    assert_eq!(generation.elapsed, Duration::from_millis(30));
}

#[test]
fn a_skipped_step_one_starts_step_two_at_once_and_says_why() {
    let request = GenerateRequest {
        prompt: "x = 1\n".into(),
        max_tokens: 8,
        ..Default::default()
    };
    let (mut job, first) = TwoStepJob::new(Box::new(TwoStepPlan::unknown_language(request)));
    assert!(first.is_none());
    let reason = job.skipped().expect("skipped");
    assert!(reason.contains("language"), "{reason}");
    let (requests, samples) = job.begin_second_step(None);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].prompt, "x = 1\n");
    assert_eq!(requests[0].max_tokens, 8);
    assert!(samples[0].1.added.is_empty());
    assert!(job.second_finished(0, generation(&["y"], 1, 5)));
    let (generation, report) = job.finish();
    assert_eq!(report.skipped, Some(reason));
    assert!(report.first.is_none());
    assert_eq!(generation.elapsed, Duration::from_millis(5));
}
