//! `flow: redirect-guard`: a redirect to a request-derived target (the rule's match) stands
//! unless the path to it passes a check that confines the target to allowed hosts or to a
//! relative path.
//!
//! A `urlparse` call alone is no such check: synthesized repairs parse the target and then
//! test only its scheme, or that it has a host, and redirect anywhere. A check is a condition
//! that is true (the redirect runs inside it) or false (an earlier `if` returns, raises or
//! replaces the target) only when the target is confined:
//! - the parsed host compared with an allowlist or a host (`netloc in ALLOWED`,
//!   `netloc != request.host` leading to an exit), or required empty (`not netloc`);
//! - the target itself compared with constants (`url in ALLOWED_URLS`);
//! - `startswith` an absolute URL ending in a path (`https://example.com/`), or `'/'` but not
//!   `'//'`;
//! - Django's `url_has_allowed_host_and_scheme` or a function named like it; a function
//!   defined in the same file is judged by what it returns instead of its name.
//!
//! The conditions are judged by their shape, not by which variable they test: a host check
//! on another URL still counts.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use ast_grep_core::tree_sitter::StrDoc;
use regex::Regex;

use crate::embedded::Language;

type Node<'r> = ast_grep_core::Node<'r, StrDoc<Language>>;

/// Names of redirect-safety checks from frameworks, or named as one.
static SANITIZER_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(url_has_allowed_host_and_scheme|is_safe_url|is_safe_redirect(_url)?|is_allowed_(url|host|redirect)|is_local_url|is_relative_url|is_same_origin)$")
        .expect("valid regex")
});
/// Names that hold a host: attributes of a parsed URL, or variables named after them.
static HOST_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(netloc|hostname|host|domain)$").expect("valid regex"));
/// Calls that end the request.
static EXITS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(abort|flask\.abort|sys\.exit|exit)$").expect("valid regex"));
/// An absolute URL prefix that fixes the host: scheme, host, then a path.
static HOST_PREFIX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/\\?#@]+/").expect("valid regex"));

/// How deeply nested a condition is judged.
const MAX_NESTING: usize = 64;

/// How deep calls into local functions are followed.
const CALL_DEPTH: usize = 3;

/// Judges the redirects of one source. What it learns of conditions and local functions is
/// kept for the next redirect, so many redirects behind many checks stay cheap.
pub(crate) struct Judge<'r> {
    root: Node<'r>,
    /// Top-level and class-level functions by name, found on first need.
    functions: Option<HashMap<String, Node<'r>>>,
    /// Per block and target: where the first statement that stops an unconfined target
    /// ends ([`Judge::blocked_before`]).
    first_blocker: HashMap<(usize, Option<String>), Option<usize>>,
    /// Local functions being judged, against recursion.
    visiting: HashSet<usize>,
    /// What holds the target, as text: the redirect's argument, or a local check's
    /// parameters while its returns are judged.
    subjects: Vec<String>,
    /// How deep [`Judge::confines_when`] is in a condition.
    nesting: usize,
}

impl<'r> Judge<'r> {
    pub(crate) fn new(root: Node<'r>) -> Self {
        Judge {
            root,
            functions: None,
            first_blocker: HashMap::new(),
            visiting: HashSet::new(),
            subjects: Vec::new(),
            nesting: 0,
        }
    }

    /// Whether the redirect `call` runs only behind a check that confines its target.
    /// `targets`: its first argument and the name that argument derives from, as text.
    pub(crate) fn guarded(&mut self, call: &Node<'r>, targets: &[String]) -> bool {
        let fixed_start = call
            .field("arguments")
            .and_then(|a| a.named_children().next())
            .is_some_and(|t| starts_with_fixed_path_or_host(&t));
        if fixed_start {
            return true;
        }
        self.subjects = targets.to_vec();
        // Only a plain name can be given a new value.
        let name = targets.last().filter(|t| is_name(t));
        self.path_guarded(call, name.map(String::as_str), 0)
    }

    fn is_subject(&self, node: &Node<'_>) -> bool {
        let text = node.text();
        self.subjects.iter().any(|s| *s == text)
    }

