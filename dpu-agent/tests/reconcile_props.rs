//! Property tests of the reconciler against an in-memory switch.
//!
//! `MemorySwitch` implements `OpenFlowBackend` by applying each bundle, op by op
//! in bundle order, to a copy of its tables and committing the copy only if every
//! op was accepted (bundles are atomic). It refuses what OVS refuses, and one
//! thing more strictly:
//!
//! * a flow whose actions name a group that does not exist (OVS:
//!   `OFPBAC_BAD_OUT_GROUP`);
//! * a flow in table 255;
//! * deleting a group that a flow still names (OVS deletes those flows with it,
//!   silently; refusing instead turns that ordering bug into a failed bundle).
//!
//! It reports what it holds as `ovs-ofctl` lets the agent read it: flow cookies,
//! the groups each flow's actions name, and groups by type, hash fields and
//! buckets (`dump-groups`, parsed), with no owner and no `learns` flag, which
//! the switch does not keep. Traffic learns affinity entries through the flows
//! whose actions `learn`, under the cookie each names (one per Service, VIP,
//! port and backend, as compiled).
//!
//! The properties: for random sequences of desired states (generated directly, or
//! compiled from random intents), with agent restarts, refused bundles, leftovers
//! of older incarnations and learned affinity entries in between,
//!
//! * every bundle is accepted, and afterwards the switch holds exactly the
//!   desired flows (under the current round) and groups, nothing stale;
//! * the reconciler's view equals what it applied, and planning the same state
//!   again gives an empty bundle;
//! * a refused bundle changes nothing, and the next apply converges;
//! * no learned affinity entry survives the flow that learned it (its backend
//!   left or lost its bucket, its Service went), also when that happened while
//!   no agent ran (the first bundle after a restart): whatever survives is still
//!   learned by a desired flow; and every entry whose flow stays survives,
//!   however its group changed (a backend added), also across a restart;
//! * replaying the last state from nothing (a new switch), or after a restart on
//!   the same switch, ends in the same tables.
//!
//! `PROPTEST_CASES=N` raises the number of cases (see docs/testing.md).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use dpu_agent::compile::flows::{
    Actions, Bucket, DesiredState, FlowBody, FlowKey, Group, HashField, Match,
};
use dpu_agent::compile::pipeline::cookie::{
    round_of, Category, Cookie, CATEGORY_MASK, CATEGORY_SHIFT, ROUND_MASK, ROUND_SHIFT,
};
use dpu_agent::compile::pipeline::{AFFINITY_LEARN, SERVICE_SELECT, SESSION_AFFINITY, TABLES};
use dpu_agent::compile::{compile, NodeFacts};
use dpu_agent::reconcile::backend::ir::Field;
use dpu_agent::reconcile::backend::{
    BundleOp, InstalledGroup, InstalledSummary, OpenFlowBackend, OpenFlowError,
};
use dpu_agent::reconcile::Reconciler;
use dpu_agent::state::alloc::Allocations;
use dpu_model::*;
use proptest::prelude::*;
use test_support::props::config;

// ---- the in-memory switch -----------------------------------------------------------

/// One installed flow.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Installed {
    actions: Arc<Actions>,
    cookie: u64,
}

/// The switch's tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Tables {
    flows: BTreeMap<FlowKey, Installed>,
    groups: BTreeMap<u32, Arc<Group>>,
}

/// The group ids an action list names (`group:N`).
fn groups_named(actions: &Actions) -> Vec<u32> {
    actions.groups().collect()
}

#[path = "../../openflow/tests/common/ir_text.rs"]
mod ir_text;
use ir_text::{parse_actions, parse_match};

/// The action of a learned affinity entry.
fn learned_entry_actions() -> Arc<Actions> {
    Arc::new(parse_actions("load:0x1->NXM_NX_REG2[0]"))
}

impl Tables {
    fn apply(&mut self, op: &BundleOp) -> Result<(), String> {
        match op {
            BundleOp::PutGroup(g) => {
                for b in &g.buckets {
                    if let Some(id) = groups_named(&b.actions)
                        .into_iter()
                        .find(|id| !self.groups.contains_key(id))
                    {
                        return Err(format!("group {} bucket names missing group {id}", g.id));
                    }
                }
                self.groups.insert(g.id, g.clone());
            }
            BundleOp::AddFlow { key, body, cookie } => {
                if key.table == 255 {
                    return Err("table 255 is not a flow table".into());
                }
                if let Some(id) = groups_named(&body.actions)
                    .into_iter()
                    .find(|id| !self.groups.contains_key(id))
                {
                    return Err(format!(
                        "OFPBAC_BAD_OUT_GROUP: flow {key:?} names group {id}"
                    ));
                }
                let installed = Installed {
                    actions: body.actions.clone(),
                    cookie: *cookie,
                };
                self.flows.insert(key.clone(), installed);
            }
            BundleOp::DeleteFlow(key) => {
                self.flows.remove(key);
            }
            BundleOp::DeleteFlowsByCookie {
                table,
                cookie,
                mask,
            } => {
                self.flows.retain(|k, f| {
                    let hit =
                        table.is_none_or(|t| t == k.table) && f.cookie & mask == cookie & mask;
                    !hit
                });
            }
            BundleOp::DeleteGroup(id) => {
                if let Some((k, _)) = self
                    .flows
                    .iter()
                    .find(|(_, f)| groups_named(&f.actions).contains(id))
                {
                    return Err(format!("group {id} is still named by flow {k:?}"));
                }
                self.groups.remove(id);
            }
        }
        Ok(())
    }
}

