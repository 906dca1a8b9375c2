use super::*;

fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, bool, String) {
    let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
    let mut asm = TextAssembler::new(&stops);
    let mut deltas = Vec::new();
    for piece in pieces {
        match asm.push(piece) {
            Pushed::Delta(d) => deltas.push(d),
            Pushed::Stopped(d) => {
                deltas.push(d);
                return (deltas, true, asm.text().to_string());
            }
        }
    }
    deltas.push(asm.finish());
    (deltas, false, asm.text().to_string())
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
