//! The agent loop: the one place that owns intent, allocations and the reconciler.
//! Updates from the controller session and port changes from OVSDB come in here;
//! each becomes at most one compile and one bundle. An update is ACKed only after
//! the bundle was committed, and NACKed (with nothing changed) otherwise.

pub mod notify;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dpu_model::{Intent, Kind, ObjectKey};
use dpu_proto::v1 as pb;
use tokio::sync::{mpsc, watch};

use crate::agent::notify::{AgentStatus, Systemd};
use crate::attach::{self, AttachCmd};
use crate::compile::pipeline::TUNNEL_IFACE_ID;
use crate::compile::NodeFacts;
use crate::config::Config;
use crate::control::session::{self, SessionEvent};
use crate::observe::registry::Registry;
use crate::observe::{Installed, IntentSnapshot, LbInputs, LbReply, Query, Summary};
use crate::reconcile::backend::{Backend, OpenFlowBackend};
use crate::reconcile::Reconciler;
use crate::state::alloc::Allocations;
use crate::state::applied::{Applied, Facts};
use crate::state::pods::{PodJob, Pods};
use crate::state::store::{Store, StoreError};
use crate::vswitch::liveness::{self, SwitchLink};
use crate::vswitch::ovsdb::{BridgeSpec, OvsdbError, OvsdbSession, OvsdbState};
use crate::vswitch::portwriter::{Done, PortWrite, PortWriter};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory could not be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// VF discovery from sysfs failed.
    #[error("shim.vfs_from_sysfs: {0}")]
    Discovery(String),
    /// The persisted intent no longer passes validation.
    #[error("persisted intent is invalid: {0}")]
    PersistedInvalid(String),
    /// The configured OpenFlow backend cannot be used.
    #[error("ovs.openflow_backend: {0}")]
    OpenFlow(String),
}

