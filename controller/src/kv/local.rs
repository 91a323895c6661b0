//! The embedded store: etcd's semantics on files in one directory, for a
//! controller without etcd (the default).
//!
//! ```text
//! <dir>/cluster-id     16 hex digits, made once, when the store is created
//! <dir>/snapshot.json  every key at the compacted revision
//! <dir>/log.jsonl      one line per revision after it: {"rev":N,"ops":[...]}
//! <dir>/lock           flock(2), held by a writer
//! ```
//!
//! Several processes may use one store: `serve` and the `apply`, `token` and
//! `node` commands. A writer holds the lock, first reads any lines other
//! processes appended, checks the transaction's comparisons, then appends one
//! line and fsyncs it before the write counts. Readers need no lock: they read
//! the lines appended since they last looked, and ignore a last line that has no
//! newline yet (a write in progress). A last line without a newline that a
//! writer finds under the lock is what a crash left; it is cut off.
//!
//! Compaction writes the state at the compacted revision to a new snapshot and
//! the lines after it to a new log (both by rename). A reader sees the log's
//! inode change and loads both again; a watch that is then behind the snapshot
//! gets [`WatchItem::Compacted`]. The log is compacted on its own once it holds
//! [`AUTO_COMPACT_AFTER`] revisions, keeping the last [`AUTO_COMPACT_KEEP`].

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{
    Cmp, Entry, Event, EventKind, KvError, Listing, Op, Revision, Txn, TxnResult, Watch, WatchItem,
    WATCH_BUFFER,
};
use crate::fsutil::{ensure_private_dir, lock_exclusive, write_atomic, SECRET_MODE};

const CLUSTER_ID: &str = "cluster-id";
const SNAPSHOT: &str = "snapshot.json";
const LOG: &str = "log.jsonl";
const LOCK: &str = "lock";

/// The log is compacted on a write once it holds this many revisions ...
pub const AUTO_COMPACT_AFTER: usize = 10_000;
/// ... down to this many.
pub const AUTO_COMPACT_KEEP: usize = 1_000;
/// How often a watch looks for lines other processes appended.
const POLL: Duration = Duration::from_millis(200);
/// A watch with nothing to say reports progress this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct LocalStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    cluster_id: String,
    /// Compact once the log holds this many revisions, down to the second.
    auto_compact: (usize, usize),
    state: Mutex<State>,
    /// The revision this process has seen, for its watches.
    seen: watch::Sender<Revision>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    value: String,
    create: Revision,
    #[serde(rename = "mod")]
    modified: Revision,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    /// Revisions up to this one are compacted: the state below is at it.
    compacted: Revision,
    entries: BTreeMap<String, Stored>,
}

/// One line of the log: the resolved writes of one revision.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    rev: Revision,
    ops: Vec<LogOp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogOp {
    Put { k: String, v: String },
    Del { k: String },
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, Stored>,
    revision: Revision,
    compacted: Revision,
    /// The events of each revision after `compacted`, in order.
    history: Vec<(Revision, Vec<Event>)>,
    /// The log file this state has read, and how far.
    log_ino: u64,
    log_offset: u64,
}

impl LocalStore {
    /// Opens the store in `dir`, creating it (and its cluster id) if needed.
    pub fn open(dir: &Path) -> Result<Self, KvError> {
        Self::open_compacting(dir, AUTO_COMPACT_AFTER, AUTO_COMPACT_KEEP)
    }

    /// [`LocalStore::open`], compacting the log once it holds `after`
    /// revisions, down to `keep` (`keep < after`).
    pub fn open_compacting(dir: &Path, after: usize, keep: usize) -> Result<Self, KvError> {
        assert!(
            keep < after,
            "the log keeps fewer revisions than it compacts at"
        );
        ensure_private_dir(dir).map_err(io_at(dir))?;
        let cluster_id = cluster_id(dir)?;
        let mut state = State::default();
        load(dir, &mut state)?;
        let (seen, _) = watch::channel(state.revision);
        Ok(LocalStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                cluster_id,
                auto_compact: (after, keep),
                state: Mutex::new(state),
                seen,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn cluster_id(&self) -> &str {
        &self.shared.cluster_id
    }

    pub fn get(&self, key: &str) -> Result<(Revision, Option<Entry>), KvError> {
        let state = self.fresh()?;
        let entry = state.entries.get(key).map(|s| entry(key, s));
        Ok((state.revision, entry))
    }

    pub fn list(&self, prefix: &str) -> Result<Listing, KvError> {
        let state = self.fresh()?;
        Ok(Listing {
            revision: state.revision,
            entries: state
                .entries
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, s)| entry(k, s))
                .collect(),
        })
    }

