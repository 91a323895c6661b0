//! The agent loop: the one place that owns intent, allocations and the reconciler.
//!
//! [`Agent`] is the loop's state; everything it waits on (an update from the
//! controller, the bridge's ports, a pod to attach, a port write that finished,
//! a probe verdict, the switch's restart, an observer's question) comes to it as
//! one [`Event`], and [`Agent::handle`] is the only place its state changes.
//! Between events, [`Agent::settle`] does the work an event left behind: at most
//! one compile and one bundle, the probe plan, pod expiry. `run` (in `run.rs`)
//! starts everything and turns what it waits on into events; the unit tests
//! drive an `Agent` with events directly.
//!
//! An update is ACKed only after the bundle was committed, and NACKed (with
//! nothing changed) otherwise.

pub mod notify;
mod probes;
mod run;
#[cfg(test)]
mod tests;
mod view;
mod vswitch;

use std::sync::Arc;

use dpu_model::Intent;
use dpu_proto::v1 as pb;
use tokio::sync::watch;

use crate::attach::AttachCmd;
use crate::compile::NodeFacts;
use crate::config::Config;
use crate::control::session::SessionEvent;
use crate::observe::registry::Registry;
use crate::observe::Query;
use crate::probe::engine::Transition;
use crate::reconcile::backend::OpenFlowBackend;
use crate::reconcile::Reconciler;
use crate::state::applied::{Applied, Facts};
use crate::state::pods::Pods;
use crate::state::store::{Store, StoreError};
use crate::vswitch::liveness::SwitchLink;
use crate::vswitch::ovsdb::{OvsdbSession, OvsdbState};
use crate::vswitch::portwriter::{Done, PortWriter};
use notify::AgentStatus;
use probes::Probes;
pub use run::run;
use view::View;
use vswitch::{ports_of, PortJob, SwitchRestart, TunnelPort};

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

/// Everything the loop waits on, one at a time.
#[derive(Debug)]
enum Event {
    /// From the controller session: an update to answer, the session going up
    /// or down, or the controller's health verdicts.
    Session(SessionEvent),
    /// OVSDB's view of the bridge changed.
    Ovsdb(OvsdbState),
    /// The host shim asks to attach or detach a pod.
    Attach(AttachCmd),
    /// A port write finished.
    PortWritten(Done<PortJob>),
    /// A probe found a backend healthy or unhealthy.
    Probe(Transition),
    /// The switch's management socket went away or came back.
    Switch(SwitchLink),
    /// An observer's question.
    Query(Query),
    /// A timer: nothing new, but a retry (reconcile, pods, flow-restore-wait)
    /// may be due.
    Tick,
}

/// What the agent is built from; `run` opens them, the tests make their own.
struct Parts<B> {
    cfg: Config,
    store: Store,
    ovsdb: OvsdbSession,
    writer: PortWriter<PortJob>,
    reconciler: Reconciler<B>,
    applied: Applied,
    pods: Pods,
    facts: NodeFacts,
    probes: Probes,
    registry: Arc<Registry>,
}

/// What the agent publishes, for the session and the observers.
struct Feeds {
    /// The applied version (the session's Hello and its ACKs).
    applied: watch::Receiver<crate::control::session::AppliedAt>,
    /// This node's attached pods, for the controller.
    local: watch::Receiver<pb::LocalWorkloads>,
    /// This node's probe verdicts, for the controller.
    health: watch::Receiver<pb::Health>,
    /// Bumped whenever what observers see may have changed.
    changed: watch::Receiver<u64>,
}

/// The loop's state. One task owns it; nothing else changes it.
struct Agent<B> {
    cfg: Config,
    store: Store,
    ovsdb: OvsdbSession,
    writer: PortWriter<PortJob>,
    reconciler: Reconciler<B>,
    applied: Applied,
    pods: Pods,
    /// Every change goes through `Facts::edit`, which counts it: the compiler
    /// compares facts only when they may have changed.
    facts: Facts,
    probes: Probes,
    tunnel: TunnelPort,
    restart: SwitchRestart,
    registry: Arc<Registry>,
    applied_tx: watch::Sender<crate::control::session::AppliedAt>,
    local_tx: watch::Sender<pb::LocalWorkloads>,
    health_tx: watch::Sender<pb::Health>,
    changed_tx: watch::Sender<u64>,
    /// The line `show` prints: the last reconcile failure or NACK.
    last_error: Option<String>,
    /// The switch may not hold what the applied intent compiles to.
    dirty: bool,
    /// OVSDB said the bridge is gone; when it is back, the switch is read again.
    bridge_lost: bool,
    /// The endpoint the controller session is up on; `None` while it is down.
    controller: Option<String>,
}