/// Runs the agent. `systemd` gets `READY=1` once the bridge and the reconciler are
/// up and the persisted intent (if any) is back on the switch, `STATUS=` lines as
/// things change, and a heartbeat on every loop iteration for its watchdog.
pub async fn run(
    mut cfg: Config,
    mut shutdown: watch::Receiver<bool>,
    systemd: Systemd,
) -> Result<(), AgentError> {
    if let Some(shim) = cfg.shim.as_mut() {
        if let Some(sys) = &shim.vfs_from_sysfs {
            let found = attach::sysfs::discover(sys).map_err(AgentError::Discovery)?;
            tracing::info!(uplink = %sys.uplink, pf = sys.pf, vfs = found.len(), "VF representors found in sysfs");
            shim.vfs.extend(found);
        }
    }
    let store = Store::open(&cfg.state_dir)?;
    let persisted = store.load()?;
    let journal = match persisted {
        Some(_) => store.load_journal()?,
        None => Vec::new(),
    };

    let ovsdb = OvsdbSession::spawn(
        cfg.ovs.db_socket.clone(),
        BridgeSpec {
            name: cfg.ovs.bridge.clone(),
            datapath_type: cfg.ovs.datapath_type.clone(),
            hw_offload: cfg.ovs.hw_offload,
        },
    );
    let mut ovs_rx = ovsdb.state();
    let facts = wait_bridge(&cfg, &mut ovs_rx, &mut shutdown).await;
    let Some(facts) = facts else {
        return Ok(());
    };
    // Every change of the facts goes through `Facts::edit`, which counts it: the
    // compiler compares facts only when they may have changed.
    let mut facts = Facts::new(facts);
    // Port writes run on their own task; their completions come back to the loop.
    let (writer, mut written) = PortWriter::<PortJob>::spawn(&cfg.ovs.bridge);
    let mut tunnel = TunnelPort::new(&cfg.ovs.bridge);
    tunnel.ensure(&ovsdb, &writer, &facts);

    let backend = Backend::new(
        &cfg.ovs.openflow_backend,
        cfg.ofctl_target(),
        &cfg.ovs.ofctl_path,
    )
    .map_err(|e| AgentError::OpenFlow(e.to_string()))?;
    tracing::info!(backend = backend.name(), target = %cfg.ofctl_target(), "OpenFlow backend");
    let Some(mut reconciler) = start_reconciler(backend, &mut shutdown).await else {
        return Ok(());
    };

    let mut applied = Applied::default();
    if let Some(p) = persisted {
        applied = Applied::restore(p, journal, &cfg.node_name)
            .map_err(|r| AgentError::PersistedInvalid(r.to_string()))?;
        tracing::info!(
            version = applied.version,
            "restored the last applied intent"
        );
    }

    let mut pods = Pods::load(&store)?;
    pods.replug_missing(&ovsdb, &writer, &facts);

    let (applied_tx, applied_rx) = watch::channel(applied.version);
    let (local_tx, local_rx) = watch::channel(pods.report(&cfg.node_name));
    let (attach_tx, mut attach_rx) = mpsc::channel::<AttachCmd>(16);
    let mut attach_open = true;
    let shim = {
        let cfg = cfg.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = attach::serve(&cfg, attach_tx, shutdown).await {
                tracing::error!(error = %e, "shim service stopped");
            }
        })
    };
    let (status_tx, status_rx) = watch::channel(pb::Status::default());
    // Bumped whenever what observers see may have changed.
    let (changed_tx, changed_rx) = watch::channel(0u64);
    let registry = Arc::new(Registry::default());
    let (observer, mut query_rx) = crate::observe::Agent::channel();
    let observers = start_observers(
        &cfg,
        observer,
        registry.clone(),
        changed_rx,
        status_tx,
        &shutdown,
    );
    let mut last_error: Option<String> = None;
    // This node's probe verdicts, for the controller.
    let (health_tx, health_rx) = watch::channel(pb::Health::default());
    let (ev_tx, mut ev_rx) = mpsc::channel(4);
    let identity = crate::control::enroll::NodeIdentity::from_config(&cfg);
    let session = tokio::spawn(session::run(
        cfg.controller.clone(),
        cfg.node_name.clone(),
        identity,
        session::Feeds {
            applied: applied_rx,
            status: status_rx,
            local: local_rx,
            health: health_rx,
        },
        ev_tx,
    ));

    // Restoring is a reconcile like any other: nothing is flushed first.
    let mut dirty = applied.have_intent;
    let mut bridge_lost = false;
    let mut switch_rx = liveness::watch_switch(cfg.mgmt_path());
    let mut restart = SwitchRestart::default();
    let mut probes = Probes::start(&cfg);
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Keeps the heartbeat fresh while the loop is idle; without a watchdog it is moot.
    let mut beat = tokio::time::interval(systemd.beat_period().unwrap_or(Duration::from_secs(60)));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut controller_up = false;
    loop {
        systemd.heartbeat().beat();
        if dirty {
            let r = resync(&mut reconciler, &mut applied, &pods, &facts).await;
            dirty = r.is_err();
            registry.reconciled(r.is_ok());
            if let Some(t) = reconciler.take_bundle_time() {
                registry.bundle(t);
            }
            last_error = r.err();
            changed_tx.send_modify(|g| *g += 1);
            if !dirty {
                pods.settle(&facts);
            }
        }
        if !dirty && restart.reinstalling {
            restart.finish(&ovsdb).await;
        }
        if applied.have_intent {
            let key = (applied.version, pods.revision());
            let replanned = probes.update(
                key,
                || with_pods(&applied.intent, &pods, &cfg.node_name),
                &applied.alloc,
                &cfg,
                &ovsdb,
                &writer,
            );
            if replanned {
                registry.probe_targets(probes.targets.iter().cloned());
                // A backend no longer probed here has no health of ours.
                let before = probes.local_unhealthy.len();
                let targets = &probes.targets;
                probes.local_unhealthy.retain(|k| targets.contains(k));
                if probes.local_unhealthy.len() != before {
                    let _ = health_tx.send(probes.report());
                }
                if probes.merge_into(facts.edit()) {
                    dirty = true;
                }
            }
        }
        pods.expire();
        let status = AgentStatus {
            controller_connected: controller_up,
            applied_version: applied.have_intent.then_some(applied.version),
            pods: pods.pool.records.len(),
        };
        if dirty {
            // Not ready while the restored intent is not on the switch yet.
            systemd.status(&status);
        } else {
            systemd.ready(&status);
            systemd.status(&status);
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            ev = ev_rx.recv() => match ev {
                None => break,
                Some(SessionEvent::Health(h)) => {
                    probes.remote_unhealthy = h
                        .unhealthy
                        .iter()
                        .filter_map(|b| Some((b.vpc.clone(), b.ip.parse().ok()?)))
                        .collect();
                    if probes.merge_into(facts.edit()) {
                        tracing::info!(unhealthy = facts.unhealthy.len(), "backend health from the controller");
                        dirty = applied.have_intent;
                    }
                }
                Some(SessionEvent::Connected(up)) => {
                    tracing::debug!(up, "controller session");
                    controller_up = up;
                    changed_tx.send_modify(|g| *g += 1);
                }
                Some(SessionEvent::Update(update, reply)) => {
                    registry.desired(update.version);
                    let before = (applied.version, pods.revision());
                    let pod_workloads = pods.workloads(&cfg.node_name);
                    let handled = applied
                        .handle_update(&cfg.node_name, &store, &mut reconciler, &pod_workloads, &facts, &update)
                        .await;
                    if let Some(t) = reconciler.take_bundle_time() {
                        registry.bundle(t);
                    }
                    match &handled.msg {
                        pb::agent_message::Msg::Nack(n) => {
                            registry.answered(false);
                            last_error = Some(nack_line(n));
                        }
                        _ => {
                            registry.answered(true);
                            last_error = None;
                        }
                    }
                    if let Some(changed) = &handled.changed {
                        let _ = applied_tx.send(applied.version);
                        probes.carry_plan(before, (applied.version, pods.revision()), changed);
                    }
                    changed_tx.send_modify(|g| *g += 1);
                    let _ = reply.send(handled.msg);
                    // Off the update's path: the Ack is out.
                    applied.after_ack(&store);
                }
            },
            changed = ovs_rx.changed() => {
                if changed.is_err() { break; }
                let state = ovs_rx.borrow_and_update().clone();
                if !state.bridge_ready {
                    bridge_lost = true;
                    continue;
                }
                if !state.connected {
                    continue;
                }
                if bridge_lost {
                    // The bridge came back (recreated, or vswitchd restarted): its
                    // tables may be empty or old. Read it again and reinstall.
                    match reconciler.forget_installed().await {
                        Ok(()) => {
                            bridge_lost = false;
                            dirty = applied.have_intent;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot read the switch"),
                    }
                }
                let ports = ports_of(&state);
                if ports != facts.ports {
                    facts.edit().ports = ports;
                    dirty = applied.have_intent;
                }
                tunnel.ensure(&ovsdb, &writer, &facts);
            }
            // Without `[shim]` the attachment service returns at once and the
            // channel closes; a closed channel is ready forever, so stop polling it.
            // While a pod's port write is in flight the next request waits in the
            // channel, as it did while the loop awaited the write.
            cmd = attach_rx.recv(), if attach_open && !pods.busy() => {
                let Some(cmd) = cmd else {
                    attach_open = false;
                    continue;
                };
                if pods.handle(cmd, &cfg, &store, &ovsdb, &writer, applied.have_intent.then_some(&applied.intent)) {
                    let _ = local_tx.send(pods.report(&cfg.node_name));
                    dirty = true;
                }
            }
            // A port write finished: only now does the state it changes change.
            Some(Done { tag, result }) = written.recv() => match tag {
                PortJob::Tunnel => tunnel.completed(result),
                PortJob::Probe(job) => probes.completed(job, result),
                PortJob::Pod(job) => {
                    if pods.completed(*job, result, &cfg, &store) {
                        let _ = local_tx.send(pods.report(&cfg.node_name));
                        dirty = true;
                    }
                }
            },
            Some(t) = probes.next_transition() => {
                let key = (t.vpc.clone(), t.ip);
                if t.healthy {
                    probes.local_unhealthy.remove(&key);
                } else {
                    probes.local_unhealthy.insert(key);
                }
                tracing::info!(vpc = %t.vpc, ip = %t.ip, healthy = t.healthy, detail = %t.detail,
                    "backend health changed");
                registry.probe_transition(&t.vpc, t.ip, t.healthy, &t.detail);
                let _ = health_tx.send(probes.report());
                if probes.merge_into(facts.edit()) {
                    dirty = applied.have_intent;
                }
            }
            changed = switch_rx.changed() => {
                if changed.is_err() { break; }
                let link = *switch_rx.borrow_and_update();
                match link {
                    SwitchLink::Down => restart.gone(&ovsdb).await,
                    SwitchLink::Up { generation } if generation > 1 || restart.since.is_some() => {
                        // A new ovs-vswitchd (the userspace datapath starts with
                        // empty tables): read the switch again and reinstall.
                        match reconciler.forget_installed().await {
                            Ok(()) => {
                                dirty = applied.have_intent;
                                restart.reinstalling = true;
                                tracing::info!(generation, "ovs-vswitchd is back; reinstalling everything");
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot read the switch after its restart"),
                        }
                    }
                    _ => {}
                }
            }
            Some(q) = query_rx.recv() => {
                let generation = *changed_tx.borrow();
                let view = View {
                    cfg: &cfg,
                    applied: &mut applied,
                    reconciler: &reconciler,
                    pods: &pods,
                    facts: &facts,
                    controller_up,
                    last_error: last_error.as_deref(),
                    registry: &registry,
                };
                view.answer(q, generation);
            }
            _ = retry.tick(), if dirty || pods.waiting() || restart.reinstalling => {}
            _ = beat.tick() => {}
        }
    }
    drop(writer);
    session.abort();
    shim.abort();
    for o in observers {
        o.abort();
    }
    tracing::info!("agent stopped; the switch keeps forwarding");
    Ok(())
}

/// What a port write was for, carried back to the loop in its completion.
#[derive(Debug)]
enum PortJob {
    Tunnel,
    Probe(ProbeJob),
    Pod(Box<PodJob>),
}

impl From<PodJob> for PortJob {
    fn from(j: PodJob) -> Self {
        PortJob::Pod(Box::new(j))
    }
}

impl From<ProbeJob> for PortJob {
    fn from(j: ProbeJob) -> Self {
        PortJob::Probe(j)
    }
}

/// A probe port write: the port of `zone` added for `vpc`, or removed.
#[derive(Debug)]
enum ProbeJob {
    Add { zone: u16, vpc: String },
    Remove { zone: u16 },
}

/// How long a probe port whose write failed is left alone. The loop used to retry
/// on its next iteration; a completion is an iteration of its own, so a failure
/// would otherwise be retried at once, again and again.
const PROBE_PORT_RETRY: Duration = Duration::from_secs(1);

/// The health probes: the probe thread, and the OVS ports of the probe links it
/// needs. Without a probe thread (it could not start) nothing is probed and every
/// backend counts as healthy.
struct Probes {
    service: Option<crate::probe::ProbeService>,
    /// The last plan handed to the thread.
    plan: crate::probe::Plan,
    /// Zones whose probe port is on the bridge.
    ports: BTreeMap<u16, String>,
    /// Zones with a port write in flight (at most one each).
    writing: BTreeSet<u16>,
    /// Zones whose last write failed, and when they may be tried again.
    failed: BTreeMap<u16, tokio::time::Instant>,
    /// What this node's probes find unhealthy.
    local_unhealthy: BTreeSet<(String, IpAddr)>,
    /// What the controller says is unhealthy, over all nodes.
    remote_unhealthy: BTreeSet<(String, IpAddr)>,
    /// The (applied version, pods revision) the plan was computed for.
    planned_for: Option<(u64, u64)>,
    /// The plan's targets, by (VPC, address).
    targets: BTreeSet<(String, IpAddr)>,
    /// The Services some NetworkProbe names, when the plan was computed.
    probed: BTreeSet<String>,
}

impl Probes {
    fn start(cfg: &Config) -> Probes {
        let service = match crate::probe::ProbeService::spawn(cfg.ovs.netns.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the probe thread; backends are not probed");
                None
            }
        };
        Probes::with(service)
    }

    fn with(service: Option<crate::probe::ProbeService>) -> Probes {
        Probes {
            service,
            plan: crate::probe::Plan::default(),
            ports: BTreeMap::new(),
            writing: BTreeSet::new(),
            failed: BTreeMap::new(),
            local_unhealthy: BTreeSet::new(),
            remote_unhealthy: BTreeSet::new(),
            planned_for: None,
            targets: BTreeSet::new(),
            probed: BTreeSet::new(),
        }
    }

    /// This node's verdicts, for the controller.
    fn report(&self) -> pb::Health {
        pb::Health {
            unhealthy: self
                .local_unhealthy
                .iter()
                .map(|(vpc, ip)| pb::BackendRef {
                    vpc: vpc.clone(),
                    ip: ip.to_string(),
                })
                .collect(),
        }
    }

    /// `facts.unhealthy` = this node's verdicts, plus the controller's for the
    /// backends this node does not probe itself (its own verdicts are newer).
    /// True if it changed.
    fn merge_into(&self, facts: &mut NodeFacts) -> bool {
        let probed_here = |k: &(String, IpAddr)| self.targets.contains(k);
        let merged: BTreeSet<(String, IpAddr)> = self
            .local_unhealthy
            .iter()
            .cloned()
            .chain(
                self.remote_unhealthy
                    .iter()
                    .filter(|k| !probed_here(k))
                    .cloned(),
            )
            .collect();
        let changed = merged != facts.unhealthy;
        facts.unhealthy = merged;
        changed
    }

    async fn next_transition(&mut self) -> Option<crate::probe::engine::Transition> {
        match &mut self.service {
            Some(s) => s.transitions.recv().await,
            None => std::future::pending().await,
        }
    }

    /// After an update took the applied state from `before` to `after`
    /// ((version, pods revision)): if the plan was current and nothing it reads
    /// changed (probes, the Services they name, workloads, VPCs), it stays
    /// current without being recomputed.
    fn carry_plan(&mut self, before: (u64, u64), after: (u64, u64), changed: &BTreeSet<ObjectKey>) {
        if self.planned_for != Some(before) {
            return;
        }
        let reads = |k: &ObjectKey| match k.kind {
            Kind::Service => self.probed.contains(&k.name),
            Kind::NetworkProbe | Kind::Workload | Kind::Vpc => true,
            Kind::Subnet | Kind::Node => false,
        };
        if !changed.iter().any(reads) {
            self.planned_for = Some(after);
        }
    }

    /// Recomputes what to probe when the intent or the pods changed (`key`: the
    /// applied version and the pods' revision); queues the adds and removes of
    /// probe ports that match it on `writer`, retrying what failed (not sooner
    /// than [`PROBE_PORT_RETRY`] after the failure). `ports` changes when a write
    /// completes ([`Probes::completed`]). True if the plan changed.
    fn update<'a>(
        &mut self,
        key: (u64, u64),
        intent: impl FnOnce() -> std::borrow::Cow<'a, Intent>,
        alloc: &Allocations,
        cfg: &Config,
        ovsdb: &OvsdbSession,
        writer: &PortWriter<PortJob>,
    ) -> bool {
        let Some(service) = &self.service else {
            return false;
        };
        let plan = if self.planned_for == Some(key) {
            let settled = self
                .plan
                .links
                .iter()
                .all(|(v, z)| self.ports.get(z) == Some(v))
                && self.ports.len() == self.plan.links.len();
            if settled {
                return false;
            }
            self.plan.clone()
        } else {
            let intent = intent();
            self.probed = intent.probes.values().map(|p| p.service.clone()).collect();
            crate::probe::plan(&intent, alloc, &cfg.node_name)
        };
        let want: BTreeMap<u16, String> = plan.links.iter().map(|(v, z)| (*z, v.clone())).collect();
        if want != self.ports {
            let Some(client) = ovsdb.client() else {
                return false;
            };
            let now = tokio::time::Instant::now();
            self.failed.retain(|_, at| *at > now);
            for (zone, vpc) in &want {
                if self.ports.get(zone) == Some(vpc) || !self.may_write(*zone) {
                    continue;
                }
                self.writing.insert(*zone);
                writer.send(
                    client.clone(),
                    PortWrite::Internal {
                        port: crate::probe::link::port_name(*zone),
                        iface_id: crate::probe::link::iface_id(vpc),
                        mac: crate::probe::link::mac(*zone).to_string(),
                    },
                    ProbeJob::Add {
                        zone: *zone,
                        vpc: vpc.clone(),
                    },
                );
            }
            let gone: Vec<u16> = self
                .ports
                .keys()
                .filter(|z| !want.contains_key(z))
                .copied()
                .collect();
            for zone in gone {
                if !self.may_write(zone) {
                    continue;
                }
                self.writing.insert(zone);
                writer.send(
                    client.clone(),
                    PortWrite::Unplug {
                        port: crate::probe::link::port_name(zone),
                    },
                    ProbeJob::Remove { zone },
                );
            }
        }
        let changed = plan != self.plan;
        if changed {
            self.targets = plan.targets.iter().map(|t| (t.vpc.clone(), t.ip)).collect();
            let targets: Vec<String> = plan
                .targets
                .iter()
                .map(|t| format!("{}/{}:{}", t.vpc, t.ip, t.spec.port))
                .collect();
            tracing::info!(
                targets = %targets.join(" "),
                links = plan.links.len(),
                "probe plan"
            );
            service.set_plan(plan.clone());
            self.plan = plan;
        }
        self.planned_for = Some(key);
        changed
    }

    /// Whether a write for `zone` may be queued now: none in flight, and no
    /// failure too recent.
    fn may_write(&self, zone: u16) -> bool {
        !self.writing.contains(&zone) && !self.failed.contains_key(&zone)
    }

    /// A probe port write completed: `ports` follows what is on the bridge.
    fn completed(&mut self, job: ProbeJob, result: Result<(), OvsdbError>) {
        let zone = match &job {
            ProbeJob::Add { zone, .. } | ProbeJob::Remove { zone } => *zone,
        };
        self.writing.remove(&zone);
        let port = crate::probe::link::port_name(zone);
        match (job, result) {
            (ProbeJob::Add { vpc, .. }, Ok(())) => {
                self.ports.insert(zone, vpc);
            }
            (ProbeJob::Remove { .. }, Ok(())) => {
                self.ports.remove(&zone);
            }
            (job, Err(e)) => {
                match job {
                    ProbeJob::Add { .. } => {
                        tracing::warn!(%port, error = %e, "cannot add the probe port")
                    }
                    ProbeJob::Remove { .. } => {
                        tracing::warn!(%port, error = %e, "cannot remove the probe port")
                    }
                }
                self.failed
                    .insert(zone, tokio::time::Instant::now() + PROBE_PORT_RETRY);
            }
        }
    }
}

