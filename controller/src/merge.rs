//! The effective intent: the manifests plus the pods that agents report.
//!
//! Reported workloads join the manifest documents in one `resolve_with` run, so
//! Service selectors pick them up exactly like declared Workloads and the model's
//! cross-object rules cover the union. The manifests always win: a reported
//! workload is dropped, with a reason for its node's status, when
//! - its name is a manifest Workload's, or another node's reported one (nodes
//!   are taken in name order, so the outcome does not depend on timing);
//! - its IP is already taken in its VPC (a Workload, a Subnet gateway, a cluster
//!   IP), or its port on its node is already bound;
//! - the intent would exceed `MAX_OBJECTS`;
//! - the merged intent fails a rule that names it, or that names a Service
//!   selecting it (too many backends, say).
//!
//! The manifests alone were valid when they were accepted, so dropping reported
//! workloads always ends in a valid intent.
//!
//! Before any of that, a reported pod must be one its node may report at all
//! (`authz::refuse_reported_pod`: inside the node's block in its VPC).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use dpu_model::limits::MAX_OBJECTS;
use dpu_model::{Intent, Workload};

use crate::manifest::{Doc, ServiceSpec, Spec};
use crate::reported::ReportedSet;
use crate::resolve::{resolve_with, resolve_with_after, selects, SELECTED};

/// What became of one node's reported workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMerge {
    /// How many are in the merged intent.
    pub accepted: usize,
    /// Why the others are not, one line each (`Workload/x: field: message`).
    pub dropped: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Merged {
    /// `base` itself when no reported workload joins it.
    pub intent: Arc<Intent>,
    /// Every node that reported a set.
    pub nodes: BTreeMap<String, NodeMerge>,
}

/// Merges the reported sets into the manifests. `docs` are the manifest
/// documents and `base` what they resolve to on their own (both valid).
/// `previous`, the documents and the result of the last merge, lets the
/// resolve reuse what did not change (`resolve_with_after`).
pub fn merge(
    docs: &[Doc],
    base: &Arc<Intent>,
    reported: &BTreeMap<String, ReportedSet>,
    previous: Option<(&[Doc], &Intent)>,
) -> Merged {
    let mut nodes: BTreeMap<String, NodeMerge> = reported
        .keys()
        .map(|n| (n.clone(), NodeMerge::default()))
        .collect();
    let mut kept = precheck(base, reported, &mut nodes);

    let services: HashMap<&str, &ServiceSpec> = docs
        .iter()
        .filter_map(|d| match &d.spec {
            Spec::Service(s) => Some((d.name.as_str(), s)),
            _ => None,
        })
        .collect();
    // Each round either succeeds or drops at least one workload.
    let intent = loop {
        if kept.is_empty() {
            break base.clone();
        }
        let extra: Vec<Workload> = kept.iter().map(|(_, w)| (*w).clone()).collect();
        let resolved = match previous {
            Some((docs_then, then)) => resolve_with_after(docs, &extra, docs_then, then),
            None => resolve_with(docs, &extra),
        };
        let errors = match resolved {
            Ok(intent) => break Arc::new(intent),
            Err(errors) => errors,
        };
        let names: BTreeSet<&str> = kept.iter().map(|(_, w)| w.name.as_str()).collect();
        let mut culprits: BTreeMap<&str, String> = BTreeMap::new();
        for e in &errors {
            let Some(object) = e.object.as_deref() else {
                continue;
            };
            if let Some(name) = object
                .strip_prefix("Workload/")
                .and_then(|n| names.get(n).copied())
            {
                culprits.entry(name).or_insert_with(|| e.to_string());
            } else if let Some(name) = e
                .message
                .strip_prefix(SELECTED)
                .and_then(|m| m.split_once(':'))
                .and_then(|(n, _)| names.get(n).copied())
            {
                // A backend the selector added, named by `resolve`'s error mapping.
                culprits.entry(name).or_insert_with(|| {
                    format!("Workload/{name}: dropped: {object} selects it, and then: {e}")
                });
            } else if let Some(spec) = object
                .strip_prefix("YusurService/")
                .and_then(|s| services.get(s))
            {
                for (_, w) in kept.iter().filter(|(_, w)| selects(spec, w)) {
                    culprits.entry(&w.name).or_insert_with(|| {
                        format!(
                            "Workload/{}: dropped: {object} selects it and would be invalid: {e}",
                            w.name
                        )
                    });
                }
            }
        }
        if culprits.is_empty() {
            tracing::error!(
                ?errors,
                "the merged intent is invalid and no reported workload is named; dropping them all"
            );
            for (_, w) in &kept {
                culprits.insert(
                    &w.name,
                    format!(
                        "Workload/{}: dropped: the merged intent is invalid: {}",
                        w.name, errors[0]
                    ),
                );
            }
        }
        kept.retain(|(node, w)| match culprits.get(w.name.as_str()) {
            Some(reason) => {
                if let Some(n) = nodes.get_mut(*node) {
                    n.dropped.push(reason.clone());
                }
                false
            }
            None => true,
        });
    };
    for (node, _) in &kept {
        if let Some(n) = nodes.get_mut(*node) {
            n.accepted += 1;
        }
    }
    Merged { intent, nodes }
}

