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

use dpu_model::limits::MAX_OBJECTS;
use dpu_model::{Intent, Workload};

use crate::manifest::{Doc, ServiceSpec, Spec};
use crate::reported::ReportedSet;
use crate::resolve::{resolve_with, selects, SELECTED};

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
    pub intent: Intent,
    /// Every node that reported a set.
    pub nodes: BTreeMap<String, NodeMerge>,
}

/// Merges the reported sets into the manifests. `docs` are the manifest
/// documents and `base` what they resolve to on their own (both valid).
pub fn merge(docs: &[Doc], base: &Intent, reported: &BTreeMap<String, ReportedSet>) -> Merged {
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
        let errors = match resolve_with(docs, &extra) {
            Ok(intent) => break intent,
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

/// The collisions that the manifests must win, checked before resolution (the
/// model's rules would blame whichever object sorts later). Returns what is
/// left, as (node, workload) in node then name order.
fn precheck<'a>(
    base: &'a Intent,
    reported: &'a BTreeMap<String, ReportedSet>,
    nodes: &mut BTreeMap<String, NodeMerge>,
) -> Vec<(&'a str, &'a Workload)> {
    let mut names: HashMap<&str, String> = base
        .workloads
        .keys()
        .map(|n| {
            let owner = "a manifest Workload has this name (the manifest wins)".to_string();
            (n.as_str(), owner)
        })
        .collect();
    let mut ips: HashMap<(&str, IpAddr), String> = HashMap::new();
    for s in base.subnets.values() {
        ips.insert(
            (&s.vpc, s.gateway),
            format!("the gateway of Subnet/{}", s.name),
        );
    }
    for s in base.services.values() {
        for ip in &s.cluster_ips {
            ips.insert(
                (&s.vpc, *ip),
                format!("a cluster IP of YusurService/{}", s.name),
            );
        }
    }
    for w in base.workloads.values() {
        ips.insert((&w.vpc, IpAddr::V4(w.ip)), format!("Workload/{}", w.name));
        if let Some(v6) = w.ipv6 {
            ips.insert((&w.vpc, IpAddr::V6(v6)), format!("Workload/{}", w.name));
        }
    }
    let mut ports: HashMap<(&str, &str), String> = base
        .workloads
        .values()
        .map(|w| {
            (
                (w.node.as_str(), w.port.as_str()),
                format!("Workload/{}", w.name),
            )
        })
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
                    "Workload/{}: spec.port: port {} on node {} is already bound to {owner}",
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
            names.insert(
                &w.name,
                format!("node {node} already reports a Workload with this name"),
            );
            ips.insert(
                (&w.vpc, IpAddr::V4(w.ip)),
                format!("Workload/{} (reported by {node})", w.name),
            );
            ports.insert((&w.node, &w.port), format!("Workload/{}", w.name));
            room -= 1;
            kept.push((node.as_str(), w));
        }
    }
    kept
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
