//! `--serve MODEL`: our own server, started for the run on a free loopback port and stopped
//! when the run ends (also on error or panic: the guard kills it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::Error;

/// A running `hexacoder-server serve`.
pub struct Served {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server binary: beside this one, else `hexacoder-server` on PATH.
pub fn default_server_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let sibling = exe.parent()?.join("hexacoder-server");
            sibling.exists().then_some(sibling)
        })
        .unwrap_or_else(|| PathBuf::from("hexacoder-server"))
}

/// Starts `binary serve --model MODEL --port 0 ARGS…`, its log going to `log`, and waits (up
/// to `timeout`, which covers a first download of the model) for its address.
///
/// # Errors
/// It does not start, exits, or prints no address in time.
pub fn start(
    binary: &Path,
    model: &str,
    args: &[String],
    log: &Path,
    timeout: Duration,
) -> Result<Served, Error> {
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let log_file = std::fs::File::create(log).map_err(|source| Error::Io {
        path: log.to_path_buf(),
        source,
    })?;
    let mut command = Command::new(binary);
    // SAFETY: prctl is async-signal-safe. The server dies with this process, even when it is
    // killed with SIGKILL and no destructor runs.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
            Ok(())
        });
    }
    let mut child = command
        .args([
            "serve",
            "--model",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .map_err(|e| Error::Serve(format!("starting {}: {e}", binary.display())))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        return Err(Error::Serve("the server has no stdout".into()));
    };
    // Bounded, and never waited on: only the startup lines are read, and the server must
    // never block on a full stdout pipe, so later lines are drained and dropped.
    let (tx, rx) = mpsc::sync_channel(256);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.try_send(line);
        }
    });
    let mut served = Served {
        child,
        base: String::new(),
    };
    match rx.recv_timeout(timeout) {
        Ok(line) => match line.strip_prefix("listening on ") {
            Some(base) => {
                served.base = base.trim().to_string();
                Ok(served)
            }
            None => Err(Error::Serve(format!("unexpected first line {line:?}"))),
        },
        Err(_) => {
            let status = served.child.try_wait().ok().flatten();
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(Error::Serve(match status {
                Some(status) => format!(
                    "the server exited ({status}) before listening; its log ({}) ends:\n{}",
                    log.display(),
                    tail.join("\n")
                ),
                None => format!("the server printed no address within {timeout:?}"),
            }))
        }
    }
}
