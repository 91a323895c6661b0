//! The reconciler: the only writer to the switch. It diffs desired against
//! installed (flows by table+priority+match, groups by id) and sends the difference
//! as one ordered, atomic bundle: groups first, then flows, then deletions.
//!
//! A new agent incarnation never flushes. It starts a new cookie round, installs
//! everything under it (an `add` of an identical flow replaces it in place, so
//! forwarding never stops), and in the same bundle deletes by mask whatever older
//! rounds left behind.
//!
//! Learned session-affinity entries (round 0) outlive incarnations and changes
//! of their Service's group. Each AffinityLearn flow learns under a cookie of its
//! own, one per (Service, VIP, port, backend) (see
//! [`crate::compile::affinity_cookie`]). When such a flow goes (its backend left
//! the Service, turned unhealthy, was drained, or the Service went), the same
//! bundle deletes the entries with its cookie, so no client stays pinned to a
//! backend that takes no new connections, while clients of every other backend
//! stay where they are (Kubernetes keeps them until their timeout): in normal
//! operation by comparing with what this incarnation installed, after a start by
//! comparing the learned cookies the switch holds with the ones the desired
//! AffinityLearn flows learn (see [`Reconciler::forget_installed`]).

pub mod backend;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::compile::flows::{DesiredState, FlowBody};
use crate::compile::incremental::Changes;
use crate::compile::pipeline::cookie::{
    round_of, Category, CATEGORY_MASK, CATEGORY_SHIFT, ROUND_MASK, ROUND_SHIFT,
};
use crate::compile::pipeline::SESSION_AFFINITY;
use crate::reconcile::backend::{BundleOp, InstalledGroup, OpenFlowBackend, OpenFlowError};

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
    /// Shared with observers as a snapshot ([`Self::installed_snapshot`]);
    /// copied on the next write only while one still holds it.
    installed: Option<Arc<DesiredState>>,
    /// Rounds and groups found on the switch at start, left by older incarnations.
    stale_rounds: BTreeSet<u16>,
    stale_groups: BTreeMap<u32, InstalledGroup>,
    /// The cookies of the learned affinity entries found on the switch at start.
    stale_learned: BTreeSet<u64>,
    /// Whether the switch held any flow when it was last read. If it held
    /// none, no `learn` action could run between that read and the first
    /// bundle's commit, so that bundle needs no second read for strays.
    found_flows: bool,
    /// How long the last bundle took, from send to the switch's confirmation;
    /// taken by the agent loop for the metrics.
    bundle_time: Option<std::time::Duration>,
    /// True while a bundle is under way: readers of the switch's counters
    /// hold their next request until it is false (`observe::switch_stats`).
    busy: Option<Arc<tokio::sync::watch::Sender<bool>>>,
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
            stale_groups: BTreeMap::new(),
            stale_learned: BTreeSet::new(),
            found_flows: true,
            bundle_time: None,
            busy: None,
        };
        match r.forget_installed().await {
            Ok(()) => Ok(r),
            Err(e) => Err((r.backend, e)),
        }
    }

    /// Forgets the installed view and reads the switch again, under a new round:
    /// for a start, or after the switch may have lost or changed its tables (the
    /// bridge was recreated, `ovs-vswitchd` restarted). The next apply reinstalls
    /// everything and removes whatever is stale. Nothing is flushed but the
    /// affinity entries of backends that left meanwhile: the learned cookies
    /// read here stand in for the installed view the next apply compares with.
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
            installed_groups = summary.groups.len(),
            "read the switch; nothing flushed"
        );
        self.stale_rounds = rounds;
        self.stale_groups = summary.groups;
        self.stale_learned = summary
            .cookies
            .iter()
            .copied()
            .filter(|c| is_learned_entry(*c))
            .collect();
        self.found_flows = summary.flows > 0;
        self.installed = None;
        Ok(())
    }

    /// Says on `busy` when a bundle is under way (true from before it is sent
    /// until its last barrier reply or its failure).
    pub fn set_busy_signal(&mut self, busy: Arc<tokio::sync::watch::Sender<bool>>) {
        self.busy = Some(busy);
    }

    /// One bundle, timed.
    async fn send(&mut self, ops: &[BundleOp]) -> Result<(), OpenFlowError> {
        // An empty apply sends nothing: it is no bundle to time or announce.
        if ops.is_empty() {
            return self.backend.apply(ops).await;
        }
        let busy = self.busy.clone();
        if let Some(b) = &busy {
            b.send_replace(true);
        }
        let t0 = std::time::Instant::now();
        let r = self.backend.apply(ops).await;
        self.bundle_time = Some(t0.elapsed());
        if let Some(b) = &busy {
            b.send_replace(false);
        }
        r
    }

    /// The duration of the bundle sent since the last call, if any.
    pub fn take_bundle_time(&mut self) -> Option<std::time::Duration> {
        self.bundle_time.take()
    }

    pub fn round(&self) -> u16 {
        self.round
    }

    pub fn installed(&self) -> Option<&DesiredState> {
        self.installed.as_deref()
    }

    /// The installed view for an observer: O(1) on the agent's loop.
    pub fn installed_snapshot(&self) -> Option<Arc<DesiredState>> {
        self.installed.clone()
    }

    /// The bundle that takes the switch from installed to `desired`.
    pub fn plan(&self, desired: &DesiredState) -> Vec<BundleOp> {
        let round = self.round;
        let add = |k: &crate::compile::flows::FlowKey, b: &crate::compile::flows::FlowBody| {
            BundleOp::AddFlow {
                key: k.clone(),
                body: b.clone(),
                cookie: b.cookie.value(round),
            }
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
            ops.extend(self.learned_gone_since_start(desired).map(flush));
            for id in self
                .stale_groups
                .keys()
                .filter(|id| !desired.groups.contains_key(id))
            {
                ops.push(BundleOp::DeleteGroup(*id));
            }
            return ops;
        };

        let mut flush_learned: BTreeSet<u64> = BTreeSet::new();
        for (id, g) in &desired.groups {
            if installed.groups.get(id) != Some(g) {
                ops.push(BundleOp::PutGroup(g.clone()));
            }
        }
        for (k, b) in &desired.flows {
            let old = installed.flows.get(k);
            if old != Some(b) {
                flush_learned.extend(learned_gone(old, Some(b)));
                ops.push(add(k, b));
            }
        }
        for (k, old) in installed
            .flows
            .iter()
            .filter(|(k, _)| !desired.flows.contains_key(*k))
        {
            flush_learned.extend(learned_gone(Some(old), None));
            ops.push(BundleOp::DeleteFlow(k.clone()));
        }
        // Entries learned by an AffinityLearn flow that went pin clients to a
        // backend that left; they are re-learned on the next new connection.
        // Every other entry stays: its backend still has its buckets.
        ops.extend(flush_learned.into_iter().map(flush));
        for id in installed
            .groups
            .keys()
            .filter(|id| !desired.groups.contains_key(*id))
        {
            ops.push(BundleOp::DeleteGroup(*id));
        }
        ops
    }

    /// Before the first bundle since the start: the cookies of the learned
    /// entries on the switch that no desired flow learns any more, as normal
    /// operation would have flushed them: their AffinityLearn flow went while
    /// no agent ran (its backend left or lost its bucket, its Service or VIP
    /// went), or an older release learned them under another cookie. Entries
    /// whose flow is still desired are kept: clients stay pinned across an
    /// agent restart, and across backends added meanwhile.
    fn learned_gone_since_start<'a>(
        &'a self,
        desired: &DesiredState,
    ) -> impl Iterator<Item = u64> + 'a {
        let wanted: BTreeSet<u64> = desired
            .flows
            .values()
            .filter_map(|b| b.actions.learned_cookie())
            .collect();
        self.stale_learned
            .iter()
            .copied()
            .filter(move |c| !wanted.contains(c))
    }

    /// The bundle that takes the switch from installed to `desired` when they
    /// can differ only at the keys in `changed` (what the incremental compiler
    /// touched since the last apply): O(changed), not O(desired). Before the first
    /// bundle since a start it is [`Self::plan`].
    pub fn plan_changes(&self, desired: &DesiredState, changed: &Changes) -> Vec<BundleOp> {
        let Some(installed) = &self.installed else {
            return self.plan(desired);
        };
        let round = self.round;
        let mut ops = Vec::new();
        let mut flush_learned: BTreeSet<u64> = BTreeSet::new();
        for id in &changed.groups {
            if let Some(g) = desired.groups.get(id) {
                if installed.groups.get(id) != Some(g) {
                    ops.push(BundleOp::PutGroup(g.clone()));
                }
            }
        }
        let mut deletes = Vec::new();
        for k in &changed.flows {
            match (installed.flows.get(k), desired.flows.get(k)) {
                (old, Some(b)) if old != Some(b) => {
                    flush_learned.extend(learned_gone(old, Some(b)));
                    ops.push(BundleOp::AddFlow {
                        key: k.clone(),
                        body: b.clone(),
                        cookie: b.cookie.value(round),
                    })
                }
                (Some(old), None) => {
                    flush_learned.extend(learned_gone(Some(old), None));
                    deletes.push(BundleOp::DeleteFlow(k.clone()))
                }
                _ => {}
            }
        }
        ops.extend(deletes);
        ops.extend(flush_learned.into_iter().map(flush));
        for id in &changed.groups {
            if installed.groups.contains_key(id) && !desired.groups.contains_key(id) {
                ops.push(BundleOp::DeleteGroup(*id));
            }
        }
        ops
    }

    /// [`Self::apply`] for a desired state that differs from the installed one
    /// only at `changed` (see [`Self::plan_changes`]); the installed view is
    /// updated at those keys alone.
    pub async fn apply_changes(
        &mut self,
        desired: &DesiredState,
        changed: &Changes,
    ) -> Result<ApplyStats, OpenFlowError> {
        if self.installed.is_none() {
            return self.apply(desired).await;
        }
        let ops = self.plan_changes(desired, changed);
        let stats = stats_of(&ops);
        self.send(&ops).await?;
        let installed = Arc::make_mut(self.installed.as_mut().expect("checked above"));
        for k in &changed.flows {
            match desired.flows.get(k) {
                Some(b) => drop(installed.flows.insert(k.clone(), b.clone())),
                None => drop(installed.flows.remove(k)),
            }
        }
        for id in &changed.groups {
            match desired.groups.get(id) {
                Some(g) => drop(installed.groups.insert(*id, g.clone())),
                None => drop(installed.groups.remove(id)),
            }
        }
        Ok(stats)
    }

    /// Applies `desired`. On error nothing changed on the switch (bundles are
    /// atomic) and the installed view stays as it was.
    pub async fn apply(&mut self, desired: &DesiredState) -> Result<ApplyStats, OpenFlowError> {
        let ops = self.plan(desired);
        let stats = stats_of(&ops);
        self.send(&ops).await?;
        let first = self.installed.is_none();
        self.installed = Some(Arc::new(desired.clone()));
        self.stale_rounds.clear();
        self.stale_groups.clear();
        self.stale_learned.clear();
        if first {
            let flushed = ops
                .iter()
                .filter(|op| {
                    matches!(op, BundleOp::DeleteFlowsByCookie { table: Some(t), .. } if *t == SESSION_AFFINITY.id)
                })
                .count();
            if flushed > 0 {
                tracing::info!(
                    cookies = flushed,
                    "first bundle since reading the switch: flushed the affinity entries of backends that left meanwhile"
                );
            }
            if self.found_flows {
                self.flush_strays(desired).await;
            }
        }
        Ok(stats)
    }

    /// After the first bundle since reading the switch: entries learned between
    /// that read and the bundle's commit, by an AffinityLearn flow the bundle
    /// removed, are not known to it. The commit removed every such flow, so
    /// reading the switch again finds all of them; they are deleted in one more
    /// bundle (nothing, and no bundle, in the usual case). A failure here is
    /// logged: the desired state is installed, and the strays idle out. Not
    /// called when that read found no flow at all (a cold switch): then no
    /// `learn` ran meanwhile, and reading back every flow just installed would
    /// delay the first ACK (by about a third of a second at 10k Services).
    async fn flush_strays(&mut self, desired: &DesiredState) {
        let summary = match self.backend.installed().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the switch for stray affinity entries");
                return;
            }
        };
        let wanted: BTreeSet<u64> = desired
            .flows
            .values()
            .filter_map(|b| b.actions.learned_cookie())
            .collect();
        let strays: Vec<BundleOp> = summary
            .cookies
            .into_iter()
            .filter(|c| is_learned_entry(*c) && !wanted.contains(c))
            .map(flush)
            .collect();
        if strays.is_empty() {
            return;
        }
        match self.backend.apply(&strays).await {
            Ok(()) => tracing::info!(
                cookies = strays.len(),
                "flushed affinity entries learned by removed flows while the first bundle was sent"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot flush stray affinity entries"),
        }
    }
}

