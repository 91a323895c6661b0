//! The per-node update state machine, without I/O.
//!
//! It decides what to send a node: nothing (the agent already has the version),
//! a snapshot (first contact, or after a NACK), or an incremental update against
//! the view it last sent. It also matches Acks and Nacks to the updates it sent by
//! version and nonce. `hub` drives it from the gRPC stream.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use dpu_model::{key_to_proto, object_to_proto, Intent, Object, ObjectKey};
use dpu_proto::v1 as pb;
use rand::RngCore;

use crate::view::{changes, delta_in, diff, view_in, Changed, Scope, ScopeIndex};

/// One version of the whole intent, as published to sessions.
#[derive(Debug, Clone)]
pub struct Published {
    pub version: u64,
    pub intent: Arc<Intent>,
    /// Which numbering `version` belongs to (`Update.store_id`): the store's
    /// cluster id, as `<cluster id>/rev` (versions are its revisions).
    pub store_id: Arc<str>,
    /// The version published before this one and what changed since, so that
    /// a session at that version costs the change, not the intent.
    pub base: Option<Arc<Base>>,
    /// Every node's scope is worked out from this, built once per version
    /// when the first session asks.
    scopes: Arc<OnceLock<ScopeIndex>>,
}

/// The version before a [`Published`] one.
#[derive(Debug)]
pub struct Base {
    pub version: u64,
    pub intent: Arc<Intent>,
    /// The keys whose objects differ, in key order, with their holders.
    pub changed: Vec<Changed>,
}

impl Published {
    pub fn new(version: u64, intent: Arc<Intent>, store_id: Arc<str>) -> Self {
        Published {
            version,
            intent,
            store_id,
            base: None,
            scopes: Arc::default(),
        }
    }

    /// This version, published after `base_version` whose intent was `base`.
    pub fn after(mut self, base_version: u64, base: Arc<Intent>) -> Self {
        let changed = changes(&base, &self.intent);
        self.base = Some(Arc::new(Base {
            version: base_version,
            intent: base,
            changed,
        }));
        self
    }

    /// What `node` takes part in at this version.
    pub fn scope(&self, node: &str) -> Arc<Scope> {
        self.scopes
            .get_or_init(|| ScopeIndex::build(&self.intent))
            .shared_scope(&self.intent, node)
    }
}

/// How many sent-but-unanswered updates are remembered for matching replies.
const MAX_OUTSTANDING: usize = 64;

/// What the agent has (or will have): a version, its intent and the node's
/// scope in it. Sessions at one version share the intent.
#[derive(Debug)]
struct Sent {
    version: u64,
    intent: Arc<Intent>,
    scope: Arc<Scope>,
    store_id: Arc<str>,
}

impl Sent {
    fn of(p: &Published, node: &str) -> Self {
        Sent {
            version: p.version,
            intent: p.intent.clone(),
            scope: p.scope(node),
            store_id: p.store_id.clone(),
        }
    }
}

#[derive(Debug)]
pub struct SessionCore {
    node: String,
    /// What the agent has, or will have once it applies what was sent.
    sent: Option<Sent>,
    /// The next update must be a snapshot (after a NACK).
    need_snapshot: bool,
    /// (version, nonce) of updates not yet answered, oldest first.
    outstanding: VecDeque<(u64, String)>,
    /// The version of the last update sent (or the agent's, when it needed
    /// none): the base of the next increment. Behind `sent` while versions
    /// that changed nothing for the node are held back (`quiet`).
    told: u64,
    /// `sent` is ahead of `told` by versions that changed nothing here.
    quiet: bool,
}

/// Versions that change nothing for a node are told to it (one empty update
/// for all of them) once no version came for this long, so a change elsewhere
/// in the fleet costs the node nothing at the time ...
pub const QUIET_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);
/// ... and at least this often while versions keep coming (churn elsewhere).
pub const QUIET_MAX: std::time::Duration = std::time::Duration::from_secs(10);

impl SessionCore {
    pub fn new(node: &str) -> Self {
        SessionCore {
            node: node.to_string(),
            sent: None,
            need_snapshot: false,
            outstanding: VecDeque::new(),
            told: 0,
            quiet: false,
        }
    }

