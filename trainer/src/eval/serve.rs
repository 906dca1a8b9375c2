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

/// Arguments for a server started for a run: ours, unless the user's `--server-arg`s set the
/// same option (the server takes each option once), then theirs.
///
/// The server must not give up on a request before the harness does: a 504 after minutes of
/// generation throws that work away and the retry repeats it. Its queue counts samples, not
/// requests, so it must hold every sample of `concurrency` requests of up to `MAX_N` samples
/// (Pearce asks for 15 per prompt): the default queue answered such runs with 429s.
///
/// Those samples are also decoded together, up to `MAX_BATCH` at a time rather than the
/// server's default 8: decode reads every weight once per step whatever the batch, so on the
/// 2-core machines a Pearce configuration took 11-13 minutes instead of 25-30 (sampled text
/// does not change: each sample has its own seeded sampler).
pub fn server_args(request_timeout: u64, concurrency: usize, user: &[String]) -> Vec<String> {
    const MAX_N: usize = 16;
    const MAX_BATCH: usize = 16;
    let in_flight = concurrency.max(1) * MAX_N;
    let ours = [
        ("--request-timeout", request_timeout.to_string()),
        ("--max-queue", in_flight.to_string()),
        ("--max-concurrent", in_flight.min(MAX_BATCH).to_string()),
    ];
    let given = |flag: &str| {
        user.iter().any(|a| {
            a == flag
                || a.strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with('='))
        })
    };
    ours.iter()
        .filter(|(flag, _)| !given(flag))
        .map(|(flag, value)| format!("{flag}={value}"))
        .chain(user.iter().cloned())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::server_args;

    #[test]
    fn the_started_server_queues_every_sample_of_the_requests_in_flight() {
        assert_eq!(
            server_args(3600, 4, &[]),
            [
                "--request-timeout=3600",
                "--max-queue=64",
                "--max-concurrent=16"
            ]
        );
    }

    #[test]
    fn a_server_arg_replaces_ours_instead_of_repeating_the_option() {
        let user = [
            "--max-queue=8".to_string(),
            "--max-concurrent".into(),
            "2".into(),
        ];
        assert_eq!(
            server_args(60, 4, &user),
            [
                "--request-timeout=60",
                "--max-queue=8",
                "--max-concurrent",
                "2"
            ]
        );
        let user = ["--request-timeout".to_string(), "5".into()];
        assert_eq!(
            server_args(60, 1, &user),
            [
                "--max-queue=16",
                "--max-concurrent=16",
                "--request-timeout",
                "5"
            ]
        );
    }
}
