//! Starting a `hexacoder-server serve` process and reading the address it prints, for tests
//! and benchmarks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Spawns `command` (a `serve` invocation), waits up to `timeout` for its first line
/// (`listening on http://…`), and returns the process and the base URL. The rest of its
/// stdout is drained in the background.
///
/// # Errors
/// The process does not start, or prints no address in time (it is then killed).
pub fn spawn_listening(mut command: Command, timeout: Duration) -> Result<(Child, String), String> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning the server: {e}"))?;
    let stdout = child.stdout.take().ok_or("the server has no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = match rx.recv_timeout(timeout) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            return Err(format!("the server printed no address within {timeout:?}"));
        }
    };
    match line.strip_prefix("listening on ") {
        Some(base) => Ok((child, base.to_string())),
        None => {
            let _ = child.kill();
            Err(format!("unexpected first line {line:?}"))
        }
    }
}

/// A binary of this workspace, built next to the running test (`cargo test --workspace`
/// builds every package's binaries); `HEXACODER_SERVER_BIN`-style variables override it
/// (`hexacoder-server` → `HEXACODER_SERVER_BIN`).
///
/// # Panics
/// When the binary is not there, naming the command that builds it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let variable = format!(
        "{}_BIN",
        name.trim_start_matches("hexacoder-")
            .to_ascii_uppercase()
            .replace('-', "_")
    );
    let variable = format!("HEXACODER_{variable}");
    if let Some(path) = std::env::var_os(&variable) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p {name}`; `scripts/test` does), or set {variable}",
        path.display()
    );
    path
}
