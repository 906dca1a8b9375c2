//! Training rows, tokenized with a per-token loss mask.
//!
//! Two input formats, told apart per line:
//! - the shared HexaCoder set's `{"text", "changes": [{"char_start", "char_end", "chars"}]}`:
//!   the fixed code and the spans (Python code-point offsets) the fix inserted or replaced;
//! - pairs `{"vulnerable", "fixed", "language", "cwe"}`, whose mask is a token-level diff:
//!   fixed-side tokens that the diff inserts or replaces. The diff is patience (anchored on
//!   tokens unique to both sides), which like the paper's difflib keeps runs whole instead of
//!   matching stray common tokens across a rewritten span.
//!
//! A token is trained on when its bytes overlap a changed character. Only masked tokens
//! carry loss; the rest is context.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use hexacoder_engine::tokenizer::Tokenizer;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::Value;
use similar::{Algorithm, DiffOp};

use super::{Error, Result};

/// One tokenized training row.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Token ids, BOS first when the model wants one.
    pub ids: Vec<u32>,
    /// Per token: whether predicting it carries loss. `mask[0]` is never used.
    pub mask: Vec<bool>,
    /// `python`, `c`, … (detected for format A).
    pub language: String,
    /// `FILE:LINE`, for messages.
    pub origin: String,
}

impl Example {
    /// Tokens that carry loss.
    pub fn masked(&self) -> usize {
        self.mask.iter().skip(1).filter(|&&m| m).count()
    }
}

/// A row as read, before tokenization.
#[derive(Clone, Debug, PartialEq)]
pub enum Row {
    /// Format A: fixed code and the changed spans as byte ranges into it.
    Spans {
        /// The fixed code.
        text: String,
        /// Changed byte ranges.
        changes: Vec<std::ops::Range<usize>>,
    },
    /// Format B: a vulnerable/fixed pair.
    Pair {
        /// Before the fix.
        vulnerable: String,
        /// After the fix; this is what the model is trained on.
        fixed: String,
        /// Its language, as given.
        language: String,
    },
}

impl Row {
    /// The code the model sees.
    pub fn text(&self) -> &str {
        match self {
            Row::Spans { text, .. } => text,
            Row::Pair { fixed, .. } => fixed,
        }
    }
}

/// What reading found, besides the rows.
#[derive(Clone, Debug, Default)]
pub struct ReadStats {
    /// Rows read from the files.
    pub lines: usize,
    /// Format-A rows with no changes (nothing to learn), skipped.
    pub no_changes: usize,
    /// Pairs whose fixed side equals the vulnerable side, skipped.
    pub identical_pairs: usize,
}

/// Reads every line of `paths` into rows; `(row, origin)`.
///
/// # Errors
/// Unreadable files, malformed JSON, missing fields and spans out of range or not matching
/// their `chars`, each naming the file and line.
pub fn read_rows(paths: &[PathBuf]) -> Result<(Vec<(Row, String)>, ReadStats)> {
    let mut rows = Vec::new();
    let mut stats = ReadStats::default();
    for path in paths {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
            let origin = format!("{}:{}", path.display(), index + 1);
            let line = line.map_err(|e| Error::io(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            stats.lines += 1;
            let value: Value = serde_json::from_str(&line)
                .map_err(|e| Error::Data(format!("{origin}: not JSON: {e}")))?;
            match parse_row(&value).map_err(|reason| Error::Data(format!("{origin}: {reason}")))? {
                Some(row) => rows.push((row, origin)),
                None if value.get("changes").is_some() => stats.no_changes += 1,
                None => stats.identical_pairs += 1,
            }
        }
    }
    Ok((rows, stats))
}

/// One JSON row; `None` for a row with nothing to learn.
pub fn parse_row(value: &Value) -> std::result::Result<Option<Row>, String> {
    let string = |field: &str| -> std::result::Result<&str, String> {
        value
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("`{field}` is missing or not a string"))
    };
    if value.get("changes").is_some() {
        let text = string("text")?;
        let changes = value
            .get("changes")
            .and_then(Value::as_array)
            .ok_or("`changes` is not an array")?;
        if changes.is_empty() {
            return Ok(None);
        }
        // Python offsets count code points; the byte offset of each code point, plus the end.
        let bytes_at: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        let n_chars = bytes_at.len() - 1;
        let mut spans = Vec::with_capacity(changes.len());
        for (k, change) in changes.iter().enumerate() {
            let offset = |field: &str| -> std::result::Result<usize, String> {
                change
                    .get(field)
                    .and_then(Value::as_u64)
                    .map(|v| v as usize)
                    .ok_or_else(|| format!("changes[{k}].{field} is missing or not an integer"))
            };
            let (start, end) = (offset("char_start")?, offset("char_end")?);
            if start > end || end > n_chars {
                return Err(format!(
                    "changes[{k}] spans characters {start}..{end}, outside the text's {n_chars}"
                ));
            }
            let range = bytes_at[start]..bytes_at[end];
            if let Some(chars) = change.get("chars").and_then(Value::as_str)
                && &text[range.clone()] != chars
            {
                return Err(format!(
                    "changes[{k}] ({start}..{end}) holds {:?}, not its `chars` {chars:?}: \
                     offsets must count code points",
                    &text[range]
                ));
            }
            if !range.is_empty() {
                spans.push(range);
            }
        }
        if spans.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Row::Spans {
            text: text.to_string(),
            changes: spans,
        }));
    }
    if value.get("fixed").is_some() || value.get("vulnerable").is_some() {
        let (vulnerable, fixed) = (string("vulnerable")?, string("fixed")?);
        if vulnerable == fixed {
            return Ok(None);
        }
        let language = value
            .get("language")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_lowercase();
        return Ok(Some(Row::Pair {
            vulnerable: vulnerable.to_string(),
            fixed: fixed.to_string(),
            language,
        }));
    }
    Err("neither format: expected `text` and `changes`, or `vulnerable` and `fixed`".into())
}