/// A switch shared between the test and the reconciler's backend handle.
#[derive(Debug, Clone, Default)]
struct MemorySwitch {
    tables: Arc<Mutex<Tables>>,
    refuse_next: Arc<Mutex<bool>>,
}

impl MemorySwitch {
    fn snapshot(&self) -> Tables {
        self.tables.lock().unwrap().clone()
    }

    /// Traffic through every flow that learns leaves an affinity entry, as its
    /// `learn` action would: round 0, the cookie the action names. Returns each
    /// entry's key with the flow that learned it and the cookie.
    fn learn(&self, serial: u32) -> Vec<(FlowKey, FlowKey, u64)> {
        let mut t = self.tables.lock().unwrap();
        let learning: Vec<(FlowKey, u64)> = t
            .flows
            .iter()
            .filter_map(|(k, f)| f.actions.learned_cookie().map(|c| (k.clone(), c)))
            .collect();
        let mut out = Vec::new();
        for (i, (origin, cookie)) in learning.into_iter().enumerate() {
            // A match of its own: metadata, which no compiled or generated
            // flow matches, numbers the entry.
            let key = FlowKey::new(
                SESSION_AFFINITY.id,
                100,
                Match::new().exact(Field::Metadata, u64::from(serial) << 32 | i as u64),
            );
            let entry = Installed {
                actions: learned_entry_actions(),
                cookie,
            };
            t.flows.insert(key.clone(), entry);
            out.push((key, origin, cookie));
        }
        out
    }
}

impl OpenFlowBackend for MemorySwitch {
    async fn apply(&mut self, ops: &[BundleOp]) -> Result<(), OpenFlowError> {
        if std::mem::take(&mut *self.refuse_next.lock().unwrap()) {
            return Err(OpenFlowError::Rejected("refused by the test".into()));
        }
        let mut tables = self.tables.lock().unwrap();
        let mut next = tables.clone();
        for (i, op) in ops.iter().enumerate() {
            next.apply(op)
                .map_err(|e| OpenFlowError::Rejected(format!("op #{i}: {e}")))?;
        }
        *tables = next;
        Ok(())
    }

    /// What `dump-flows` and `dump-groups` tell: no owner, no `learns`.
    async fn installed(&mut self) -> Result<InstalledSummary, OpenFlowError> {
        let t = self.tables.lock().unwrap();
        let mut group_users: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        for f in t.flows.values() {
            for id in groups_named(&f.actions) {
                group_users.entry(id).or_default().insert(f.cookie);
            }
        }
        Ok(InstalledSummary {
            cookies: t.flows.values().map(|f| f.cookie).collect(),
            groups: t
                .groups
                .iter()
                .map(|(id, g)| (*id, InstalledGroup::of(g)))
                .collect(),
            group_users,
            flows: t.flows.len(),
        })
    }
}

fn is_learned(f: &Installed) -> bool {
    (f.cookie & CATEGORY_MASK) >> CATEGORY_SHIFT == Category::AffinityLearned as u64
        && round_of(f.cookie) == 0
}

/// The switch holds exactly `desired` under `round`, besides learned entries.
fn assert_holds(t: &Tables, desired: &DesiredState, round: u16) -> Result<(), TestCaseError> {
    let flows: BTreeMap<&FlowKey, &Installed> =
        t.flows.iter().filter(|(_, f)| !is_learned(f)).collect();
    let want: BTreeMap<&FlowKey, Installed> = desired
        .flows
        .iter()
        .map(|(k, b)| {
            let installed = Installed {
                actions: b.actions.clone(),
                cookie: b.cookie.value(round),
            };
            (k, installed)
        })
        .collect();
    let want: BTreeMap<&FlowKey, &Installed> = want.iter().map(|(k, f)| (*k, f)).collect();
    prop_assert_eq!(flows, want, "flows differ from the desired state");
    prop_assert_eq!(
        &t.groups,
        &desired.groups,
        "groups differ from the desired state"
    );
    Ok(())
}

