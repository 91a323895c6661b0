//! What one node needs to know, and what changed for it between two versions.
//!
//! Both are pure functions of the intent. A node needs every VPC it takes part in
//! (it hosts a Workload of it, holds a Subnet block of it, owns the EIP of a
//! Service in it, or has a Service with backends in it) and everything in those
//! VPCs: Subnets, Workloads (remote ones too, for tunnels), Services, and the
//! probes of those Services.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dpu_model::{Intent, Object, ObjectKey};

/// The objects of one node, keyed so that iteration follows `Kind` order (VPCs
/// before the things in them).
pub type View = BTreeMap<ObjectKey, Object>;

/// What a node takes part in: its VPCs, and the Services it has (those of
/// its VPCs, and those whose EIP it owns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub vpcs: BTreeSet<String>,
    pub services: BTreeSet<String>,
}

impl Scope {
    /// Whether `o` is in a view with this scope.
    pub fn holds(&self, o: &Object) -> bool {
        match o {
            Object::NetworkProbe(p) => self.services.contains(&p.service),
            // Every agent knows every DPU: where to tunnel to, and that a
            // tunnel must go when its node does.
            Object::Node(_) => true,
            other => other.vpc().is_some_and(|v| self.vpcs.contains(v)),
        }
    }

    /// [`Scope::holds`] of `intent`'s object `k`, read in place (no copy of
    /// the object); None if `intent` has no such object.
    pub fn holds_key(&self, intent: &Intent, k: &ObjectKey) -> Option<bool> {
        Holder::of(intent, k).map(|h| h.in_scope(self))
    }
}

/// What decides whether a scope holds an object: its VPC, its Service (a
/// probe), or nothing (a DPU node, which every scope holds). See
/// [`Scope::holds`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Vpc(String),
    Service(String),
    Everyone,
}

impl Holder {
    /// The holder of `intent`'s object `k`; None if there is no such object.
    pub fn of(intent: &Intent, k: &ObjectKey) -> Option<Holder> {
        use dpu_model::Kind;
        let name = &k.name;
        let vpc = |v: &str| Holder::Vpc(v.to_string());
        match k.kind {
            Kind::Vpc => intent.vpcs.get(name).map(|o| vpc(&o.name)),
            Kind::Subnet => intent.subnets.get(name).map(|o| vpc(&o.vpc)),
            Kind::Workload => intent.workloads.get(name).map(|o| vpc(&o.vpc)),
            Kind::Service => intent.services.get(name).map(|o| vpc(&o.vpc)),
            Kind::NetworkProbe => intent
                .probes
                .get(name)
                .map(|p| Holder::Service(p.service.clone())),
            Kind::Node => intent.nodes.get(name).map(|_| Holder::Everyone),
        }
    }

    pub fn in_scope(&self, scope: &Scope) -> bool {
        match self {
            Holder::Vpc(v) => scope.vpcs.contains(v),
            Holder::Service(s) => scope.services.contains(s),
            Holder::Everyone => true,
        }
    }
}

/// A key that changed between two versions, with who held it in each
/// (None: absent there), worked out once per version for every session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub key: ObjectKey,
    pub old: Option<Holder>,
    pub new: Option<Holder>,
}

/// [`changed_keys`], each with its holders in `old` and `new`.
pub fn changes(old: &Intent, new: &Intent) -> Vec<Changed> {
    changed_keys(old, new)
        .into_iter()
        .map(|key| Changed {
            old: Holder::of(old, &key),
            new: Holder::of(new, &key),
            key,
        })
        .collect()
}

/// What every node's [`Scope`] is worked out from, built once per version so
/// that a node's scope costs its own VPCs and Services, not the whole intent.
#[derive(Debug, Default)]
pub struct ScopeIndex {
    /// node → the VPCs it hosts a Workload of or holds a Subnet block in.
    base: HashMap<String, BTreeSet<String>>,
    /// node → the Services whose EIP it owns.
    eip: HashMap<String, Vec<String>>,
    /// VPC → its Services.
    by_vpc: HashMap<String, Vec<String>>,
    /// Scopes already worked out, by the VPCs a node starts from (nodes that
    /// own no EIP): the nodes of one VPC share one scope.
    shared: std::sync::Mutex<HashMap<Vec<String>, std::sync::Arc<Scope>>>,
}

