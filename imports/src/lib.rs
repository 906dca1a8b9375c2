//! Import blocks of source files, found with tree-sitter: the analysis behind HexaCoder's
//! two-step generation.
//!
//! Step 1 shows the model a file's import block alone and lets it add libraries; step 2
//! completes the code from the prompt with the new imports merged into that block. This crate
//! finds the block ([`ImportBlock::find`]), turns what step 1 generated into new import
//! statements ([`ImportBlock::new_imports`]), merges them into the prompt as one edit
//! ([`ImportBlock::merge`]), and drops the ones the completion never uses
//! ([`ImportBlock::prune_unused`]).
//! It knows nothing about models.
//!
//! Why one file of about 900 lines: the per-language parts are small tables (which nodes are
//! imports, what names they bind) over one algorithm; split by language, the algorithm would be
//! scattered across nine files.
#![deny(missing_docs)]

use std::collections::HashSet;
use std::ops::Range;

use tree_sitter::{Node, Parser, Tree};

/// Languages with an import grammar here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Language {
    /// `import` / `from … import`.
    Python,
    /// `#include`.
    C,
    /// `#include`.
    Cpp,
    /// `import … from '…'` and `const x = require('…')`.
    JavaScript,
    /// As JavaScript, plus `import x = require('…')`.
    TypeScript,
    /// TypeScript with JSX.
    Tsx,
    /// `import "fmt"` and `import ( … )`, after the package clause.
    Go,
    /// `import java.util.List;`, after the package declaration.
    Java,
    /// `use std::io;` and `extern crate x;`.
    Rust,
}

/// Every language, for listings and tests.
pub const LANGUAGES: [Language; 9] = [
    Language::Python,
    Language::C,
    Language::Cpp,
    Language::JavaScript,
    Language::TypeScript,
    Language::Tsx,
    Language::Go,
    Language::Java,
    Language::Rust,
];

