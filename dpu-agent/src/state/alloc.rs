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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Allocations {
    pub zones: BTreeMap<String, u16>,
    pub groups: BTreeMap<String, u32>,
    /// The free group ids, for [`Allocations::update_changed`]; built on first
    /// use, dropped whenever `groups` is replaced whole.
    #[serde(skip)]
    free: Option<FreeIds>,
}

impl PartialEq for Allocations {
    fn eq(&self, other: &Self) -> bool {
        self.zones == other.zones && self.groups == other.groups
    }
}

impl Eq for Allocations {}

/// Free group ids: those below `high` that no key holds, and all from `high` up.
#[derive(Debug, Clone, Default)]
struct FreeIds {
    below: BTreeSet<u32>,
    high: u32,
}

impl FreeIds {
    fn of(groups: &BTreeMap<String, u32>) -> FreeIds {
        let used: BTreeSet<u32> = groups.values().copied().collect();
        let high = used.last().map_or(FIRST_GROUP, |m| m + 1);
        FreeIds {
            below: (FIRST_GROUP..high)
                .filter(|id| !used.contains(id))
                .collect(),
            high,
        }
    }

    fn take(&mut self) -> Option<u32> {
        if let Some(id) = self.below.pop_first() {
            return Some(id);
        }
        (self.high <= LAST_GROUP).then(|| {
            self.high += 1;
            self.high - 1
        })
    }

    fn release(&mut self, id: u32) {
        if id + 1 == self.high {
            self.high = id;
            // Keep `below` strictly below `high`.
            while let Some(&top) = self.below.last() {
                if top + 1 != self.high {
                    break;
                }
                self.below.pop_last();
                self.high = top;
            }
        } else {
            self.below.insert(id);
        }
    }
}

/// What [`Allocations::update_changed`] replaced, to undo it.
#[derive(Debug, Clone)]
pub enum AllocUndo {
    Whole(Box<Allocations>),
    Groups(Vec<(String, Option<u32>)>),
}

const LAST_GROUP: u32 = 0xffff_ff00;

