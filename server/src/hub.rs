//! Resolving `--model PATH_OR_ID` to files: a local GGUF file, a local HF directory, or a
//! model-hub repository id fetched through `hf-hub` into its standard cache. It lives in the
//! server, not the engine: the engine never touches the network.
//!
//! Hub ids look like `owner/name`, optionally `owner/name:FILE.gguf` to pick one GGUF file
//! and `@REVISION` at the end. In offline mode (or with `HF_HUB_OFFLINE=1`) only the local
//! cache is read, using the cache's documented layout: `models--owner--name/refs/REV` holds
//! a commit hash and `snapshots/HASH/` holds the files.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use hexacoder_engine::{ModelFiles, local_files};

/// Why a model could not be found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path or hub id that does not lead to model files.
    #[error("cannot resolve model {id:?}: {reason}")]
    Resolve {
        /// The id as the user gave it.
        id: String,
        /// Why it could not be resolved.
        reason: String,
    },
    /// The engine's own checks of local files.
    #[error(transparent)]
    Engine(#[from] hexacoder_engine::Error),
    /// Reading the cache.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, Error>;

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where to look for hub models.
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    /// The hub cache; `HF_HUB_CACHE`/`HF_HOME` or `~/.cache/huggingface/hub` when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network; read the cache only.
    pub offline: bool,
}

/// A parsed hub id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    /// `owner/name`.
    pub repo: String,
    /// A GGUF file inside the repo.
    pub file: Option<String>,
    /// Branch, tag or commit.
    pub revision: String,
}

impl HubId {
    /// Parses `owner/name[:file][@revision]`; `None` when `id` is not of that form.
    pub fn parse(id: &str) -> Option<HubId> {
        let (rest, revision) = match id.rsplit_once('@') {
            Some((rest, rev)) if !rev.is_empty() => (rest, rev.to_string()),
            _ => (id, "main".to_string()),
        };
        let (repo, file) = match rest.split_once(':') {
            Some((repo, file)) => (repo, Some(file.to_string())),
            None => (rest, None),
        };
        let (owner, name) = repo.split_once('/')?;
        // Names may hold `-_.` but not start with `.` (no `.`/`..` path components).
        let valid = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        (valid(owner) && valid(name) && !name.contains('/')).then(|| HubId {
            repo: repo.to_string(),
            file,
            revision,
        })
    }
}

/// Files for `id_or_path`: an existing path wins, then a hub id.
pub fn resolve(id_or_path: &str, options: &HubOptions) -> Result<ModelFiles> {
    let path = Path::new(id_or_path);
    if path.exists() {
        return Ok(local_files(path)?);
    }
    let id = HubId::parse(id_or_path).ok_or_else(|| Error::Resolve {
        id: id_or_path.to_string(),
        reason: "no such file or directory, and not a hub id of the form owner/name[:file.gguf][@revision]".into(),
    })?;
    let offline =
        options.offline || std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
    let cache_dir = options
        .cache_dir
        .clone()
        .unwrap_or_else(|| hf_hub::Cache::from_env().path().clone());
    if offline {
        resolve_from_cache(&id, &cache_dir)
    } else {
        resolve_online(&id, &cache_dir)
    }
}

