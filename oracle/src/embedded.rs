//! The embedded analyzer: YAML rules for `ast-grep`, matched on tree-sitter trees in process,
//! fast enough to run inside a completion request.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use ast_grep_config::{GlobalRules, RuleConfig};
use ast_grep_core::Language as AstLanguage;
use ast_grep_core::matcher::{Matcher, MatcherExt, Pattern, PatternBuilder, PatternError};
use ast_grep_core::tree_sitter::{LanguageExt, StrDoc, TSLanguage};
use serde::{Deserialize, Deserializer};

use crate::finding::{Finding, Severity, Span, normalize_cwe};
use crate::null_check;
use crate::redirect_guard;

/// Languages the embedded rules cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Language {
    /// Python 3.
    Python,
    /// C.
    C,
    /// C++ (the C rules run on it too).
    Cpp,
}

impl Language {
    /// From a name or file extension (`python`, `py`, `c`, `h`, `cpp`, `cc`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim_start_matches('.').to_ascii_lowercase().as_str() {
            "python" | "py" | "pyi" => Some(Language::Python),
            "c" | "h" => Some(Language::C),
            "cpp" | "c++" | "cc" | "cxx" | "hpp" | "hh" | "hxx" => Some(Language::Cpp),
            _ => None,
        }
    }

    /// The file extension tools recognize it by.
    pub fn extension(self) -> &'static str {
        match self {
            Language::Python => "py",
            Language::C => "c",
            Language::Cpp => "cpp",
        }
    }

    fn ts(self) -> TSLanguage {
        match self {
            Language::Python => tree_sitter_python::LANGUAGE.into(),
            Language::C => tree_sitter_c::LANGUAGE.into(),
            Language::Cpp => tree_sitter_cpp::LANGUAGE.into(),
        }
    }

    /// A character the grammar accepts in identifiers, standing in for `$` in patterns.
    fn expando(self) -> char {
        match self {
            Language::Python => 'µ',
            Language::C => 'µ',
            Language::Cpp => '𐀀',
        }
    }
}

/// As its name: `python`, `c`, `cpp`.
impl serde::Serialize for Language {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match self {
            Language::Python => "python",
            Language::C => "c",
            Language::Cpp => "cpp",
        })
    }
}

impl<'de> Deserialize<'de> for Language {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Language::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unsupported rule language {name:?}")))
    }
}

impl AstLanguage for Language {
    fn kind_to_id(&self, kind: &str) -> u16 {
        self.ts().id_for_node_kind(kind, true)
    }

    fn field_to_id(&self, field: &str) -> Option<u16> {
        self.ts().field_id_for_name(field).map(|f| f.get())
    }

    fn expando_char(&self) -> char {
        self.expando()
    }

    fn pre_process_pattern<'q>(&self, query: &'q str) -> Cow<'q, str> {
        // `$A`, `$$A`, `$$$A` and `$$$` become expando-led identifiers the parser accepts.
        let expando = self.expando();
        let mut out = String::with_capacity(query.len());
        let mut dollars = 0;
        for c in query.chars() {
            if c == '$' {
                dollars += 1;
                continue;
            }
            let sigil = if c.is_ascii_uppercase() || c == '_' || dollars == 3 {
                expando
            } else {
                '$'
            };
            out.extend(std::iter::repeat_n(sigil, dollars));
            dollars = 0;
            out.push(c);
        }
        let sigil = if dollars == 3 { expando } else { '$' };
        out.extend(std::iter::repeat_n(sigil, dollars));
        Cow::Owned(out)
    }

    fn build_pattern(&self, builder: &PatternBuilder) -> Result<Pattern, PatternError> {
        builder.build(|src| StrDoc::try_new(src, *self))
    }
}

impl LanguageExt for Language {
    fn get_ts_language(&self) -> TSLanguage {
        self.ts()
    }
}

/// A source the embedded analyzer did not analyze.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// tree-sitter's error recovery is slow on some garbled input (15 KB of it took 200 ms,
    /// ten times a valid file's time), and this analyzer runs inside requests.
    #[error(
        "parsing stopped after {elapsed_ms} ms, the budget for {bytes} bytes (tree-sitter recovers slowly from errors in this input)"
    )]
    ParseBudget {
        /// Milliseconds spent.
        elapsed_ms: u64,
        /// The source's size.
        bytes: usize,
    },
    /// The parser returned no tree.
    #[error("the parser returned no tree")]
    NoTree,
}