    pub fn txn(&self, txn: Txn) -> Result<TxnResult, KvError> {
        duplicates(&txn.ops)?;
        let _lock = self.lock()?;
        let mut state = self.fresh()?;
        let log = self.shared.dir.join(LOG);
        // A last line without a newline is a crashed writer's; cut it off.
        let len = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        if len > state.log_offset {
            let f = OpenOptions::new()
                .write(true)
                .open(&log)
                .map_err(io_at(&log))?;
            f.set_len(state.log_offset).map_err(io_at(&log))?;
        }
        let holds = txn.cmps.iter().all(|c| match c {
            Cmp::ModRevision(k, r) => state.entries.get(k).map_or(0, |s| s.modified) == *r,
            Cmp::CreateRevision(k, r) => state.entries.get(k).map_or(0, |s| s.create) == *r,
        });
        if !holds {
            return Ok(TxnResult {
                succeeded: false,
                revision: state.revision,
            });
        }
        let ops = resolve(&state.entries, &txn.ops);
        if ops.is_empty() {
            return Ok(TxnResult {
                succeeded: true,
                revision: state.revision,
            });
        }
        let rev = state.revision + 1;
        let mut line = serde_json::to_vec(&Record {
            rev,
            ops: ops.clone(),
        })
        .expect("a record serializes");
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(SECRET_MODE)
            .open(&log)
            .map_err(io_at(&log))?;
        f.write_all(&line).map_err(io_at(&log))?;
        f.sync_data().map_err(io_at(&log))?;
        if state.log_ino == 0 {
            state.log_ino = f.metadata().map_err(io_at(&log))?.ino();
        }
        state.log_offset += line.len() as u64;
        apply(&mut state, rev, ops);
        let (after, keep) = self.shared.auto_compact;
        let auto =
            (state.history.len() >= after).then(|| state.history[state.history.len() - keep - 1].0);
        drop(state);
        self.shared.seen.send_replace(rev);
        if let Some(to) = auto {
            self.compact_locked(to)?;
        }
        Ok(TxnResult {
            succeeded: true,
            revision: rev,
        })
    }

    /// Forgets the history up to and including `revision` (as etcd's compact:
    /// a watch from `revision` or before is then told it is compacted).
    pub fn compact(&self, revision: Revision) -> Result<(), KvError> {
        let _lock = self.lock()?;
        self.compact_locked(revision)
    }

    fn compact_locked(&self, revision: Revision) -> Result<(), KvError> {
        let mut state = self.fresh()?;
        if revision > state.revision {
            return Err(KvError::Refused(format!(
                "cannot compact to revision {revision}: the store is at {}",
                state.revision
            )));
        }
        if revision <= state.compacted {
            return Ok(());
        }
        // The state at `revision`: the snapshot on disk, then the log up to it.
        let dir = &self.shared.dir;
        let mut base = read_snapshot(dir)?;
        let records = read_log(dir, 0)?.0;
        let mut keep = Vec::new();
        for (record, line) in records {
            if record.rev <= revision {
                for op in record.ops {
                    apply_op(&mut base.entries, record.rev, op);
                }
            } else {
                keep.extend_from_slice(&line);
            }
        }
        base.compacted = revision;
        let snap = serde_json::to_vec(&base).expect("a snapshot serializes");
        write_atomic(&dir.join(SNAPSHOT), &snap, SECRET_MODE)
            .map_err(io_at(&dir.join(SNAPSHOT)))?;
        let log = dir.join(LOG);
        write_atomic(&log, &keep, SECRET_MODE).map_err(io_at(&log))?;
        state.log_ino = fs::metadata(&log).map_err(io_at(&log))?.ino();
        state.log_offset = keep.len() as u64;
        state.compacted = revision;
        state.history.retain(|(r, _)| *r > revision);
        Ok(())
    }

