//! A real `hexacoder-server serve` on a loopback port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether the real-model tier runs (`scripts/test` sets `HEXACODER_TEST_MODELS=1`).
pub fn real_models() -> bool {
    let enabled = std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() == Some("1");
    if !enabled {
        eprintln!(
            "skipping: set HEXACODER_TEST_MODELS=1 (scripts/test does) to run real-model tests"
        );
    }
    enabled
}

pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// `hexacoder-server serve --model MODEL --port 0 ARGS`.
    pub fn start(model: &Path, args: &[&str]) -> Server {
        let mut command = Command::new(hexacoder_testkit::server::workspace_binary(
            "hexacoder-server",
        ));
        command
            .args(["serve", "--port", "0", "--model"])
            .arg(model)
            .args(args)
            .env("HEXACODER_LOG", "warn")
            .stderr(Stdio::inherit());
        let (child, base) =
            hexacoder_testkit::server::spawn_listening(command, Duration::from_secs(120))
                .unwrap_or_else(|e| panic!("{e}"));
        Server { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
