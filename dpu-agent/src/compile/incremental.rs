//! The compiler kept between updates: the parts of [`super::compile`], cached,
//! merged into one desired state, and recompiled only where their inputs changed.
//! Changing one Service costs that Service's parts, not the whole intent.
//!
//! Merging keeps the full compiler's rule that the first part (in [`Part`]
//! order) to emit a flow owns it: every flow key records the parts that emit it,
//! sorted, and the merged state holds the first one's flow. Group ids are unique
//! per Service port, but the same bookkeeping (the last part wins, as
//! `BTreeMap::insert` in the full compiler) keeps that exact too.
//!
//! What each part reads, and so what recompiles it:
//! * the base: VPCs, Subnets, workloads (and attached pods), nodes, node facts,
//!   allocated zones;
//! * a Service's parts: the Service, its group ids, its zones, the base's
//!   [`Readiness`] and the node facts;
//! * host routes: the set of VPCs with a NodeClusterIP Service, nodes, facts;
//! * the gateway: whether there is a gateway Service, their backends' VPCs,
//!   Subnets, zones.
//!
//! A change of facts, zones, VPCs or nodes rebuilds everything (not the hot
//! path); so does the first compile and one after a refused bundle.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::sync::Arc;

use dpu_model::{AccessScenario, Intent, Kind, ObjectKey, Service, Workload};

use super::{compile_base, global_parts, service_parts, EnvShape, Part, PartEnv, Readiness};
use crate::compile::fasthash::{FastHasher, FastMap};
use crate::compile::flows::{Actions, DesiredState, FlowBody, FlowKey, Group};
use crate::compile::{Compiled, NodeFacts};
use crate::state::alloc::Allocations;

/// The keys whose merged value may have changed in one step: what the
/// reconciler has to look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub flows: BTreeSet<FlowKey>,
    pub groups: BTreeSet<u32>,
}

/// A piece of the compiler's state, for [`IncrementalCompiler::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// The per-Service facts and the backend → Services index.
    BackendIndex,
    /// The flow and group owner lists.
    Owners,
    /// The per-part outputs.
    Parts,
    /// The merged desired state.
    Merged,
    /// The set of distinct action lists.
    Actions,
}

/// What one [`IncrementalCompiler::update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Everything was compiled anew: diff the whole desired state.
    Rebuilt,
    /// Only these parts changed; [`IncrementalCompiler::changes`] has the keys.
    Incremental { parts: usize },
}

/// A Service the compiler tracks: the intent's own `Arc` (not a copy of what
/// the aggregate parts and the backend index read of it), found by name.
#[derive(Debug, Clone)]
struct Tracked(Arc<Service>);

impl Tracked {
    /// The VPC its NodeClusterIP entry is for.
    fn node_vpc(&self) -> Option<&str> {
        (self.0.scenario == AccessScenario::NodeClusterIp).then_some(self.0.vpc.as_str())
    }

    /// Behind a service gateway: its backends' VPCs, without repeats.
    fn gateway_vpcs(&self) -> Option<BTreeSet<&str>> {
        (self.0.scenario == AccessScenario::EipServiceGateway)
            .then(|| self.0.backends.iter().map(|b| b.vpc.as_str()).collect())
    }

    /// Its backends' addresses, without repeats.
    fn addresses(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.0.backends.iter().map(|b| b.ip).collect();
        ips.sort_unstable();
        ips.dedup();
        ips
    }
}

impl PartialEq for Tracked {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Tracked {}

impl std::hash::Hash for Tracked {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.name.as_str().hash(h);
    }
}

