//! SIGTERM (and SIGINT, SIGHUP) to a running `dpu-bench` stops what it started and
//! exits 128 + the signal: the real binary runs the newconn scenario (a private
//! OVS, client and server namespaces, `lab-echo`, and the iptables reference's
//! namespaces), gets the signal while it measures, and afterwards the namespaces,
//! OVS daemons, child processes and temp dirs of that run (found by the names and
//! pids it used, never by a broad match) are gone. Its children must not have
//! these signals blocked or ignored.
//!
//! Needs root, Open vSwitch, iptables and `lab-echo` / `lab-client` built next to
//! `dpu-bench` (`cargo build -p dpu-lab --bins`); a missing one fails the test,
//! never skips it. Whatever the run left is removed at the end, also on failure.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const NETNS_DIR: &str = "/var/run/netns";
/// Bound on the run reaching its measuring phase.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the exit after the signal (the sweep is a few kills and `ip netns del`s).
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a killed process disappearing.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);

/// A process, by pid and start time (so a reused pid is not taken for it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    pid: u32,
    start: u64,
    comm: String,
}

/// `/proc/<pid>/stat`: (state, ppid, start time, comm).
fn stat(pid: u32) -> Option<(char, u32, u64, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); ppid is field 4, starttime field 22.
    Some((
        f.first()?.chars().next()?,
        f.get(1)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
        comm,
    ))
}

fn proc_of(pid: u32) -> Option<Proc> {
    stat(pid).map(|(_, _, start, comm)| Proc { pid, start, comm })
}

/// Still running: the same process (start time) and not a zombie (an orphan killed
/// with the run may wait for its reaper).
fn alive(p: &Proc) -> bool {
    matches!(stat(p.pid), Some((state, _, start, _)) if start == p.start && !matches!(state, 'Z' | 'X'))
}

fn children_of(parent: u32) -> Vec<Proc> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some((_, ppid, start, comm)) = stat(pid) {
            if ppid == parent {
                out.push(Proc { pid, start, comm });
            }
        }
    }
    out
}

fn netns_names() -> BTreeSet<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `dpu_lab::netns::unique_prefix`'s pid part: the pid modulo 36^3, in base 36.
fn pid_base36(pid: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = pid % 36u32.pow(3);
    let mut out = [b'0'; 3];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out.to_vec()).unwrap()
}

/// Entries of `dir` whose name starts with `prefix`.
fn entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What the run started, as seen while it runs.
#[derive(Debug, Default)]
struct Started {
    netns: BTreeSet<String>,
    /// OVS instance directories (in the run's private TMPDIR) and their daemons.
    ovs_dirs: Vec<PathBuf>,
    daemons: Vec<Proc>,
    children: Vec<Proc>,
    /// The run's copies of the binaries (`dpu-bench-bin-*`).
    frozen: Vec<PathBuf>,
}

/// One `dpu-bench` run with a private TMPDIR; on drop (also when the test fails) it
/// is killed if still running and everything it was seen to start is removed.
struct Run {
    child: Child,
    pid: u32,
    tmp: tempfile::TempDir,
    netns_before: BTreeSet<String>,
    seen: Started,
}

impl Run {
    fn start() -> Run {
        let tmp = tempfile::tempdir().unwrap();
        let stderr = std::fs::File::create(tmp.path().join("stderr.log")).unwrap();
        let netns_before = netns_names();
        // Long enough never to finish before the signal: 1000 rounds of 200
        // connections to each of two VIPs.
        let child = Command::new(env!("CARGO_BIN_EXE_dpu-bench"))
            .args([
                "all",
                "--scenarios",
                "newconn",
                "--newconn-buckets",
                "3",
                "--newconn-hash",
                "port",
                "--newconn-rounds",
                "1000",
                "--newconn-conns",
                "200",
                "--out",
            ])
            .arg(tmp.path().join("out"))
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("dpu-bench runs");
        Run {
            pid: child.id(),
            child,
            tmp,
            netns_before,
            seen: Started::default(),
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("stderr.log")).unwrap_or_default()
    }

