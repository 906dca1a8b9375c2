//! Running model-written code (HumanEval samples) so that it cannot reach past a temporary
//! directory: a child process per sample, in its own temporary directory, with a wall-clock
//! deadline, rlimits on CPU, memory, processes and file size, no network, and no writes
//! outside its directory.
//!
//! The parent ([`run`]) starts `hexacoder-train __sandbox-exec …` ([`exec_confined`]), a fresh
//! single-threaded process that confines itself and then executes the interpreter, because
//! namespaces, privilege drops and Landlock are not safe to set up between `fork` and `exec`
//! of a multi-threaded parent.
//!
//! The layers, each used where the kernel allows it and reported when it does not:
//! - a new network namespace (no interfaces but a down loopback) and PID namespace (killing
//!   its first process kills every process the sample started);
//! - as root, the sample runs as a user of its own (a random unused uid), so that `RLIMIT_NPROC` binds (it does not bind
//!   root) and file permissions apply;
//! - Landlock: reads anywhere, writes only beneath the sample's directory (and `/dev/null`),
//!   no TCP bind or connect;
//! - rlimits: CPU seconds, address space, processes, file size, open files, no core dumps.

use std::ffi::{CString, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Error;

/// The name of the hidden subcommand that confines itself and runs the sample.
pub const EXEC_SUBCOMMAND: &str = "__sandbox-exec";

/// What a sample may use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock deadline for the whole run.
    pub wall: Duration,
    /// CPU seconds (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
    /// Address space (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Processes of the sandbox's user (`RLIMIT_NPROC`).
    pub processes: u64,
    /// Largest file it may write (`RLIMIT_FSIZE`).
    pub file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall: Duration::from_secs(10),
            cpu_seconds: 10,
            memory_bytes: 1 << 30,
            processes: 32,
            file_bytes: 16 << 20,
        }
    }
}

/// How a sample's run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// It exited with status 0 before the deadline.
    pub passed: bool,
    /// Its exit status (128 + signal when killed by one); `None` when it timed out.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The end of what it wrote to stderr.
    pub stderr_tail: String,
    /// Which confinement layers held.
    pub isolation: Isolation,
    pub elapsed_ms: f64,
}

/// Which layers of confinement the kernel allowed, as the confined process found them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    pub network_namespace: bool,
    pub pid_namespace: bool,
    /// It runs as an unprivileged user (root's processes ignore `RLIMIT_NPROC`).
    pub unprivileged: bool,
    /// `fully`, `partially` or `not` (Landlock's ruleset status).
    pub landlock: String,
}

impl Isolation {
    /// The layers that did not hold, for a warning; empty when all did.
    pub fn gaps(&self) -> Vec<&'static str> {
        let mut gaps = Vec::new();
        if !self.network_namespace {
            gaps.push("no network namespace (Landlock still denies TCP where it is enforced)");
        }
        if !self.pid_namespace {
            gaps.push("no PID namespace (a sample's detached processes may outlive it)");
        }
        if !self.unprivileged {
            gaps.push("runs as root (RLIMIT_NPROC does not bind)");
        }
        if self.landlock != "fully" {
            gaps.push("Landlock not fully enforced (writes outside the directory not blocked)");
        }
        gaps
    }
}