impl std::borrow::Borrow<str> for Tracked {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

#[derive(Debug, Default)]
pub struct IncrementalCompiler {
    /// `None` until the first compile, and after [`Self::invalidate`].
    valid: bool,
    parts: PartTable,
    /// The parts that emit each flow and group, by their ids in `parts`.
    flow_owners: FastMap<FlowKey, Owners>,
    group_owners: FastMap<u32, Owners>,
    merged: Compiled,
    /// Every distinct action list the parts hold, so equal ones are one
    /// allocation: bucket actions of a backend shared by many Services, the
    /// pipeline's `goto_table` and `drop`.
    actions: ActionInterner,
    /// Shared with observers' snapshots; replaced whole, never changed in place.
    ready: Arc<Readiness>,
    changes: Changes,
    // The inputs of the last compile that decide what to recompile.
    facts: NodeFacts,
    /// The revision of `facts` when the caller gives one (`update_at`).
    facts_revision: Option<u64>,
    shape: EnvShape,
    /// The Services each backend (VPC, address) belongs to: those to
    /// recompile when the backend's readiness changes.
    /// By address: the Services with a backend there (in any VPC), few per
    /// address, each once; the intent's `Arc`s, not names.
    by_backend: FastMap<IpAddr, Vec<Arc<Service>>>,
    zones: BTreeMap<String, u16>,
    pods: Vec<Workload>,
    /// The Services as last compiled, by name.
    services: HashSet<Tracked, BuildHasherDefault<FastHasher>>,
    /// NodeClusterIP Services per VPC.
    node_vpcs: BTreeMap<String, usize>,
    /// Gateway Services per backend VPC, and their number.
    gateway_vpcs: BTreeMap<String, usize>,
    gateways: usize,
}

impl IncrementalCompiler {
    pub fn new() -> Self {
        Self::default()
    }

    /// The desired state (and pending/unreachable lists) of the last compile:
    /// always equal to [`super::compile`] of its inputs.
    pub fn compiled(&self) -> &Compiled {
        &self.merged
    }

    pub fn desired(&self) -> &DesiredState {
        &self.merged.desired
    }

    /// Which backends took no bucket at the last compile, and which are local.
    pub fn readiness(&self) -> &Arc<super::Readiness> {
        &self.ready
    }

    /// The keys the last incremental step touched.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Drops one piece of the state and forgets the cache: what
    /// `examples/heap_breakdown.rs` measures each piece by.
    pub fn release(&mut self, piece: Piece) {
        self.valid = false;
        match piece {
            Piece::BackendIndex => {
                self.services = HashSet::default();
                self.by_backend = FastMap::default();
            }
            Piece::Owners => {
                self.flow_owners = FastMap::default();
                self.group_owners = FastMap::default();
            }
            Piece::Parts => self.parts = PartTable::default(),
            Piece::Merged => self.merged = Compiled::default(),
            Piece::Actions => self.actions = ActionInterner::default(),
        }
    }

    /// Forgets the cache: the next update compiles everything (after a refused
    /// bundle, when the agent went back to an older intent).
    pub fn invalidate(&mut self) {
        self.valid = false;
    }

    /// Brings the desired state to `intent` (plus this node's attached `pods`,
    /// which win over workloads of the same name), `alloc` and `facts`.
    /// `changed`: the objects that changed since the last call, `None` if
    /// unknown (compiles everything).
    pub fn update(
        &mut self,
        intent: &Intent,
        pods: &[Workload],
        alloc: &Allocations,
        facts: &NodeFacts,
        changed: Option<&BTreeSet<ObjectKey>>,
    ) -> Step {
        self.facts_revision = None;
        self.step(intent, pods, alloc, facts, false, changed)
    }

    /// [`Self::update`] with facts that carry a revision (`crate::state::applied::Facts`):
    /// when it is the revision of the last compile, the facts are taken as
    /// unchanged without comparing the port map.
    pub fn update_at(
        &mut self,
        intent: &Intent,
        pods: &[Workload],
        alloc: &Allocations,
        (facts, revision): (&NodeFacts, u64),
        changed: Option<&BTreeSet<ObjectKey>>,
    ) -> Step {
        let same = self.valid && self.facts_revision == Some(revision);
        self.facts_revision = Some(revision);
        self.step(intent, pods, alloc, facts, same, changed)
    }