/// Each token's byte range in `text`, from the token bytes (exact for byte-level BPE), or
/// `None` when the tokenizer's normalizer changed the text.
fn token_ranges(tokenizer: &Tokenizer, ids: &[u32], text: &str) -> Option<Vec<(usize, usize)>> {
    let mut ranges = Vec::with_capacity(ids.len());
    let mut at = 0;
    for &id in ids {
        let bytes = tokenizer.token_bytes(id);
        if text.as_bytes().get(at..at + bytes.len()) != Some(bytes) {
            return None;
        }
        ranges.push((at, at + bytes.len()));
        at += bytes.len();
    }
    (at == text.len()).then_some(ranges)
}

/// Tokenizes `row` with its loss mask, cut to at most `max_len` tokens.
///
/// # Errors
/// A tokenizer failure, or a text the tokenizer's normalizer rewrites (offsets would not map).
pub fn tokenize(
    tokenizer: &Tokenizer,
    row: &Row,
    origin: &str,
    max_len: usize,
) -> Result<Option<Example>> {
    let text = row.text();
    let ids = tokenizer.encode_plain(text)?;
    let mask: Vec<bool> = match row {
        Row::Spans { changes, .. } => {
            let ranges = token_ranges(tokenizer, &ids, text).ok_or_else(|| {
                Error::Data(format!(
                    "{origin}: the tokenizer rewrites this text, so changed spans cannot be mapped to tokens"
                ))
            })?;
            ranges
                .iter()
                .map(|&(s, e)| changes.iter().any(|c| c.start < e && s < c.end))
                .collect()
        }
        Row::Pair { vulnerable, .. } => {
            let before = tokenizer.encode_plain(vulnerable)?;
            let mut mask = vec![false; ids.len()];
            for op in similar::capture_diff_slices(Algorithm::Patience, &before, &ids) {
                if let DiffOp::Insert {
                    new_index, new_len, ..
                }
                | DiffOp::Replace {
                    new_index, new_len, ..
                } = op
                {
                    mask[new_index..new_index + new_len].fill(true);
                }
            }
            mask
        }
    };
    let (mut ids, mut mask) = (ids, mask);
    if let Some(bos) = tokenizer.bos_to_add() {
        ids.insert(0, bos);
        mask.insert(0, false);
    }
    let Some(window) = window(&mask, max_len) else {
        return Ok(None);
    };
    let language = match row {
        Row::Pair { language, .. } if !language.is_empty() => language.clone(),
        _ => language_of(text),
    };
    let mut mask = mask[window.clone()].to_vec();
    mask[0] = false;
    let ex = Example {
        ids: ids[window].to_vec(),
        mask,
        language,
        origin: origin.to_string(),
    };
    Ok((ex.masked() > 0).then_some(ex))
}

/// The tokens to keep: up to the last masked one, and at most `max_len` of them, holding as
/// many changes and as much context before them as fit. `None` without a masked token.
fn window(mask: &[bool], max_len: usize) -> Option<std::ops::Range<usize>> {
    let first = mask.iter().skip(1).position(|&m| m)? + 1;
    let last = mask.iter().rposition(|&m| m)?;
    let end = last + 1;
    let max_len = max_len.max(2);
    if end <= max_len {
        return Some(0..end);
    }
    if end - first < max_len {
        // One token of context before the first change, at least, so that it has a predictor.
        return Some(end - max_len..end);
    }
    let start = first - 1;
    Some(start..start + max_len)
}