impl ScopeIndex {
    pub fn build(intent: &Intent) -> Self {
        let mut ix = ScopeIndex::default();
        for w in intent.workloads.values() {
            ix.base
                .entry(w.node.clone())
                .or_default()
                .insert(w.vpc.clone());
        }
        for s in intent.subnets.values() {
            for b in &s.node_blocks {
                ix.base
                    .entry(b.node.clone())
                    .or_default()
                    .insert(s.vpc.clone());
            }
        }
        for s in intent.services.values() {
            ix.by_vpc
                .entry(s.vpc.clone())
                .or_default()
                .push(s.name.clone());
            if let Some(n) = &s.eip_node {
                ix.eip.entry(n.clone()).or_default().push(s.name.clone());
            }
        }
        ix
    }

    /// [`ScopeIndex::scope`], shared with every node that starts from the same
    /// VPCs and owns no EIP.
    pub fn shared_scope(&self, intent: &Intent, node: &str) -> std::sync::Arc<Scope> {
        if self.eip.contains_key(node) {
            return std::sync::Arc::new(self.scope(intent, node));
        }
        let start: Vec<String> = self
            .base
            .get(node)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared
            .entry(start)
            .or_insert_with(|| std::sync::Arc::new(self.scope(intent, node)))
            .clone()
    }

    /// `node`'s scope in `intent` (the intent this index was built from). A
    /// Service brings its VPC and the VPCs of its backends (a service gateway
    /// routes into them), and those VPCs bring their own Services, until
    /// nothing is added.
    pub fn scope(&self, intent: &Intent, node: &str) -> Scope {
        let mut scope = Scope::default();
        let mut queue: Vec<String> = self
            .base
            .get(node)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default();
        let take = |name: &String, scope: &mut Scope, queue: &mut Vec<String>| {
            if !scope.services.insert(name.clone()) {
                return;
            }
            if let Some(s) = intent.services.get(name) {
                queue.push(s.vpc.clone());
                queue.extend(s.backends.iter().map(|b| b.vpc.clone()));
            }
        };
        for name in self.eip.get(node).into_iter().flatten() {
            take(name, &mut scope, &mut queue);
        }
        while let Some(vpc) = queue.pop() {
            if !scope.vpcs.insert(vpc.clone()) {
                continue;
            }
            for name in self.by_vpc.get(&vpc).into_iter().flatten() {
                take(name, &mut scope, &mut queue);
            }
        }
        scope
    }
}

/// The node's scope, without an index at hand.
pub fn node_scope(intent: &Intent, node: &str) -> Scope {
    ScopeIndex::build(intent).scope(intent, node)
}

/// The objects of `intent` in `scope`. Only those are copied.
pub fn view_in(intent: &Intent, scope: &Scope) -> View {
    let mut v = View::new();
    let mut put = |o: Object| {
        v.insert(o.key(), o);
    };
    for (n, o) in &intent.vpcs {
        if scope.vpcs.contains(n) {
            put(Object::Vpc(o.clone()));
        }
    }
    for o in intent
        .subnets
        .values()
        .filter(|o| scope.vpcs.contains(&o.vpc))
    {
        put(Object::Subnet(o.clone()));
    }
    for o in intent
        .workloads
        .values()
        .filter(|o| scope.vpcs.contains(&o.vpc))
    {
        put(Object::Workload(dpu_model::Workload::clone(o)));
    }
    for o in intent
        .services
        .values()
        .filter(|o| scope.vpcs.contains(&o.vpc))
    {
        put(Object::Service(dpu_model::Service::clone(o)));
    }
    for o in intent
        .probes
        .values()
        .filter(|o| scope.services.contains(&o.service))
    {
        put(Object::NetworkProbe(o.clone()));
    }
    for o in intent.nodes.values() {
        put(Object::Node(o.clone()));
    }
    v
}

/// The node's share of the intent.
pub fn node_view(intent: &Intent, node: &str) -> View {
    view_in(intent, &node_scope(intent, node))
}