/// The interpreter samples run with: `/usr/bin/python3` when it exists (one that an
/// unprivileged user can reach), else `python3` from PATH.
pub fn default_python() -> PathBuf {
    let system = Path::new("/usr/bin/python3");
    if system.exists() {
        system.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

/// As root, each sample runs as a user of its own from this range (no account needed), so
/// that one sample's processes never count against another's `RLIMIT_NPROC`.
const SANDBOX_UIDS: std::ops::Range<u32> = 0x4000_0000..0x5000_0000;

/// A user id for one sample: random in [`SANDBOX_UIDS`], so concurrent samples (here or in
/// another evaluation) do not share one.
fn sandbox_uid() -> u32 {
    SANDBOX_UIDS.start + rand::random::<u32>() % (SANDBOX_UIDS.end - SANDBOX_UIDS.start)
}

/// Runs `program` (Python source) confined, through `helper` (the `hexacoder-train` binary).
///
/// # Errors
/// The temporary directory cannot be made or the helper cannot be started. A sample that
/// fails, crashes or times out is an [`Outcome`], not an error.
pub fn run(helper: &Path, python: &Path, program: &str, limits: &Limits) -> Result<Outcome, Error> {
    let dir = tempfile::Builder::new()
        .prefix("hexacoder-sample-")
        .tempdir_in(std::env::temp_dir())
        .map_err(|e| Error::Sandbox(format!("making a temporary directory: {e}")))?;
    let source = dir.path().join("sample.py");
    std::fs::write(&source, program)
        .map_err(|e| Error::Sandbox(format!("writing {}: {e}", source.display())))?;
    // As root, the sample gets a user of its own and its directory; otherwise it stays
    // this user (0 tells the confined side not to change).
    let uid = if is_root() { sandbox_uid() } else { 0 };
    if uid != 0 {
        for path in [dir.path(), source.as_path()] {
            std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(|e| {
                Error::Sandbox(format!(
                    "handing {} to the sample's user: {e}",
                    path.display()
                ))
            })?;
        }
    }
    let started = Instant::now();
    let mut command = Command::new(helper);
    command
        .arg(EXEC_SUBCOMMAND)
        .arg(dir.path())
        .arg(limits.cpu_seconds.to_string())
        .arg(limits.memory_bytes.to_string())
        .arg(limits.processes.to_string())
        .arg(limits.file_bytes.to_string())
        .arg(uid.to_string())
        .arg(python)
        .args(["-I", "-B", "sample.py"])
        .current_dir(dir.path())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .map_err(|e| Error::Sandbox(format!("starting {}: {e}", helper.display())))?;
    let pid = child.id() as libc::pid_t;
    // Read stderr on a thread (bounded), so that a chatty sample cannot block on a full pipe.
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(stderr) = stderr {
            let mut limited = stderr.take(1 << 20);
            let _ = limited.read_to_end(&mut kept);
            // Drain the rest, discarding it.
            let _ = std::io::copy(&mut limited.into_inner(), &mut std::io::sink());
        }
        kept
    });
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= limits.wall => {
                timed_out = true;
                // SAFETY: signalling our own child's process group.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(Error::Sandbox(format!("waiting for the sample: {e}"))),
        }
    };
    // Whatever it left in its group goes too (the PID namespace already took it where used).
    // SAFETY: as above.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let stderr = reader.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr);
    let (isolation, rest) = parse_report(&stderr);
    let exit_code = status.filter(|_| !timed_out).map(|s| {
        use std::os::unix::process::ExitStatusExt;
        s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
    });
    let tail_start = rest.len().saturating_sub(2000);
    let tail_start = (tail_start..=rest.len())
        .find(|&i| rest.is_char_boundary(i))
        .unwrap_or(rest.len());
    Ok(Outcome {
        passed: exit_code == Some(0),
        exit_code,
        timed_out,
        stderr_tail: rest[tail_start..].to_string(),
        isolation,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

const REPORT_PREFIX: &str = "hexacoder-sandbox: ";

/// The confined process's first stderr line (its isolation) and the rest.
fn parse_report(stderr: &str) -> (Isolation, &str) {
    let (first, rest) = stderr.split_once('\n').unwrap_or((stderr, ""));
    match first
        .strip_prefix(REPORT_PREFIX)
        .and_then(|json| serde_json::from_str(json).ok())
    {
        Some(isolation) => (isolation, rest),
        None => (Isolation::default(), stderr),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The confined side: `__sandbox-exec DIR CPU_SECONDS MEMORY_BYTES PROCESSES FILE_BYTES UID
/// PROGRAM ARGS…` (UID 0: keep this process's user). Confines this process, then executes PROGRAM in DIR. Returns only on
/// failure, with the exit status to end with. Must run before any thread is started.
pub fn exec_confined(args: &[OsString]) -> i32 {
    match confine_and_exec(args) {
        Ok(code) => code,
        Err(why) => {
            eprintln!("{REPORT_PREFIX}{{}}\nsandbox: {why}");
            126
        }
    }
}

fn confine_and_exec(args: &[OsString]) -> Result<i32, String> {
    let [dir, cpu, memory, processes, file, uid, program, rest @ ..] = args else {
        return Err("usage: __sandbox-exec DIR CPU MEMORY PROCESSES FILE UID PROGRAM ARGS…".into());
    };
    let number = |value: &OsString, what: &str| -> Result<u64, String> {
        value
            .to_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{what} {value:?} is not a number"))
    };
    let (cpu, memory, processes, file, uid) = (
        number(cpu, "cpu seconds")?,
        number(memory, "memory bytes")?,
        number(processes, "processes")?,
        number(file, "file bytes")?,
        number(uid, "uid")?,
    );
    let uid = u32::try_from(uid).map_err(|_| format!("uid {uid} is out of range"))?;
    let dir = PathBuf::from(dir);
    let root = is_root();
    let mut isolation = Isolation::default();

    // Namespaces: root may make them directly; others through a user namespace.
    let flags = libc::CLONE_NEWNET | libc::CLONE_NEWPID | libc::CLONE_NEWIPC;
    // SAFETY: unshare only changes this single-threaded process's namespaces.
    let unshared = unsafe { libc::unshare(flags) } == 0
        || (!root && unsafe { libc::unshare(flags | libc::CLONE_NEWUSER) } == 0);
    if unshared {
        isolation.network_namespace = true;
        isolation.pid_namespace = true;
    } else if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        isolation.network_namespace = true;
    }
    if isolation.pid_namespace {
        // The next child is the namespace's first process; when it ends, every process in the
        // namespace ends. This process waits for it and passes its status on.
        // SAFETY: single-threaded, so fork is safe; the child only makes syscalls and execs.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid > 0 {
            return Ok(wait_for(pid));
        }
        // SAFETY: prctl with constant arguments. When the waiting parent is killed (the
        // deadline), this process, and with it the namespace, is killed too.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    }

    set_limit(libc::RLIMIT_CPU, cpu)?;
    set_limit(libc::RLIMIT_AS, memory)?;
    set_limit(libc::RLIMIT_NPROC, processes)?;
    set_limit(libc::RLIMIT_FSIZE, file)?;
    set_limit(libc::RLIMIT_NOFILE, 256)?;
    set_limit(libc::RLIMIT_CORE, 0)?;

    if root && uid != 0 {
        // SAFETY: plain credential syscalls; each result is checked.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(format!(
                    "dropping to user {uid}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    // SAFETY: as above.
    isolation.unprivileged = unsafe { libc::getuid() != 0 && libc::geteuid() != 0 };
    isolation.landlock = landlock(&dir)?;

    std::env::set_current_dir(&dir).map_err(|e| format!("entering {}: {e}", dir.display()))?;
    let report = serde_json::to_string(&isolation).map_err(|e| e.to_string())?;
    eprintln!("{REPORT_PREFIX}{report}");

    let to_c = |s: &std::ffi::OsStr| {
        CString::new(std::os::unix::ffi::OsStrExt::as_bytes(s))
            .map_err(|_| format!("{s:?} holds a NUL byte"))
    };
    let program_c = to_c(program)?;
    let mut argv = vec![program_c.clone()];
    for arg in rest {
        argv.push(to_c(arg)?);
    }
    let home = to_c(&OsString::from(format!("HOME={}", dir.display())))?;
    let env = [
        CString::new("PATH=/usr/local/bin:/usr/bin:/bin").map_err(|e| e.to_string())?,
        CString::new("LANG=C.UTF-8").map_err(|e| e.to_string())?,
        home,
    ];
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    // SAFETY: NUL-terminated arrays of NUL-terminated strings that outlive the call.
    unsafe { libc::execvpe(program_c.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    let why = std::io::Error::last_os_error();
    eprintln!("sandbox: executing {program:?}: {why}");
    Ok(127)
}

fn wait_for(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return 125;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        125
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), String> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a valid rlimit for this process.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(format!(
            "setrlimit({resource}, {value}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Reads anywhere; writes beneath `dir` and to `/dev/null`; no TCP. Returns Landlock's status.
fn landlock(dir: &Path) -> Result<String, String> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus,
    };
    let abi = ABI::V5;
    let rule = |path: &Path, access| -> Result<PathBeneath<PathFd>, String> {
        let fd = PathFd::new(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        Ok(PathBeneath::new(fd, access))
    };
    let root = rule(Path::new("/"), AccessFs::from_read(abi))?;
    let null = rule(Path::new("/dev/null"), AccessFs::from_file(abi))?;
    let own = rule(dir, AccessFs::from_all(abi))?;
    let landlock = |e: landlock::RulesetError| format!("landlock: {e}");
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(landlock)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(landlock)?
        .create()
        .map_err(landlock)?
        .add_rule(root)
        .map_err(landlock)?
        .add_rule(null)
        .map_err(landlock)?
        .add_rule(own)
        .map_err(landlock)?
        .restrict_self()
        .map_err(landlock)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "fully",
        RulesetStatus::PartiallyEnforced => "partially",
        RulesetStatus::NotEnforced => "not",
    }
    .to_string())
}
