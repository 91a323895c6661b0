//! The pods agents report (`AgentMessage::LocalWorkloads`): checking a reported
//! set, the per-node sets persisted under the state directory, and the inbox that
//! carries new sets from the sessions to the intent task.
//!
//! A set is always the FULL set of one node, so a new one replaces the node's
//! previous one. Each entry is checked on its own (`check_report`): the model's
//! field rules, the reporting node, kind Pod. Bad entries are dropped with a
//! reason and the good ones kept. How they merge with the manifests is `merge`'s
//! business. A node that disconnects keeps its set (fail-static: its pods still
//! exist and still forward).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dpu_model::{object_from_proto, Object, Workload, WorkloadKind};
use dpu_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::escape::escape_peer;
use crate::fsutil::{write_atomic, PUBLIC_MODE};
use crate::store::StoreError;

/// Where reported sets were kept before the store (read once, to move them in).
pub const REPORTED_FILE: &str = "reported-workloads.json";
/// Each node's set is the store key `reported/<node>`.
pub const PREFIX: &str = "reported/";
/// The most workloads one node may report; the rest of a larger set is dropped.
pub const MAX_REPORTED_PER_NODE: usize = 4096;
/// The most reasons kept per node for dropped workloads (status stays small).
pub const MAX_REPORTED_ERRORS: usize = 100;
/// The longest reason kept (escaped).
pub const MAX_REPORTED_ERROR_LEN: usize = 512;

/// One node's reported workloads after the per-entry checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedSet {
    /// The valid entries: this node's Pods, unique names, sorted by name.
    pub workloads: Vec<Workload>,
    /// Why the other entries were dropped, one line each (`Workload/x: field: message`).
    pub errors: Vec<String>,
}

/// Checks a reported set from the agent of `node` (the node named by its
/// certificate). Every entry goes through `dpu_model::object_from_proto`; it must
/// be a Pod on `node`, and its name must not repeat within the set.
pub fn check_report(node: &str, reported: &[pb::Workload]) -> ReportedSet {
    let mut set = ReportedSet::default();
    let mut names = BTreeSet::new();
    for (i, w) in reported.iter().enumerate() {
        if set.workloads.len() >= MAX_REPORTED_PER_NODE {
            set.errors.push(format!(
                "workloads[{i}..{}]: dropped: a node may report at most {MAX_REPORTED_PER_NODE} workloads",
                reported.len()
            ));
            break;
        }
        let object = pb::Object {
            object: Some(pb::object::Object::Workload(w.clone())),
        };
        let w = match object_from_proto(&object) {
            Ok(Object::Workload(w)) => w,
            Ok(other) => {
                set.errors.push(format!("{}: not a Workload", other.key()));
                continue;
            }
            Err(e) => {
                set.errors.push(e.to_string());
                continue;
            }
        };
        if w.node != node {
            set.errors.push(format!(
                "Workload/{}: spec.node: node {} is not the reporting node {node}",
                w.name, w.node
            ));
        } else if w.kind != WorkloadKind::Pod {
            set.errors.push(format!(
                "Workload/{}: spec.kind: agents report Pods only, not {:?}",
                w.name, w.kind
            ));
        } else if !names.insert(w.name.clone()) {
            set.errors.push(format!(
                "Workload/{}: metadata.name: reported twice in one set; the first is kept",
                w.name
            ));
        } else {
            set.workloads.push(w);
        }
    }
    set.workloads.sort_by(|a, b| a.name.cmp(&b.name));
    set.errors.truncate(MAX_REPORTED_ERRORS);
    // They name what the peer sent; they reach the log and the status.
    for e in &mut set.errors {
        *e = escape_peer(e, MAX_REPORTED_ERROR_LEN);
    }
    set
}

/// Drops sets older than the last one accepted in a session. The revision counts
/// per agent process, so a new session starts a new gate.
#[derive(Debug, Default)]
pub struct RevisionGate {
    last: Option<u64>,
}

impl RevisionGate {
    /// True if a set with `revision` is to be used (and remembered as the last).
    pub fn admit(&mut self, revision: u64) -> bool {
        if self.last.is_some_and(|last| revision < last) {
            return false;
        }
        self.last = Some(revision);
        true
    }
}

/// New sets from the sessions, waiting for the intent task. A later set from a
/// node replaces a waiting one (both are full sets). A revoked node's set is
/// replaced by an empty one (which forgets the node), and its later sets are
/// refused until a session is admitted for it again.
#[derive(Debug, Default)]
pub struct ReportInbox {
    pending: Mutex<BTreeMap<String, ReportedSet>>,
    arrived: Notify,
    /// Nodes revoked since their last admitted session.
    revoked: Mutex<BTreeSet<String>>,
    /// Nodes whose sets are in the intent task's store (for the revocation
    /// watcher), as of its last round.
    reporters: Mutex<BTreeSet<String>>,
}