fn stats_of(ops: &[BundleOp]) -> ApplyStats {
    let mut stats = ApplyStats {
        ops: ops.len(),
        ..ApplyStats::default()
    };
    for op in ops {
        match op {
            BundleOp::PutGroup(_) => stats.groups_put += 1,
            BundleOp::AddFlow { .. } => stats.flows_added += 1,
            BundleOp::DeleteFlow(_) | BundleOp::DeleteFlowsByCookie { .. } => {
                stats.flows_deleted += 1
            }
            BundleOp::DeleteGroup(_) => stats.groups_deleted += 1,
        }
    }
    stats
}

/// Deletes the affinity entries learned under `cookie` (one AffinityLearn
/// flow's, see [`crate::compile::affinity_cookie`]): SessionAffinity flows with
/// exactly that cookie.
fn flush(cookie: u64) -> BundleOp {
    BundleOp::DeleteFlowsByCookie {
        table: Some(SESSION_AFFINITY.id),
        cookie,
        mask: u64::MAX,
    }
}

/// The learned cookie of `old` when `new` (the flow at the same key, if any)
/// does not learn under it any more.
fn learned_gone(old: Option<&FlowBody>, new: Option<&FlowBody>) -> Option<u64> {
    let c = old?.actions.learned_cookie()?;
    (new.and_then(|b| b.actions.learned_cookie()) != Some(c)).then_some(c)
}