/// What the agent does when `ovs-vswitchd` goes away and comes back: set
/// `flow-restore-wait` so the new one does not forward with half-filled tables,
/// reinstall everything once it is back, then clear the key and read it back.
#[derive(Debug, Default)]
struct SwitchRestart {
    /// When the switch was seen gone (the start of the forwarding gap).
    since: Option<tokio::time::Instant>,
    /// The key is set (or may be) and the next successful apply clears it.
    reinstalling: bool,
}

impl SwitchRestart {
    async fn gone(&mut self, ovsdb: &OvsdbSession) {
        if self.since.is_some() {
            return;
        }
        self.since = Some(tokio::time::Instant::now());
        let set = match ovsdb.client() {
            Some(c) => crate::vswitch::ovsdb::set_flow_restore_wait(&c, true)
                .await
                .map_err(|e| e.to_string()),
            None => Err("OVSDB is not connected".into()),
        };
        match set {
            Ok(()) => tracing::warn!(
                "ovs-vswitchd is gone; set flow-restore-wait until everything is back"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "ovs-vswitchd is gone; could not set flow-restore-wait")
            }
        }
    }

    /// After a successful apply: clear the key and check that it is cleared.
    async fn finish(&mut self, ovsdb: &OvsdbSession) {
        let Some(c) = ovsdb.client() else { return };
        let cleared = async {
            crate::vswitch::ovsdb::set_flow_restore_wait(&c, false).await?;
            crate::vswitch::ovsdb::flow_restore_wait(&c).await
        };
        match cleared.await {
            Ok(false) => {
                let gap_ms = self.since.map(|t| t.elapsed().as_millis());
                tracing::info!(?gap_ms, "reinstalled after the ovs-vswitchd restart; flow-restore-wait cleared and verified");
                *self = SwitchRestart::default();
            }
            Ok(true) => {
                tracing::warn!("flow-restore-wait is still set after clearing it; retrying")
            }
            Err(e) => tracing::warn!(error = %e, "cannot clear flow-restore-wait; retrying"),
        }
    }
}