/// Tables with rounds taken out of cookies, to compare incarnations.
fn without_rounds(t: &Tables) -> Tables {
    let mut t = t.clone();
    t.flows.retain(|_, f| !is_learned(f));
    for f in t.flows.values_mut() {
        f.cookie &= !ROUND_MASK;
    }
    t
}

// ---- what a run does ------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Event {
    /// Apply this desired state.
    Apply(DesiredState),
    /// The switch refuses the next bundle.
    RefuseNext,
    /// Traffic leaves affinity entries for every learning group.
    Learn,
    /// A new agent incarnation on the same switch.
    Restart,
    /// The reconciler is told the switch may have changed under it.
    Forget,
}

/// Runs `events` against a switch that starts with `leftovers`, checking every
/// property after every step.
fn run(leftovers: Tables, events: &[Event]) -> Result<(), TestCaseError> {
    futures_block_on(run_async(leftovers, events))
}

fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

async fn run_async(leftovers: Tables, events: &[Event]) -> Result<(), TestCaseError> {
    let sw = MemorySwitch::default();
    *sw.tables.lock().unwrap() = leftovers;
    let mut r = Reconciler::start(sw.clone()).await.unwrap();
    let mut fresh = true; // no bundle landed since the last (re)start
    let mut last: Option<DesiredState> = None;
    let mut learned_from: BTreeMap<FlowKey, (FlowKey, u64)> = BTreeMap::new();
    let mut serial = 0;
    for (step, event) in events.iter().enumerate() {
        match event {
            Event::Apply(desired) => {
                let before = sw.snapshot();
                let view_before = r.installed().cloned();
                let refused = *sw.refuse_next.lock().unwrap();
                match r.apply(desired).await {
                    Ok(stats) => {
                        prop_assert!(!refused);
                        let after = sw.snapshot();
                        assert_holds(&after, desired, r.round())?;
                        prop_assert_eq!(r.installed(), Some(desired));
                        prop_assert!(r.plan(desired).is_empty(), "a second plan is not empty");
                        prop_assert!(
                            stats.ops > 0 || view_before.as_ref() == Some(desired) || fresh
                        );
                        check_affinity(
                            &before,
                            &after,
                            &mut learned_from,
                            view_before.as_ref(),
                            desired,
                            fresh,
                        )?;
                        learned_from.retain(|k, _| after.flows.contains_key(k));
                        last = Some(desired.clone());
                        fresh = false;
                    }
                    Err(e) => {
                        prop_assert!(
                            refused,
                            "step {}: the switch rejected a bundle: {}",
                            step,
                            e
                        );
                        prop_assert_eq!(
                            sw.snapshot(),
                            before,
                            "a refused bundle changed the switch"
                        );
                        prop_assert_eq!(r.installed().cloned(), view_before);
                    }
                }
            }
            Event::RefuseNext => *sw.refuse_next.lock().unwrap() = true,
            Event::Learn => {
                serial += 1;
                for (entry, origin, cookie) in sw.learn(serial) {
                    learned_from.insert(entry, (origin, cookie));
                }
            }
            Event::Restart => {
                *sw.refuse_next.lock().unwrap() = false;
                r = Reconciler::start(sw.clone()).await.unwrap();
                fresh = true;
            }
            Event::Forget => {
                r.forget_installed().await.unwrap();
                fresh = true;
            }
        }
    }

    let Some(last) = last else { return Ok(()) };
    *sw.refuse_next.lock().unwrap() = false;
    // A new incarnation on the same switch converges and leaves nothing stale.
    let mut again = Reconciler::start(sw.clone()).await.unwrap();
    again
        .apply(&last)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    assert_holds(&sw.snapshot(), &last, again.round())?;
    // From nothing: the same tables, rounds aside.
    let empty = MemorySwitch::default();
    let mut replay = Reconciler::start(empty.clone()).await.unwrap();
    replay
        .apply(&last)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(
        without_rounds(&empty.snapshot()),
        without_rounds(&sw.snapshot())
    );
    Ok(())
}

