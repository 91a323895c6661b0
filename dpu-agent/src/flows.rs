//! The desired-state vocabulary: flows, select groups and the set of both that the
//! compiler produces. Matches and actions are kept in `ovs-ofctl` syntax in the
//! canonical form the builders below write, so the same text serves the golden
//! files, the diff keys and the `ovs-ofctl` backend.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

use crate::pipeline::cookie::Cookie;
use crate::pipeline::Table;

/// What identifies a flow in a table: OpenFlow's (table, priority, match).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    pub table: u8,
    pub priority: u16,
    pub matches: String,
}

/// Everything about a flow that is not its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowBody {
    pub actions: String,
    pub cookie: Cookie,
}

/// One bucket of a select group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket {
    /// OVS's `hash` selection scores each bucket by a hash of this id and the
    /// flow (highest random weight), so a backend's buckets keep their ids when
    /// other backends come and go: see [`crate::compile::bucket_id`].
    pub id: u32,
    /// The actions in `ovs-ofctl` syntax.
    pub actions: String,
}

impl Bucket {
    pub fn new(id: u32, actions: impl Into<String>) -> Self {
        Bucket {
            id,
            actions: actions.into(),
        }
    }

    /// Buckets with ids 0, 1, 2, … in order: for groups built by hand (tests).
    pub fn numbered<S: Into<String>>(actions: impl IntoIterator<Item = S>) -> Vec<Bucket> {
        actions
            .into_iter()
            .enumerate()
            .map(|(i, a)| Bucket::new(i as u32, a))
            .collect()
    }
}

/// A select group. Its buckets are listed in bucket-id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: u32,
    /// Fields the hash selection method hashes on.
    pub hash_fields: Vec<&'static str>,
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
            self.hash_fields.join(",")
        );
        for b in &self.buckets {
            let _ = write!(s, ",bucket=bucket_id:{},actions={}", b.id, b.actions);
        }
        s
    }
}

/// The compiler's output for one switch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub flows: BTreeMap<FlowKey, FlowBody>,
    pub groups: BTreeMap<u32, Group>,
}

impl DesiredState {
    /// Adds a flow. Two objects may want the very same flow (two Services sharing a
    /// backend endpoint); the first owner keeps it.
    pub fn add(&mut self, table: Table, priority: u16, m: Match, actions: Actions, cookie: Cookie) {
        let key = FlowKey {
            table: table.id,
            priority,
            matches: m.0,
        };
        self.flows.entry(key).or_insert(FlowBody {
            actions: actions.render(),
            cookie,
        });
    }

    /// A stable, readable dump: the golden-file format.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let mut last_table = None;
        for (k, v) in &self.flows {
            if last_table != Some(k.table) {
                let name = crate::pipeline::table_by_id(k.table).map_or("?", |t| t.name);
                let _ = writeln!(out, "# table {} {}", k.table, name);
                last_table = Some(k.table);
            }
            let _ = writeln!(
                out,
                "priority={} {} actions={}  [{:?}]",
                k.priority,
                if k.matches.is_empty() {
                    "*"
                } else {
                    &k.matches
                },
                v.actions,
                v.cookie.category
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
                g.hash_fields.join(","),
                g.owner.category
            );
            for b in &g.buckets {
                let _ = writeln!(out, "  bucket {}: {}", b.id, b.actions);
            }
        }
        out
    }
}

/// A match in `ovs-ofctl` syntax, built field by field in a fixed order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match(String);

impl Match {
    pub fn new() -> Self {
        Match(String::new())
    }

    fn push(mut self, field: impl fmt::Display) -> Self {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        let _ = write!(self.0, "{field}");
        self
    }

    pub fn kw(self, keyword: &str) -> Self {
        self.push(keyword)
    }
    pub fn in_port(self, ofport: u32) -> Self {
        self.push(format_args!("in_port={ofport}"))
    }
    pub fn reg(self, reg: &str, value: u32) -> Self {
        self.push(format_args!("{reg}={value:#x}"))
    }
    pub fn reg_masked(self, reg: &str, value: u32, mask: u32) -> Self {
        self.push(format_args!("{reg}={value:#x}/{mask:#x}"))
    }
    pub fn field(self, name: &str, value: impl fmt::Display) -> Self {
        self.push(format_args!("{name}={value}"))
    }
    pub fn ip_field(self, name: &str, ip: Ipv4Addr) -> Self {
        self.push(format_args!("{name}={ip}"))
    }
    /// This match followed by every field of `other`.
    pub fn and(self, other: &Match) -> Self {
        if other.0.is_empty() {
            self
        } else {
            self.push(&other.0)
        }
    }
}

/// The cookie of the entries a flow's `learn(…,cookie=…,…)` action makes, if its
/// actions learn: the reconciler deletes a removed AffinityLearn flow's entries
/// by it. The text is the compiler's own, so `cookie=` is the learn's.
pub fn learned_cookie(actions: &str) -> Option<u64> {
    let (_, learn) = actions.split_once("learn(")?;
    let (_, rest) = learn.split_once("cookie=")?;
    let hex = rest.split([',', ')']).next()?;
    u64::from_str_radix(hex.strip_prefix("0x")?, 16).ok()
}

/// An action list in `ovs-ofctl` syntax.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions(Vec<String>);

impl Actions {
    pub fn new() -> Self {
        Actions(Vec::new())
    }
    pub fn drop() -> Self {
        Actions(vec!["drop".into()])
    }
    pub fn raw(mut self, a: impl Into<String>) -> Self {
        self.0.push(a.into());
        self
    }
    pub fn set_field(self, value: impl fmt::Display, field: &str) -> Self {
        self.raw(format!("set_field:{value}->{field}"))
    }
    pub fn set_reg(self, reg: &str, value: u32) -> Self {
        self.raw(format!("set_field:{value:#x}->{reg}"))
    }
    pub fn goto(self, t: Table) -> Self {
        self.raw(format!("goto_table:{}", t.id))
    }
    pub fn resubmit(self, t: Table) -> Self {
        self.raw(format!("resubmit(,{})", t.id))
    }
    pub fn group(self, id: u32) -> Self {
        self.raw(format!("group:{id}"))
    }
    pub fn output(self, ofport: u32) -> Self {
        self.raw(format!("output:{ofport}"))
    }
    pub fn render(&self) -> String {
        if self.0.is_empty() {
            "drop".into()
        } else {
            self.0.join(",")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{cookie::Category, CONNTRACK};

    #[test]
    fn match_builder_keeps_order_and_formats_registers_in_hex() {
        let m = Match::new()
            .reg("reg0", 3)
            .kw("ip")
            .ip_field("nw_dst", Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(m.0, "reg0=0x3,ip,nw_dst=10.0.0.1");
    }

    #[test]
    fn first_owner_of_a_shared_flow_wins() {
        let mut d = DesiredState::default();
        let a = Cookie::new(Category::Service, "a");
        let b = Cookie::new(Category::Service, "b");
        d.add(CONNTRACK, 1, Match::new().kw("ip"), Actions::drop(), a);
        d.add(CONNTRACK, 1, Match::new().kw("ip"), Actions::drop(), b);
        assert_eq!(d.flows.len(), 1);
        assert_eq!(d.flows.values().next().map(|f| f.cookie), Some(a));
    }

    #[test]
    fn group_spec_gives_each_bucket_its_id() {
        let g = Group {
            id: 7,
            hash_fields: vec!["ip_src"],
            buckets: vec![
                Bucket::new(3, "resubmit(,45)"),
                Bucket::new(0xffff_fefe, "resubmit(,45)"),
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