/// The bridge's Geneve port, put back whenever it is missing (the bridge was
/// recreated, someone deleted it), at most every 2 s.
struct TunnelPort {
    name: String,
    last_try: Option<tokio::time::Instant>,
    /// A write is in flight.
    writing: bool,
}

impl TunnelPort {
    fn new(bridge: &str) -> Self {
        TunnelPort {
            name: format!("{bridge}-gnv"),
            last_try: None,
            writing: false,
        }
    }

    /// Queues the port's write on `writer` when it is missing, none is in flight
    /// and the last try is 2 s old.
    fn ensure(&mut self, ovsdb: &OvsdbSession, writer: &PortWriter<PortJob>, facts: &NodeFacts) {
        if facts.ports.contains_key(TUNNEL_IFACE_ID)
            || self.writing
            || self
                .last_try
                .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        self.last_try = Some(tokio::time::Instant::now());
        let Some(client) = ovsdb.client() else { return };
        self.writing = true;
        writer.send(
            client,
            PortWrite::Tunnel {
                port: self.name.clone(),
            },
            PortJob::Tunnel,
        );
    }

    fn completed(&mut self, result: Result<(), OvsdbError>) {
        self.writing = false;
        match result {
            Ok(()) => tracing::info!(port = %self.name, "Geneve tunnel port on the bridge"),
            Err(e) => tracing::warn!(port = %self.name, error = %e, "cannot add the tunnel port"),
        }
    }
}