/// The keys whose objects differ between `old` and `new` (added, removed or
/// changed), in key order. Shared objects (the same `Arc`) are not compared.
pub fn changed_keys(old: &Intent, new: &Intent) -> Vec<ObjectKey> {
    fn walk<T>(
        kind: dpu_model::Kind,
        old: &BTreeMap<String, T>,
        new: &BTreeMap<String, T>,
        same: impl Fn(&T, &T) -> bool,
        out: &mut Vec<ObjectKey>,
    ) {
        let mut keys: Vec<&String> = old
            .iter()
            .filter(|(k, o)| new.get(*k).is_none_or(|n| !same(o, n)))
            .map(|(k, _)| k)
            .collect();
        keys.extend(new.keys().filter(|k| !old.contains_key(*k)));
        keys.sort();
        out.extend(keys.into_iter().map(|k| ObjectKey::new(kind, k)));
    }
    use dpu_model::Kind;
    let arc_same =
        |a: &std::sync::Arc<_>, b: &std::sync::Arc<_>| std::sync::Arc::ptr_eq(a, b) || a == b;
    let mut out = Vec::new();
    walk(Kind::Vpc, &old.vpcs, &new.vpcs, |a, b| a == b, &mut out);
    walk(
        Kind::Subnet,
        &old.subnets,
        &new.subnets,
        |a, b| a == b,
        &mut out,
    );
    walk(
        Kind::Workload,
        &old.workloads,
        &new.workloads,
        arc_same,
        &mut out,
    );
    walk(
        Kind::Service,
        &old.services,
        &new.services,
        |a, b| std::sync::Arc::ptr_eq(a, b) || a == b,
        &mut out,
    );
    walk(
        Kind::NetworkProbe,
        &old.probes,
        &new.probes,
        |a, b| a == b,
        &mut out,
    );
    walk(Kind::Node, &old.nodes, &new.nodes, |a, b| a == b, &mut out);
    out.sort();
    out
}

/// What turns the view of `old` into that of `new` for a node whose scope is
/// `scope` in both, given the keys that changed between them: the cost is the
/// changed keys, not the intent.
pub fn delta_in(new: &Intent, changed: &[Changed], scope: &Scope) -> Delta {
    let mut d = Delta::default();
    // A few set lookups a key; only what the node holds is copied out of the
    // intent.
    for c in changed {
        if c.new.as_ref().is_some_and(|h| h.in_scope(scope)) {
            d.upserts.extend(new.get(&c.key));
        } else if c.old.as_ref().is_some_and(|h| h.in_scope(scope)) {
            d.deletes.push(c.key.clone());
        }
    }
    d.deletes.reverse();
    d
}

/// What turns `old` into `new`: objects to add or replace, and keys to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Added or changed objects, containers first (VPCs before Subnets ...).
    pub upserts: Vec<Object>,
    /// Removed objects, contents first (probes before Services ... before VPCs).
    pub deletes: Vec<ObjectKey>,
}