    pub fn watch(&self, prefix: &str, from: Revision) -> Watch {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let store = self.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move { store.run_watch(prefix, from, tx).await });
        Watch { items: rx }
    }

    async fn run_watch(
        self,
        prefix: String,
        from: Revision,
        tx: mpsc::Sender<Result<WatchItem, KvError>>,
    ) {
        let mut seen = self.shared.seen.subscribe();
        let mut next = from;
        let mut quiet = tokio::time::Instant::now();
        loop {
            let item = match self.fresh() {
                Err(e) => Some(Err(e)),
                Ok(state) => {
                    if next <= 0 {
                        next = state.revision + 1;
                    }
                    if next <= state.compacted {
                        Some(Ok(WatchItem::Compacted(state.compacted)))
                    } else {
                        let events: Vec<Event> = state
                            .history
                            .iter()
                            .filter(|(r, _)| *r >= next)
                            .flat_map(|(_, evs)| evs.iter())
                            .filter(|e| e.key.starts_with(&prefix))
                            .cloned()
                            .collect();
                        let upto = state.revision;
                        next = next.max(upto + 1);
                        if !events.is_empty() {
                            quiet = tokio::time::Instant::now();
                            Some(Ok(WatchItem::Events(events)))
                        } else if quiet.elapsed() >= PROGRESS_EVERY {
                            quiet = tokio::time::Instant::now();
                            Some(Ok(WatchItem::Progress(upto)))
                        } else {
                            None
                        }
                    }
                }
            };
            if let Some(item) = item {
                let end = !matches!(item, Ok(WatchItem::Events(_)) | Ok(WatchItem::Progress(_)));
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
            tokio::select! {
                _ = seen.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = tx.closed() => return,
            }
        }
    }

    fn lock(&self) -> Result<Flock<File>, KvError> {
        let path = self.shared.dir.join(LOCK);
        lock_exclusive(&path).map_err(io_at(&path))
    }

    /// The state with every complete line other processes appended.
    fn fresh(&self) -> Result<MutexGuard<'_, State>, KvError> {
        let mut state = self
            .shared
            .state
            .lock()
            .expect("the store's lock is not poisoned");
        let dir = &self.shared.dir;
        let log = dir.join(LOG);
        let (ino, len) = match fs::metadata(&log) {
            Ok(m) => (m.ino(), m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, 0),
            Err(e) => return Err(io_at(&log)(e)),
        };
        let before = state.revision;
        if ino != state.log_ino || len < state.log_offset {
            // Compacted (or first read): load both files again.
            let mut fresh = State::default();
            load(dir, &mut fresh)?;
            *state = fresh;
        } else if len > state.log_offset {
            let (records, consumed) = read_log(dir, state.log_offset)?;
            replay(&mut state, &log, records)?;
            state.log_offset += consumed;
        }
        if state.revision != before {
            self.shared.seen.send_replace(state.revision);
        }
        Ok(state)
    }
}

fn entry(key: &str, s: &Stored) -> Entry {
    Entry {
        key: key.to_string(),
        value: s.value.clone(),
        create_revision: s.create,
        mod_revision: s.modified,
    }
}

/// etcd's rule: a transaction writes each key at most once; a put may not
/// fall in a range the same transaction deletes.
fn duplicates(ops: &[Op]) -> Result<(), KvError> {
    let mut written = std::collections::BTreeSet::new();
    for op in ops {
        if let Op::Put { key, .. } | Op::Delete { key } = op {
            if !written.insert(key.as_str()) {
                return Err(KvError::Refused(format!(
                    "duplicate key given in txn request: {key}"
                )));
            }
        }
    }
    for op in ops {
        if let Op::DeletePrefix { prefix } = op {
            if let Some(k) = written.iter().find(|k| k.starts_with(prefix.as_str())) {
                return Err(KvError::Refused(format!(
                    "duplicate key given in txn request: {k} (in the deleted prefix {prefix})"
                )));
            }
        }
    }
    Ok(())
}

/// The writes a transaction makes, as concrete keys. A put is always a write
/// (etcd gives a put of an unchanged value a revision too); a delete of a key
/// that is not there is not.
fn resolve(entries: &BTreeMap<String, Stored>, ops: &[Op]) -> Vec<LogOp> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, value } => out.push(LogOp::Put {
                k: key.clone(),
                v: value.clone(),
            }),
            Op::Delete { key } => {
                if entries.contains_key(key) {
                    out.push(LogOp::Del { k: key.clone() });
                }
            }
            Op::DeletePrefix { prefix } => out.extend(
                entries
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                    .map(|(k, _)| LogOp::Del { k: k.clone() }),
            ),
        }
    }
    out
}

