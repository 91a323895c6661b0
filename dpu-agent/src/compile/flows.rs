//! The desired-state vocabulary: flows, select groups and the set of both that the
//! compiler produces. Matches and actions are typed values of the flow IR
//! ([`::openflow::ir`]); they print as canonical `ovs-ofctl` text for the
//! golden files, the `ovs-ofctl` backend and observers.
//!
//! A flow's key and body are shared, not copied: the incremental compiler's
//! parts, the merged desired state and the reconciler's installed view hold the
//! same allocation ([`FlowKey`] is an `Arc`, [`FlowBody::actions`] too).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::compile::fasthash::FastHasher;

use crate::compile::pipeline::cookie::Cookie;
use crate::compile::pipeline::Table;
pub use ::openflow::ir::{Action, Actions, HashField, Match};

/// What identifies a flow in a table: OpenFlow's (table, priority, match).
/// Cheap to clone: the match is one allocation shared by every holder.
///
/// It orders by table, priority, then a hash of the match, then the match:
/// maps of keys decide most comparisons without reading the match (a cache
/// miss each). So a map lists a table's flows of one priority in no
/// particular order; what people read ([`DesiredState::dump`], `show
/// pipeline`) sorts by the match's text.
#[derive(Clone)]
pub struct FlowKey {
    pub table: u8,
    pub priority: u16,
    hash: u32,
    pub matches: Arc<Match>,
}

impl FlowKey {
    pub fn new(table: u8, priority: u16, matches: Match) -> Self {
        let mut h = FastHasher::default();
        matches.hash(&mut h);
        FlowKey {
            table,
            priority,
            hash: h.finish() as u32,
            matches: Arc::new(matches.shrink()),
        }
    }
}

impl PartialEq for FlowKey {
    fn eq(&self, o: &Self) -> bool {
        self.table == o.table
            && self.priority == o.priority
            && self.hash == o.hash
            && (Arc::ptr_eq(&self.matches, &o.matches) || self.matches == o.matches)
    }
}

impl Eq for FlowKey {}

impl Ord for FlowKey {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.table, self.priority, self.hash)
            .cmp(&(o.table, o.priority, o.hash))
            .then_with(|| {
                if Arc::ptr_eq(&self.matches, &o.matches) {
                    Ordering::Equal
                } else {
                    self.matches.cmp(&o.matches)
                }
            })
    }
}

impl PartialOrd for FlowKey {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u8(self.table);
        state.write_u16(self.priority);
        state.write_u32(self.hash);
    }
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FlowKey(table={},priority={},{})",
            self.table, self.priority, self.matches
        )
    }
}

/// Everything about a flow that is not its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowBody {
    pub actions: Arc<Actions>,
    pub cookie: Cookie,
}

impl FlowBody {
    pub fn new(actions: Actions, cookie: Cookie) -> Self {
        FlowBody {
            actions: Arc::new(actions.shrink()),
            cookie,
        }
    }
}

/// One bucket of a select group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket {
    /// OVS's `hash` selection scores each bucket by a hash of this id and the
    /// flow (highest random weight), so a backend's buckets keep their ids when
    /// other backends come and go: see [`crate::compile::bucket_id`].
    pub id: u32,
    /// Shared by every bucket of one backend.
    pub actions: Arc<Actions>,
}

impl Bucket {
    pub fn new(id: u32, actions: Arc<Actions>) -> Self {
        Bucket { id, actions }
    }

    /// Buckets with ids 0, 1, 2, … in order: for groups built by hand (tests).
    pub fn numbered(actions: impl IntoIterator<Item = Actions>) -> Vec<Bucket> {
        actions
            .into_iter()
            .enumerate()
            .map(|(i, a)| Bucket::new(i as u32, Arc::new(a)))
            .collect()
    }
}

/// A select group. Its buckets are listed in bucket-id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: u32,
    /// Fields the hash selection method hashes on.
    pub hash_fields: Vec<HashField>,
    /// Sorted by id, ids distinct.
    pub buckets: Vec<Bucket>,
    /// The owning Service's cookie. The flows that send to the group
    /// (`group:N`) carry this cookie too: the switch keeps no owner with a
    /// group, so after a restart that is how an observer tells whose a group on
    /// the switch was.
    pub owner: Cookie,
    /// Set when buckets go on to AffinityLearn (the Service has ClientIP
    /// affinity). Informational: learned entries are deleted per backend, by
    /// the cookies of the AffinityLearn flows that go (see
    /// [`crate::compile::affinity_cookie`]), not with the group. Not kept by
    /// the switch either.
    pub learns: bool,
}

