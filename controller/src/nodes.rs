//! Node records: which certificates each node holds and whether it is revoked.
//!
//! The store keeps `nodes/<node>`, one record per node. The CLI (`issue
//! --node`, `node revoke`) and every replica (Enroll, Renew) change them; each
//! change is a read-modify-write whose transaction holds only if the record is
//! still the one read ([`NodeStore::modify`] reads again and retries when it
//! is not), so no change is lost between processes or replicas. Every replica
//! watches `nodes/` (`revocation`), so a revocation made anywhere ends the
//! node's sessions everywhere. The rules (revocation, re-admission, the bound
//! on live certificates) are pure methods of `NodeRecord`.
//!
//! Controllers before the store kept `<state-dir>/nodes/<node>.json`;
//! [`read_files`] reads them for the one-time move into the store.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::kv::{Cmp, KvError, Revision, Store, Txn};

/// Where node records live in the store: `nodes/<node>`.
pub const PREFIX: &str = "nodes/";

/// How many times a read-modify-write is tried when the record changes under it.
pub const MAX_ATTEMPTS: usize = 16;

/// A node may hold at most this many unexpired certificates; a renewing agent
/// needs two at a time. The bound keeps every live serial in the record, so a
/// revocation can list them all.
pub const MAX_LIVE_CERTS: usize = 64;

/// One certificate issued to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertEntry {
    /// Lowercase hex of the serial number's bytes.
    pub serial: String,
    pub not_after_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub node: String,
    /// First enrollment (or certificate), or the last re-admission.
    pub enrolled_unix: i64,
    /// The token of the last enrollment; none for `issue --node` certificates.
    pub token_id: Option<String>,
    pub revoked: bool,
    pub revoked_unix: Option<i64>,
    /// Unexpired certificates, oldest first.
    pub certs: Vec<CertEntry>,
    /// Certificates revoked with the node; they stay refused after a
    /// re-admission, until they expire.
    pub revoked_serials: Vec<CertEntry>,
}

/// Why a node's certificate is no longer accepted. The message goes to the DPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Revoked {
    #[error("node {node} is revoked; re-admit it with a new bootstrap token (dpu-controller token create --node {node})")]
    Node { node: String },
    #[error("node {node} is revoked for certificate {serial} (revoked before the node was re-admitted); enroll again")]
    Serial { node: String, serial: String },
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store could not be read or written.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A key under `nodes/` is not a node record.
    #[error("store key {key}: not a node record: {message}")]
    Corrupt { key: String, message: String },
    /// A node file of an older controller could not be read.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid node name {name:?}: {message}")]
    BadName { name: String, message: String },
    /// `node revoke` of a node without a record.
    #[error("no node {0:?} (no record in the store; see `dpu-controller node list`)")]
    Unknown(String),
    #[error("node {node} has {count} unexpired certificates (at most {MAX_LIVE_CERTS}); wait until older ones expire, or revoke the node")]
    TooManyCerts { node: String, count: usize },
    #[error(transparent)]
    Revoked(#[from] Revoked),
    /// Others kept changing the record for `MAX_ATTEMPTS` tries.
    #[error("the record of node {0} kept changing under this change; try again")]
    Contended(String),
}

impl NodeRecord {
    pub fn new(node: &str, now: i64) -> Self {
        NodeRecord {
            node: node.to_string(),
            enrolled_unix: now,
            token_id: None,
            revoked: false,
            revoked_unix: None,
            certs: Vec::new(),
            revoked_serials: Vec::new(),
        }
    }

    /// Whether the certificate with `serial` may act for this node.
    pub fn admits(&self, serial: &str) -> Result<(), Revoked> {
        if self.revoked {
            return Err(Revoked::Node {
                node: self.node.clone(),
            });
        }
        if self.revoked_serials.iter().any(|c| c.serial == serial) {
            return Err(Revoked::Serial {
                node: self.node.clone(),
                serial: serial.to_string(),
            });
        }
        Ok(())
    }

    /// Records a new certificate; expired entries go.
    pub fn add_cert(&mut self, cert: CertEntry, now: i64) -> Result<(), NodeError> {
        self.prune(now);
        if self.certs.len() >= MAX_LIVE_CERTS {
            return Err(NodeError::TooManyCerts {
                node: self.node.clone(),
                count: self.certs.len(),
            });
        }
        self.certs.push(cert);
        Ok(())
    }

    /// Refuses the node and every certificate it holds.
    pub fn revoke(&mut self, now: i64) {
        self.prune(now);
        self.revoked = true;
        self.revoked_unix = Some(now);
        let certs = std::mem::take(&mut self.certs);
        for c in certs {
            if !self.revoked_serials.iter().any(|r| r.serial == c.serial) {
                self.revoked_serials.push(c);
            }
        }
    }