    fn step(
        &mut self,
        intent: &Intent,
        pods: &[Workload],
        alloc: &Allocations,
        facts: &NodeFacts,
        same_facts: bool,
        changed: Option<&BTreeSet<ObjectKey>>,
    ) -> Step {
        self.changes = Changes::default();
        let global = |k: &ObjectKey| matches!(k.kind, Kind::Vpc | Kind::Node);
        let env = PartEnv::new(intent, alloc, facts);
        // Ports and health feed the base and, through readiness, the Services
        // with those backends; the rest of the facts feed every part.
        let rebuild = !self.valid
            || changed.is_none_or(|c| c.iter().any(global))
            || facts.node != self.facts.node
            || facts.host_port != self.facts.host_port
            || facts.uplink != self.facts.uplink
            || env.shape() != self.shape
            || alloc.zones != self.zones;
        if rebuild {
            self.rebuild(intent, pods, alloc, facts);
            return Step::Rebuilt;
        }
        let changed = changed.expect("checked above");
        let mut parts = 0;
        let facts_changed = !same_facts
            && (facts.ports != self.facts.ports || facts.unhealthy != self.facts.unhealthy);
        let base_changed = pods != self.pods.as_slice()
            || facts_changed
            || changed
                .iter()
                .any(|k| matches!(k.kind, Kind::Workload | Kind::Subnet));
        let mut affected: BTreeSet<String> = BTreeSet::new();
        if base_changed {
            let base = compile_base(&with_pods(intent, pods), alloc, facts);
            self.pods = pods.to_vec();
            self.merged.pending_ports = base.pending_ports;
            self.merged.unreachable = base.unreachable;
            self.replace(Part::Base, base.desired);
            parts += 1;
            if base.ready != *self.ready {
                let flipped = base
                    .ready
                    .unready
                    .symmetric_difference(&self.ready.unready)
                    .chain(base.ready.local.symmetric_difference(&self.ready.local));
                for (vpc, ip) in flipped {
                    let users = self.by_backend.get(ip).into_iter().flatten();
                    affected.extend(
                        users
                            .filter(|s| s.backends.iter().any(|b| b.ip == *ip && b.vpc == *vpc))
                            .map(|s| s.name.clone()),
                    );
                }
                self.ready = Arc::new(base.ready);
            }
            self.facts = facts.clone();
        }
        let mut services: BTreeSet<&str> = changed
            .iter()
            .filter(|k| k.kind == Kind::Service)
            .map(|k| k.name.as_str())
            .collect();
        services.extend(affected.iter().map(String::as_str));
        let (node_before, gateway_before) = (self.node_vpc_set(), self.gateway_set());
        for name in services {
            parts += self.service_changed(name, intent.services.get(name), &env);
        }
        let (node_after, gateway_after) = (self.node_vpc_set(), self.gateway_set());
        let subnets_changed = changed.iter().any(|k| k.kind == Kind::Subnet);
        if node_before != node_after || gateway_before != gateway_after || subnets_changed {
            let node_vpcs: BTreeSet<&str> = self.node_vpcs.keys().map(String::as_str).collect();
            let gw: BTreeSet<&str> = self.gateway_vpcs.keys().map(String::as_str).collect();
            for (part, d) in global_parts(&env, &node_vpcs, (self.gateways > 0).then_some(&gw)) {
                if matches!(part, Part::HostsRoutes | Part::Gateway) {
                    self.replace(part, d);
                    parts += 1;
                }
            }
        }
        Step::Incremental { parts }
    }

    /// Records what the aggregate parts and the backend index need of `s`.
    fn track(&mut self, s: &Arc<Service>) {
        let t = Tracked(s.clone());
        if let Some(vpc) = t.node_vpc() {
            *self.node_vpcs.entry(vpc.to_string()).or_default() += 1;
        }
        if let Some(vpcs) = t.gateway_vpcs() {
            self.gateways += 1;
            for v in vpcs {
                *self.gateway_vpcs.entry(v.to_string()).or_default() += 1;
            }
        }
        for ip in t.addresses() {
            self.by_backend.entry(ip).or_default().push(s.clone());
        }
        self.services.insert(t);
    }

    fn node_vpc_set(&self) -> Vec<String> {
        self.node_vpcs.keys().cloned().collect()
    }

    fn gateway_set(&self) -> (bool, Vec<String>) {
        (
            self.gateways > 0,
            self.gateway_vpcs.keys().cloned().collect(),
        )
    }

