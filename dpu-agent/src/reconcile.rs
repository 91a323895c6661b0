//! The reconciler: the only writer to the switch. It diffs desired against
//! installed (flows by table+priority+match, groups by id) and sends the difference
//! as one ordered, atomic bundle: groups first, then flows, then deletions.
//!
//! A new agent incarnation never flushes. It starts a new cookie round, installs
//! everything under it (an `add` of an identical flow replaces it in place, so
//! forwarding never stops), and in the same bundle deletes by mask whatever older
//! rounds left behind.

use std::collections::BTreeSet;

use crate::flows::DesiredState;
use crate::openflow::{BundleOp, OpenFlowBackend, OpenFlowError};
use crate::pipeline::cookie::{round_of, Cookie, ROUND_MASK, ROUND_SHIFT};
use crate::pipeline::SESSION_AFFINITY;

/// Counts of one applied change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub ops: usize,
    pub flows_added: usize,
    pub flows_deleted: usize,
    pub groups_put: usize,
    pub groups_deleted: usize,
}

#[derive(Debug)]
pub struct Reconciler<B> {
    backend: B,
    round: u16,
    /// What this incarnation installed; `None` until the first bundle landed.
    installed: Option<DesiredState>,
    /// Rounds and groups found on the switch at start, left by older incarnations.
    stale_rounds: BTreeSet<u16>,
    stale_groups: BTreeSet<u32>,
}

impl<B: OpenFlowBackend> Reconciler<B> {
    /// Reads what the switch holds and picks a round no installed flow uses.
    /// On error the backend is handed back so the caller can retry.
    pub async fn start(backend: B) -> Result<Self, (B, OpenFlowError)> {
        let mut r = Reconciler {
            backend,
            round: 0,
            installed: None,
            stale_rounds: BTreeSet::new(),
            stale_groups: BTreeSet::new(),
        };
        match r.forget_installed().await {
            Ok(()) => Ok(r),
            Err(e) => Err((r.backend, e)),
        }
    }

    /// Forgets the installed view and reads the switch again, under a new round:
    /// for a start, or after the switch may have lost or changed its tables (the
    /// bridge was recreated, `ovs-vswitchd` restarted). The next apply reinstalls
    /// everything and removes whatever is stale. Nothing is flushed.
    pub async fn forget_installed(&mut self) -> Result<(), OpenFlowError> {
        let summary = self.backend.installed().await?;
        let mut rounds: BTreeSet<u16> = summary
            .cookies
            .iter()
            .map(|c| round_of(*c))
            .filter(|r| *r != 0)
            .collect();
        rounds.insert(self.round);
        self.round = next_round(&rounds);
        rounds.remove(&0);
        tracing::info!(
            round = self.round,
            installed_flows = summary.flows,
            installed_groups = summary.group_ids.len(),
            "read the switch; nothing flushed"
        );
        self.stale_rounds = rounds;
        self.stale_groups = summary.group_ids;
        self.installed = None;
        Ok(())
    }

    pub fn round(&self) -> u16 {
        self.round
    }

    pub fn installed(&self) -> Option<&DesiredState> {
        self.installed.as_ref()
    }

    /// The bundle that takes the switch from installed to `desired`.
    pub fn plan(&self, desired: &DesiredState) -> Vec<BundleOp> {
        let round = self.round;
        let add = |k: &crate::flows::FlowKey, b: &crate::flows::FlowBody| BundleOp::AddFlow {
            key: k.clone(),
            body: b.clone(),
            cookie: b.cookie.value(round),
        };
        let mut ops = Vec::new();
        let Some(installed) = &self.installed else {
            ops.extend(desired.groups.values().cloned().map(BundleOp::PutGroup));
            ops.extend(desired.flows.iter().map(|(k, b)| add(k, b)));
            for r in &self.stale_rounds {
                ops.push(BundleOp::DeleteFlowsByCookie {
                    table: None,
                    cookie: u64::from(*r) << ROUND_SHIFT,
                    mask: ROUND_MASK,
                });
            }
            for id in self
                .stale_groups
                .iter()
                .filter(|id| !desired.groups.contains_key(id))
            {
                ops.push(BundleOp::DeleteGroup(*id));
            }
            return ops;
        };

        let mut flush_learned: BTreeSet<Cookie> = BTreeSet::new();
        for (id, g) in &desired.groups {
            match installed.groups.get(id) {
                Some(old) if old == g => {}
                Some(old) => {
                    if old.learns {
                        flush_learned.insert(old.owner.learned());
                    }
                    ops.push(BundleOp::PutGroup(g.clone()));
                }
                None => ops.push(BundleOp::PutGroup(g.clone())),
            }
        }
        for (k, b) in &desired.flows {
            if installed.flows.get(k) != Some(b) {
                ops.push(add(k, b));
            }
        }
        for k in installed
            .flows
            .keys()
            .filter(|k| !desired.flows.contains_key(*k))
        {
            ops.push(BundleOp::DeleteFlow(k.clone()));
        }
        for (id, old) in &installed.groups {
            if !desired.groups.contains_key(id) && old.learns {
                flush_learned.insert(old.owner.learned());
            }
        }
        // Affinity entries may point at a backend that just left; they are
        // re-learned on the next new connection.
        for c in flush_learned {
            ops.push(BundleOp::DeleteFlowsByCookie {
                table: Some(SESSION_AFFINITY.id),
                cookie: c.value(0),
                mask: Cookie::SELECT_MASK | ROUND_MASK,
            });
        }
        for id in installed
            .groups
            .keys()
            .filter(|id| !desired.groups.contains_key(*id))
        {
            ops.push(BundleOp::DeleteGroup(*id));
        }
        ops
    }