fn resolve_from_cache(id: &HubId, cache_dir: &Path) -> Result<ModelFiles> {
    let err = |reason: String| Error::Resolve {
        id: id.repo.clone(),
        reason,
    };
    let repo_dir = cache_dir.join(format!("models--{}", id.repo.replace('/', "--")));
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(&id.revision)) {
        Ok(hash) => hash.trim().to_string(),
        // A revision may itself be a commit hash.
        Err(_) if repo_dir.join("snapshots").join(&id.revision).is_dir() => id.revision.clone(),
        Err(_) => {
            return Err(err(format!(
                "offline and revision {:?} is not in the cache at {}",
                id.revision,
                repo_dir.display()
            )));
        }
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        return Err(err(format!(
            "offline and snapshot {} is missing",
            snapshot.display()
        )));
    }
    let files: Vec<String> = std::fs::read_dir(&snapshot)
        .map_err(|e| Error::io(&snapshot, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    match choose_files(id, &files).map_err(err)? {
        Choice::Gguf(file) => {
            let path = snapshot.join(&file);
            if !path.is_file() {
                return Err(err(format!("offline and {file} is not in the cache")));
            }
            Ok(ModelFiles::Gguf(path))
        }
        Choice::HfDir(_) => {
            if !snapshot.join("tokenizer.json").is_file() {
                return Err(err("offline and tokenizer.json is not in the cache".into()));
            }
            let shards = hexacoder_engine::load::safetensors::shard_paths(&snapshot)?;
            if let Some(missing) = shards.iter().find(|p| !p.is_file()) {
                return Err(err(format!(
                    "offline and shard {} is not in the cache",
                    missing.display()
                )));
            }
            Ok(ModelFiles::HfDir(snapshot))
        }
    }
}

fn resolve_online(id: &HubId, cache_dir: &Path) -> Result<ModelFiles> {
    let err = |reason: String| Error::Resolve {
        id: id.repo.clone(),
        reason,
    };
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(cache_dir.to_path_buf())
        .with_progress(true)
        .build()
        .map_err(|e| err(format!("hub client: {e}")))?;
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision.clone(),
    ));
    let info = repo
        .info()
        .map_err(|e| err(format!("listing the repository: {e}")))?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let fetch = |name: &str| {
        repo.get(name)
            .map_err(|e| err(format!("downloading {name}: {e}")))
    };
    match choose_files(id, &files).map_err(err)? {
        Choice::Gguf(file) => Ok(ModelFiles::Gguf(fetch(&file)?)),
        Choice::HfDir(names) => {
            let mut dir = None;
            for name in names {
                let path = fetch(&name)?;
                dir.get_or_insert_with(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
            }
            if files.iter().any(|f| f == "model.safetensors.index.json") {
                let index = fetch("model.safetensors.index.json")?;
                let dir = index.parent().map(Path::to_path_buf).unwrap_or_default();
                for shard in hexacoder_engine::load::safetensors::shard_paths(&dir)? {
                    let name = shard
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    fetch(&name)?;
                }
            }
            dir.map(ModelFiles::HfDir)
                .ok_or_else(|| err("repository has no files".into()))
        }
    }
}

enum Choice {
    Gguf(String),
    HfDir(Vec<String>),
}

/// Which files of a repository listing make up the model.
fn choose_files(id: &HubId, files: &[String]) -> std::result::Result<Choice, String> {
    if let Some(file) = &id.file {
        return Ok(Choice::Gguf(file.clone()));
    }
    let has = |name: &str| files.iter().any(|f| f == name);
    if has("config.json") && files.iter().any(|f| f.ends_with(".safetensors")) {
        let mut names: Vec<String> = [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ]
        .into_iter()
        .filter(|n| has(n))
        .map(str::to_string)
        .collect();
        if !has("model.safetensors.index.json") {
            names.extend(
                files
                    .iter()
                    .filter(|f| f.ends_with(".safetensors") && !f.contains('/'))
                    .cloned(),
            );
        }
        return Ok(Choice::HfDir(names));
    }
    let ggufs: Vec<&String> = files
        .iter()
        .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
        .collect();
    match ggufs.as_slice() {
        [] => Err("repository has neither config.json with safetensors nor .gguf files".into()),
        [one] => Ok(Choice::Gguf(one.to_string())),
        many => many
            .iter()
            .find(|f| f.to_ascii_lowercase().contains("q4_k_m"))
            .map(|f| Choice::Gguf(f.to_string()))
            .ok_or_else(|| {
                format!(
                    "repository has several .gguf files; pick one with owner/name:FILE ({})",
                    many.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
    }
}

#[cfg(test)]
mod tests;
