//! The agent loop's side of pod attachment: the pool, its persistence, plugging
//! representors through OVSDB, and the Attach replies that wait until the pod's
//! port is on the bridge and its flows are installed.
//!
//! Plugging and unplugging go through the port writer (`crate::vswitch::portwriter`): an
//! Attach or Detach queues its write and its reply rides in the completion
//! ([`PodJob`]), which [`Pods::completed`] finishes. One such command is in flight
//! at a time ([`Pods::busy`]; the loop does not read the next one meanwhile), as
//! when the loop awaited the transaction itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dpu_model::Intent;
use dpu_proto::v1 as pb;
use tokio::sync::oneshot;
use tonic::Status;

use crate::attach::pool::{key, AttachError, Pool, Record};
use crate::attach::AttachCmd;
use crate::compile::NodeFacts;
use crate::config::Config;
use crate::state::store::{Store, StoreError};
use crate::vswitch::ovsdb::{OvsdbError, OvsdbSession};
use crate::vswitch::portwriter::{PortWrite, PortWriter};

/// How long an Attach waits for its representor to appear and be programmed.
const PLUG_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug)]
struct Pending {
    record: Record,
    reply: oneshot::Sender<Result<Record, Status>>,
    deadline: Instant,
}

#[derive(Debug, Default)]
pub struct Pods {
    pub pool: Pool,
    pending: Vec<Pending>,
    revision: u64,
    /// The Attach or Detach whose port write is in flight.
    busy: bool,
    /// The workload of an attachment new with the Attach in flight: not a pod of
    /// this node until its representor is plugged.
    plugging: Option<String>,
}

/// What to finish when a pod's port write completes.
#[derive(Debug)]
pub enum PodJob {
    /// A restored attachment's representor put back at start.
    Replug { representor: String },
    /// An Attach: answered once the port is on the bridge and programmed (see
    /// [`Pods::settle`]), or failed (and rolled back) if the plug failed.
    Attach {
        record: Record,
        existed: bool,
        reply: oneshot::Sender<Result<Record, Status>>,
    },
    /// A Detach: answered after the unplug (whatever its outcome).
    Detach {
        record: Record,
        reply: oneshot::Sender<Result<Option<Record>, Status>>,
    },
}

/// `intent` with this node's attached `pods` in, as the compiler and
/// observers see it: borrowed when there are none.
pub fn intent_with_pods<'a>(
    intent: &'a Intent,
    pods: &[dpu_model::Workload],
) -> std::borrow::Cow<'a, Intent> {
    if pods.is_empty() {
        return std::borrow::Cow::Borrowed(intent);
    }
    let mut i = intent.clone();
    for w in pods {
        i.upsert(dpu_model::Object::Workload(w.clone()));
    }
    std::borrow::Cow::Owned(i)
}

fn status_of(e: &AttachError) -> Status {
    match e {
        AttachError::Invalid { .. }
        | AttachError::UnknownSubnet(_)
        | AttachError::NoBlock { .. } => Status::invalid_argument(e.to_string()),
        AttachError::NoIntent => Status::unavailable(e.to_string()),
        AttachError::AddressesExhausted { .. } | AttachError::VfsExhausted(_) => {
            Status::resource_exhausted(e.to_string())
        }
    }
}

fn external_ids(r: &Record) -> BTreeMap<String, String> {
    [
        ("iface-id".to_string(), r.iface_id.clone()),
        (
            "dpu-attachment".to_string(),
            key(&r.container_id, &r.ifname),
        ),
        ("dpu-workload".to_string(), r.workload.clone()),
    ]
    .into()
}

impl Pods {
    pub fn load(store: &Store) -> Result<Pods, StoreError> {
        let pool = store.load_pool()?;
        if !pool.records.is_empty() {
            tracing::info!(attachments = pool.records.len(), "restored pod attachments");
        }
        Ok(Pods {
            pool,
            pending: Vec::new(),
            revision: 1,
            busy: false,
            plugging: None,
        })
    }