impl<B: OpenFlowBackend> Agent<B> {
    fn new(p: Parts<B>) -> (Agent<B>, Feeds) {
        let (applied_tx, applied) = watch::channel(p.applied.at());
        let (local_tx, local) = watch::channel(p.pods.report(&p.cfg.node_name));
        let (health_tx, health) = watch::channel(pb::Health::default());
        let (changed_tx, changed) = watch::channel(0u64);
        let agent = Agent {
            tunnel: TunnelPort::new(&p.cfg.ovs.bridge),
            // Restoring is a reconcile like any other: nothing is flushed first.
            dirty: p.applied.have_intent,
            cfg: p.cfg,
            store: p.store,
            ovsdb: p.ovsdb,
            writer: p.writer,
            reconciler: p.reconciler,
            applied: p.applied,
            pods: p.pods,
            facts: Facts::new(p.facts),
            probes: p.probes,
            restart: SwitchRestart::default(),
            registry: p.registry,
            applied_tx,
            local_tx,
            health_tx,
            changed_tx,
            last_error: None,
            bridge_lost: false,
            controller: None,
        };
        let feeds = Feeds {
            applied,
            local,
            health,
            changed,
        };
        (agent, feeds)
    }

    /// The first port writes: the tunnel port, and the ports of restored pods
    /// that are not on the bridge.
    fn start(&mut self) {
        self.tunnel.ensure(&self.ovsdb, &self.writer, &self.facts);
        self.pods
            .replug_missing(&self.ovsdb, &self.writer, &self.facts);
    }

    /// Whether the loop should wake up on its retry timer.
    fn wants_retry(&self) -> bool {
        self.dirty || self.pods.waiting() || self.restart.reinstalling
    }

    /// Whether an attachment request may be taken now: not while a pod's port
    /// write is in flight (the next one waits in its channel).
    fn accepts_attach(&self) -> bool {
        !self.pods.busy()
    }

    /// This node's attached pods, for the controller.
    fn publish_pods(&self) {
        let _ = self.local_tx.send(self.pods.report(&self.cfg.node_name));
    }

    fn observers_changed(&self) {
        self.changed_tx.send_modify(|g| *g += 1);
    }

    /// The work events leave behind, done between them: reinstall when the
    /// switch may not hold the applied intent, finish a restart, replan the
    /// probes, expire pods. Returns the status for systemd.
    async fn settle(&mut self) -> AgentStatus {
        if self.dirty {
            let r = resync(
                &mut self.reconciler,
                &mut self.applied,
                &self.pods,
                &self.facts,
            )
            .await;
            self.dirty = r.is_err();
            self.registry.reconciled(r.is_ok());
            if let Some(t) = self.reconciler.take_bundle_time() {
                self.registry.bundle(t);
            }
            self.last_error = r.err();
            self.observers_changed();
            if !self.dirty {
                self.pods.settle(&self.facts);
            }
        }
        if !self.dirty && self.restart.reinstalling {
            self.restart.finish(&self.ovsdb).await;
        }
        if self.applied.have_intent {
            let key = (self.applied.version, self.pods.revision());
            let (applied, pods, node) = (&self.applied, &self.pods, &self.cfg.node_name);
            let replanned = self.probes.update(
                key,
                || with_pods(&applied.intent, pods, node),
                &applied.alloc,
                &self.cfg,
                &self.ovsdb,
                &self.writer,
            );
            if replanned {
                self.registry
                    .probe_targets(self.probes.targets.iter().cloned());
                // A backend no longer probed here has no health of ours.
                if self.probes.forget_untargeted() {
                    let _ = self.health_tx.send(self.probes.report());
                }
                if self.probes.merge_into(self.facts.edit()) {
                    self.dirty = true;
                }
            }
        }
        self.pods.expire();
        AgentStatus {
            controller: self.controller.clone(),
            applied_version: self.applied.have_intent.then_some(self.applied.version),
            pods: self.pods.pool.records.len(),
        }
    }

