//! The one-time move of bootstrap tokens and node records from the files of a
//! controller before the store (`<state-dir>/tokens/`, `<state-dir>/nodes/`)
//! into the store (`tokens/<id>`, `nodes/<node>`).
//!
//! At start, before serving. A record the store already has is left as the
//! store has it (another replica, or an earlier start, moved it first). Once
//! every record is in, the directories are renamed to `tokens.imported/` and
//! `nodes.imported/`, so a token deleted later is not brought back by the next
//! start. A claimed token (an enrollment a crash cut short) is settled as the
//! old controller settled it: used if its node's record names it.

use std::collections::BTreeSet;
use std::path::Path;

use crate::kv::{Cmp, KvError, Store, Txn};
use crate::{nodes, tokens};

/// Writes per transaction: below etcd's default `--max-txn-ops` (128), one
/// comparison and one put per record.
const CHUNK: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("cannot move the old token and node files into the store: {0}")]
    Files(String),
}

/// The node and token keys the store holds.
async fn stored_keys(store: &Store) -> Result<BTreeSet<String>, MigrateError> {
    let mut present = BTreeSet::new();
    for prefix in [nodes::PREFIX, tokens::PREFIX] {
        present.extend(store.list(prefix).await?.entries.into_iter().map(|e| e.key));
    }
    Ok(present)
}

/// Moves what there is; nothing to do when neither directory exists.
pub async fn enrollment_files(store: &Store, state_dir: &Path) -> Result<(), MigrateError> {
    let files = |e: &dyn std::fmt::Display| MigrateError::Files(e.to_string());
    let node_records = nodes::read_files(state_dir).map_err(|e| files(&e))?;
    let token_records = tokens::read_files(state_dir, |node| {
        node_records
            .iter()
            .find(|r| r.node == node)
            .and_then(|r| r.token_id.clone())
    })
    .map_err(|e| files(&e))?;
    let dirs: Vec<_> = ["tokens", "nodes"]
        .iter()
        .map(|d| state_dir.join(d))
        .filter(|d| d.is_dir())
        .collect();
    if dirs.is_empty() {
        return Ok(());
    }
    let mut items: Vec<(String, String)> = node_records
        .iter()
        .map(|r| (nodes::key(&r.node), r.stored()))
        .collect();
    items.extend(
        token_records
            .iter()
            .map(|r| (tokens::key(&r.id), r.stored())),
    );
    let mut moved = 0;
    let mut present = stored_keys(store).await?;
    for chunk in items.chunks(CHUNK) {
        // Twice at most: a failed transaction means someone wrote one of
        // these keys meanwhile; the second round reads the store again and
        // skips what exists.
        for attempt in 0..2 {
            if attempt > 0 {
                present = stored_keys(store).await?;
            }
            let mut txn = Txn::new();
            let mut n = 0;
            for (k, v) in chunk.iter().filter(|(k, _)| !present.contains(k)) {
                txn = txn.when(Cmp::CreateRevision(k.clone(), 0)).put(k, v);
                n += 1;
            }
            if n == 0 || store.txn(txn).await?.succeeded {
                moved += n;
                break;
            }
        }
    }
    for d in dirs {
        let mut to = d.with_extension("imported");
        if to.exists() {
            to = d.with_extension(format!("imported.{}", crate::timeutil::unix_now()));
        }
        std::fs::rename(&d, &to).map_err(|e| files(&format!("{}: {e}", d.display())))?;
    }
    tracing::info!(
        nodes = node_records.len(),
        tokens = token_records.len(),
        moved,
        "moved the token and node files into the store (the directories are now *.imported)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::{NodeRecord, NodeStore};
    use crate::tokens::{TokenRecord, TokenState, TokenStore};

    #[tokio::test]
    async fn files_move_once_and_the_store_keeps_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let store = Store::Local(crate::kv::LocalStore::open(&state.join("store")).unwrap());
        let mut n1 = NodeRecord::new("dpu-1", 5);
        n1.token_id = Some("00000000000000bb".into());
        std::fs::create_dir_all(state.join("nodes")).unwrap();
        std::fs::write(state.join("nodes/dpu-1.json"), n1.stored()).unwrap();
        // dpu-2 is in the store already, revoked: the older file does not win.
        std::fs::write(
            state.join("nodes/dpu-2.json"),
            NodeRecord::new("dpu-2", 5).stored(),
        )
        .unwrap();
        let mut revoked = NodeRecord::new("dpu-2", 5);
        revoked.revoke(6);
        store
            .txn(Txn::new().put(nodes::key("dpu-2"), revoked.stored()))
            .await
            .unwrap();
        let token = |id: &str, node: &str| TokenRecord {
            id: id.into(),
            node: node.into(),
            secret_sha256: "00".repeat(32),
            created_unix: 10,
            expires_unix: i64::MAX,
            used_unix: None,
        };
        std::fs::create_dir_all(state.join("tokens/claimed")).unwrap();
        let (t1, t2) = (
            token("00000000000000aa", "dpu-3"),
            token("00000000000000bb", "dpu-1"),
        );
        std::fs::write(state.join("tokens/00000000000000aa.json"), t1.stored()).unwrap();
        std::fs::write(
            state.join("tokens/claimed/00000000000000bb.json"),
            t2.stored(),
        )
        .unwrap();

        enrollment_files(&store, state).await.unwrap();
        let nodes = NodeStore::new(store.clone());
        assert_eq!(nodes.load("dpu-1").await.unwrap(), Some(n1));
        assert_eq!(nodes.load("dpu-2").await.unwrap(), Some(revoked));
        let list = TokenStore::new(store.clone()).list(100).await.unwrap();
        let states: Vec<_> = list.iter().map(|(r, s)| (r.id.as_str(), *s)).collect();
        assert_eq!(
            states,
            [
                ("00000000000000aa", TokenState::Unused),
                ("00000000000000bb", TokenState::Used)
            ]
        );
        assert!(!state.join("tokens").exists() && state.join("tokens.imported").is_dir());
        assert!(state.join("nodes.imported/dpu-1.json").is_file());

        // A token deleted afterwards stays deleted at the next start.
        TokenStore::new(store.clone())
            .delete("00000000000000aa")
            .await
            .unwrap();
        enrollment_files(&store, state).await.unwrap();
        assert_eq!(TokenStore::new(store).list(100).await.unwrap().len(), 1);
    }
}
