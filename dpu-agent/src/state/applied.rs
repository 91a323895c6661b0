//! The applied state and the update path: what the agent loop holds between
//! updates (intent, its validation index, allocations, the incremental compiler,
//! the journal's size) and the steps from an Update to its Ack or Nack. Every
//! step costs O(the change) for an increment that changes Services (see
//! docs/agent.md, "Incremental updates"); snapshots and changes of VPCs, nodes
//! or node facts take the whole-intent path.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpu_model::{Index, Intent, Kind, ObjectKey, Workload};
use dpu_proto::v1 as pb;
use prost::Message as _;

use crate::compile::incremental::{IncrementalCompiler, Step};
use crate::compile::NodeFacts;
use crate::reconcile::backend::{OpenFlowBackend, OpenFlowError};
use crate::reconcile::{ApplyStats, Reconciler};
use crate::state::alloc::Allocations;
use crate::state::store::{Persisted, Store};
use crate::state::update::{apply_update, encode_snapshot, Refusal};

/// Compact (write the whole intent, empty the journal) after this many
/// journaled updates or this many journal bytes, whichever comes first.
pub const COMPACT_RECORDS: usize = 1024;
pub const COMPACT_BYTES: u64 = 16 << 20;

/// The applied state, changed only after a bundle landed.
#[derive(Debug, Default)]
pub struct Applied {
    /// Shared with observers' snapshots ([`crate::observe::Query`]); changed
    /// through `Arc::make_mut`, which copies only while a snapshot is held.
    pub intent: Arc<Intent>,
    /// `dpu_model::validate_changes`'s index of `intent`.
    pub index: Index,
    pub version: u64,
    /// The `store_id` of the update `version` came with (`Update.store_id`):
    /// which numbering the version belongs to, said in Hello.
    pub store_id: String,
    /// Shared like `intent`.
    pub alloc: Arc<Allocations>,
    /// Whether any intent has been applied by this incarnation or restored.
    pub have_intent: bool,
    pub compiler: IncrementalCompiler,
    journal_records: usize,
    journal_bytes: u64,
    /// The intent's workloads on this node whose port is missing (status),
    /// `None` when workloads or ports may have changed since it was computed.
    pending_ports: Option<Vec<String>>,
}

/// The node facts, with a count of their changes: every change goes through
/// [`Facts::edit`], so an unchanged count means unchanged facts, and the
/// compiler need not compare them (the port map is O(local ports)).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    facts: NodeFacts,
    revision: u64,
}

impl Facts {
    pub fn new(facts: NodeFacts) -> Facts {
        Facts { facts, revision: 0 }
    }

    /// The facts, to change; counts as a change.
    pub fn edit(&mut self) -> &mut NodeFacts {
        self.revision += 1;
        &mut self.facts
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }
}

impl std::ops::Deref for Facts {
    type Target = NodeFacts;
    fn deref(&self) -> &NodeFacts {
        &self.facts
    }
}

/// Where the time of one update went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub next_intent: Duration,
    pub alloc: Duration,
    pub compile: Duration,
    /// Planning the bundle and the switch applying it.
    pub reconcile: Duration,
    pub persist: Duration,
}

/// The outcome of [`Applied::handle_update`].
#[derive(Debug)]
pub struct Handled {
    pub msg: pb::agent_message::Msg,
    pub timings: Timings,
    /// The objects the applied update changed (`None`: refused).
    pub changed: Option<BTreeSet<ObjectKey>>,
    pub stats: ApplyStats,
}

impl Applied {
    /// The version applied and its numbering, for Hello.
    pub fn at(&self) -> crate::control::session::AppliedAt {
        crate::control::session::AppliedAt {
            version: self.version,
            store_id: self.store_id.clone(),
        }
    }