impl Language {
    /// From an editor language id, a file extension or a name (`python`, `py`, `c`, `h`,
    /// `cpp`, `c++`, `cc`, `hpp`, `javascript`, `js`, `typescript`, `ts`, `tsx`, `go`,
    /// `java`, `rust`, `rs`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim_start_matches('.').to_ascii_lowercase().as_str() {
            "python" | "py" | "python3" | "pyi" => Some(Language::Python),
            "c" | "h" => Some(Language::C),
            "cpp" | "c++" | "cc" | "cxx" | "hpp" | "hh" | "hxx" => Some(Language::Cpp),
            "javascript" | "js" | "jsx" | "mjs" | "cjs" | "javascriptreact" => {
                Some(Language::JavaScript)
            }
            "typescript" | "ts" | "mts" | "cts" => Some(Language::TypeScript),
            "typescriptreact" | "tsx" => Some(Language::Tsx),
            "go" | "golang" => Some(Language::Go),
            "java" => Some(Language::Java),
            "rust" | "rs" => Some(Language::Rust),
            _ => None,
        }
    }

    /// The language of a prompt from its first lines, for clients that do not say: a
    /// `#include` means C or C++ (C++ when it uses the standard library's namespaces,
    /// classes or templates), a Go package clause Go, `import a.b.C;` Java, `use a::b;`
    /// Rust, `import … from '…'` or `require('…')` JavaScript (TypeScript with type
    /// annotations), and Python import statements Python. `None` when it has none of these.
    pub fn detect(source: &str) -> Option<Self> {
        let lines: Vec<&str> = source.lines().map(str::trim).take(200).collect();
        let any = |test: &dyn Fn(&str) -> bool| lines.iter().any(|l| test(l));
        if any(&|l| l.starts_with("#include")) {
            const CPP_MARKERS: &[&str] = &[
                "std::",
                "namespace ",
                "template<",
                "template <",
                "class ",
                "#include <iostream>",
                "#include <string>",
                "#include <vector>",
                "#include <memory>",
            ];
            let cpp = CPP_MARKERS.iter().any(|m| source.contains(m));
            return Some(if cpp { Language::Cpp } else { Language::C });
        }
        if any(&|l| l.starts_with("package ") && !l.ends_with(';')) {
            return Some(Language::Go);
        }
        let java_import = |l: &str| {
            (l.starts_with("import ") || l.starts_with("package "))
                && l.ends_with(';')
                && !l.contains(['"', '\'', '{', '='])
                && !l.contains(" from ")
        };
        if any(&java_import) {
            return Some(Language::Java);
        }
        if any(&|l| (l.starts_with("use ") || l.starts_with("pub use ")) && l.contains("::")) {
            return Some(Language::Rust);
        }
        let es_import = |l: &str| {
            (l.starts_with("import ") && (l.contains(" from ") || l.contains(['"', '\''])))
                || l.contains("require(")
        };
        if any(&es_import) {
            const TS_MARKERS: &[&str] = &["import type ", ": string", ": number", "interface "];
            let ts = TS_MARKERS.iter().any(|m| source.contains(m));
            return Some(if ts {
                Language::TypeScript
            } else {
                Language::JavaScript
            });
        }
        let python = ImportBlock::find(Language::Python, source);
        (!python.imports.is_empty()).then_some(Language::Python)
    }

    /// How lines that may be (or begin) an import, or sit among imports, start.
    fn import_line_starts(self) -> &'static [&'static str] {
        match self {
            Language::Python => &["import ", "from ", "#"],
            Language::C | Language::Cpp => &["#include", "//", "/*"],
            Language::JavaScript | Language::TypeScript | Language::Tsx => &[
                "import ", "import{", "const ", "let ", "var ", "//", "/*", "*",
            ],
            Language::Go => &["import ", "import(", "//", "/*"],
            Language::Java => &["import ", "//", "/*", "*"],
            Language::Rust => &[
                "use ",
                "pub use ",
                "pub(crate) use ",
                "extern crate ",
                "//",
                "/*",
            ],
        }
    }

    /// Whether a generated line (or the start of one, when not `complete`) may be an import
    /// or something allowed among imports (a blank line, a comment).
    fn may_begin_import(self, line: &str, complete: bool) -> bool {
        let line = match self {
            // Indentation would put a Python line inside something else.
            Language::Python => line.trim_end(),
            _ => line.trim(),
        };
        line.is_empty()
            || self
                .import_line_starts()
                .iter()
                .any(|k| line.starts_with(k) || (!complete && k.starts_with(line)))
    }

    fn grammar(self) -> tree_sitter::Language {
        match self {
            Language::Python => tree_sitter_python::LANGUAGE.into(),
            Language::C => tree_sitter_c::LANGUAGE.into(),
            Language::Cpp => tree_sitter_cpp::LANGUAGE.into(),
            Language::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
            Language::TypeScript => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
            Language::Tsx => tree_sitter_typescript::LANGUAGE_TSX.into(),
            Language::Go => tree_sitter_go::LANGUAGE.into(),
            Language::Java => tree_sitter_java::LANGUAGE.into(),
            Language::Rust => tree_sitter_rust::LANGUAGE.into(),
        }
    }

    fn parse(self, source: &str) -> Option<Tree> {
        let mut parser = Parser::new();
        parser.set_language(&self.grammar()).ok()?;
        parser.parse(source, None)
    }

    /// Whether a top-level node is an import statement.
    fn is_import(self, node: Node<'_>, source: &str) -> bool {
        match self {
            Language::Python => matches!(
                node.kind(),
                "import_statement" | "import_from_statement" | "future_import_statement"
            ),
            Language::C | Language::Cpp => node.kind() == "preproc_include",
            Language::JavaScript | Language::TypeScript | Language::Tsx => {
                node.kind() == "import_statement" || is_require(node, source)
            }
            Language::Go | Language::Java => node.kind() == "import_declaration",
            Language::Rust => {
                matches!(node.kind(), "use_declaration" | "extern_crate_declaration")
            }
        }
    }

    /// Whether a top-level node may sit before or between imports without ending the block.
    fn is_header(self, node: Node<'_>, first_statement: bool) -> bool {
        if is_comment(node.kind()) {
            return true;
        }
        match (self, node.kind()) {
            // A module docstring; a `"use strict"` directive.
            (
                Language::Python | Language::JavaScript | Language::TypeScript | Language::Tsx,
                "expression_statement",
            ) => first_statement && node.named_child(0).is_some_and(|c| c.kind() == "string"),
            (Language::JavaScript | Language::TypeScript | Language::Tsx, "hash_bang_line") => true,
            // `#pragma once`, `#define _GNU_SOURCE` and the like.
            (Language::C | Language::Cpp, "preproc_call" | "preproc_def") => true,
            (Language::Go, "package_clause") | (Language::Java, "package_declaration") => true,
            // `#![deny(...)]`, and `mod x;` declarations among the `use`s.
            (Language::Rust, "inner_attribute_item") => true,
            (Language::Rust, "mod_item") => node.child_by_field_name("body").is_none(),
            _ => false,
        }
    }

    /// `try:` around imports only (optional dependencies).
    fn is_import_try(self, node: Node<'_>) -> bool {
        if self != Language::Python || node.kind() != "try_statement" {
            return false;
        }
        let mut cursor = node.walk();
        let mut any = false;
        for child in node.named_children(&mut cursor) {
            let mut inner = child.walk();
            let block = match child.kind() {
                "block" => Some(child),
                "except_clause" | "else_clause" | "finally_clause" => child
                    .named_children(&mut inner)
                    .find(|c| c.kind() == "block"),
                _ => None,
            };
            let Some(block) = block else { continue };
            let mut statements = block.walk();
            for statement in block.named_children(&mut statements) {
                match statement.kind() {
                    "import_statement" | "import_from_statement" => any = true,
                    "pass_statement" | "comment" => {}
                    // `HAS_X = False` in the except branch is still an import idiom.
                    "expression_statement" if child.kind() != "block" => {}
                    _ => return false,
                }
            }
        }
        any
    }
}