impl ReportInbox {
    /// Queues `set` for the intent task; false (and nothing queued) if the node
    /// is revoked.
    pub fn submit(&self, node: &str, set: ReportedSet) -> bool {
        if self.is_revoked(node) {
            return false;
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_string(), set);
        self.arrived.notify_one();
        true
    }

    /// Forgets the node's reported pods (at the intent task's next round) and
    /// refuses its sets from now on.
    pub fn revoke(&self, node: &str) {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_string());
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_string(), ReportedSet::default());
        self.arrived.notify_one();
    }

    /// A session was admitted for the node: its sets count again.
    pub fn readmit(&self, node: &str) {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }

    pub fn is_revoked(&self, node: &str) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(node)
    }

    /// The intent task says which nodes have sets in force.
    pub fn set_reporters(&self, nodes: impl IntoIterator<Item = String>) {
        *self.reporters.lock().unwrap_or_else(|e| e.into_inner()) = nodes.into_iter().collect();
    }

    /// Whether `node` is one of [`ReportInbox::reporters`].
    pub fn is_reporter(&self, node: &str) -> bool {
        self.reporters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(node)
    }

    pub fn reporters(&self) -> BTreeSet<String> {
        self.reporters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything waiting, by node.
    pub fn take(&self) -> BTreeMap<String, ReportedSet> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves when a set was submitted since the last wake-up.
    pub async fn arrived(&self) {
        self.arrived.notified().await
    }
}

/// The reported sets of every node, as kept in `reported-workloads.json`.
#[derive(Debug)]
pub struct ReportedStore {
    path: PathBuf,
    sets: BTreeMap<String, ReportedSet>,
}

