//! What one node needs to know, and what changed for it between two versions.
//!
//! Both are pure functions of the intent. A node needs every VPC it takes part in
//! (it hosts a Workload of it, holds a Subnet block of it, owns the EIP of a
//! Service in it, or has a Service with backends in it) and everything in those
//! VPCs: Subnets, Workloads (remote ones too, for tunnels), Services, and the
//! probes of those Services.

use std::collections::{BTreeMap, BTreeSet};

use dpu_model::{Intent, Object, ObjectKey};

/// The objects of one node, keyed so that iteration follows `Kind` order (VPCs
/// before the things in them).
pub type View = BTreeMap<ObjectKey, Object>;

/// The node's share of the intent.
pub fn node_view(intent: &Intent, node: &str) -> View {
    let mut vpcs: BTreeSet<&str> = intent
        .workloads
        .values()
        .filter(|w| w.node == node)
        .map(|w| w.vpc.as_str())
        .chain(
            intent
                .subnets
                .values()
                .filter(|s| s.node_blocks.iter().any(|b| b.node == node))
                .map(|s| s.vpc.as_str()),
        )
        .collect();
    // The node that owns an EIP takes part in its Service's VPC, and a node
    // that has a service gateway (scenario 4) in every VPC of its backends: it
    // validates and routes into them. Those VPCs bring their own Services, so
    // this runs until nothing is added.
    let mut services: BTreeSet<&str> = BTreeSet::new();
    loop {
        let before = (vpcs.len(), services.len());
        for s in intent.services.values() {
            if vpcs.contains(s.vpc.as_str()) || s.eip_node.as_deref() == Some(node) {
                services.insert(s.name.as_str());
                vpcs.insert(s.vpc.as_str());
                vpcs.extend(s.backends.iter().map(|b| b.vpc.as_str()));
            }
        }
        if (vpcs.len(), services.len()) == before {
            break;
        }
    }
    intent
        .objects()
        .filter(|o| match o {
            Object::NetworkProbe(p) => services.contains(p.service.as_str()),
            // Every agent knows every DPU: where to tunnel to, and that a
            // tunnel must go when its node does.
            Object::Node(_) => true,
            other => other.vpc().is_some_and(|v| vpcs.contains(v)),
        })
        .map(|o| (o.key(), o))
        .collect()
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
}
