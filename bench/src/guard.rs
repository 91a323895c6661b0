//! Cleanup that survives a panic or a signal. The lab stops what it started from
//! `Drop`, but the release profile aborts on panic and runs no `Drop`, and SIGINT,
//! SIGTERM or SIGHUP end the process without one; so every OVS instance, namespace
//! and agent the benchmark starts is also noted here, and a panic hook
//! ([`install_panic_hook`]) or a signal thread ([`install_signal_handlers`]) stops
//! them by pid (and deletes the namespaces) before the process ends.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use dpu_lab::fixture::Lab;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Pid(u32),
    /// An OVS instance directory: its daemons are stopped by their pid files.
    OvsDir(PathBuf),
    Netns(String),
    /// A directory of files only (removed).
    Dir(PathBuf),
}

static ITEMS: Mutex<Vec<Item>> = Mutex::new(Vec::new());

/// The list, also after a thread panicked holding it: a sweep must still see it.
fn items() -> MutexGuard<'static, Vec<Item>> {
    ITEMS.lock().unwrap_or_else(PoisonError::into_inner)
}

fn add(item: Item) {
    let mut v = items();
    if !v.contains(&item) {
        v.push(item);
    }
}

/// Notes everything `lab` holds now: its OVS, namespaces and agent.
pub fn track_lab(lab: &Lab) {
    track_ovs(&lab.ovs);
    for h in lab.hosts.values() {
        add(Item::Netns(h.ns.name().to_string()));
        if let Some(e) = &h.echo {
            add(Item::Pid(e.pid()));
        }
    }
    if let Some(a) = &lab.agent {
        add(Item::Pid(a.pid()));
    }
}

/// Forgets `lab` (called just before it is dropped and stops everything itself),
/// so no pid of it is signalled later, when it may belong to someone else.
pub fn forget_lab(lab: &Lab) {
    let mut gone = vec![Item::OvsDir(lab.ovs.dir().to_path_buf())];
    gone.extend(lab.ovs.netns().map(|n| Item::Netns(n.to_string())));
    for h in lab.hosts.values() {
        gone.push(Item::Netns(h.ns.name().to_string()));
        gone.extend(h.echo.as_ref().map(|e| Item::Pid(e.pid())));
    }
    gone.extend(lab.agent.as_ref().map(|a| Item::Pid(a.pid())));
    forget(&gone);
}

/// Forgets an OVS instance about to be dropped.
pub fn forget_ovs(ovs: &dpu_lab::ovs::OvsInstance) {
    let mut gone = vec![Item::OvsDir(ovs.dir().to_path_buf())];
    gone.extend(ovs.netns().map(|n| Item::Netns(n.to_string())));
    forget(&gone);
}

/// Forgets one process (it was reaped).
pub fn forget_pid(pid: u32) {
    forget(&[Item::Pid(pid)]);
}

fn forget(gone: &[Item]) {
    items().retain(|i| !gone.contains(i));
}

/// Notes an OVS instance.
pub fn track_ovs(ovs: &dpu_lab::ovs::OvsInstance) {
    add(Item::OvsDir(ovs.dir().to_path_buf()));
    if let Some(ns) = ovs.netns() {
        add(Item::Netns(ns.to_string()));
    }
}

/// Notes `ovs` until the value returned is dropped; bind it after `ovs`, so that it
/// is dropped (and `ovs` forgotten) just before `ovs` stops itself.
pub fn track_ovs_scoped(ovs: &dpu_lab::ovs::OvsInstance) -> TrackedOvs<'_> {
    track_ovs(ovs);
    TrackedOvs(ovs)
}

/// See [`track_ovs_scoped`].
#[derive(Debug)]
pub struct TrackedOvs<'a>(&'a dpu_lab::ovs::OvsInstance);

impl Drop for TrackedOvs<'_> {
    fn drop(&mut self) {
        forget_ovs(self.0);
    }
}

/// A network namespace the harness made itself (not through a `Lab`).
pub fn track_netns(name: &str) {
    add(Item::Netns(name.to_string()));
}

/// A namespace tracked with [`track_netns`] that is gone.
pub fn forget_netns(name: &str) {
    forget(&[Item::Netns(name.to_string())]);
}

/// Notes one process.
pub fn track_pid(pid: u32) {
    add(Item::Pid(pid));
}

/// Notes a directory of files to remove (one the run's `Drop` would remove).
pub fn track_dir(dir: &Path) {
    add(Item::Dir(dir.to_path_buf()));
}

fn kill(pid: u32) {
    // Never 0 (kill(2) would signal the whole process group).
    if let Ok(pid @ 1..) = i32::try_from(pid) {
        let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Kills the daemon named in an OVS pid file if it still is `comm` (a pid file
/// left by a daemon that died may name a reused pid).
fn kill_pidfile(p: &Path, comm: &str) {
    if let Ok(pid) = crate::procstat::pid_from_file(p) {
        let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim() == comm {
            kill(pid);
        }
    }
}

/// This process's children now (whatever thread started them), each with whether it
/// leads a process group of its own (e.g. a kube-proxy loader under `time`).
fn children() -> Vec<(i32, bool)> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command (which may hold ')'): state, ppid, pgrp.
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().take(3).collect())
            .unwrap_or_default();
        if f.get(1) == Some(&me.as_str()) {
            out.push((pid, f.get(2) == Some(&pid.to_string().as_str())));
        }
    }
    out
}