    /// The namespaces of this run: new since it started, and named as its lab names
    /// them (`dpuovs-<pid>-<n>`, `dpub-<pid>-<n>`, and `unique_prefix`'s
    /// `n<pid base 36>…` / `i<pid base 36>…` of the newconn and iptables hosts).
    fn own_netns(&self) -> BTreeSet<String> {
        let b36 = pid_base36(self.pid);
        let prefixes = [
            format!("dpuovs-{}-", self.pid),
            format!("dpub-{}-", self.pid),
            format!("n{b36}"),
            format!("i{b36}"),
        ];
        netns_names()
            .into_iter()
            .filter(|n| !self.netns_before.contains(n))
            .filter(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
            .collect()
    }

    /// Adds what the run holds now to `seen`.
    fn observe(&mut self) {
        let netns = self.own_netns();
        let s = &mut self.seen;
        s.netns.extend(netns);
        for dir in entries(self.tmp.path(), "dpuovs-") {
            for (file, comm) in [
                ("ovsdb-server.pid", "ovsdb-server"),
                ("ovs-vswitchd.pid", "ovs-vswitchd"),
            ] {
                let pid = std::fs::read_to_string(dir.join(file))
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
                if let Some(p) = pid.and_then(proc_of).filter(|p| p.comm == comm) {
                    if !s.daemons.contains(&p) {
                        s.daemons.push(p);
                    }
                }
            }
            if !s.ovs_dirs.contains(&dir) {
                s.ovs_dirs.push(dir);
            }
        }
        for c in children_of(self.pid) {
            if !s.children.contains(&c) {
                s.children.push(c);
            }
        }
        for d in entries(self.tmp.path(), "dpu-bench-bin-") {
            if !s.frozen.contains(&d) {
                s.frozen.push(d);
            }
        }
    }

    /// Waits until the run measures: its OVS setup is done (`groups.bundle` is
    /// written after the switch, both hosts and `lab-echo` are noted) and a
    /// `lab-client` batch runs, so nothing is being created when the signal comes.
    fn wait_measuring(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "dpu-bench exited ({status}) before it measured:\n{}",
                    self.stderr()
                );
            }
            let bundle = entries(self.tmp.path(), "dpu-bench-nc-")
                .iter()
                .any(|d| d.join("groups.bundle").exists());
            let client = children_of(self.pid).iter().any(|c| c.comm == "lab-client");
            if bundle && client {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "dpu-bench did not reach its measuring phase in {READY_TIMEOUT:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if started.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What of `seen` is still there.
    fn leftovers(&self) -> Vec<String> {
        let s = &self.seen;
        let now = netns_names();
        let mut left: Vec<String> = s
            .netns
            .iter()
            .filter(|n| now.contains(*n))
            .map(|n| format!("netns {n}"))
            .collect();
        left.extend(
            s.daemons
                .iter()
                .chain(&s.children)
                .filter(|p| alive(p))
                .map(|p| format!("process {} ({})", p.pid, p.comm)),
        );
        left.extend(
            s.ovs_dirs
                .iter()
                .chain(&s.frozen)
                .filter(|d| d.exists())
                .map(|d| format!("directory {}", d.display())),
        );
        left
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.observe();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let s = &self.seen;
        for p in s.daemons.iter().chain(&s.children) {
            if alive(p) {
                eprintln!("cleanup: killing {} ({})", p.pid, p.comm);
                let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
            }
        }
        let ip = find_program("ip").unwrap_or_else(|| "ip".into());
        let now = netns_names();
        for n in s.netns.iter().filter(|n| now.contains(*n)) {
            eprintln!("cleanup: deleting netns {n}");
            let _ = Command::new(&ip).args(["netns", "del", n]).status();
        }
    }
}

/// The runs are heavy (an OVS, six namespaces, traffic): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Bits of SIGHUP, SIGINT and SIGTERM in a `/proc/<pid>/status` signal mask.
const HANDLED: u64 = 1 << (Signal::SIGHUP as u64 - 1)
    | 1 << (Signal::SIGINT as u64 - 1)
    | 1 << (Signal::SIGTERM as u64 - 1);

/// `SigBlk` and `SigIgn` of `pid`'s main thread.
fn blocked_and_ignored(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some((mask("SigBlk:")?, mask("SigIgn:")?))
}

fn prerequisites() {
    dpu_lab::prereq::assert_root_and_ovs();
    assert!(
        find_program("iptables-restore").is_some(),
        "iptables-restore is not installed (needs iptables)"
    );
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_dpu-bench")).parent().unwrap();
    for b in ["lab-echo", "lab-client"] {
        assert!(
            bin_dir.join(b).is_file(),
            "{b} is not built in {}: cargo build -p dpu-lab --bins",
            bin_dir.display()
        );
    }
}

/// Runs the bench until it measures, sends `sig`, and checks the exit status
/// (128 + `sig`) and that nothing the run started is left.
fn signal_stops_everything(sig: Signal) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    prerequisites();
    let mut run = Run::start();
    run.wait_measuring();
    run.observe();
    eprintln!("dpu-bench {} started: {:#?}", run.pid, run.seen);
    let s = &run.seen;
    let ovs_ns = format!("dpuovs-{}-0", run.pid);
    assert!(s.netns.contains(&ovs_ns), "no {ovs_ns}: {s:?}");
    assert!(
        s.netns.len() >= 3,
        "the OVS's and two hosts' namespaces: {s:?}"
    );
    assert_eq!(s.ovs_dirs.len(), 1, "{s:?}");
    assert_eq!(s.daemons.len(), 2, "ovsdb-server and ovs-vswitchd: {s:?}");
    assert!(
        s.children.iter().any(|c| c.comm == "lab-echo"),
        "no lab-echo child: {s:?}"
    );
    assert_eq!(s.frozen.len(), 1, "{s:?}");
    // What the bench starts must still stop on these signals: not blocked, not
    // ignored (as they would be with a mask the children inherit).
    for p in s.children.iter().chain(&s.daemons) {
        if let Some((blk, ign)) = blocked_and_ignored(p.pid) {
            assert_eq!(
                (blk | ign) & HANDLED,
                0,
                "{} ({}) has SIGHUP/SIGINT/SIGTERM blocked ({blk:x}) or ignored ({ign:x})",
                p.pid,
                p.comm
            );
        }
    }
    // The check below sees it while it runs (all but a `lab-client` whose batch
    // may have ended meanwhile).
    let echoes = s.children.iter().filter(|c| c.comm == "lab-echo").count();
    let lasting = s.netns.len() + s.daemons.len() + echoes + s.ovs_dirs.len() + s.frozen.len();
    assert!(
        run.leftovers().len() >= lasting,
        "{lasting} things started, but only these are seen: {:#?}",
        run.leftovers()
    );

