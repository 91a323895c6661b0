//! A private network namespace per load, and running a loader inside it with its
//! cost measured by `wait4(2)`.
//!
//! The loader is spawned without `ip netns exec`: the child joins the namespace with
//! `setns(2)` between fork and exec, so no `ip` process is measured. See
//! [`Netns::run_measured`] for how the cost is taken.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Prefix of every namespace made here: `dpub-<pid>-<n>`.
const PREFIX: &str = "dpub-";
const NETNS_DIR: &str = "/var/run/netns";
/// Directories searched after `PATH` (test runners often have no sbin in `PATH`).
const SBIN_DIRS: &[&str] = &["/usr/sbin", "/usr/local/sbin", "/sbin"];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named netns that is deleted on drop (also on unwinding).
#[derive(Debug)]
pub(crate) struct Netns {
    name: String,
}

impl Netns {
    /// Creates `dpub-<pid>-<n>`, first removing namespaces left by dead processes
    /// (with `panic = "abort"` no drop runs, so a crashed run leaves one behind).
    pub(crate) fn new() -> Result<Self> {
        remove_stale();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // Recorded first, so lab/run-tests' clean-up finds it after a crash.
        dpu_lab::netns::claim_netns(&name)?;
        run_ok(Command::new(program("ip")?).args(["netns", "add", &name]))?;
        // For the sweep on a signal or a panic (`Drop` forgets it).
        crate::guard::track_netns(&name);
        let ns = Netns { name };
        // Loopback up, as in any pod or node namespace.
        ns.output(&program("ip")?, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `prog args` inside the namespace and returns its stdout; fails on a
    /// non-zero exit, with stderr in the error.
    pub(crate) fn output(&self, prog: &Path, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(prog);
        cmd.args(args).stdin(Stdio::null());
        self.enter_on_exec(&mut cmd)?;
        let line = format!("{} {}", prog.display(), args.join(" "));
        let out: Output = cmd
            .output()
            .with_context(|| format!("`{line}` in {} could not be run", self.name))?;
        if !out.status.success() {
            bail!(
                "`{line}` in {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a new thread that has joined this namespace (sockets it opens
    /// live there), and returns its result.
    #[allow(unsafe_code)]
    pub(crate) fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on a descriptor `file` keeps open; it changes only
                // this short-lived thread's network namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("joining {}", self.name));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("the thread in {} panicked", self.name))?
        })
    }

    /// Makes `cmd` join this namespace between fork and exec.
    #[allow(unsafe_code)]
    pub(crate) fn enter_on_exec(&self, cmd: &mut Command) -> Result<()> {
        let file = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        let fd = file.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // async-signal-safe setns(2) system call on a descriptor that the moved-in
        // `file` keeps open (the parent's copy closes when the Command is dropped).
        unsafe {
            cmd.pre_exec(move || {
                let _keep_open = &file;
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        crate::guard::forget_netns(&self.name);
        if let Err(e) =
            program("ip").and_then(|ip| run_ok(Command::new(ip).args(["netns", "del", &self.name])))
        {
            eprintln!("removing netns {}: {e:#}", self.name);
        }
    }
}

/// Whether a namespace of this name exists.
pub(crate) fn exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// This process's namespaces that exist now.
pub(crate) fn own() -> Vec<String> {
    let prefix = format!("{PREFIX}{}-", std::process::id());
    std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes `dpub-<pid>-*` namespaces whose process is gone.
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            if let Ok(ip) = program("ip") {
                let _ = run_ok(Command::new(ip).args(["netns", "del", &name]));
            }
        }
    }
}

/// What one loader run cost.
#[derive(Debug, Clone)]
pub(crate) struct Usage {
    pub wall: Duration,
    pub cpu: Duration,
    pub peak_rss_kib: u64,
}

impl Netns {
    /// Runs `prog args` in this namespace with `stdin`, under GNU `time`, and returns
    /// its cost:
    ///
    /// - wall: from spawn to reap;
    /// - CPU: user+system from `wait4(2)` on our child, which covers `time` and the
    ///   loader it waits for (`time` itself adds about a millisecond);
    /// - peak RSS: the loader's own `ru_maxrss`, as `time` reports it (`%M`).
    ///
    /// Why `time` in between: a forked child's `ru_maxrss` starts at its parent's RSS
    /// at fork (the copied address space counts until exec), so `wait4` on a direct
    /// child of a large harness reports the harness, not the loader. Forked from the
    /// small `time` process, the loader's figure is its own.
    ///
    /// Fails on a non-zero exit, or after `timeout` (the whole process group is
    /// killed).
    #[allow(unsafe_code)]
    pub(crate) fn run_measured(
        &self,
        prog: &Path,
        args: &[&str],
        stdin: File,
        timeout: Duration,
    ) -> Result<Usage> {
        let what = format!("{} {} (in {})", prog.display(), args.join(" "), self.name);
        let time = program("time")
            .context("GNU time measures the loader's peak RSS; install the `time` package")?;
        let report = tempfile::NamedTempFile::new().context("creating the time report file")?;
        let stderr = tempfile::tempfile().context("creating a temp file for stderr")?;
        let mut cmd = Command::new(time);
        cmd.args(["-f", "%M", "-o"])
            .arg(report.path())
            .arg("--")
            .arg(prog)
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(stderr.try_clone()?)
            .process_group(0);
        self.enter_on_exec(&mut cmd)?;
        let start = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("`{what}` could not be started"))?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        let deadline = start + timeout;
        let (status, usage) = loop {
            let mut status: libc::c_int = 0;
            // SAFETY: all-zero bytes are a valid `rusage` (integers and timevals).
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 writes only into the two out-parameters, which are live,
            // aligned locals; `pid` is our own un-reaped child (std's `Child` is never
            // waited on, so nothing else reaps it).
            let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if rc == pid {
                break (status, usage);
            }
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err).with_context(|| format!("wait4 for `{what}`"));
            }
            if Instant::now() >= deadline {
                // SAFETY: kill(2) of the process group our child leads (it was
                // spawned with process_group(0)); it reads no memory of ours.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                // SAFETY: as for wait4 above; null out-pointers are allowed.
                unsafe { libc::wait4(pid, std::ptr::null_mut(), 0, std::ptr::null_mut()) };
                bail!("`{what}` did not finish within {timeout:?}");
            }
            sleep(Duration::from_micros(500));
        };
        let wall = start.elapsed();
        drop(child);
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            bail!(
                "`{what}` failed (wait status {status:#x}): {}",
                read_all(stderr).trim()
            );
        }
        let text = std::fs::read_to_string(report.path()).context("reading time's report")?;
        let peak_rss_kib = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow!("time reported no peak RSS for `{what}`: {text:?}"))?;
        let tv = |t: libc::timeval| {
            Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
                + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
        };
        Ok(Usage {
            wall,
            cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
            peak_rss_kib,
        })
    }
}

fn read_all(mut file: File) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut text);
    text
}

/// Finds `name` in `PATH` or the sbin directories; a missing tool is an error.
pub(crate) fn program(name: &str) -> Result<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("`{name}` is not installed (searched PATH and {SBIN_DIRS:?})"))
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{line} could not be run"))?;
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
