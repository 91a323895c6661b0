//! The global intent version, persisted under the state directory.
//!
//! The version is a counter that only goes up, across restarts too, so that an
//! agent's "last applied version" keeps meaning the same intent. The file also
//! holds a digest of the intent that version stands for: a restart that loads the
//! same intent keeps the version (agents at it get no snapshot, nothing flaps),
//! and any other intent gets the next number.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use dpu_model::Intent;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{write_atomic, PUBLIC_MODE};

pub const VERSION_FILE: &str = "intent-version.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The version file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The version file is not what this program writes.
    #[error("{path}: corrupt version file: {message}")]
    Corrupt { path: PathBuf, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u64,
    /// Hex SHA-256 of the resolved intent (see `intent_digest`).
    pub digest: String,
    /// Which counter this is: 16 hex digits made with the file. Agents are
    /// told it with every update (in `Update.store_id`), so that a version
    /// from another counter (another replica's, or this one's after its file
    /// was lost) is never taken for the same intent.
    #[serde(default)]
    pub lineage: String,
}

#[derive(Debug)]
pub struct VersionStore {
    path: PathBuf,
    current: Option<VersionRecord>,
    lineage: String,
}

impl VersionStore {
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let path = state_dir.join(VERSION_FILE);
        let current = match fs::read(&path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                })?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let mut store = VersionStore {
            path,
            current,
            lineage: String::new(),
        };
        match store.current.as_ref().map(|c| c.lineage.clone()) {
            Some(l) if !l.is_empty() => store.lineage = l,
            had => {
                store.lineage = format!("{:016x}", rand::random::<u64>());
                // A file from before lineages: give it one now, so that the
                // next start agrees.
                if let (Some(_), Some(mut cur)) = (had, store.current.clone()) {
                    cur.lineage = store.lineage.clone();
                    store.write(&cur)?;
                    store.current = Some(cur);
                }
            }
        }
        Ok(store)
    }

    /// This counter's lineage (see [`VersionRecord::lineage`]).
    pub fn lineage(&self) -> &str {
        &self.lineage
    }

    fn write(&self, record: &VersionRecord) -> Result<(), StoreError> {
        let mut bytes = serde_json::to_vec_pretty(record).expect("a record serializes");
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes, PUBLIC_MODE).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }

    pub fn current(&self) -> Option<&VersionRecord> {
        self.current.as_ref()
    }

    /// The version for an intent with `digest`: the current one if the digest is
    /// unchanged, else the next number, persisted before it is returned.
    pub fn commit(&mut self, digest: &str) -> Result<u64, StoreError> {
        if let Some(cur) = self.current.as_ref().filter(|c| c.digest == digest) {
            return Ok(cur.version);
        }
        let next = VersionRecord {
            version: self.current.as_ref().map_or(0, |c| c.version) + 1,
            digest: digest.to_string(),
            lineage: self.lineage.clone(),
        };
        self.write(&next)?;
        self.current = Some(next);
        Ok(self.current.as_ref().map_or(0, |c| c.version))
    }
}

/// A digest of the resolved intent. The domain types are ordered maps all the way
/// down, so their debug form is canonical.
pub fn intent_digest(intent: &Intent) -> String {
    hex::encode(Sha256::digest(format!("{intent:?}").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_model::{Object, Vpc};

    fn intent(vni: u32) -> Intent {
        let mut i = Intent::default();
        i.upsert(Object::Vpc(Vpc {
            name: "blue".into(),
            vni,
        }));
        i
    }

    #[test]
    fn version_survives_restart_and_only_grows() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (intent_digest(&intent(1)), intent_digest(&intent(2)));
        assert_ne!(a, b);
        let mut s = VersionStore::open(dir.path()).unwrap();
        assert!(s.current().is_none());
        assert_eq!(s.commit(&a).unwrap(), 1);
        assert_eq!(
            s.commit(&a).unwrap(),
            1,
            "the same intent keeps its version"
        );
        assert_eq!(s.commit(&b).unwrap(), 2);

        // A restart with the same intent keeps the version ...
        let mut s = VersionStore::open(dir.path()).unwrap();
        assert_eq!(s.current().map(|c| c.version), Some(2));
        assert_eq!(s.commit(&b).unwrap(), 2);
        // ... and going back to an earlier intent still moves forward.
        assert_eq!(s.commit(&a).unwrap(), 3);
        let s = VersionStore::open(dir.path()).unwrap();
        assert_eq!(s.current().map(|c| c.version), Some(3));
    }

    #[test]
    fn the_lineage_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = VersionStore::open(dir.path()).unwrap();
        let l = s.lineage().to_string();
        assert_eq!(l.len(), 16);
        s.commit("d1").unwrap();
        assert_eq!(VersionStore::open(dir.path()).unwrap().lineage(), l);
        // A file from before lineages gets one at open, kept from then on.
        fs::write(
            dir.path().join(VERSION_FILE),
            r#"{"version": 4, "digest": "d"}"#,
        )
        .unwrap();
        let s = VersionStore::open(dir.path()).unwrap();
        let l2 = s.lineage().to_string();
        assert!(l2.len() == 16 && l2 != l);
        assert_eq!(s.current().map(|c| c.version), Some(4));
        assert_eq!(VersionStore::open(dir.path()).unwrap().lineage(), l2);
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(VERSION_FILE), "not json").unwrap();
        assert!(matches!(
            VersionStore::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
