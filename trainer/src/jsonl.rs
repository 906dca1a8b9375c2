//! Append-only JSONL logs that survive `kill -9`: every line is written and flushed whole, and
//! a torn last line (the process was killed while writing it) is dropped and cut off at open.
//! The evaluation's sample cache and synthesis's answer cache are such logs.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line other than the last is not a record: the file is not ours or is damaged.
    #[error("{}: line {line}: {why}", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// An open log, appended to by any thread.
pub struct AppendLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AppendLog {
    /// Opens (creating it and its directory) the log at `path`, returning it with the records
    /// already in it, in order.
    ///
    /// # Errors
    /// I/O failures, or a line other than the last that is not a `T`.
    pub fn open<T: DeserializeOwned>(path: &Path) -> Result<(AppendLog, Vec<T>), LogError> {
        let io = |source| LogError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut records = Vec::new();
        let mut valid_bytes = 0u64;
        if path.exists() {
            let lines: Vec<String> = BufReader::new(File::open(path).map_err(io)?)
                .lines()
                .collect::<Result<_, _>>()
                .map_err(io)?;
            let count = lines.len();
            for (i, line) in lines.into_iter().enumerate() {
                match serde_json::from_str::<T>(&line) {
                    Ok(record) => {
                        valid_bytes += line.len() as u64 + 1;
                        records.push(record);
                    }
                    Err(_) if i + 1 == count => {
                        tracing::warn!(path = %path.display(), "dropping a torn last line");
                    }
                    Err(e) => {
                        return Err(LogError::Corrupt {
                            path: path.to_path_buf(),
                            line: i + 1,
                            why: e.to_string(),
                        });
                    }
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        // Cut a torn tail off, so that the next line starts clean.
        if file.metadata().map_err(io)?.len() > valid_bytes {
            file.set_len(valid_bytes).map_err(io)?;
        }
        Ok((
            AppendLog {
                path: path.to_path_buf(),
                file: Mutex::new(file),
            },
            records,
        ))
    }

    /// Appends one record as a line and flushes it.
    ///
    /// # Errors
    /// The write fails.
    pub fn append(&self, record: &impl Serialize) -> Result<(), LogError> {
        let mut line = serde_json::to_string(record).map_err(|e| LogError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|source| LogError::Io {
                path: self.path.clone(),
                source,
            })
    }
}
