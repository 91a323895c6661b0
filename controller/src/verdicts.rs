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

/// Each node's claim is the store key `health/<node>`.
pub const PREFIX: &str = "health/";

/// The store value of a claim: `[["vpc", "ip"], ...]`.
pub fn claim_value(claim: &Claim) -> String {
    let pairs: Vec<(&str, String)> = claim
        .iter()
        .map(|(vpc, ip)| (vpc.as_str(), ip.to_string()))
        .collect();
    serde_json::to_string(&pairs).expect("a claim serializes")
}

/// A claim from its store value, bounded as a Health report is.
pub fn claim_from_value(node: &str, value: &str) -> Result<Claim, String> {
    let pairs: Vec<(String, String)> =
        serde_json::from_str(value).map_err(|e| format!("store key {PREFIX}{node}: {e}"))?;
    if pairs.len() > MAX_HEALTH_ENTRIES {
        return Err(format!(
            "store key {PREFIX}{node}: {} entries; at most {MAX_HEALTH_ENTRIES}",
            pairs.len()
        ));
    }
    pairs
        .into_iter()
        .map(|(vpc, ip)| {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("store key {PREFIX}{node}: {ip:?} is not an IP address"))?;
            Ok((vpc, ip))
        })
        .collect()
}

/// Claims on their way from the sessions to the store (`healthsync`): a later
/// claim of a node replaces a waiting one.
#[derive(Debug, Default)]
pub struct ClaimInbox {
    pending: std::sync::Mutex<BTreeMap<String, Claim>>,
    arrived: tokio::sync::Notify,
}

impl ClaimInbox {
    pub fn submit(&self, node: &str, claim: Claim) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_string(), claim);
        self.arrived.notify_one();
    }

    /// Everything waiting, by node.
    pub fn take(&self) -> BTreeMap<String, Claim> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves when a claim was submitted since the last wake-up.
    pub async fn arrived(&self) {
        self.arrived.notified().await
    }
}

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
    pub fn has_claim(&self, node: &str) -> bool {
        self.claims.contains_key(node)
    }

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

    #[test]
    fn a_claim_round_trips_through_its_store_value_and_a_hostile_one_is_refused() {
        let c = claim(&["blue/10.1.1.10", "red/fd00::1"]);
        assert_eq!(claim_from_value("dpu-1", &claim_value(&c)).unwrap(), c);
        let err = claim_from_value("dpu-1", r#"[["blue", "nope"]]"#).unwrap_err();
        assert!(
            err.contains("health/dpu-1") && err.contains("not an IP address"),
            "{err}"
        );
        let many = serde_json::to_string(&vec![("v", "10.0.0.1"); MAX_HEALTH_ENTRIES + 1]).unwrap();
        let err = claim_from_value("dpu-1", &many).unwrap_err();
        assert!(err.contains("at most 100000"), "{err}");
        assert!(claim_from_value("dpu-1", "{").is_err());
    }
}