    /// Plugs representors of restored attachments that are not on the bridge (the
    /// OVS database was reset, or the agent died between persisting and plugging).
    /// Queued on the port writer; a failure is logged when it completes.
    pub fn replug_missing<T: From<PodJob> + Send + 'static>(
        &self,
        ovsdb: &OvsdbSession,
        writer: &PortWriter<T>,
        facts: &NodeFacts,
    ) {
        let Some(client) = ovsdb.client() else { return };
        for r in self.pool.records.values() {
            if !facts.ports.contains_key(&r.iface_id) {
                writer.send(
                    client.clone(),
                    PortWrite::Plug {
                        port: r.representor.clone(),
                        external_ids: external_ids(r),
                    },
                    PodJob::Replug {
                        representor: r.representor.clone(),
                    },
                );
            }
        }
    }

    /// Whether an Attach or Detach waits for its port write: the loop reads the
    /// next request only after it completed.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// This node's pods: the attachments, less one whose first plug is in flight.
    pub fn workloads(&self, node: &str) -> Vec<dpu_model::Workload> {
        let mut w = self.pool.workloads(node);
        if let Some(name) = &self.plugging {
            w.retain(|w| &w.name != name);
        }
        w
    }

    /// Counts changes to the attached pods.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The pods as the controller hears about them.
    pub fn report(&self, node: &str) -> pb::LocalWorkloads {
        pb::LocalWorkloads {
            revision: self.revision,
            workloads: self
                .workloads(node)
                .into_iter()
                .map(
                    |w| match dpu_model::object_to_proto(&dpu_model::Object::Workload(w)).object {
                        Some(pb::object::Object::Workload(w)) => w,
                        _ => pb::Workload::default(),
                    },
                )
                .collect(),
        }
    }

    pub fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Answers the Attaches whose port is on the bridge now that a reconcile landed.
    pub fn settle(&mut self, facts: &NodeFacts) {
        let (done, wait): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| facts.ports.contains_key(&p.record.iface_id));
        for p in done {
            tracing::info!(workload = %p.record.workload, ip = %p.record.ip, vf = %p.record.vf, "pod attached");
            let _ = p.reply.send(Ok(p.record));
        }
        self.pending = wait;
    }

    /// Fails the Attaches that waited too long. The record stays; the shim's
    /// cleanup (Detach) releases it.
    pub fn expire(&mut self) {
        let now = Instant::now();
        let (late, wait): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| now >= p.deadline);
        for p in late {
            let _ = p.reply.send(Err(Status::unavailable(format!(
                "representor {} did not come up on the bridge within {PLUG_TIMEOUT:?}",
                p.record.representor
            ))));
        }
        self.pending = wait;
    }

    fn save(&self, store: &Store) -> Result<(), Status> {
        store
            .save_pool(&self.pool)
            .map_err(|e| Status::internal(format!("cannot persist the attachment: {e}")))
    }

    /// Handles one request; returns whether the set of pods changed. An Attach or
    /// Detach that reaches OVSDB queues its write on `writer` and is finished by
    /// [`Pods::completed`].
    pub fn handle<T: From<PodJob> + Send + 'static>(
        &mut self,
        cmd: AttachCmd,
        cfg: &Config,
        store: &Store,
        ovsdb: &OvsdbSession,
        writer: &PortWriter<T>,
        intent: Option<&Intent>,
    ) -> bool {
        let vfs = cfg
            .shim
            .as_ref()
            .map(|s| s.vfs.as_slice())
            .unwrap_or_default();
        match cmd {
            AttachCmd::Get {
                container_id,
                ifname,
                reply,
            } => {
                let _ = reply.send(self.pool.get(&container_id, &ifname).cloned());
                false
            }
            AttachCmd::List(reply) => {
                let _ = reply.send(self.pool.records.values().cloned().collect());
                false
            }
            AttachCmd::Ready(reply) => {
                let state = ovsdb.state().borrow().clone();
                let answer = if intent.is_none() {
                    (
                        false,
                        "no intent yet: the controller has not been reached".to_string(),
                    )
                } else if !(state.connected && state.bridge_ready) {
                    (false, format!("bridge {} not ready", cfg.ovs.bridge))
                } else if self.pool.free_vfs(vfs) == 0 {
                    (false, format!("no free VF (all {} attached)", vfs.len()))
                } else {
                    (true, String::new())
                };
                let _ = reply.send(answer);
                false
            }
            AttachCmd::Attach(input, reply) => {
                let existed = self.pool.get(&input.container_id, &input.ifname).is_some();
                let record = match self.pool.attach(&input, intent, &cfg.node_name, vfs) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(container = %input.container_id, error = %e, "attach refused");
                        let _ = reply.send(Err(status_of(&e)));
                        return false;
                    }
                };
                let rollback = |pods: &mut Pods| {
                    if !existed {
                        pods.pool.detach(&input.container_id, &input.ifname);
                    }
                };
                if let Err(s) = self.save(store) {
                    rollback(self);
                    let _ = reply.send(Err(s));
                    return false;
                }
                let Some(client) = ovsdb.client() else {
                    rollback(self);
                    let _ = self.save(store);
                    let _ = reply.send(Err(Status::unavailable("OVSDB is not connected")));
                    return false;
                };
                self.busy = true;
                if !existed {
                    self.plugging = Some(record.workload.clone());
                }
                writer.send(
                    client,
                    PortWrite::Plug {
                        port: record.representor.clone(),
                        external_ids: external_ids(&record),
                    },
                    PodJob::Attach {
                        record,
                        existed,
                        reply,
                    },
                );
                false
            }
            AttachCmd::Detach {
                container_id,
                ifname,
                reply,
            } => {
                let Some(record) = self.pool.detach(&container_id, &ifname) else {
                    let _ = reply.send(Ok(None));
                    return false;
                };
                if let Err(s) = self.save(store) {
                    self.pool
                        .records
                        .insert(key(&container_id, &ifname), record);
                    let _ = reply.send(Err(s));
                    return false;
                }
                match ovsdb.client() {
                    Some(client) => {
                        self.busy = true;
                        writer.send(
                            client,
                            PortWrite::Unplug {
                                port: record.representor.clone(),
                            },
                            PodJob::Detach { record, reply },
                        );
                        false
                    }
                    None => self.detached(record, reply),
                }
            }
        }
    }

    /// Finishes `job` now that its port write completed with `result`; returns
    /// whether the set of pods changed.
    pub fn completed(
        &mut self,
        job: PodJob,
        result: Result<(), OvsdbError>,
        cfg: &Config,
        store: &Store,
    ) -> bool {
        match job {
            PodJob::Replug { representor } => {
                if let Err(e) = result {
                    tracing::warn!(%representor, error = %e, "cannot re-plug a restored attachment");
                }
                false
            }
            PodJob::Attach {
                record,
                existed,
                reply,
            } => {
                self.busy = false;
                self.plugging = None;
                if let Err(e) = result {
                    if !existed {
                        self.pool.detach(&record.container_id, &record.ifname);
                    }
                    let _ = self.save(store);
                    let _ = reply.send(Err(Status::internal(format!(
                        "plugging {} into {}: {e}",
                        record.representor, cfg.ovs.bridge
                    ))));
                    return false;
                }
                self.pending.push(Pending {
                    record,
                    reply,
                    deadline: Instant::now() + PLUG_TIMEOUT,
                });
                if !existed {
                    self.revision += 1;
                }
                // Settles on the next reconcile, which the caller triggers (also for
                // a re-attach whose port is already there).
                true
            }
            PodJob::Detach { record, reply } => {
                self.busy = false;
                if let Err(e) = result {
                    tracing::warn!(representor = %record.representor, error = %e, "cannot unplug; it is re-used on the next attach");
                }
                self.detached(record, reply)
            }
        }
    }

    fn detached(
        &mut self,
        record: Record,
        reply: oneshot::Sender<Result<Option<Record>, Status>>,
    ) -> bool {
        tracing::info!(workload = %record.workload, ip = %record.ip, "pod detached");
        self.revision += 1;
        let _ = reply.send(Ok(Some(record)));
        true
    }
}