    /// Whether every way to `node` from the start of its function passes a confining check.
    fn path_guarded(&mut self, node: &Node<'r>, target: Option<&str>, depth: usize) -> bool {
        let mut child = node.clone();
        while let Some(parent) = child.parent() {
            let confined = match parent.kind().as_ref() {
                "function_definition" | "lambda" | "class_definition" | "module" => return false,
                "if_statement" | "elif_clause" if is_field(&parent, "consequence", &child) => {
                    parent
                        .field("condition")
                        .is_some_and(|c| self.when_true(&c, depth))
                        || (parent.kind() == "elif_clause"
                            && self.earlier_branches_false(&parent, depth))
                }
                "else_clause" => self.earlier_branches_false(&parent, depth),
                "conditional_expression" => {
                    // `a if condition else b`
                    let parts: Vec<Node<'r>> = parent.named_children().collect();
                    match parts.as_slice() {
                        [then, condition, _] if then.node_id() == child.node_id() => {
                            self.when_true(condition, depth)
                        }
                        [_, condition, otherwise] if otherwise.node_id() == child.node_id() => {
                            self.when_false(condition, depth)
                        }
                        _ => false,
                    }
                }
                "block" => self.blocked_before(&parent, &child, target, depth),
                _ => false,
            };
            if confined {
                return true;
            }
            child = parent;
        }
        false
    }

    /// For an `elif` or `else` clause: whether one of the `if`'s earlier conditions being false
    /// confines the target.
    fn earlier_branches_false(&mut self, clause: &Node<'r>, depth: usize) -> bool {
        let Some(statement) = clause.parent() else {
            return false;
        };
        let earlier_conditions: Vec<Node<'r>> = statement
            .field("condition")
            .into_iter()
            .chain(
                clause
                    .prev_all()
                    .filter(|c| c.kind() == "elif_clause")
                    .filter_map(|c| c.field("condition")),
            )
            .collect();
        earlier_conditions
            .iter()
            .any(|condition| self.when_false(condition, depth))
    }

    /// Whether a statement of `block` before `statement` stops an unconfined target.
    fn blocked_before(
        &mut self,
        block: &Node<'r>,
        statement: &Node<'r>,
        target: Option<&str>,
        depth: usize,
    ) -> bool {
        if depth > 0 {
            return statement
                .prev_all()
                .any(|earlier| self.blocks_unconfined(&earlier, target, depth));
        }
        // Where the block's first such statement ends, found once per block and target.
        let key = (block.node_id(), target.map(str::to_string));
        let first_end = match self.first_blocker.get(&key) {
            Some(known) => *known,
            None => {
                let end = block
                    .named_children()
                    .find(|s| self.blocks_unconfined(s, target, depth))
                    .map(|s| s.range().end);
                self.first_blocker.insert(key, end);
                end
            }
        };
        first_end.is_some_and(|end| statement.range().start >= end)
    }

    /// Whether `statement` stops an unconfined target from getting past it: an `if` each of
    /// whose ways past it (a branch that neither exits nor replaces the target, or falling
    /// through) is confined, or an `assert`.
    fn blocks_unconfined(
        &mut self,
        statement: &Node<'r>,
        target: Option<&str>,
        depth: usize,
    ) -> bool {
        match statement.kind().as_ref() {
            "if_statement" => self.if_blocks_unconfined(statement, target, depth),
            "assert_statement" => statement
                .named_children()
                .next()
                .is_some_and(|condition| self.when_true(&condition, depth)),
            _ => false,
        }
    }