/// Learned entries: whatever survives is still learned by a desired flow (so it
/// pins clients only to a backend that still has its buckets); while the
/// reconciler knows what it installed, an entry whose flow learns under the same
/// cookie before and after is kept, however groups changed; in the first bundle
/// after a (re)start, every entry some desired flow still learns is kept.
fn check_affinity(
    before: &Tables,
    after: &Tables,
    learned_from: &mut BTreeMap<FlowKey, (FlowKey, u64)>,
    view_before: Option<&DesiredState>,
    desired: &DesiredState,
    fresh: bool,
) -> Result<(), TestCaseError> {
    let learns =
        |d: &DesiredState, k: &FlowKey| d.flows.get(k).and_then(|b| b.actions.learned_cookie());
    let wanted: BTreeSet<u64> = desired
        .flows
        .values()
        .filter_map(|b| b.actions.learned_cookie())
        .collect();
    for (k, (origin, cookie)) in learned_from.iter() {
        if !before.flows.contains_key(k) {
            continue;
        }
        let kept = after.flows.contains_key(k);
        prop_assert!(
            !kept || wanted.contains(cookie),
            "affinity entry {:?} survived the flow {:?} that learned it",
            k,
            origin
        );
        if let (Some(view), false) = (view_before, fresh) {
            let untouched =
                learns(view, origin) == Some(*cookie) && learns(desired, origin) == Some(*cookie);
            prop_assert!(
                kept || !untouched,
                "affinity entry {:?} of an untouched backend was flushed",
                k
            );
        }
        if fresh {
            prop_assert!(
                kept || !wanted.contains(cookie),
                "affinity entry {:?} of a backend still there after a restart was flushed",
                k
            );
        }
    }
    Ok(())
}

// ---- random desired states --------------------------------------------------------------

const OWNERS: [&str; 3] = ["svc-a", "svc-b", "svc-c"];
const LEARNED: [&str; 3] = ["backend-1", "backend-2", "backend-3"];

/// An AffinityLearn flow's actions, learning under `backend`'s cookie.
fn learn_action(backend: &str) -> String {
    format!(
        "learn(table=41,idle_timeout=60,priority=100,cookie={:#x},NXM_OF_IP_SRC[],load:NXM_NX_REG3[]->NXM_NX_REG3[]),resubmit(,45)",
        Cookie::new(Category::AffinityLearned, backend).value(0)
    )
}

fn hash_fields(names: &[&str]) -> Vec<HashField> {
    names.iter().map(|f| HashField::parse(f).unwrap()).collect()
}

fn group(id: u32) -> impl Strategy<Value = Arc<Group>> {
    (
        proptest::collection::vec(
            prop::sample::select(vec![
                "set_field:0xa000001->reg3,resubmit(,45)",
                "set_field:0xa000002->reg3,resubmit(,45)",
                "set_field:0xa000003->reg3,resubmit(,43)",
            ]),
            0..4,
        ),
        0..OWNERS.len(),
        any::<bool>(),
        // Bucket ids i * stride: positions, or spread out like the compiler's.
        prop::sample::select(vec![1u32, 1000, 0x0100_0001]),
    )
        // As compiled: a group learns exactly when its Service has affinity,
        // which also makes it hash on the client address alone.
        .prop_map(move |(buckets, owner, learns, stride)| {
            Arc::new(Group {
                id,
                hash_fields: if learns {
                    hash_fields(&["ip_src"])
                } else {
                    hash_fields(&["ip_src", "ip_dst", "tcp_src", "tcp_dst"])
                },
                buckets: buckets
                    .into_iter()
                    .enumerate()
                    .map(|(i, a)| Bucket::new(i as u32 * stride, Arc::new(parse_actions(a))))
                    .collect(),
                owner: Cookie::new(Category::Service, OWNERS[owner]),
                learns,
            })
        })
}

fn desired_state() -> impl Strategy<Value = DesiredState> {
    let groups = proptest::collection::btree_set(1..=6u32, 0..4).prop_flat_map(|ids| {
        ids.into_iter()
            .map(group)
            .collect::<Vec<_>>()
            .prop_map(|gs| {
                gs.into_iter()
                    .map(|g| (g.id, g))
                    .collect::<BTreeMap<_, _>>()
            })
    });
    groups.prop_flat_map(|groups| {
        let ids: Vec<u32> = groups.keys().copied().collect();
        let mut actions = vec![
            "drop".to_string(),
            "output:1".to_string(),
            "resubmit(,45)".to_string(),
        ];
        // AffinityLearn flows, learning for one backend each.
        actions.extend(LEARNED.iter().map(|b| learn_action(b)));
        actions.extend(ids.iter().map(|id| format!("group:{id}")));
        actions.extend(ids.iter().map(|id| format!("resubmit(,41),group:{id}")));
        let actions: Vec<Actions> = actions.iter().map(|a| parse_actions(a)).collect();
        let key = (
            prop::sample::select(TABLES.iter().map(|t| t.id).collect::<Vec<_>>()),
            prop::sample::select(vec![0u16, 100, 200]),
            prop::sample::select(vec!["", "ip", "arp", "reg0=0x1,ip", "tcp,tp_dst=80"]),
        )
            .prop_map(|(table, priority, matches)| {
                FlowKey::new(table, priority, parse_match(matches))
            });
        let category = prop::sample::select(vec![
            Category::Pipeline,
            Category::Vpc,
            Category::Workload,
            Category::Service,
            Category::Endpoint,
        ]);
        let body = (prop::sample::select(actions), category, 0..OWNERS.len()).prop_map(
            |(actions, category, owner)| {
                FlowBody::new(actions, Cookie::new(category, OWNERS[owner]))
            },
        );
        proptest::collection::btree_map(key, body, 0..12).prop_map(move |mut flows| {
            // As compiled: every group has a flow sending to it, and a flow that
            // sends to a group carries the group's owner cookie.
            for g in groups.values() {
                let key = FlowKey::new(
                    SERVICE_SELECT.id,
                    100,
                    parse_match(&format!("reg0={:#x},udp", g.id)),
                );
                let body = FlowBody::new(Actions::new().group(g.id), g.owner);
                flows.insert(key, body);
            }
            // As compiled: no two flows learn under the same cookie.
            let mut learned = BTreeSet::new();
            for f in flows.values_mut() {
                if let Some(g) = groups_named(&f.actions).first() {
                    f.cookie = groups[g].owner;
                }
                if f.actions
                    .learned_cookie()
                    .is_some_and(|c| !learned.insert(c))
                {
                    f.actions = Arc::new(Actions::drop());
                }
            }
            DesiredState {
                flows,
                groups: groups.clone(),
            }
        })
    })
}

