//! The controller's status: per node and global, kept in memory and persisted as
//! `status.json` in the state directory.
//!
//! Writers (sessions, the reloader) change the in-memory document through
//! `StatusHandle::update`, which wakes the writer task. The writer waits a short
//! debounce, so a burst of changes becomes one atomic write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dpu_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use crate::agentstatus::AgentStatus;
use crate::agentstatus::AgentStatusError;
use crate::diag::IntentError;
use crate::fsutil::{write_atomic, PUBLIC_MODE};
use crate::shutdown::shutdown_requested;

pub const STATUS_FILE: &str = "status.json";
/// How long the writer waits after a change before it writes, collecting the
/// changes that follow.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// The pid of the controller that wrote this file.
    pub controller_pid: u32,
    /// The intent version in force.
    pub intent_version: u64,
    /// When the intent directory was last loaded (RFC 3339), good or not.
    pub last_reload: Option<String>,
    /// Whether that load was accepted.
    pub last_reload_ok: bool,
    /// Why the last load was refused; empty when it was accepted.
    pub intent_errors: Vec<IntentError>,
    /// The same errors as one line each.
    pub intent_error_lines: Vec<String>,
    /// The store the intent is read from, and whether it answers.
    #[serde(default)]
    pub store: StoreStatus,
    /// Read from the store (`status --etcd`): the replicas that wrote their
    /// status there, `<id>` with ` (leader)` for the leader. Empty in a
    /// replica's own status.json.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    pub nodes: BTreeMap<String, NodeStatus>,
}

/// The controller's store as the intent task last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// `local:<dir>` or `etcd:<urls>`.
    pub backend: String,
    /// `ok` or `unavailable`.
    pub state: String,
    /// Why it is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last store revision the intent was read at.
    pub revision: i64,
    /// Whether this replica leads (imports the intent directory, compacts).
    #[serde(default)]
    pub leader: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub connected: bool,
    pub connected_since: Option<String>,
    pub disconnected_at: Option<String>,
    pub peer: Option<String>,
    pub agent_version: String,
    /// `last_applied_version` from the agent's Hello.
    pub hello_version: u64,
    /// The version of the last Update sent (or the agent's, when none was needed).
    pub sent_version: u64,
    /// The last version the agent ACKed.
    pub applied_version: u64,
    /// A NACK that no later ACK has cleared: the next update will be a snapshot.
    pub nack_pending: bool,
    pub last_nack: Option<NackRecord>,
    /// The last thing that went wrong with this node's session.
    pub last_error: Option<String>,
    /// The agent's last Status message that was within bounds.
    pub agent_status: Option<AgentStatus>,
    /// Why the agent's last Status was refused (it is also `last_error` until
    /// something else goes wrong); cleared by the next good one.
    #[serde(default)]
    pub refused_status: Option<String>,
    /// How many workloads this node reported are in the intent in force. They
    /// stay when the node disconnects (its pods still exist).
    #[serde(default)]
    pub reported_workloads: usize,
    /// Why the other reported workloads are not (`Workload/x: field: message`).
    #[serde(default)]
    pub reported_errors: Vec<String>,
    /// How many of the node's health verdicts do not count: backends it does
    /// not host (see `authz`).
    #[serde(default)]
    pub refused_health: usize,
    /// A few of them, as `vpc/ip`.
    #[serde(default)]
    pub refused_health_examples: Vec<String>,
}

/// What became of one node's reported workloads (see `effective`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedSummary {
    pub workloads: usize,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NackRecord {
    pub version: u64,
    pub at: String,
    /// `Kind/name: field: message` for each error.
    pub errors: Vec<String>,
}

/// The current time in RFC 3339, for status fields.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Shared, mutable status with change notification.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    doc: Mutex<StatusDoc>,
    /// Bumped on every change, for the writers (the file's, the store's).
    generation: watch::Sender<u64>,
    path: PathBuf,
}

