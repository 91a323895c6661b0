//! Node records: which certificates each node holds and whether it is revoked.
//!
//! `<state-dir>/nodes/<node>.json`, one per node. The CLI (`issue --node`, `node
//! revoke`) and the running server (Enroll, Renew) both change them, so every
//! read-modify-write holds an exclusive flock on `nodes/.lock`; readers need no
//! lock because every write is an atomic rename. The rules (revocation,
//! re-admission, the bound on live certificates) are pure methods of
//! `NodeRecord`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};

use crate::fsutil::{ensure_private_dir, lock_exclusive, write_atomic, SECRET_MODE};

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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A record is not a node record.
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("invalid node name {name:?}: {message}")]
    BadName { name: String, message: String },
    /// `node revoke` of a node without a record.
    #[error("no node {0:?} (no record in nodes/; see `dpu-controller node list`)")]
    Unknown(String),
    #[error("node {node} has {count} unexpired certificates (at most {MAX_LIVE_CERTS}); wait until older ones expire, or revoke the node")]
    TooManyCerts { node: String, count: usize },
    #[error(transparent)]
    Revoked(#[from] Revoked),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_path_buf(),
        source,
    }
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
    fn prune(&mut self, now: i64) {
        self.certs.retain(|c| c.not_after_unix > now);
        self.revoked_serials.retain(|c| c.not_after_unix > now);
    }
}

/// The node records of a state directory.
#[derive(Debug, Clone)]
pub struct NodeStore {
    dir: PathBuf,
}

impl NodeStore {
    pub fn new(state_dir: &Path) -> Self {
        NodeStore {
            dir: state_dir.join("nodes"),
        }
    }

    /// The record's path; `node` must have passed `check_name` (no '/').
    pub fn path(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.json"))
    }

    pub fn load(&self, node: &str) -> Result<Option<NodeRecord>, NodeError> {
        check_name(node)?;
        let path = self.path(node);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let record: NodeRecord =
            serde_json::from_slice(&bytes).map_err(|e| NodeError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if record.node != node {
            return Err(NodeError::Corrupt {
                path,
                message: format!("the record is for node {:?}", record.node),
            });
        }
        Ok(Some(record))
    }

    /// Every record, by node name.
    pub fn list(&self) -> Result<Vec<NodeRecord>, NodeError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry.map_err(io_err(&self.dir))?.file_name();
            let node = name.to_str().and_then(|n| n.strip_suffix(".json"));
            if let Some(node) = node.filter(|n| dpu_model::check_name(n).is_ok()) {
                names.push(node.to_string());
            }
        }
        names.sort();
        let mut out = Vec::new();
        for n in names {
            out.extend(self.load(&n)?);
        }
        Ok(out)
    }

    /// Read-modify-write of one record under the lock. `change` gets the current
    /// record (if any) and returns the new one; when it fails nothing is written.
    pub fn modify<T, E>(
        &self,
        node: &str,
        change: impl FnOnce(Option<NodeRecord>) -> Result<(NodeRecord, T), E>,
    ) -> Result<T, E>
    where
        E: From<NodeError>,
    {
        check_name(node)?;
        let _lock = self.lock()?;
        let current = self.load(node)?;
        let (record, out) = change(current.clone())?;
        if current.as_ref() != Some(&record) {
            let path = self.path(node);
            let mut bytes = serde_json::to_vec_pretty(&record).expect("a node record serializes");
            bytes.push(b'\n');
            write_atomic(&path, &bytes, SECRET_MODE).map_err(io_err(&path))?;
        }
        Ok(out)
    }

    fn lock(&self) -> Result<Flock<fs::File>, NodeError> {
        ensure_private_dir(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.dir.join(".lock");
        lock_exclusive(&path).map_err(io_err(&path))
    }
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
    use std::sync::Arc;

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

    #[test]
    fn modify_is_serialized_and_a_failed_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(NodeStore::new(dir.path()));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store
                        .modify("dpu-1", |r| {
                            let mut r = r.unwrap_or_else(|| NodeRecord::new("dpu-1", 0));
                            r.add_cert(cert(&format!("{i:02x}"), i64::MAX), 0)?;
                            Ok::<_, NodeError>((r, ()))
                        })
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let r = store.load("dpu-1").unwrap().unwrap();
        assert_eq!(r.certs.len(), 8, "no update was lost");
        let before = fs::read(store.path("dpu-1")).unwrap();
        let e = store.modify("dpu-1", |r| {
            r.unwrap().revoke(0);
            Err::<(NodeRecord, ()), _>(NodeError::Unknown("x".into()))
        });
        assert!(e.is_err());
        assert_eq!(fs::read(store.path("dpu-1")).unwrap(), before);
        assert!(matches!(
            store.load("../etc"),
            Err(NodeError::BadName { .. })
        ));
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