fn event(state: BoxedStrategy<DesiredState>) -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => state.prop_map(Event::Apply),
        1 => Just(Event::RefuseNext),
        2 => Just(Event::Learn),
        1 => Just(Event::Restart),
        1 => Just(Event::Forget),
    ]
}

/// What older incarnations left: flows under other rounds (some naming groups),
/// groups, and learned entries, which carry round 0.
fn leftovers() -> impl Strategy<Value = Tables> {
    let stale_round = prop::sample::select(vec![1u16, 2, 7, 0xfffe, 0xffff]);
    let flow = (
        stale_round,
        prop::sample::select(vec![0u8, 30, 40, 41]),
        // `reg7=0x1`: a match no desired state has (only older incarnations).
        prop::sample::select(vec!["", "ip", "arp", "reg7=0x1"]),
        proptest::option::of(1..=8u32),
        any::<bool>(),
    );
    (
        proptest::collection::btree_set(1..=8u32, 0..3),
        proptest::collection::vec(flow, 0..6),
    )
        .prop_map(|(group_ids, flows)| {
            let mut t = Tables::default();
            for id in group_ids {
                let g = Group {
                    id,
                    hash_fields: hash_fields(&["ip_src"]),
                    buckets: Bucket::numbered([parse_actions("resubmit(,45)")]),
                    owner: Cookie::new(Category::Service, "old"),
                    learns: false,
                };
                t.groups.insert(id, Arc::new(g));
            }
            for (round, table, matches, group, learned) in flows {
                let key = FlowKey::new(table, 50, parse_match(matches));
                let (actions, cookie) = if learned {
                    let c = Cookie::new(Category::AffinityLearned, "old");
                    (learned_entry_actions(), c.value(0))
                } else {
                    let actions = match group.filter(|g| t.groups.contains_key(g)) {
                        Some(g) => Actions::new().group(g),
                        None => Actions::drop(),
                    };
                    let actions = Arc::new(actions);
                    let c = Cookie::new(Category::Vpc, "old").value(0)
                        | (u64::from(round) << ROUND_SHIFT);
                    (actions, c)
                };
                t.flows.insert(key, Installed { actions, cookie });
            }
            t
        })
}

proptest! {
    #![proptest_config(config(1024))]

    /// Random desired flow/group sets with restarts, refusals, leftovers and
    /// learned entries in between.
    #[test]
    fn random_desired_states_converge(
        leftovers in leftovers(),
        events in proptest::collection::vec(event(desired_state().boxed()), 1..14),
    ) {
        run(leftovers, &events)?;
    }
}

// ---- random intents through the real compiler ------------------------------------