/// The time a parse may take: this plus [`PARSE_BUDGET_PER_KB`] per KB of source. Valid C
/// and Python parse at 0.1-0.7 ms a KB here (the oddest of 1,450 completions and fuzz inputs:
/// 7 ms for a 3 KB one); the slowest garbled input the fuzzer found, at 14 ms a KB, is cut
/// off.
pub const PARSE_BUDGET_BASE: Duration = Duration::from_millis(100);
/// See [`PARSE_BUDGET_BASE`].
pub const PARSE_BUDGET_PER_KB: Duration = Duration::from_millis(5);

thread_local! {
    /// One parser per language and thread, as ast-grep keeps them.
    static PARSERS: RefCell<HashMap<Language, tree_sitter::Parser>> =
        RefCell::new(HashMap::new());
}

/// Parses `source` within the budget for its size.
fn parse(
    language: Language,
    source: &str,
    budget: (Duration, Duration),
) -> Result<ast_grep_core::AstGrep<StrDoc<Language>>, ScanError> {
    let limit = budget.0 + budget.1.mul_f64(source.len() as f64 / 1024.0);
    let started = Instant::now();
    let tree = PARSERS.with(|parsers| {
        let mut parsers = parsers.borrow_mut();
        let parser = match parsers.entry(language) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let mut parser = tree_sitter::Parser::new();
                parser
                    .set_language(&language.ts())
                    .map_err(|_| ScanError::NoTree)?;
                entry.insert(parser)
            }
        };
        // A cancelled parse leaves state behind that the next would resume.
        parser.reset();
        let bytes = source.as_bytes();
        let mut past_budget = |_: &tree_sitter::ParseState| {
            if started.elapsed() > limit {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        };
        let options = tree_sitter::ParseOptions::new().progress_callback(&mut past_budget);
        Ok(parser.parse_with_options(
            &mut |at, _| bytes.get(at..).unwrap_or_default(),
            None,
            Some(options),
        ))
    })?;
    let Some(tree) = tree else {
        return Err(if started.elapsed() > limit {
            ScanError::ParseBudget {
                elapsed_ms: started.elapsed().as_millis() as u64,
                bytes: source.len(),
            }
        } else {
            ScanError::NoTree
        });
    };
    Ok(ast_grep_core::AstGrep::doc(StrDoc {
        src: source.to_string(),
        lang: language,
        tree,
    }))
}

/// A rule file that does not load.
#[derive(Debug, thiserror::Error)]
#[error("rule file {file}: {reason}")]
pub struct RuleError {
    /// The file.
    pub file: String,
    /// What is wrong.
    pub reason: String,
}

/// The parts of a rule the engine does not keep: its CWE.
#[derive(Deserialize)]
struct RuleHeader {
    id: String,
    language: String,
    metadata: Option<RuleMetadata>,
}

#[derive(Deserialize)]
struct RuleMetadata {
    cwe: Option<String>,
    flow: Option<Flow>,
}

/// A check after the match that ast-grep's relations express only at quadratic cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Flow {
    /// The match binds `$P`: report it only if a later statement of the same block uses `$P`
    /// and none checks it against NULL ([`crate::null_check`]).
    NullCheck,
    /// The match is a redirect to request data: report it unless a check confines the target to allowed hosts or a relative path
    /// ([`crate::redirect_guard`]).
    RedirectGuard,
}

struct Rule {
    config: RuleConfig<Language>,
    cwe: String,
    severity: Severity,
    flow: Option<Flow>,
    /// Node kinds the rule can match (by kind id); `None`: any.
    kinds: Option<Vec<bool>>,
}

