//! Named LoRA adapters with generation numbers, loaded at startup or at run time.
//!
//! Loading reads and validates the files and prepares the weights off the async runtime, then
//! swaps the new version in under a short write lock. Requests hold an `Arc` to the version
//! they started with, so a replacement never changes a request mid-flight, and the engine's
//! prefix cache keys KV state by adapter version, so a replacement never reuses old KV.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

use hexacoder_adapters::Adapter;
use hexacoder_engine::models::llama::Model;
use hexacoder_engine::{LoadedAdapter, SharedAdapter};

/// Limits on what may be loaded at once.
#[derive(Clone, Copy, Debug)]
pub struct AdapterLimits {
    pub max_adapters: usize,
    pub max_bytes: usize,
}

/// What went wrong with an adapter operation; each maps to a 4xx.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no adapter named `{0}` is loaded")]
    NotFound(String),
    #[error("invalid adapter name {0:?}: {1}")]
    BadName(String, &'static str),
    #[error("{0}")]
    Path(String),
    #[error("{0}")]
    Limit(String),
    #[error("adapter `{name}` cannot be loaded: {source}")]
    Adapter {
        name: String,
        source: hexacoder_adapters::Error,
    },
    #[error("adapter `{name}` cannot be prepared: {source}")]
    Engine {
        name: String,
        source: hexacoder_engine::Error,
    },
}

/// A loaded adapter as the API shows it.
pub use hexacoder_api::AdapterInfo;

struct Entry {
    adapter: SharedAdapter,
    info: AdapterInfo,
}

#[derive(Default)]
struct Table {
    entries: BTreeMap<String, Entry>,
    /// Last generation per name, kept after an unload so numbers never repeat.
    generations: HashMap<String, u64>,
}

pub struct AdapterRegistry {
    model: Arc<Model>,
    base_name: String,
    limits: AdapterLimits,
    table: RwLock<Table>,
}

impl AdapterRegistry {
    pub fn new(model: Arc<Model>, base_name: &str, limits: AdapterLimits) -> Self {
        AdapterRegistry {
            model,
            base_name: base_name.to_string(),
            limits,
            table: RwLock::new(Table::default()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The current version of `name`.
    pub fn get(&self, name: &str) -> Option<SharedAdapter> {
        self.read()
            .entries
            .get(name)
            .map(|e| Arc::clone(&e.adapter))
    }

    pub fn list(&self) -> Vec<AdapterInfo> {
        self.read()
            .entries
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.read().entries.keys().cloned().collect()
    }

    pub fn total_bytes(&self) -> usize {
        self.read()
            .entries
            .values()
            .map(|e| e.info.bytes as usize)
            .sum()
    }

    /// Loads `dir` as `name`, replacing an adapter of that name atomically. Blocking: call it
    /// off the async runtime.
    pub fn load(&self, name: &str, dir: &Path) -> Result<AdapterInfo, RegistryError> {
        check_name(name, &self.base_name)?;
        let adapter =
            Adapter::load(dir, &*self.model).map_err(|source| RegistryError::Adapter {
                name: name.to_string(),
                source,
            })?;
        if let Some(trained_on) = &adapter.config().base_model_name_or_path
            && !trained_on.contains(&self.base_name)
            && !self.base_name.contains(trained_on.as_str())
        {
            tracing::warn!(adapter = name, trained_on, base = %self.base_name, "adapter was trained on another base model");
        }
        let bytes = adapter.bytes();
        {
            let table = self.read();
            self.check_limits(&table, name, bytes)?;
        }
        let mut table = self.write();
        // Checked again under the write lock: another load may have raced this one.
        self.check_limits(&table, name, bytes)?;
        let generation = table.generations.get(name).copied().unwrap_or(0) + 1;
        let prepared =
            LoadedAdapter::new(name, generation, &adapter, &self.model).map_err(|source| {
                RegistryError::Engine {
                    name: name.to_string(),
                    source,
                }
            })?;
        let info = AdapterInfo {
            name: name.to_string(),
            generation,
            path: dir.display().to_string(),
            bytes: bytes as u64,
            created: crate::time::unix_now(),
            two_step_default: adapter.two_step_default(),
        };
        table.generations.insert(name.to_string(), generation);
        table.entries.insert(
            name.to_string(),
            Entry {
                adapter: Arc::new(prepared),
                info: info.clone(),
            },
        );
        Ok(info)
    }

    pub fn unload(&self, name: &str) -> Result<AdapterInfo, RegistryError> {
        self.write()
            .entries
            .remove(name)
            .map(|e| e.info)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))
    }

    fn check_limits(&self, table: &Table, name: &str, bytes: usize) -> Result<(), RegistryError> {
        let others = table.entries.iter().filter(|(n, _)| n.as_str() != name);
        let (count, used) =
            others.fold((0, 0), |(c, b), (_, e)| (c + 1, b + e.info.bytes as usize));
        if count + 1 > self.limits.max_adapters {
            return Err(RegistryError::Limit(format!(
                "{count} adapters are loaded and the limit is {} (--max-adapters); unload one first",
                self.limits.max_adapters
            )));
        }
        if used + bytes > self.limits.max_bytes {
            return Err(RegistryError::Limit(format!(
                "adapter `{name}` needs {bytes} bytes but only {} of {} are free (--max-adapter-bytes)",
                self.limits.max_bytes.saturating_sub(used),
                self.limits.max_bytes
            )));
        }
        Ok(())
    }
}

fn check_name(name: &str, base: &str) -> Result<(), RegistryError> {
    let bad = |why| Err(RegistryError::BadName(name.to_string(), why));
    if name.is_empty() || name.len() > 128 {
        return bad("names are 1 to 128 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c))
    {
        return bad("names use letters, digits and . _ - : / only");
    }
    if name == base {
        return bad("that is the base model's name");
    }
    Ok(())
}

/// `requested` as a directory inside `root` (canonical), after resolving symlinks; the
/// adapter's files must resolve inside it too.
pub fn confine(root: &Path, requested: &str) -> Result<PathBuf, RegistryError> {
    let path = Path::new(requested);
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(RegistryError::Path(format!(
            "lora_path {requested:?} contains `..`, which is not allowed"
        )));
    }
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    };
    let outside = || {
        RegistryError::Path(format!(
            "lora_path {requested:?} is outside the adapter root {} (symlinks are resolved)",
            root.display()
        ))
    };
    let canonical = joined.canonicalize().map_err(|e| {
        RegistryError::Path(format!("lora_path {requested:?} cannot be opened: {e}"))
    })?;
    if !canonical.starts_with(root) {
        return Err(outside());
    }
    for file in [
        hexacoder_adapters::CONFIG_FILE,
        hexacoder_adapters::WEIGHTS_FILE,
    ] {
        if let Ok(resolved) = canonical.join(file).canonicalize()
            && !resolved.starts_with(root)
        {
            return Err(outside());
        }
    }
    Ok(canonical)
}