/// One import statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Import {
    /// Its text, as written.
    pub text: String,
    /// Byte range in the source it was found in.
    pub range: Range<usize>,
    /// Names it binds (`import os.path` binds `os`; `from a import b as c` binds `c`). Empty
    /// for C includes and `import *`, whose use cannot be told from identifiers.
    pub bound_names: Vec<String>,
}

/// A file's import block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportBlock {
    /// The language it was parsed as.
    pub language: Language,
    /// Every import statement of the block, in order.
    pub imports: Vec<Import>,
    /// Bytes from the first to the last import (empty at [`ImportBlock::insert_at`] when there
    /// are none).
    pub range: Range<usize>,
    /// Where new imports go: the line after the block, or after a shebang, docstring,
    /// comments and pragmas when there is no import yet.
    pub insert_at: usize,
    /// Whether the block ends with a top-level import line that step 1 may extend.
    last_line_extendable: bool,
}

/// A change to the prompt, LSP-style: replace `range` (zero-based lines and UTF-16 columns of
/// the original prompt) with `new_text`. The wire type itself, so the edit reaches the editor
/// as it was computed.
pub use hexacoder_api::TextEdit;

/// What step 1 added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewImports {
    /// New statements, each on its own line.
    pub added: Vec<Import>,
    /// The last existing import line, extended (`from flask import request` →
    /// `from flask import request, escape`).
    pub extended_last: Option<Import>,
}

impl NewImports {
    /// Whether step 1 added nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.extended_last.is_none()
    }

    /// Every new or changed statement.
    pub fn statements(&self) -> impl Iterator<Item = &Import> {
        self.extended_last.iter().chain(&self.added)
    }
}

impl ImportBlock {
    /// Finds the import block: the top-level imports from the first one to the first statement
    /// that is neither an import nor a comment (Python `try:` blocks of imports count as
    /// imports). A string that merely contains `import` is not one.
    pub fn find(language: Language, source: &str) -> ImportBlock {
        let mut block = ImportBlock {
            language,
            imports: Vec::new(),
            range: 0..0,
            insert_at: 0,
            last_line_extendable: false,
        };
        let Some(tree) = language.parse(source) else {
            return block;
        };
        let mut first_statement = true;
        let mut block_end = None;
        for node in top_level(tree.root_node()) {
            if language.is_import(node, source) {
                block.imports.push(import_of(language, node, source));
                block_end = Some(trimmed_end(source, node));
                // `from flask import request` → `…, escape`; an include has nothing to extend.
                block.last_line_extendable = language == Language::Python;
            } else if language.is_import_try(node) {
                collect_imports(language, node, source, &mut block.imports);
                block_end = Some(trimmed_end(source, node));
                block.last_line_extendable = false;
            } else if language.is_header(node, first_statement) {
                if block.imports.is_empty() {
                    block.insert_at = line_end(source, node.end_byte());
                }
            } else {
                break;
            }
            // A shebang or comment may precede the docstring.
            if !is_comment(node.kind()) && node.kind() != "hash_bang_line" {
                first_statement = false;
            }
        }
        if let (Some(first), Some(end)) = (block.imports.first(), block_end) {
            block.range = first.range.start.min(end)..end;
            block.insert_at = line_end(source, end);
        } else {
            block.range = block.insert_at..block.insert_at;
        }
        block
    }

