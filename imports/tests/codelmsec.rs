//! Every CodeLMSec prompt (200 Python, 80 C, from `../shared`): its import block is found,
//! and merging a new import yields one block with every old import once and the new one once.

use hexacoder_imports::{ImportBlock, Language};

fn prompts() -> Vec<(Language, String)> {
    hexacoder_testkit::codelmsec_prompts()
        .into_iter()
        .map(|p| {
            (
                Language::from_name(&p.language).expect("known language"),
                p.prompt,
            )
        })
        .collect()
}

#[test]
fn every_codelmsec_prompt_gets_one_clean_import_block() {
    let prompts = prompts();
    assert_eq!(prompts.len(), 280);
    let mut with_imports = 0;
    for (language, prompt) in &prompts {
        let block = ImportBlock::find(*language, prompt);
        if !block.imports.is_empty() {
            with_imports += 1;
        }
        let new_line = match language {
            Language::Python => "import hexacoder_probe\n",
            _ => "#include <hexacoder_probe.h>\n",
        };
        // After a prompt that may be extended, a new import starts on a new line.
        let generated = if block.step1_prompt(prompt).ends_with('\n') || block.imports.is_empty() {
            new_line.to_string()
        } else {
            format!("\n{new_line}")
        };
        let new = block.new_imports(&generated);
        assert_eq!(new.added.len(), 1, "{prompt}");
        let (merged, edit) = block.merge(prompt, &new);
        let again = ImportBlock::find(*language, &merged);
        let before: Vec<&str> = block.imports.iter().map(|i| i.text.as_str()).collect();
        let after: Vec<&str> = again.imports.iter().map(|i| i.text.as_str()).collect();
        assert_eq!(
            after.len(),
            before.len() + 1,
            "one block, one more import:\n{merged}"
        );
        for old in &before {
            assert_eq!(
                after.iter().filter(|a| *a == old).count(),
                before.iter().filter(|b| *b == old).count(),
                "{merged}"
            );
        }
        assert!(after.contains(&new_line.trim_end()), "{merged}");
        assert_eq!(
            merged.len(),
            prompt.len() + edit.new_text.len(),
            "an insertion only"
        );
    }
    assert!(
        with_imports >= 250,
        "only {with_imports} of 280 prompts have imports"
    );
}