fn ports_of(state: &OvsdbState) -> BTreeMap<String, u32> {
    state
        .ports
        .iter()
        .map(|(id, p)| (id.clone(), p.ofport))
        .collect()
}

async fn wait_bridge(
    cfg: &Config,
    rx: &mut watch::Receiver<OvsdbState>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<NodeFacts> {
    loop {
        {
            let s = rx.borrow_and_update();
            if s.connected && s.bridge_ready {
                return Some(NodeFacts {
                    node: cfg.node_name.clone(),
                    ports: ports_of(&s),
                    host_port: cfg.host.as_ref().map(|h| h.port.clone()),
                    uplink: cfg
                        .uplink
                        .as_ref()
                        .map(|u| (u.port.clone(), u.mac_for(&cfg.node_name))),
                    unhealthy: Default::default(),
                });
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return None,
            r = rx.changed() => if r.is_err() { return None },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                let s = rx.borrow();
                tracing::warn!(db = %cfg.ovs.db_socket.display(), error = ?s.last_error, "waiting for OVSDB and the bridge");
            }
        }
    }
}

async fn start_reconciler<B: OpenFlowBackend>(
    backend: B,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Reconciler<B>> {
    let mut backend = Some(backend);
    loop {
        // The management socket appears a moment after the bridge.
        match Reconciler::start(backend.take()?).await {
            Ok(r) => return Some(r),
            Err((b, e)) => {
                tracing::warn!(error = %e, "cannot read the switch yet");
                backend = Some(b);
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return None,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Recompiles the applied intent against current facts and installs it. The
/// error is the line `last_error` shows.
async fn resync<B: OpenFlowBackend>(
    reconciler: &mut Reconciler<B>,
    applied: &mut Applied,
    pods: &Pods,
    facts: &Facts,
) -> Result<(), String> {
    let pods = pods.workloads(&facts.node);
    match applied.resync(reconciler, &pods, facts).await {
        Ok(stats) => {
            let compiled = applied.compiler.compiled();
            tracing::info!(version = applied.version, ops = stats.ops, flows_added = stats.flows_added,
                flows_deleted = stats.flows_deleted, groups_put = stats.groups_put,
                groups_deleted = stats.groups_deleted, pending = ?compiled.pending_ports,
                unreachable = ?compiled.unreachable, "reconciled");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(version = applied.version, error = %e, "reconcile failed; will retry");
            Err(format!("reconcile of version {}: {e}", applied.version))
        }
    }
}

/// The first error of a NACK, as one line.
fn nack_line(n: &pb::Nack) -> String {
    let first = n.errors.first().map_or(String::new(), |e| {
        let key = e.key.as_ref().map_or(String::new(), |k| {
            format!("{}/{}: ", kind_name(k.kind), k.name)
        });
        format!(": {key}{}: {}", e.field, e.message)
    });
    let more = n.errors.len().saturating_sub(1);
    let more = if more > 0 {
        format!(" (+{more} more)")
    } else {
        String::new()
    };
    format!("NACK v{}{first}{more}", n.version)
}

fn kind_name(kind: i32) -> String {
    pb::Kind::try_from(kind)
        .map_or_else(|_| format!("kind {kind}"), |k| k.as_str_name().to_string())
}

/// The loop's state, borrowed to answer an observer's query.
struct View<'a, B> {
    cfg: &'a Config,
    applied: &'a mut Applied,
    reconciler: &'a Reconciler<B>,
    pods: &'a Pods,
    facts: &'a Facts,
    controller_up: bool,
    last_error: Option<&'a str>,
    registry: &'a Registry,
}

impl<B: OpenFlowBackend> View<'_, B> {
    /// Answers `q`. The loop hands out shared snapshots only: copying the
    /// intent or building the LB index (O(intent)) is the asker's work.
    /// `generation` identifies the state, so an asker whose LB index is
    /// current is told so.
    fn answer(self, q: Query, generation: u64) {
        match q {
            Query::Summary(tx) => {
                let _ = tx.send(self.summary());
            }
            Query::Intent(tx) => {
                let _ = tx.send(self.applied.have_intent.then(|| self.intent()));
            }
            Query::Installed(tx) => {
                let _ = tx.send(self.reconciler.installed_snapshot().map(|d| Installed {
                    version: self.applied.version,
                    round: self.reconciler.round(),
                    state: d,
                }));
            }
            Query::Lb { have, tx } => {
                let reply = if have == Some(generation) {
                    LbReply::Unchanged
                } else {
                    LbReply::Build(
                        generation,
                        Box::new(LbInputs {
                            intent: self.intent(),
                            alloc: self.applied.alloc.clone(),
                            ready: self.applied.compiler.readiness().clone(),
                            unhealthy: self.facts.unhealthy.clone(),
                            installed: self.reconciler.installed_snapshot(),
                        }),
                    )
                };
                let _ = tx.send(reply);
            }
        }
    }

    fn intent(&self) -> IntentSnapshot {
        IntentSnapshot {
            version: self.applied.version,
            intent: self.applied.intent.clone(),
            pods: self.pods.workloads(&self.cfg.node_name),
        }
    }

    fn summary(self) -> Summary {
        let installed = self.reconciler.installed();
        Summary {
            node: self.cfg.node_name.clone(),
            applied_version: self.applied.version,
            desired_version: self.registry.desired_version().max(self.applied.version),
            have_intent: self.applied.have_intent,
            controller_connected: self.controller_up,
            services: self.applied.intent.services.len(),
            flows: installed.map_or(0, |d| d.flows.len()),
            groups: installed.map_or(0, |d| d.groups.len()),
            pending_ports: self.applied.pending_ports(self.facts),
            ports: self.facts.ports.clone(),
            unhealthy: self
                .facts
                .unhealthy
                .iter()
                .map(|(vpc, ip)| format!("{vpc}/{ip}"))
                .collect(),
            probe_details: self
                .registry
                .probe_details()
                .into_iter()
                .map(|((vpc, ip), d)| (format!("{vpc}/{ip}"), d))
                .collect(),
            last_error: self.last_error.map(str::to_string),
            tunnel_ip: self
                .applied
                .intent
                .nodes
                .get(&self.cfg.node_name)
                .map(|n| n.tunnel_ip),
        }
    }
}

/// Starts the observers: the status sent to the controller, the metrics
/// endpoint and the operator socket. A failure to start one is logged; the
/// agent forwards without them.
fn start_observers(
    cfg: &Config,
    agent: crate::observe::Agent,
    registry: Arc<Registry>,
    changed: watch::Receiver<u64>,
    status: watch::Sender<pb::Status>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use crate::observe::collect::Collector;
    let collector = Arc::new(Collector::new(cfg, agent.clone(), registry));
    let mut tasks = vec![tokio::spawn(collector.clone().run_status(
        changed,
        status,
        shutdown.clone(),
    ))];
    if cfg.metrics.enabled {
        let m = cfg.metrics.clone();
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let server = match crate::observe::http::bind(&m).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "metrics endpoint not started");
                    return;
                }
            };
            tracing::info!(addr = %server.local_addr(), tls = m.tls(), "metrics endpoint");
            // Scrapes share one observation at a time: each reads the switch.
            let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
            server
                .run(
                    move || {
                        let (c, lock) = (collector.clone(), one_at_a_time.clone());
                        async move {
                            let _turn = lock.lock().await;
                            c.metrics_text().await
                        }
                    },
                    stop,
                )
                .await;
        }));
    }
    let ctx = crate::observe::ops::Ctx {
        agent,
        node: cfg.node_name.clone(),
        bridge: cfg.ovs.bridge.clone(),
        ofctl_target: cfg.ofctl_target(),
        run_dir: cfg.ovs.run_dir.clone(),
        appctl_path: cfg.ovs.appctl_path.clone(),
        ofctl_path: cfg.ovs.ofctl_path.clone(),
        datapath_type: cfg.ovs.datapath_type.clone(),
    };
    let (path, stop) = (cfg.ops.socket.clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::observe::ops::server::serve(&path, ctx, stop).await {
            tracing::error!(error = %e, "operator socket not served");
        }
    }));
    tasks
}