pub fn diff(old: &View, new: &View) -> Delta {
    let upserts = new
        .iter()
        .filter(|(k, o)| old.get(*k) != Some(*o))
        .map(|(_, o)| o.clone())
        .collect();
    let deletes = old
        .keys()
        .rev()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    Delta { upserts, deletes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::resolve;
    use dpu_model::Kind;

    fn intent() -> Intent {
        resolve(&crate::manifest::good_sample_docs("")).unwrap()
    }

    fn names(v: &View) -> Vec<String> {
        v.keys().map(|k| k.to_string()).collect()
    }

    #[test]
    fn nodes_that_start_from_the_same_vpcs_share_one_scope() {
        let mut i = intent();
        std::sync::Arc::make_mut(i.services.get_mut("red-web").unwrap()).eip_node =
            Some("dpu-1".into());
        let ix = ScopeIndex::build(&i);
        for node in ["dpu-1", "dpu-2", "dpu-3", "dpu-9"] {
            assert_eq!(*ix.shared_scope(&i, node), ix.scope(&i, node), "{node}");
            assert_eq!(*ix.shared_scope(&i, node), node_scope(&i, node), "{node}");
        }
        // dpu-2 starts from blue alone, every time; dpu-1 owns an EIP and
        // has its own.
        let blue = ix.shared_scope(&i, "dpu-2");
        assert!(std::sync::Arc::ptr_eq(&blue, &ix.shared_scope(&i, "dpu-2")));
        assert!(!std::sync::Arc::ptr_eq(
            &blue,
            &ix.shared_scope(&i, "dpu-1")
        ));
        assert!(ix.shared_scope(&i, "dpu-1").vpcs.contains("red"));
    }

    #[test]
    fn holding_a_key_in_place_agrees_with_holding_its_object() {
        let i = intent();
        for node in ["dpu-1", "dpu-2", "dpu-3", "dpu-9"] {
            let scope = node_scope(&i, node);
            for k in i.keys() {
                let o = i.get(&k).expect("listed");
                assert_eq!(scope.holds_key(&i, &k), Some(scope.holds(&o)), "{node} {k}");
            }
            let gone = ObjectKey::new(Kind::Service, "no-such");
            assert_eq!(scope.holds_key(&i, &gone), None);
        }
    }

    #[test]
    fn node_sees_its_vpcs_and_everything_in_them() {
        let i = intent();
        let blue = [
            "Vpc/blue",
            "Subnet/blue-a",
            "Workload/db-1",
            "Workload/web-1",
            "Workload/web-2",
            "YusurService/web",
            "NetworkProbe/web-http",
        ];
        // dpu-1 hosts workloads in blue; dpu-2 hosts web-2 and a block.
        assert_eq!(names(&node_view(&i, "dpu-1")), blue);
        assert_eq!(names(&node_view(&i, "dpu-2")), blue);
        assert_eq!(
            names(&node_view(&i, "dpu-3")),
            [
                "Vpc/red",
                "Subnet/red-a",
                "Workload/red-1",
                "YusurService/red-web"
            ]
        );
        assert!(node_view(&i, "dpu-9").is_empty());
    }

    #[test]
    fn an_eip_owner_sees_its_service_and_a_gateway_every_backend_vpc() {
        let mut i = intent();
        let red_web = ObjectKey::new(Kind::Service, "red-web");
        // dpu-9 hosts nothing but owns red-web's EIP.
        std::sync::Arc::make_mut(i.services.get_mut("red-web").unwrap()).eip_node =
            Some("dpu-9".into());
        let v = node_view(&i, "dpu-9");
        assert!(v.contains_key(&red_web), "{:?}", names(&v));
        assert!(v.contains_key(&ObjectKey::new(Kind::Vpc, "red")));
        assert!(!v.contains_key(&ObjectKey::new(Kind::Vpc, "blue")));

        // As a service gateway with a backend in blue, red-web brings blue (and
        // what is in it) to every node that has red-web; nodes of blue alone do
        // not get red-web.
        let s = std::sync::Arc::make_mut(i.services.get_mut("red-web").unwrap());
        s.scenario = dpu_model::AccessScenario::EipServiceGateway;
        let web_1 = &i.workloads["web-1"];
        s.backends.push(dpu_model::Backend {
            ip: web_1.ip.into(),
            weight: 1,
            workload: Some("web-1".into()),
            vpc: "blue".into(),
        });
        for node in ["dpu-9", "dpu-3"] {
            let v = node_view(&i, node);
            for k in [
                red_web.clone(),
                ObjectKey::new(Kind::Vpc, "blue"),
                ObjectKey::new(Kind::Subnet, "blue-a"),
                ObjectKey::new(Kind::Workload, "web-1"),
            ] {
                assert!(v.contains_key(&k), "{node} lacks {k}: {:?}", names(&v));
            }
        }
        assert!(!node_view(&i, "dpu-1").contains_key(&red_web));
    }

    #[test]
    fn a_subnet_block_alone_brings_the_vpc() {
        let mut i = intent();
        i.workloads.retain(|_, w| w.node != "dpu-2");
        let v = node_view(&i, "dpu-2");
        assert!(v.contains_key(&ObjectKey::new(Kind::Vpc, "blue")));
        assert!(!v.contains_key(&ObjectKey::new(Kind::Workload, "web-2")));
    }

    #[test]
    fn diff_has_upserts_of_changes_and_deletes_of_removals() {
        let i = intent();
        let old = node_view(&i, "dpu-1");
        assert_eq!(diff(&old, &old), Delta::default());

        let mut j = i.clone();
        std::sync::Arc::make_mut(j.workloads.get_mut("web-1").unwrap()).port = "moved".into();
        j.probes.clear();
        let mut extra = dpu_model::Workload::clone(&j.workloads["db-1"]);
        extra.name = "db-2".into();
        extra.ip = "10.1.1.21".parse().unwrap();
        extra.port = "db-2-eth0".into();
        j.upsert(Object::Workload(extra));
        let d = diff(&old, &node_view(&j, "dpu-1"));
        let up: Vec<_> = d.upserts.iter().map(|o| o.key().to_string()).collect();
        assert_eq!(up, ["Workload/db-2", "Workload/web-1"]);
        assert_eq!(d.deletes, [ObjectKey::new(Kind::NetworkProbe, "web-http")]);

        // Leaving the VPC deletes everything in it, contents before the VPC.
        let d = diff(&old, &View::new());
        assert!(d.upserts.is_empty());
        assert_eq!(d.deletes.first().unwrap().kind, Kind::NetworkProbe);
        assert_eq!(d.deletes.last().unwrap().kind, Kind::Vpc);
        assert_eq!(d.deletes.len(), old.len());
    }

    /// The increment a session sends from the keys that changed equals the
    /// diff of the two whole views, whenever the node's scope stayed the same
    /// (otherwise the session diffs whole views).
    #[test]
    fn an_increment_from_the_changed_keys_equals_the_diff_of_whole_views() {
        let mut i = intent();
        let vpcs: Vec<String> = i.vpcs.keys().cloned().collect();
        let nodes = ["dpu-1", "dpu-2", "dpu-3", "dpu-9"];
        let probe = i.probes.values().next().cloned();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut same, mut moved) = (0, 0);
        for step in 0..400 {
            let old = i.clone();
            let workloads: Vec<String> = i.workloads.keys().cloned().collect();
            let services: Vec<String> = i.services.keys().cloned().collect();
            match next(6) {
                0 => {
                    let w = &workloads[next(workloads.len())];
                    let w = std::sync::Arc::make_mut(i.workloads.get_mut(w).unwrap());
                    w.port = format!("p{step}");
                }
                1 => {
                    let w = &workloads[next(workloads.len())];
                    let vpc = vpcs[next(vpcs.len())].clone();
                    std::sync::Arc::make_mut(i.workloads.get_mut(w).unwrap()).vpc = vpc;
                }
                2 => {
                    let w = &workloads[next(workloads.len())];
                    let node = nodes[next(3)].to_string();
                    std::sync::Arc::make_mut(i.workloads.get_mut(w).unwrap()).node = node;
                }
                3 => {
                    let s = &services[next(services.len())];
                    let s = std::sync::Arc::make_mut(i.services.get_mut(s).unwrap());
                    s.eip_node = match s.eip_node {
                        None => Some(nodes[next(nodes.len())].to_string()),
                        Some(_) => None,
                    };
                }
                4 => {
                    let s = &services[next(services.len())];
                    let s = std::sync::Arc::make_mut(i.services.get_mut(s).unwrap());
                    s.cluster_ips.reverse();
                    let n = 1.min(s.backends.len());
                    s.backends.rotate_left(n);
                }
                _ => match (i.probes.is_empty(), &probe) {
                    (true, Some(p)) => i.upsert(Object::NetworkProbe(p.clone())),
                    _ => i.probes.clear(),
                },
            }
            let changed = changes(&old, &i);
            for n in nodes {
                let scope = node_scope(&i, n);
                if node_scope(&old, n) != scope {
                    moved += 1;
                    continue;
                }
                same += 1;
                let want = diff(&node_view(&old, n), &node_view(&i, n));
                let got = delta_in(&i, &changed, &scope);
                assert_eq!(got, want, "step {step}, node {n}, changed {changed:?}");
            }
        }
        assert!(same > 800 && moved > 20, "same {same}, moved {moved}");
    }

    #[test]
    fn changed_keys_are_the_differing_objects_only() {
        let i = intent();
        assert!(changed_keys(&i, &i.clone()).is_empty());
        let mut j = i.clone();
        std::sync::Arc::make_mut(j.workloads.get_mut("web-1").unwrap()).port = "x".into();
        j.probes.clear();
        let k: Vec<String> = changed_keys(&i, &j).iter().map(|k| k.to_string()).collect();
        assert_eq!(k, ["Workload/web-1", "NetworkProbe/web-http"]);
    }
}