    /// The first update after Hello, if any. An agent that already applied the
    /// current version (and has no NACK pending) gets nothing; anyone else gets a
    /// snapshot.
    ///
    /// `earlier` is the version the agent says it has, when the controller
    /// still holds it (`Hub`'s recent versions): an agent a little behind gets
    /// the increment from there instead of a snapshot.
    pub fn start(
        &mut self,
        hello_version: u64,
        hello_store_id: &str,
        nack_pending: bool,
        current: &Published,
        earlier: Option<&Published>,
    ) -> Option<pb::Update> {
        // A version compares only within one numbering: an agent that says
        // none (an older agent) or another one gets a snapshot.
        let same = hello_store_id == &*current.store_id;
        if hello_version != 0 && hello_version == current.version && same && !nack_pending {
            self.sent = Some(Sent::of(current, &self.node));
            self.told = current.version;
            return None;
        }
        let earlier = earlier.filter(|e| {
            same && !nack_pending
                && hello_version != 0
                && e.version == hello_version
                && e.version < current.version
                && e.store_id == current.store_id
        });
        if let Some(e) = earlier {
            self.sent = Some(Sent::of(e, &self.node));
            self.told = e.version;
            return self.on_version(current);
        }
        Some(self.snapshot(current))
    }

    /// The update for a newly published version: an incremental one (possibly
    /// empty, so the agent's version still advances), or a snapshot when one is
    /// owed. Nothing if this version was already sent.
    pub fn on_version(&mut self, current: &Published) -> Option<pb::Update> {
        self.next(current, false)
    }

    /// As [`SessionCore::on_version`], but a version that changes nothing for
    /// this node is not sent: it is held back (`is_quiet`) until
    /// [`SessionCore::flush`] or the next version that does change something,
    /// which then covers it.
    pub fn on_version_quietly(&mut self, current: &Published) -> Option<pb::Update> {
        self.next(current, true)
    }

    /// Whether versions are held back (see `on_version_quietly`).
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// The empty update that tells the agent the versions held back, if any.
    pub fn flush(&mut self) -> Option<pb::Update> {
        if !std::mem::take(&mut self.quiet) || self.need_snapshot {
            return None;
        }
        let sent = self.sent.as_ref()?;
        let (version, store_id) = (sent.version, sent.store_id.clone());
        Some(self.update(version, &store_id, self.told, false, &[], &[]))
    }

    fn next(&mut self, current: &Published, quietly: bool) -> Option<pb::Update> {
        let sent = match &self.sent {
            Some(s) if s.version == current.version => return None,
            Some(s) if !self.need_snapshot => s,
            _ => return Some(self.snapshot(current)),
        };
        let scope = current.scope(&self.node);
        // From the version just before, with the same scope: only what
        // changed is looked at. Otherwise both views are worked out.
        let delta = match &current.base {
            Some(b) if b.version == sent.version && sent.scope == scope => {
                delta_in(&current.intent, &b.changed, &scope)
            }
            _ => diff(
                &view_in(&sent.intent, &sent.scope),
                &view_in(&current.intent, &scope),
            ),
        };
        self.sent = Some(Sent {
            version: current.version,
            intent: current.intent.clone(),
            scope,
            store_id: current.store_id.clone(),
        });
        if quietly && delta.upserts.is_empty() && delta.deletes.is_empty() {
            self.quiet = true;
            return None;
        }
        self.quiet = false;
        Some(self.update(
            current.version,
            &current.store_id,
            self.told,
            false,
            &delta.upserts,
            &delta.deletes,
        ))
    }

    fn snapshot(&mut self, current: &Published) -> pb::Update {
        let sent = Sent::of(current, &self.node);
        let objects: Vec<Object> = view_in(&sent.intent, &sent.scope).into_values().collect();
        let update = self.update(current.version, &current.store_id, 0, true, &objects, &[]);
        self.need_snapshot = false;
        self.quiet = false;
        self.sent = Some(sent);
        update
    }

    fn update(
        &mut self,
        version: u64,
        store_id: &str,
        base_version: u64,
        snapshot: bool,
        upserts: &[Object],
        deletes: &[ObjectKey],
    ) -> pb::Update {
        self.told = version;
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        self.outstanding.push_back((version, nonce.clone()));
        while self.outstanding.len() > MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        pb::Update {
            version,
            nonce,
            snapshot,
            base_version,
            upserts: upserts.iter().map(object_to_proto).collect(),
            deletes: deletes.iter().map(key_to_proto).collect(),
            store_id: store_id.to_string(),
        }
    }

    /// Removes the matching outstanding update and every older one (a reply to a
    /// later update answers for them). False if nothing matches.
    fn settle(&mut self, version: u64, nonce: &str) -> bool {
        let Some(i) = self
            .outstanding
            .iter()
            .position(|(v, n)| *v == version && n == nonce)
        else {
            return false;
        };
        self.outstanding.drain(..=i);
        true
    }

    /// An Ack; false (ignore it) if it matches no update sent.
    pub fn on_ack(&mut self, version: u64, nonce: &str) -> bool {
        self.settle(version, nonce)
    }