/// HexaCoder's own rules, compiled into the binary.
pub const BUILTIN_RULES: &[(&str, &str)] = &[
    (
        "python/cwe-078-os-command.yml",
        include_str!("../rules/python/cwe-078-os-command.yml"),
    ),
    (
        "python/cwe-022-path-traversal.yml",
        include_str!("../rules/python/cwe-022-path-traversal.yml"),
    ),
    (
        "python/cwe-020-input-validation.yml",
        include_str!("../rules/python/cwe-020-input-validation.yml"),
    ),
    (
        "python/cwe-117-log-injection.yml",
        include_str!("../rules/python/cwe-117-log-injection.yml"),
    ),
    (
        "python/cwe-601-open-redirect.yml",
        include_str!("../rules/python/cwe-601-open-redirect.yml"),
    ),
    (
        "python/cwe-089-sql.yml",
        include_str!("../rules/python/cwe-089-sql.yml"),
    ),
    (
        "python/cwe-094-code-injection.yml",
        include_str!("../rules/python/cwe-094-code-injection.yml"),
    ),
    (
        "python/cwe-502-deserialization.yml",
        include_str!("../rules/python/cwe-502-deserialization.yml"),
    ),
    (
        "python/cwe-079-xss.yml",
        include_str!("../rules/python/cwe-079-xss.yml"),
    ),
    (
        "python/cwe-611-xxe.yml",
        include_str!("../rules/python/cwe-611-xxe.yml"),
    ),
    (
        "c/cwe-787-unbounded-copy.yml",
        include_str!("../rules/c/cwe-787-unbounded-copy.yml"),
    ),
    (
        "c/cwe-190-size-overflow.yml",
        include_str!("../rules/c/cwe-190-size-overflow.yml"),
    ),
    (
        "c/cwe-022-path-traversal.yml",
        include_str!("../rules/c/cwe-022-path-traversal.yml"),
    ),
    (
        "c/cwe-476-unchecked-malloc.yml",
        include_str!("../rules/c/cwe-476-unchecked-malloc.yml"),
    ),
];

/// The embedded analyzer: compiled rules per language.
pub struct EmbeddedAnalyzer {
    rules: Vec<(Language, Rule)>,
    /// Time a parse may take: a base and a share per KB.
    parse_budget: (Duration, Duration),
    /// For rules with `flow: null-check`, per language that has one.
    null_check_shapes: Vec<(Language, null_check::Shapes)>,
}

impl EmbeddedAnalyzer {
    /// The built-in rules.
    ///
    /// # Errors
    /// A rule that does not compile (a bug in the rules, caught by the tests).
    pub fn builtin() -> Result<Self, RuleError> {
        Self::from_rules(BUILTIN_RULES.iter().copied())
    }

    /// Rules from `(file name, YAML)` pairs; a file may hold several documents. Rules for C
    /// also run on C++.
    ///
    /// # Errors
    /// YAML that is not a rule, a rule without `metadata.cwe`, or a pattern that does not parse.
    pub fn from_rules<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, RuleError> {
        let globals = GlobalRules::default();
        let mut rules = Vec::new();
        let mut null_check_shapes = Vec::new();
        for (file, yaml) in files {
            let error = |reason: String| RuleError {
                file: file.to_string(),
                reason,
            };
            let documents = yaml
                .split("\n---\n")
                .filter(|d| !d.trim().is_empty() && d.trim() != "---");
            for document in documents {
                let header: RuleHeader =
                    ast_grep_config::from_str(document).map_err(|e| error(e.to_string()))?;
                let (cwe, flow) = header
                    .metadata
                    .map(|m| (m.cwe.and_then(|c| normalize_cwe(&c)), m.flow))
                    .unwrap_or_default();
                let cwe =
                    cwe.ok_or_else(|| error(format!("rule {} has no metadata.cwe", header.id)))?;
                let mut variants = vec![document.to_string()];
                if Language::from_name(&header.language) == Some(Language::C) {
                    variants.push(document.replacen(
                        &format!("language: {}", header.language),
                        "language: cpp",
                        1,
                    ));
                }
                for variant in variants {
                    let configs: Vec<RuleConfig<Language>> =
                        ast_grep_config::from_yaml_string(&variant, &globals)
                            .map_err(|e| error(format!("rule {}: {e}", header.id)))?;
                    for config in configs {
                        let severity = match config.severity {
                            ast_grep_config::Severity::Error => Severity::Error,
                            ast_grep_config::Severity::Warning => Severity::Warning,
                            _ => Severity::Note,
                        };
                        let language = config.language;
                        if flow == Some(Flow::NullCheck)
                            && !null_check_shapes.iter().any(|(l, _)| *l == language)
                        {
                            let shapes = null_check::Shapes::new(language)
                                .map_err(|e| error(format!("rule {}: {e}", header.id)))?;
                            null_check_shapes.push((language, shapes));
                        }
                        let kinds = config.matcher.potential_kinds().map(|set| {
                            let ids: Vec<usize> = set.iter().collect();
                            let mut kinds = vec![false; ids.iter().max().map_or(0, |m| m + 1)];
                            for id in ids {
                                kinds[id] = true;
                            }
                            kinds
                        });
                        rules.push((
                            language,
                            Rule {
                                config,
                                cwe: cwe.clone(),
                                severity,
                                flow,
                                kinds,
                            },
                        ));
                    }
                }
            }
        }
        Ok(EmbeddedAnalyzer {
            rules,
            parse_budget: (PARSE_BUDGET_BASE, PARSE_BUDGET_PER_KB),
            null_check_shapes,
        })
    }

