//! Ends the live session of a node that gets revoked, and drops what it said.
//!
//! `node revoke` is another process; it only rewrites `nodes/<node>.json`. This
//! task looks at the records of the nodes with a live session, or with reports
//! in force (pods or health verdicts, which outlive a session), every
//! `POLL_INTERVAL`, and reads one again only when its file changed (a new inode,
//! since every write is a rename), so the cost is one `stat` per such node per
//! poll. A revoked node's sessions end and its reports are dropped
//! (`Hub::revoke_node`); a revoked certificate (serial) ends only its session.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::Status;

use crate::hub::{Hub, LiveSession};
use crate::shutdown::shutdown_requested;

/// How often the records of connected nodes are looked at.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What identifies one version of a record file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime_nsec: i64,
    mtime: i64,
    len: u64,
}

pub async fn watch_revocations(hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // node → the record version last checked, with the sessions it was checked for.
    let mut seen: HashMap<String, (Option<Stamp>, Vec<u64>)> = HashMap::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown_requested(&mut shutdown) => return,
        }
        let hub2 = hub.clone();
        let prev = std::mem::take(&mut seen);
        match tokio::task::spawn_blocking(move || check(&hub2, prev)).await {
            Ok(next) => seen = next,
            Err(e) => {
                tracing::error!("the revocation watcher failed: {e}; live sessions of revoked nodes are no longer ended");
                return;
            }
        }
    }
}

/// One poll: every live session whose record changed (or that is new) is
/// checked against it.
fn check(
    hub: &Hub,
    mut seen: HashMap<String, (Option<Stamp>, Vec<u64>)>,
) -> HashMap<String, (Option<Stamp>, Vec<u64>)> {
    let mut by_node: HashMap<String, Vec<LiveSession>> = HashMap::new();
    for s in hub.live_sessions() {
        by_node.entry(s.node.clone()).or_default().push(s);
    }
    for node in hub.reporting_nodes() {
        by_node.entry(node).or_default();
    }
    seen.retain(|node, _| by_node.contains_key(node));
    for (node, sessions) in by_node {
        let path = hub.nodes().path(&node);
        let stamp = std::fs::metadata(&path).ok().map(|m| Stamp {
            ino: m.ino(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            len: m.len(),
        });
        let mut ids: Vec<u64> = sessions.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        if seen.get(&node) == Some(&(stamp, ids.clone())) {
            continue;
        }
        let record = match hub.nodes().load(&node) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(node, "cannot read the node record: {e}");
                continue; // looked at again next time
            }
        };
        seen.insert(node.clone(), (stamp, ids));
        let Some(record) = record else { continue };
        if record.revoked {
            hub.revoke_node(&node);
        }
        for s in sessions {
            if let Err(revoked) = record.admits(&s.serial) {
                tracing::warn!(node, session = s.id, "ending the session: {revoked}");
                hub.end_session(&node, s.id, Status::permission_denied(revoked.to_string()));
            }
        }
    }
    seen
}
