//! The agent loop's side of pod attachment: the pool, its persistence, plugging
//! representors through OVSDB, and the Attach replies that wait until the pod's
//! port is on the bridge and its flows are installed.

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
use crate::ovsdb::{plug_port, unplug_port, OvsdbSession};
use crate::store::{Store, StoreError};

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
        })
    }

    /// Plugs representors of restored attachments that are not on the bridge (the
    /// OVS database was reset, or the agent died between persisting and plugging).
    pub async fn replug_missing(&self, cfg: &Config, ovsdb: &OvsdbSession, facts: &NodeFacts) {
        let Some(client) = ovsdb.client() else { return };
        for r in self.pool.records.values() {
            if !facts.ports.contains_key(&r.iface_id) {
                if let Err(e) =
                    plug_port(&client, &cfg.ovs.bridge, &r.representor, &external_ids(r)).await
                {
                    tracing::warn!(representor = %r.representor, error = %e, "cannot re-plug a restored attachment");
                }
            }
        }
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
                .pool
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

    /// Handles one request; returns whether the set of pods changed.
    pub async fn handle(
        &mut self,
        cmd: AttachCmd,
        cfg: &Config,
        store: &Store,
        ovsdb: &OvsdbSession,
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
                if let Err(e) = plug_port(
                    &client,
                    &cfg.ovs.bridge,
                    &record.representor,
                    &external_ids(&record),
                )
                .await
                {
                    rollback(self);
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
                if let Some(client) = ovsdb.client() {
                    if let Err(e) = unplug_port(&client, &cfg.ovs.bridge, &record.representor).await
                    {
                        tracing::warn!(representor = %record.representor, error = %e, "cannot unplug; it is re-used on the next attach");
                    }
                }
                tracing::info!(workload = %record.workload, ip = %record.ip, "pod detached");
                self.revision += 1;
                let _ = reply.send(Ok(Some(record)));
                true
            }
        }
    }
}
