//! Answers to observers' queries, from the loop's state, by shared snapshot.

use dpu_proto::v1 as pb;

use crate::config::Config;
use crate::observe::registry::Registry;
use crate::observe::{Installed, IntentSnapshot, LbInputs, LbReply, Query, Summary};
use crate::reconcile::backend::OpenFlowBackend;
use crate::reconcile::Reconciler;
use crate::state::applied::{Applied, Facts};
use crate::state::pods::Pods;

/// The first error of a NACK, as one line.
pub(super) fn nack_line(n: &pb::Nack) -> String {
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

pub(super) fn kind_name(kind: i32) -> String {
    pb::Kind::try_from(kind)
        .map_or_else(|_| format!("kind {kind}"), |k| k.as_str_name().to_string())
}

/// The loop's state, borrowed to answer an observer's query.
pub(super) struct View<'a, B> {
    pub(super) cfg: &'a Config,
    pub(super) applied: &'a mut Applied,
    pub(super) reconciler: &'a Reconciler<B>,
    pub(super) pods: &'a Pods,
    pub(super) facts: &'a Facts,
    pub(super) controller: Option<&'a str>,
    pub(super) last_error: Option<&'a str>,
    pub(super) registry: &'a Registry,
}

impl<B: OpenFlowBackend> View<'_, B> {
    /// Answers `q`. The loop hands out shared snapshots only: copying the
    /// intent or building the LB index (O(intent)) is the asker's work.
    /// `generation` identifies the state, so an asker whose LB index is
    /// current is told so.
    pub(super) fn answer(self, q: Query, generation: u64) {
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

    pub(super) fn intent(&self) -> IntentSnapshot {
        IntentSnapshot {
            version: self.applied.version,
            intent: self.applied.intent.clone(),
            pods: self.pods.workloads(&self.cfg.node_name),
        }
    }

    pub(super) fn summary(self) -> Summary {
        let installed = self.reconciler.installed();
        Summary {
            node: self.cfg.node_name.clone(),
            applied_version: self.applied.version,
            desired_version: self.registry.desired_version().max(self.applied.version),
            have_intent: self.applied.have_intent,
            controller: self.controller.map(str::to_string),
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