    /// Handles one event. This is the only place the loop's state changes.
    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Session(SessionEvent::Health(h)) => {
                self.probes.remote_unhealthy = h
                    .unhealthy
                    .iter()
                    .filter_map(|b| Some((b.vpc.clone(), b.ip.parse().ok()?)))
                    .collect();
                if self.probes.merge_into(self.facts.edit()) {
                    tracing::info!(
                        unhealthy = self.facts.unhealthy.len(),
                        "backend health from the controller"
                    );
                    self.dirty = self.applied.have_intent;
                }
            }
            Event::Session(SessionEvent::Connected(endpoint)) => {
                tracing::debug!(
                    endpoint = endpoint.as_deref().unwrap_or("none"),
                    "controller session"
                );
                self.controller = endpoint;
                self.observers_changed();
            }
            Event::Session(SessionEvent::Update(update, reply)) => {
                self.on_update(update, reply).await;
            }
            Event::Ovsdb(state) => self.on_ovsdb(state).await,
            Event::Attach(cmd) => {
                let intent = self.applied.have_intent.then_some(&*self.applied.intent);
                if self.pods.handle(
                    cmd,
                    &self.cfg,
                    &self.store,
                    &self.ovsdb,
                    &self.writer,
                    intent,
                ) {
                    self.publish_pods();
                    self.dirty = true;
                }
            }
            // A port write finished: only now does the state it changes change.
            Event::PortWritten(Done { tag, result }) => match tag {
                PortJob::Tunnel => self.tunnel.completed(result),
                PortJob::Probe(job) => self.probes.completed(job, result),
                PortJob::Pod(job) => {
                    if self.pods.completed(*job, result, &self.cfg, &self.store) {
                        self.publish_pods();
                        self.dirty = true;
                    }
                }
            },
            Event::Probe(t) => {
                let key = (t.vpc.clone(), t.ip);
                if t.healthy {
                    self.probes.local_unhealthy.remove(&key);
                } else {
                    self.probes.local_unhealthy.insert(key);
                }
                tracing::info!(vpc = %t.vpc, ip = %t.ip, healthy = t.healthy, detail = %t.detail,
                    "backend health changed");
                self.registry
                    .probe_transition(&t.vpc, t.ip, t.healthy, &t.detail);
                let _ = self.health_tx.send(self.probes.report());
                if self.probes.merge_into(self.facts.edit()) {
                    self.dirty = self.applied.have_intent;
                }
            }
            Event::Switch(link) => self.on_switch(link).await,
            Event::Query(q) => {
                let generation = *self.changed_tx.borrow();
                let view = View {
                    cfg: &self.cfg,
                    applied: &mut self.applied,
                    reconciler: &self.reconciler,
                    pods: &self.pods,
                    facts: &self.facts,
                    controller: self.controller.as_deref(),
                    last_error: self.last_error.as_deref(),
                    registry: &self.registry,
                };
                view.answer(q, generation);
            }
            Event::Tick => {}
        }
    }

    /// An update from the controller: applied and ACKed, or NACKed with
    /// nothing changed. The reply goes out before the store is compacted.
    async fn on_update(
        &mut self,
        update: pb::Update,
        reply: tokio::sync::oneshot::Sender<pb::agent_message::Msg>,
    ) {
        self.registry.desired(update.version);
        let before = (self.applied.version, self.pods.revision());
        let pod_workloads = self.pods.workloads(&self.cfg.node_name);
        let handled = self
            .applied
            .handle_update(
                &self.cfg.node_name,
                &self.store,
                &mut self.reconciler,
                &pod_workloads,
                &self.facts,
                update,
            )
            .await;
        if let Some(t) = self.reconciler.take_bundle_time() {
            self.registry.bundle(t);
        }
        match &handled.msg {
            pb::agent_message::Msg::Nack(n) => {
                self.registry.answered(false);
                self.last_error = Some(view::nack_line(n));
            }
            _ => {
                self.registry.answered(true);
                self.last_error = None;
            }
        }
        if let Some(changed) = &handled.changed {
            let _ = self.applied_tx.send(self.applied.at());
            let after = (self.applied.version, self.pods.revision());
            self.probes.carry_plan(before, after, changed);
        }
        self.observers_changed();
        let _ = reply.send(handled.msg);
        // Off the update's path: the Ack is out.
        self.applied.after_ack(&self.store);
    }

    /// OVSDB's view changed: the bridge went or came back, or its ports changed.
    async fn on_ovsdb(&mut self, state: OvsdbState) {
        if !state.bridge_ready {
            self.bridge_lost = true;
            return;
        }
        if !state.connected {
            return;
        }
        if self.bridge_lost {
            // The bridge came back (recreated, or vswitchd restarted): its
            // tables may be empty or old. Read it again and reinstall.
            match self.reconciler.forget_installed().await {
                Ok(()) => {
                    self.bridge_lost = false;
                    self.dirty = self.applied.have_intent;
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the switch"),
            }
        }
        let ports = ports_of(&state);
        if ports != self.facts.ports {
            self.facts.edit().ports = ports;
            self.dirty = self.applied.have_intent;
        }
        self.tunnel.ensure(&self.ovsdb, &self.writer, &self.facts);
    }

    /// The switch's management socket went away or came back.
    async fn on_switch(&mut self, link: SwitchLink) {
        match link {
            SwitchLink::Down => self.restart.gone(&self.ovsdb).await,
            SwitchLink::Up { generation } if generation > 1 || self.restart.since.is_some() => {
                // A new ovs-vswitchd (the userspace datapath starts with
                // empty tables): read the switch again and reinstall.
                match self.reconciler.forget_installed().await {
                    Ok(()) => {
                        self.dirty = self.applied.have_intent;
                        self.restart.reinstalling = true;
                        tracing::info!(generation, "ovs-vswitchd is back; reinstalling everything");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the switch after its restart")
                    }
                }
            }
            SwitchLink::Up { .. } | SwitchLink::Unknown => {}
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

/// The intent plus this node's attached pods: pods are forwarded to from the moment
/// they attach, whether or not the controller has echoed them back yet.
/// Borrows the intent when there are no pods, so a node without pods never copies
/// its (possibly 30k-Service) intent per compile.
fn with_pods<'a>(intent: &'a Intent, pods: &Pods, node: &str) -> std::borrow::Cow<'a, Intent> {
    crate::state::pods::intent_with_pods(intent, &pods.workloads(node))
}
