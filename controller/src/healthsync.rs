//! Health verdicts through the store, so that every replica counts every
//! node's claim: a backend a node calls unhealthy on one replica is taken out
//! on agents connected to the others.
//!
//! A session's claim is counted at once by its own replica (`Hub`), and this
//! task writes it to `health/<node>` (a revoked node's is deleted). The task
//! follows `health/` (`kv::follow`: a listing, then a watch; a compacted or
//! failed watch lists again, so a delete in the gap is seen) and counts each
//! claim it sees on this replica too (the same claim again changes nothing).
//! While the store is down, claims made here still count here, and are
//! written once it is back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::hub::Hub;
use crate::kv::follow::{Followed, Follower};
use crate::kv::{KvError, Listing, Store, Txn};
use crate::shutdown::shutdown_requested;
use crate::verdicts::{claim_from_value, claim_value, Claim, PREFIX};

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Counts a claim read from the store, unless its node is revoked here.
fn count(hub: &Hub, node: &str, value: Option<&str>) {
    if hub.is_revoked(node) {
        return;
    }
    let claim = match value {
        None => Claim::new(),
        Some(v) => match claim_from_value(node, v) {
            Ok(c) => c,
            Err(e) => return tracing::warn!("ignoring a health claim: {e}"),
        },
    };
    hub.count_claim(node, claim);
}

/// Counts every claim of a listing, and forgets the nodes that have none any
/// more.
fn resync(hub: &Hub, listing: &Listing, known: &mut Vec<String>) {
    let mut now = Vec::new();
    for e in &listing.entries {
        let Some(node) = e.key.strip_prefix(PREFIX) else {
            continue;
        };
        count(hub, node, Some(&e.value));
        now.push(node.to_string());
    }
    for gone in known.iter().filter(|n| !now.contains(n)) {
        count(hub, gone, None);
    }
    *known = now;
}

async fn write(store: &Store, pending: &BTreeMap<String, Claim>) -> Result<(), KvError> {
    let mut txn = Txn::new();
    for (node, claim) in pending {
        let key = format!("{PREFIX}{node}");
        txn = if claim.is_empty() {
            txn.delete(key)
        } else {
            txn.put(key, claim_value(claim))
        };
    }
    store.txn(txn).await.map(|_| ())
}

pub async fn run(store: Store, hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let inbox = hub.claims_out();
    let mut unsent: BTreeMap<String, Claim> = BTreeMap::new();
    let mut known: Vec<String> = Vec::new();
    let mut follower = Follower::new(store.clone(), PREFIX, "the health verdicts", None);
    // When to try writing unsent claims again (the store did not answer).
    let mut write_at: Option<tokio::time::Instant> = None;
    let mut wait = RETRY_MIN;
    loop {
        tokio::select! {
            _ = inbox.arrived() => {}
            followed = follower.next() => match followed {
                Followed::Listing(l) => resync(&hub, &l, &mut known),
                Followed::Events(events) => {
                    for e in events {
                        if let Some(node) = e.key.strip_prefix(PREFIX) {
                            count(&hub, node, e.value.as_deref());
                            if e.value.is_some() {
                                if !known.iter().any(|k| k == node) {
                                    known.push(node.to_string());
                                }
                            } else {
                                known.retain(|k| k != node);
                            }
                        }
                    }
                }
            },
            _ = async {
                match write_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => write_at = None,
            _ = shutdown_requested(&mut shutdown) => return,
        }
        unsent.extend(inbox.take());
        if !unsent.is_empty() && write_at.is_none() {
            match write(&store, &unsent).await {
                Ok(()) => {
                    unsent.clear();
                    wait = RETRY_MIN;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write health verdicts to the store; they count here, and are written when it answers");
                    write_at = Some(tokio::time::Instant::now() + wait);
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
    }
}