/// Who holds a name, an address or a port already; said only when a
/// reported workload collides with it.
#[derive(Clone, Copy)]
enum Owner<'a> {
    /// A manifest Workload's name.
    ManifestName,
    /// A name another node reported.
    ReportedName(&'a str),
    Gateway(&'a str),
    ClusterIp(&'a str),
    Workload(&'a str),
    /// (workload, node).
    ReportedWorkload(&'a str, &'a str),
}

impl std::fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::ManifestName => {
                write!(f, "a manifest Workload has this name (the manifest wins)")
            }
            Owner::ReportedName(node) => {
                write!(f, "node {node} already reports a Workload with this name")
            }
            Owner::Gateway(subnet) => write!(f, "the gateway of Subnet/{subnet}"),
            Owner::ClusterIp(service) => write!(f, "a cluster IP of YusurService/{service}"),
            Owner::Workload(name) => write!(f, "Workload/{name}"),
            Owner::ReportedWorkload(name, node) => {
                write!(f, "Workload/{name} (reported by {node})")
            }
        }
    }
}

/// The collisions that the manifests must win, checked before resolution (the
/// model's rules would blame whichever object sorts later). Returns what is
/// left, as (node, workload) in node then name order.
fn precheck<'a>(
    base: &'a Intent,
    reported: &'a BTreeMap<String, ReportedSet>,
    nodes: &mut BTreeMap<String, NodeMerge>,
) -> Vec<(&'a str, &'a Workload)> {
    if reported.values().all(|s| s.workloads.is_empty()) {
        return Vec::new();
    }
    let mut names: HashMap<&str, Owner<'a>> = base
        .workloads
        .keys()
        .map(|n| (n.as_str(), Owner::ManifestName))
        .collect();
    let mut ips: HashMap<(&str, IpAddr), Owner<'a>> = HashMap::new();
    for s in base.subnets.values() {
        ips.insert((&s.vpc, s.gateway), Owner::Gateway(&s.name));
    }
    for s in base.services.values() {
        for ip in &s.cluster_ips {
            ips.insert((&s.vpc, *ip), Owner::ClusterIp(&s.name));
        }
    }
    for w in base.workloads.values() {
        ips.insert((&w.vpc, IpAddr::V4(w.ip)), Owner::Workload(&w.name));
        if let Some(v6) = w.ipv6 {
            ips.insert((&w.vpc, IpAddr::V6(v6)), Owner::Workload(&w.name));
        }
    }
    let mut ports: HashMap<(&str, &str), &str> = base
        .workloads
        .values()
        .map(|w| ((w.node.as_str(), w.port.as_str()), w.name.as_str()))
        .collect();
    let mut room = MAX_OBJECTS.saturating_sub(base.len());

    let mut kept = Vec::new();
    for (node, set) in reported {
        for w in &set.workloads {
            let why = if let Some(refused) = crate::authz::refuse_reported_pod(base, w) {
                Some(refused)
            } else if let Some(owner) = names.get(w.name.as_str()) {
                Some(format!("Workload/{}: metadata.name: {owner}", w.name))
            } else if let Some(owner) = ips.get(&(w.vpc.as_str(), IpAddr::V4(w.ip))) {
                Some(format!(
                    "Workload/{}: spec.ip: {} in Vpc/{} is already {owner}",
                    w.name, w.ip, w.vpc
                ))
            } else if let Some(owner) = ports.get(&(w.node.as_str(), w.port.as_str())) {
                Some(format!(
                    "Workload/{}: spec.port: port {} on node {} is already bound to Workload/{owner}",
                    w.name, w.port, w.node
                ))
            } else if room == 0 {
                Some(format!(
                    "Workload/{}: dropped: the intent already holds {MAX_OBJECTS} objects",
                    w.name
                ))
            } else {
                None
            };
            if let Some(reason) = why {
                if let Some(n) = nodes.get_mut(node) {
                    n.dropped.push(reason);
                }
                continue;
            }
            names.insert(&w.name, Owner::ReportedName(node));
            ips.insert(
                (&w.vpc, IpAddr::V4(w.ip)),
                Owner::ReportedWorkload(&w.name, node),
            );
            ports.insert((&w.node, &w.port), &w.name);
            room -= 1;
            kept.push((node.as_str(), w));
        }
    }
    kept
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