    /// The step-1 prompt: the file up to the end of its import block (a shebang, docstring or
    /// comments before the block stay, so step 2's prompt starts with exactly this text and
    /// reuses its KV state). It ends without a newline when the model may extend the last
    /// line, and with one when that line sits inside a `try:`. Without imports it is what
    /// precedes [`ImportBlock::insert_at`].
    pub fn step1_prompt(&self, source: &str) -> String {
        let mut text = source[..self.range.end].to_string();
        if !self.last_line_extendable && !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }

    /// Whether step 1 is over after generating `generated`: a line has begun that cannot be
    /// an import (code, a definition, an indented line), so nothing after it is kept.
    /// Generation can stop there instead of spending the rest of its budget.
    pub fn step1_done(&self, generated: &str) -> bool {
        let mut rest = generated;
        if self.last_line_extendable && !self.imports.is_empty() {
            match generated.split_once('\n') {
                Some((_, after)) => rest = after,
                // Still on the last import's line.
                None => return false,
            }
        }
        let lines: Vec<&str> = rest.split('\n').collect();
        let mut open_brackets = 0i64;
        for (index, line) in lines.iter().enumerate() {
            let complete = index + 1 < lines.len();
            if open_brackets <= 0 && !self.language.may_begin_import(line, complete) {
                return true;
            }
            open_brackets += line.matches(['(', '{']).count() as i64;
            open_brackets -= line.matches([')', '}']).count() as i64;
        }
        false
    }

    /// The new imports in what step 1 generated after [`ImportBlock::step1_prompt`]:
    /// complete lines up to the first one that is not an import, parsed, valid, and not
    /// already present. A continuation of the last line is an extension of that import.
    pub fn new_imports(&self, generated: &str) -> NewImports {
        let mut result = NewImports::default();
        let existing: HashSet<String> = self.imports.iter().map(|i| normalize(&i.text)).collect();
        let mut rest = generated;
        // A continuation of the last line (no newline first) extends that import, when the
        // block ends with it (not inside a `try:`).
        if let Some(last) = self.imports.last()
            && self.last_line_extendable
            && !generated.starts_with('\n')
        {
            let (continuation, after) = match generated.split_once('\n') {
                Some((line, after)) => (line, Some(after)),
                None => (generated, None),
            };
            if after.is_some() && !continuation.trim().is_empty() {
                let candidate = format!("{}{}", last.text.trim_end(), continuation);
                if let Some(statement) = sole_import(self.language, &candidate)
                    && normalize(&statement.text) != normalize(&last.text)
                {
                    result.extended_last = Some(Import {
                        range: last.range.clone(),
                        ..statement
                    });
                }
            }
            rest = after.unwrap_or("");
        }
        let mut seen = existing;
        let mut pending = String::new();
        for line in complete_lines(rest) {
            if line.trim().is_empty() {
                continue;
            }
            pending.push_str(line);
            pending.push('\n');
            match classify(self.language, &pending) {
                Parsed::Imports(statements) => {
                    for statement in statements {
                        if seen.insert(normalize(&statement.text)) {
                            result.added.push(statement);
                        }
                    }
                    pending.clear();
                }
                // A parenthesized import may span lines.
                Parsed::Incomplete if pending.lines().count() < 8 => {}
                _ => break,
            }
        }
        result
    }

