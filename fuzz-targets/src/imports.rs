//! The imports parser and two-step's merge and prune, in every language: a file's import
//! block found, what step 1 "generated" turned into new imports, those pruned against the
//! "completion" and merged back, and the merged file parsed again. The input: a byte for the
//! language, then the file, step 1's text and the completion, split by
//! [`crate::split`].

use hexacoder_imports::{ImportBlock, Language};

const LANGUAGES: [&str; 9] = [
    "python",
    "c",
    "cpp",
    "javascript",
    "typescript",
    "tsx",
    "go",
    "java",
    "rust",
];

/// One input.
pub fn run(data: &[u8]) {
    let Some((&language, rest)) = data.split_first() else {
        return;
    };
    let (source, rest) = crate::split(rest);
    let (generated, completion) = crate::split(rest);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let input = (text(source), text(generated), text(completion));
    let (source, generated, completion) = (&input.0, &input.1, &input.2);
    let name = LANGUAGES[language as usize % LANGUAGES.len()];
    let language = Language::from_name(name).expect("a language this crate knows");
    let _ = Language::detect(source);
    let block = ImportBlock::find(language, source);
    let _ = block.step1_prompt(source);
    let _ = block.step1_done(generated);
    let new = block.new_imports(generated);
    let (kept, _dropped) = block.prune_unused(&new, completion);
    let (merged, _edit) = block.merge(source, &kept);
    // The merged prompt is what step 2 parses again.
    let _ = ImportBlock::find(language, &merged);
}
