//! The oracle's embedded analyzer (tree-sitter plus its rules) on arbitrary Python, C and
//! C++ source.

use std::sync::OnceLock;

use hexacoder_oracle::{EmbeddedAnalyzer, Language};

fn analyzer() -> &'static EmbeddedAnalyzer {
    static ANALYZER: OnceLock<EmbeddedAnalyzer> = OnceLock::new();
    ANALYZER.get_or_init(|| EmbeddedAnalyzer::builtin().expect("the built-in rules"))
}

/// What the target sets up once, before its first input.
pub fn init() {
    analyzer();
}

/// One input.
pub fn run(data: &[u8]) {
    let Some((&language, source)) = data.split_first() else {
        return;
    };
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let (language, path) = match language % 3 {
        0 => (Language::Python, "sample.py"),
        1 => (Language::C, "sample.c"),
        _ => (Language::Cpp, "sample.cpp"),
    };
    let lines = source.split('\n').count();
    // A parse past its time budget is an error value, which is fine here.
    let Ok(findings) = analyzer().scan(language, path, source) else {
        return;
    };
    for finding in findings {
        let span = finding.span;
        assert!(
            1 <= span.start_line && span.start_line <= span.end_line && span.end_line <= lines,
            "a finding outside the source: {span:?}"
        );
    }
}
