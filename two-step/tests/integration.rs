//! Two-step generation on a tiny random model whose output is scripted by a logits
//! processor, so the final prompt, the edit and the completion are known exactly; plus a
//! real-model run over every CodeLMSec prompt.

use std::sync::{Arc, Mutex};

use hexacoder_engine::ModelFiles;
use hexacoder_engine::load::{self, LoadOptions};
use hexacoder_engine::{Engine, GenerateRequest, LogitsProcessor, SamplingParams};
use hexacoder_testkit::{Arch, Tiny};
use hexacoder_two_step::{
    ImportBlock, Language, Skipped, TextEdit, TwoStepOptions, TwoStepPlan, generate,
};

mod codelmsec;

/// Forces scripted token sequences: `scripts[request][sample]`, where requests are counted
/// in the order their first sample starts. After a script ends it forces end of text.
#[derive(Debug)]
struct Scripted {
    scripts: Vec<Vec<Vec<u32>>>,
    eos: u32,
    request: Mutex<Option<usize>>,
}

impl Scripted {
    fn new(engine: &Engine, scripts: &[&[&str]]) -> Arc<Self> {
        let tokenizer = engine.tokenizer();
        let scripts = scripts
            .iter()
            .map(|request| {
                request
                    .iter()
                    .map(|text| tokenizer.encode_plain(text).expect("encode"))
                    .collect()
            })
            .collect();
        Arc::new(Scripted {
            scripts,
            eos: tokenizer.token_id("<|endoftext|>").expect("eos"),
            request: Mutex::new(None),
        })
    }
}

impl LogitsProcessor for Scripted {
    fn process(&self, sample: usize, generated: &[u32], logits: &mut [f32]) {
        let mut request = self.request.lock().expect("lock");
        if sample == 0 && generated.is_empty() {
            *request = Some(request.map_or(0, |r| r + 1));
        }
        let script = request
            .and_then(|r| self.scripts.get(r))
            .and_then(|r| r.get(sample));
        let forced = script
            .and_then(|s| s.get(generated.len()))
            .copied()
            .unwrap_or(self.eos);
        for (id, logit) in logits.iter_mut().enumerate() {
            *logit = if id as u32 == forced {
                0.0
            } else {
                f32::NEG_INFINITY
            };
        }
    }
}

fn tiny_engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = Tiny::small(Arch::Qwen2).write_hf_dir(&dir.path().join("model"), 7);
    let mut options = LoadOptions::cpu();
    options.prefix_cache_bytes = 64 << 20;
    let engine = load::load(&ModelFiles::HfDir(path), &options).expect("load tiny model");
    (dir, engine)
}

fn request(prompt: &str, max_tokens: usize, processor: Arc<Scripted>) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        max_tokens,
        sampling: SamplingParams::greedy(),
        logits_processor: Some(processor),
        ..Default::default()
    }
}

#[test]
fn step1_imports_are_merged_used_ones_kept_and_the_kv_state_reused() {
    let (_dir, mut engine) = tiny_engine();
    let source = "import os\n\n\ndef run(cmd):\n";
    let script = Scripted::new(
        &engine,
        &[
            &["\nimport subprocess\nimport html\ndef never_reached():\n"],
            &["    return subprocess.run(cmd)\n"],
        ],
    );
    let plan = TwoStepPlan::new(
        engine.tokenizer(),
        Language::Python,
        request(source, 200, script),
        // This tokenizer spends a token per character.
        TwoStepOptions {
            first_step_tokens: 60,
            ..TwoStepOptions::default()
        },
    );
    assert_eq!(plan.skipped(), None);
    let result = generate(&mut engine, &plan, &mut |_, _| true).expect("generate");

    let first = result.first.as_ref().expect("step 1 ran");
    let step1 = &first.samples[0];
    // Step 1 stopped at the first token of `def`, long before its script or budget ended.
    assert_eq!(step1.text, "\nimport subprocess\nimport html\ndef");
    assert!(step1.tokens.len() < 40);

    let [sample] = result.samples.as_slice() else {
        panic!("one sample")
    };
    assert_eq!(sample.sample.text, "    return subprocess.run(cmd)\n");
    assert_eq!(sample.first_step_tokens, step1.tokens.len());
    // `html` was merged into step 2's prompt but the completion never used it.
    assert_eq!(sample.imports.added, ["import subprocess"]);
    assert_eq!(sample.imports.pruned, ["import html"]);
    assert_eq!(
        sample.imports.prompt,
        "import os\nimport subprocess\n\n\ndef run(cmd):\n"
    );
    assert_eq!(
        sample.imports.edit,
        Some(TextEdit::new((1, 0), (1, 0), "import subprocess\n"))
    );
    // Step 2 saw both imports in one block, and skipped prefilling what step 1 computed.
    let second = &result.second[0];
    let step2_prompt = engine.tokenizer().decode(&second.prompt_tokens);
    assert_eq!(
        step2_prompt,
        "import os\nimport subprocess\nimport html\n\n\ndef run(cmd):\n"
    );
    let reused = engine
        .tokenizer()
        .encode("import os\nimport subprocess\nimport html\n")
        .expect("encode")
        .len();
    assert!(
        second.cached_prompt_tokens >= reused - 1,
        "{} of {reused} tokens reused",
        second.cached_prompt_tokens
    );
    // The step-2 budget is what step 1 left.
    assert!(sample.sample.tokens.len() <= 200 - step1.tokens.len());
}

