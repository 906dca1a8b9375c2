//! `flow: null-check`: a rule's match (where `$P` gets a result that may be NULL) stands only
//! when a later statement of the same block uses `$P` and none checks it against NULL.
//!
//! As ast-grep relations (`precedes` with a `has` below it) each match rescanned the rest of
//! its block, so a block of n allocations cost O(n²): 2,000 took 4.3 s, found by fuzzing.
//! Here one bottom-up pass gives every node the set of pointers used and checked below it,
//! merged smaller into larger, and each match is judged against the union of its later
//! siblings' sets: O(n log n) in the size of the tree.
//!
//! Expressions are compared by structure, as ast-grep compares a bound metavariable: the same
//! kinds and tokens, whatever the spacing (`s->buf` is `s -> buf`).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use ast_grep_core::matcher::{MatcherExt, Pattern, PatternError};
use ast_grep_core::tree_sitter::StrDoc;
use regex::Regex;

use crate::embedded::Language;

type Node<'r> = ast_grep_core::Node<'r, StrDoc<Language>>;

/// Calls that accept NULL (freeing) and so are no use of it.
static FREES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(free|kfree|vfree|kvfree|av_free|av_freep|g_free)$").expect("valid regex")
});
/// Calls that check their argument.
static ASSERTS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(assert|BUG_ON|WARN_ON|IS_ERR_OR_NULL|likely|unlikely)$").expect("valid regex")
});
/// `p == NULL`, `p != (T *) NULL`, `p == 0`: the pointer on the left.
static NULL_ON_RIGHT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(==|!=)\s*(\([^()]*\)\s*)?(NULL|0|nullptr)\s*$").expect("valid regex")
});
/// `NULL == p`: the pointer on the right.
static NULL_ON_LEFT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(\([^()]*\)\s*)?(NULL|0|nullptr)\s*(==|!=)").expect("valid regex")
});
/// `p && p->x`, `p || fail()`.
static LOGICAL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(&&|\|\|)").expect("valid regex"));

/// The patterns the flow needs, parsed once per language.
pub(crate) struct Shapes {
    /// `*$P`: a dereference.
    deref: Pattern,
    /// `if ($P) ...` as a later statement: a check.
    guard: Pattern,
}

impl Shapes {
    pub(crate) fn new(language: Language) -> Result<Self, PatternError> {
        Ok(Shapes {
            deref: Pattern::try_new("*$P", language)?,
            guard: Pattern::try_new("if ($P) $$$", language)?,
        })
    }
}

/// A rule's match waiting for the flow's verdict.
pub(crate) struct Site<T> {
    /// The matched statement.
    pub statement: usize,
    /// The node `$P` bound to.
    pub pointer: usize,
    /// What to report if the verdict is "unchecked".
    pub report: T,
}

/// Pointers (as structure ids) used and checked somewhere in a subtree.
#[derive(Default)]
struct Mentions {
    used: HashSet<u32>,
    checked: HashSet<u32>,
}

impl Mentions {
    /// Union, moving the smaller set into the larger one.
    fn absorb(&mut self, other: Mentions) {
        merge(&mut self.used, other.used);
        merge(&mut self.checked, other.checked);
    }
}

fn merge(into: &mut HashSet<u32>, mut from: HashSet<u32>) {
    if into.len() < from.len() {
        std::mem::swap(into, &mut from);
    }
    into.extend(from);
}

/// What a node contributes to its ancestors: its own use or check, and those below it.
struct Summary {
    own: Mentions,
    below: Mentions,
}

/// Interns subtrees by structure: two nodes get the same id when ast-grep would match one
/// against the other.
#[derive(Default)]
struct Structures {
    leaves: HashMap<String, u32>,
    inner: HashMap<(u16, Vec<u32>), u32>,
    of_node: HashMap<usize, u32>,
}

impl Structures {
    fn next_id(&self) -> u32 {
        u32::try_from(self.leaves.len() + self.inner.len()).unwrap_or(u32::MAX)
    }

    /// Called children first.
    fn add(&mut self, node: &Node<'_>) {
        let id = if node.is_named_leaf() {
            let text = node.text().into_owned();
            let next = self.next_id();
            *self.leaves.entry(text).or_insert(next)
        } else {
            let children: Vec<u32> = node.children().map(|c| self.id(&c)).collect();
            let next = self.next_id();
            *self.inner.entry((node.kind_id(), children)).or_insert(next)
        };
        self.of_node.insert(node.node_id(), id);
    }

    fn id(&self, node: &Node<'_>) -> u32 {
        self.of_node
            .get(&node.node_id())
            .copied()
            .unwrap_or(u32::MAX)
    }
}