    fn if_blocks_unconfined(
        &mut self,
        statement: &Node<'r>,
        target: Option<&str>,
        depth: usize,
    ) -> bool {
        let mut branches = vec![(statement.field("condition"), statement.field("consequence"))];
        let mut has_else = false;
        for clause in statement.field_children("alternative") {
            match clause.kind().as_ref() {
                "elif_clause" => {
                    branches.push((clause.field("condition"), clause.field("consequence")))
                }
                "else_clause" => {
                    has_else = true;
                    branches.push((None, clause.field("body")));
                }
                _ => return false,
            }
        }
        // Whether some earlier condition, being false on the way here, confines the target.
        let mut earlier_false_confines = false;
        for (condition, body) in branches {
            let Some(body) = body else { return false };
            let leaves = exits(&body) || replaces(&body, target);
            if !leaves
                && !earlier_false_confines
                && !condition.as_ref().is_some_and(|c| self.when_true(c, depth))
            {
                return false;
            }
            if let Some(condition) = condition {
                earlier_false_confines =
                    earlier_false_confines || self.when_false(&condition, depth);
            }
        }
        has_else || earlier_false_confines
    }

    /// Whether `expression` being true confines the target.
    fn when_true(&mut self, expression: &Node<'r>, depth: usize) -> bool {
        self.confines_when(expression, true, depth)
    }

    /// Whether `expression` being false confines the target.
    fn when_false(&mut self, expression: &Node<'r>, depth: usize) -> bool {
        self.confines_when(expression, false, depth)
    }

    /// Whether `expression` having the truth value `truth` confines the target. The two
    /// truths are duals: `not` swaps them, and `and` under one is `or` under the other.
    fn confines_when(&mut self, expression: &Node<'r>, truth: bool, depth: usize) -> bool {
        // A condition nested past `MAX_NESTING` confines nothing; the limit keeps the
        // recursion off the end of the stack on hostile input.
        if self.nesting >= MAX_NESTING {
            return false;
        }
        self.nesting += 1;
        let confined = match expression.kind().as_ref() {
            "parenthesized_expression" => {
                inner(expression).is_some_and(|e| self.confines_when(&e, truth, depth))
            }
            "not_operator" => expression
                .field("argument")
                .is_some_and(|e| self.confines_when(&e, !truth, depth)),
            "boolean_operator" => match (expression.field("left"), expression.field("right")) {
                (Some(left), Some(right)) => {
                    // `a and b` true (or `a or b` false) needs only one side to confine.
                    let either = if truth { "and" } else { "or" };
                    if operator_text(expression) == either {
                        self.confines_when(&left, truth, depth)
                            || self.confines_when(&right, truth, depth)
                            || self.relative_pair(&conjuncts(expression, either), truth)
                    } else {
                        self.confines_when(&left, truth, depth)
                            && self.confines_when(&right, truth, depth)
                    }
                }
                _ => false,
            },
            "comparison_operator" => comparison(expression).is_some_and(|c| {
                let of_target = self.is_subject(&c.subject);
                c.confines_when(truth, of_target)
            }),
            "call" => truth && self.call_when_true(expression, depth),
            // `if parsed.netloc: return …`: no host, so a relative target, gets past.
            "attribute" | "identifier" => !truth && holds_host(expression),
            _ => false,
        };
        self.nesting -= 1;
        confined
    }

    fn call_when_true(&mut self, call: &Node<'r>, depth: usize) -> bool {
        if starts_with(call)
            .is_some_and(|(object, prefix)| self.is_subject(&object) && prefix.confines_alone())
        {
            return true;
        }
        let Some(function) = call.field("function") else {
            return false;
        };
        let name = match function.kind().as_ref() {
            "identifier" => function.text().into_owned(),
            "attribute" => function
                .field("attribute")
                .map(|a| a.text().into_owned())
                .unwrap_or_default(),
            _ => return false,
        };
        match self.local_function(&name) {
            Some(definition) => {
                depth < CALL_DEPTH && self.returns_true_only_when_confined(&definition, depth + 1)
            }
            None => SANITIZER_NAME.is_match(&name),
        }
    }

