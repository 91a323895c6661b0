//! Each replica's status in the store, so that `dpu-controller status --etcd`
//! shows the whole control plane from any machine that can reach etcd.
//!
//! Keys, per replica (its id: `<server name> <listen address>`):
//! - `status/<replica>/.controller`: the replica's document without its nodes
//!   (version, reload, store, leader);
//! - `status/<replica>/<node>`: each node as that replica sees it.
//!
//! A node that moved between replicas appears under both; the reader takes
//! the entry of the replica it is connected to, else the latest. Writes are
//! at most every [`EVERY`], and only of what changed since the last write.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;

use crate::kv::{KvError, Store, Txn};
use crate::shutdown::shutdown_requested;
use crate::status::{NodeStatus, StatusDoc, StatusHandle};

pub const PREFIX: &str = "status/";
const CONTROLLER: &str = ".controller";
/// At most one write of a replica's status this often.
pub const EVERY: Duration = Duration::from_secs(1);

pub async fn run(
    store: Store,
    status: StatusHandle,
    replica: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = status.subscribe();
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tokio::select! {
            c = changes.changed() => if c.is_err() { return },
            _ = shutdown_requested(&mut shutdown) => return,
        }
        tokio::time::sleep(EVERY).await;
        changes.borrow_and_update();
        let doc = status.snapshot();
        if let Err(e) = write(&store, &replica, &doc, &mut written).await {
            tracing::debug!(error = %e, "cannot write the status to the store; next change");
        }
    }
}

async fn write(
    store: &Store,
    replica: &str,
    doc: &StatusDoc,
    written: &mut BTreeMap<String, String>,
) -> Result<(), KvError> {
    let mut wanted: BTreeMap<String, String> = doc
        .nodes
        .iter()
        .map(|(n, s)| (n.clone(), serde_json::to_string(s).expect("serializes")))
        .collect();
    let mut top = doc.clone();
    top.nodes.clear();
    wanted.insert(
        CONTROLLER.into(),
        serde_json::to_string(&top).expect("serializes"),
    );
    let changed: Vec<(&String, &String)> = wanted
        .iter()
        .filter(|(k, v)| written.get(*k) != Some(v))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    // etcd takes 128 writes per transaction by default: a few at a time.
    for chunk in changed.chunks(100) {
        let mut txn = Txn::new();
        for (k, v) in chunk {
            txn = txn.put(format!("{PREFIX}{replica}/{k}"), (*v).clone());
        }
        store.txn(txn).await?;
        for (k, v) in chunk {
            written.insert((*k).clone(), (*v).clone());
        }
    }
    Ok(())
}

/// The control plane's status from the store: the leader's document (or
/// any replica's) with every node, each as the replica it is connected to
/// sees it, else as the latest replica saw it.
pub async fn read(store: &Store) -> Result<StatusDoc, KvError> {
    let listing = store.list(PREFIX).await?;
    let mut tops: BTreeMap<String, StatusDoc> = BTreeMap::new();
    let mut nodes: BTreeMap<String, Vec<NodeStatus>> = BTreeMap::new();
    for e in listing.entries {
        let Some((replica, key)) = e.key.strip_prefix(PREFIX).and_then(|r| r.split_once('/'))
        else {
            continue;
        };
        if key == CONTROLLER {
            match serde_json::from_str::<StatusDoc>(&e.value) {
                Ok(d) => {
                    tops.insert(replica.to_string(), d);
                }
                Err(err) => tracing::warn!("ignoring store key {}: {err}", e.key),
            }
        } else {
            match serde_json::from_str::<NodeStatus>(&e.value) {
                Ok(n) => nodes.entry(key.to_string()).or_default().push(n),
                Err(err) => tracing::warn!("ignoring store key {}: {err}", e.key),
            }
        }
    }
    let mut doc = tops
        .values()
        .find(|d| d.store.leader)
        .or_else(|| tops.values().next())
        .cloned()
        .unwrap_or_default();
    doc.replicas = tops
        .iter()
        .map(|(id, d)| {
            if d.store.leader {
                format!("{id} (leader)")
            } else {
                id.clone()
            }
        })
        .collect();
    doc.nodes = nodes
        .into_iter()
        .map(|(node, mut seen)| {
            // Connected first, then the latest event.
            seen.sort_by_key(|n| {
                (
                    n.connected,
                    n.connected_since.clone().max(n.disconnected_at.clone()),
                )
            });
            (node, seen.pop().expect("at least one"))
        })
        .collect();
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::LocalStore;

    #[tokio::test]
    async fn the_reader_takes_the_leader_s_document_and_each_node_where_it_is_connected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(LocalStore::open(dir.path()).unwrap());
        let mut a = StatusDoc {
            intent_version: 9,
            ..StatusDoc::default()
        };
        a.store.leader = true;
        a.nodes.insert(
            "dpu-1".into(),
            NodeStatus {
                connected: false,
                disconnected_at: Some("2026-12-07T10:00:00Z".into()),
                ..NodeStatus::default()
            },
        );
        let mut b = StatusDoc {
            intent_version: 9,
            ..StatusDoc::default()
        };
        b.nodes.insert(
            "dpu-1".into(),
            NodeStatus {
                connected: true,
                connected_since: Some("2026-12-07T09:59:00Z".into()),
                applied_version: 9,
                ..NodeStatus::default()
            },
        );
        let mut written = BTreeMap::new();
        write(&store, "a", &a, &mut written).await.unwrap();
        let mut written_b = BTreeMap::new();
        write(&store, "b", &b, &mut written_b).await.unwrap();
        // Nothing changed: nothing written.
        let rev = store.list("").await.unwrap().revision;
        write(&store, "a", &a, &mut written).await.unwrap();
        assert_eq!(store.list("").await.unwrap().revision, rev);

        let doc = read(&store).await.unwrap();
        assert_eq!(doc.replicas, ["a (leader)", "b"]);
        assert!(doc.store.leader);
        assert!(doc.nodes["dpu-1"].connected);
        assert_eq!(doc.nodes["dpu-1"].applied_version, 9);
    }
}