    /// The persisted intent: the snapshot, then the journal's updates that
    /// follow it. A journal update that no longer applies ends the replay
    /// (with a warning): the controller resends what is missing.
    pub fn restore(
        persisted: Persisted,
        journal: Vec<pb::Update>,
        node: &str,
    ) -> Result<Applied, Refusal> {
        let mut a = Applied::default();
        apply_update(
            Arc::make_mut(&mut a.intent),
            &mut a.index,
            0,
            &persisted.snapshot,
            node,
        )?;
        a.version = persisted.snapshot.version;
        a.store_id = persisted.snapshot.store_id.clone();
        // Keeps every persisted id; gives one to what has none (a lost or older
        // allocations file), since later increments allocate only their own.
        a.alloc = Arc::new(
            persisted
                .alloc
                .update(&a.intent)
                .map_err(|e| Refusal::general("allocations", e.to_string()))?,
        );
        a.have_intent = true;
        for u in journal {
            if u.version <= a.version && !u.snapshot {
                continue;
            }
            match apply_update(
                Arc::make_mut(&mut a.intent),
                &mut a.index,
                a.version,
                &u,
                node,
            ) {
                Ok(done) => {
                    let changed = (!done.snapshot).then_some(&done.changed);
                    if let Err(e) = Arc::make_mut(&mut a.alloc).update_changed(&a.intent, changed) {
                        tracing::warn!(version = u.version, error = %e, "journal replay stopped");
                        done.undo(Arc::make_mut(&mut a.intent), &mut a.index);
                        break;
                    }
                    a.version = u.version;
                    a.store_id = u.store_id.clone();
                    a.journal_records += 1;
                }
                Err(r) => {
                    tracing::warn!(version = u.version, reasons = %r, "journal replay stopped");
                    break;
                }
            }
        }
        Ok(a)
    }

    /// Applies one update from the controller: the intent in place, the
    /// allocations, the compiler, one bundle, the journal. On refusal (invalid,
    /// or the switch refused the bundle) everything is as it was.
    ///
    /// The decoded update is dropped once the intent holds it, before the
    /// compile: what the compile allocates then fills the holes it leaves,
    /// instead of a snapshot's thousands of small messages being freed among
    /// the state that stays (docs/agent.md, "Memory: where it goes").
    pub async fn handle_update<B: OpenFlowBackend>(
        &mut self,
        node: &str,
        store: &Store,
        reconciler: &mut Reconciler<B>,
        pods: &[Workload],
        facts: &Facts,
        update: pb::Update,
    ) -> Handled {
        use pb::agent_message::Msg;
        let mut t = Timings::default();
        let version = update.version;
        let nonce = update.nonce.clone();
        let store_id = update.store_id.clone();
        let nack = |r: Refusal, t: Timings| {
            let r = r.capped();
            tracing::warn!(version, reasons = %r, "update refused");
            Handled {
                msg: Msg::Nack(pb::Nack {
                    version,
                    nonce: nonce.clone(),
                    errors: r.errors,
                }),
                timings: t,
                changed: None,
                stats: ApplyStats::default(),
            }
        };
        let t0 = Instant::now();
        let done = match apply_update(
            Arc::make_mut(&mut self.intent),
            &mut self.index,
            self.version,
            &update,
            node,
        ) {
            Ok(d) => d,
            Err(r) => return nack(r, t),
        };
        // A snapshot is persisted from the intent (`compact`), an increment
        // as it came.
        let record = (!done.snapshot).then(|| update.encode_to_vec());
        drop(update);
        let changed = (!done.snapshot).then_some(&done.changed);
        let t1 = Instant::now();
        t.next_intent = t1 - t0;
        let alloc_undo = match Arc::make_mut(&mut self.alloc).update_changed(&self.intent, changed)
        {
            Ok(u) => u,
            Err(e) => {
                done.undo(Arc::make_mut(&mut self.intent), &mut self.index);
                return nack(Refusal::general("update", e.to_string()), t);
            }
        };
        let t2 = Instant::now();
        t.alloc = t2 - t1;
        let step = self.compiler.update_at(
            &self.intent,
            pods,
            &self.alloc,
            (facts, facts.revision()),
            changed,
        );
        let t3 = Instant::now();
        t.compile = t3 - t2;
        let applied = match step {
            Step::Rebuilt => reconciler.apply(self.compiler.desired()).await,
            Step::Incremental { .. } => {
                reconciler
                    .apply_changes(self.compiler.desired(), self.compiler.changes())
                    .await
            }
        };
        let t4 = Instant::now();
        t.reconcile = t4 - t3;
        let stats = match applied {
            Ok(s) => s,
            Err(e) => {
                Arc::make_mut(&mut self.alloc).undo(alloc_undo);
                done.undo(Arc::make_mut(&mut self.intent), &mut self.index);
                // Its cache holds the refused intent now.
                self.compiler.invalidate();
                return nack(Refusal::general("switch", e.to_string()), t);
            }
        };
        self.version = version;
        if store_id != self.store_id {
            tracing::info!(
                from = %self.store_id,
                to = %store_id,
                version,
                "the controller's version numbering changed (another store, or a controller with its own counter): its snapshot replaced the intent whatever the versions said"
            );
            self.store_id = store_id;
        }
        self.have_intent = true;
        if done.snapshot || done.changed.iter().any(|k| k.kind == Kind::Workload) {
            self.pending_ports = None;
        }
        if let Some(record) = record {
            match store.append_encoded(&record) {
                Ok(bytes) => {
                    self.journal_records += 1;
                    self.journal_bytes = bytes;
                }
                // The switch has it; losing the record only costs a resync
                // after a reboot.
                Err(e) => tracing::error!(error = %e, "could not journal the applied update"),
            }
        } else {
            self.compact(store);
        }
        t.persist = t4.elapsed();
        let compiled = self.compiler.compiled();
        tracing::info!(
            version,
            snapshot = done.snapshot,
            objects = %objects_line(&done.changed),
            flows_added = stats.flows_added,
            flows_deleted = stats.flows_deleted,
            groups_put = stats.groups_put,
            groups_deleted = stats.groups_deleted,
            pending = ?compiled.pending_ports,
            unreachable = ?compiled.unreachable,
            // Where a slow update's time went, in microseconds.
            us_validate = t.next_intent.as_micros() as u64,
            us_alloc = t.alloc.as_micros() as u64,
            us_compile = t.compile.as_micros() as u64,
            us_switch = t.reconcile.as_micros() as u64,
            us_persist = t.persist.as_micros() as u64,
            "update applied"
        );
        Handled {
            msg: Msg::Ack(pb::Ack { version, nonce }),
            timings: t,
            changed: Some(done.changed),
            stats,
        }
    }