    /// `new` without the imports whose bound names never appear as identifiers in `code`
    /// (the completion, and whatever else of the file they could serve), and the ones
    /// removed. An extension of the last line is undone when none of the names it added is
    /// used. C includes and `import *`, whose use cannot be told, are kept.
    pub fn prune_unused(&self, new: &NewImports, code: &str) -> (NewImports, Vec<Import>) {
        let used = identifiers(self.language, code);
        let any_used = |names: &mut dyn Iterator<Item = &String>| {
            let mut names = names.peekable();
            names.peek().is_none() || names.any(|n| used.contains(n))
        };
        let mut kept = NewImports::default();
        let mut pruned = Vec::new();
        if let Some(extended) = &new.extended_last {
            let before: HashSet<&String> = self
                .imports
                .last()
                .map(|last| last.bound_names.iter().collect())
                .unwrap_or_default();
            let mut added = extended.bound_names.iter().filter(|n| !before.contains(n));
            if extended.bound_names.is_empty() || any_used(&mut added) {
                kept.extended_last = Some(extended.clone());
            } else {
                pruned.push(extended.clone());
            }
        }
        for import in &new.added {
            if any_used(&mut import.bound_names.iter()) {
                kept.added.push(import.clone());
            } else {
                pruned.push(import.clone());
            }
        }
        (kept, pruned)
    }

    /// The prompt with `new` merged into the block (no second block, nothing duplicated), and
    /// the same change as one edit of the original prompt.
    pub fn merge(&self, source: &str, new: &NewImports) -> (String, TextEdit) {
        let lines: Vec<&str> = new.added.iter().map(|i| i.text.as_str()).collect();
        let (start, end, text) = match &new.extended_last {
            // The extended statement replaces the old one; new lines follow it.
            Some(extended) => {
                let mut text = extended.text.clone();
                for line in &lines {
                    text.push('\n');
                    text.push_str(line);
                }
                (extended.range.start, extended.range.end, text)
            }
            None => {
                let at = self.insert_at;
                let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
                if !text.is_empty() && at > 0 && !source[..at].ends_with('\n') {
                    text.insert(0, '\n');
                }
                (at, at, text)
            }
        };
        let mut merged = String::with_capacity(source.len() + text.len());
        merged.push_str(&source[..start]);
        merged.push_str(&text);
        merged.push_str(&source[end..]);
        let edit = TextEdit::new(position(source, start), position(source, end), text);
        (merged, edit)
    }
}

enum Parsed {
    Imports(Vec<Import>),
    Incomplete,
    Other,
}

/// Whether `text` parses as import statements only.
fn classify(language: Language, text: &str) -> Parsed {
    let Some(tree) = language.parse(text) else {
        return Parsed::Other;
    };
    let root = tree.root_node();
    let mut cursor = root.walk();
    let nodes: Vec<Node<'_>> = root
        .named_children(&mut cursor)
        .filter(|n| !is_comment(n.kind()))
        .collect();
    if nodes.is_empty() {
        return Parsed::Other;
    }
    if root.has_error() {
        // An open bracket of `from x import (`, `import {` or `use a::{` is incomplete, not
        // wrong.
        let opens = text.matches(['(', '{']).count();
        let closes = text.matches([')', '}']).count();
        let starts_import = language
            .import_line_starts()
            .iter()
            .filter(|k| k.chars().next().is_some_and(char::is_alphabetic))
            .any(|k| text.trim_start().starts_with(k));
        return if opens > closes && starts_import {
            Parsed::Incomplete
        } else {
            Parsed::Other
        };
    }
    if nodes.iter().all(|n| language.is_import(*n, text)) {
        Parsed::Imports(
            nodes
                .into_iter()
                .map(|n| import_of(language, n, text))
                .collect(),
        )
    } else {
        Parsed::Other
    }
}

/// `text` parsed as exactly one import statement.
fn sole_import(language: Language, text: &str) -> Option<Import> {
    match classify(language, &format!("{text}\n")) {
        Parsed::Imports(mut imports) if imports.len() == 1 => imports.pop(),
        _ => None,
    }
}

fn collect_imports(language: Language, node: Node<'_>, source: &str, out: &mut Vec<Import>) {
    let mut cursor = node.walk();
    let children: Vec<Node<'_>> = node.named_children(&mut cursor).collect();
    for child in children {
        if language.is_import(child, source) {
            out.push(import_of(language, child, source));
        } else {
            collect_imports(language, child, source, out);
        }
    }
}