// The model's limits keep allocation from running out, so that an intent the
// controller accepts never fails here: one zone per VPC (zone 0 and the
// service gateway's are not for VPCs), one group id per Service port.
const _: () = assert!(
    dpu_model::limits::MAX_VPCS <= (crate::compile::pipeline::GATEWAY_ZONE - FIRST_ZONE) as usize
);
const _: () = assert!(
    dpu_model::limits::MAX_OBJECTS * dpu_model::limits::MAX_PORTS
        <= (LAST_GROUP - FIRST_GROUP + 1) as usize
);

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
            u32::from(crate::compile::pipeline::GATEWAY_ZONE - 1),
        )
        .map_err(AllocError::ZonesExhausted)?
        .into_iter()
        .map(|(k, v)| (k, v as u16))
        .collect();
        let group_keys = intent
            .services
            .values()
            .flat_map(|s| s.ports.iter().map(move |p| group_key(s, p)));
        let groups = reallocate(&self.groups, group_keys, FIRST_GROUP, LAST_GROUP)
            .map_err(AllocError::GroupsExhausted)?;
        Ok(Allocations {
            zones,
            groups,
            free: None,
        })
    }

    /// [`Self::update`] in place, given the objects that changed (`None`: not
    /// known). When no VPC changed it touches only their group keys:
    /// released first, then the new ones take the lowest free ids in key order,
    /// which is what the whole reallocation gives. On error nothing changed.
    pub fn update_changed(
        &mut self,
        intent: &Intent,
        changed: Option<&BTreeSet<dpu_model::ObjectKey>>,
    ) -> Result<AllocUndo, AllocError> {
        use dpu_model::Kind;
        // Zones change only with VPCs.
        let only_services = changed.filter(|c| !c.iter().any(|k| k.kind == Kind::Vpc));
        let Some(changed) = only_services else {
            let next = self.update(intent)?;
            return Ok(AllocUndo::Whole(Box::new(std::mem::replace(self, next))));
        };
        let mut free = match self.free.take() {
            Some(f) => f,
            None => FreeIds::of(&self.groups),
        };
        let mut undo = Vec::new();
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        for k in changed.iter().filter(|k| k.kind == Kind::Service) {
            if let Some(s) = intent.services.get(&k.name) {
                wanted.extend(s.ports.iter().map(|p| group_key(s, p)));
            }
            let prefix = format!("{}/", k.name);
            let gone: Vec<String> = self
                .groups
                .range(prefix.clone()..)
                .take_while(|(g, _)| g.starts_with(&prefix))
                .map(|(g, _)| g.clone())
                .filter(|g| !wanted.contains(g))
                .collect();
            for g in gone {
                let id = self.groups.remove(&g).expect("listed above");
                free.release(id);
                undo.push((g, Some(id)));
            }
        }
        for g in wanted {
            if self.groups.contains_key(&g) {
                continue;
            }
            let Some(id) = free.take() else {
                self.undo(AllocUndo::Groups(undo));
                return Err(AllocError::GroupsExhausted(g));
            };
            self.groups.insert(g.clone(), id);
            undo.push((g, None));
        }
        self.free = Some(free);
        Ok(AllocUndo::Groups(undo))
    }

    /// Puts back what [`Self::update_changed`] changed.
    pub fn undo(&mut self, undo: AllocUndo) {
        match undo {
            AllocUndo::Whole(old) => *self = *old,
            AllocUndo::Groups(changes) => {
                for (g, old) in changes.into_iter().rev() {
                    match old {
                        Some(id) => drop(self.groups.insert(g, id)),
                        None => drop(self.groups.remove(&g)),
                    }
                }
                self.free = None;
            }
        }
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

    fn with_services(mut i: Intent, services: &[(&str, &[u16])]) -> Intent {
        use dpu_model::{AccessScenario, Protocol};
        i.services.clear();
        for (name, ports) in services {
            i.services.insert(
                name.to_string(),
                std::sync::Arc::new(Service {
                    name: name.to_string(),
                    vpc: "a".into(),
                    cluster_ips: vec![],
                    ports: ports
                        .iter()
                        .map(|p| ServicePort {
                            name: String::new(),
                            protocol: Protocol::Tcp,
                            port: *p,
                            target_port: *p,
                        })
                        .collect(),
                    backends: vec![],
                    affinity_timeout: None,
                    eip: None,
                    scenario: AccessScenario::ClusterIp,
                    external_traffic_local: false,
                    eip_node: None,
                }),
            );
        }
        i
    }

    #[test]
    fn changed_services_get_the_ids_a_whole_reallocation_gives() {
        use dpu_model::{Kind, ObjectKey};
        let steps: &[&[(&str, &[u16])]] = &[
            &[("a", &[1, 2]), ("b", &[1, 2, 3]), ("c", &[1])],
            &[("a", &[1, 2]), ("c", &[1])],
            &[("a", &[1, 2]), ("c", &[1, 5]), ("d", &[7, 8, 9, 10])],
            &[
                ("a", &[2]),
                ("c", &[1, 5]),
                ("d", &[7, 8, 9, 10]),
                ("e", &[1]),
            ],
            &[("d", &[7, 8, 9, 10]), ("e", &[1])],
            &[("b", &[1, 2, 3, 4, 5]), ("d", &[7, 8, 9, 10]), ("e", &[1])],
        ];
        let mut prev = intent(&["a"]);
        let mut whole = Allocations::default().update(&prev).unwrap();
        let mut inc = whole.clone();
        for services in steps {
            let next = with_services(prev.clone(), services);
            let changed = prev
                .services
                .keys()
                .chain(next.services.keys())
                .filter(|k| prev.services.get(*k) != next.services.get(*k))
                .map(|k| ObjectKey::new(Kind::Service, k.as_str()))
                .collect();
            whole = whole.update(&next).unwrap();
            inc.update_changed(&next, Some(&changed)).unwrap();
            assert_eq!(inc, whole);
            prev = next;
        }
        // Undo puts it back.
        let before = inc.clone();
        let next = with_services(prev.clone(), &[("z", &[1, 2, 3])]);
        let changed = prev
            .services
            .keys()
            .chain(next.services.keys())
            .map(|k| ObjectKey::new(Kind::Service, k.as_str()))
            .collect();
        let undo = inc.update_changed(&next, Some(&changed)).unwrap();
        assert_ne!(inc, before);
        inc.undo(undo);
        assert_eq!(inc, before);
        assert_eq!(inc.update(&prev).unwrap(), before);
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