/// The intent plus this node's attached pods: pods are forwarded to from the moment
/// they attach, whether or not the controller has echoed them back yet.
/// Borrows the intent when there are no pods, so a node without pods never copies
/// its (possibly 30k-Service) intent per compile.
fn with_pods<'a>(intent: &'a Intent, pods: &Pods, node: &str) -> std::borrow::Cow<'a, Intent> {
    crate::state::pods::intent_with_pods(intent, &pods.workloads(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe port counts as on the bridge only when its write completed; while
    /// one is in flight, or shortly after one failed, none is queued for its zone.
    #[test]
    fn probe_ports_follow_completions_one_write_per_zone() {
        let mut p = Probes::with(None);
        p.writing.insert(3);
        assert!(!p.may_write(3) && p.may_write(4));
        assert!(p.ports.is_empty());
        p.completed(
            ProbeJob::Add {
                zone: 3,
                vpc: "vpc-a".into(),
            },
            Err(OvsdbError::State("slow".into())),
        );
        assert!(p.ports.is_empty());
        assert!(!p.may_write(3), "retried at once after a failure");
        p.failed.clear();
        assert!(p.may_write(3));
        p.writing.insert(3);
        p.completed(
            ProbeJob::Add {
                zone: 3,
                vpc: "vpc-a".into(),
            },
            Ok(()),
        );
        assert_eq!(p.ports.get(&3).map(String::as_str), Some("vpc-a"));
        assert!(p.may_write(3));
        p.writing.insert(3);
        p.completed(ProbeJob::Remove { zone: 3 }, Ok(()));
        assert!(p.ports.is_empty() && p.writing.is_empty());
    }
}
