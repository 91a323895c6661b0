//! The intent task of `serve`: the one task that changes the intent in force.
//!
//! The intent lives in the store (`objects`). The task
//! - imports the intent directory into it when its files change
//!   (`--intent-dir`, optional: objects may also come from `apply`);
//! - follows the store with a watch from the revision it last read, applying
//!   each event to its mirror of the objects; when the watch reports that its
//!   revision was compacted, or fails, it re-lists and replaces the mirror
//!   (mark and sweep: a delete it missed is caught), then watches again;
//! - re-lists every [`RELIST_EVERY`] as well, and says so if the re-list found
//!   anything the watch had not delivered (Debian's etcd 3.4 predates fixes
//!   for events lost near a compaction);
//! - resolves the mirror when it changed, merges it with the workloads agents
//!   report (`effective`), commits the version and publishes it to the
//!   sessions, in that order.
//!
//! When the store cannot be reached the task keeps the last intent it read in
//! force (fail-static), the status says `store: ... unavailable`, and it tries
//! again with backoff. A store whose objects do not resolve (written around
//! `apply`) is refused the same way as a bad reload: the errors go to the
//! status and the last good intent stays.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::diag::IntentError;
use crate::effective::{Commit, Effective};
use crate::kv::{Cmp, KvError, Revision, Store, Txn, Watch, WatchItem};
use crate::objects::{self, Current, Input, ObjectError, PREFIX};
use crate::reload::{Manifests, Outcome, ReloadError, Reloader};
use crate::reported::{self, ReportInbox, ReportedSet};
use crate::session::Published;
use crate::shutdown::shutdown_requested;
use crate::status::StatusHandle;

/// A full re-list this often, whatever the watch says.
pub const RELIST_EVERY: Duration = Duration::from_secs(60);
/// After the store failed, the first retry waits this long ...
const RETRY_MIN: Duration = Duration::from_secs(1);
/// ... doubling up to this.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Where the intent comes from.
#[derive(Debug)]
pub struct IntentSource {
    pub store: Store,
    /// The intent directory, if `--intent-dir` was given, and the `source` its
    /// objects are written with (`dir:<path>`).
    pub importer: Option<(Reloader, String)>,
    /// The objects as last read from the store.
    pub mirror: Current,
    /// Each node's reported set as last read from the store
    /// (`reported/<node>`), with its mod revision.
    pub reported: BTreeMap<String, (Revision, ReportedSet)>,
    /// [`VERSION_KEY`] as last read.
    pub version_key: Option<VersionKey>,
}

/// What [`VERSION_KEY`] says: the version, the digest of the intent it
/// versions, and the store revision that intent was resolved at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionKey {
    /// Its mod revision: the version.
    pub revision: Revision,
    pub digest: String,
    /// Every intent and reported-set event up to this revision, and none
    /// after it, made that intent (`None`: written by a controller from
    /// before this was recorded). A follower applies events up to here
    /// before its round, so that it resolves what the leader resolved.
    pub upto: Option<Revision>,
}

/// The leader writes the digest of each new intent here; the revision of that
/// write is the intent's version, on every replica.
pub const VERSION_KEY: &str = "meta/version";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct VersionValue {
    digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upto: Option<Revision>,
}

fn version_of(e: &crate::kv::Entry) -> Option<VersionKey> {
    match serde_json::from_str::<VersionValue>(&e.value) {
        Ok(v) => Some(VersionKey {
            revision: e.mod_revision,
            digest: v.digest,
            upto: v.upto,
        }),
        Err(err) => {
            tracing::warn!("ignoring the store key {VERSION_KEY}: {err}");
            None
        }
    }
}

/// Puts `effective`'s pending intent in force at the version the store holds
/// for it: the key's revision when its digest is this intent's; otherwise the
/// leader writes the digest (fenced, and only over the key as last read) and
/// uses the revision of its write, saying it resolved the store at `upto`. A
/// follower waits for the leader's write, which its watch brings.
/// `Ok(None)`: not yet.
pub async fn settle(
    store: &Store,
    version_key: &mut Option<VersionKey>,
    fence: Option<Cmp>,
    upto: Revision,
    effective: &mut Effective,
) -> Result<Option<Published>, KvError> {
    let Some(digest) = effective.pending_digest().map(str::to_string) else {
        return Ok(None);
    };
    if let Some(v) = version_key.as_ref() {
        if v.digest == digest {
            return Ok(effective.publish(v.revision as u64));
        }
    }
    let Some(fence) = fence else {
        return Ok(None);
    };
    let seen = version_key.as_ref().map_or(0, |v| v.revision);
    let value = serde_json::to_string(&VersionValue {
        digest: digest.clone(),
        upto: Some(upto),
    })
    .expect("serializes");
    let r = store
        .txn(
            Txn::new()
                .when(Cmp::ModRevision(VERSION_KEY.into(), seen))
                .when(fence)
                .put(VERSION_KEY, value),
        )
        .await?;
    if !r.succeeded {
        // Another write came first (or leadership went): the watch brings it.
        return Ok(None);
    }
    *version_key = Some(VersionKey {
        revision: r.revision,
        digest,
        upto: Some(upto),
    });
    Ok(effective.publish(r.revision as u64))
}

