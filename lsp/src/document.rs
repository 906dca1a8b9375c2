//! Open documents: full and incremental sync, and positions in the negotiated encoding.
//!
//! LSP positions are (line, character) where a character is a UTF-16 code unit unless the
//! client agreed to another encoding, and a line ends at `\n`, `\r\n` or `\r`. The text is
//! kept as a `String`; every edit recomputes the line starts, which for source files is cheap
//! next to a completion request.

use crate::lsp_types::{Position, Range};

/// How `Position::character` counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PositionEncoding {
    /// UTF-8 bytes.
    Utf8,
    /// UTF-16 code units, LSP's default and the only one every client supports.
    #[default]
    Utf16,
    /// Unicode scalar values.
    Utf32,
}

impl PositionEncoding {
    /// The protocol's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            PositionEncoding::Utf8 => "utf-8",
            PositionEncoding::Utf16 => "utf-16",
            PositionEncoding::Utf32 => "utf-32",
        }
    }

    /// The encoding named `name`, if we support it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "utf-8" => Some(PositionEncoding::Utf8),
            "utf-16" => Some(PositionEncoding::Utf16),
            "utf-32" => Some(PositionEncoding::Utf32),
            _ => None,
        }
    }

    fn width(self, c: char) -> u32 {
        match self {
            PositionEncoding::Utf8 => c.len_utf8() as u32,
            PositionEncoding::Utf16 => c.len_utf16() as u32,
            PositionEncoding::Utf32 => 1,
        }
    }
}

/// A change the client sent that does not fit the document.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocumentError {
    /// A range whose start is after its end.
    #[error("range start {start:?} is after its end {end:?}")]
    InvertedRange {
        /// The range's start.
        start: Position,
        /// The range's end.
        end: Position,
    },
    /// A line past the last one (the line just after the end is allowed, as position 0).
    #[error("line {line} is past the end of the document ({lines} lines)")]
    LineOutOfRange {
        /// The requested line.
        line: u32,
        /// Lines in the document.
        lines: usize,
    },
}

/// One open text document.
#[derive(Clone, Debug)]
pub struct Document {
    text: String,
    version: i32,
    language_id: String,
    /// Byte offset where each line starts; always begins with 0.
    line_starts: Vec<usize>,
}

impl Document {
    /// A document as `textDocument/didOpen` gives it.
    pub fn new(text: String, version: i32, language_id: String) -> Self {
        let line_starts = line_starts(&text);
        Document {
            text,
            version,
            language_id,
            line_starts,
        }
    }

    /// The whole text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The client's version number.
    pub fn version(&self) -> i32 {
        self.version
    }

    /// The client's language id (`python`, `c`, ...).
    pub fn language_id(&self) -> &str {
        &self.language_id
    }

    /// Replaces `range` (or everything, for `None`) with `text`, then sets `version`.
    ///
    /// # Errors
    /// An inverted range or a line past the end; the document is then unchanged.
    pub fn apply(
        &mut self,
        range: Option<Range>,
        text: &str,
        encoding: PositionEncoding,
    ) -> Result<(), DocumentError> {
        match range {
            None => self.text = text.to_string(),
            Some(range) => {
                let start = self.offset(range.start, encoding)?;
                let end = self.offset(range.end, encoding)?;
                if start > end {
                    return Err(DocumentError::InvertedRange {
                        start: range.start,
                        end: range.end,
                    });
                }
                self.text.replace_range(start..end, text);
            }
        }
        self.line_starts = line_starts(&self.text);
        Ok(())
    }

    /// Sets the version after a batch of changes.
    pub fn set_version(&mut self, version: i32) {
        self.version = version;
    }

    /// The byte offset of `position`. As the protocol says, a character past the end of its
    /// line means the end of the line; one inside a multi-unit character means its start.
    ///
    /// # Errors
    /// A line past the end of the document.
    pub fn offset(
        &self,
        position: Position,
        encoding: PositionEncoding,
    ) -> Result<usize, DocumentError> {
        let line = position.line as usize;
        if line >= self.line_starts.len() {
            // The position just after a final line break is (lines, 0) in some clients.
            if line == self.line_starts.len() && position.character == 0 {
                return Ok(self.text.len());
            }
            return Err(DocumentError::LineOutOfRange {
                line: position.line,
                lines: self.line_starts.len(),
            });
        }
        let start = self.line_starts[line];
        let content = &self.text[start..self.line_content_end(line)];
        let mut units = 0u32;
        for (index, c) in content.char_indices() {
            let width = encoding.width(c);
            if units + width > position.character {
                return Ok(start + index);
            }
            units += width;
        }
        Ok(start + content.len())
    }

    /// The position of byte `offset` (clamped to the text, and to a character boundary).
    pub fn position(&self, offset: usize, encoding: PositionEncoding) -> Position {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        let character = self.text[start..offset]
            .chars()
            .map(|c| encoding.width(c))
            .sum();
        Position {
            line: line as u32,
            character,
        }
    }

    /// Lines, counting the (possibly empty) one after a final line break.
    pub fn line_count(&self) -> usize {
        self.line_starts.len()
    }

    /// Byte offset where `line` starts.
    pub fn line_start(&self, line: usize) -> usize {
        self.line_starts
            .get(line)
            .copied()
            .unwrap_or(self.text.len())
    }

    /// End of `line`'s content, before its line break.
    fn line_content_end(&self, line: usize) -> usize {
        let end = self.line_start(line + 1);
        let bytes = self.text.as_bytes();
        if line + 1 >= self.line_starts.len() {
            return end;
        }
        if end >= 2 && &bytes[end - 2..end] == b"\r\n" {
            end - 2
        } else {
            end - 1
        }
    }
}

fn line_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut starts = vec![0];
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => starts.push(i + 1),
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                starts.push(i + 2);
                i += 1;
            }
            b'\r' => starts.push(i + 1),
            _ => {}
        }
        i += 1;
    }
    starts
}

#[cfg(test)]
mod tests;
