use super::*;

#[test]
fn a_small_file_goes_whole() {
    let text = "import os\n\ndef f():\n    return 1\n";
    let cursor = text.find("return").expect("cursor");
    let prompt = build_prompt(text, cursor, 2048, Some(Language::Python));
    assert_eq!(prompt.prefix, &text[..cursor]);
    assert_eq!(prompt.suffix, &text[cursor..]);
    assert_eq!(prompt.head_len, cursor);
}

#[test]
fn a_large_file_keeps_its_imports_and_the_lines_near_the_cursor() {
    let imports = "import os\nfrom flask import Flask, request\n";
    let filler: String = (0..400).map(|i| format!("x{i} = {i}\n")).collect();
    let text = format!("{imports}\n{filler}def handler():\n    name = request.args['n']\n    ");
    let cursor = text.len();
    let prompt = build_prompt(&text, cursor, 200, Some(Language::Python));
    assert!(
        prompt.prefix.starts_with(imports),
        "{:?}",
        &prompt.prefix[..60]
    );
    assert_eq!(prompt.head_len, imports.len());
    assert!(
        prompt
            .prefix
            .ends_with("def handler():\n    name = request.args['n']\n    ")
    );
    assert!(prompt.prefix.len() <= 200 * CHARS_PER_TOKEN);
    // What follows the head starts at a line start.
    let rest = &prompt.prefix[prompt.head_len..];
    assert!(text.contains(&format!("\n{rest}")), "{rest:?}");
    // Without a language there is no head.
    let plain = build_prompt(&text, cursor, 200, None);
    assert_eq!(plain.head_len, 0);
}

#[test]
fn a_blank_suffix_is_no_suffix() {
    let prompt = build_prompt("x = 1\ny = \n\n", 10, 2048, None);
    assert_eq!(
        (prompt.prefix.as_str(), prompt.suffix.as_str()),
        ("x = 1\ny = ", "")
    );
}

#[test]
fn the_suffix_is_cut_at_a_line_end() {
    let after: String = (0..500).map(|i| format!("y{i} = {i}\n")).collect();
    let text = format!("x = 1\n{after}");
    let prompt = build_prompt(&text, 6, 100, None);
    assert!(prompt.suffix.ends_with('\n') && after.starts_with(&prompt.suffix));
    assert!(prompt.suffix.len() <= 75);
}

#[test]
fn special_tokens_and_trailing_blank_lines_are_cut() {
    assert_eq!(
        clean_completion("return a + b\n<|endoftext|>junk", ""),
        "return a + b"
    );
    assert_eq!(clean_completion("x = 1<|fim_middle|>", ""), "x = 1");
    assert_eq!(clean_completion("x = 1<fim_suffix>y", ""), "x = 1");
    assert_eq!(clean_completion("a < b and c > d", ""), "a < b and c > d");
    assert_eq!(clean_completion("if a <|b|> c", ""), "if a ");
    assert_eq!(clean_completion("x = 1\n\n\n", ""), "x = 1");
    // Trailing spaces on the last line stay: the user may be mid-expression.
    assert_eq!(clean_completion("x = ", ""), "x = ");
    assert_eq!(clean_completion("   \n  ", ""), "");
}

#[test]
fn text_already_after_the_cursor_is_not_repeated() {
    // An auto-inserted closing bracket.
    assert_eq!(clean_completion("name)", ")\n"), "name");
    assert_eq!(clean_completion("x, y)", ")  # tail\n"), "x, y");
    // The next lines, repeated by the model.
    assert_eq!(
        clean_completion("return a\n\ndef g():\n    pass", "\n\ndef g():\n    pass\n"),
        "return a"
    );
    // A word is not split: `count` keeps its `t` even though `t` follows.
    assert_eq!(clean_completion("count", "t"), "count");
    // One ordinary character is coincidence, not repetition.
    assert_eq!(clean_completion("a + b", "b"), "a + b");
    assert_eq!(clean_completion("f(x)", ""), "f(x)");
}

#[test]
fn a_huge_file_is_cut_to_the_budget_without_parsing_it_whole() {
    // 8 MB after a multi-byte head, so that the scan limit falls inside a character.
    let head = "import os\n# é漢字\n".repeat(20_000);
    let text = format!("{head}{}x = ", "y = compute(y)\n".repeat(500_000));
    let started = std::time::Instant::now();
    let prompt = build_prompt(&text, text.len(), 2048, Some(Language::Python));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(prompt.prefix.ends_with("x = "));
    assert!(prompt.prefix.len() <= 2048 * 3, "{}", prompt.prefix.len());
}
