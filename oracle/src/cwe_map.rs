//! The table, kept as data in `oracle/data/cwe-map.toml`, that ties external analyzers' rule
//! ids to CWEs, drops non-security reports, and groups CWEs into families.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::finding::normalize_cwe;

/// The table compiled into the oracle.
pub const BUILTIN_CWE_MAP: &str = include_str!("../data/cwe-map.toml");

/// A table that does not load.
#[derive(Debug, thiserror::Error)]
pub enum CweMapError {
    /// Not TOML of the expected shape.
    #[error("CWE map: {0}")]
    Toml(#[from] toml::de::Error),
    /// A value that names no CWE.
    #[error("CWE map: {value:?} (under {key}) is not a CWE")]
    NotACwe {
        /// Where in the table.
        key: String,
        /// The value.
        value: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    #[serde(default)]
    rules: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    ignore: RawIgnore,
    #[serde(default)]
    skip: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    families: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIgnore {
    #[serde(default)]
    cwes: Vec<String>,
}

/// What the oracle makes of an analyzer's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapped {
    /// A security weakness: this CWE.
    Cwe(String),
    /// A report about the analysis (a file that does not parse), not the code.
    Skip,
    /// A code-quality report, or one tied to no CWE.
    Ignore,
}

/// The mapping table, parsed.
#[derive(Clone, Debug)]
pub struct CweMap {
    rules: BTreeMap<String, BTreeMap<String, String>>,
    ignored: BTreeSet<String>,
    skip: BTreeMap<String, BTreeSet<String>>,
    families: BTreeMap<String, BTreeSet<String>>,
}

impl CweMap {
    /// The built-in table.
    ///
    /// # Errors
    /// Never for the shipped table (a test loads it); the type is shared with [`CweMap::parse`].
    pub fn builtin() -> Result<Self, CweMapError> {
        Self::parse(BUILTIN_CWE_MAP)
    }

    /// A table from TOML text.
    ///
    /// # Errors
    /// TOML of another shape, or a value that is not a CWE.
    pub fn parse(text: &str) -> Result<Self, CweMapError> {
        let raw: RawMap = toml::from_str(text)?;
        let cwe = |key: String, value: &str| {
            normalize_cwe(value).ok_or_else(|| CweMapError::NotACwe {
                key,
                value: value.to_string(),
            })
        };
        let mut rules = BTreeMap::new();
        for (analyzer, table) in raw.rules {
            let mut normalized = BTreeMap::new();
            for (rule, value) in table {
                normalized.insert(
                    rule.clone(),
                    cwe(format!("rules.{analyzer}.{rule}"), &value)?,
                );
            }
            rules.insert(analyzer, normalized);
        }
        let ignored = raw
            .ignore
            .cwes
            .iter()
            .map(|c| cwe("ignore.cwes".into(), c))
            .collect::<Result<_, _>>()?;
        let mut families = BTreeMap::new();
        for (target, members) in raw.families {
            let target = cwe(format!("families.{target}"), &target)?;
            let members = members
                .iter()
                .map(|m| cwe(format!("families.{target}"), m))
                .collect::<Result<_, _>>()?;
            families.insert(target, members);
        }
        let skip = raw
            .skip
            .into_iter()
            .map(|(analyzer, ids)| (analyzer, ids.into_iter().collect()))
            .collect();
        Ok(CweMap {
            rules,
            ignored,
            skip,
            families,
        })
    }

    /// The CWE for `analyzer`'s `rule_id`, given what the analyzer itself said (`reported`).
    pub fn map(&self, analyzer: &str, rule_id: &str, reported: Option<&str>) -> Mapped {
        if self
            .skip
            .get(analyzer)
            .is_some_and(|ids| ids.contains(rule_id))
        {
            return Mapped::Skip;
        }
        let cwe = self
            .rules
            .get(analyzer)
            .and_then(|table| table.get(rule_id))
            .cloned()
            .or_else(|| reported.and_then(normalize_cwe));
        match cwe {
            Some(cwe) if !self.ignored.contains(&cwe) => Mapped::Cwe(cwe),
            _ => Mapped::Ignore,
        }
    }

    /// Whether a finding under `found` counts for `target`: the same CWE or one of its family.
    pub fn counts_for(&self, found: &str, target: &str) -> bool {
        found == target
            || self
                .families
                .get(target)
                .is_some_and(|members| members.contains(found))
    }
}