    /// Whether the journal is due for compaction ([`Self::compact`]); the agent
    /// does it after the Ack went out, off the update's path.
    /// Work that waits until the Ack is out: compaction, when due.
    pub fn after_ack(&mut self, store: &Store) {
        if self.compaction_due() {
            self.compact(store);
        }
    }

    pub fn compaction_due(&self) -> bool {
        self.journal_records >= COMPACT_RECORDS || self.journal_bytes >= COMPACT_BYTES
    }

    /// Writes the whole applied state and empties the journal.
    pub fn compact(&mut self, store: &Store) {
        match store.save_encoded(
            &encode_snapshot(&self.intent, self.version, &self.store_id),
            &self.alloc,
        ) {
            Ok(()) => {
                self.journal_records = 0;
                self.journal_bytes = 0;
            }
            Err(e) => tracing::error!(error = %e, "could not persist the applied intent"),
        }
    }

    /// Compiles against the current facts and pods (the compiler finds out what
    /// changed) and installs the result.
    pub async fn resync<B: OpenFlowBackend>(
        &mut self,
        reconciler: &mut Reconciler<B>,
        pods: &[Workload],
        facts: &Facts,
    ) -> Result<ApplyStats, OpenFlowError> {
        self.pending_ports = None;
        let none = BTreeSet::new();
        let step = self.compiler.update_at(
            &self.intent,
            pods,
            &self.alloc,
            (facts, facts.revision()),
            Some(&none),
        );
        let r = match step {
            Step::Rebuilt => reconciler.apply(self.compiler.desired()).await,
            // The installed view may lag (a start, a switch restart): then
            // `apply_changes` diffs everything anyway.
            Step::Incremental { .. } => {
                reconciler
                    .apply_changes(self.compiler.desired(), self.compiler.changes())
                    .await
            }
        };
        if r.is_err() {
            self.compiler.invalidate();
        }
        r
    }

