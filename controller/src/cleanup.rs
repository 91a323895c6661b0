//! The leader's clean-up of bootstrap tokens and node records.
//!
//! - A token that was used, or that expired unused, is deleted
//!   [`TOKEN_RETENTION`] after that (`token list` shows it until then).
//! - A node record drops the entries of certificates that have expired (the
//!   TLS handshake refuses those anyway). The record itself stays: it holds
//!   whether the node is revoked.
//!
//! Each write is fenced with the leader's election key and holds only if the
//! key is unchanged since it was read, so a record an enrollment or a
//! revocation just changed is left for the next round.

use std::time::Duration;

use crate::kv::{Cmp, KvError, Store, Txn};
use crate::nodes::{self, NodeRecord};
use crate::tokens::{self, TokenRecord};

/// How long a used or expired token is kept.
pub const TOKEN_RETENTION: Duration = Duration::from_secs(7 * 86_400);
/// How often the leader cleans up.
pub const EVERY: Duration = Duration::from_secs(3600);
/// Writes per transaction (etcd's default `--max-txn-ops` is 128; each write
/// has its comparison, and the fence).
const CHUNK: usize = 60;

/// What one round removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    pub tokens: usize,
    pub records: usize,
}

/// One round at `now`, under the leader's `fence`.
pub async fn run_once(store: &Store, fence: &Cmp, now: i64) -> Result<Cleaned, KvError> {
    let retention = i64::try_from(TOKEN_RETENTION.as_secs()).unwrap_or(i64::MAX);
    let mut writes: Vec<(Cmp, Option<String>, String)> = Vec::new();
    let mut cleaned = Cleaned::default();
    for e in store.list(tokens::PREFIX).await?.entries {
        let Ok(r) = serde_json::from_str::<TokenRecord>(&e.value) else {
            continue; // `token list` names it; not ours to guess about
        };
        let done = r.used_unix.unwrap_or(r.expires_unix);
        if done.saturating_add(retention) <= now {
            writes.push((Cmp::ModRevision(e.key.clone(), e.mod_revision), None, e.key));
            cleaned.tokens += 1;
        }
    }
    for e in store.list(nodes::PREFIX).await?.entries {
        let Ok(r) = nodes::parse(&e.key, &e.value) else {
            continue;
        };
        let mut pruned: NodeRecord = r.clone();
        pruned.prune(now);
        if pruned != r {
            let cmp = Cmp::ModRevision(e.key.clone(), e.mod_revision);
            writes.push((cmp, Some(pruned.stored()), e.key));
            cleaned.records += 1;
        }
    }
    for chunk in writes.chunks(CHUNK) {
        let mut txn = Txn::new().when(fence.clone());
        for (cmp, value, key) in chunk {
            txn = txn.when(cmp.clone());
            txn = match value {
                Some(v) => txn.put(key.clone(), v.clone()),
                None => txn.delete(key.clone()),
            };
        }
        if !store.txn(txn).await?.succeeded {
            // Leadership lost, or a key changed: the next round sees it again.
            tracing::info!("token and record clean-up: a batch was left for the next round");
        }
    }
    Ok(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::CertEntry;
    use crate::tokens::TokenStore;

    #[tokio::test]
    async fn old_tokens_and_expired_certificate_entries_go_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(crate::kv::LocalStore::open(dir.path()).unwrap());
        let tokens = TokenStore::new(store.clone());
        let day = 86_400;
        let (old, _) = tokens
            .create("a", Duration::from_secs(3600), 0)
            .await
            .unwrap();
        let (fresh, _) = tokens
            .create("b", Duration::from_secs(3600), 8 * day)
            .await
            .unwrap();
        let mut r = NodeRecord::new("n1", 0);
        r.add_cert(
            CertEntry {
                serial: "aa".into(),
                not_after_unix: day,
            },
            0,
        )
        .unwrap();
        r.add_cert(
            CertEntry {
                serial: "bb".into(),
                not_after_unix: 100 * day,
            },
            0,
        )
        .unwrap();
        r.revoke(0);
        store
            .txn(Txn::new().put(nodes::key("n1"), r.stored()))
            .await
            .unwrap();
        // A fence that does not hold: nothing is written.
        let lost = Cmp::CreateRevision("election/x".into(), 12345);
        let now = 8 * day + 10;
        run_once(&store, &lost, now).await.unwrap();
        assert_eq!(tokens.list(now).await.unwrap().len(), 2);

        let fence = Cmp::CreateRevision("election/x".into(), 0);
        let cleaned = run_once(&store, &fence, now).await.unwrap();
        assert_eq!(
            cleaned,
            Cleaned {
                tokens: 1,
                records: 1
            }
        );
        let left: Vec<String> = tokens
            .list(now)
            .await
            .unwrap()
            .into_iter()
            .map(|(r, _)| r.id)
            .collect();
        assert_eq!(left, [fresh.id]);
        assert_ne!(old.id, left[0]);
        let (_, e) = store.get(&nodes::key("n1")).await.unwrap();
        let after = nodes::parse(&nodes::key("n1"), &e.unwrap().value).unwrap();
        assert!(after.revoked, "the record stays, revoked");
        let serials: Vec<&str> = after
            .revoked_serials
            .iter()
            .map(|c| c.serial.as_str())
            .collect();
        assert_eq!(serials, ["bb"]);
        assert_eq!(
            run_once(&store, &fence, now).await.unwrap(),
            Cleaned::default()
        );
    }
}
