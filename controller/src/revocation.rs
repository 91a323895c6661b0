//! Ends the live sessions of a node that gets revoked, on every replica, and
//! drops what it said.
//!
//! `node revoke` may run anywhere; it only rewrites `nodes/<node>` in the
//! store. Every replica runs this task: it follows `nodes/` (a listing, then a
//! watch; see `kv::follow`) and hands each record to the hub
//! (`Hub::set_record`), which ends the sessions the record no longer admits
//! and drops a revoked node's reports. A compacted or failed watch lists again,
//! and so does a periodic re-list, so a change is never missed. While the
//! store is down, the records last read still decide who is admitted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::hub::Hub;
use crate::kv::follow::{Followed, Follower};
use crate::kv::{Entry, KvError, Revision, Store};
use crate::nodes::{parse, Held, NodeRecord, PREFIX};
use crate::shutdown::shutdown_requested;

/// Every record is read again this often, whatever the watch said.
pub const RELIST_EVERY: Duration = Duration::from_secs(60);

/// A record as the hub keeps it: one that cannot be read is kept as why (it
/// refuses new sessions of its node) and logged.
fn read(key: &str, value: &str) -> Result<NodeRecord, String> {
    parse(key, value).map_err(|e| {
        tracing::error!("{e}; sessions of this node are refused until it is fixed");
        e.to_string()
    })
}

fn held(entries: &[Entry]) -> Vec<Held> {
    entries
        .iter()
        .filter_map(|e| {
            let node = e.key.strip_prefix(PREFIX)?;
            Some((node.to_string(), read(&e.key, &e.value)))
        })
        .collect()
}

/// Every node record in the store, and the revision they were read at: what
/// the hub starts with.
pub async fn load(store: &Store) -> Result<(Revision, Vec<Held>), KvError> {
    let listing = store.list(PREFIX).await?;
    Ok((listing.revision, held(&listing.entries)))
}

pub async fn run(store: Store, hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let mut follower = Follower::new(store, PREFIX, "the node records", Some(RELIST_EVERY));
    loop {
        let followed = tokio::select! {
            f = follower.next() => f,
            _ = shutdown_requested(&mut shutdown) => return,
        };
        match followed {
            Followed::Listing(l) => hub.set_records(held(&l.entries)),
            Followed::Events(events) => {
                for e in events {
                    if let Some(node) = e.key.strip_prefix(PREFIX) {
                        let record = e.value.as_deref().map(|v| read(&e.key, v));
                        hub.set_record(node, record);
                    }
                }
            }
        }
    }
}