fn apply(state: &mut State, rev: Revision, ops: Vec<LogOp>) {
    let mut events = Vec::with_capacity(ops.len());
    for op in ops {
        events.push(match &op {
            LogOp::Put { k, v } => Event {
                kind: EventKind::Put,
                key: k.clone(),
                value: Some(v.clone()),
                mod_revision: rev,
            },
            LogOp::Del { k } => Event {
                kind: EventKind::Delete,
                key: k.clone(),
                value: None,
                mod_revision: rev,
            },
        });
        apply_op(&mut state.entries, rev, op);
    }
    state.revision = rev;
    state.history.push((rev, events));
}

fn apply_op(entries: &mut BTreeMap<String, Stored>, rev: Revision, op: LogOp) {
    match op {
        LogOp::Put { k, v } => {
            let create = entries.get(&k).map_or(rev, |s| s.create);
            entries.insert(
                k,
                Stored {
                    value: v,
                    create,
                    modified: rev,
                },
            );
        }
        LogOp::Del { k } => {
            entries.remove(&k);
        }
    }
}

fn load(dir: &Path, state: &mut State) -> Result<(), KvError> {
    let snap = read_snapshot(dir)?;
    state.entries = snap.entries;
    state.compacted = snap.compacted;
    state.revision = snap.compacted;
    state.history.clear();
    let log = dir.join(LOG);
    state.log_ino = match fs::metadata(&log) {
        Ok(m) => m.ino(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io_at(&log)(e)),
    };
    let (records, consumed) = read_log(dir, 0)?;
    replay(state, &log, records)?;
    state.log_offset = consumed;
    Ok(())
}

/// Applies log records in order. Lines at or below the state's revision are
/// ones a compaction had already folded into the snapshot (read between its
/// two renames); a gap is corruption.
fn replay(state: &mut State, log: &Path, records: Lines) -> Result<(), KvError> {
    for (record, _) in records {
        if record.rev <= state.revision {
            continue;
        }
        if record.rev != state.revision + 1 {
            return Err(KvError::Corrupt {
                path: log.to_path_buf(),
                message: format!(
                    "revision {} follows {} (expected {})",
                    record.rev,
                    state.revision,
                    state.revision + 1
                ),
            });
        }
        apply(state, record.rev, record.ops);
    }
    Ok(())
}

fn read_snapshot(dir: &Path) -> Result<Snapshot, KvError> {
    let path = dir.join(SNAPSHOT);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| KvError::Corrupt {
            path,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Snapshot::default()),
        Err(e) => Err(io_at(&path)(e)),
    }
}

/// Log records, each with its line's bytes.
type Lines = Vec<(Record, Vec<u8>)>;

/// The complete lines of the log from `offset`, each with its bytes, and how
/// many bytes they take. A last line without its newline is not read.
fn read_log(dir: &Path, offset: u64) -> Result<(Lines, u64), KvError> {
    let path = dir.join(LOG);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_at(&path)(e)),
    };
    f.seek(SeekFrom::Start(offset)).map_err(io_at(&path))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(io_at(&path))?;
    let mut out = Vec::new();
    let mut consumed = 0usize;
    while let Some(nl) = bytes[consumed..].iter().position(|b| *b == b'\n') {
        let line = &bytes[consumed..consumed + nl + 1];
        let record: Record = serde_json::from_slice(&line[..nl]).map_err(|e| KvError::Corrupt {
            path: path.clone(),
            message: format!("at byte {}: {e}", offset + consumed as u64),
        })?;
        out.push((record, line.to_vec()));
        consumed += nl + 1;
    }
    Ok((out, consumed as u64))
}

fn cluster_id(dir: &Path) -> Result<String, KvError> {
    let path = dir.join(CLUSTER_ID);
    match fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim();
            if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(KvError::Corrupt {
                    path,
                    message: format!("{id:?} is not 16 hex digits"),
                });
            }
            Ok(id.to_string())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Written whole under another name, then linked: two processes
            // creating the store at once agree on the first id, and neither
            // ever reads a half-written one.
            let id = format!("{:016x}", rand::random::<u64>());
            let tmp = dir.join(format!("{CLUSTER_ID}.{}.tmp", std::process::id()));
            write_atomic(&tmp, format!("{id}\n").as_bytes(), SECRET_MODE).map_err(io_at(&tmp))?;
            let linked = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(id),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => cluster_id(dir),
                Err(e) => Err(io_at(&path)(e)),
            }
        }
        Err(e) => Err(io_at(&path)(e)),
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> KvError + '_ {
    move |source| KvError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