/// Top-level statements in order. A prompt is a cut-off file (an unterminated docstring is
/// common), which tree-sitter wraps in `ERROR` nodes; their children are read through, so an
/// error further down never hides the imports above it.
fn top_level(root: Node<'_>) -> Vec<Node<'_>> {
    let mut out = Vec::new();
    let mut cursor = root.walk();
    for node in root.named_children(&mut cursor) {
        if node.kind() == "ERROR" {
            out.extend(top_level(node));
        } else {
            out.push(node);
        }
    }
    out
}

/// The end of `node` without trailing whitespace.
fn trimmed_end(source: &str, node: Node<'_>) -> usize {
    node.start_byte() + source[node.byte_range()].trim_end().len()
}

fn import_of(language: Language, node: Node<'_>, source: &str) -> Import {
    let text = source[node.byte_range()].trim_end().to_string();
    let bound_names = match language {
        Language::Python => python_bound_names(node, source),
        Language::C | Language::Cpp => Vec::new(),
        Language::JavaScript | Language::TypeScript | Language::Tsx => es_bound_names(node, source),
        Language::Go => go_bound_names(node, source),
        Language::Java => java_bound_names(node, source),
        Language::Rust => rust_bound_names(node, source),
    };
    Import {
        text,
        range: node.start_byte()..node.start_byte() + source[node.byte_range()].trim_end().len(),
        bound_names,
    }
}

fn python_bound_names(node: Node<'_>, source: &str) -> Vec<String> {
    let text = |n: Node<'_>| source[n.byte_range()].to_string();
    let mut names = Vec::new();
    let mut cursor = node.walk();
    let module = node.child_by_field_name("module_name").map(|n| n.id());
    for child in node.children_by_field_name("name", &mut cursor) {
        if Some(child.id()) == module {
            continue;
        }
        let name = match child.kind() {
            "aliased_import" => child.child_by_field_name("alias").map(text),
            "dotted_name" if node.kind() == "import_statement" => {
                // `import os.path` binds `os`.
                child.named_child(0).map(text)
            }
            "dotted_name" => Some(text(child)),
            _ => None,
        };
        names.extend(name);
    }
    if node.kind() == "future_import_statement" {
        return Vec::new();
    }
    let mut wildcard = node.walk();
    if node
        .named_children(&mut wildcard)
        .any(|c| c.kind() == "wildcard_import")
    {
        return Vec::new();
    }
    names
}

/// Comment node kinds of every grammar here.
fn is_comment(kind: &str) -> bool {
    matches!(kind, "comment" | "line_comment" | "block_comment")
}

/// `const x = require('y')` (every declarator a `require` call).
fn is_require(node: Node<'_>, source: &str) -> bool {
    if !matches!(node.kind(), "lexical_declaration" | "variable_declaration") {
        return false;
    }
    let mut cursor = node.walk();
    let declarators: Vec<Node<'_>> = node
        .named_children(&mut cursor)
        .filter(|c| c.kind() == "variable_declarator")
        .collect();
    !declarators.is_empty()
        && declarators.iter().all(|d| {
            d.child_by_field_name("value").is_some_and(|value| {
                value.kind() == "call_expression"
                    && value
                        .child_by_field_name("function")
                        .is_some_and(|f| &source[f.byte_range()] == "require")
            })
        })
}

/// Names an ES import or `require` binds; empty (use cannot be told) for a bare
/// `import 'x'`.
fn es_bound_names(node: Node<'_>, source: &str) -> Vec<String> {
    let text = |n: Node<'_>| source[n.byte_range()].to_string();
    let mut names = Vec::new();
    let mut stack = vec![node];
    while let Some(current) = stack.pop() {
        match current.kind() {
            // `import x from`, `import * as ns from`, `import x = require(...)`.
            "import_clause" | "namespace_import" | "import_require_clause" => {
                let mut cursor = current.walk();
                for child in current.named_children(&mut cursor) {
                    if child.kind() == "identifier" {
                        names.push(text(child));
                    } else {
                        stack.push(child);
                    }
                }
            }
            "import_specifier" => {
                let bound = current
                    .child_by_field_name("alias")
                    .or_else(|| current.child_by_field_name("name"));
                names.extend(bound.map(text));
            }
            // `const {a, b: c} = require(...)`.
            "variable_declarator" => {
                if let Some(name) = current.child_by_field_name("name") {
                    stack.push(name);
                }
            }
            "identifier" | "shorthand_property_identifier_pattern" => names.push(text(current)),
            "pair_pattern" => {
                if let Some(value) = current.child_by_field_name("value") {
                    stack.push(value);
                }
            }
            "string" | "call_expression" => {}
            _ => {
                let mut cursor = current.walk();
                stack.extend(current.named_children(&mut cursor));
            }
        }
    }
    names
}

/// Package names a Go import binds: the alias, or the path's last element. `_` and `.`
/// imports cannot be told by use and bind nothing here.
fn go_bound_names(node: Node<'_>, source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![node];
    while let Some(current) = stack.pop() {
        if current.kind() != "import_spec" {
            let mut cursor = current.walk();
            stack.extend(current.named_children(&mut cursor));
            continue;
        }
        match current.child_by_field_name("name") {
            Some(alias) if alias.kind() == "package_identifier" => {
                names.push(source[alias.byte_range()].to_string());
            }
            // A blank or dot import: its use cannot be told.
            Some(_) => return Vec::new(),
            None => {
                if let Some(path) = current.child_by_field_name("path") {
                    let path = source[path.byte_range()].trim_matches(['"', '`']);
                    let last = path.rsplit('/').next().unwrap_or(path);
                    // `gopkg.in/yaml.v3` binds `yaml`.
                    let name = last.split('.').next().unwrap_or(last);
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

/// The simple name a Java import binds; nothing for `*`.
fn java_bound_names(node: Node<'_>, source: &str) -> Vec<String> {
    let mut cursor = node.walk();
    let children: Vec<Node<'_>> = node.named_children(&mut cursor).collect();
    if children.iter().any(|c| c.kind() == "asterisk") {
        return Vec::new();
    }
    children
        .iter()
        .find_map(|c| match c.kind() {
            "scoped_identifier" => c.child_by_field_name("name"),
            "identifier" => Some(*c),
            _ => None,
        })
        .map(|n| vec![source[n.byte_range()].to_string()])
        .unwrap_or_default()
}

/// Names a Rust `use` (or `extern crate`) binds; nothing when it has a `*`.
fn rust_bound_names(node: Node<'_>, source: &str) -> Vec<String> {
    let text = |n: Node<'_>| source[n.byte_range()].to_string();
    if node.kind() == "extern_crate_declaration" {
        let bound = node
            .child_by_field_name("alias")
            .or_else(|| node.child_by_field_name("name"));
        return bound.map(text).into_iter().collect();
    }
    let mut names = Vec::new();
    let Some(argument) = node.child_by_field_name("argument") else {
        return names;
    };
    let mut stack = vec![argument];
    while let Some(current) = stack.pop() {
        match current.kind() {
            "identifier" => names.push(text(current)),
            "scoped_identifier" => names.extend(current.child_by_field_name("name").map(text)),
            "use_as_clause" => names.extend(current.child_by_field_name("alias").map(text)),
            // `use a::b::{self}` binds `b`.
            "self" => {
                if let Some(path) = current
                    .parent()
                    .and_then(|list| list.parent())
                    .and_then(|scoped| scoped.child_by_field_name("path"))
                {
                    let path = text(path);
                    names.push(path.rsplit("::").next().unwrap_or(&path).to_string());
                }
            }
            "use_wildcard" => return Vec::new(),
            "scoped_use_list" => stack.extend(current.child_by_field_name("list")),
            "use_list" => {
                let mut cursor = current.walk();
                stack.extend(current.named_children(&mut cursor));
            }
            _ => {}
        }
    }
    names
}

/// Every identifier in `code` (tree-sitter tolerates the partial code a completion is).
fn identifiers(language: Language, code: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let Some(tree) = language.parse(code) else {
        return out;
    };
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        if node.kind().ends_with("identifier") {
            out.insert(code[node.byte_range()].to_string());
        }
        let mut cursor = node.walk();
        stack.extend(node.children(&mut cursor));
    }
    out
}

/// Whitespace-insensitive text of a statement, to compare imports.
fn normalize(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The lines of `text` that end with a newline.
fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete.split('\n').filter(move |_| !text.is_empty())
}

/// The byte after the newline that ends the line holding `at` (or the end of `source`).
fn line_end(source: &str, at: usize) -> usize {
    match source[at..].find('\n') {
        Some(offset) => at + offset + 1,
        None => source.len(),
    }
}

/// LSP position (zero-based line, UTF-16 column) of byte `at`.
fn position(source: &str, at: usize) -> (u32, u32) {
    let before = &source[..at];
    let line = before.matches('\n').count() as u32;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..at].encode_utf16().count() as u32;
    (line, column)
}

#[cfg(test)]
mod tests;