    /// A successful enrollment: the node is admitted again (its old
    /// certificates stay revoked).
    pub fn readmit(&mut self, token_id: &str, now: i64) {
        if self.revoked {
            self.revoked = false;
            self.enrolled_unix = now;
        }
        self.token_id = Some(token_id.to_string());
    }

    /// The certificate that expires last.
    pub fn current(&self) -> Option<&CertEntry> {
        self.certs.iter().max_by_key(|c| c.not_after_unix)
    }

    /// Drops entries of certificates that have expired: the TLS handshake
    /// refuses those anyway.
    pub fn prune(&mut self, now: i64) {
        self.certs.retain(|c| c.not_after_unix > now);
        self.revoked_serials.retain(|c| c.not_after_unix > now);
    }
}

/// A node and its record as a replica holds it in memory: one the store has
/// but that cannot be read is kept as why (`revocation`).
pub type Held = (String, Result<NodeRecord, String>);

pub fn key(node: &str) -> String {
    format!("{PREFIX}{node}")
}

/// A record as stored, checked to be the one of its key.
pub fn parse(key: &str, value: &str) -> Result<NodeRecord, NodeError> {
    let record: NodeRecord = serde_json::from_str(value).map_err(|e| NodeError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })?;
    if PREFIX.to_string() + &record.node != key {
        return Err(NodeError::Corrupt {
            key: key.to_string(),
            message: format!("the record is for node {:?}", record.node),
        });
    }
    Ok(record)
}

impl NodeRecord {
    /// The record's value in the store.
    pub fn stored(&self) -> String {
        serde_json::to_string(self).expect("a node record serializes")
    }
}

/// The node records in the store.
#[derive(Debug, Clone)]
pub struct NodeStore {
    store: Store,
}

impl NodeStore {
    pub fn new(store: Store) -> Self {
        NodeStore { store }
    }

    /// The record of `node` and the revision it was last written at (0: none).
    pub async fn get(&self, node: &str) -> Result<(Option<NodeRecord>, Revision), NodeError> {
        check_name(node)?;
        let k = key(node);
        let (_, entry) = self.store.get(&k).await?;
        match entry {
            None => Ok((None, 0)),
            Some(e) => Ok((Some(parse(&k, &e.value)?), e.mod_revision)),
        }
    }

    pub async fn load(&self, node: &str) -> Result<Option<NodeRecord>, NodeError> {
        Ok(self.get(node).await?.0)
    }

    /// Every record, by node name, and the store's revision they were read at.
    pub async fn list_at(&self) -> Result<(Revision, Vec<NodeRecord>), NodeError> {
        let listing = self.store.list(PREFIX).await?;
        let records = listing
            .entries
            .iter()
            .map(|e| parse(&e.key, &e.value))
            .collect::<Result<_, _>>()?;
        Ok((listing.revision, records))
    }

    pub async fn list(&self) -> Result<Vec<NodeRecord>, NodeError> {
        Ok(self.list_at().await?.1)
    }

    /// The transaction that writes `record` if the node's key is still at
    /// `revision` (0: it has no record).
    pub fn put_if(record: &NodeRecord, revision: Revision) -> Txn {
        let k = key(&record.node);
        Txn::new()
            .when(Cmp::ModRevision(k.clone(), revision))
            .put(k, record.stored())
    }

    /// Read-modify-write of one record. `change` gets the current record (if
    /// any) and returns the new one; when it fails nothing is written. If the
    /// record changed between the read and the write, it is read again and
    /// `change` runs again (at most [`MAX_ATTEMPTS`] times).
    pub async fn modify<T, E>(
        &self,
        node: &str,
        mut change: impl FnMut(Option<NodeRecord>) -> Result<(NodeRecord, T), E>,
    ) -> Result<T, E>
    where
        E: From<NodeError>,
    {
        for _ in 0..MAX_ATTEMPTS {
            let (current, revision) = self.get(node).await?;
            let (record, out) = change(current.clone())?;
            if current.as_ref() == Some(&record) {
                return Ok(out);
            }
            let done = self
                .store
                .txn(Self::put_if(&record, revision))
                .await
                .map_err(NodeError::from)?;
            if done.succeeded {
                return Ok(out);
            }
        }
        Err(NodeError::Contended(node.to_string()).into())
    }
}