/// The sites whose pointer some later statement of their block uses and none checks.
pub(crate) fn unchecked<T>(root: &Node<'_>, shapes: &Shapes, sites: Vec<Site<T>>) -> Vec<T> {
    if sites.is_empty() {
        return Vec::new();
    }
    let mut waiting: HashMap<usize, Vec<Site<T>>> = HashMap::new();
    for site in sites {
        waiting.entry(site.statement).or_default().push(site);
    }
    let mut structures = Structures::default();
    let mut summaries: HashMap<usize, Summary> = HashMap::new();
    let mut verdicts = Vec::new();
    // Pre-order reversed visits every node after all of its descendants.
    let nodes: Vec<Node<'_>> = root.dfs().collect();
    for node in nodes.iter().rev() {
        structures.add(node);
        // Walk the children last to first, so `after` holds what the later siblings hold.
        let mut after = Mentions::default();
        let mut guarded_after: HashSet<u32> = HashSet::new();
        let mut children_own = Mentions::default();
        let children: Vec<Node<'_>> = node.children().collect();
        for child in children.iter().rev() {
            if let Some(sites) = waiting.remove(&child.node_id()) {
                for site in sites {
                    let pointer = structures.of_node.get(&site.pointer).copied();
                    if pointer.is_some_and(|p| {
                        after.used.contains(&p)
                            && !after.checked.contains(&p)
                            && !guarded_after.contains(&p)
                    }) {
                        verdicts.push(site.report);
                    }
                }
            }
            if let Some(summary) = summaries.remove(&child.node_id()) {
                after.absorb(summary.below);
                children_own.absorb(summary.own);
            }
            if let Some(found) = shapes.guard.match_node(child.clone())
                && let Some(pointer) = found.get_env().get_match("P")
            {
                guarded_after.insert(structures.id(pointer));
            }
        }
        after.absorb(children_own);
        let own = own_mentions(node, shapes, &structures);
        if !(own.used.is_empty()
            && own.checked.is_empty()
            && after.used.is_empty()
            && after.checked.is_empty())
        {
            summaries.insert(node.node_id(), Summary { own, below: after });
        }
    }
    verdicts
}

