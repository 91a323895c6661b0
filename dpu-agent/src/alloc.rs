//! Local numeric ids: a conntrack zone per VPC and a group id per Service port.
//!
//! Ids must stay the same across agent restarts: established connections live in a
//! zone, so a VPC that changed zone would lose them. The agent persists this map
//! with the applied intent. Allocation is pure and deterministic: new keys take the
//! lowest free id in key order, and keys that are gone release theirs.

use std::collections::{BTreeMap, BTreeSet};

use dpu_model::{Intent, Service, ServicePort};
use serde::{Deserialize, Serialize};

/// Zone 0 is the default zone of untracked traffic; VPCs start at 1.
pub const FIRST_ZONE: u16 = 1;
pub const FIRST_GROUP: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    pub zones: BTreeMap<String, u16>,
    pub groups: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// More VPCs than conntrack zones.
    #[error("no free conntrack zone for Vpc/{0}: all 65534 are taken")]
    ZonesExhausted(String),
    /// More Service ports than group ids.
    #[error("no free group id for {0}")]
    GroupsExhausted(String),
}

/// The key of the select group for one port of one Service.
pub fn group_key(svc: &Service, port: &ServicePort) -> String {
    format!("{}/{}/{}", svc.name, port.protocol.as_str(), port.port)
}

impl Allocations {
    /// Returns the allocation for `intent`, keeping every id still in use.
    pub fn update(&self, intent: &Intent) -> Result<Allocations, AllocError> {
        let zones = reallocate(
            &self.zones,
            intent.vpcs.keys().cloned(),
            u32::from(FIRST_ZONE),
            // The top zone is the service gateway's.
            u32::from(crate::pipeline::GATEWAY_ZONE - 1),
        )
        .map_err(AllocError::ZonesExhausted)?
        .into_iter()
        .map(|(k, v)| (k, v as u16))
        .collect();
        let group_keys = intent
            .services
            .values()
            .flat_map(|s| s.ports.iter().map(move |p| group_key(s, p)));
        let groups = reallocate(&self.groups, group_keys, FIRST_GROUP, 0xffff_ff00)
            .map_err(AllocError::GroupsExhausted)?;
        Ok(Allocations { zones, groups })
    }

    pub fn zone(&self, vpc: &str) -> Option<u16> {
        self.zones.get(vpc).copied()
    }

    pub fn group(&self, svc: &Service, port: &ServicePort) -> Option<u32> {
        self.groups.get(&group_key(svc, port)).copied()
    }
}

fn reallocate<V: Copy + Into<u32>>(
    old: &BTreeMap<String, V>,
    wanted: impl Iterator<Item = String>,
    first: u32,
    last: u32,
) -> Result<BTreeMap<String, u32>, String> {
    let wanted: BTreeSet<String> = wanted.collect();
    let mut out: BTreeMap<String, u32> = old
        .iter()
        .filter(|(k, _)| wanted.contains(*k))
        .map(|(k, v)| (k.clone(), (*v).into()))
        .collect();
    let used: BTreeSet<u32> = out.values().copied().collect();
    let mut free = (first..=last).filter(|id| !used.contains(id));
    for k in wanted {
        if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(k) {
            let id = free.next().ok_or_else(|| slot.key().clone())?;
            slot.insert(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_model::Vpc;

    fn intent(vpcs: &[&str]) -> Intent {
        let mut i = Intent::default();
        for (n, name) in vpcs.iter().enumerate() {
            i.vpcs.insert(
                name.to_string(),
                Vpc {
                    name: name.to_string(),
                    vni: n as u32 + 1,
                },
            );
        }
        i
    }

    #[test]
    fn ids_survive_unrelated_changes() {
        let a = Allocations::default()
            .update(&intent(&["a", "b", "c"]))
            .unwrap();
        assert_eq!(a.zone("b"), Some(2));
        // Removing "a" frees zone 1 but "b" and "c" keep theirs.
        let b = a.update(&intent(&["b", "c"])).unwrap();
        assert_eq!((b.zone("b"), b.zone("c")), (Some(2), Some(3)));
        // A new VPC takes the lowest free zone.
        let c = b.update(&intent(&["b", "c", "d"])).unwrap();
        assert_eq!(c.zone("d"), Some(1));
    }
}