/// What the reconciler and observers rely on: every group has a flow that sends
/// to it, and every such flow carries the group's owner cookie; every flow that
/// learns is in AffinityLearn and learns under a cookie of its own.
fn check_group_owners(d: &DesiredState) -> Result<(), TestCaseError> {
    let mut named = BTreeSet::new();
    for (k, f) in &d.flows {
        for id in groups_named(&f.actions) {
            prop_assert!(
                d.groups.contains_key(&id),
                "{:?} names missing group {}",
                k,
                id
            );
            prop_assert_eq!(
                f.cookie,
                d.groups[&id].owner,
                "{:?} sends to group {} but carries another cookie",
                k,
                id
            );
            named.insert(id);
        }
    }
    for id in d.groups.keys() {
        prop_assert!(named.contains(id), "no flow sends to group {}", id);
    }
    // The reconciler deletes a removed flow's entries by its learned cookie:
    // no other flow may learn under it.
    let mut learned = BTreeSet::new();
    for (k, f) in &d.flows {
        if let Some(c) = f.actions.learned_cookie() {
            prop_assert!(
                learned.insert(c),
                "{:?} learns under a cookie another flow uses",
                k
            );
            prop_assert_eq!(k.table, AFFINITY_LEARN.id);
        }
    }
    Ok(())
}

/// A consistent intent on node `dpu-1`, and the ports its switch has.
fn intent_and_ports() -> impl Strategy<Value = (Intent, BTreeMap<String, u32>)> {
    let workload = (0..2usize, any::<bool>(), any::<bool>());
    let service = (
        0..2usize,
        proptest::collection::btree_set(
            (0..2usize, prop::sample::select(vec![53u16, 80, 443])),
            1..3,
        ),
        proptest::collection::vec((0..8usize, 0..4u32), 0..5),
        any::<bool>(),
    );
    (
        1..=2usize,
        proptest::collection::vec(workload, 0..6),
        proptest::collection::vec(service, 0..4),
    )
        .prop_map(|(vpcs, workloads, services)| {
            let mut intent = Intent::default();
            let mut ports = BTreeMap::new();
            for v in 0..vpcs {
                let vpc = format!("vpc-{v}");
                intent.upsert(Object::Vpc(Vpc {
                    name: vpc.clone(),
                    vni: v as u32 + 100,
                }));
                intent.upsert(Object::Subnet(Subnet {
                    name: format!("net-{v}"),
                    vpc,
                    cidr: format!("10.{v}.0.0/24").parse().unwrap(),
                    gateway: Ipv4Addr::new(10, v as u8, 0, 1).into(),
                    node_blocks: Vec::new(),
                }));
            }
            for (i, (v, local, plugged)) in workloads.into_iter().enumerate() {
                let v = v % vpcs;
                let name = format!("w-{i}");
                let port = format!("port-{i}");
                if local && plugged {
                    ports.insert(port.clone(), i as u32 + 1);
                }
                intent.upsert(Object::Workload(Workload {
                    name,
                    kind: WorkloadKind::Pod,
                    vpc: format!("vpc-{v}"),
                    ip: Ipv4Addr::new(10, v as u8, 0, 10 + i as u8),
                    ipv6: None,
                    mac: Some(Mac([2, 0, 0, 0, v as u8, i as u8])),
                    labels: BTreeMap::new(),
                    node: if local { "dpu-1" } else { "dpu-2" }.into(),
                    port,
                }));
            }
            for (s, (v, svc_ports, backends, affinity)) in services.into_iter().enumerate() {
                let v = v % vpcs;
                let mut seen = BTreeSet::new();
                let backends = backends
                    .into_iter()
                    .filter(|(host, _)| seen.insert(*host))
                    .map(|(host, weight)| Backend {
                        // Hosts 10..15 are workloads (when they exist), 16.. are not.
                        ip: Ipv4Addr::new(10, v as u8, 0, 10 + host as u8).into(),
                        weight,
                        workload: None,
                        vpc: format!("vpc-{v}"),
                    })
                    .collect();
                let protocols = [Protocol::Tcp, Protocol::Udp];
                intent.upsert(Object::Service(Service {
                    name: format!("svc-{s}"),
                    vpc: format!("vpc-{v}"),
                    cluster_ips: vec![Ipv4Addr::new(10, 96, v as u8, s as u8 + 1).into()],
                    ports: svc_ports
                        .into_iter()
                        .map(|(p, port)| ServicePort {
                            name: String::new(),
                            protocol: protocols[p],
                            port,
                            target_port: port + 8000,
                        })
                        .collect(),
                    backends,
                    affinity_timeout: affinity.then_some(60),
                    eip: None,
                    scenario: AccessScenario::ClusterIp,
                    external_traffic_local: false,
                    eip_node: None,
                }));
            }
            (intent, ports)
        })
}