    /// `startswith('/') and not startswith('//')` (`true_side`), or its negation
    /// `not startswith('/') or startswith('//')`: a relative path.
    fn relative_pair(&self, parts: &[Node<'_>], true_side: bool) -> bool {
        let mut slash = false;
        let mut double = false;
        for part in parts {
            let (negated, call) = match part.kind().as_ref() {
                "not_operator" => match part.field("argument") {
                    Some(a) => (true, a),
                    None => continue,
                },
                _ => (false, part.clone()),
            };
            let Some((object, prefixes)) = starts_with(&call) else {
                continue;
            };
            if !self.is_subject(&object) {
                continue;
            }
            // On the true side `/` is asserted and `//` negated; on the false side the reverse.
            for prefix in &prefixes.0 {
                if prefix == "/" && negated != true_side {
                    slash = true;
                }
                if prefix == "//" && negated == true_side {
                    double = true;
                }
            }
        }
        slash && double
    }

    /// A function of this name defined at the top level or in a class of this file (the
    /// first, as Python's lookup would not say which).
    fn local_function(&mut self, name: &str) -> Option<Node<'r>> {
        let root = self.root.clone();
        self.functions
            .get_or_insert_with(|| {
                let mut functions = HashMap::new();
                let mut scopes = vec![root];
                while let Some(scope) = scopes.pop() {
                    for statement in scope.named_children() {
                        let definition = if statement.kind() == "decorated_definition" {
                            statement.field("definition")
                        } else {
                            Some(statement)
                        };
                        let Some(definition) = definition else {
                            continue;
                        };
                        match definition.kind().as_ref() {
                            "function_definition" => {
                                if let Some(name) = definition.field("name") {
                                    functions
                                        .entry(name.text().into_owned())
                                        .or_insert(definition);
                                }
                            }
                            "class_definition" => scopes.extend(definition.field("body")),
                            _ => {}
                        }
                    }
                }
                functions
            })
            .get(name)
            .cloned()
    }

