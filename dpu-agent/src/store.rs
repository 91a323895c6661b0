//! The agent's persisted state: the last applied intent with its version, and the
//! local id allocations. Written atomically (temp file, fsync, rename, fsync of the
//! directory) after every applied update, so a reboot without the controller comes
//! back to the same data plane.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dpu_proto::v1 as pb;
use prost::Message;

use crate::alloc::Allocations;

const INTENT_FILE: &str = "applied-intent.pb";
const ALLOC_FILE: &str = "allocations.json";
const POOL_FILE: &str = "attachments.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file in the state directory could not be read or written.
    #[error("state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A state file exists but is damaged.
    #[error("state {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// What was applied last: the intent as a snapshot Update, and the allocations.
#[derive(Debug, Clone, PartialEq)]
pub struct Persisted {
    pub snapshot: pb::Update,
    pub alloc: Allocations,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating with mode 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    pub fn load(&self) -> Result<Option<Persisted>, StoreError> {
        let ipath = self.dir.join(INTENT_FILE);
        let apath = self.dir.join(ALLOC_FILE);
        let bytes = match fs::read(&ipath) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: ipath,
                    source,
                })
            }
        };
        let snapshot = pb::Update::decode(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
            path: ipath.clone(),
            message: e.to_string(),
        })?;
        let alloc = match fs::read(&apath) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                path: apath.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Allocations::default(),
            Err(source) => {
                return Err(StoreError::Io {
                    path: apath,
                    source,
                })
            }
        };
        Ok(Some(Persisted { snapshot, alloc }))
    }

    pub fn save(&self, p: &Persisted) -> Result<(), StoreError> {
        let alloc = serde_json::to_vec_pretty(&p.alloc).map_err(|e| StoreError::Corrupt {
            path: self.dir.join(ALLOC_FILE),
            message: e.to_string(),
        })?;
        // Allocations first: an intent must never be read back with older ids.
        atomic_write(&self.dir.join(ALLOC_FILE), &alloc)?;
        atomic_write(&self.dir.join(INTENT_FILE), &p.snapshot.encode_to_vec())
    }
}

impl Store {
    /// The pod attachments (VFs and addresses held), empty if none were saved.
    pub fn load_pool(&self) -> Result<crate::attach::pool::Pool, StoreError> {
        let path = self.dir.join(POOL_FILE);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    pub fn save_pool(&self, pool: &crate::attach::pool::Pool) -> Result<(), StoreError> {
        let path = self.dir.join(POOL_FILE);
        let data = serde_json::to_vec_pretty(pool).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        atomic_write(&path, &data)
    }
}

/// Write, fsync, rename, fsync the directory.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_modes() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.load().unwrap(), None);
        let mut alloc = Allocations::default();
        alloc.zones.insert("vpc-a".into(), 1);
        let p = Persisted {
            snapshot: pb::Update {
                version: 7,
                snapshot: true,
                ..Default::default()
            },
            alloc,
        };
        s.save(&p).unwrap();
        assert_eq!(s.load().unwrap(), Some(p));
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let fmode = fs::metadata(dir.join(INTENT_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(fmode, 0o600);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_state() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        fs::write(d.path().join(INTENT_FILE), b"\xff\xff\xff").unwrap();
        assert!(matches!(s.load(), Err(StoreError::Corrupt { .. })));
    }
}