    /// A Nack; false (ignore it) if it matches no update sent. A matching one
    /// makes the next update a snapshot: the agent kept its last good state, which
    /// is no longer what `sent` says.
    pub fn on_nack(&mut self, version: u64, nonce: &str) -> bool {
        let matched = self.settle(version, nonce);
        if matched {
            self.need_snapshot = true;
        }
        matched
    }

    /// After a NACK of `current`'s version that only the switch caused (it may
    /// take the same update later: a table had no room, a resource was short), the
    /// snapshot to try again. Nothing if no snapshot is owed.
    pub fn retry(&mut self, current: &Published) -> Option<pb::Update> {
        self.need_snapshot.then(|| self.snapshot(current))
    }

    #[cfg(test)]
    pub fn sent_version(&self) -> Option<u64> {
        self.sent.as_ref().map(|s| s.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_model::{Vpc, Workload, WorkloadKind};

    fn published(version: u64, port: &str, with_probe_vpc: bool) -> Published {
        let mut i = Intent::default();
        i.upsert(Object::Vpc(Vpc {
            name: "blue".into(),
            vni: 1,
        }));
        if with_probe_vpc {
            i.upsert(Object::Vpc(Vpc {
                name: "green".into(),
                vni: 2,
            }));
        }
        i.upsert(Object::Workload(Workload {
            name: "w".into(),
            kind: WorkloadKind::Pod,
            vpc: "blue".into(),
            ip: "10.0.0.2".parse().unwrap(),
            ipv6: None,
            mac: None,
            labels: Default::default(),
            node: "dpu-1".into(),
            port: port.into(),
        }));
        Published::new(version, Arc::new(i), STORE.into())
    }

    const STORE: &str = "c1/l1";

    fn keys(u: &pb::Update) -> Vec<String> {
        u.upserts
            .iter()
            .map(|o| dpu_model::object_from_proto(o).unwrap().key().to_string())
            .collect()
    }

    #[test]
    fn hello_at_current_version_gets_nothing_else_a_snapshot() {
        let p = published(5, "a", false);
        let mut s = SessionCore::new("dpu-1");
        assert!(s.start(5, STORE, false, &p, None).is_none());
        assert_eq!(s.sent_version(), Some(5));

        let mut s = SessionCore::new("dpu-1");
        let u = s
            .start(5, STORE, true, &p, None)
            .expect("a pending NACK forces a snapshot");
        assert!(u.snapshot);

        // The same version in another numbering (another store or counter),
        // or none (an agent older than store_id): a snapshot.
        for other in ["c2/l1", ""] {
            let mut s = SessionCore::new("dpu-1");
            let u = s
                .start(5, other, false, &p, None)
                .expect("another numbering");
            assert!(u.snapshot);
            assert_eq!(u.store_id, STORE);
        }

        let mut s = SessionCore::new("dpu-1");
        let u = s.start(4, STORE, false, &p, None).unwrap();
        assert!(u.snapshot);
        assert_eq!((u.version, u.base_version), (5, 0));
        assert_eq!(keys(&u), ["Vpc/blue", "Workload/w"]);
        assert!(!u.nonce.is_empty());
    }

    #[test]
    fn an_agent_a_little_behind_gets_the_increment_from_its_version() {
        let old = published(3, "a", false);
        let now = published(5, "b", false);
        let mut s = SessionCore::new("dpu-1");
        let u = s.start(3, STORE, false, &now, Some(&old)).unwrap();
        assert!(!u.snapshot);
        assert_eq!((u.version, u.base_version), (5, 3));
        assert_eq!(keys(&u), ["Workload/w"]);
        // Not for another numbering, a pending NACK, or a version it does not
        // hold: a snapshot.
        for (store, nack, earlier) in [
            ("c2/rev", false, Some(&old)),
            (STORE, true, Some(&old)),
            (STORE, false, None),
        ] {
            let mut s = SessionCore::new("dpu-1");
            assert!(s.start(3, store, nack, &now, earlier).unwrap().snapshot);
        }
        let mut s = SessionCore::new("dpu-1");
        let other = published(4, "a", false);
        assert!(
            s.start(3, STORE, false, &now, Some(&other))
                .unwrap()
                .snapshot
        );
    }

    #[test]
    fn new_versions_are_incremental_and_always_sent() {
        let mut s = SessionCore::new("dpu-1");
        s.start(0, STORE, false, &published(1, "a", false), None)
            .unwrap();
        let u = s.on_version(&published(2, "b", false)).unwrap();
        assert!(!u.snapshot);
        assert_eq!((u.version, u.base_version), (2, 1));
        assert_eq!(keys(&u), ["Workload/w"]);
        assert!(u.deletes.is_empty());
        // A version that changes nothing for this node is still sent, empty.
        let u = s.on_version(&published(3, "b", true)).unwrap();
        assert_eq!((u.version, u.base_version), (3, 2));
        assert!(u.upserts.is_empty() && u.deletes.is_empty());
        // The same version twice is sent once.
        assert!(s.on_version(&published(3, "b", true)).is_none());
    }

    #[test]
    fn replies_must_match_version_and_nonce_and_nack_forces_snapshot() {
        let mut s = SessionCore::new("dpu-1");
        let first = s
            .start(0, STORE, false, &published(1, "a", false), None)
            .unwrap();
        let second = s.on_version(&published(2, "b", false)).unwrap();
        assert_ne!(first.nonce, second.nonce);
        assert!(!s.on_ack(2, &first.nonce), "wrong nonce for the version");
        assert!(!s.on_ack(3, &second.nonce), "a version never sent");
        assert!(s.on_nack(2, &second.nonce));
        assert!(!s.on_ack(1, &first.nonce), "settled by the later reply");

        let u = s.on_version(&published(3, "c", false)).unwrap();
        assert!(u.snapshot, "the update after a NACK is a snapshot");
        assert_eq!(u.base_version, 0);
        let u = s.on_version(&published(4, "d", false)).unwrap();
        assert!(!u.snapshot, "and only that one");
        assert_eq!(keys(&u), ["Workload/w"]);
        assert!(s.on_ack(4, &u.nonce));
    }

    /// From the version just before (the usual case) a session sends what
    /// changed, worked out from the changed keys; the same update as from
    /// whole views, which is what a session further behind gets.
    #[test]
    fn an_increment_from_the_base_equals_one_from_whole_views() {
        let (p1, p2) = (published(1, "a", false), published(2, "b", true));
        let chained =
            Published::new(2, p2.intent.clone(), STORE.into()).after(1, p1.intent.clone());
        assert_eq!(
            chained
                .base
                .as_ref()
                .unwrap()
                .changed
                .iter()
                .map(|c| c.key.to_string())
                .collect::<Vec<_>>(),
            ["Vpc/green", "Workload/w"]
        );
        let mut fast = SessionCore::new("dpu-1");
        let mut slow = SessionCore::new("dpu-1");
        fast.start(0, STORE, false, &p1, None).unwrap();
        slow.start(0, STORE, false, &p1, None).unwrap();
        let a = fast.on_version(&chained).unwrap();
        let b = slow.on_version(&p2).unwrap();
        assert_eq!((a.base_version, a.snapshot), (1, false));
        assert_eq!(keys(&a), keys(&b));
        assert_eq!(keys(&a), ["Workload/w"], "green holds nothing of dpu-1");
        assert_eq!(a.deletes, b.deletes);
    }

    /// Versions that change nothing for the node are held back; the next one
    /// that does is based on the last version sent, and a flush tells the
    /// agent the held ones in one empty update.
    #[test]
    fn versions_that_change_nothing_here_are_held_back_then_flushed() {
        let mut s = SessionCore::new("dpu-1");
        let p1 = published(1, "a", false);
        assert!(s.start(0, STORE, false, &p1, None).unwrap().snapshot);
        assert!(s.flush().is_none(), "nothing held");
        // Version 2 adds a VPC dpu-1 is not in.
        let p2 = published(2, "a", true);
        assert!(s.on_version_quietly(&p2).is_none());
        assert!(s.is_quiet());
        // Version 3 changes dpu-1's workload: sent on top of version 1.
        let p3 = published(3, "b", true);
        let u = s.on_version_quietly(&p3).unwrap();
        assert_eq!((u.version, u.base_version), (3, 1));
        assert_eq!(keys(&u), ["Workload/w"]);
        assert!(!s.is_quiet() && s.flush().is_none());
        // Version 4 changes nothing here again; the flush says so.
        let p4 = published(4, "b", false);
        assert!(s.on_version_quietly(&p4).is_none());
        let f = s.flush().unwrap();
        assert_eq!((f.version, f.base_version, f.snapshot), (4, 3, false));
        assert!(f.upserts.is_empty() && f.deletes.is_empty());
        assert!(s.on_ack(4, &f.nonce));
        // After a NACK a snapshot is owed: nothing is flushed meanwhile.
        let p5 = published(5, "b", true);
        assert!(s.on_version_quietly(&p5).is_none());
        let u = s.on_version(&published(6, "c", true)).unwrap();
        assert!(s.on_nack(6, &u.nonce));
        assert!(s.flush().is_none());
        assert!(
            s.on_version_quietly(&published(7, "c", false))
                .unwrap()
                .snapshot
        );
    }
}