    /// Whether each `return` of a local function gives a false value, or a true one only
    /// behind a confining check.
    fn returns_true_only_when_confined(&mut self, definition: &Node<'r>, depth: usize) -> bool {
        if !self.visiting.insert(definition.node_id()) {
            return false;
        }
        let Some(body) = definition.field("body") else {
            return false;
        };
        let parameters = definition
            .field("parameters")
            .map(|p| {
                p.named_children()
                    .filter_map(|p| match p.kind().as_ref() {
                        "identifier" => Some(p.text().into_owned()),
                        _ => p
                            .field("name")
                            .or_else(|| p.named_children().find(|c| c.kind() == "identifier"))
                            .map(|n| n.text().into_owned()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let outer_subjects = std::mem::replace(&mut self.subjects, parameters);
        let mut confined = true;
        let mut pending = vec![body];
        while let Some(node) = pending.pop() {
            match node.kind().as_ref() {
                "function_definition" | "lambda" | "class_definition" => continue,
                "return_statement" => {
                    let value = node.named_children().next();
                    let ok = match &value {
                        None => true,
                        Some(v) if is_falsy_literal(v) => true,
                        Some(v) => {
                            self.when_true(v, depth) || self.path_guarded(&node, None, depth)
                        }
                    };
                    if !ok {
                        confined = false;
                        break;
                    }
                }
                _ => pending.extend(node.named_children()),
            }
        }
        self.visiting.remove(&definition.node_id());
        self.subjects = outer_subjects;
        confined
    }
}

/// A comparison of two operands, as far as a redirect check goes.
struct Comparison<'r> {
    /// The operand compared (the one that is not a literal).
    subject: Node<'r>,
    /// The left operand holds a host (`parsed.netloc`, `host`).
    host: bool,
    /// The right operand is empty: `''`, `""` or `None`.
    against_empty: bool,
    /// The right operand is a constant or a collection a target can be looked up in.
    against_constant: bool,
    /// `in`, `==` or `is` (rather than their negations).
    positive: bool,
}

impl Comparison<'_> {
    /// Whether the comparison having the truth value `truth` confines the target;
    /// `of_target`: the subject is what holds the target.
    fn confines_when(&self, truth: bool, of_target: bool) -> bool {
        // `in`, `==`, `is` true, or `not in`, `!=`, `is not` false.
        let matches = self.positive == truth;
        if self.host {
            // `netloc in ALLOWED`, `netloc == ''`; `netloc != host` leading to an exit.
            matches
        } else {
            of_target && matches && self.against_constant && !self.against_empty
        }
    }
}

fn comparison<'r>(expression: &Node<'r>) -> Option<Comparison<'r>> {
    let operands: Vec<Node<'_>> = expression.named_children().collect();
    let [left, right] = operands.as_slice() else {
        return None;
    };
    let operator = expression
        .children()
        .find(|c| !c.is_named())
        .map(|c| c.text().split_whitespace().collect::<Vec<_>>().join(" "))?;
    let positive = match operator.as_str() {
        "in" | "==" | "is" => true,
        "not in" | "!=" | "is not" => false,
        _ => return None,
    };
    // `'example.com' == parsed.netloc` reads as the same check.
    let (subject, other) = if is_literal(left) && !is_literal(right) {
        (right, left)
    } else {
        (left, right)
    };
    // A literal looked up in the target (`'evil' in url`) is a substring test, not a check.
    if operator.ends_with("in") && is_literal(subject) {
        return None;
    }
    let against_empty = is_empty_literal(other);
    let against_constant = match other.kind().as_ref() {
        "string" | "concatenated_string" => !operator.ends_with("in"),
        "list" | "tuple" | "set" => true,
        "identifier" | "attribute" => operator.ends_with("in"),
        _ => false,
    };
    Some(Comparison {
        subject: subject.clone(),
        host: holds_host(subject),
        against_empty,
        against_constant,
        positive,
    })
}

/// `parsed.netloc`, `host`, `urlparse(url)[1]`, and those through `str(…)` or `.lower()`.
fn holds_host(node: &Node<'_>) -> bool {
    let mut node = node.clone();
    // Unwrapped a few calls deep at most: no one writes `str(str(str(host)))`, and hostile
    // input may nest them past the stack.
    for _ in 0..8 {
        match node.kind().as_ref() {
            "attribute" => {
                return node
                    .field("attribute")
                    .is_some_and(|a| HOST_NAME.is_match(&a.text()));
            }
            "identifier" => return HOST_NAME.is_match(&node.text()),
            "subscript" => {
                return node.field("subscript").is_some_and(|s| s.text() == "1")
                    && node
                        .field("value")
                        .and_then(|v| v.field("function"))
                        .is_some_and(|f| {
                            f.text().ends_with("urlparse") || f.text().ends_with("urlsplit")
                        });
            }
            "call" => {
                let Some(function) = node.field("function") else {
                    return false;
                };
                let inner = if function.text() == "str" {
                    node.field("arguments")
                        .and_then(|a| a.named_children().next())
                } else if function.text().ends_with(".lower") {
                    function.field("object")
                } else {
                    None
                };
                let Some(inner) = inner else { return false };
                node = inner;
            }
            _ => return false,
        }
    }
    false
}

/// `x.startswith(prefix)`: the prefix, or prefixes of a tuple.
struct Prefixes(Vec<String>);

impl Prefixes {
    /// Every prefix fixes the host.
    fn confines_alone(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|p| HOST_PREFIX.is_match(p))
    }
}

/// `object.startswith(prefix)`: the object and the prefixes.
fn starts_with<'r>(call: &Node<'r>) -> Option<(Node<'r>, Prefixes)> {
    let function = call.field("function")?;
    if function.kind() != "attribute" || function.field("attribute")?.text() != "startswith" {
        return None;
    }
    let object = function.field("object")?;
    let argument = call.field("arguments")?.named_children().next()?;
    let literals: Vec<Node<'_>> = match argument.kind().as_ref() {
        "tuple" | "parenthesized_expression" => argument.named_children().collect(),
        _ => vec![argument],
    };
    literals
        .iter()
        .map(string_value)
        .collect::<Option<Vec<String>>>()
        .map(|prefixes| (object, Prefixes(prefixes)))
}

