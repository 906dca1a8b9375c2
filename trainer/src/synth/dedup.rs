//! Near-duplicate removal: the same code up to comments and whitespace, or word-token sets
//! whose Jaccard similarity passes a threshold.

use std::collections::{BTreeSet, HashSet};

use sha2::Digest;

/// `code` without comments and with whitespace runs collapsed.
pub fn normalize(code: &str) -> String {
    code.lines()
        .map(|line| {
            let line = match line.find('#').or_else(|| line.find("//")) {
                // A `#include` or `#define` is code.
                Some(i)
                    if !line.trim_start().starts_with("#include")
                        && !line.trim_start().starts_with("#define") =>
                {
                    &line[..i]
                }
                _ => line,
            };
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn tokens(code: &str) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    let mut word = String::new();
    for c in normalize(code).chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            if !word.is_empty() {
                set.insert(std::mem::take(&mut word));
            }
            if !c.is_whitespace() {
                set.insert(c.to_string());
            }
        }
    }
    if !word.is_empty() {
        set.insert(word);
    }
    set
}

/// Jaccard similarity of two token sets.
fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// Keeps the first of each group of near-duplicates; returns the kept indices.
pub struct Dedup {
    threshold: f64,
    hashes: HashSet<[u8; 32]>,
    kept: Vec<BTreeSet<String>>,
}

impl Dedup {
    pub fn new(threshold: f64) -> Self {
        Dedup {
            threshold,
            hashes: HashSet::new(),
            kept: Vec::new(),
        }
    }

    /// Whether `code` is new (and remembers it when it is).
    pub fn admit(&mut self, code: &str) -> bool {
        let hash: [u8; 32] = sha2::Sha256::digest(normalize(code).as_bytes()).into();
        if self.hashes.contains(&hash) {
            return false;
        }
        let tokens = tokens(code);
        if self
            .kept
            .iter()
            .any(|k| jaccard(k, &tokens) > self.threshold)
        {
            return false;
        }
        self.hashes.insert(hash);
        self.kept.push(tokens);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_up_to_comments_whitespace_and_small_edits_are_dropped() {
        let mut dedup = Dedup::new(0.9);
        let a = "import os\ndef f(p):\n    return os.path.join('/srv', p)\n";
        assert!(dedup.admit(a));
        assert!(
            !dedup
                .admit("import os\n# joins\ndef f(p):\n        return os.path.join('/srv',   p)\n")
        );
        assert!(
            dedup.admit("import subprocess\ndef g(cmd):\n    subprocess.run(cmd, shell=True)\n")
        );
        let mut strict = Dedup::new(0.99);
        assert!(strict.admit(a));
        assert!(strict.admit("import os\ndef f(p):\n    return os.path.join('/var', p)\n"));
        assert!(normalize("#include <a.h>\nint x; // c\n").contains("#include <a.h>"));
    }
}
