//! The agent's persisted state: the last applied intent with its version, and the
//! local id allocations, so a reboot without the controller comes back to the same
//! data plane.
//!
//! An applied increment is appended to a journal (one record, fsynced): O(the
//! update), not O(the intent). Now and then (and for every snapshot update) the
//! agent compacts: it writes the whole intent and the allocations atomically
//! (temp file, fsync, rename, fsync of the directory) and empties the journal.
//! Loading is the snapshot plus the journal's updates replayed in order; a
//! journal record cut short by a crash, and whatever follows it, is ignored and
//! cut off.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dpu_proto::v1 as pb;
use prost::Message;

use crate::state::alloc::Allocations;

const INTENT_FILE: &str = "applied-intent.pb";
const ALLOC_FILE: &str = "allocations.json";
const POOL_FILE: &str = "attachments.json";
const JOURNAL_FILE: &str = "applied-journal.bin";

/// A journal record: payload length (u32 LE), the first 8 bytes of the
/// payload's SHA-256, the payload (an encoded `pb::Update`).
const RECORD_HEADER: usize = 12;

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

    /// Appends one applied increment to the journal and syncs it; returns the
    /// journal's size in bytes after it.
    pub fn append(&self, update: &pb::Update) -> Result<u64, StoreError> {
        self.append_encoded(&update.encode_to_vec())
    }

    /// [`Self::append`] of an update already encoded.
    pub fn append_encoded(&self, payload: &[u8]) -> Result<u64, StoreError> {
        let path = self.dir.join(JOURNAL_FILE);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut rec = Vec::with_capacity(RECORD_HEADER + payload.len());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&checksum(payload));
        rec.extend_from_slice(payload);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        f.write_all(&rec).map_err(io)?;
        f.sync_data().map_err(io)?;
        f.metadata().map(|m| m.len()).map_err(io)
    }

    /// The journal's updates, in order, after the snapshot [`Self::load`] reads.
    /// A damaged or cut-off record ends it: that record and the rest are cut
    /// off the file, so later appends follow the last good one.
    pub fn load_journal(&self) -> Result<Vec<pb::Update>, StoreError> {
        let path = self.dir.join(JOURNAL_FILE);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut out = Vec::new();
        let mut at = 0;
        while bytes.len() - at >= RECORD_HEADER {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            let Some(payload) = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
                break;
            };
            if bytes[at + 4..at + RECORD_HEADER] != checksum(payload) {
                break;
            }
            let Ok(u) = pb::Update::decode(payload) else {
                break;
            };
            out.push(u);
            at += RECORD_HEADER + len;
        }
        if at < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                kept = out.len(),
                dropped_bytes = bytes.len() - at,
                "the journal ends in a damaged or cut-off record; ignoring it"
            );
            let f = fs::OpenOptions::new().write(true).open(&path).map_err(io)?;
            f.set_len(at as u64).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        Ok(out)
    }

    /// Compacts: writes the whole applied state and empties the journal.
    pub fn save(&self, p: &Persisted) -> Result<(), StoreError> {
        self.save_encoded(&p.snapshot.encode_to_vec(), &p.alloc)
    }

    /// [`Self::save`] of a snapshot already encoded
    /// (`state::update::encode_snapshot`) and the allocations.
    pub fn save_encoded(&self, snapshot: &[u8], alloc: &Allocations) -> Result<(), StoreError> {
        let alloc = serde_json::to_vec_pretty(alloc).map_err(|e| StoreError::Corrupt {
            path: self.dir.join(ALLOC_FILE),
            message: e.to_string(),
        })?;
        // Allocations first: an intent must never be read back with older ids.
        atomic_write(&self.dir.join(ALLOC_FILE), &alloc)?;
        atomic_write(&self.dir.join(INTENT_FILE), snapshot)?;
        // A crash before this leaves records the snapshot already holds: replay
        // skips those (their versions are not newer).
        atomic_write(&self.dir.join(JOURNAL_FILE), &[])
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

fn checksum(payload: &[u8]) -> [u8; 8] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(payload);
    d[..8].try_into().expect("8 bytes")
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

    fn update(version: u64) -> pb::Update {
        pb::Update {
            version,
            base_version: version - 1,
            nonce: format!("n{version}"),
            ..Default::default()
        }
    }

    #[test]
    fn the_journal_replays_in_order_and_a_save_empties_it() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.load_journal().unwrap(), vec![]);
        s.append(&update(2)).unwrap();
        s.append(&update(3)).unwrap();
        assert_eq!(s.load_journal().unwrap(), vec![update(2), update(3)]);
        s.save(&Persisted {
            snapshot: pb::Update {
                version: 3,
                snapshot: true,
                ..Default::default()
            },
            alloc: Allocations::default(),
        })
        .unwrap();
        assert_eq!(s.load_journal().unwrap(), vec![]);
        s.append(&update(4)).unwrap();
        assert_eq!(s.load_journal().unwrap(), vec![update(4)]);
    }

    #[test]
    fn a_torn_journal_tail_is_ignored_and_cut_off() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.append(&update(2)).unwrap();
        let good = s.append(&update(3)).unwrap();
        let path = d.path().join(JOURNAL_FILE);
        // Every cut inside the last record loses that record only.
        let full = fs::read(&path).unwrap();
        let first = full.len() - (good as usize - (RECORD_HEADER + update(2).encoded_len()));
        for cut in first..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            assert_eq!(s.load_journal().unwrap(), vec![update(2)], "cut at {cut}");
            assert_eq!(fs::metadata(&path).unwrap().len() as usize, first);
        }
        // A flipped byte in a record's payload ends the journal there.
        let mut bad = full.clone();
        let at = bad.len() - 1;
        bad[at] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        assert_eq!(s.load_journal().unwrap(), vec![update(2)]);
        // Appends after the cut are read back.
        s.append(&update(3)).unwrap();
        assert_eq!(s.load_journal().unwrap(), vec![update(2), update(3)]);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_state() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        fs::write(d.path().join(INTENT_FILE), b"\xff\xff\xff").unwrap();
        assert!(matches!(s.load(), Err(StoreError::Corrupt { .. })));
    }
}
