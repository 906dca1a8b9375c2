//! From a document and a cursor to a FIM prompt, and from the model's text to a suggestion an
//! editor can show: no special tokens, nothing repeated from after the cursor.

use hexacoder_imports::{ImportBlock, Language};

/// Characters per token assumed when fitting a prompt into the token budget. Code tokenizes at
/// 3 to 4 characters per token; the lower figure keeps prompts within the budget.
const CHARS_PER_TOKEN: usize = 3;
/// The share of the budget that goes to the text before the cursor.
const PREFIX_SHARE: f64 = 0.75;
/// How far into a file its import block is looked for: imports sit at the top, and parsing a
/// 100 MB file whole to find them would hold the bridge for seconds.
const HEAD_SCAN_BYTES: usize = 256 << 10;

/// What is sent to the server for one cursor position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    /// Text before the cursor: the whole of it, or the file head through its import block
    /// followed by the lines just above the cursor.
    pub prefix: String,
    /// Text after the cursor, cut at a line end.
    pub suffix: String,
    /// Bytes at the start of `prefix` that are the document's own first bytes, so that an
    /// imports edit inside them maps to the document unchanged.
    pub head_len: usize,
}

/// Builds the prompt for `cursor` (a byte offset into `text`) within `budget_tokens`.
///
/// When the text before the cursor does not fit, the file head through the import block is
/// kept (two-step generation reads and extends it) and the nearest lines above the cursor fill
/// the rest; the text after the cursor is cut at the last line end that fits.
pub fn build_prompt(
    text: &str,
    cursor: usize,
    budget_tokens: usize,
    language: Option<Language>,
) -> Prompt {
    let (before, after) = text.split_at(cursor.min(text.len()));
    let budget = budget_tokens.saturating_mul(CHARS_PER_TOKEN);
    let suffix_budget = ((budget as f64) * (1.0 - PREFIX_SHARE)) as usize;
    let suffix = cut_after(after, suffix_budget.min(after.len()));
    // Only blank lines after the cursor (the end of a file): nothing to fill in the middle
    // of, and a plain completion avoids the FIM format.
    let suffix = if suffix.trim().is_empty() { "" } else { suffix };
    let prefix_budget = budget - suffix.len();
    if before.len() <= prefix_budget {
        return Prompt {
            prefix: before.to_string(),
            suffix: suffix.to_string(),
            head_len: before.len(),
        };
    }
    let scanned = &before[..line_end(before, HEAD_SCAN_BYTES)];
    let head_end = language
        .map(|language| ImportBlock::find(language, scanned))
        .map_or(0, |block| {
            line_end(before, block.range.end.max(block.insert_at))
        });
    // The head may take at most half the budget; the code near the cursor matters more.
    let head_end = if head_end <= prefix_budget / 2 {
        head_end
    } else {
        0
    };
    let tail = cut_before(&before[head_end..], prefix_budget - head_end);
    Prompt {
        prefix: format!("{}{tail}", &before[..head_end]),
        suffix: suffix.to_string(),
        head_len: head_end,
    }
}

/// `offset` if it starts a line, else the end of its line (after the `\n`) or of the text.
/// `offset` need not be on a character boundary; the result always is.
fn line_end(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    if offset == 0 || text.as_bytes()[offset - 1] == b'\n' {
        return offset;
    }
    text.as_bytes()[offset..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(text.len(), |i| offset + i + 1)
}

/// The longest tail of `text` within `budget` bytes that starts at a line start.
fn cut_before(text: &str, budget: usize) -> &str {
    if text.len() <= budget {
        return text;
    }
    let mut start = text.len() - budget;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    match text[start..].find('\n') {
        Some(i) if start + i + 1 < text.len() => &text[start + i + 1..],
        _ => &text[start..],
    }
}

/// The longest head of `text` within `budget` bytes that ends at a line end.
fn cut_after(text: &str, budget: usize) -> &str {
    if text.len() <= budget {
        return text;
    }
    let mut end = budget;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text[..end].rfind('\n') {
        Some(i) => &text[..=i],
        None => &text[..end],
    }
}

/// Makes a completion fit to show: cut at the first special token that leaked, drop trailing
/// blank lines, and drop an ending that repeats the text right after the cursor (a closing
/// bracket the editor already inserted, or the next lines).
pub fn clean_completion(text: &str, after_cursor: &str) -> String {
    let mut text = &text[..special_token_start(text).unwrap_or(text.len())];
    let trimmed_len = text.trim_end().len();
    if text[trimmed_len..].contains('\n') {
        text = &text[..trimmed_len];
    }
    let overlap = overlap_with(text, after_cursor);
    let text = &text[..text.len() - overlap];
    // A suggestion that is only whitespace is no suggestion.
    if text.trim().is_empty() {
        return String::new();
    }
    text.to_string()
}

/// The start of the first token-like marker: `<|…|>`, `<fim_…>`, `<file_sep>`, `<repo_name>`.
fn special_token_start(text: &str) -> Option<usize> {
    let mut search = 0;
    while let Some(i) = text[search..].find('<') {
        let at = search + i;
        let rest = &text[at..];
        let special = (rest.starts_with("<|")
            && rest[2..]
                .find("|>")
                .is_some_and(|end| is_token_name(&rest[2..2 + end])))
            || ["<fim_", "<file_sep>", "<repo_name>", "<filename>", "</s>"]
                .iter()
                .any(|marker| rest.starts_with(marker));
        if special {
            return Some(at);
        }
        search = at + 1;
    }
    None
}

fn is_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The length of the longest ending of `completion` that the text after the cursor begins
/// with, ignoring whitespace between the cursor and that text on its first line. Single
/// characters count only for closing brackets and quotes, the ones editors auto-insert.
fn overlap_with(completion: &str, after_cursor: &str) -> usize {
    let after = after_cursor.trim_start_matches([' ', '\t']);
    let max = completion.len().min(after.len());
    for len in (1..=max).rev() {
        let start = completion.len() - len;
        if !completion.is_char_boundary(start) || !after.is_char_boundary(len) {
            continue;
        }
        let tail = &completion[start..];
        if tail != &after[..len] {
            continue;
        }
        if len == 1 && !matches!(tail, ")" | "]" | "}" | "\"" | "'" | "`" | ">") {
            continue;
        }
        // Whole tokens only: `count` must not lose its `t` because `t` follows the cursor.
        let cut_inside_word = completion[..start]
            .chars()
            .next_back()
            .zip(tail.chars().next())
            .is_some_and(|(a, b)| is_word(a) && is_word(b));
        if !cut_inside_word {
            return len;
        }
    }
    0
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests;