proptest! {
    #![proptest_config(config(512))]

    /// Random sequences of intents, compiled as the agent does (ids kept by
    /// `Allocations::update`), converge the same way.
    #[test]
    fn compiled_intents_converge(
        leftovers in leftovers(),
        steps in proptest::collection::vec(
            prop_oneof![
                6 => intent_and_ports().prop_map(Some),
                1 => Just(None),
            ],
            1..8,
        ),
        extras in proptest::collection::vec(
            prop::sample::select(vec![Event::RefuseNext, Event::Learn, Event::Restart, Event::Forget]),
            8,
        ),
    ) {
        let mut alloc = Allocations::default();
        let mut events = Vec::new();
        for (step, extra) in steps.into_iter().zip(extras) {
            match step {
                Some((intent, ports)) => {
                    prop_assert_eq!(
                        dpu_model::validate_for_node(&intent, "dpu-1"),
                        vec![],
                        "the generator must be consistent"
                    );
                    alloc = alloc.update(&intent).unwrap();
                    let facts = NodeFacts { node: "dpu-1".into(), ports, ..Default::default() };
                    let desired = compile(&intent, &alloc, &facts).desired;
                    check_group_owners(&desired)?;
                    events.push(Event::Apply(desired));
                    events.push(Event::Learn);
                }
                None => events.push(extra),
            }
        }
        run(leftovers, &events)?;
    }
}

/// Agent restarts around changes of a sticky Service's backends, with the
/// compiler's own flows: a restart with nothing changed keeps every entry; a
/// backend added while the agent was down keeps every entry; a backend removed
/// meanwhile loses only its own entries (its clients move; the others stay
/// pinned); a Service deleted meanwhile loses all of its entries, and another
/// Service keeps its own throughout.
#[test]
fn restart_flushes_only_the_entries_of_backends_gone_meanwhile() {
    let service = |name: &str, vip: u8, hosts: &[u8]| Service {
        name: name.into(),
        vpc: "vpc-0".into(),
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, vip).into()],
        ports: vec![ServicePort {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 8080,
        }],
        backends: hosts
            .iter()
            .map(|h| Backend {
                ip: Ipv4Addr::new(10, 0, 0, *h).into(),
                weight: 1,
                workload: None,
                vpc: "vpc-0".into(),
            })
            .collect(),
        affinity_timeout: Some(300),
        eip: None,
        scenario: AccessScenario::ClusterIp,
        external_traffic_local: false,
        eip_node: None,
    };
    let intent = |services: Vec<Service>| {
        let mut i = Intent::default();
        i.upsert(Object::Vpc(Vpc {
            name: "vpc-0".into(),
            vni: 100,
        }));
        i.upsert(Object::Subnet(Subnet {
            name: "net-0".into(),
            vpc: "vpc-0".into(),
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 0, 1).into(),
            node_blocks: Vec::new(),
        }));
        for s in services {
            i.upsert(Object::Service(s));
        }
        i
    };
    let mut alloc = Allocations::default();
    let mut compiled = |services: Vec<Service>| {
        let i = intent(services);
        alloc = alloc.update(&i).unwrap();
        let facts = NodeFacts {
            node: "dpu-1".into(),
            ..Default::default()
        };
        compile(&i, &alloc, &facts).desired
    };
    // The cookie of web's entries for backend 10.0.0.<h>.
    let web_of = |h: u8| {
        dpu_agent::compile::affinity_cookie(
            "web",
            Ipv4Addr::new(10, 96, 0, 1).into(),
            "tcp",
            80,
            "vpc-0",
            Ipv4Addr::new(10, 0, 0, h).into(),
            8080,
        )
        .value(0)
    };
    let entries = |sw: &MemorySwitch| -> BTreeSet<u64> {
        sw.snapshot()
            .flows
            .values()
            .filter(|f| is_learned(f))
            .map(|f| f.cookie)
            .collect()
    };
    futures_block_on(async {
        let sw = MemorySwitch::default();
        let three = compiled(vec![
            service("web", 1, &[11, 12, 13]),
            service("db", 2, &[21]),
        ]);
        assert_eq!(
            three
                .flows
                .keys()
                .filter(|k| k.table == AFFINITY_LEARN.id)
                .count(),
            4,
            "one AffinityLearn flow per backend"
        );
        let mut r = Reconciler::start(sw.clone()).await.unwrap();
        r.apply(&three).await.unwrap();
        sw.learn(1);
        let all = entries(&sw);
        assert_eq!(all.len(), 4);
        assert!([11, 12, 13].iter().all(|h| all.contains(&web_of(*h))));

        // A restart with nothing changed keeps every entry.
        let mut r = Reconciler::start(sw.clone()).await.unwrap();
        r.apply(&three).await.unwrap();
        assert_eq!(entries(&sw), all, "a restart lost affinity");

        // A backend added while the agent was down: every entry stays.
        let four = compiled(vec![
            service("web", 1, &[11, 12, 13, 14]),
            service("db", 2, &[21]),
        ]);
        assert_ne!(four.groups, three.groups);
        let mut r = Reconciler::start(sw.clone()).await.unwrap();
        r.apply(&four).await.unwrap();
        assert_eq!(entries(&sw), all, "adding a backend flushed affinity");

        // 10.0.0.12 removed while the agent was down: only its entries go.
        let without_12 = compiled(vec![
            service("web", 1, &[11, 13, 14]),
            service("db", 2, &[21]),
        ]);
        let mut r = Reconciler::start(sw.clone()).await.unwrap();
        r.apply(&without_12).await.unwrap();
        let mut want = all.clone();
        want.remove(&web_of(12));
        assert_eq!(
            entries(&sw),
            want,
            "not exactly the removed backend's entries went"
        );

        // The same while the agent runs: 10.0.0.11 removed.
        sw.learn(2);
        let without_11 = compiled(vec![service("web", 1, &[13, 14]), service("db", 2, &[21])]);
        r.apply(&without_11).await.unwrap();
        let left = entries(&sw);
        assert!(
            !left.contains(&web_of(11)) && left.contains(&web_of(13)) && left.contains(&web_of(14))
        );

        // web deleted while the agent was down: all of its entries go, db's stay.
        let gone = compiled(vec![service("db", 2, &[21])]);
        let mut r = Reconciler::start(sw.clone()).await.unwrap();
        r.apply(&gone).await.unwrap();
        let db: BTreeSet<u64> = gone
            .flows
            .values()
            .filter_map(|b| b.actions.learned_cookie())
            .collect();
        assert_eq!(db.len(), 1);
        assert_eq!(entries(&sw), db, "affinity of a deleted Service survived");
    });
}

