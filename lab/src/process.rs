//! Processes the lab starts. A [`Child`] is a Drop guard: it owns one process by pid,
//! sends its output to a log file, and on drop stops it (SIGTERM, a grace period, then
//! SIGKILL) and reaps it, so a failing test leaves nothing running. Short commands go
//! through [`run_bounded`], which kills them if they outlive their time limit.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a child gets to exit after SIGTERM before it is killed.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

/// How often [`wait_until`] polls its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A process started by the lab, stopped and reaped when dropped.
#[derive(Debug)]
pub struct Child {
    inner: std::process::Child,
    program: String,
    log: PathBuf,
    /// Set when the log is a temporary file: it lives as long as the child guard.
    _temp_log: Option<tempfile::TempPath>,
}

/// Starts `cmd` with stdin from /dev/null and stdout and stderr appended to `log`.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open log file {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("clone log file handle {}", log.display()))?;
    let program = describe(&cmd);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let inner = cmd.spawn().with_context(|| format!("spawn {program}"))?;
    Ok(Child {
        inner,
        program,
        log: log.to_path_buf(),
        _temp_log: None,
    })
}

/// Like [`spawn_logged`], with a temporary log file removed when the child is dropped.
pub fn spawn_temp_logged(cmd: Command) -> Result<Child> {
    let temp = tempfile::Builder::new()
        .prefix("dpu-lab-")
        .suffix(".log")
        .tempfile()
        .context("create a temporary log file")?
        .into_temp_path();
    let mut child = spawn_logged(cmd, &temp)?;
    child._temp_log = Some(temp);
    Ok(child)
}

impl Child {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// The command line it was started with, for messages.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log file's current content (a note in its place if it cannot be read).
    pub fn log(&self) -> String {
        let mut bytes = Vec::new();
        match File::open(&self.log).and_then(|mut f| f.read_to_end(&mut bytes)) {
            Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<cannot read log {}: {e}>", self.log.display()),
        }
    }

    /// Whether it has not exited yet (reaps it if it has).
    pub fn is_running(&mut self) -> bool {
        matches!(self.inner.try_wait(), Ok(None))
    }

    /// Its exit status if it has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.inner
            .try_wait()
            .with_context(|| format!("wait for {}", self.program))
    }

    /// Waits up to `timeout` for it to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // The pid stays ours until it is reaped, so it cannot name another process here.
        self.inner
            .kill()
            .with_context(|| format!("kill {}", self.program))?;
        self.inner
            .wait()
            .with_context(|| format!("reap {}", self.program))
    }

    /// SIGTERM, up to [`TERM_GRACE`] to exit, then SIGKILL; always reaps.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        if let Err(e) = signal(self.pid(), "TERM") {
            eprintln!("lab: SIGTERM to {} failed: {e:#}", self.program);
        } else if let Some(status) = self.wait_timeout(TERM_GRACE)? {
            return Ok(status);
        } else {
            eprintln!(
                "lab: {} (pid {}) ignored SIGTERM for {TERM_GRACE:?}; killing it",
                self.program,
                self.pid()
            );
        }
        self.kill9()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!(
                "lab: could not stop {} (pid {}): {e:#}",
                self.program,
                self.pid()
            );
        }
    }
}

/// Sends a signal by name (`TERM`, `KILL`, ...) to one pid. The workspace denies
/// `unsafe`, so this goes through kill(1) rather than libc.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let mut cmd = Command::new("kill");
    cmd.args(["-s", name, &pid.to_string()]);
    run_checked(cmd, Duration::from_secs(5)).map(drop)
}

/// Runs `cmd` to completion with its output captured, killing it after `timeout`.
/// Does not check the exit status; see [`run_checked`].
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let what = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("run {what}"))?;

    // Readers on their own threads so a chatty command cannot fill a pipe and stall.
    let (tx, rx) = mpsc::channel();
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    for (index, pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            let _ = tx.send((index, bytes));
        });
    }

    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("wait for {what}"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?} and was killed");
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    };

    // A daemon that inherited the pipes can keep them open; do not wait for it forever.
    let mut outputs = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(200));
        match rx.recv_timeout(wait) {
            Ok((index, bytes)) => outputs[index] = bytes,
            Err(_) => break,
        }
    }
    let [stdout, stderr] = outputs;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs `cmd` like [`run_bounded`] and returns its stdout; a failure status is an error
/// carrying the command line and its stderr.
pub fn run_checked(cmd: Command, timeout: Duration) -> Result<String> {
    let what = describe(&cmd);
    let out = run_bounded(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` every [`POLL_INTERVAL`] until it returns true; an error naming `what` if
/// it still does not after `timeout`.
pub fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_checked_returns_stdout_and_reports_stderr() {
        let mut ok = Command::new("sh");
        ok.args(["-c", "echo out; echo err >&2"]);
        assert_eq!(run_checked(ok, Duration::from_secs(5)).unwrap(), "out\n");

        let mut bad = Command::new("sh");
        bad.args(["-c", "echo broken >&2; exit 3"]);
        let err = format!(
            "{:#}",
            run_checked(bad, Duration::from_secs(5)).unwrap_err()
        );
        assert!(err.contains("broken") && err.contains("sh -c"), "{err}");
    }

    #[test]
    fn run_bounded_kills_a_command_that_overruns() {
        let mut slow = Command::new("sleep");
        slow.arg("30");
        let started = Instant::now();
        let err = run_bounded(slow, Duration::from_millis(200)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("sleep 30"), "{err}");
    }

    #[test]
    fn wait_until_names_what_it_waited_for() {
        let err = wait_until("the moon", Duration::from_millis(100), || false).unwrap_err();
        assert!(err.to_string().contains("the moon"), "{err}");
        let mut calls = 0;
        wait_until("third call", Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        })
        .unwrap();
    }

    #[test]
    fn child_logs_and_is_stopped_on_drop() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let mut child = spawn_temp_logged(cmd).unwrap();
        let pid = child.pid();
        let log = child.log_path().to_path_buf();
        wait_until("the child's log line", Duration::from_secs(5), || {
            child.log().contains("started")
        })
        .unwrap();
        assert!(child.is_running());
        drop(child);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!log.exists(), "temporary log removed with the guard");
    }

    #[test]
    fn terminate_falls_back_to_sigkill() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap '' TERM; echo armed; while :; do sleep 0.1; done",
        ]);
        let mut child = spawn_temp_logged(cmd).unwrap();
        wait_until("the TERM trap", Duration::from_secs(5), || {
            child.log().contains("armed")
        })
        .unwrap();
        let status = child.terminate().unwrap();
        assert!(!status.success());
        assert!(!child.is_running());
    }
}
