//! What the end-to-end tests of `eval` and `synth` share: the server binary, reading a JSONL
//! log, and killing a run with SIGKILL once its log has some lines.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `hexacoder-server`, built beside this test (`cargo test --workspace` builds it;
/// `HEXACODER_SERVER_BIN` overrides).
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HEXACODER_SERVER_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory")
        .join("hexacoder-server");
    assert!(
        path.exists(),
        "{} is missing: build it first",
        path.display()
    );
    path
}

/// The shared benchmarks.
pub fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench")
}

/// The non-empty lines of a JSONL file (none when it is missing).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// Starts `command`, kills it with SIGKILL once `log` has `at_least` lines (within 300 s),
/// and returns the complete lines it left.
pub fn kill_when_logged(mut command: Command, log: &Path, at_least: usize) -> Vec<String> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let deadline = Instant::now() + Duration::from_secs(300);
    while lines(log).len() < at_least {
        assert!(
            Instant::now() < deadline,
            "fewer than {at_least} lines within 300 s"
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    lines(log)
        .into_iter()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .collect()
}