    kill(Pid::from_raw(run.pid as i32), sig).unwrap();
    let sent = Instant::now();
    let status = run.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "dpu-bench still runs {EXIT_TIMEOUT:?} after {sig}:\n{}",
            run.stderr()
        )
    });
    eprintln!(
        "dpu-bench exited {:.2} s after {sig}: {status}",
        sent.elapsed().as_secs_f64()
    );
    let want = 128 + sig as i32;
    assert_eq!(
        status.code(),
        Some(want),
        "dpu-bench after {sig}: {status}, not exit {want}:\n{}",
        run.stderr()
    );

    // A SIGKILLed process may take a moment to go.
    let started = Instant::now();
    while !run.leftovers().is_empty() && started.elapsed() < GONE_TIMEOUT {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = run.leftovers();
    assert!(
        left.is_empty(),
        "left behind after {sig}: {left:#?}\nstderr:\n{}",
        run.stderr()
    );
}

#[test]
fn sigterm_stops_everything_the_run_started_and_exits_143() {
    signal_stops_everything(Signal::SIGTERM);
}

#[test]
fn sigint_stops_everything_the_run_started_and_exits_130() {
    signal_stops_everything(Signal::SIGINT);
}

#[test]
fn sighup_stops_everything_the_run_started_and_exits_129() {
    signal_stops_everything(Signal::SIGHUP);
}