    /// Recompiles one Service's parts (`s` is `None` when it is gone); returns
    /// how many parts it touched.
    fn service_changed(
        &mut self,
        name: &str,
        s: Option<&Arc<Service>>,
        env: &PartEnv<'_>,
    ) -> usize {
        let key: Arc<str> = Arc::from(name);
        if let Some(old) = self.services.take(name) {
            for ip in old.addresses() {
                if let Some(users) = self.by_backend.get_mut(&ip) {
                    users.retain(|s| !Arc::ptr_eq(s, &old.0));
                    if users.is_empty() {
                        self.by_backend.remove(&ip);
                    }
                }
            }
            if let Some(vpc) = old.node_vpc() {
                dec(&mut self.node_vpcs, vpc);
            }
            if let Some(vpcs) = old.gateway_vpcs() {
                self.gateways -= 1;
                for v in vpcs {
                    dec(&mut self.gateway_vpcs, v);
                }
            }
        }
        let mut new: BTreeMap<Part, DesiredState> = BTreeMap::new();
        if let Some(s) = s {
            self.track(s);
            new.extend(service_parts(s, env, &self.ready));
        }
        let mut touched = 0;
        for part in [
            Part::Service(key.clone()),
            Part::HostsService(key.clone()),
            Part::UplinkService(key),
        ] {
            let d = new.remove(&part).unwrap_or_default();
            let unchanged = match self.parts.get(&part) {
                Some(old) => old.same_as(&d),
                None => d.flows.is_empty() && d.groups.is_empty(),
            };
            if !unchanged {
                touched += 1;
                self.replace(part, d);
            }
        }
        touched
    }

    fn rebuild(
        &mut self,
        intent: &Intent,
        pods: &[Workload],
        alloc: &Allocations,
        facts: &NodeFacts,
    ) {
        let base = compile_base(&with_pods(intent, pods), alloc, facts);
        let env = PartEnv::new(intent, alloc, facts);
        self.services.clear();
        self.by_backend.clear();
        self.node_vpcs.clear();
        self.gateway_vpcs.clear();
        self.gateways = 0;
        self.flow_owners.clear();
        self.group_owners.clear();
        self.actions = ActionInterner::default();
        // Each part is interned as it is compiled, against the flows merged so
        // far, so only one Service's maps and its copies of flows other parts
        // already emitted are alive at a time. Compiling every part first held
        // them all (at 10k Services, 66 MiB above the 23 the compile keeps),
        // and the state that stays sat among them in half-empty allocator
        // pages after they were freed (docs/agent.md, "Memory: where it goes").
        let mut desired = DesiredState::default();
        let mut parts: BTreeMap<Part, PartState> = BTreeMap::new();
        let mut add = |part: Part, d: DesiredState, actions: &mut ActionInterner| {
            let d = intern(&desired, actions, d);
            for (k, b) in d.flows.iter() {
                desired.flows.entry(k.clone()).or_insert_with(|| b.clone());
            }
            let replaced = parts.insert(part, d);
            debug_assert!(replaced.is_none(), "a part compiled twice");
        };
        add(Part::Base, base.desired, &mut self.actions);
        for s in intent.services.values() {
            self.track(s);
            for (part, d) in service_parts(s, &env, &base.ready) {
                add(part, d, &mut self.actions);
            }
        }
        for users in self.by_backend.values_mut() {
            users.shrink_to_fit();
        }
        let node_vpcs: BTreeSet<&str> = self.node_vpcs.keys().map(String::as_str).collect();
        let gw: BTreeSet<&str> = self.gateway_vpcs.keys().map(String::as_str).collect();
        for (part, d) in global_parts(&env, &node_vpcs, (self.gateways > 0).then_some(&gw)) {
            add(part, d, &mut self.actions);
        }
        let mut kept = PartTable::default();
        // In `Part` order, so each owner list is pushed to in order, and a flow
        // several parts emit keeps the body of the first of them.
        for (part, d) in parts {
            let at = kept.id(&part);
            for (k, b) in d.flows.iter() {
                let owners = self.flow_owners.entry(k.clone()).or_default();
                if owners.as_slice().is_empty() {
                    if let Some(merged) = desired.flows.get_mut(k) {
                        *merged = b.clone();
                    }
                }
                owners.insert(usize::MAX, at);
            }
            for (id, g) in d.groups.iter() {
                self.group_owners
                    .entry(*id)
                    .or_default()
                    .insert(usize::MAX, at);
                desired.groups.insert(*id, g.clone());
            }
            *kept.state_mut(at) = d;
        }
        kept.shrink_to_fit();
        self.parts = kept;
        // Built in part order, the maps' nodes are partly empty; built again
        // from their sorted entries, they are full (and so is every copy of
        // them: the reconciler's installed view).
        desired.flows = std::mem::take(&mut desired.flows).into_iter().collect();
        desired.groups = std::mem::take(&mut desired.groups).into_iter().collect();
        self.merged = Compiled {
            desired,
            pending_ports: base.pending_ports,
            unreachable: base.unreachable,
        };
        self.ready = Arc::new(base.ready);
        self.facts = facts.clone();
        self.shape = env.shape();
        self.zones = alloc.zones.clone();
        self.pods = pods.to_vec();
        self.actions.swept();
        self.valid = true;
    }

