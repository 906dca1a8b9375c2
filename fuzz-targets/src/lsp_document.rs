//! The bridge's open documents under an editor's edits: incremental changes with UTF-16,
//! UTF-8 or UTF-32 positions, CRLF and lone CR line ends, ranges past the end or inverted.
//! An edit is applied or refused as a whole; offsets always land on character boundaries.

use arbitrary::Arbitrary;
use hexacoder_lsp::document::{Document, PositionEncoding};
use hexacoder_lsp::lsp_types::{Position, Range};

#[derive(Arbitrary, Debug)]
struct Edit {
    range: Option<(u32, u32, u32, u32)>,
    text: String,
}

#[derive(Arbitrary, Debug)]
struct Input {
    text: String,
    encoding: u8,
    edits: Vec<Edit>,
    probes: Vec<(u32, u32, usize)>,
}

/// One input, as libFuzzer's typed targets build it: the whole of `data` taken by
/// [`Arbitrary`].
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else {
        return;
    };
    let encoding = match input.encoding % 3 {
        0 => PositionEncoding::Utf16,
        1 => PositionEncoding::Utf8,
        _ => PositionEncoding::Utf32,
    };
    let mut document = Document::new(input.text, 1, "python".into());
    for (version, edit) in input.edits.into_iter().enumerate() {
        let range = edit.range.map(|(l0, c0, l1, c1)| Range {
            start: Position::new(l0, c0),
            end: Position::new(l1, c1),
        });
        let before = document.text().to_string();
        if document.apply(range, &edit.text, encoding).is_err() {
            assert_eq!(document.text(), before, "a refused edit changed the text");
        }
        document.set_version(version as i32 + 2);
    }
    let text = document.text();
    for (line, character, offset) in input.probes {
        if let Ok(at) = document.offset(Position::new(line, character), encoding) {
            assert!(at <= text.len() && text.is_char_boundary(at), "offset {at}");
            let back = document.position(at, encoding);
            assert_eq!(
                document.offset(back, encoding).ok(),
                Some(at),
                "round trip of {at}"
            );
        }
        let _ = document.position(offset, encoding);
    }
    assert!(document.line_count() >= 1);
}