impl Group {
    /// The group in `ovs-ofctl` syntax, without a command keyword.
    pub fn spec(&self) -> String {
        let mut s = format!(
            "group_id={},type=select,selection_method=hash,fields({})",
            self.id,
            self.hash_field_text()
        );
        for b in &self.buckets {
            let _ = write!(s, ",bucket=bucket_id:{},actions={}", b.id, b.actions);
        }
        s
    }

    /// The hash fields, comma-separated: `ip_src,ip_dst,tcp_src=63,tcp_dst`.
    pub fn hash_field_text(&self) -> String {
        let mut s = String::new();
        for (i, f) in self.hash_fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{f}");
        }
        s
    }
}

/// The compiler's output for one switch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub flows: BTreeMap<FlowKey, FlowBody>,
    /// Shared, like flows: a group's buckets are held once.
    pub groups: BTreeMap<u32, Arc<Group>>,
}

impl DesiredState {
    /// Adds a flow. Two objects may want the very same flow (two Services sharing a
    /// backend endpoint); the first owner keeps it.
    pub fn add(&mut self, table: Table, priority: u16, m: Match, actions: Actions, cookie: Cookie) {
        self.flows
            .entry(FlowKey::new(table.id, priority, m))
            .or_insert_with(|| FlowBody::new(actions, cookie));
    }

    /// A stable, readable dump: the golden-file format. Flows are listed by
    /// table, priority and match text.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let mut last_table = None;
        let mut lines: Vec<(u8, u16, String, &FlowBody)> = self
            .flows
            .iter()
            .map(|(k, v)| (k.table, k.priority, k.matches.to_string(), v))
            .collect();
        lines.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        for (table, priority, matches, v) in lines {
            if last_table != Some(table) {
                let name = crate::compile::pipeline::table_by_id(table).map_or("?", |t| t.name);
                let _ = writeln!(out, "# table {} {}", table, name);
                last_table = Some(table);
            }
            let _ = writeln!(
                out,
                "priority={} {} actions={}  [{:?}]",
                priority,
                if matches.is_empty() { "*" } else { &matches },
                v.actions,
                v.cookie.category()
            );
        }
        if !self.groups.is_empty() {
            let _ = writeln!(out, "# groups");
        }
        for g in self.groups.values() {
            let _ = writeln!(
                out,
                "group_id={} type=select selection_method=hash fields({})  [{:?}]",
                g.id,
                g.hash_field_text(),
                g.owner.category()
            );
            for b in &g.buckets {
                let _ = writeln!(out, "  bucket {}: {}", b.id, b.actions);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::pipeline::{cookie::Category, CONNTRACK};
    use ::openflow::ir::{Field, Proto};

    #[test]
    fn first_owner_of_a_shared_flow_wins() {
        let mut d = DesiredState::default();
        let a = Cookie::new(Category::Service, "a");
        let b = Cookie::new(Category::Service, "b");
        d.add(
            CONNTRACK,
            1,
            Match::new().proto(Proto::Ip),
            Actions::drop(),
            a,
        );
        d.add(
            CONNTRACK,
            1,
            Match::new().proto(Proto::Ip),
            Actions::drop(),
            b,
        );
        assert_eq!(d.flows.len(), 1);
        assert_eq!(d.flows.values().next().map(|f| f.cookie), Some(a));
    }

    #[test]
    fn group_spec_gives_each_bucket_its_id() {
        let g = Group {
            id: 7,
            hash_fields: vec![HashField::whole(Field::IpSrc)],
            buckets: vec![
                Bucket::new(3, Arc::new(Actions::new().resubmit(45))),
                Bucket::new(0xffff_fefe, Arc::new(Actions::new().resubmit(45))),
            ],
            owner: Cookie::new(Category::Service, "s"),
            learns: false,
        };
        assert_eq!(
            g.spec(),
            "group_id=7,type=select,selection_method=hash,fields(ip_src),bucket=bucket_id:3,actions=resubmit(,45),bucket=bucket_id:4294967038,actions=resubmit(,45)"
        );
    }
}
