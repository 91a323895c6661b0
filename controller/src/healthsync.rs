//! Health verdicts through the store, so that every replica counts every
//! node's claim: a backend a node calls unhealthy on one replica is taken out
//! on agents connected to the others.
//!
//! A session's claim is counted at once by its own replica (`Hub`), and this
//! task writes it to `health/<node>` (a revoked node's is deleted). The task
//! watches `health/` and counts each claim it sees on this replica too (the
//! same claim again changes nothing). It lists first and watches from the
//! listing's revision; a compacted watch, or a failed one, lists again (so a
//! delete in the gap is seen) after a backoff. While the store is down, claims
//! made here still count here, and are written once it is back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::hub::Hub;
use crate::kv::{KvError, Store, Txn, Watch, WatchItem};
use crate::shutdown::shutdown_requested;
use crate::verdicts::{claim_from_value, claim_value, Claim, PREFIX};

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

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

/// Lists `health/`, counts every claim (and forgets the nodes that have none
/// any more), and watches from there.
async fn resync(store: &Store, hub: &Hub, known: &mut Vec<String>) -> Result<Watch, KvError> {
    let listing = store.list(PREFIX).await?;
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
    store.watch(PREFIX, listing.revision + 1).await
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
    let mut watch: Option<Watch> = None;
    let mut wait = RETRY_MIN;
    let mut retry_at = Some(tokio::time::Instant::now());
    loop {
        tokio::select! {
            _ = inbox.arrived() => {}
            item = async {
                match watch.as_mut() {
                    Some(w) => w.items.recv().await,
                    None => std::future::pending().await,
                }
            } => match item {
                Some(Ok(WatchItem::Events(events))) => {
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
                Some(Ok(WatchItem::Progress(_))) => {}
                Some(Ok(WatchItem::Compacted(_))) => {
                    watch = None;
                    retry_at = Some(tokio::time::Instant::now());
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the health watch failed; retrying");
                    watch = None;
                    retry_at = Some(tokio::time::Instant::now() + wait);
                    wait = (wait * 2).min(RETRY_MAX);
                }
                None => {
                    watch = None;
                    retry_at = Some(tokio::time::Instant::now() + wait);
                    wait = (wait * 2).min(RETRY_MAX);
                }
            },
            _ = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                match resync(&store, &hub, &mut known).await {
                    Ok(w) => {
                        watch = Some(w);
                        retry_at = None;
                        wait = RETRY_MIN;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the health verdicts from the store; retrying");
                        retry_at = Some(tokio::time::Instant::now() + wait);
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                }
            }
            _ = shutdown_requested(&mut shutdown) => return,
        }
        unsent.extend(inbox.take());
        if !unsent.is_empty() {
            match write(&store, &unsent).await {
                Ok(()) => unsent.clear(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write health verdicts to the store; they count here, and are written when it answers");
                    if retry_at.is_none() && watch.is_none() {
                        retry_at = Some(tokio::time::Instant::now() + wait);
                    }
                }
            }
        }
    }
}