/// The fake switch itself refuses what it must, so the properties can fail.
#[test]
fn memory_switch_refuses_ordering_mistakes() {
    let g = Arc::new(Group {
        id: 3,
        hash_fields: hash_fields(&["ip_src"]),
        buckets: Bucket::numbered([parse_actions("resubmit(,45)")]),
        owner: Cookie::new(Category::Service, "s"),
        learns: false,
    });
    let key = FlowKey::new(40, 100, parse_match("ip"));
    let add = BundleOp::AddFlow {
        key: key.clone(),
        body: FlowBody::new(parse_actions("resubmit(,41),group:3"), g.owner),
        cookie: 1,
    };
    let mut t = Tables::default();
    assert!(t.apply(&add).is_err(), "a flow naming a missing group");
    t.apply(&BundleOp::PutGroup(g)).unwrap();
    t.apply(&add).unwrap();
    assert!(
        t.apply(&BundleOp::DeleteGroup(3)).is_err(),
        "a group still named"
    );
    t.apply(&BundleOp::DeleteFlow(key)).unwrap();
    t.apply(&BundleOp::DeleteGroup(3)).unwrap();
    assert_eq!(t, Tables::default());
    assert_eq!(
        groups_named(&parse_actions("group:12,resubmit(,41),group:3")),
        vec![12, 3]
    );
}

proptest! {
    #![proptest_config(config(24))]

    /// OVS as the oracle for the text the compiler writes: every flow and group
    /// of a random compiled intent is accepted by `ovs-ofctl -O OpenFlow15
    /// parse-flows` / `parse-group` (the parser of the tool that installs them)
    /// as one OpenFlow 1.5 message each. Few cases: each runs ovs-ofctl.
    #[test]
    fn compiled_flows_and_groups_are_openflow_1_5_to_ovs((intent, ports) in intent_and_ports()) {
        let alloc = Allocations::default().update(&intent).unwrap();
        let facts = NodeFacts { node: "dpu-1".into(), ports, ..Default::default() };
        let desired = compile(&intent, &alloc, &facts).desired;
        let lines: Vec<String> = desired
            .flows
            .iter()
            .map(|(k, b)| {
                let m = if k.matches.is_empty() { String::new() } else { format!("{},", k.matches) };
                format!("table={},priority={},cookie={:#x},{m}actions={}", k.table, k.priority, b.cookie.value(1), b.actions)
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("flows.txt");
        std::fs::write(&file, lines.join("\n")).unwrap();
        let out = std::process::Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow15", "parse-flows"])
            .arg(&file)
            .output()
            .expect("ovs-ofctl (openvswitch-common) is installed");
        prop_assert!(out.status.success(), "ovs-ofctl refused the flows: {}", String::from_utf8_lossy(&out.stderr));
        prop_assert_eq!(
            String::from_utf8_lossy(&out.stdout).matches("OFPT_FLOW_MOD (OF1.5)").count(),
            lines.len()
        );
        for g in desired.groups.values() {
            let out = std::process::Command::new("ovs-ofctl")
                .args(["-O", "OpenFlow15", "parse-group", &g.spec()])
                .output()
                .unwrap();
            prop_assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("OFPT_GROUP_MOD (OF1.5)"),
                "ovs-ofctl refused group {}: {}", g.id, String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
