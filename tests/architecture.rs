//! The dependency rules of ARCHITECTURE.md, checked on the real crate graph from
//! `cargo metadata`: a new dependency that breaks one fails here, not in review.
//!
//! - `lsp` reaches the model only over HTTP: of our crates it uses `api` and `imports`.
//! - `engine` knows nothing of HTTP: no HTTP client or server anywhere below it.
//! - `oracle` depends on nothing of ours.
//! - `api` has no runtime dependencies beyond serde.
//! - The libraries below the binaries (engine, adapters, imports, two-step, oracle, catalog,
//!   api) never depend on a binary's crate (`server`, `lsp`, `trainer`) or on the benches.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// The resolved graph: each package's normal (non-dev, non-build) dependencies, by name.
struct Graph {
    ours: BTreeSet<String>,
    normal: BTreeMap<String, BTreeSet<String>>,
}

/// The triple rustc builds for by default (`host:` of `rustc -vV`).
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names its host")
        .to_string()
}

impl Graph {
    fn load() -> Graph {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // The graph of the platform we build for: without the filter cargo wants every
        // platform's crates (Windows-only ones a Linux build never downloads), offline.
        let output = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--offline", "--locked"])
            .args(["--filter-platform", &host_triple()])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo metadata");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
        let name_of: BTreeMap<&str, String> = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().expect("id"),
                    p["name"].as_str().expect("name").to_string(),
                )
            })
            .collect();
        let ours = metadata["workspace_members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|id| name_of[id.as_str().expect("id")].clone())
            .collect();
        let mut normal = BTreeMap::new();
        for node in metadata["resolve"]["nodes"].as_array().expect("nodes") {
            let deps = node["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .expect("dep_kinds")
                        .iter()
                        .any(|kind| kind["kind"].is_null())
                })
                .map(|dep| name_of[dep["pkg"].as_str().expect("pkg")].clone())
                .collect();
            normal.insert(name_of[node["id"].as_str().expect("id")].clone(), deps);
        }
        Graph { ours, normal }
    }

    fn direct(&self, package: &str) -> &BTreeSet<String> {
        self.normal
            .get(package)
            .unwrap_or_else(|| panic!("{package} is not in the graph"))
    }

    /// Everything `package` depends on, directly or not.
    fn closure(&self, package: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![package.to_string()];
        while let Some(next) = stack.pop() {
            for dep in self.direct(&next) {
                if seen.insert(dep.clone()) {
                    stack.push(dep.clone());
                }
            }
        }
        seen
    }

    fn ours_among<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
        names
            .into_iter()
            .filter(|n| self.ours.contains(*n))
            .cloned()
            .collect()
    }
}

#[test]
fn the_bridge_reaches_the_model_only_over_http() {
    let graph = Graph::load();
    let ours = graph.ours_among(graph.direct("hexacoder-lsp"));
    let allowed: BTreeSet<String> = ["hexacoder-api", "hexacoder-imports"]
        .map(String::from)
        .into();
    assert!(
        ours.is_subset(&allowed),
        "hexacoder-lsp depends on {ours:?}; ARCHITECTURE.md allows only {allowed:?}"
    );
    let below = graph.closure("hexacoder-lsp");
    for forbidden in ["hexacoder-engine", "candle-core", "hexacoder-adapters"] {
        assert!(
            !below.contains(forbidden),
            "hexacoder-lsp reaches {forbidden}"
        );
    }
}

#[test]
fn the_engine_knows_nothing_of_http() {
    let graph = Graph::load();
    let below = graph.closure("hexacoder-engine");
    let http: Vec<&str> = [
        "axum",
        "hyper",
        "reqwest",
        "tower-http",
        "ureq",
        "hexacoder-api",
    ]
    .into_iter()
    .filter(|name| below.contains(*name))
    .collect();
    assert!(
        http.is_empty(),
        "hexacoder-engine depends on {http:?} (ARCHITECTURE.md: the engine knows nothing of HTTP)"
    );
}

#[test]
fn the_oracle_depends_on_nothing_of_ours() {
    let graph = Graph::load();
    let ours = graph.ours_among(&graph.closure("hexacoder-oracle"));
    assert!(ours.is_empty(), "hexacoder-oracle depends on {ours:?}");
}

#[test]
fn the_wire_format_crate_has_no_runtime_dependencies() {
    let graph = Graph::load();
    let direct = graph.direct("hexacoder-api");
    let allowed: BTreeSet<String> = ["serde", "serde_json"].map(String::from).into();
    assert!(
        direct.is_subset(&allowed),
        "hexacoder-api depends on {direct:?}; only serde and serde_json are allowed"
    );
}

#[test]
fn libraries_never_depend_on_the_binaries_above_them() {
    let graph = Graph::load();
    let above = [
        "hexacoder-server",
        "hexacoder-lsp",
        "hexacoder-trainer",
        "hexacoder-benches",
        "hexacoder-system-tests",
        "hexacoder-fuzz-targets",
    ];
    for package in graph.ours.iter().filter(|p| !above.contains(&p.as_str())) {
        let reached = graph.closure(package);
        for binary in above {
            assert!(
                !reached.contains(binary),
                "{package} depends on {binary}, which sits above it"
            );
        }
    }
}
