//! The real SmolLM2 model over every CodeLMSec prompt (200 Python, 80 C): two-step generation
//! completes, every added import parses as one import, and the final prompt has one import
//! block holding each import once.

use std::collections::HashMap;

use hexacoder_engine::ModelFiles;
use hexacoder_engine::load::{self, LoadOptions};
use hexacoder_engine::{GenerateRequest, SamplingParams};
use hexacoder_two_step::{ImportBlock, Language, TwoStepOptions, TwoStepPlan, generate};

fn prompts() -> Vec<(String, Language, String)> {
    hexacoder_testkit::codelmsec_prompts()
        .into_iter()
        .map(|p| {
            let language = Language::from_name(&p.language).expect("known language");
            (p.id, language, p.prompt)
        })
        .collect()
}

fn counts(block: &ImportBlock) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for import in &block.imports {
        *counts.entry(import.text.clone()).or_default() += 1;
    }
    counts
}

#[test]
fn smollm2_two_step_over_every_codelmsec_prompt() {
    let Some(path) = hexacoder_testkit::real_model("smollm2-135m") else {
        return;
    };
    let mut engine = load::load(&ModelFiles::Gguf(path), &LoadOptions::cpu()).expect("load");
    let prompts = prompts();
    assert_eq!(prompts.len(), 280);
    let (mut with_added, mut pruned, mut reused) = (0, 0, 0);
    for (id, language, prompt) in &prompts {
        let request = GenerateRequest {
            prompt: prompt.clone(),
            max_tokens: 20 + 12,
            sampling: SamplingParams::greedy(),
            ..Default::default()
        };
        let plan = TwoStepPlan::new(
            engine.tokenizer(),
            *language,
            request,
            TwoStepOptions::default(),
        );
        let result =
            generate(&mut engine, &plan, &mut |_, _| true).unwrap_or_else(|e| panic!("{id}: {e}"));
        let sample = &result.samples[0];
        let before = plan.block();
        let after = ImportBlock::find(*language, &sample.imports.prompt);
        for statement in &sample.imports.added {
            let parsed = ImportBlock::find(*language, statement);
            assert_eq!(
                parsed.imports.len(),
                1,
                "{id}: {statement:?} is not one import"
            );
            assert_eq!(parsed.imports[0].text, *statement, "{id}");
        }
        // One block: every import the final prompt has is in its block, old ones as often
        // as before, new ones once.
        let (old, new) = (counts(before), counts(&after));
        let extended = sample
            .imports
            .added
            .iter()
            .filter(|s| !new.contains_key(*s) || old.contains_key(*s))
            .count();
        assert_eq!(
            extended, 0,
            "{id}: an added import is missing or was already there"
        );
        for (text, n) in &new {
            let expected = old.get(text).copied().unwrap_or(1);
            assert_eq!(
                *n, expected,
                "{id}: {text:?} appears {n} times:\n{}",
                sample.imports.prompt
            );
        }
        let extension = usize::from(sample.imports.added.first().is_some_and(|s| {
            before
                .imports
                .last()
                .is_some_and(|l| s.starts_with(l.text.as_str()) && *s != l.text)
        }));
        assert_eq!(
            after.imports.len() + extension,
            before.imports.len() + sample.imports.added.len(),
            "{id}: the final prompt's block is not the old one plus the new imports:\n{}",
            sample.imports.prompt
        );
        with_added += usize::from(!sample.imports.added.is_empty());
        pruned += sample.imports.pruned.len();
        reused += usize::from(result.second_step_cached_tokens() > 0);
    }
    eprintln!(
        "{with_added} of 280 prompts kept new imports; {pruned} unused imports pruned; step 2 reused step 1's KV state on {reused}"
    );
    assert!(
        reused >= 250,
        "step 2 reused step 1's KV state on only {reused} prompts"
    );
}