/// A cookie of a learned affinity entry: round 0, category AffinityLearned.
fn is_learned_entry(c: u64) -> bool {
    round_of(c) == 0 && (c & CATEGORY_MASK) >> CATEGORY_SHIFT == Category::AffinityLearned as u64
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
    use crate::compile::flows::{Actions, Bucket, Group, Match};
    use crate::compile::pipeline::cookie::Category;
    use crate::compile::pipeline::cookie::Cookie;
    use crate::compile::pipeline::AFFINITY_LEARN;
    use crate::compile::pipeline::CONNTRACK;
    use crate::reconcile::backend::InstalledSummary;
    use std::sync::Mutex;

    /// A fake switch that records bundles and can be told to refuse the next one.
    #[derive(Debug, Clone, Default)]
    struct FakeSwitch {
        bundles: Arc<Mutex<Vec<Vec<BundleOp>>>>,
        summary: InstalledSummary,
        refuse: Arc<Mutex<bool>>,
        /// How many times the switch was read.
        reads: Arc<Mutex<usize>>,
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
            *self.reads.lock().unwrap() += 1;
            Ok(self.summary.clone())
        }
    }

    fn state(n: u16) -> DesiredState {
        let mut d = DesiredState::default();
        for p in 0..n {
            d.add(
                CONNTRACK,
                p,
                Match::new().proto(::openflow::ir::Proto::Ip),
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
        sw.summary.groups = [(9, InstalledGroup::of(&group(9, "a", "resubmit(,45)")))].into();
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

    /// A switch that records what the busy signal said during each bundle.
    #[derive(Debug)]
    struct WatchedSwitch {
        busy: tokio::sync::watch::Receiver<bool>,
        seen: Arc<Mutex<Vec<bool>>>,
        refuse: bool,
    }

    impl OpenFlowBackend for WatchedSwitch {
        async fn apply(&mut self, ops: &[BundleOp]) -> Result<(), OpenFlowError> {
            if ops.is_empty() {
                return Ok(());
            }
            self.seen.lock().unwrap().push(*self.busy.borrow());
            if self.refuse {
                return Err(OpenFlowError::Rejected("refused".into()));
            }
            Ok(())
        }
        async fn installed(&mut self) -> Result<InstalledSummary, OpenFlowError> {
            Ok(InstalledSummary::default())
        }
    }

    #[tokio::test]
    async fn the_busy_signal_is_up_while_a_bundle_is_under_way() {
        let busy = Arc::new(tokio::sync::watch::Sender::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sw = WatchedSwitch {
            busy: busy.subscribe(),
            seen: seen.clone(),
            refuse: false,
        };
        let mut r = Reconciler::start(sw).await.unwrap();
        r.set_busy_signal(busy.clone());
        r.apply(&state(2)).await.unwrap();
        assert!(!*busy.borrow(), "down after the bundle");
        // Nothing to send: no bundle, no signal.
        r.apply(&state(2)).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [true]);
        // A refused bundle takes it down too.
        r.backend.refuse = true;
        r.apply(&state(3)).await.unwrap_err();
        assert!(!*busy.borrow());
        assert_eq!(*seen.lock().unwrap(), [true, true]);
    }

    fn group(id: u32, owner: &str, bucket: &str) -> Group {
        Group {
            id,
            hash_fields: vec![ip_src()],
            buckets: vec![Bucket::new(0, Arc::new(bucket.parse().unwrap()))],
            owner: Cookie::new(Category::Service, owner),
            learns: true,
        }
    }

    fn ip_src() -> crate::compile::flows::HashField {
        crate::compile::flows::HashField::whole(::openflow::ir::Field::IpSrc)
    }

    /// A Service with affinity as compiled, reduced: one group whose buckets
    /// are `backends` (last octets), and one AffinityLearn flow per backend that
    /// learns under that backend's cookie.
    fn sticky(backends: &[u8]) -> DesiredState {
        let mut d = state(1);
        let vip: std::net::IpAddr = [10, 96, 0, 10].into();
        let mut buckets = Vec::new();
        for b in backends {
            let ip = std::net::IpAddr::from([10, 0, 0, *b]);
            let ep = format!("set_field:{:#x}->reg3", 0x0a00_0000 | u32::from(*b));
            let actions = format!("{ep},set_field:0x50->reg4,resubmit(,43)");
            buckets.push(Bucket::new(
                u32::from(*b),
                Arc::new(actions.parse().unwrap()),
            ));
            let learned = crate::compile::affinity_cookie("web", vip, "tcp", 80, "v", ip, 80);
            d.add(
                AFFINITY_LEARN,
                100,
                format!(
                    "reg0=0x1,tcp,nw_dst=10.96.0.10,tp_dst=80,reg3={:#x}",
                    0x0a00_0000 | u32::from(*b)
                )
                .parse()
                .unwrap(),
                format!(
                    "learn(table=41,idle_timeout=60,priority=100,cookie={:#x},NXM_OF_IP_SRC[],load:NXM_NX_REG3[]->NXM_NX_REG3[])",
                    learned.value(0)
                )
                .parse()
                .unwrap(),
                Cookie::new(Category::Service, "web"),
            );
        }
        if !buckets.is_empty() {
            d.groups.insert(
                1,
                Arc::new(Group {
                    id: 1,
                    hash_fields: vec![ip_src()],
                    buckets,
                    owner: Cookie::new(Category::Service, "web"),
                    learns: true,
                }),
            );
        }
        d
    }

    fn learned(b: u8) -> u64 {
        let ip = std::net::IpAddr::from([10, 0, 0, b]);
        crate::compile::affinity_cookie("web", [10, 96, 0, 10].into(), "tcp", 80, "v", ip, 80)
            .value(0)
    }

    fn flushes(ops: &[BundleOp]) -> BTreeSet<u64> {
        ops.iter()
            .filter_map(|op| match op {
                BundleOp::DeleteFlowsByCookie {
                    table: Some(41),
                    cookie,
                    mask: u64::MAX,
                } => Some(*cookie),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn only_the_entries_of_a_backend_that_left_are_flushed() {
        let sw = FakeSwitch::default();
        let mut r = Reconciler::start(sw.clone()).await.unwrap();
        r.apply(&sticky(&[1, 2, 3])).await.unwrap();
        // A backend joins: the group changes, no entry goes.
        let plan = r.plan(&sticky(&[1, 2, 3, 4]));
        assert!(plan.iter().any(|op| matches!(op, BundleOp::PutGroup(_))));
        assert!(flushes(&plan).is_empty(), "{plan:#?}");
        r.apply(&sticky(&[1, 2, 3, 4])).await.unwrap();
        // Backend 2 leaves (removed, unhealthy or drained: it loses its
        // buckets): only its entries go, in the bundle that changes the group.
        let plan = r.plan(&sticky(&[1, 3, 4]));
        assert_eq!(flushes(&plan), [learned(2)].into());
        // The incremental path plans the same.
        let changes = Changes {
            flows: sticky(&[1, 2, 3, 4])
                .flows
                .into_keys()
                .chain(sticky(&[1, 3, 4]).flows.into_keys())
                .collect(),
            groups: [1].into(),
        };
        assert_eq!(r.plan_changes(&sticky(&[1, 3, 4]), &changes), plan);
        // The Service goes: every entry of it.
        let plan = r.plan(&state(1));
        assert_eq!(
            flushes(&plan),
            [learned(1), learned(2), learned(3), learned(4)].into()
        );
        // The flush comes before the group goes.
        let at = |f: &dyn Fn(&BundleOp) -> bool| plan.iter().position(f).unwrap();
        assert!(
            at(&|op| matches!(op, BundleOp::DeleteFlowsByCookie { .. }))
                < at(&|op| *op == BundleOp::DeleteGroup(1))
        );
    }

    #[tokio::test]
    async fn the_first_bundle_flushes_the_entries_of_backends_gone_while_down() {
        let mut sw = FakeSwitch::default();
        // Entries of backends 1 and 2, and one an older release learned under
        // the Service's own cookie.
        let old_style = Cookie::of(
            Category::AffinityLearned,
            Cookie::new(Category::Service, "web").object(),
        );
        sw.summary.cookies = [learned(1), learned(2), old_style.value(0), 3 << ROUND_SHIFT].into();
        let r = Reconciler::start(sw.clone()).await.unwrap();
        // Nothing changed meanwhile, or a backend was added: only the old-style
        // entries go.
        assert_eq!(
            flushes(&r.plan(&sticky(&[1, 2]))),
            [old_style.value(0)].into()
        );
        assert_eq!(
            flushes(&r.plan(&sticky(&[1, 2, 5]))),
            [old_style.value(0)].into()
        );
        // Backend 2 left meanwhile.
        assert_eq!(
            flushes(&r.plan(&sticky(&[1, 5]))),
            [learned(2), old_style.value(0)].into()
        );
        // After the first bundle the installed view decides.
        let mut r = r;
        r.apply(&sticky(&[1, 2])).await.unwrap();
        assert!(r.plan(&sticky(&[1, 2])).is_empty());
        assert_eq!(flushes(&r.plan(&sticky(&[2]))), [learned(1)].into());
    }

    #[tokio::test]
    async fn the_switch_is_read_again_after_the_first_bundle_only_if_it_held_flows() {
        // An empty switch (a cold start): no learn action could run between
        // the read and the commit, so there is nothing to look for.
        let sw = FakeSwitch::default();
        let mut r = Reconciler::start(sw.clone()).await.unwrap();
        r.apply(&sticky(&[1, 2])).await.unwrap();
        assert_eq!(*sw.reads.lock().unwrap(), 1);
        // A switch that held flows (a restart): read once more, after the
        // first bundle only.
        let mut sw = FakeSwitch::default();
        sw.summary.cookies = [learned(1), 3 << ROUND_SHIFT].into();
        sw.summary.flows = 2;
        let mut r = Reconciler::start(sw.clone()).await.unwrap();
        r.apply(&sticky(&[1, 2])).await.unwrap();
        assert_eq!(*sw.reads.lock().unwrap(), 2);
        r.apply(&sticky(&[2])).await.unwrap();
        assert_eq!(*sw.reads.lock().unwrap(), 2);
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
