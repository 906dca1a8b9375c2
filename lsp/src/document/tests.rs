use super::*;

fn pos(line: u32, character: u32) -> Position {
    Position { line, character }
}

fn range(a: (u32, u32), b: (u32, u32)) -> Option<Range> {
    Some(Range {
        start: pos(a.0, a.1),
        end: pos(b.0, b.1),
    })
}

#[test]
fn utf16_positions_count_surrogate_pairs_as_two() {
    // "é" is one UTF-16 unit and two bytes; "𝑥" is two units and four bytes.
    let doc = Document::new("aé𝑥b\nz".into(), 1, "python".into());
    let utf16 = PositionEncoding::Utf16;
    assert_eq!(doc.offset(pos(0, 0), utf16), Ok(0));
    assert_eq!(doc.offset(pos(0, 2), utf16), Ok(3));
    assert_eq!(doc.offset(pos(0, 4), utf16), Ok(7));
    // Inside the surrogate pair: the character's start.
    assert_eq!(doc.offset(pos(0, 3), utf16), Ok(3));
    assert_eq!(doc.offset(pos(0, 5), utf16), Ok(8));
    // Past the end of the line: the end of the line, not the next one.
    assert_eq!(doc.offset(pos(0, 99), utf16), Ok(8));
    assert_eq!(doc.offset(pos(1, 1), utf16), Ok(10));
    assert_eq!(doc.position(7, utf16), pos(0, 4));
    assert_eq!(doc.position(7, PositionEncoding::Utf8), pos(0, 7));
    assert_eq!(doc.position(7, PositionEncoding::Utf32), pos(0, 3));
    assert_eq!(doc.offset(pos(0, 3), PositionEncoding::Utf32), Ok(7));
    assert!(matches!(
        doc.offset(pos(5, 0), utf16),
        Err(DocumentError::LineOutOfRange { line: 5, .. })
    ));
}

#[test]
fn crlf_and_lone_cr_end_lines() {
    let doc = Document::new("ab\r\ncd\ref\n".into(), 1, "c".into());
    assert_eq!(doc.line_count(), 4);
    let utf16 = PositionEncoding::Utf16;
    // The end of a CRLF line is before the `\r`.
    assert_eq!(doc.offset(pos(0, 9), utf16), Ok(2));
    assert_eq!(doc.offset(pos(1, 0), utf16), Ok(4));
    assert_eq!(doc.offset(pos(2, 1), utf16), Ok(8));
    assert_eq!(doc.offset(pos(3, 0), utf16), Ok(10));
    assert_eq!(doc.position(4, utf16), pos(1, 0));
}

#[test]
fn incremental_changes_apply_in_order() {
    let mut doc = Document::new(
        "import os\n\ndef f():\n    pass\n".into(),
        1,
        "python".into(),
    );
    let utf16 = PositionEncoding::Utf16;
    // Replace `pass` with `return 1`, then insert a line at the top, then delete it again.
    doc.apply(range((3, 4), (3, 8)), "return 1", utf16)
        .expect("replace");
    doc.apply(range((0, 0), (0, 0)), "import sys\n", utf16)
        .expect("insert");
    assert_eq!(
        doc.text(),
        "import sys\nimport os\n\ndef f():\n    return 1\n"
    );
    doc.apply(range((0, 0), (1, 0)), "", utf16).expect("delete");
    assert_eq!(doc.text(), "import os\n\ndef f():\n    return 1\n");
    // Multi-byte text typed on a CRLF line.
    let mut doc = Document::new("x = ''\r\ny\r\n".into(), 1, "python".into());
    doc.apply(range((0, 5), (0, 5)), "héllo 👋", utf16)
        .expect("insert");
    assert_eq!(doc.text(), "x = 'héllo 👋'\r\ny\r\n");
    // After the emoji (two units), still on line 0.
    assert_eq!(doc.offset(pos(0, 13), utf16), Ok("x = 'héllo 👋".len()));
    doc.apply(None, "whole", utf16).expect("full sync");
    assert_eq!((doc.text(), doc.line_count()), ("whole", 1));
}

#[test]
fn bad_ranges_are_errors_and_leave_the_text_alone() {
    let mut doc = Document::new("abc\n".into(), 1, "python".into());
    let utf16 = PositionEncoding::Utf16;
    assert!(matches!(
        doc.apply(range((0, 2), (0, 1)), "x", utf16),
        Err(DocumentError::InvertedRange { .. })
    ));
    assert!(matches!(
        doc.apply(range((0, 0), (9, 0)), "x", utf16),
        Err(DocumentError::LineOutOfRange { .. })
    ));
    assert_eq!(doc.text(), "abc\n");
}
