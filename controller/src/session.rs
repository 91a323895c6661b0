//! The per-node update state machine, without I/O.
//!
//! It decides what to send a node: nothing (the agent already has the version),
//! a snapshot (first contact, or after a NACK), or an incremental update against
//! the view it last sent. It also matches Acks and Nacks to the updates it sent by
//! version and nonce. `hub` drives it from the gRPC stream.

use std::collections::VecDeque;
use std::sync::Arc;

use dpu_model::{key_to_proto, object_to_proto, Intent, Object, ObjectKey};
use dpu_proto::v1 as pb;
use rand::RngCore;

use crate::view::{diff, node_view, View};

/// One version of the whole intent, as published to sessions.
#[derive(Debug, Clone)]
pub struct Published {
    pub version: u64,
    pub intent: Arc<Intent>,
    /// Which numbering `version` belongs to (`Update.store_id`): the store's
    /// cluster id, as `<cluster id>/rev` (versions are its revisions).
    pub store_id: Arc<str>,
}

/// How many sent-but-unanswered updates are remembered for matching replies.
const MAX_OUTSTANDING: usize = 64;

#[derive(Debug)]
struct Sent {
    version: u64,
    view: View,
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
}

impl SessionCore {
    pub fn new(node: &str) -> Self {
        SessionCore {
            node: node.to_string(),
            sent: None,
            need_snapshot: false,
            outstanding: VecDeque::new(),
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
            self.sent = Some(Sent {
                version: current.version,
                view: node_view(&current.intent, &self.node),
            });
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
            self.sent = Some(Sent {
                version: e.version,
                view: node_view(&e.intent, &self.node),
            });
            return self.on_version(current);
        }
        Some(self.snapshot(current))
    }

    /// The update for a newly published version: an incremental one (possibly
    /// empty, so the agent's version still advances), or a snapshot when one is
    /// owed. Nothing if this version was already sent.
    pub fn on_version(&mut self, current: &Published) -> Option<pb::Update> {
        let sent = match &self.sent {
            Some(s) if s.version == current.version => return None,
            Some(s) if !self.need_snapshot => s,
            _ => return Some(self.snapshot(current)),
        };
        let base = sent.version;
        let view = node_view(&current.intent, &self.node);
        let delta = diff(&sent.view, &view);
        let update = self.update(current, base, false, &delta.upserts, &delta.deletes);
        self.sent = Some(Sent {
            version: current.version,
            view,
        });
        Some(update)
    }

    fn snapshot(&mut self, current: &Published) -> pb::Update {
        let view = node_view(&current.intent, &self.node);
        let objects: Vec<Object> = view.values().cloned().collect();
        let update = self.update(current, 0, true, &objects, &[]);
        self.need_snapshot = false;
        self.sent = Some(Sent {
            version: current.version,
            view,
        });
        update
    }

    fn update(
        &mut self,
        current: &Published,
        base_version: u64,
        snapshot: bool,
        upserts: &[Object],
        deletes: &[ObjectKey],
    ) -> pb::Update {
        let version = current.version;
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
            store_id: current.store_id.to_string(),
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
        Published {
            version,
            intent: Arc::new(i),
            store_id: STORE.into(),
        }
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
}
