//! What a node may say about the world, after it has proved who it is.
//!
//! Authentication (mTLS, the node named in the certificate, the node role) says
//! who is talking; these rules say what that node may claim, in the spirit of
//! Kubernetes' NodeRestriction:
//!
//! - **Reported pods** (`LocalWorkloads`): a pod is on the reporting node (checked
//!   in `reported::check_report`), its VPC has a Subnet whose `nodeBlocks` give
//!   this node a block, and its address lies inside one of those blocks. A node
//!   therefore joins only the VPCs where the manifests gave it a block, and a
//!   pod's labels can only select it into Services of those VPCs, which the node
//!   already receives: a report never pulls in intent the node was not given.
//!   Reported pods carry no IPv6 address (node blocks are IPv4).
//! - **Health verdicts** (`Health`): a verdict counts only for a backend hosted on
//!   the reporting node, that is, a Workload on that node with that VPC and
//!   address (exactly the backends its agent probes). The hub keeps each node's
//!   claim and re-filters it whenever the intent changes.
//! - **Revocation** drops both at once (`hub::Hub::revoke_node`).
//!
//! Pure functions of the intent; the callers log and count what is refused.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use dpu_model::{Intent, Workload};

/// Why a reported pod may not be in the intent, as `Workload/x: field: message`;
/// `None` if the reporting node may report it. `w.node` is the reporting node.
pub fn refuse_reported_pod(intent: &Intent, w: &Workload) -> Option<String> {
    if w.ipv6.is_some() {
        return Some(format!(
            "Workload/{}: spec.ipv6: a reported pod has an IPv4 address from its node's block only",
            w.name
        ));
    }
    let blocks: Vec<(&str, ipnet::Ipv4Net)> = intent
        .subnets
        .values()
        .filter(|s| s.vpc == w.vpc)
        .flat_map(|s| {
            s.node_blocks
                .iter()
                .filter(|b| b.node == w.node)
                .map(move |b| (s.name.as_str(), b.cidr))
        })
        .collect();
    if blocks.is_empty() {
        return Some(format!(
            "Workload/{}: spec.vpc: node {} has no block in any Subnet of Vpc/{} (spec.nodeBlocks); a node reports pods only where it holds a block",
            w.name, w.node, w.vpc
        ));
    }
    if blocks.iter().any(|(_, cidr)| cidr.contains(&w.ip)) {
        return None;
    }
    let held: Vec<String> = blocks
        .iter()
        .map(|(subnet, cidr)| format!("{cidr} of Subnet/{subnet}"))
        .collect();
    Some(format!(
        "Workload/{}: spec.ip: {} is outside the blocks of node {} in Vpc/{} ({})",
        w.name,
        w.ip,
        w.node,
        w.vpc,
        held.join(", ")
    ))
}

/// (VPC, address) of a backend a node hosts.
pub type Hosted<'a> = HashSet<(&'a str, IpAddr)>;

/// The backends `node` hosts: (VPC, address) of every Workload on it, both
/// families. A health verdict of the node counts only for these.
pub fn hosted_backends<'a>(intent: &'a Intent, node: &str) -> Hosted<'a> {
    hosted_backends_of(intent, |n| n == node)
        .remove(node)
        .unwrap_or_default()
}

/// [`hosted_backends`] of every node `wanted` picks, in one pass over the
/// workloads.
pub fn hosted_backends_of<'a>(
    intent: &'a Intent,
    wanted: impl Fn(&str) -> bool,
) -> HashMap<&'a str, Hosted<'a>> {
    let mut out: HashMap<&str, Hosted> = HashMap::new();
    for w in intent.workloads.values().filter(|w| wanted(&w.node)) {
        let hosted = out.entry(w.node.as_str()).or_default();
        hosted.insert((w.vpc.as_str(), IpAddr::V4(w.ip)));
        if let Some(v6) = w.ipv6 {
            hosted.insert((w.vpc.as_str(), IpAddr::V6(v6)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::resolve;
    use dpu_model::WorkloadKind;

    fn intent() -> Intent {
        resolve(&crate::manifest::good_sample_docs("")).unwrap()
    }

    fn pod(node: &str, vpc: &str, ip: &str) -> Workload {
        Workload {
            name: "p".into(),
            kind: WorkloadKind::Pod,
            vpc: vpc.into(),
            ip: ip.parse().unwrap(),
            ipv6: None,
            mac: None,
            labels: Default::default(),
            node: node.into(),
            port: "p-eth0".into(),
        }
    }

    #[test]
    fn a_pod_must_be_inside_its_nodes_block_in_its_vpc() {
        let i = intent();
        let blocks: Vec<_> = i
            .subnets
            .values()
            .flat_map(|s| s.node_blocks.iter().map(move |b| (s, b)))
            .collect();
        let (subnet, block) = blocks.first().expect("the sample has a node block");
        let inside = block.cidr.hosts().next().unwrap().to_string();
        assert_eq!(
            refuse_reported_pod(&i, &pod(&block.node, &subnet.vpc, &inside)),
            None
        );

        // Outside the block, in the same VPC.
        let outside = std::net::Ipv4Addr::from(u32::from(block.cidr.broadcast()) + 1).to_string();
        let why = refuse_reported_pod(&i, &pod(&block.node, &subnet.vpc, &outside)).unwrap();
        assert!(why.starts_with("Workload/p: spec.ip: "), "{why}");
        assert!(why.contains(&block.cidr.to_string()), "{why}");

        // A node with no block in that VPC (dpu-3 is only in red).
        let why = refuse_reported_pod(&i, &pod("dpu-3", &subnet.vpc, &inside)).unwrap();
        assert!(
            why.starts_with("Workload/p: spec.vpc: node dpu-3 has no block"),
            "{why}"
        );

        // A VPC with no Subnet at all, or an unknown node.
        assert!(refuse_reported_pod(&i, &pod(&block.node, "nope", &inside)).is_some());
        assert!(refuse_reported_pod(&i, &pod("dpu-9", &subnet.vpc, &inside)).is_some());

        let mut v6 = pod(&block.node, &subnet.vpc, &inside);
        v6.ipv6 = Some("fd00::5".parse().unwrap());
        let why = refuse_reported_pod(&i, &v6).unwrap();
        assert!(why.contains("spec.ipv6"), "{why}");
    }

    #[test]
    fn a_node_hosts_only_its_own_workloads() {
        let i = intent();
        let web_1 = &i.workloads["web-1"];
        let mine = hosted_backends(&i, &web_1.node);
        assert!(mine.contains(&(web_1.vpc.as_str(), IpAddr::V4(web_1.ip))));
        for w in i.workloads.values().filter(|w| w.node != web_1.node) {
            let other = (w.vpc.as_str(), IpAddr::V4(w.ip));
            let same_addr_here = i
                .workloads
                .values()
                .any(|m| m.node == web_1.node && m.vpc == w.vpc && m.ip == w.ip);
            assert_eq!(mine.contains(&other), same_addr_here, "{}", w.name);
        }
        assert!(hosted_backends(&i, "dpu-9").is_empty());
    }
}