    /// Applies `desired`. On error nothing changed on the switch (bundles are
    /// atomic) and the installed view stays as it was.
    pub async fn apply(&mut self, desired: &DesiredState) -> Result<ApplyStats, OpenFlowError> {
        let ops = self.plan(desired);
        let mut stats = ApplyStats {
            ops: ops.len(),
            ..ApplyStats::default()
        };
        for op in &ops {
            match op {
                BundleOp::PutGroup(_) => stats.groups_put += 1,
                BundleOp::AddFlow { .. } => stats.flows_added += 1,
                BundleOp::DeleteFlow(_) | BundleOp::DeleteFlowsByCookie { .. } => {
                    stats.flows_deleted += 1
                }
                BundleOp::DeleteGroup(_) => stats.groups_deleted += 1,
            }
        }
        self.backend.apply(&ops).await?;
        self.installed = Some(desired.clone());
        self.stale_rounds.clear();
        self.stale_groups.clear();
        Ok(stats)
    }
}

/// The round after the highest one in use, skipping 0 (reserved for learned flows).
fn next_round(in_use: &BTreeSet<u16>) -> u16 {
    let mut r = in_use
        .iter()
        .next_back()
        .copied()
        .unwrap_or(0)
        .wrapping_add(1);
    while r == 0 || in_use.contains(&r) {
        r = r.wrapping_add(1);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{Actions, Match};
    use crate::openflow::InstalledSummary;
    use crate::pipeline::cookie::Category;
    use crate::pipeline::CONNTRACK;
    use std::sync::{Arc, Mutex};

    /// A fake switch that records bundles and can be told to refuse the next one.
    #[derive(Debug, Clone, Default)]
    struct FakeSwitch {
        bundles: Arc<Mutex<Vec<Vec<BundleOp>>>>,
        summary: InstalledSummary,
        refuse: Arc<Mutex<bool>>,
    }

    impl OpenFlowBackend for FakeSwitch {
        async fn apply(&mut self, ops: &[BundleOp]) -> Result<(), OpenFlowError> {
            if std::mem::take(&mut *self.refuse.lock().unwrap()) {
                return Err(OpenFlowError::Rejected("refused".into()));
            }
            self.bundles.lock().unwrap().push(ops.to_vec());
            Ok(())
        }
        async fn installed(&mut self) -> Result<InstalledSummary, OpenFlowError> {
            Ok(self.summary.clone())
        }
    }

    fn state(n: u16) -> DesiredState {
        let mut d = DesiredState::default();
        for p in 0..n {
            d.add(
                CONNTRACK,
                p,
                Match::new().kw("ip"),
                Actions::drop(),
                Cookie::new(Category::Vpc, "v"),
            );
        }
        d
    }

    #[tokio::test]
    async fn first_bundle_adds_under_a_new_round_and_deletes_old_rounds() {
        let mut sw = FakeSwitch::default();
        sw.summary.cookies = [0, 3u64 << ROUND_SHIFT].into();
        sw.summary.group_ids = [9].into();
        let mut r = Reconciler::start(sw.clone()).await.unwrap();
        assert_eq!(r.round(), 4);
        r.apply(&state(2)).await.unwrap();
        let b = sw.bundles.lock().unwrap()[0].clone();
        assert!(matches!(&b[0], BundleOp::AddFlow { cookie, .. } if round_of(*cookie) == 4));
        assert_eq!(
            b[2],
            BundleOp::DeleteFlowsByCookie {
                table: None,
                cookie: 3 << ROUND_SHIFT,
                mask: ROUND_MASK
            }
        );
        assert_eq!(b[3], BundleOp::DeleteGroup(9));
    }

    #[tokio::test]
    async fn later_bundles_carry_only_the_difference() {
        let sw = FakeSwitch::default();
        let mut r = Reconciler::start(sw.clone()).await.unwrap();
        r.apply(&state(3)).await.unwrap();
        let stats = r.apply(&state(2)).await.unwrap();
        assert_eq!((stats.flows_added, stats.flows_deleted), (0, 1));
        let stats = r.apply(&state(2)).await.unwrap();
        assert_eq!(stats.ops, 0);
    }

    #[tokio::test]
    async fn a_refused_bundle_leaves_the_installed_view_alone() {
        let sw = FakeSwitch::default();
        let mut r = Reconciler::start(sw.clone()).await.unwrap();
        r.apply(&state(1)).await.unwrap();
        *sw.refuse.lock().unwrap() = true;
        assert!(r.apply(&state(5)).await.is_err());
        assert_eq!(r.installed(), Some(&state(1)));
        assert_eq!(r.plan(&state(5)).len(), 4);
    }

    #[test]
    fn rounds_skip_zero_and_wrap() {
        assert_eq!(next_round(&BTreeSet::new()), 1);
        assert_eq!(next_round(&[u16::MAX].into()), 1);
    }
}