/// `'/profile/' + name`, `f"https://example.com/{path}"`: request data after a literal that
/// fixes the host, or a path on this host (not `'/'`, which `'/evil.com'` turns into
/// `//evil.com`).
fn starts_with_fixed_path_or_host(target: &Node<'_>) -> bool {
    let mut first = target.clone();
    while first.kind() == "binary_operator"
        && first.field("operator").is_some_and(|o| o.text() == "+")
    {
        let Some(left) = first.field("left") else {
            return false;
        };
        first = left;
    }
    let prefix = match first.kind().as_ref() {
        "string" => first
            .named_children()
            .take_while(|c| c.kind() != "interpolation")
            .filter(|c| c.kind() == "string_content")
            .map(|c| c.text().into_owned())
            .collect::<String>(),
        _ => return false,
    };
    if first.node_id() == target.node_id() && string_value(&first).is_some() {
        // A plain literal is no request data; the rule does not match one.
        return false;
    }
    let mut chars = prefix.chars();
    match (chars.next(), chars.next()) {
        (Some('/'), Some(second)) => second != '/' && second != '\\',
        _ => HOST_PREFIX.is_match(&prefix),
    }
}

/// The operands of a chain of one boolean operator, flattened.
fn conjuncts<'r>(expression: &Node<'r>, operator: &str) -> Vec<Node<'r>> {
    let mut parts = Vec::new();
    let mut pending = vec![expression.clone()];
    while let Some(node) = pending.pop() {
        if node.kind() == "boolean_operator" && operator_text(&node) == operator {
            pending.extend(node.field("right"));
            pending.extend(node.field("left"));
        } else if node.kind() == "parenthesized_expression" {
            pending.extend(inner(&node));
        } else {
            parts.push(node);
        }
    }
    parts
}

fn operator_text(expression: &Node<'_>) -> String {
    expression
        .field("operator")
        .map(|o| o.text().into_owned())
        .unwrap_or_default()
}

fn inner<'r>(node: &Node<'r>) -> Option<Node<'r>> {
    node.named_children().next()
}

fn is_field(parent: &Node<'_>, field: &str, child: &Node<'_>) -> bool {
    parent
        .field(field)
        .is_some_and(|f| f.node_id() == child.node_id())
}

/// Whether a block's last statement leaves the function: `return`, `raise`, `abort(…)`.
fn exits(block: &Node<'_>) -> bool {
    let Some(last) = block
        .named_children()
        .filter(|s| s.kind() != "comment")
        .last()
    else {
        return false;
    };
    match last.kind().as_ref() {
        "return_statement" | "raise_statement" => true,
        "expression_statement" => last.named_children().next().is_some_and(|e| {
            e.kind() == "call"
                && e.field("function")
                    .is_some_and(|f| EXITS.is_match(&f.text()))
        }),
        _ => false,
    }
}

/// Whether a block's last statement gives the target a new value that is not request data.
fn replaces(block: &Node<'_>, target: Option<&str>) -> bool {
    let Some(target) = target else {
        return false;
    };
    let Some(last) = block
        .named_children()
        .filter(|s| s.kind() != "comment")
        .last()
    else {
        return false;
    };
    last.kind() == "expression_statement"
        && last.named_children().next().is_some_and(|e| {
            e.kind() == "assignment"
                && e.field("left").is_some_and(|l| l.text() == target)
                && e.field("right")
                    .is_some_and(|r| !r.text().contains("request"))
        })
}

fn is_name(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c == '_' || c.is_alphanumeric())
}

fn is_literal(node: &Node<'_>) -> bool {
    matches!(
        node.kind().as_ref(),
        "string" | "concatenated_string" | "integer" | "float" | "true" | "false" | "none"
    )
}

fn is_falsy_literal(node: &Node<'_>) -> bool {
    match node.kind().as_ref() {
        "false" | "none" => true,
        "integer" => node.text() == "0",
        _ => is_empty_literal(node),
    }
}

fn is_empty_literal(node: &Node<'_>) -> bool {
    node.kind() == "none" || string_value(node).is_some_and(|s| s.is_empty())
}

/// A plain string literal's contents (no f-strings, no escapes interpreted).
fn string_value(node: &Node<'_>) -> Option<String> {
    if node.kind() != "string" || node.named_children().any(|c| c.kind() == "interpolation") {
        return None;
    }
    Some(
        node.named_children()
            .filter(|c| c.kind() == "string_content")
            .map(|c| c.text().into_owned())
            .collect(),
    )
}
