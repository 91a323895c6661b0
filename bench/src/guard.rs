//! Cleanup that survives a panic. The lab stops what it started from `Drop`, but
//! the release profile aborts on panic and runs no `Drop`; so every OVS instance,
//! namespace and agent the benchmark starts is also noted here, and a panic hook
//! stops them by pid (and deletes the namespaces) before the process aborts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use dpu_lab::fixture::Lab;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Pid(u32),
    /// An OVS instance directory: its daemons are stopped by their pid files.
    OvsDir(PathBuf),
    Netns(String),
}

static ITEMS: Mutex<Vec<Item>> = Mutex::new(Vec::new());

fn add(item: Item) {
    if let Ok(mut v) = ITEMS.lock() {
        if !v.contains(&item) {
            v.push(item);
        }
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
    if let Ok(mut v) = ITEMS.lock() {
        v.retain(|i| !gone.contains(i));
    }
}

/// Notes an OVS instance.
pub fn track_ovs(ovs: &dpu_lab::ovs::OvsInstance) {
    add(Item::OvsDir(ovs.dir().to_path_buf()));
    if let Some(ns) = ovs.netns() {
        add(Item::Netns(ns.to_string()));
    }
}

/// Notes one process.
/// A network namespace the harness made itself (not through a `Lab`).
pub fn track_netns(name: &str) {
    add(Item::Netns(name.to_string()));
}

/// A namespace tracked with [`track_netns`] that is gone.
pub fn forget_netns(name: &str) {
    forget(&[Item::Netns(name.to_string())]);
}

pub fn track_pid(pid: u32) {
    add(Item::Pid(pid));
}

fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

fn kill_pidfile(p: &Path) {
    if let Ok(pid) = crate::procstat::pid_from_file(p) {
        kill(pid);
    }
}

/// Stops everything noted and not stopped yet. Items whose process is gone are
/// harmless: a pid file of a stopped daemon is removed by it, and the lab's own
/// `Drop` ran for everything that ended normally.
pub fn sweep() {
    let items = match ITEMS.lock() {
        Ok(mut v) => std::mem::take(&mut *v),
        Err(_) => return,
    };
    for it in items.iter().rev() {
        match it {
            Item::Pid(p) => kill(*p),
            Item::OvsDir(d) => {
                kill_pidfile(&d.join("ovs-vswitchd.pid"));
                kill_pidfile(&d.join("ovsdb-server.pid"));
            }
            Item::Netns(_) => {}
        }
    }
    for it in &items {
        if let Item::Netns(n) = it {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(std::process::Stdio::null())
                .status();
        }
        if let Item::OvsDir(d) = it {
            let _ = std::fs::remove_dir_all(d);
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
