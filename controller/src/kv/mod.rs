//! The controller's store: one key-value interface with etcd's semantics, and
//! two stores behind it.
//!
//! - [`local`]: the embedded store, files under the state directory. The
//!   default: the demo and a one-DPU lab need nothing else.
//! - [`etcd`]: etcd v3 over mutual TLS, for several replicas.
//!
//! Both give the same guarantees, and `tests/kv_conformance.rs` runs the same
//! scenario against each (the etcd one against a real `etcd`):
//! - every write that changes something gets the next **revision**, global to
//!   the store and never reused;
//! - a [`Txn`] applies all its operations or none, and only if all its
//!   comparisons hold; it writes a key at most once (a second write of a key,
//!   or a put inside a prefix it deletes, is refused, as etcd refuses it) (how a leader fences its writes and how `apply` refuses a
//!   concurrent change);
//! - a **watch** from revision R sees every change after R-1, in order, or is told
//!   that R was compacted away ([`WatchItem::Compacted`]), so the watcher re-lists;
//! - the **cluster id** tells one store from another: a version (a revision) is
//!   only comparable with versions from the same cluster.
//!
//! Keys are relative to a prefix the store adds (`/dpu/` by default on etcd), so
//! one etcd can hold several independent control planes. Values are UTF-8 text
//! (JSON or YAML); an etcd value that is not is an error that names the key.

pub mod election;
pub mod etcd;
pub mod follow;
pub mod local;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

pub use election::{Leadership, LEADER_TTL};
pub use etcd::{EtcdOptions, EtcdStore};
pub use local::LocalStore;

/// An etcd revision: 1 is the first write, 0 means "no revision" (a key that
/// does not exist has mod and create revision 0).
pub type Revision = i64;

/// How many watch items may wait for a slow watcher before the store stops
/// reading for it.
pub const WATCH_BUFFER: usize = 64;

/// How long one request to the store may take, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The store cannot be reached or did not answer in time. Reads of what a
    /// replica already holds go on; writes are refused with this error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A file of the embedded store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file of the embedded store is not what this program writes.
    #[error("{path}: corrupt store: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// A value under the prefix is not UTF-8 text (written by something else).
    #[error("store key {key}: the value is not UTF-8 text")]
    NotText { key: String },
    /// The request was refused by the store (bad options, no permission...).
    #[error("store refused the request: {0}")]
    Refused(String),
    /// A watch asked for a revision the store no longer has.
    #[error("revision {asked} is compacted (the store keeps revisions after {compacted})")]
    Compacted {
        asked: Revision,
        compacted: Revision,
    },
}

/// One key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the store's prefix.
    pub key: String,
    pub value: String,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

/// The keys under a prefix, read at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The store's revision when it was read.
    pub revision: Revision,
    /// In key order.
    pub entries: Vec<Entry>,
}

/// A condition of a [`Txn`]. Revision 0 stands for "the key does not exist".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmp {
    /// The key was last written at exactly this revision.
    ModRevision(String, Revision),
    /// The key was created at exactly this revision (a leader's election key:
    /// it holds while that very key exists).
    CreateRevision(String, Revision),
}

/// A write of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Every key that starts with `prefix` (relative to the store's prefix).
    DeletePrefix {
        prefix: String,
    },
}

/// All of `ops` if every one of `cmps` holds, else nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub cmps: Vec<Cmp>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }

    pub fn when(mut self, cmp: Cmp) -> Self {
        self.cmps.push(cmp);
        self
    }

    pub fn put(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    pub fn delete_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.ops.push(Op::DeletePrefix {
            prefix: prefix.into(),
        });
        self
    }
}

/// What a [`Txn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every comparison held (and so every operation was applied).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: String,
    /// The new value of a put; `None` for a delete.
    pub value: Option<String>,
    /// The revision of the change.
    pub mod_revision: Revision,
}

/// What a watch yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// The changes of one or more revisions, in revision order.
    Events(Vec<Event>),
    /// Nothing under the prefix changed up to this revision.
    Progress(Revision),
    /// The watch's start revision is compacted; the watch has ended. The
    /// watcher re-lists and marks-and-sweeps, then watches again from the
    /// listing's revision + 1.
    Compacted(Revision),
}

/// A running watch: items arrive in order; an error ends it.
#[derive(Debug)]
pub struct Watch {
    pub items: mpsc::Receiver<Result<WatchItem, KvError>>,
}

/// The store a controller uses: the embedded one or etcd.
#[derive(Debug, Clone)]
pub enum Store {
    Local(LocalStore),
    Etcd(EtcdStore),
}

impl Store {
    /// Which store this is, for logs and status: `local:<dir>` or `etcd:<urls>`.
    pub fn describe(&self) -> String {
        match self {
            Store::Local(s) => format!("local:{}", s.dir().display()),
            Store::Etcd(s) => format!("etcd:{}", s.endpoints().join(",")),
        }
    }

    /// The store's cluster id, as hex.
    pub async fn cluster_id(&self) -> Result<String, KvError> {
        match self {
            Store::Local(s) => Ok(s.cluster_id().to_string()),
            Store::Etcd(s) => s.cluster_id().await,
        }
    }

    pub async fn get(&self, key: &str) -> Result<(Revision, Option<Entry>), KvError> {
        match self {
            Store::Local(s) => s.get(key),
            Store::Etcd(s) => s.get(key).await,
        }
    }

    /// Every key that starts with `prefix`, in key order, at one revision.
    pub async fn list(&self, prefix: &str) -> Result<Listing, KvError> {
        match self {
            Store::Local(s) => s.list(prefix),
            Store::Etcd(s) => s.list(prefix).await,
        }
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, KvError> {
        match self {
            Store::Local(s) => s.txn(txn),
            Store::Etcd(s) => s.txn(txn).await,
        }
    }

    /// Watches every key under `prefix` from revision `from` (the first
    /// revision not yet seen).
    pub async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, KvError> {
        match self {
            Store::Local(s) => Ok(s.watch(prefix, from)),
            Store::Etcd(s) => s.watch(prefix, from).await,
        }
    }

    /// Forgets the history before `revision`.
    pub async fn compact(&self, revision: Revision) -> Result<(), KvError> {
        match self {
            Store::Local(s) => s.compact(revision),
            Store::Etcd(s) => s.compact(revision).await,
        }
    }
}

/// A key's path segment: object names and node names are checked before they
/// get here, but a segment must never be able to reach another key's space.
pub fn segment(s: &str) -> Result<&str, KvError> {
    if s.is_empty() || s.contains('/') || s == "." || s == ".." || s.chars().any(char::is_control) {
        return Err(KvError::Refused(format!(
            "{s:?} cannot be a key segment (empty, '/', '.', '..' or a control character)"
        )));
    }
    Ok(s)
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventKind::Put => "put",
            EventKind::Delete => "delete",
        })
    }
}