    /// Puts `new` in place of `part`'s old output and re-merges the keys either
    /// one has.
    fn replace(&mut self, part: Part, new: DesiredState) {
        let new = intern(&self.merged.desired, &mut self.actions, new);
        let gone = new.flows.0.is_empty() && new.groups.0.is_empty();
        if gone && self.parts.get(&part).is_none() {
            return;
        }
        // Its id stays until the owner lists no longer name it (below).
        let me = self.parts.id(&part);
        let old = std::mem::replace(self.parts.state_mut(me), new);
        let parts = &self.parts;
        let new = parts.state(me);
        let before = |o: &u32| parts.part(*o) < &part;
        let mut flows: BTreeSet<&FlowKey> = BTreeSet::new();
        for k in old.flows.keys() {
            if !new.flows.contains_key(k) {
                let owners = self.flow_owners.get_mut(k).expect("an owner per key");
                owners.remove(me);
            }
            flows.insert(k);
        }
        for k in new.flows.keys() {
            if !old.flows.contains_key(k) {
                let owners = self.flow_owners.entry(k.clone()).or_default();
                let at = owners.as_slice().partition_point(before);
                owners.insert(at, me);
            }
            flows.insert(k);
        }
        for k in flows {
            let body: Option<FlowBody> = match self.flow_owners.get(k) {
                Some(o) => o
                    .as_slice()
                    .first()
                    .and_then(|&first| parts.state(first).flows.get(k).cloned()),
                None => None,
            };
            if body.is_none() {
                self.flow_owners.remove(k);
            }
            let merged = &mut self.merged.desired.flows;
            if merged.get(k) != body.as_ref() {
                match body {
                    Some(b) => drop(merged.insert(k.clone(), b)),
                    None => drop(merged.remove(k)),
                }
                self.changes.flows.insert(k.clone());
            }
        }
        let mut groups: BTreeSet<u32> = BTreeSet::new();
        for id in old.groups.keys() {
            if !new.groups.contains_key(id) {
                if let Some(o) = self.group_owners.get_mut(id) {
                    o.remove(me);
                }
            }
            groups.insert(*id);
        }
        for id in new.groups.keys() {
            if !old.groups.contains_key(id) {
                let owners = self.group_owners.entry(*id).or_default();
                let at = owners.as_slice().partition_point(before);
                owners.insert(at, me);
            }
            groups.insert(*id);
        }
        for id in groups {
            // The last part to emit a group id wins, as a map insert would.
            let g: Option<Arc<Group>> = match self.group_owners.get(&id) {
                Some(o) => o
                    .as_slice()
                    .last()
                    .and_then(|&last| parts.state(last).groups.get(&id).cloned()),
                None => None,
            };
            if g.is_none() {
                self.group_owners.remove(&id);
            }
            let merged = &mut self.merged.desired.groups;
            if merged.get(&id) != g.as_ref() {
                match g {
                    Some(g) => drop(merged.insert(id, g)),
                    None => drop(merged.remove(&id)),
                }
                self.changes.groups.insert(id);
            }
        }
        if gone {
            self.parts.remove(me);
        }
    }
}

/// The parts' outputs, each under a small id (its slot) that the owner lists
/// hold instead of the `Part` itself (24 bytes, and a name to compare).
#[derive(Debug, Default)]
struct PartTable {
    ids: FastMap<Part, u32>,
    /// By id; a free slot holds an empty state.
    slots: Vec<(Part, PartState)>,
    free: Vec<u32>,
}

impl PartTable {
    fn get(&self, part: &Part) -> Option<&PartState> {
        self.ids.get(part).map(|&id| self.state(id))
    }