    /// This analyzer with another parse budget: `base` plus `per_kb` per KB of source.
    pub fn with_parse_budget(self, base: Duration, per_kb: Duration) -> Self {
        EmbeddedAnalyzer {
            parse_budget: (base, per_kb),
            ..self
        }
    }

    /// Rules loaded, per language.
    pub fn rule_count(&self, language: Language) -> usize {
        self.rules.iter().filter(|(l, _)| *l == language).count()
    }

    /// The CWEs its rules find in `language`.
    pub fn cwes(&self, language: Language) -> std::collections::BTreeSet<String> {
        self.rules
            .iter()
            .filter(|(l, _)| *l == language)
            .map(|(_, rule)| rule.cwe.clone())
            .collect()
    }

    /// Every finding in `source`, in source order. One walk of the tree tries every rule on
    /// each node whose kind the rule can match (a walk per rule costs about as much as the
    /// matching itself).
    ///
    /// # Errors
    /// A source whose parse takes longer than the budget for its size, which is left
    /// unanalyzed: never reported clean.
    pub fn scan(
        &self,
        language: Language,
        path: &str,
        source: &str,
    ) -> Result<Vec<Finding>, ScanError> {
        let root = parse(language, source, self.parse_budget)?;
        let rules: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|(l, _)| *l == language)
            .map(|(_, rule)| rule)
            .collect();
        let mut findings = Vec::new();
        let mut null_check_sites = Vec::new();
        let mut redirect_judge = None;
        for node in root.root().dfs() {
            let kind = usize::from(node.kind_id());
            for rule in &rules {
                if rule
                    .kinds
                    .as_ref()
                    .is_some_and(|kinds| !kinds.get(kind).copied().unwrap_or(false))
                {
                    continue;
                }
                let Some(matched) = rule.config.matcher.match_node(node.clone()) else {
                    continue;
                };
                let start = matched.start_pos();
                let end = matched.end_pos();
                let node = matched.get_node();
                let finding = Finding {
                    cwe: rule.cwe.clone(),
                    rule_id: rule.config.id.clone(),
                    message: rule.config.get_message(&matched),
                    path: path.to_string(),
                    span: Span {
                        start_line: start.line() + 1,
                        start_column: start.column(node) + 1,
                        end_line: end.line() + 1,
                        end_column: end.column(node) + 1,
                    },
                    severity: rule.severity,
                    analyzer: "embedded".into(),
                };
                match rule.flow {
                    None => findings.push(finding),
                    Some(Flow::RedirectGuard) => {
                        // The argument, and the name it derives from (`url` of `url.strip()`).
                        let targets: Vec<String> = node
                            .field("arguments")
                            .and_then(|a| a.named_children().next())
                            .into_iter()
                            .chain(matched.get_env().get_match("N").cloned())
                            .map(|t| t.text().into_owned())
                            .collect();
                        let judge = redirect_judge
                            .get_or_insert_with(|| redirect_guard::Judge::new(root.root()));
                        if !judge.guarded(node, &targets) {
                            findings.push(finding);
                        }
                    }
                    Some(Flow::NullCheck) => {
                        if let Some(pointer) = matched.get_env().get_match("P") {
                            null_check_sites.push(null_check::Site {
                                statement: node.node_id(),
                                pointer: pointer.node_id(),
                                report: finding,
                            });
                        }
                    }
                }
            }
        }
        if let Some((_, shapes)) = self.null_check_shapes.iter().find(|(l, _)| *l == language) {
            findings.extend(null_check::unchecked(
                &root.root(),
                shapes,
                null_check_sites,
            ));
        }
        findings.sort_by_key(|f| (f.span.start_line, f.span.start_column, f.rule_id.clone()));
        findings.dedup_by(|a, b| a.rule_id == b.rule_id && a.span == b.span);
        Ok(findings)
    }
}