/// Held for the whole of a sweep, so that a second caller (the panic hook, the
/// signal thread, `main` on error) returns, and lets the process end, only after
/// the first one finished.
static SWEEPING: Mutex<()> = Mutex::new(());

thread_local! {
    /// This thread is sweeping: a panic inside the sweep reaches the panic hook,
    /// whose sweep must not wait for this one (it would wait forever).
    static IN_SWEEP: Cell<bool> = const { Cell::new(false) };
}

/// A sweep done, holding [`SWEEPING`] until dropped.
struct Swept {
    _one: MutexGuard<'static, ()>,
}

impl Drop for Swept {
    fn drop(&mut self) {
        let _ = IN_SWEEP.try_with(|s| s.set(false));
    }
}

/// Sweeps, after any sweep under way on another thread; `None` when this thread is
/// sweeping already.
fn sweep_held() -> Option<Swept> {
    if IN_SWEEP.try_with(|s| s.replace(true)).unwrap_or(false) {
        return None;
    }
    let one = SWEEPING.lock().unwrap_or_else(PoisonError::into_inner);
    let swept = Swept { _one: one };
    stop_all();
    Some(swept)
}

/// Stops everything noted and not stopped yet. Items whose process is gone are
/// harmless: a pid file of a stopped daemon is removed by it, and the lab's own
/// `Drop` ran for everything that ended normally. Idempotent: the list is taken
/// (a second sweep finds it empty), and a sweep waits for one under way.
pub fn sweep() {
    drop(sweep_held());
}

fn stop_all() {
    let items = std::mem::take(&mut *items());
    for it in items.iter().rev() {
        match it {
            Item::Pid(p) => kill(*p),
            Item::OvsDir(d) => {
                kill_pidfile(&d.join("ovs-vswitchd.pid"), "ovs-vswitchd");
                kill_pidfile(&d.join("ovsdb-server.pid"), "ovsdb-server");
            }
            Item::Netns(_) | Item::Dir(_) => {}
        }
    }
    // Whatever this process still runs would outlive it: an `ip netns exec` of a
    // `lab-client` batch, an `ovs-ofctl`, a kube-proxy loader (with its group).
    for (pid, leads_group) in children() {
        let pid = Pid::from_raw(pid);
        let _ = signal::kill(pid, Signal::SIGKILL);
        if leads_group {
            let _ = signal::killpg(pid, Signal::SIGKILL);
        }
    }
    for it in &items {
        match it {
            Item::Netns(n) => {
                let _ = Command::new("ip")
                    .args(["netns", "del", n])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            Item::OvsDir(d) | Item::Dir(d) => {
                let _ = std::fs::remove_dir_all(d);
            }
            Item::Pid(_) => {}
        }
    }
}

/// Installs the panic hook that sweeps before the default hook's report.
pub fn install_panic_hook() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        prev(info);
        eprintln!("dpu-bench: panic; stopping every OVS, namespace and agent it started");
        sweep();
    }));
}

/// Makes SIGINT, SIGTERM and SIGHUP sweep as a panic does, then exit with
/// 128 + the signal. Call it first thing in `main`.
///
/// How: tokio's signal streams on a thread of their own. Its handler only writes
/// to a pipe (the self-pipe pattern), and this thread reads it and sweeps. Not
/// signals blocked with `pthread_sigmask` and a `sigwait` thread: a blocked mask
/// is inherited through fork and exec, and std's `Command` keeps it (it resets
/// only SIGPIPE), so every OVS daemon, agent, `lab-echo` and `ip netns exec` the
/// lab spawns would start with SIGTERM blocked and not stop on the SIGTERM that
/// the lab's `Drop`s and the restart scenario send. Undoing that in each child
/// takes an unsafe `pre_exec` on every spawn, most of them in `dpu-lab`. A
/// handler leaves the mask alone, and exec resets a caught signal to its
/// default action, so children see the signals as if nothing was installed. The
/// harness has no runtime of its own (`rig.rs` makes one per agent), hence the
/// current-thread runtime here.
///
/// The handlers are in place when this returns; a signal before that ends the
/// process by default, before anything is started. The sweep runs while `main`
/// goes on: what a lab constructor has started but not returned yet is not on the
/// list (the sweep still kills the harness's children, e.g. an `ip netns add` or a
/// daemon not yet detached, but not a daemon that already detached).
pub fn install_signal_handlers() -> std::io::Result<()> {
    use tokio::signal::unix::{signal as stream, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (mut int, mut term, mut hup) = {
        let _in = rt.enter();
        (
            stream(SignalKind::interrupt())?,
            stream(SignalKind::terminate())?,
            stream(SignalKind::hangup())?,
        )
    };
    std::thread::Builder::new()
        .name("dpu-bench-signals".into())
        .spawn(move || {
            let got = rt.block_on(async {
                tokio::select! {
                    Some(()) = int.recv() => Some(Signal::SIGINT),
                    Some(()) = term.recv() => Some(Signal::SIGTERM),
                    Some(()) = hup.recv() => Some(Signal::SIGHUP),
                    else => None,
                }
            });
            if let Some(sig) = got {
                eprintln!(
                    "dpu-bench: {}; stopping every OVS, namespace and agent it started",
                    sig.as_str()
                );
                // Held until the exit: a sweep elsewhere (main's on error) waits
                // rather than returning and ending the process with its own status.
                let _held = sweep_held();
                std::process::exit(128 + sig as i32);
            }
        })?;
    Ok(())
}