    /// `part`'s id, given it (with an empty state) if it has none.
    fn id(&mut self, part: &Part) -> u32 {
        if let Some(&id) = self.ids.get(part) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = (part.clone(), PartState::default());
                id
            }
            None => {
                let id = u32::try_from(self.slots.len()).expect("fewer than 2^32 parts");
                self.slots.push((part.clone(), PartState::default()));
                id
            }
        };
        self.ids.insert(part.clone(), id);
        id
    }

    fn part(&self, id: u32) -> &Part {
        &self.slots[id as usize].0
    }

    fn state(&self, id: u32) -> &PartState {
        &self.slots[id as usize].1
    }

    fn state_mut(&mut self, id: u32) -> &mut PartState {
        &mut self.slots[id as usize].1
    }

    /// Frees `id`: no owner list may name it any more.
    fn remove(&mut self, id: u32) {
        let (part, _) = std::mem::replace(
            &mut self.slots[id as usize],
            (Part::Base, PartState::default()),
        );
        self.ids.remove(&part);
        self.free.push(id);
    }

    fn shrink_to_fit(&mut self) {
        self.slots.shrink_to_fit();
        self.ids.shrink_to_fit();
    }
}

/// The ids of the parts that emit one flow or group, sorted in `Part` order:
/// most have one or two, held inline (16 bytes in all).
#[derive(Debug, Clone, Default)]
enum Owners {
    #[default]
    None,
    One(u32),
    Two([u32; 2]),
    /// Boxed: a `Vec` inline would make every list 32 bytes.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<u32>>),
}

impl Owners {
    fn as_slice(&self) -> &[u32] {
        match self {
            Owners::None => &[],
            Owners::One(a) => std::slice::from_ref(a),
            Owners::Two(ab) => ab,
            Owners::Many(v) => v,
        }
    }

    fn of(v: &[u32]) -> Owners {
        match *v {
            [] => Owners::None,
            [a] => Owners::One(a),
            [a, b] => Owners::Two([a, b]),
            _ => Owners::Many(Box::new(v.to_vec())),
        }
    }

    /// Puts `id` at `at` (at most the length: past it, at the end).
    fn insert(&mut self, at: usize, id: u32) {
        match self {
            Owners::None => *self = Owners::One(id),
            Owners::Many(v) => v.insert(at.min(v.len()), id),
            _ => {
                let mut v = self.as_slice().to_vec();
                v.insert(at.min(v.len()), id);
                *self = Owners::of(&v);
            }
        }
    }

    fn remove(&mut self, id: u32) {
        if let Owners::Many(v) = self {
            v.retain(|&o| o != id);
            if v.len() > 2 {
                return;
            }
        }
        let v: Vec<u32> = self
            .as_slice()
            .iter()
            .copied()
            .filter(|&o| o != id)
            .collect();
        *self = Owners::of(&v);
    }
}

/// `d` as it is kept: its flows share the keys `merged` already holds (many
/// parts emit the same flow: Services that share an endpoint, a VPC's
/// affinity entry), and its flows and buckets share equal action lists
/// through `actions`.
fn intern(merged: &DesiredState, actions: &mut ActionInterner, d: DesiredState) -> PartState {
    let flows: Box<[(FlowKey, FlowBody)]> = d
        .flows
        .into_iter()
        .map(|(k, mut b)| match merged.flows.get_key_value(&k) {
            // Another part's flow: its actions, if the same, are interned.
            Some((mk, mb)) => {
                b.actions = if mb.actions == b.actions {
                    mb.actions.clone()
                } else {
                    actions.get(&b.actions)
                };
                (mk.clone(), b)
            }
            None => {
                b.actions = actions.get(&b.actions);
                (k, b)
            }
        })
        .collect();
    let groups: Box<[(u32, Arc<Group>)]> = d
        .groups
        .into_iter()
        .map(|(id, mut g)| {
            for b in &mut Arc::make_mut(&mut g).buckets {
                b.actions = actions.get(&b.actions);
            }
            (id, g)
        })
        .collect();
    actions.sweep_if_grown();
    PartState {
        flows: Sorted(flows),
        groups: Sorted(groups),
    }
}