/// The node files of a controller from before the store
/// (`<state-dir>/nodes/<node>.json`), by node name.
pub fn read_files(state_dir: &Path) -> Result<Vec<NodeRecord>, NodeError> {
    let dir = state_dir.join("nodes");
    let file_err = |path: &Path, e: &dyn std::fmt::Display| NodeError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let paths = crate::fsutil::json_files(&dir, |n| dpu_model::check_name(n).is_ok())
        .map_err(|(path, e)| file_err(&path, &e))?;
    let mut out = Vec::new();
    for path in paths {
        let bytes = fs::read(&path).map_err(|e| file_err(&path, &e))?;
        let record: NodeRecord = serde_json::from_slice(&bytes).map_err(|e| file_err(&path, &e))?;
        if path.file_stem().and_then(|s| s.to_str()) != Some(record.node.as_str()) {
            let message = format!("the record is for node {:?}", record.node);
            return Err(file_err(&path, &message));
        }
        out.push(record);
    }
    Ok(out)
}

fn check_name(node: &str) -> Result<(), NodeError> {
    dpu_model::check_name(node).map_err(|message| NodeError::BadName {
        name: node.to_string(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(serial: &str, not_after_unix: i64) -> CertEntry {
        CertEntry {
            serial: serial.into(),
            not_after_unix,
        }
    }

    #[test]
    fn revocation_outlives_readmission_and_expired_entries_go() {
        let mut r = NodeRecord::new("dpu-1", 100);
        r.add_cert(cert("aa", 200), 100).unwrap();
        r.add_cert(cert("bb", 300), 150).unwrap();
        assert_eq!(r.current().unwrap().serial, "bb");
        assert_eq!(r.admits("aa"), Ok(()));

        r.revoke(160);
        assert!(r.certs.is_empty());
        let e = r.admits("cc").unwrap_err();
        assert!(e.to_string().starts_with("node dpu-1 is revoked"), "{e}");

        r.readmit("t1", 170);
        assert_eq!(r.enrolled_unix, 170);
        r.add_cert(cert("cc", 400), 170).unwrap();
        assert_eq!(r.admits("cc"), Ok(()));
        assert!(matches!(r.admits("bb"), Err(Revoked::Serial { .. })));

        // Past their expiry, entries are dropped at the next change.
        r.add_cert(cert("dd", 500), 350).unwrap();
        assert_eq!(r.revoked_serials, []);
        assert_eq!(r.certs, [cert("cc", 400), cert("dd", 500)]);
    }

    #[test]
    fn live_certificates_are_bounded() {
        let mut r = NodeRecord::new("dpu-1", 0);
        for i in 0..MAX_LIVE_CERTS {
            r.add_cert(cert(&format!("{i:02x}"), 1000), 0).unwrap();
        }
        let e = r.add_cert(cert("ff", 1000), 0).unwrap_err();
        assert!(e.to_string().contains("64 unexpired certificates"), "{e}");
        r.add_cert(cert("ff", 2000), 1000).unwrap();
        assert_eq!(r.certs.len(), 1);
    }

    /// Eight writers at once, two of them in another process's view of the
    /// store (a second handle, as `node revoke` has): no change is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_changes_are_all_kept_and_a_failed_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let open = || Store::Local(crate::kv::LocalStore::open(&dir.path().join("s")).unwrap());
        let (a, b) = (NodeStore::new(open()), NodeStore::new(open()));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = if i % 4 == 0 { b.clone() } else { a.clone() };
                tokio::spawn(async move {
                    store
                        .modify("dpu-1", |r| {
                            let mut r = r.unwrap_or_else(|| NodeRecord::new("dpu-1", 0));
                            r.add_cert(cert(&format!("{i:02x}"), i64::MAX), 0)?;
                            Ok::<_, NodeError>((r, ()))
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let (r, rev) = a.get("dpu-1").await.unwrap();
        assert_eq!(r.unwrap().certs.len(), 8, "no update was lost");
        let e = a
            .modify("dpu-1", |r| {
                r.unwrap().revoke(0);
                Err::<(NodeRecord, ()), _>(NodeError::Unknown("x".into()))
            })
            .await;
        assert!(e.is_err());
        assert_eq!(a.get("dpu-1").await.unwrap().1, rev, "nothing written");
        assert!(matches!(
            a.load("../etc").await,
            Err(NodeError::BadName { .. })
        ));
        assert_eq!(b.list().await.unwrap().len(), 1);
    }

    #[test]
    fn old_node_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("nodes");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("dpu-1.json"), NodeRecord::new("dpu-1", 5).stored()).unwrap();
        fs::write(d.join(".lock"), "").unwrap();
        assert_eq!(
            read_files(dir.path()).unwrap(),
            [NodeRecord::new("dpu-1", 5)]
        );
        fs::write(d.join("dpu-2.json"), NodeRecord::new("dpu-1", 5).stored()).unwrap();
        let e = read_files(dir.path()).unwrap_err().to_string();
        assert!(
            e.ends_with("dpu-2.json: the record is for node \"dpu-1\""),
            "{e}"
        );
    }
}