#[test]
fn fill_in_the_middle_reuses_step1_and_counts_the_suffix_as_use() {
    let (_dir, mut engine) = tiny_engine();
    let source = "from flask import request\n\ndef page():\n    name = ";
    let script = Scripted::new(
        &engine,
        &[&[", escape\nimport re\nx"], &["request.args['n']"]],
    );
    let mut req = request(source, 64, script);
    req.suffix = Some("\n    return escape(name)\n".into());
    let plan = TwoStepPlan::new(
        engine.tokenizer(),
        Language::Python,
        req,
        TwoStepOptions::default(),
    );
    let first_request = plan.first_step().expect("step 1");
    assert!(first_request.fim_prefix_only && first_request.suffix.is_none());
    let result = generate(&mut engine, &plan, &mut |_, _| true).expect("generate");
    let sample = &result.samples[0];
    assert_eq!(sample.sample.text, "request.args['n']");
    // `escape` is used only after the cursor; `re` nowhere.
    assert_eq!(sample.imports.added, ["from flask import request, escape"]);
    assert_eq!(sample.imports.pruned, ["import re"]);
    let edit = sample.imports.edit.as_ref().expect("edit");
    assert_eq!((edit.start(), edit.end()), ((0, 0), (0, 25)));
    assert!(
        result.second_step_cached_tokens()
            > result.first.as_ref().expect("ran").prompt_tokens.len()
    );
}

#[test]
fn samples_share_one_step1_or_run_their_own() {
    let (_dir, mut engine) = tiny_engine();
    let source = "import os\n";
    for per_sample in [false, true] {
        let script = if per_sample {
            Scripted::new(
                &engine,
                &[
                    &["\nimport re\nx", "\nimport json\nx"],
                    &["re.x\n"],
                    &["json.x\n"],
                ],
            )
        } else {
            Scripted::new(&engine, &[&["\nimport re\nx"], &["re.a\n", "re.b\n"]])
        };
        let mut req = request(source, 40, script);
        req.n = 2;
        let options = TwoStepOptions {
            per_sample_imports: per_sample,
            ..TwoStepOptions::default()
        };
        let plan = TwoStepPlan::new(engine.tokenizer(), Language::Python, req, options);
        let result = generate(&mut engine, &plan, &mut |_, _| true).expect("generate");
        let texts: Vec<&str> = result
            .samples
            .iter()
            .map(|s| s.sample.text.as_str())
            .collect();
        let imports: Vec<&[String]> = result
            .samples
            .iter()
            .map(|s| s.imports.added.as_slice())
            .collect();
        if per_sample {
            assert_eq!(result.first.as_ref().expect("ran").samples.len(), 2);
            assert_eq!(texts, ["re.x\n", "json.x\n"]);
            assert_eq!(imports, [["import re"], ["import json"]]);
        } else {
            assert_eq!(result.first.as_ref().expect("ran").samples.len(), 1);
            assert_eq!(texts, ["re.a\n", "re.b\n"]);
            assert_eq!(imports, [["import re"], ["import re"]]);
        }
    }
}

#[test]
fn a_plan_without_step1_is_one_step_generation() {
    let (_dir, mut engine) = tiny_engine();
    let options = TwoStepOptions {
        without_imports: false,
        ..TwoStepOptions::default()
    };
    let script = Scripted::new(&engine, &[&["x = 1\n"]]);
    let plan = TwoStepPlan::new(
        engine.tokenizer(),
        Language::Python,
        request("def f():\n", 16, script),
        options,
    );
    assert_eq!(plan.skipped(), Some(Skipped::NoImports));
    let result = generate(&mut engine, &plan, &mut |_, _| true).expect("generate");
    assert!(result.first.is_none());
    assert_eq!(result.samples[0].sample.text, "x = 1\n");
    assert_eq!(result.samples[0].imports.edit, None);

    // With the paper's default, a file without imports still gets a step 1 (from nothing:
    // this model has no BOS token, so there is nothing to start from).
    let script = Scripted::new(&engine, &[&["x = 1\n"]]);
    let plan = TwoStepPlan::new(
        engine.tokenizer(),
        Language::Python,
        request("def f():\n", 16, script),
        TwoStepOptions::default(),
    );
    let expected = if engine.tokenizer().bos_to_add().is_some() {
        None
    } else {
        Some(Skipped::EmptyPrompt)
    };
    assert_eq!(plan.skipped(), expected);
    // A header is enough to start from.
    let script = Scripted::new(&engine, &[&["import sys\nx"], &["sys.exit(0)\n"]]);
    let source = "# tool\ndef f():\n";
    let plan = TwoStepPlan::new(
        engine.tokenizer(),
        Language::Python,
        request(source, 32, script),
        TwoStepOptions::default(),
    );
    let result = generate(&mut engine, &plan, &mut |_, _| true).expect("generate");
    assert_eq!(
        result.samples[0].imports.prompt,
        "# tool\nimport sys\ndef f():\n"
    );
    assert_eq!(
        ImportBlock::find(Language::Python, &result.samples[0].imports.prompt)
            .imports
            .len(),
        1
    );
}
