use super::*;

fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, bool, String) {
    run_indented(stops, 0, pieces)
}

fn run_indented(stops: &[&str], floor: usize, pieces: &[&[u8]]) -> (Vec<String>, bool, String) {
    let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
    let mut asm = TextAssembler::new(&stops).with_indent_floor(floor);
    let mut deltas = Vec::new();
    for piece in pieces {
        match asm.push(piece) {
            Pushed::Delta(d) => deltas.push(d),
            Pushed::Stopped { delta, .. } | Pushed::Dedented(delta) => {
                deltas.push(delta);
                return (deltas, true, asm.text().to_string());
            }
        }
    }
    deltas.push(asm.finish());
    (deltas, false, asm.text().to_string())
}

#[test]
fn a_line_below_the_indent_floor_ends_the_text_after_its_indentation() {
    // llama-server's example: the body ends, the next function does not come along.
    let (deltas, stopped, text) =
        run_indented(&[], 4, &[b"return None", b"\n", b"\n", b"def", b" write"]);
    assert!(stopped);
    assert_eq!(text, "return None\n");
    assert_eq!(deltas.concat(), text);
    // A partial dedent keeps the newline and the indentation that was reached.
    let (_, stopped, text) =
        run_indented(&[], 8, &[b"x = 1\n        y", b" = 2\n    return", b" y"]);
    assert!(stopped);
    assert_eq!(text, "x = 1\n        y = 2\n    ");
    // Tabs count as one each; a deep enough line goes on.
    let (_, stopped, text) = run_indented(&[], 2, &[b"a\n\t\tb\n  c"]);
    assert!(!stopped);
    assert_eq!(text, "a\n\t\tb\n  c");
    // The first line continues the cursor's line and is never checked.
    let (_, stopped, _) = run_indented(&[], 4, &[b"x", b"y"]);
    assert!(!stopped);
}

#[test]
fn indentation_at_the_end_of_the_text_is_undecided_until_the_line_has_content() {
    let stops: Vec<String> = Vec::new();
    let mut asm = TextAssembler::new(&stops).with_indent_floor(4);
    assert_eq!(asm.push(b"a\n"), Pushed::Delta("a\n".into()));
    assert_eq!(asm.push(b"  "), Pushed::Delta("  ".into()));
    assert_eq!(asm.push(b"  b"), Pushed::Delta("  b".into()));
    assert_eq!(asm.push(b"\n "), Pushed::Delta("\n ".into()));
    assert_eq!(asm.push(b"c"), Pushed::Dedented(String::new()));
    assert_eq!(asm.text(), "a\n    b\n ");
}

#[test]
fn the_earlier_of_a_stop_string_and_a_dedent_wins() {
    let (_, stopped, text) = run_indented(&["STOP"], 4, &[b"a\n    bSTOP\nc"]);
    assert!(stopped);
    assert_eq!(text, "a\n    b");
    let (_, stopped, text) = run_indented(&["STOP"], 4, &[b"a\nc STOP"]);
    assert!(stopped);
    assert_eq!(text, "a\n");
    let mut asm = TextAssembler::new(&["\nx".to_string()]).with_indent_floor(4);
    assert_eq!(
        asm.push(b"a\nx"),
        Pushed::Stopped {
            delta: "a".into(),
            stop: "\nx".into()
        }
    );
}

#[test]
fn multibyte_char_split_across_tokens_is_held_back() {
    let snowman = "☃".as_bytes(); // three bytes
    let (deltas, stopped, text) = run(
        &[],
        &[b"a", &snowman[..1], &snowman[1..2], &snowman[2..], b"b"],
    );
    assert!(!stopped);
    assert_eq!(deltas, vec!["a", "", "", "☃", "b", ""]);
    assert_eq!(text, "a☃b");
}

#[test]
fn stop_string_across_token_boundary_stops_and_is_trimmed() {
    let (deltas, stopped, text) = run(&["\ndef "], &[b"return x", b"\nde", b"f foo"]);
    assert!(stopped);
    assert_eq!(text, "return x");
    assert_eq!(deltas.concat(), "return x");
    // The "\nde" that could start the stop string was never streamed.
    assert_eq!(deltas[1], "");
}

#[test]
fn held_back_prefix_is_released_when_it_turns_out_not_to_stop() {
    let (deltas, stopped, text) = run(&["###"], &[b"a#", b"#b"]);
    assert!(!stopped);
    assert_eq!(text, "a##b");
    assert_eq!(deltas, vec!["a", "##b", ""]);
}

#[test]
fn earliest_of_several_stop_strings_wins() {
    let (_, stopped, text) = run(&["cd", "b"], &[b"abcde"]);
    assert!(stopped);
    assert_eq!(text, "a");
}

#[test]
fn invalid_bytes_become_replacement_characters() {
    let (_, _, text) = run(&[], &[&[b'x', 0xFF, b'y']]);
    assert_eq!(text, "x\u{FFFD}y");
}
