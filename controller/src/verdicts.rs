//! The health verdicts nodes send, and the part of each that counts.
//!
//! A node's last `Health` report is its *claim*: the backends it calls
//! unhealthy. Only the backends it hosts count (`authz::hosted_backends`); the
//! rest is refused. Claims are kept (a node that disconnects keeps its
//! verdicts: the data plane goes on without the controller) and filtered again
//! whenever the intent changes, since a backend may move to another node. Every
//! agent is told the union of what counts. Pure bookkeeping: the hub does the
//! locking, logging, status and fan-out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dpu_model::Intent;

use crate::authz::{hosted_backends, hosted_backends_of, Hosted};

/// At most this many unhealthy backends in one Health report (a node cannot
/// have more backends than Services × backends allow; this bounds memory).
pub const MAX_HEALTH_ENTRIES: usize = 100_000;

/// (VPC, address) of a backend, as verdicts name it.
pub type BackendKey = (String, String);

/// What one node claimed, as checked (syntactically valid) entries.
pub type Claim = BTreeSet<(String, IpAddr)>;

#[derive(Debug, Default)]
pub struct Verdicts {
    claims: BTreeMap<String, Claim>,
    counted: BTreeMap<String, BTreeSet<BackendKey>>,
}

/// What a change did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Per node filtered: its refused entries (`vpc/ip`).
    pub refused: Vec<(String, Vec<String>)>,
    /// The new union, if it changed.
    pub union: Option<BTreeSet<BackendKey>>,
}

impl Verdicts {
    /// Makes `claim` the node's and filters it against `intent`.
    pub fn set_claim(&mut self, intent: &Intent, node: &str, claim: Claim) -> Change {
        let (counted, refused) = split_claim(&hosted_backends(intent, node), &claim);
        if claim.is_empty() {
            self.claims.remove(node);
        } else {
            self.claims.insert(node.to_string(), claim);
        }
        Change {
            refused: vec![(node.to_string(), refused)],
            union: self.set_counted(node, counted),
        }
    }

    /// Filters every claim again against `intent` (one pass over its
    /// workloads, whatever the number of nodes).
    pub fn refilter(&mut self, intent: &Intent) -> Change {
        let mut change = Change::default();
        let hosted = hosted_backends_of(intent, |n| self.claims.contains_key(n));
        let none = Hosted::new();
        let filtered: Vec<_> = self
            .claims
            .iter()
            .map(|(node, claim)| {
                let hosted = hosted.get(node.as_str()).unwrap_or(&none);
                let (counted, refused) = split_claim(hosted, claim);
                (node.clone(), counted, refused)
            })
            .collect();
        for (node, counted, refused) in filtered {
            if let Some(u) = self.set_counted(&node, counted) {
                change.union = Some(u);
            }
            change.refused.push((node, refused));
        }
        change
    }

    /// Forgets everything the node said; the new union if it changed.
    pub fn drop_node(&mut self, node: &str) -> Option<BTreeSet<BackendKey>> {
        self.claims.remove(node);
        self.set_counted(node, BTreeSet::new())
    }

    /// The nodes with a claim.
    pub fn nodes(&self) -> impl Iterator<Item = &String> {
        self.claims.keys()
    }

    fn set_counted(
        &mut self,
        node: &str,
        counted: BTreeSet<BackendKey>,
    ) -> Option<BTreeSet<BackendKey>> {
        let before = self.counted.get(node);
        if before == Some(&counted) || (before.is_none() && counted.is_empty()) {
            return None;
        }
        if counted.is_empty() {
            self.counted.remove(node);
        } else {
            self.counted.insert(node.to_string(), counted);
        }
        Some(self.counted.values().flatten().cloned().collect())
    }
}

/// `claim` split into the verdicts that count (backends in `hosted`) and the
/// refused ones (`vpc/ip`).
fn split_claim(hosted: &Hosted<'_>, claim: &Claim) -> (BTreeSet<BackendKey>, Vec<String>) {
    let mut counted = BTreeSet::new();
    let mut refused = Vec::new();
    for (vpc, ip) in claim {
        if hosted.contains(&(vpc.as_str(), *ip)) {
            counted.insert((vpc.clone(), ip.to_string()));
        } else {
            refused.push(format!("{vpc}/{ip}"));
        }
    }
    (counted, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::resolve;

    fn intent() -> Intent {
        resolve(&crate::manifest::good_sample_docs("")).unwrap()
    }

    fn claim(entries: &[&str]) -> Claim {
        entries
            .iter()
            .map(|e| {
                let (vpc, ip) = e.split_once('/').unwrap();
                (vpc.to_string(), ip.parse().unwrap())
            })
            .collect()
    }

    fn keys(entries: &[&str]) -> BTreeSet<BackendKey> {
        claim(entries)
            .into_iter()
            .map(|(v, ip)| (v, ip.to_string()))
            .collect()
    }

    #[test]
    fn only_hosted_backends_count_and_the_union_changes_only_when_they_do() {
        let i = intent();
        let mut v = Verdicts::default();
        // web-1 (10.1.1.10) is on dpu-1, web-2 (10.1.2.10) on dpu-2.
        let c = v.set_claim(&i, "dpu-2", claim(&["blue/10.1.1.10", "blue/10.1.2.10"]));
        assert_eq!(c.refused, [("dpu-2".into(), vec!["blue/10.1.1.10".into()])]);
        assert_eq!(c.union, Some(keys(&["blue/10.1.2.10"])));
        // The same again, or another foreign entry: the union stays.
        let c = v.set_claim(&i, "dpu-2", claim(&["blue/10.1.1.20", "blue/10.1.2.10"]));
        assert_eq!(c.union, None);
        let c = v.set_claim(&i, "dpu-1", claim(&["blue/10.1.1.10"]));
        assert_eq!(c.union, Some(keys(&["blue/10.1.1.10", "blue/10.1.2.10"])));
        assert_eq!(v.nodes().count(), 2);

        // web-2 moves to dpu-1: dpu-2's verdict for it stops counting.
        let mut moved = i.clone();
        std::sync::Arc::make_mut(moved.workloads.get_mut("web-2").unwrap()).node = "dpu-1".into();
        let c = v.refilter(&moved);
        assert_eq!(c.union, Some(keys(&["blue/10.1.1.10"])));
        assert!(c.refused.contains(&(
            "dpu-2".into(),
            vec!["blue/10.1.1.20".into(), "blue/10.1.2.10".into()]
        )));
        // And back: the kept claim counts again, with no new report.
        assert_eq!(
            v.refilter(&i).union,
            Some(keys(&["blue/10.1.1.10", "blue/10.1.2.10"]))
        );

        assert_eq!(v.drop_node("dpu-2"), Some(keys(&["blue/10.1.1.10"])));
        assert_eq!(v.drop_node("dpu-2"), None);
        assert_eq!(
            v.set_claim(&i, "dpu-1", Claim::new()).union,
            Some(BTreeSet::new())
        );
        assert_eq!(v.nodes().count(), 0);
    }
}