/// `python`, `c`, `cpp`, … from the code itself; `other` when nothing tells.
pub fn language_of(text: &str) -> String {
    match hexacoder_imports::Language::detect(text) {
        Some(lang) => format!("{lang:?}").to_lowercase(),
        None if text.contains("def ") || text.contains("import ") => "python".into(),
        None if text.contains("#include") || text.contains("int main") => "c".into(),
        None => "other".into(),
    }
}

/// Prompts the trained adapters are evaluated on; training rows that overlap them are dropped.
pub struct EvalPrompts {
    names: HashSet<String>,
    grams: Vec<(Vec<u32>, HashSet<Vec<u32>>)>,
}

/// Token n-gram length for the overlap test.
const GRAM: usize = 8;
/// Names too common to mean a shared function (Flask views, `main`).
const COMMON_NAMES: &[&str] = &["main", "__init__", "index", "run", "test", "get", "post"];

impl EvalPrompts {
    /// CodeLMSec, the Pearce prompts and HumanEval under `bench` (the shared benchmarks).
    ///
    /// # Errors
    /// A missing or unreadable benchmark file.
    pub fn load(bench: &Path, tokenizer: &Tokenizer) -> Result<Self> {
        let mut prompts = Vec::new();
        for file in [
            "codelmsec/codelmsec_prompts.jsonl",
            "hexacoder/pearce_prompts.jsonl",
        ] {
            let path = bench.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            prompts.extend(prompt_fields(&text, &path)?);
        }
        let path = bench.join("humaneval/HumanEval.jsonl.gz");
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(file), &mut text)
            .map_err(|e| Error::io(&path, e))?;
        prompts.extend(prompt_fields(&text, &path)?);
        let mut names = HashSet::new();
        let mut grams = Vec::new();
        for prompt in &prompts {
            names.extend(function_names(prompt));
            let ids = tokenizer.encode_plain(prompt)?;
            let set = ids.windows(GRAM).map(<[u32]>::to_vec).collect();
            grams.push((ids, set));
        }
        names.retain(|n| !COMMON_NAMES.contains(&n.as_str()));
        Ok(EvalPrompts { names, grams })
    }

    /// Prompts loaded.
    pub fn len(&self) -> usize {
        self.grams.len()
    }

    /// Whether none were loaded.
    pub fn is_empty(&self) -> bool {
        self.grams.is_empty()
    }

    /// Why `text` (tokens `ids`) overlaps a prompt: a function of the same name, or over 75%
    /// of a prompt's tokens inside 8-token runs the text shares.
    pub fn overlap(&self, text: &str, ids: &[u32]) -> Option<String> {
        if let Some(name) = function_names(text).find(|n| self.names.contains(n)) {
            return Some(format!("function `{name}`"));
        }
        let row_grams: HashSet<&[u32]> = ids.windows(GRAM).collect();
        for (prompt, _) in &self.grams {
            if prompt.len() < GRAM {
                continue;
            }
            let mut covered = vec![false; prompt.len()];
            for (i, gram) in prompt.windows(GRAM).enumerate() {
                if row_grams.contains(gram) {
                    covered[i..i + GRAM].fill(true);
                }
            }
            let share = covered.iter().filter(|&&c| c).count() as f64 / prompt.len() as f64;
            if share > 0.75 {
                return Some(format!("{:.0}% of a prompt's tokens", share * 100.0));
            }
        }
        None
    }
}

fn prompt_fields(text: &str, path: &Path) -> Result<Vec<String>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let value: Value = serde_json::from_str(line)
                .map_err(|e| Error::Data(format!("{}:{}: {e}", path.display(), i + 1)))?;
            value
                .get("prompt")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| Error::Data(format!("{}:{}: no `prompt`", path.display(), i + 1)))
        })
        .collect()
}