/// The file: node → its workloads (the node is implied, the kind is Pod) and the
/// reasons for entries it dropped.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredFile {
    nodes: BTreeMap<String, StoredSet>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredSet {
    workloads: Vec<StoredWorkload>,
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredWorkload {
    name: String,
    vpc: String,
    ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    port: String,
}

/// Makes `set` the node's set in `sets`; false if that is what it already was.
/// A node that reports nothing (and had nothing dropped) is forgotten.
pub fn replace_set(sets: &mut BTreeMap<String, ReportedSet>, node: &str, set: ReportedSet) -> bool {
    let empty = set.workloads.is_empty() && set.errors.is_empty();
    let before = sets.get(node);
    if before == Some(&set) || (empty && before.is_none()) {
        return false;
    }
    if empty {
        sets.remove(node);
    } else {
        sets.insert(node.to_string(), set);
    }
    true
}

/// The store value of a node's set: `{workloads: [...], errors: [...]}` (the
/// node is implied by the key, the kind is Pod).
pub fn stored_value(set: &ReportedSet) -> String {
    serde_json::to_string(&stored_set(set)).expect("a set serializes")
}

/// A node's set from its store value, each entry checked again as when it was
/// reported; entries that no longer pass are dropped with a warning.
pub fn from_stored_value(node: &str, value: &str) -> Result<ReportedSet, String> {
    let stored: StoredSet =
        serde_json::from_str(value).map_err(|e| format!("store key {PREFIX}{node}: {e}"))?;
    Ok(checked(node, stored, &format!("store key {PREFIX}{node}")))
}

fn stored_set(set: &ReportedSet) -> StoredSet {
    StoredSet {
        workloads: set
            .workloads
            .iter()
            .map(|w| StoredWorkload {
                name: w.name.clone(),
                vpc: w.vpc.clone(),
                ip: w.ip.to_string(),
                mac: w.mac.map(|m| m.to_string()),
                labels: w.labels.clone(),
                port: w.port.clone(),
            })
            .collect(),
        errors: set.errors.clone(),
    }
}

fn checked(node: &str, stored: StoredSet, from: &str) -> ReportedSet {
    let wire: Vec<pb::Workload> = stored
        .workloads
        .into_iter()
        .map(|w| pb::Workload {
            name: w.name,
            kind: pb::WorkloadKind::Pod as i32,
            vpc: w.vpc,
            ip: w.ip,
            ipv6: String::new(),
            mac: w.mac.unwrap_or_default(),
            labels: w.labels.into_iter().collect(),
            node: node.to_string(),
            port: w.port,
        })
        .collect();
    let mut set = check_report(node, &wire);
    for e in &set.errors {
        tracing::warn!(node, from, "ignoring a stored reported workload: {e}");
    }
    set.errors = stored.errors;
    set.errors.truncate(MAX_REPORTED_ERRORS);
    set
}

impl ReportedStore {
    /// Reads the file under `state_dir`. A missing file is an empty store; a
    /// corrupt one is logged and ignored (agents report again after Hello), and so
    /// is an entry that no longer passes the checks.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let path = state_dir.join(REPORTED_FILE);
        let file: StoredFile = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a corrupt reported-workloads file");
                StoredFile::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => StoredFile::default(),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let from = path.display().to_string();
        let sets = file
            .nodes
            .into_iter()
            .map(|(node, stored)| {
                let set = checked(&node, stored, &from);
                (node, set)
            })
            .collect();
        Ok(ReportedStore { path, sets })
    }

    pub fn sets(&self) -> &BTreeMap<String, ReportedSet> {
        &self.sets
    }

    /// Makes `set` the node's set; false if that is what it already was. A node
    /// that reports nothing (and had nothing dropped) is forgotten.
    pub fn replace(&mut self, node: &str, set: ReportedSet) -> bool {
        replace_set(&mut self.sets, node, set)
    }

    /// Writes the file (atomically).
    pub fn save(&self) -> Result<(), StoreError> {
        let file = StoredFile {
            nodes: self
                .sets
                .iter()
                .map(|(node, set)| (node.clone(), stored_set(set)))
                .collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).expect("the store serializes");
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes, PUBLIC_MODE).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, ip: &str, app: &str) -> pb::Workload {
        pb::Workload {
            name: name.into(),
            kind: pb::WorkloadKind::Pod as i32,
            vpc: "blue".into(),
            ip: ip.into(),
            ipv6: String::new(),
            mac: String::new(),
            labels: [("app".to_string(), app.to_string())].into(),
            node: node.into(),
            port: format!("{name}-eth0"),
        }
    }

    #[test]
    fn bad_entries_are_dropped_one_by_one() {
        let mut vm = pod("vm-1", "dpu-1", "10.1.1.41", "web");
        vm.kind = pb::WorkloadKind::Vm as i32;
        let set = check_report(
            "dpu-1",
            &[
                pod("b", "dpu-1", "10.1.1.31", "web"),
                pod("elsewhere", "dpu-2", "10.1.1.32", "web"),
                pod("bad-ip", "dpu-1", "10.1.1.300", "web"),
                vm,
                pod("a", "dpu-1", "10.1.1.30", "web"),
                pod("a", "dpu-1", "10.1.1.33", "web"),
                pod("Upper", "dpu-1", "10.1.1.34", "web"),
            ],
        );
        let names: Vec<_> = set.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "kept and sorted");
        assert_eq!(set.workloads[0].ip.to_string(), "10.1.1.30", "the first a");
        assert_eq!(set.errors.len(), 5, "{:#?}", set.errors);
        assert_eq!(
            set.errors[0],
            "Workload/elsewhere: spec.node: node dpu-2 is not the reporting node dpu-1"
        );
        assert!(
            set.errors[1].starts_with("Workload/bad-ip: spec.ip: "),
            "{:?}",
            set.errors
        );
        assert!(set.errors[2].contains("Pods only"), "{:?}", set.errors);
        assert!(set.errors[3].contains("reported twice"), "{:?}", set.errors);
        assert!(set.errors[4].contains("metadata.name"), "{:?}", set.errors);
    }

    #[test]
    fn stale_revisions_are_ignored_until_a_new_session() {
        let mut gate = RevisionGate::default();
        assert!(gate.admit(5));
        assert!(gate.admit(5), "the same revision again is fine");
        assert!(!gate.admit(4), "older than the last accepted");
        assert!(gate.admit(6));
        assert!(!gate.admit(5));
        // A new session (a restarted agent) counts from scratch.
        let mut gate = RevisionGate::default();
        assert!(gate.admit(1));
    }

    #[test]
    fn store_round_trips_and_forgets_empty_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ReportedStore::open(dir.path()).unwrap();
        assert!(s.sets().is_empty());
        let mut p = pod("a", "dpu-1", "10.1.1.30", "web");
        p.mac = "02:00:00:00:01:1e".into();
        let set = check_report("dpu-1", &[p, pod("x", "dpu-2", "10.1.1.31", "web")]);
        assert!(s.replace("dpu-1", set.clone()));
        assert!(!s.replace("dpu-1", set.clone()), "unchanged");
        assert!(!s.replace("dpu-9", ReportedSet::default()));
        s.save().unwrap();

        let s2 = ReportedStore::open(dir.path()).unwrap();
        assert_eq!(s2.sets().get("dpu-1"), Some(&set));
        let mut s2 = s2;
        assert!(s2.replace("dpu-1", ReportedSet::default()));
        assert!(s2.sets().is_empty());

        fs::write(dir.path().join(REPORTED_FILE), "{not json").unwrap();
        assert!(ReportedStore::open(dir.path()).unwrap().sets().is_empty());
    }
}