/// The first version at start: settles until the store holds one for this
/// intent (a follower waits for the leader).
pub async fn first_version(
    source: &mut IntentSource,
    effective: &mut Effective,
    leader: &mut watch::Receiver<Option<Cmp>>,
) -> Result<Published, StartError> {
    log_dropped(&effective.commit().newly_dropped);
    let mut logged = false;
    loop {
        let fence = leader.borrow().clone();
        let upto = source.mirror.revision;
        if let Some(p) = settle(
            &source.store,
            &mut source.version_key,
            fence,
            upto,
            effective,
        )
        .await?
        {
            return Ok(p);
        }
        if !logged {
            tracing::info!("waiting for the leader to version the intent");
            logged = true;
        }
        tokio::select! {
            _ = leader.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let (_, e) = source.store.get(VERSION_KEY).await?;
        source.version_key = e.as_ref().and_then(version_of);
        // The leader may have versioned a newer intent than the one read at
        // start (it imported meanwhile): read the store again, so the digests
        // can meet.
        if source
            .version_key
            .as_ref()
            .is_some_and(|v| Some(v.digest.as_str()) != effective.pending_digest())
        {
            refresh(source, effective).await?;
        }
    }
}

/// Reads the intent objects and reported sets again into `source` and
/// `effective`, and merges.
async fn refresh(source: &mut IntentSource, effective: &mut Effective) -> Result<(), StartError> {
    let fresh =
        objects::from_listing_since(source.store.list(PREFIX).await?, Some(&source.mirror))?;
    if fresh.differences(&source.mirror) > 0 {
        let previous = effective.manifests().clone();
        let m = Manifests::resolve_after(fresh.docs(), &previous).map_err(StartError::Invalid)?;
        effective.set_manifests(m);
    }
    source.mirror = fresh;
    let listing = source.store.list(reported::PREFIX).await?;
    let sets = reported_of(&listing.entries);
    for node in source.reported.keys().filter(|n| !sets.contains_key(*n)) {
        effective.set_reported(node, ReportedSet::default());
    }
    for (node, (_, set)) in &sets {
        effective.set_reported(node, set.clone());
    }
    source.reported = sets;
    log_dropped(&effective.commit().newly_dropped);
    Ok(())
}

impl IntentSource {
    /// The reported sets, for `Effective::open`.
    pub fn reported_sets(&self) -> BTreeMap<String, ReportedSet> {
        self.reported
            .iter()
            .map(|(n, (_, s))| (n.clone(), s.clone()))
            .collect()
    }
}

/// The reported sets of a listing of `reported/`. A value that does not parse
/// is left out with a warning: its agent reports again after Hello.
fn reported_of(entries: &[crate::kv::Entry]) -> BTreeMap<String, (Revision, ReportedSet)> {
    entries
        .iter()
        .filter_map(|e| {
            let node = e.key.strip_prefix(reported::PREFIX)?;
            match reported::from_stored_value(node, &e.value) {
                Ok(set) => Some((node.to_string(), (e.mod_revision, set))),
                Err(err) => {
                    tracing::warn!("ignoring a reported set: {err}");
                    None
                }
            }
        })
        .collect()
}

/// Reads the reported sets at start. If the store has none and the state
/// directory still has `reported-workloads.json` (a controller from before
/// the store), they are moved in. Sets of revoked nodes are deleted.
async fn start_reported(
    store: &Store,
    state_dir: &std::path::Path,
) -> Result<BTreeMap<String, (Revision, ReportedSet)>, StartError> {
    let mut listing = store.list(reported::PREFIX).await?;
    if listing.entries.is_empty() {
        match reported::ReportedStore::open(state_dir) {
            Ok(old) if !old.sets().is_empty() => {
                let mut txn = Txn::new();
                for (node, set) in old.sets() {
                    txn = txn.put(
                        format!("{}{node}", reported::PREFIX),
                        reported::stored_value(set),
                    );
                }
                store.txn(txn).await?;
                tracing::info!(
                    nodes = old.sets().len(),
                    "moved the reported workloads of {} into the store",
                    reported::REPORTED_FILE
                );
                listing = store.list(reported::PREFIX).await?;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the old reported workloads"),
        }
    }
    let mut sets = reported_of(&listing.entries);
    let nodes = crate::nodes::NodeStore::new(store.clone());
    let mut revoked = Vec::new();
    for node in sets.keys() {
        if matches!(nodes.load(node).await, Ok(Some(r)) if r.revoked) {
            revoked.push(node.clone());
        }
    }
    if !revoked.is_empty() {
        let mut txn = Txn::new();
        for node in &revoked {
            tracing::warn!(node, "dropping the reported pods of a revoked node");
            txn = txn.delete(format!("{}{node}", reported::PREFIX));
            sets.remove(node);
        }
        store.txn(txn).await?;
    }
    Ok(sets)
}

/// Why the intent could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The directory or the store holds an invalid intent.
    #[error("{} error(s)", .0.len())]
    Invalid(Vec<IntentError>),
    /// The directory could not be read.
    #[error(transparent)]
    Load(#[from] crate::load::LoadError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] KvError),
    /// Another writer changed the intent during the import.
    #[error("{0}")]
    Conflict(String),
}

impl From<ObjectError> for StartError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Invalid(errors) => StartError::Invalid(errors),
            ObjectError::Store(e) => StartError::Store(e),
            other => StartError::Conflict(other.to_string()),
        }
    }
}

/// Imports the intent directory (if any), then reads the store and resolves
/// what it holds: the manifests the controller starts with.
pub async fn start(
    store: Store,
    state_dir: &std::path::Path,
    intent_dir: Option<&std::path::Path>,
    leader: &mut watch::Receiver<Option<Cmp>>,
) -> Result<(IntentSource, Manifests), StartError> {
    let mut importer = None;
    if let Some(dir) = intent_dir {
        let mut reloader = Reloader::new(dir);
        let inputs = reloader.load_initial().map_err(|e| match e {
            ReloadError::Invalid(errors) => StartError::Invalid(errors),
            ReloadError::Load(e) => StartError::Load(e),
        })?;
        let source = format!("dir:{}", dir.display());
        // Only the leader imports. A replica that does not lead at once
        // serves what the store holds, once something is there.
        let fence = tokio::time::timeout(FIRST_CAMPAIGN, leader.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().map(|f| f.clone()))
            .flatten();
        match fence {
            Some(fence) => {
                let done =
                    objects::import(&store, &inputs, &source, None, None, Some(fence)).await?;
                tracing::info!(
                    dir = %dir.display(),
                    objects = inputs.len(),
                    written = done.written,
                    deleted = done.deleted,
                    "intent directory imported into the store"
                );
            }
            None => wait_for_intent(&store).await?,
        }
        importer = Some((reloader, source));
    }
    let mirror = objects::current(&store).await?;
    let manifests = Manifests::resolve(mirror.docs()).map_err(StartError::Invalid)?;
    let reported = start_reported(&store, state_dir).await?;
    let (_, v) = store.get(VERSION_KEY).await?;
    let version_key = v.as_ref().and_then(version_of);
    Ok((
        IntentSource {
            store,
            importer,
            mirror,
            reported,
            version_key,
        },
        manifests,
    ))
}

/// How long `start` waits to win the first campaign before it serves what
/// the store holds instead of importing.
const FIRST_CAMPAIGN: Duration = Duration::from_secs(2);