/// Names of the functions `text` defines (Python `def`, C-style definitions).
fn function_names(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines().filter_map(|line| {
        let line = line.trim_start();
        if let Some(rest) = line
            .strip_prefix("def ")
            .or_else(|| line.strip_prefix("async def "))
        {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            return (!name.is_empty()).then_some(name);
        }
        // C: `type name(args) {` or `type name(args)` on a line of its own, not a call.
        let open = line.find('(')?;
        let head = &line[..open];
        let mut words = head.split_whitespace();
        let (_ty, name) = (words.next()?, words.last()?);
        let name = name.trim_start_matches('*');
        let is_definition = !line.ends_with(';')
            && !head.contains('=')
            && !["return", "if", "while", "for", "switch", "else"].contains(&_ty);
        (is_definition && !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_'))
            .then(|| name.to_string())
    })
}

/// The rows after tokenization and filtering, split.
pub struct Dataset {
    /// Training examples.
    pub train: Vec<Example>,
    /// Validation examples.
    pub validation: Vec<Example>,
    /// What was read and dropped.
    pub report: DataReport,
}

/// Counts for the summary printed before training.
#[derive(Clone, Debug, Default)]
pub struct DataReport {
    /// What reading found.
    pub read: ReadStats,
    /// Rows dropped for overlapping an evaluation prompt, with the first few reasons.
    pub overlapping: usize,
    /// Examples of why.
    pub overlap_examples: Vec<String>,
    /// Rows whose changes fell outside the kept window or tokenized to nothing.
    pub untrainable: usize,
    /// Per language: rows, tokens, masked tokens.
    pub per_language: BTreeMap<String, (usize, usize, usize)>,
}

impl DataReport {
    /// The summary, one line per language plus totals.
    pub fn summary(&self, train: usize, validation: usize) -> String {
        let mut out = format!(
            "{} rows read; skipped {} without changes, {} identical pairs, {} without a trainable token; \
             dropped {} overlapping the evaluation prompts\n",
            self.read.lines,
            self.read.no_changes,
            self.read.identical_pairs,
            self.untrainable,
            self.overlapping
        );
        for why in &self.overlap_examples {
            out.push_str(&format!("  dropped {why}\n"));
        }
        let (mut rows, mut tokens, mut masked) = (0, 0, 0);
        for (language, (r, t, m)) in &self.per_language {
            out.push_str(&format!(
                "  {language:<8} {r:>6} rows {t:>9} tokens {m:>8} masked ({:.1}%)\n",
                100.0 * *m as f64 / (*t).max(1) as f64
            ));
            (rows, tokens, masked) = (rows + r, tokens + t, masked + m);
        }
        out.push_str(&format!(
            "  {:<8} {rows:>6} rows {tokens:>9} tokens {masked:>8} masked; {train} train / {validation} validation",
            "total"
        ));
        out
    }
}

/// Reads, tokenizes, filters and splits.
///
/// # Errors
/// As [`read_rows`] and [`tokenize`]; no trainable row at all.
pub fn prepare(
    paths: &[PathBuf],
    tokenizer: &Tokenizer,
    max_len: usize,
    eval_prompts: Option<&EvalPrompts>,
    validation_fraction: f64,
    seed: u64,
) -> Result<Dataset> {
    let (rows, read) = read_rows(paths)?;
    let mut report = DataReport {
        read,
        ..DataReport::default()
    };
    let mut examples = Vec::with_capacity(rows.len());
    for (row, origin) in &rows {
        let Some(example) = tokenize(tokenizer, row, origin, max_len)? else {
            report.untrainable += 1;
            continue;
        };
        if let Some(prompts) = eval_prompts {
            let ids = tokenizer.encode_plain(row.text())?;
            if let Some(why) = prompts.overlap(row.text(), &ids) {
                report.overlapping += 1;
                if report.overlap_examples.len() < 5 {
                    report.overlap_examples.push(format!("{origin}: {why}"));
                }
                continue;
            }
        }
        let entry = report
            .per_language
            .entry(example.language.clone())
            .or_default();
        *entry = (
            entry.0 + 1,
            entry.1 + example.ids.len(),
            entry.2 + example.masked(),
        );
        examples.push(example);
    }
    if examples.is_empty() {
        return Err(Error::Data(format!(
            "no trainable rows in {}: {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            report.summary(0, 0).lines().next().unwrap_or_default()
        )));
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let n_validation = if examples.len() < 2 {
        0
    } else {
        ((examples.len() as f64 * validation_fraction).round() as usize).min(examples.len() - 1)
    };
    let mut slots: Vec<Option<Example>> = examples.into_iter().map(Some).collect();
    let mut take = |i: usize| slots[i].take();
    let validation = order[..n_validation]
        .iter()
        .filter_map(|&i| take(i))
        .collect();
    let train = order[n_validation..]
        .iter()
        .filter_map(|&i| take(i))
        .collect();
    Ok(Dataset {
        train,
        validation,
        report,
    })
}