/// Equal action lists as one allocation. Lists no flow or bucket holds any
/// more are swept when the set has doubled since the last sweep.
#[derive(Debug, Default)]
struct ActionInterner {
    set: HashSet<Arc<Actions>, BuildHasherDefault<FastHasher>>,
    after_sweep: usize,
}

impl ActionInterner {
    fn get(&mut self, a: &Arc<Actions>) -> Arc<Actions> {
        if let Some(known) = self.set.get(a) {
            return known.clone();
        }
        self.set.insert(a.clone());
        a.clone()
    }

    fn sweep_if_grown(&mut self) {
        if self.set.len() > 2 * self.after_sweep.max(1024) {
            self.swept();
        }
    }

    /// Drops the lists only the interner holds.
    fn swept(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
        self.after_sweep = self.set.len();
    }
}

/// One part's output as it is kept: sorted slices (no map nodes), of flows
/// and groups shared with the merged state.
#[derive(Debug, Default)]
struct PartState {
    flows: Sorted<FlowKey, FlowBody>,
    groups: Sorted<u32, Arc<Group>>,
}

impl PartState {
    /// Whether it holds exactly `d`'s flows and groups.
    fn same_as(&self, d: &DesiredState) -> bool {
        self.flows.0.len() == d.flows.len()
            && self.groups.0.len() == d.groups.len()
            && self.flows.iter().eq(d.flows.iter())
            && self.groups.iter().eq(d.groups.iter())
    }
}

/// A map as a slice sorted by key.
#[derive(Debug)]
struct Sorted<K, V>(Box<[(K, V)]>);

impl<K, V> Default for Sorted<K, V> {
    fn default() -> Self {
        Sorted(Box::new([]))
    }
}

impl<K: Ord, V> Sorted<K, V> {
    fn get(&self, k: &K) -> Option<&V> {
        let at = self.0.binary_search_by(|(x, _)| x.cmp(k)).ok()?;
        Some(&self.0[at].1)
    }

    fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }

    fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

fn dec(m: &mut BTreeMap<String, usize>, k: &str) {
    if let Some(n) = m.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            m.remove(k);
        }
    }
}

/// What the base part reads of the intent, with this node's attached pods in:
/// no Services or probes, so a base recompile never copies those.
pub fn with_pods(intent: &Intent, pods: &[Workload]) -> Intent {
    let mut workloads = intent.workloads.clone();
    for w in pods {
        workloads.insert(w.name.clone(), Arc::new(w.clone()));
    }
    Intent {
        vpcs: intent.vpcs.clone(),
        subnets: intent.subnets.clone(),
        workloads,
        services: BTreeMap::new(),
        probes: BTreeMap::new(),
        nodes: intent.nodes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_list_is_16_bytes_and_stays_sorted_as_it_changes() {
        assert_eq!(std::mem::size_of::<Owners>(), 16);
        let mut o = Owners::default();
        for (at, id) in [(0, 5), (0, 3), (2, 9), (1, 4), (usize::MAX, 11)] {
            o.insert(at, id);
        }
        assert_eq!(o.as_slice(), [3, 4, 5, 9, 11]);
        for id in [4, 11, 3] {
            o.remove(id);
        }
        assert!(matches!(o, Owners::Two([5, 9])), "{o:?}");
        o.remove(5);
        o.remove(9);
        assert!(o.as_slice().is_empty());
    }

    #[test]
    fn a_freed_part_id_is_given_again() {
        let mut t = PartTable::default();
        let web = Part::Service("web".into());
        let db = Part::Service("db".into());
        let (a, b) = (t.id(&web), t.id(&db));
        assert_ne!(a, b);
        assert_eq!(t.id(&web), a);
        t.remove(a);
        assert!(t.get(&web).is_none());
        let gw = t.id(&Part::Gateway);
        assert_eq!(gw, a);
        assert_eq!(t.part(gw), &Part::Gateway);
        assert_eq!(t.part(b), &db);
    }
}