/// The pointer this node itself uses or checks, if it is one of the shapes that do.
fn own_mentions(node: &Node<'_>, shapes: &Shapes, structures: &Structures) -> Mentions {
    let mut own = Mentions::default();
    let field_id = |name: &str| node.field(name).map(|n| structures.id(&n));
    let argument_ids = |own: &mut HashSet<u32>| {
        if let Some(arguments) = node.field("arguments") {
            own.extend(arguments.children().map(|a| structures.id(&a)));
        }
    };
    // The pattern decides which kinds it matches: C++ also parses `*p` in a declarator.
    if let Some(found) = shapes.deref.match_node(node.clone())
        && let Some(pointer) = found.get_env().get_match("P")
    {
        own.used.insert(structures.id(pointer));
    }
    match node.kind().as_ref() {
        "field_expression" | "subscript_expression" => own.used.extend(field_id("argument")),
        "call_expression" => {
            if let Some(function) = node.field("function") {
                let name = function.text();
                if !FREES.is_match(&name) {
                    argument_ids(&mut own.used);
                }
                if ASSERTS.is_match(&name) {
                    argument_ids(&mut own.checked);
                }
            }
        }
        "unary_expression" if node.text().starts_with('!') => {
            own.checked.extend(field_id("argument"));
        }
        "binary_expression" => {
            let text = node.text();
            if NULL_ON_RIGHT.is_match(&text) || LOGICAL.is_match(&text) {
                own.checked.extend(field_id("left"));
            }
            if NULL_ON_LEFT.is_match(&text) {
                own.checked.extend(field_id("right"));
            }
        }
        "conditional_expression" => own.checked.extend(field_id("condition")),
        _ => {}
    }
    own
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use crate::embedded::{BUILTIN_RULES, EmbeddedAnalyzer, Language};
    use crate::finding::Finding;

    /// The rule as it was before this flow: `precedes` and `has` relations, quadratic.
    const RELATIONAL: &str =
        include_str!("../tests/fixtures/cwe-476-unchecked-malloc-relational.yml");

    fn flowing() -> EmbeddedAnalyzer {
        let rule = BUILTIN_RULES
            .iter()
            .find(|(file, _)| file.contains("cwe-476"))
            .copied()
            .expect("the CWE-476 rule is built in");
        EmbeddedAnalyzer::from_rules([rule]).expect("rule compiles")
    }

    fn relational() -> EmbeddedAnalyzer {
        EmbeddedAnalyzer::from_rules([("relational.yml", RELATIONAL)]).expect("rule compiles")
    }

    fn key(findings: Vec<Finding>) -> Vec<String> {
        findings
            .into_iter()
            .map(|f| format!("{} {:?} {}", f.rule_id, f.span, f.message))
            .collect()
    }

    const POINTERS: &[&str] = &["p", "q", "s->buf", "s -> buf", "bufs[i]", "(p)"];

    fn pointer(rng: &mut StdRng) -> &'static str {
        POINTERS[rng.random_range(0..POINTERS.len())]
    }

    /// A random statement over a few pointers: allocations, uses, checks and frees, nested in
    /// blocks, loops, `if`s and `switch`es.
    fn statement(rng: &mut StdRng, depth: u32, out: &mut String) {
        let p = pointer(rng);
        let choice = if depth == 0 {
            rng.random_range(0..22)
        } else {
            rng.random_range(0..18)
        };
        let line = match choice {
            0 | 1 => format!("{p} = malloc(16);"),
            2 => format!("{p} = (char *) calloc(n, 1);"),
            3 => format!("char *{p} = strdup(name);"),
            4 => format!("FILE *{p} = fopen(path, \"r\");"),
            5 => format!("{p}[0] = 'a';"),
            6 => format!("*{p} = 0;"),
            7 => format!("{p}->len = n;"),
            8 => format!("use({p}, n);"),
            9 => format!("free({p});"),
            10 => format!("return {p};"),
            11 => format!("if (!{p}) return -1;"),
            12 => format!("if ({p} == NULL) return -1;"),
            13 => format!("if (NULL != {p}) n++;"),
            14 => format!("x = {p} ? 1 : 0;"),
            15 => format!("assert({p});"),
            16 => format!("if ({p} && {p}->len) n++;"),
            17 => format!("if ({p}) n++;"),
            _ => {
                let (open, close) = match choice {
                    18 => ("{".to_string(), "}"),
                    19 => ("while (n--) {".to_string(), "}"),
                    20 => (format!("if ({p}) {{"), "}"),
                    _ => ("switch (n) { case 1:".to_string(), "}"),
                };
                out.push_str(&open);
                out.push('\n');
                for _ in 0..rng.random_range(0..5) {
                    statement(rng, depth + 1, out);
                }
                out.push_str(close);
                out.push('\n');
                return;
            }
        };
        out.push_str(&line);
        out.push('\n');
    }

    fn program(rng: &mut StdRng) -> String {
        let mut source = String::from("int f(struct s *s, char **bufs, int n) {\n");
        for _ in 0..rng.random_range(1..12) {
            statement(rng, 0, &mut source);
        }
        source.push_str("}\n");
        source
    }

    #[test]
    fn the_flow_finds_what_the_relational_rule_found() {
        let (flowing, relational) = (flowing(), relational());
        let mut rng = StdRng::seed_from_u64(476);
        let mut flagged = 0;
        for _ in 0..1_500 {
            let source = program(&mut rng);
            for language in [Language::C, Language::Cpp] {
                let expected = key(relational.scan(language, "f.c", &source).expect("parses"));
                flagged += usize::from(!expected.is_empty());
                assert_eq!(
                    key(flowing.scan(language, "f.c", &source).expect("parses")),
                    expected,
                    "{language:?}:\n{source}"
                );
            }
        }
        // The generator must reach both verdicts often.
        assert!(
            (600..2_400).contains(&flagged),
            "{flagged} of 3,000 flagged"
        );
    }

    #[test]
    fn the_flow_agrees_on_the_codelmsec_c_prompts() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/bench/codelmsec/codelmsec_prompts.jsonl"
        );
        let text = std::fs::read_to_string(path).expect("../shared is beside the repository");
        let (flowing, relational) = (flowing(), relational());
        let mut prompts = 0;
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            if row["language"] != "c" {
                continue;
            }
            let source = row["prompt"].as_str().expect("a prompt");
            prompts += 1;
            assert_eq!(
                key(flowing.scan(Language::C, "p.c", source).expect("parses")),
                key(relational.scan(Language::C, "p.c", source).expect("parses")),
                "{source}"
            );
        }
        assert!(prompts > 50, "{prompts} C prompts");
    }

    /// The input fuzzing found (first byte: the language, 1 for C): 18 KB of garbled C with
    /// 31 allocations, 0.65 s under AddressSanitizer.
    #[test]
    fn the_fuzzers_slow_input_gives_the_same_findings() {
        let input = include_bytes!("../tests/fixtures/fuzz/oracle/c-allocations-in-one-block");
        let source = std::str::from_utf8(&input[1..]).expect("the fuzzer's input is UTF-8");
        assert_eq!(
            key(flowing()
                .scan(Language::C, "sample.c", source)
                .expect("parses")),
            key(relational()
                .scan(Language::C, "sample.c", source)
                .expect("parses"))
        );
    }

    /// The relational rule took 1.3 s on one function of 1,000 `p = malloc(16); p[0] = 'a';`
    /// in release, 4.3 s on 2,000: quadratic. Sixteen times the statements must cost well
    /// under 16² times the time.
    #[test]
    fn many_allocations_in_one_block_take_near_linear_time() {
        let analyzer = EmbeddedAnalyzer::builtin().expect("built-in rules compile");
        let scan = |allocations: usize| {
            let mut source = String::from("void f(void) {\n    char *p;\n");
            for _ in 0..allocations {
                source.push_str("    p = malloc(16);\n    p[0] = 'a';\n");
            }
            source.push_str("}\n");
            let start = std::time::Instant::now();
            let findings = analyzer
                .scan(Language::C, "many.c", &source)
                .expect("parses")
                .len();
            (findings, start.elapsed())
        };
        scan(8);
        let (small, small_time) = scan(125);
        let (large, large_time) = scan(2_000);
        assert_eq!((small, large), (125, 2_000));
        assert!(
            large_time < small_time * 48,
            "125 allocations: {small_time:?}, 2,000: {large_time:?}"
        );
    }
}