impl StatusHandle {
    pub fn new(state_dir: &Path) -> Self {
        let doc = StatusDoc {
            controller_pid: std::process::id(),
            ..StatusDoc::default()
        };
        StatusHandle {
            inner: Arc::new(Shared {
                doc: Mutex::new(doc),
                generation: watch::channel(0).0,
                path: state_dir.join(STATUS_FILE),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StatusDoc> {
        // A panic while holding the lock leaves a usable document.
        self.inner.doc.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn update<R>(&self, f: impl FnOnce(&mut StatusDoc) -> R) -> R {
        let r = f(&mut self.lock());
        self.inner.generation.send_modify(|g| *g += 1);
        r
    }

    /// Changes whenever the document does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    pub fn update_node<R>(&self, node: &str, f: impl FnOnce(&mut NodeStatus) -> R) -> R {
        self.update(|d| f(d.nodes.entry(node.to_string()).or_default()))
    }

    pub fn snapshot(&self) -> StatusDoc {
        self.lock().clone()
    }

    /// The node's count and examples of health verdicts that do not count.
    pub fn refused_health(&self, node: &str) -> Option<(usize, Vec<String>)> {
        self.lock()
            .nodes
            .get(node)
            .map(|n| (n.refused_health, n.refused_health_examples.clone()))
    }

    pub fn nack_pending(&self, node: &str) -> bool {
        self.lock().nodes.get(node).is_some_and(|n| n.nack_pending)
    }

    /// Records the outcome of a load of the intent directory.
    pub fn record_reload(&self, version: u64, errors: &[IntentError]) {
        self.update(|d| {
            d.intent_version = version;
            d.last_reload = Some(now_rfc3339());
            d.last_reload_ok = errors.is_empty();
            d.intent_errors = errors.to_vec();
            d.intent_error_lines = errors.iter().map(|e| e.to_string()).collect();
        });
    }

    /// Records the store's state: `error` is `None` when it answered.
    pub fn record_store(&self, backend: &str, revision: i64, error: Option<String>) {
        self.update(|d| {
            d.store.backend = backend.to_string();
            if revision > 0 {
                d.store.revision = revision;
            }
            d.store.state = if error.is_none() { "ok" } else { "unavailable" }.into();
            d.store.error = error;
        });
    }

    /// Records whether this replica leads.
    pub fn record_leader(&self, leader: bool) {
        self.update(|d| d.store.leader = leader);
    }

    /// The intent version in force, after a change that was not a reload.
    pub fn set_intent_version(&self, version: u64) {
        self.update(|d| d.intent_version = version);
    }

    /// Records what became of every node's reported workloads; nodes not in
    /// `nodes` have none.
    pub fn record_reported(&self, nodes: &BTreeMap<String, ReportedSummary>) {
        self.update(|d| {
            for (name, n) in d.nodes.iter_mut() {
                if !nodes.contains_key(name) {
                    n.reported_workloads = 0;
                    n.reported_errors.clear();
                }
            }
            for (name, r) in nodes {
                let n = d.nodes.entry(name.clone()).or_default();
                n.reported_workloads = r.workloads;
                n.reported_errors = r.errors.clone();
            }
        });
    }

    /// Records a Status from `node`'s agent: it replaces the previous one if it
    /// is within bounds (`agentstatus::check`). Otherwise the previous one
    /// stays, the node's `last_error` says why, and the error is returned (for
    /// the log). A good Status clears an error a refused one left.
    pub fn record_agent_status(&self, node: &str, s: pb::Status) -> Result<(), AgentStatusError> {
        match AgentStatus::from_proto(s, now_rfc3339()) {
            Ok(agent) => {
                self.update_node(node, |n| {
                    if let Some(refused) = n.refused_status.take() {
                        if n.last_error.as_ref() == Some(&refused) {
                            n.last_error = None;
                        }
                    }
                    n.agent_status = Some(agent);
                });
                Ok(())
            }
            Err(e) => {
                let text = e.to_string();
                self.update_node(node, |n| {
                    n.last_error = Some(text.clone());
                    n.refused_status = Some(text);
                });
                Err(e)
            }
        }
    }

    /// Writes the document now.
    pub fn write_now(&self) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(&self.snapshot()).expect("status serializes");
        bytes.push(b'\n');
        write_atomic(&self.inner.path, &bytes, PUBLIC_MODE)
    }

    /// Writes the document after each burst of changes until `shutdown`, then
    /// once more.
    pub async fn run_writer(self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.subscribe();
        // A change made before this task first ran is written too.
        changes.mark_changed();
        loop {
            tokio::select! {
                _ = changes.changed() => {}
                _ = shutdown_requested(&mut shutdown) => break,
            }
            changes.borrow_and_update();
            tokio::time::sleep(DEBOUNCE).await;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.write_now()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot write {}", self.inner.path.display())
                }
                Err(e) => tracing::warn!(error = %e, "status writer task failed"),
            }
        }
        if let Err(e) = self.write_now() {
            tracing::warn!(error = %e, "cannot write {}", self.inner.path.display());
        }
    }
}

/// Reads a status file written by a controller.
pub fn read_status(state_dir: &Path) -> std::io::Result<StatusDoc> {
    let bytes = std::fs::read(state_dir.join(STATUS_FILE))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn writer_persists_changes_and_flushes_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let h = StatusHandle::new(dir.path());
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(h.clone().run_writer(rx));
        h.update_node("dpu-1", |n| n.applied_version = 7);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(d) = read_status(dir.path()) {
                if d.nodes.get("dpu-1").map(|n| n.applied_version) == Some(7) {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "status was not written"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        h.record_reload(3, &[]);
        tx.send(true).unwrap();
        task.await.unwrap();
        let d = read_status(dir.path()).unwrap();
        assert_eq!(d.intent_version, 3);
        assert!(d.last_reload_ok);
        assert_eq!(d.controller_pid, std::process::id());
    }
}