/// Waits until some writer (the leader's import, `apply`) has written intent:
/// a replica that does not lead must not serve an empty intent the leader is
/// about to replace.
async fn wait_for_intent(store: &Store) -> Result<(), StartError> {
    let mut logged = false;
    loop {
        let (_, guard) = store.get(objects::GUARD).await?;
        if guard.is_some() {
            return Ok(());
        }
        if !logged {
            tracing::info!("another replica leads; waiting for it to import the intent");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Campaigns for leadership for as long as the controller runs, and says in
/// `leader` whether this replica leads (with the fence its writes carry).
/// The leader also compacts the store's history every [`COMPACT_EVERY`],
/// keeping [`COMPACT_KEEP`] revisions.
pub async fn lead(
    store: Store,
    id: String,
    leader: watch::Sender<Option<Cmp>>,
    status: StatusHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wait = RETRY_MIN;
    loop {
        let won = tokio::select! {
            r = store.campaign(&id) => r,
            _ = shutdown_requested(&mut shutdown) => return,
        };
        let mut l = match won {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot campaign for leadership; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown_requested(&mut shutdown) => return,
                }
                wait = (wait * 2).min(RETRY_MAX);
                continue;
            }
        };
        wait = RETRY_MIN;
        tracing::info!(key = %l.key, rev = l.rev, id = %id, "this replica leads: it imports the intent directory, compacts the store and cleans up tokens and node records");
        status.record_leader(true);
        leader.send_replace(Some(l.fence()));
        let mut compact = tokio::time::interval(COMPACT_EVERY);
        compact.tick().await;
        // The first round soon after winning, then every hour.
        let mut cleanup = tokio::time::interval_at(
            tokio::time::Instant::now() + CLEANUP_AFTER_WIN,
            crate::cleanup::EVERY,
        );
        let fence = l.fence();
        loop {
            tokio::select! {
                _ = l.lost() => {
                    tracing::warn!("leadership lost (its lease could not be kept); campaigning again");
                    leader.send_replace(None);
                    status.record_leader(false);
                    break;
                }
                _ = compact.tick() => compact_history(&store).await,
                _ = cleanup.tick() => {
                    match crate::cleanup::run_once(&store, &fence, crate::timeutil::unix_now()).await {
                        Ok(c) if c == crate::cleanup::Cleaned::default() => {}
                        Ok(c) => tracing::info!(tokens = c.tokens, records = c.records, "cleaned up used and expired tokens and expired certificate entries"),
                        Err(e) => tracing::warn!(error = %e, "cannot clean up tokens and node records"),
                    }
                }
                _ = shutdown_requested(&mut shutdown) => {
                    leader.send_replace(None);
                    l.resign().await;
                    return;
                }
            }
        }
    }
}

/// The leader's first token and record clean-up, after it won.
const CLEANUP_AFTER_WIN: Duration = Duration::from_secs(30);

/// The leader compacts at most this often ...
pub const COMPACT_EVERY: Duration = Duration::from_secs(300);
/// ... keeping this many revisions of history (a watch further behind
/// re-lists).
pub const COMPACT_KEEP: i64 = 10_000;

async fn compact_history(store: &Store) {
    let rev = match store.get(objects::GUARD).await {
        Ok((rev, _)) => rev,
        Err(e) => return tracing::warn!(error = %e, "cannot read the store's revision to compact"),
    };
    let to = rev - COMPACT_KEEP;
    if to > 0 {
        match store.compact(to).await {
            Ok(()) => tracing::info!(revision = to, "store history compacted"),
            // Compacted already (by us before, or etcd's own --auto-compaction).
            Err(KvError::Compacted { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "cannot compact the store"),
        }
    }
}

/// What woke the task.
enum Wake {
    Poll,
    Reports,
    Watch(Option<Result<WatchItem, KvError>>),
    Relist,
    /// Held events waited [`HOLD_MAX`] for the leader.
    Held,
}

/// The task's own state between rounds.
struct Task {
    source: IntentSource,
    watch: Option<Watch>,
    /// When the store next gets another try after failing.
    retry_at: Option<Instant>,
    retry_wait: Duration,
    /// The mirror changed since it was last resolved.
    mirror_changed: bool,
    /// An import was written and its events are awaited.
    reload_pending: bool,
    /// The store's objects did not resolve last time (the status says why).
    store_refused: bool,
    status: StatusHandle,
    /// The last problem logged, so that a retry does not repeat it.
    last_problem: String,
    /// The fence while this replica leads (and imports), else `None`.
    leader: watch::Receiver<Option<Cmp>>,
    /// Reported sets the store changed, for `effective` at the next round.
    reported_changed: BTreeMap<String, ReportedSet>,
    /// Sets agents reported that are not in the store yet (it failed).
    unsent: BTreeMap<String, ReportedSet>,
    /// Since when this follower's pending intent has not matched the
    /// leader's digest (that one), and whether that was logged.
    unmatched: Option<(Instant, String, bool)>,
    /// The store revision the mirror and the reported sets stand at: every
    /// intent and reported-set event up to it is applied, none after it.
    applied: Revision,
    /// A follower's intent and reported-set events after the leader's last
    /// `upto`, held back (in revision order) until the leader versions them,
    /// so that its rounds end where the leader's did and its digest can meet
    /// the leader's. Under churn, rounds that end elsewhere never match.
    held: Vec<crate::kv::Event>,
    /// When the leader last let held events go (or the first was held):
    /// after [`HOLD_MAX`] without a version, the follower applies them all.
    held_since: Option<Instant>,
    /// The revision of the last intent or reported-set change in the mirror
    /// (an event applied, or the guard and sets a list found): what says
    /// whether this replica stands where the leader's version does.
    last_change: Revision,
}

/// The revision of the last change the source holds: the guard (every
/// intent write moves it, deletes too) or a reported set.
fn last_change(source: &IntentSource) -> Revision {
    let reported = source.reported.values().map(|(r, _)| *r).max();
    reported.unwrap_or(0).max(source.mirror.guard)
}

/// A follower holds events back for the leader's version at most this long
/// (the leader died, or refused the intent, and versions nothing): then it
/// applies them, as it would without a leader to follow. Without the leader's
/// version a follower publishes nothing either way, so this only bounds how
/// long its status may lag; a dead leader is replaced within the lease, and a
/// slow one (a loaded machine) must not be given up on early: a follower
/// that applies past the leader's round has to wait for a later one.
const HOLD_MAX: Duration = crate::kv::LEADER_TTL;

/// A follower whose intent has not matched the leader's this long says so.
const UNMATCHED_WARN: Duration = Duration::from_secs(30);

impl Task {
    fn new(
        source: IntentSource,
        status: StatusHandle,
        leader: watch::Receiver<Option<Cmp>>,
    ) -> Self {
        Task {
            applied: source.mirror.revision,
            last_change: last_change(&source),
            held: Vec::new(),
            held_since: None,
            leader,
            reported_changed: BTreeMap::new(),
            unmatched: None,
            unsent: BTreeMap::new(),
            source,
            watch: None,
            retry_at: None,
            retry_wait: RETRY_MIN,
            mirror_changed: false,
            reload_pending: false,
            store_refused: false,
            status,
            last_problem: String::new(),
        }
    }

    fn backend(&self) -> String {
        self.source.store.describe()
    }

    fn store_ok(&mut self) {
        self.retry_wait = RETRY_MIN;
        self.retry_at = None;
        let revision = self.source.mirror.revision;
        self.status.record_store(&self.backend(), revision, None);
    }

    fn store_failed(&mut self, what: &str, e: &KvError) {
        let text = format!("{what}: {e}");
        if text != self.last_problem {
            tracing::warn!(store = %self.backend(), "{text}; the last intent read stays in force, retrying");
            self.last_problem = text.clone();
        }
        self.status.record_store(&self.backend(), 0, Some(text));
        self.retry_at = Some(Instant::now() + self.retry_wait);
        self.retry_wait = (self.retry_wait * 2).min(RETRY_MAX);
    }

    /// Re-lists the store and replaces the mirror; (re)starts the watch.
    async fn relist(&mut self) {
        // The intent, the reported sets and the version key (not the status
        // and health keys, which can be many): three reads, and the watch
        // resumes after the earliest, so nothing between them is missed (an
        // event seen twice changes nothing the second time).
        let mut lists = Vec::with_capacity(3);
        for prefix in [PREFIX, reported::PREFIX, VERSION_KEY] {
            match self.source.store.list(prefix).await {
                Ok(l) => lists.push(l),
                Err(e) => return self.store_failed("cannot list the store", &e),
            }
        }
        let revision = lists.iter().map(|l| l.revision).min().unwrap_or(0);
        let mut lists = lists.into_iter();
        let intent = lists.next().expect("three lists");
        let rest: Vec<crate::kv::Entry> = lists.flat_map(|l| l.entries).collect();
        match objects::from_listing_since(intent, Some(&self.source.mirror)) {
            Ok(fresh) => {
                let missed = self.source.mirror.differences(&fresh);
                if missed > 0 {
                    if self.watch.is_some() {
                        tracing::warn!(
                            objects = missed,
                            revision = fresh.revision,
                            "the re-list found objects the watch had not delivered"
                        );
                    }
                    self.mirror_changed = true;
                }
                self.source.mirror = fresh;
            }
            Err(ObjectError::Invalid(errors)) => self.refuse_store(&errors),
            Err(ObjectError::Store(e)) => return self.store_failed("cannot list the intent", &e),
            Err(e) => tracing::warn!("cannot read the intent: {e}"),
        }
        if let Some(v) = rest.iter().find(|e| e.key == VERSION_KEY) {
            self.source.version_key = version_of(v);
        }
        let fresh = reported_of(&rest);
        let mut missed = 0;
        for (node, (rev, set)) in &fresh {
            if self.source.reported.get(node).map(|(r, _)| r) != Some(rev) {
                self.reported_changed.insert(node.clone(), set.clone());
                missed += 1;
            }
        }
        for node in self
            .source
            .reported
            .keys()
            .filter(|n| !fresh.contains_key(*n))
        {
            self.reported_changed
                .insert(node.clone(), ReportedSet::default());
            missed += 1;
        }
        if missed > 0 && self.watch.is_some() {
            tracing::warn!(
                nodes = missed,
                revision,
                "the re-list found reported sets the watch had not delivered"
            );
        }
        self.source.reported = fresh;
        self.source.mirror.revision = self.source.mirror.revision.max(revision);
        self.applied = self.applied.max(revision);
        self.last_change = self.last_change.max(last_change(&self.source));
        // What the lists hold, held events up to their revision hold too.
        self.held.retain(|e| e.mod_revision > revision);
        if self.watch.is_none() {
            let from = revision + 1;
            match self.source.store.watch("", from).await {
                Ok(w) => self.watch = Some(w),
                Err(e) => return self.store_failed("cannot watch the store", &e),
            }
        }
        self.store_ok();
    }

    /// [`settle`], with a store failure said in the status.
    async fn settle(&mut self, effective: &mut Effective) -> Option<Published> {
        let fence = self.leader.borrow().clone();
        match settle(
            &self.source.store,
            &mut self.source.version_key,
            fence,
            self.applied,
            effective,
        )
        .await
        {
            Ok(Some(p)) => {
                self.unmatched = None;
                Some(p)
            }
            Ok(None) => {
                self.note_unmatched(effective);
                None
            }
            Err(e) => {
                self.store_failed("cannot write the intent version", &e);
                None
            }
        }
    }

    /// A follower waits for the leader to write its intent's digest. If the
    /// leader's digest stays another one, the replicas merge differently
    /// (different controller versions, say): this replica keeps serving its
    /// last version, and says so once.
    fn note_unmatched(&mut self, effective: &Effective) {
        let Some(mine) = effective.pending_digest() else {
            self.unmatched = None;
            return;
        };
        let theirs = self.source.version_key.as_ref().map(|v| v.digest.as_str());
        if self.leader.borrow().is_some() || theirs.is_none() || theirs == Some(mine) {
            return;
        }
        let theirs = theirs.unwrap_or_default().to_string();
        // A new digest from the leader starts the wait again: under churn a
        // follower may trail the leader's writes without being different.
        if self.unmatched.as_ref().is_none_or(|(_, d, _)| *d != theirs) {
            self.unmatched = Some((Instant::now(), theirs.clone(), false));
        }
        let Some((since, _, logged)) = self.unmatched.as_mut() else {
            return;
        };
        if !*logged && since.elapsed() >= UNMATCHED_WARN {
            *logged = true;
            tracing::warn!(
                mine,
                leader = %theirs,
                "this replica's intent has not matched the leader's for {} s: it keeps serving its last version; replicas that merge the same store differently run different controller versions?",
                UNMATCHED_WARN.as_secs()
            );
        }
    }

    /// Applies a watch's reported-set events.
    fn reported_events(&mut self, events: &[crate::kv::Event]) {
        for e in events {
            let Some(node) = e.key.strip_prefix(reported::PREFIX) else {
                continue;
            };
            let set = match &e.value {
                Some(v) => match reported::from_stored_value(node, v) {
                    Ok(set) => set,
                    Err(err) => {
                        tracing::warn!("ignoring a reported set: {err}");
                        continue;
                    }
                },
                None => ReportedSet::default(),
            };
            if e.value.is_some() {
                self.source
                    .reported
                    .insert(node.to_string(), (e.mod_revision, set.clone()));
            } else {
                self.source.reported.remove(node);
            }
            self.reported_changed.insert(node.to_string(), set);
        }
    }

    /// Writes the sets agents reported into the store (any replica does, for
    /// the node it serves); what cannot be written now is tried again at the
    /// next round. The watch brings them back, to every replica.
    async fn send_reports(&mut self, pending: BTreeMap<String, ReportedSet>) {
        self.unsent.extend(pending);
        if self.unsent.is_empty() {
            return;
        }
        let mut txn = Txn::new();
        for (node, set) in &self.unsent {
            let key = format!("{}{node}", reported::PREFIX);
            if set.workloads.is_empty() && set.errors.is_empty() {
                txn = txn.delete(key);
            } else {
                txn = txn.put(key, reported::stored_value(set));
            }
        }
        match self.source.store.txn(txn).await {
            Ok(_) => self.unsent.clear(),
            Err(e) => {
                self.store_failed("cannot write the reported workloads", &e);
            }
        }
    }

    fn refuse_store(&mut self, errors: &[IntentError]) {
        for e in errors {
            tracing::warn!("{e}");
        }
        tracing::warn!(
            errors = errors.len(),
            "the intent in the store is invalid; the last good intent stays in force"
        );
        self.status.record_reload(self.source_version(), errors);
        self.store_refused = true;
    }

    fn source_version(&self) -> u64 {
        self.status.snapshot().intent_version
    }

    async fn on_watch(&mut self, item: Option<Result<WatchItem, KvError>>) {
        match item {
            Some(Ok(WatchItem::Events(events))) => {
                for e in events.iter().filter(|e| e.key == VERSION_KEY) {
                    self.source.version_key = e.value.as_ref().and_then(|v| {
                        version_of(&crate::kv::Entry {
                            key: e.key.clone(),
                            value: v.clone(),
                            create_revision: 0,
                            mod_revision: e.mod_revision,
                        })
                    });
                }
                let relevant = events
                    .into_iter()
                    .filter(|e| e.key.starts_with(PREFIX) || e.key.starts_with(reported::PREFIX));
                if self.held.is_empty() {
                    self.held_since = Some(Instant::now());
                }
                // Applied by `release_held`, once per round.
                self.held.extend(relevant);
            }
            Some(Ok(WatchItem::Progress(rev))) => {
                self.source.mirror.revision = self.source.mirror.revision.max(rev);
                self.status
                    .record_store(&self.backend(), self.source.mirror.revision, None);
            }
            Some(Ok(WatchItem::Compacted(rev))) => {
                tracing::info!(
                    compacted = rev,
                    "the watch's revision was compacted; re-listing"
                );
                self.watch = None;
                self.relist().await;
            }
            Some(Err(e)) => {
                self.watch = None;
                self.store_failed("the intent watch failed", &e);
            }
            None => {
                self.watch = None;
                self.store_failed(
                    "the intent watch ended",
                    &KvError::Unavailable("watch closed".into()),
                );
            }
        }
    }

    /// Applies the held events this replica may apply now: all of them when
    /// it leads, when the leader does not say what it resolved, when none was
    /// let go for [`HOLD_MAX`], or when it stands where the leader's last
    /// version did; else (behind or ahead of the leader) those up to the
    /// leader's `upto`.
    fn release_held(&mut self) {
        if self.held.is_empty() {
            self.held_since = None;
            return;
        }
        let n = self.releasable();
        if n == 0 {
            return;
        }
        let ready: Vec<crate::kv::Event> = self.held.drain(..n).collect();
        self.held_since = (!self.held.is_empty()).then(Instant::now);
        self.apply_events(ready);
    }

    /// How many held events may be applied now (see [`Self::release_held`]).
    fn releasable(&self) -> usize {
        if self.held.is_empty() {
            return 0;
        }
        let bound = if self.leader.borrow().is_some()
            || self.held_since.is_some_and(|t| t.elapsed() >= HOLD_MAX)
        {
            None
        } else {
            match self.source.version_key.as_ref().and_then(|v| v.upto) {
                // In step with the leader's last version (nothing it did not
                // have applied here, nothing it had still held): what comes
                // now the leader most likely resolves in one round too, so
                // this one resolves it alongside and meets the leader's
                // version as soon as it is written (a change does not wait
                // for two rounds one after the other).
                Some(upto)
                    if self.last_change <= upto
                        && self.held.first().is_some_and(|e| e.mod_revision > upto) =>
                {
                    None
                }
                bound => bound,
            }
        };
        match bound {
            None => self.held.len(),
            Some(upto) => self
                .held
                .iter()
                .take_while(|e| e.mod_revision <= upto)
                .count(),
        }
    }

    /// When held events are let go whatever the leader says.
    fn held_deadline(&self) -> Option<Instant> {
        self.held_since.map(|t| t + HOLD_MAX)
    }

    /// Intent and reported-set events, in revision order, into the mirror.
    fn apply_events(&mut self, events: Vec<crate::kv::Event>) {
        if let Some(last) = events.last() {
            self.applied = self.applied.max(last.mod_revision);
            self.last_change = self.last_change.max(last.mod_revision);
        }
        self.reported_events(&events);
        let intent: Vec<crate::kv::Event> = events
            .into_iter()
            .filter(|e| e.key.starts_with(PREFIX))
            .collect();
        if intent.is_empty() {
            return;
        }
        let errors = self.source.mirror.apply_events(&intent);
        if errors.is_empty() {
            self.mirror_changed = true;
        } else {
            self.refuse_store(&errors);
        }
    }

    /// A reload of the directory was refused: say why; nothing was imported.
    fn refuse_reload(&mut self, dir: &str, errors: &[IntentError]) {
        for e in errors {
            tracing::warn!("{e}");
        }
        tracing::warn!(
            errors = errors.len(),
            "reload of {dir} refused; the last good manifests stay in force"
        );
        let v = self.source_version();
        self.status.record_reload(v, errors);
        self.last_problem.clear();
    }

    /// Imports the files, if they changed.
    async fn import(&mut self, outcome: Outcome, previous: Arc<dpu_model::Intent>) {
        let Some((reloader, source)) = self.source.importer.as_mut() else {
            return;
        };
        let dir = reloader.dir().display().to_string();
        let inputs: Vec<Input> = match outcome {
            Outcome::Unchanged => return,
            Outcome::Refused(ReloadError::Invalid(errors)) => {
                return self.refuse_reload(&dir, &errors);
            }
            Outcome::Refused(e) => {
                let text = e.to_string();
                if text != self.last_problem {
                    tracing::warn!("cannot reload the intent: {text}; retrying");
                    self.last_problem = text;
                }
                return;
            }
            Outcome::Changed(inputs) => inputs,
        };
        let source = source.clone();
        let Some(fence) = self.leader.borrow().clone() else {
            // Leadership went while the files were read: the next leader reads them.
            reloader.retry();
            return;
        };
        let result = objects::import(
            &self.source.store,
            &inputs,
            &source,
            Some(&self.source.mirror),
            Some(&previous),
            Some(fence),
        )
        .await;
        match result {
            Ok(done) if done.written + done.deleted == 0 => {
                tracing::info!(
                    version = self.source_version(),
                    "intent files changed; the intent did not"
                );
                let v = self.source_version();
                self.status.record_reload(v, &[]);
                self.last_problem.clear();
            }
            Ok(done) => {
                tracing::info!(
                    written = done.written,
                    deleted = done.deleted,
                    "intent directory imported into the store"
                );
                self.reload_pending = true;
                self.last_problem.clear();
            }
            Err(ObjectError::Invalid(errors)) => self.refuse_reload(&dir, &errors),
            Err(e) => {
                if let Some((r, _)) = self.source.importer.as_mut() {
                    r.retry();
                }
                match e {
                    ObjectError::Store(e) => self.store_failed("cannot import the intent", &e),
                    other => tracing::warn!("cannot import the intent: {other}; retrying"),
                }
            }
        }
    }
}

/// At most this many more watch items are taken into one round.
const DRAIN_MAX: usize = 1024;

/// Pends forever without a watch.
async fn next_item(watch: &mut Option<Watch>) -> Option<Result<WatchItem, KvError>> {
    match watch {
        Some(w) => w.items.recv().await,
        None => std::future::pending().await,
    }
}

/// Pends forever without a retry due.
async fn retry_due(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The blocking part of a round: poll the directory (when due), resolve the
/// mirror (when it changed), apply the reported sets, commit.
struct Round {
    outcome: Option<Outcome>,
    resolved: Option<Result<(), Vec<IntentError>>>,
    reported_changes: usize,
    commit: Option<Commit>,
}

fn run_round(
    reloader: Option<&mut Reloader>,
    effective: &mut Effective,
    docs: Option<Vec<crate::manifest::Doc>>,
    reports: BTreeMap<String, ReportedSet>,
) -> Round {
    let outcome = reloader.map(|r| r.poll());
    let resolved = docs.map(|docs| {
        let previous = effective.manifests().clone();
        Manifests::resolve_after(docs, &previous).map(|m| effective.set_manifests(m))
    });
    let mut reported_changes = 0;
    for (node, set) in reports {
        if effective.set_reported(&node, set) {
            reported_changes += 1;
        }
    }
    let commit = effective.needs_commit().then(|| effective.commit());
    Round {
        outcome,
        resolved,
        reported_changes,
        commit,
    }
}

fn log_dropped(dropped: &[(String, String)]) {
    for (node, reason) in dropped {
        tracing::warn!(node, "reported workload left out of the intent: {reason}");
    }
}

/// Runs the intent task until shutdown.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    source: IntentSource,
    mut effective: Effective,
    intent: watch::Sender<Arc<Published>>,
    status: StatusHandle,
    reports: Arc<ReportInbox>,
    leader: watch::Receiver<Option<Cmp>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let dir_watch = source
        .importer
        .as_ref()
        .map(|(r, _)| crate::dirwatch::DirWatch::start(r.dir()));
    let poll_every = dir_watch
        .as_ref()
        .map_or(RELIST_EVERY, |d| d.poll_interval());
    let mut ticker = tokio::time::interval(poll_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the directory was just loaded.
    ticker.tick().await;
    let mut relist = tokio::time::interval(RELIST_EVERY);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    relist.tick().await;
    let mut task = Task::new(source, status.clone(), leader);
    // Watch from the revision the start read.
    task.relist().await;
    loop {
        let has_dir = task.source.importer.is_some();
        // Held events that may go now (the round just published the
        // leader's version they follow) go at once; else at the deadline.
        let held_deadline = if task.releasable() > 0 {
            Some(Instant::now())
        } else {
            task.held_deadline()
        };
        let wake = tokio::select! {
            _ = ticker.tick(), if has_dir => Wake::Poll,
            _ = async { dir_watch.as_ref().expect("has_dir").changed().await }, if has_dir => {
                tokio::time::sleep(crate::dirwatch::DEBOUNCE).await;
                Wake::Poll
            }
            _ = reports.arrived() => Wake::Reports,
            item = next_item(&mut task.watch) => Wake::Watch(item),
            _ = relist.tick() => Wake::Relist,
            changed = task.leader.changed() => {
                if changed.is_err() {
                    return;
                }
                // Won: read the directory afresh and import it.
                let leads = task.leader.borrow_and_update().is_some();
                if let (true, Some((r, _))) = (leads, task.source.importer.as_mut()) {
                    r.retry();
                }
                Wake::Poll
            }
            _ = retry_due(task.retry_at) => Wake::Relist,
            _ = retry_due(held_deadline) => Wake::Held,
            _ = shutdown_requested(&mut shutdown) => return,
        };
        // Only the leader reads the directory (and imports it).
        let poll = matches!(wake, Wake::Poll) && task.leader.borrow().is_some();
        match wake {
            Wake::Watch(item) => {
                task.on_watch(item).await;
                // What else the watch holds joins this round: under churn one
                // round takes every change that came while the last one ran,
                // rather than a round (a resolve, a version) each.
                for _ in 0..DRAIN_MAX {
                    let Some(item) = task.watch.as_mut().and_then(|w| w.items.try_recv().ok())
                    else {
                        break;
                    };
                    task.on_watch(Some(item)).await;
                }
            }
            Wake::Relist => task.relist().await,
            Wake::Poll | Wake::Reports | Wake::Held => {}
        }
        // Once per round, after every event this wake brought: so that a
        // follower behind the leader's version resolves exactly that version
        // before it goes on (a leader follows no one: it applies all).
        task.release_held();
        // The blocking part, on a blocking thread.
        let docs = std::mem::take(&mut task.mirror_changed).then(|| task.source.mirror.docs());
        task.send_reports(reports.take()).await;
        let pending = std::mem::take(&mut task.reported_changed);
        // The importer goes to the blocking thread and comes back.
        let mut importer = if poll {
            task.source.importer.take()
        } else {
            None
        };
        let ran = tokio::task::spawn_blocking(move || {
            let round = run_round(
                importer.as_mut().map(|(r, _)| r),
                &mut effective,
                docs,
                pending,
            );
            (importer, effective, round)
        })
        .await;
        let (importer, round);
        (importer, effective, round) = match ran {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the intent task failed; intent changes stop");
                return;
            }
        };
        if importer.is_some() {
            task.source.importer = importer;
        }
        if let Some(outcome) = round.outcome {
            let previous = effective.manifests().intent.clone();
            task.import(outcome, previous).await;
        }
        if let Some(Err(errors)) = &round.resolved {
            task.refuse_store(errors);
            task.reload_pending = false;
        }
        let resolved = matches!(round.resolved, Some(Ok(())));
        if let Some(c) = round.commit {
            log_dropped(&c.newly_dropped);
            status.record_reported(effective.summaries());
            reports.set_reporters(effective.summaries().keys().cloned());
            if effective.pending_digest().is_none() && task.reload_pending {
                tracing::info!(
                    version = effective.version(),
                    "intent files changed; the intent did not"
                );
            }
        }
        // The version: the store's, for every replica alike.
        if let Some(p) = task.settle(&mut effective).await {
            tracing::info!(
                version = p.version,
                objects = p.intent.len(),
                reload = task.reload_pending,
                reported_changes = round.reported_changes,
                "new intent version"
            );
            status.set_intent_version(p.version);
            intent.send_replace(Arc::new(p));
        }
        if resolved
            && effective.pending_digest().is_none()
            && (task.reload_pending || task.store_refused)
        {
            status.record_reload(effective.version(), &[]);
            task.reload_pending = false;
            task.store_refused = false;
            task.last_problem.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{LocalStore, Txn};

    pub(super) const VPC: &str =
        "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a}\nspec: {vni: 1}\n";

    pub(super) fn task(store: Store, mirror: Current, dir: &std::path::Path) -> Task {
        let source = IntentSource {
            store,
            importer: None,
            mirror,
            reported: BTreeMap::new(),
            version_key: None,
        };
        let (_tx, leader) = watch::channel(None);
        Task::new(source, StatusHandle::new(dir), leader)
    }

    /// A delete the watch never delivered (its revision compacted away) is
    /// caught by the re-list that `Compacted` starts, and the watch resumes.
    #[tokio::test]
    async fn compaction_relists_and_sweeps_a_missed_delete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = Store::Local(LocalStore::open(&path).unwrap());
        let two = format!(
            "{VPC}---\n{}",
            VPC.replace("name: a", "name: b")
                .replace("vni: 1", "vni: 2")
        );
        let f = dir.path().join("v.yaml");
        std::fs::write(&f, two).unwrap();
        let inputs = objects::read_inputs(f.to_str().unwrap()).unwrap();
        objects::apply(&store, &inputs, "apply").await.unwrap();
        let mirror = objects::current(&store).await.unwrap();
        let mut t = task(store, mirror, dir.path());
        // Another process deletes b and compacts past it.
        let other = LocalStore::open(&path).unwrap();
        let r = other
            .txn(Txn::new().delete("intent/Vpc/b").put(objects::GUARD, "x"))
            .unwrap();
        other.compact(r.revision).unwrap();
        t.on_watch(Some(Ok(WatchItem::Compacted(r.revision)))).await;
        assert!(t.mirror_changed);
        let keys: Vec<&String> = t.source.mirror.objects.keys().collect();
        assert_eq!(keys, ["intent/Vpc/a"]);
        assert_eq!(t.source.mirror.revision, r.revision);
        assert!(t.watch.is_some(), "the watch resumes after the re-list");
        assert_eq!(t.status.snapshot().store.state, "ok");
    }

    /// A failed watch marks the store unavailable and schedules a retry that
    /// backs off; the mirror (the intent in force) is kept.
    #[tokio::test]
    async fn a_failed_watch_keeps_the_mirror_and_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(LocalStore::open(&dir.path().join("store")).unwrap());
        let mut t = task(store, Current::default(), dir.path());
        t.on_watch(Some(Err(KvError::Unavailable("gone".into()))))
            .await;
        let st = t.status.snapshot().store;
        assert_eq!(st.state, "unavailable");
        assert!(st
            .error
            .unwrap()
            .contains("the intent watch failed: store unavailable: gone"));
        assert!(t.retry_at.is_some());
        assert_eq!(t.retry_wait, RETRY_MIN * 2);
        t.on_watch(None).await;
        assert_eq!(t.retry_wait, RETRY_MIN * 4);
        // The retry re-lists and watches again.
        t.relist().await;
        assert!(t.watch.is_some() && t.retry_at.is_none());
        assert_eq!(t.status.snapshot().store.state, "ok");
    }
}

#[cfg(test)]
mod reported_tests {
    use super::*;
    use crate::kv::LocalStore;
    use dpu_proto::v1 as pb;

    fn set(ip: &str) -> ReportedSet {
        reported::check_report(
            "dpu-1",
            &[pb::Workload {
                name: "pod-a".into(),
                kind: pb::WorkloadKind::Pod as i32,
                vpc: "blue".into(),
                ip: ip.into(),
                ipv6: String::new(),
                mac: "02:00:00:00:01:1e".into(),
                labels: Default::default(),
                node: "dpu-1".into(),
                port: "pod-a-eth0".into(),
            }],
        )
    }

    /// A state directory from before the store: its reported sets move into
    /// the store once, and the store is the truth from then on.
    #[tokio::test]
    async fn the_old_reported_file_moves_into_the_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = reported::ReportedStore::open(dir.path()).unwrap();
        old.replace("dpu-1", set("10.1.1.30"));
        old.save().unwrap();
        let store = Store::Local(LocalStore::open(&dir.path().join("store")).unwrap());
        let sets = start_reported(&store, dir.path()).await.unwrap();
        assert_eq!(sets["dpu-1"].1, set("10.1.1.30"));
        let (_, e) = store.get("reported/dpu-1").await.unwrap();
        assert!(e.unwrap().value.contains("10.1.1.30"));
        // The store changes; the file is not read again.
        store
            .txn(Txn::new().put("reported/dpu-1", reported::stored_value(&set("10.1.1.31"))))
            .await
            .unwrap();
        let sets = start_reported(&store, dir.path()).await.unwrap();
        assert_eq!(sets["dpu-1"].1, set("10.1.1.31"));
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;
    use crate::kv::LocalStore;

    fn vpcs(names: &[(&str, u32)]) -> String {
        names
            .iter()
            .map(|(n, v)| {
                format!("---\napiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {{name: {n}}}\nspec: {{vni: {v}}}\n")
            })
            .collect()
    }

    async fn apply_text(store: &Store, dir: &std::path::Path, text: &str) {
        let f = dir.join("in.yaml");
        std::fs::write(&f, text).unwrap();
        let inputs = objects::read_inputs(f.to_str().unwrap()).unwrap();
        objects::apply(store, &inputs, "apply").await.unwrap();
    }

    /// A follower that read the store before the leader imported more (and
    /// versioned that) reads again, and starts at the leader's version.
    #[tokio::test]
    async fn a_follower_behind_the_leader_s_version_reads_again_and_meets_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(LocalStore::open(&dir.path().join("store")).unwrap());
        apply_text(&store, dir.path(), &vpcs(&[("a", 1)])).await;
        let (_tx, mut follower) = watch::channel(None);
        let (mut source, manifests) = start(store.clone(), dir.path(), None, &mut follower)
            .await
            .unwrap();
        let mut effective = Effective::new(manifests, "c", source.reported_sets());

        // The leader (another handle) imports b and versions {a, b}.
        let other = Store::Local(LocalStore::open(&dir.path().join("store")).unwrap());
        apply_text(&other, dir.path(), &vpcs(&[("a", 1), ("b", 2)])).await;
        let now = objects::current(&other).await.unwrap();
        let mut theirs = Effective::new(
            Manifests::resolve(now.docs()).unwrap(),
            "c",
            BTreeMap::new(),
        );
        theirs.commit();
        let (mut key, lead) = (None, Some(Cmp::CreateRevision("nothing".into(), 0)));
        let p = settle(&other, &mut key, lead, now.revision, &mut theirs)
            .await
            .unwrap()
            .unwrap();

        let mine = tokio::time::timeout(
            Duration::from_secs(5),
            first_version(&mut source, &mut effective, &mut follower),
        )
        .await
        .expect("the follower meets the leader's version")
        .unwrap();
        assert_eq!(mine.version, p.version);
        assert!(mine.intent.vpcs.contains_key("b"));
    }

    fn put(key: &str, manifest: &str, rev: Revision) -> crate::kv::Event {
        let value = serde_json::json!({"source": "apply:test", "manifest": manifest});
        crate::kv::Event {
            kind: crate::kv::EventKind::Put,
            key: key.into(),
            value: Some(value.to_string()),
            mod_revision: rev,
        }
    }

    fn version(rev: Revision, upto: Option<Revision>) -> crate::kv::Event {
        let value = serde_json::to_string(&VersionValue {
            digest: format!("d{rev}"),
            upto,
        })
        .unwrap();
        crate::kv::Event {
            kind: crate::kv::EventKind::Put,
            key: VERSION_KEY.into(),
            value: Some(value),
            mod_revision: rev,
        }
    }

    fn vpc_names(t: &Task) -> Vec<String> {
        t.source
            .mirror
            .objects
            .keys()
            .filter_map(|k| k.strip_prefix("intent/Vpc/"))
            .map(str::to_string)
            .collect()
    }

    /// A follower in step with the leader's last version applies what comes
    /// at once (the leader resolves it alongside); once it is ahead of the
    /// leader, or behind, it applies events only as far as the leader's next
    /// version says it resolved (`upto`), so that its round resolves what the
    /// leader's did and the digests meet; what it holds for HOLD_MAX without
    /// a version, it applies anyway.
    #[tokio::test(start_paused = true)]
    async fn a_follower_applies_events_only_as_far_as_the_leader_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(LocalStore::open(&dir.path().join("store")).unwrap());
        apply_text(&store, dir.path(), super::tests::VPC).await;
        let mirror = objects::current(&store).await.unwrap();
        let r0 = mirror.revision;
        let mut t = super::tests::task(store, mirror, dir.path());
        let vpc = |name: &str, vni: u32| {
            super::tests::VPC
                .replace("name: a", &format!("name: {name}"))
                .replace("vni: 1", &format!("vni: {vni}"))
        };
        let events = |evs: Vec<crate::kv::Event>| Some(Ok(WatchItem::Events(evs)));

        // Each `on_watch` then `release_held`, as a round does.
        // In step (the leader versioned r0): b and c go in at once.
        t.on_watch(events(vec![version(r0 + 1, Some(r0))])).await;
        t.release_held();
        t.on_watch(events(vec![
            put("intent/Vpc/b", &vpc("b", 2), r0 + 2),
            put("intent/Vpc/c", &vpc("c", 3), r0 + 3),
        ]))
        .await;
        t.release_held();
        assert_eq!(vpc_names(&t), ["a", "b", "c"]);
        assert_eq!(t.applied, r0 + 3);

        // The leader versioned b only: this replica is ahead, and holds d and
        // e until a version covers them.
        t.on_watch(events(vec![version(r0 + 4, Some(r0 + 2))]))
            .await;
        t.release_held();
        t.mirror_changed = false;
        t.on_watch(events(vec![
            put("intent/Vpc/d", &vpc("d", 4), r0 + 5),
            put("intent/Vpc/e", &vpc("e", 5), r0 + 6),
        ]))
        .await;
        t.release_held();
        assert_eq!(vpc_names(&t), ["a", "b", "c"], "held until versioned");
        assert!(!t.mirror_changed);

        // The leader's next round ended at d: d goes in, e stays held (this
        // round resolves what the leader's did).
        t.on_watch(events(vec![version(r0 + 7, Some(r0 + 5))]))
            .await;
        t.release_held();
        assert_eq!(vpc_names(&t), ["a", "b", "c", "d"]);
        assert_eq!(t.applied, r0 + 5);
        assert!(t.mirror_changed);
        assert_eq!(t.held.len(), 1);

        // In step again: at the next round e goes in, ahead of the leader's
        // next version.
        t.release_held();
        assert_eq!(vpc_names(&t), ["a", "b", "c", "d", "e"]);

        // The leader's version ends before e again, and then no version
        // comes: f waits HOLD_MAX, then goes in.
        t.on_watch(events(vec![version(r0 + 8, Some(r0 + 5))]))
            .await;
        t.release_held();
        t.on_watch(events(vec![put("intent/Vpc/f", &vpc("f", 6), r0 + 9)]))
            .await;
        t.release_held();
        assert_eq!(vpc_names(&t), ["a", "b", "c", "d", "e"]);
        let deadline = t.held_deadline().expect("f is held");
        tokio::time::advance(HOLD_MAX - Duration::from_millis(10)).await;
        t.release_held();
        assert_eq!(vpc_names(&t), ["a", "b", "c", "d", "e"], "within HOLD_MAX");
        tokio::time::sleep_until(deadline).await;
        t.release_held();
        assert_eq!(vpc_names(&t), ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(t.held_deadline(), None);

        // A leader that does not say `upto` (an older controller) holds
        // nothing back.
        t.on_watch(events(vec![
            version(r0 + 10, None),
            put("intent/Vpc/g", &vpc("g", 7), r0 + 11),
        ]))
        .await;
        t.release_held();
        assert_eq!(vpc_names(&t), ["a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(t.applied, r0 + 11);
    }
}