    /// The intent's workloads on this node whose port is not on the bridge.
    pub fn pending_ports(&mut self, facts: &NodeFacts) -> Vec<String> {
        self.pending_ports
            .get_or_insert_with(|| {
                self.intent
                    .workloads
                    .values()
                    .filter(|w| w.node == facts.node && !facts.ports.contains_key(&w.port))
                    .map(|w| w.name.clone())
                    .collect()
            })
            .clone()
    }
}

/// The objects an update changed, for its log line: the first few by name,
/// then how many more.
fn objects_line(changed: &BTreeSet<ObjectKey>) -> String {
    const SHOWN: usize = 5;
    let mut line: Vec<String> = changed.iter().take(SHOWN).map(|k| k.to_string()).collect();
    if changed.len() > SHOWN {
        line.push(format!("+{} more", changed.len() - SHOWN));
    }
    line.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::backend::testkit::NullSwitch;
    use dpu_model::{object_to_proto, Object, Service, ServicePort, Vpc};

    fn service(name: &str, port: u16) -> pb::Object {
        object_to_proto(&Object::Service(Service {
            name: name.into(),
            vpc: "a".into(),
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            ports: vec![ServicePort {
                name: String::new(),
                protocol: dpu_model::Protocol::Tcp,
                port,
                target_port: port,
            }],
            backends: vec![],
            affinity_timeout: None,
            eip: None,
            scenario: dpu_model::AccessScenario::ClusterIp,
            external_traffic_local: false,
            eip_node: None,
        }))
    }

    fn update(version: u64, snapshot: bool, upserts: Vec<pb::Object>) -> pb::Update {
        pb::Update {
            version,
            base_version: if snapshot { 0 } else { version - 1 },
            snapshot,
            nonce: String::new(),
            upserts,
            deletes: vec![],
            store_id: String::new(),
        }
    }

    #[tokio::test]
    async fn a_restart_replays_the_journal_to_the_same_state() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let mut rec = Reconciler::start(NullSwitch).await.ok().unwrap();
        let mut a = Applied::default();
        let facts = Facts::default();
        let vpc = object_to_proto(&Object::Vpc(Vpc {
            name: "a".into(),
            vni: 1,
        }));
        let steps = [
            update(1, true, vec![vpc, service("x", 80)]),
            update(2, false, vec![service("y", 81)]),
            // Refused: y's VIP:port is taken.
            update(3, false, vec![service("z", 81)]),
            update(3, false, vec![service("x", 82)]),
        ]
        .map(|mut u| {
            u.store_id = "c1/l1".into();
            u
        });
        let mut acks = 0;
        for u in &steps {
            let h = a
                .handle_update("n1", &store, &mut rec, &[], &facts, u.clone())
                .await;
            acks += usize::from(h.changed.is_some());
        }
        assert_eq!(acks, 3);
        let back = Applied::restore(
            store.load().unwrap().unwrap(),
            store.load_journal().unwrap(),
            "n1",
        )
        .unwrap();
        assert_eq!(
            (&back.intent, back.version, &back.alloc, &back.index),
            (&a.intent, 3, &a.alloc, &a.index)
        );
        assert_eq!(back.journal_records, 2);
        // The numbering the version belongs to comes back with it (Hello).
        assert_eq!(back.at().store_id, "c1/l1");
        // Compacting folds the journal into the snapshot.
        a.compact(&store);
        assert_eq!(store.load_journal().unwrap(), vec![]);
        let back = Applied::restore(store.load().unwrap().unwrap(), Vec::new(), "n1").unwrap();
        assert_eq!((&back.intent, back.version), (&a.intent, 3));
        assert_eq!(back.at().store_id, "c1/l1");
        // A snapshot from another numbering, at a lower version, replaces it.
        let mut other = update(2, true, vec![]);
        other.store_id = "c2/l9".into();
        let h = a
            .handle_update("n1", &store, &mut rec, &[], &facts, other)
            .await;
        assert!(h.changed.is_some());
        assert_eq!((a.at().version, a.at().store_id.as_str()), (2, "c2/l9"));
    }
}
