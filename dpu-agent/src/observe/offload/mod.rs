//! The offload audit: reads the switch's datapath flows (`dpctl/dump-flows
//! -m`) and says, for each, whether a BlueField NIC could run it, or exactly
//! why not, by the rules in [`rules`] (OVS tc-flower offload and mlx5
//! conntrack offload, each with its source).
//!
//! It is an analysis of real megaflows, not a hardware measurement: the lab
//! runs the userspace datapath, whose megaflows have the same keys and
//! actions as the kernel datapath's, except for tunnels (`tnl_push`,
//! `tnl_pop`, and `clone(tnl_push(...))` are the userspace form of what the
//! kernel datapath writes as `set(tunnel(...)),output` and a tunnel port,
//! which tc offloads). docs/offload.md says what runs where and why.
//!
//! Three verdicts:
//! - **NIC-matchable**: every rule is met.
//! - **slow path by design**: a connection's first packets (`+new`), invalid
//!   and related packets, ARP and neighbour discovery, and flows reached only
//!   from those. They are meant to run in software.
//! - **software**: data traffic that would stay out of the NIC; the findings
//!   say why. A megaflow that carried packets with this verdict is a defect
//!   ([`Audit::failures`]).

pub mod megaflow;
pub mod rules;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use megaflow::{cs, Megaflow};
use rules::Rule;

use crate::compile::pipeline::{label, reg};

/// One rule a flow breaks, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: Rule,
    pub detail: String,
}

impl Finding {
    fn new(rule: Rule, detail: impl Into<String>) -> Finding {
        Finding {
            rule,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    NicMatchable,
    SlowPath(Finding),
    Software(Vec<Finding>),
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::NicMatchable => "nic_matchable",
            Verdict::SlowPath(_) => "slow_path",
            Verdict::Software(_) => "software",
        }
    }
}

/// One megaflow and what the audit found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audited {
    pub flow: Megaflow,
    pub verdict: Verdict,
    /// Caveats that do not change the verdict (kernel versions).
    pub notes: Vec<Finding>,
}

/// Counts by verdict, in megaflows and in the packets they carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub nic_matchable: u64,
    pub slow_path: u64,
    pub software: u64,
    pub nic_matchable_packets: u64,
    pub slow_path_packets: u64,
    pub software_packets: u64,
}

impl Counts {
    fn add(&mut self, v: &Verdict, packets: u64) {
        match v {
            Verdict::NicMatchable => {
                self.nic_matchable += 1;
                self.nic_matchable_packets += packets;
            }
            Verdict::SlowPath(_) => {
                self.slow_path += 1;
                self.slow_path_packets += packets;
            }
            Verdict::Software(_) => {
                self.software += 1;
                self.software_packets += packets;
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    pub flows: Vec<Audited>,
}

impl Audit {
    /// Audits the lines of a `dpctl/dump-flows -m`.
    pub fn of_dump(text: &str) -> Audit {
        let flows: Vec<Megaflow> = text.lines().filter_map(Megaflow::parse).collect();
        Audit::of(flows)
    }

    pub fn of(flows: Vec<Megaflow>) -> Audit {
        let links: Vec<Link> = flows.iter().map(Link::of).collect();
        let mut judged: Vec<(Verdict, Vec<Finding>)> = flows.iter().map(judge).collect();
        chain(&mut judged, &links);
        Audit {
            flows: flows
                .into_iter()
                .zip(judged)
                .map(|(flow, (verdict, notes))| Audited {
                    flow,
                    verdict,
                    notes,
                })
                .collect(),
        }
    }

    /// [`Audit::counts`] of a dump, keeping no flow (for the metrics).
    pub fn counts_of_dump(text: &str) -> Counts {
        let mut links = Vec::new();
        let mut judged = Vec::new();
        let mut packets = Vec::new();
        for m in text.lines().filter_map(Megaflow::parse) {
            links.push(Link::of(&m));
            judged.push(judge(&m));
            packets.push(m.packets);
        }
        chain(&mut judged, &links);
        let mut c = Counts::default();
        for ((v, _), p) in judged.iter().zip(packets) {
            c.add(v, p);
        }
        c
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for a in &self.flows {
            c.add(&a.verdict, a.flow.packets);
        }
        c
    }

    /// Megaflows that carried data traffic and would stay in software.
    pub fn failures(&self) -> Vec<&Audited> {
        self.flows
            .iter()
            .filter(|a| a.flow.packets > 0 && matches!(a.verdict, Verdict::Software(_)))
            .collect()
    }

    /// The megaflows of a Service: those whose key names one of `addrs` (its
    /// VIPs, EIP and backends) as source or destination, and the flows they
    /// recirculate into.
    pub fn only_addresses(&self, addrs: &[IpAddr]) -> Audit {
        let mut keep: Vec<bool> = self
            .flows
            .iter()
            .map(|a| key_addresses(&a.flow).iter().any(|x| addrs.contains(x)))
            .collect();
        loop {
            let targets: Vec<u32> = self
                .flows
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .flat_map(|(a, _)| recirc_targets(&a.flow))
                .collect();
            let mut changed = false;
            for (a, k) in self.flows.iter().zip(keep.iter_mut()) {
                if !*k && recirc_id(&a.flow).is_some_and(|r| r != 0 && targets.contains(&r)) {
                    *k = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        Audit {
            flows: self
                .flows
                .iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(a, _)| a.clone())
                .collect(),
        }
    }

    /// The report `dpu-agent explain --offload` prints.
    pub fn render(&self, scope: &str) -> String {
        let c = self.counts();
        let mut out = format!(
            "offload audit of {scope}: {} megaflows (dpctl/dump-flows -m), read against OVS tc-flower \
             and mlx5 conntrack offload rules.\nAn analysis of the flows, not a hardware measurement \
             (docs/offload.md).\n\n",
            self.flows.len()
        );
        let _ = writeln!(
            out,
            "  {:<22}{:>10}{:>12}",
            "verdict", "megaflows", "packets"
        );
        for (name, n, p) in [
            ("NIC-matchable", c.nic_matchable, c.nic_matchable_packets),
            ("slow path by design", c.slow_path, c.slow_path_packets),
            ("software", c.software, c.software_packets),
        ] {
            let _ = writeln!(out, "  {name:<22}{n:>10}{p:>12}");
        }
        let data = c.nic_matchable_packets + c.software_packets;
        if data > 0 {
            let _ = writeln!(
                out,
                "  data packets in NIC-matchable megaflows: {:.1}%",
                100.0 * c.nic_matchable_packets as f64 / data as f64
            );
        }
        let failures = self.failures().len();
        if failures == 0 {
            out.push_str(
                "result: pass: every megaflow that carried data traffic is NIC-matchable\n",
            );
        } else {
            let _ = writeln!(
                out,
                "result: FAIL: {failures} megaflows that carried data traffic would stay in software"
            );
        }
        let software: Vec<&Audited> = self
            .flows
            .iter()
            .filter(|a| matches!(a.verdict, Verdict::Software(_)))
            .collect();
        if !software.is_empty() {
            out.push_str("\nsoftware: data traffic that would stay out of the NIC\n");
            for a in software.iter().take(SHOWN) {
                let _ = writeln!(out, "  {}", a.flow.text);
                if let Verdict::Software(fs) = &a.verdict {
                    for f in fs {
                        let _ = writeln!(out, "    {}: {}", f.rule.id, f.detail);
                    }
                }
            }
            if software.len() > SHOWN {
                let _ = writeln!(out, "  ... and {} more", software.len() - SHOWN);
            }
        }
        let mut slow: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let mut notes: BTreeMap<&str, u64> = BTreeMap::new();
        for a in &self.flows {
            if let Verdict::SlowPath(f) = &a.verdict {
                let e = slow.entry(f.rule.id).or_default();
                e.0 += 1;
                e.1 += a.flow.packets;
            }
            for n in &a.notes {
                *notes.entry(n.rule.id).or_default() += 1;
            }
        }
        if !slow.is_empty() {
            out.push_str("\nslow path by design\n");
            for (id, (n, p)) in &slow {
                let _ = writeln!(out, "  {id}: {n} megaflows, {p} packets");
            }
        }
        if !notes.is_empty() {
            out.push_str("\nnotes (the verdict holds on current kernels)\n");
            for (id, n) in &notes {
                let says = rules::ALL
                    .iter()
                    .find(|r| r.id == *id)
                    .map_or("", |r| r.says);
                let _ = writeln!(out, "  {id} ({n} megaflows): {says}");
            }
        }
        let used: Vec<&Rule> = rules::ALL
            .iter()
            .filter(|r| {
                self.flows.iter().any(|a| {
                    a.notes.iter().any(|n| n.rule.id == r.id)
                        || match &a.verdict {
                            Verdict::NicMatchable => false,
                            Verdict::SlowPath(f) => f.rule.id == r.id,
                            Verdict::Software(fs) => fs.iter().any(|f| f.rule.id == r.id),
                        }
                })
            })
            .collect();
        if !used.is_empty() {
            out.push_str("\nrules cited\n");
            for r in used {
                let _ = writeln!(out, "  {}: {}\n    source: {}", r.id, r.says, r.source);
            }
        }
        out
    }
}

/// Software megaflows listed in full by `render`.
const SHOWN: usize = 20;

/// The bits a connection's label can hold when the flow matches `ct_mark`
/// (whose origin field it may pin down); every origin's bits otherwise.
fn label_bits(mark: Option<(u128, u128)>) -> u128 {
    let origin_mask = u128::from(crate::compile::pipeline::mark::ORIGIN_MASK);
    if let Some((v, m)) = mark {
        if m & origin_mask == origin_mask {
            let origin = ((v & origin_mask) >> crate::compile::pipeline::mark::ORIGIN_SHIFT) as u32;
            return label::bits_of_origin(origin);
        }
    }
    [
        reg::ORIGIN_TUNNEL,
        reg::ORIGIN_UPLINK,
        reg::ORIGIN_GATEWAY,
        0,
    ]
    .into_iter()
    .fold(0, |b, o| b | label::bits_of_origin(o))
}

/// Key attributes tc flower takes (some with conditions checked below).
const KNOWN_KEYS: &[&str] = &[
    "recirc_id",
    "dp_hash",
    "skb_priority",
    "in_port",
    "skb_mark",
    "ct_state",
    "ct_zone",
    "ct_mark",
    "ct_label",
    "packet_type",
    "eth",
    "eth_type",
    "vlan",
    "encap",
    "mpls",
    "arp",
    "ipv4",
    "ipv6",
    "tcp",
    "udp",
    "sctp",
    "icmp",
    "icmpv6",
    "tcp_flags",
    "tunnel",
];

fn judge(f: &Megaflow) -> (Verdict, Vec<Finding>) {
    let mut notes = Vec::new();
    let st = f.ct_state();
    // Slow path by design.
    let icmpv6_nd = f.matched("icmpv6").is_some_and(|a| {
        a.matched_parts().iter().any(|(k, v)| {
            *k == "type"
                && v.split('/')
                    .next()
                    .and_then(|t| t.parse::<u8>().ok())
                    .is_some_and(|t| (133..=137).contains(&t))
        })
    });
    if f.eth_type() == Some(0x0806) {
        return (Verdict::SlowPath(Finding::new(rules::ARP_ND, "ARP")), notes);
    }
    if icmpv6_nd || f.matched("nd").is_some() {
        return (
            Verdict::SlowPath(Finding::new(rules::ARP_ND, "IPv6 neighbour discovery")),
            notes,
        );
    }
    if st.set(cs::NEW) && !st.set(cs::EST) {
        return (
            Verdict::SlowPath(Finding::new(rules::CT_NEW, "matches ct_state +new")),
            notes,
        );
    }
    if st.set(cs::INV) || st.set(cs::REL) {
        let which = if st.set(cs::INV) { "+inv" } else { "+rel" };
        return (
            Verdict::SlowPath(Finding::new(
                rules::CT_REL_INV,
                format!("matches ct_state {which}"),
            )),
            notes,
        );
    }

    let mut found = Vec::new();
    for a in &f.key {
        if !a.is_matched() {
            continue;
        }
        match a.name.as_str() {
            "dp_hash" => found.push(Finding::new(
                rules::DP_HASH,
                format!("dp_hash({})", a.inner),
            )),
            "skb_priority" => {
                found.push(Finding::new(rules::UNSUPPORTED_KEY, "skb_priority matched"))
            }
            "skb_mark" if masked_nonzero_value(&a.inner) => found.push(Finding::new(
                rules::UNSUPPORTED_KEY,
                format!("skb_mark({})", a.inner),
            )),
            "packet_type" if a.inner != "ns=0,id=0" => found.push(Finding::new(
                rules::UNSUPPORTED_KEY,
                format!("non-Ethernet packet_type({})", a.inner),
            )),
            "ipv6" => {
                for (k, v) in a.matched_parts() {
                    if k == "label" {
                        found.push(Finding::new(
                            rules::UNSUPPORTED_KEY,
                            format!("ipv6 label={v}"),
                        ));
                    }
                    if k == "frag" && v != "no" {
                        found.push(Finding::new(
                            rules::UNSUPPORTED_KEY,
                            format!("IPv6 fragment (frag={v})"),
                        ));
                    }
                }
            }
            "vlan" => {
                for (k, v) in a.matched_parts() {
                    if matches!(k, "vid" | "pcp") && v.contains('/') {
                        found.push(Finding::new(rules::VLAN_PARTIAL, format!("vlan {k}={v}")));
                    }
                }
            }
            "ct_state" => {
                if st.masked(cs::SNAT | cs::DNAT) {
                    found.push(Finding::new(
                        rules::CT_STATE_NAT,
                        format!("ct_state({})", a.inner),
                    ));
                }
                if st.masked(cs::RPL) {
                    notes.push(Finding::new(
                        rules::CT_RPL,
                        format!("ct_state({})", a.inner),
                    ));
                }
            }
            "ct_zone" if a.inner.contains('/') && !a.inner.ends_with("/0xffff") => {
                notes.push(Finding::new(
                    rules::CT_ZONE_EXACT,
                    format!("ct_zone({})", a.inner),
                ));
            }
            "ct_label" => {
                if let Some((_, mask)) = f.ct_label() {
                    let can_hold = label_bits(f.ct_mark());
                    if mask & can_hold != can_hold {
                        found.push(Finding::new(
                            rules::CT_LABEL_WHOLE,
                            format!(
                                "ct_label({}) matches under {mask:#x}, but this flow's connections can hold label bits {can_hold:#x}",
                                a.inner
                            ),
                        ));
                    }
                    if mask >> 32 != 0 {
                        notes.push(Finding::new(
                            rules::CT_LABEL_LOW32,
                            format!("ct_label mask {mask:#x}"),
                        ));
                    }
                }
            }
            name if !KNOWN_KEYS.contains(&name) => found.push(Finding::new(
                rules::UNSUPPORTED_KEY,
                format!("{name}({}) matched", a.inner),
            )),
            _ => {}
        }
    }
    if f.actions.len() > 16 {
        found.push(Finding::new(
            rules::ACTION_COUNT,
            format!("{} actions", f.actions.len()),
        ));
    }
    for a in &f.actions {
        found.extend(judge_action(a));
    }
    if found.is_empty() {
        (Verdict::NicMatchable, notes)
    } else {
        (Verdict::Software(found), notes)
    }
}

fn judge_action(a: &str) -> Option<Finding> {
    let name = megaflow::action_name(a);
    let inner = a
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or("");
    match name {
        "output" | "drop" | "ct_clear" | "recirc" | "push_vlan" | "pop_vlan" | "push_mpls"
        | "pop_mpls" | "meter" | "check_pkt_len" | "tnl_push" | "tnl_pop" => None,
        "ct" => inner
            .contains("helper=")
            .then(|| Finding::new(rules::CT_HELPER, a.to_string())),
        "set" | "masked_set" => {
            let (what, fields) = match inner.find('(') {
                Some(i) => (&inner[..i], inner[i + 1..].trim_end_matches(')')),
                None => (inner, ""),
            };
            let allowed: &[&str] = match what {
                "ipv4" => &["src", "dst", "ttl", "tos"],
                "ipv6" => &["src", "dst", "hlimit", "tclass"],
                "eth" | "tcp" | "udp" => &["src", "dst"],
                "tunnel" => return None,
                _ => {
                    return Some(Finding::new(
                        rules::SET_FIELD,
                        format!("{a}: {what} is not rewritten by tc"),
                    ))
                }
            };
            megaflow::split_top(fields)
                .into_iter()
                .filter_map(|p| p.split_once('=').map(|(k, _)| k))
                .find(|k| !allowed.contains(k))
                .map(|k| Finding::new(rules::SET_FIELD, format!("{a}: {what} {k}")))
        }
        // The userspace datapath's native tunnelling: the kernel datapath
        // writes set(tunnel(...)),output instead.
        "clone" if inner.starts_with("tnl_push(") => None,
        "hash" => Some(Finding::new(rules::HASH_ACTION, a.to_string())),
        _ => Some(Finding::new(rules::ACTION, format!("action {name}: {a}"))),
    }
}

/// A value that is matched and not zero (`0x1`, `0x1/0xff`; not `0`, `0/0xffffffff`).
fn masked_nonzero_value(v: &str) -> bool {
    megaflow::masked_u128(v).is_some_and(|(v, m)| v & m != 0)
}

fn recirc_id(f: &Megaflow) -> Option<u32> {
    let a = f.attr("recirc_id")?;
    let v = a.inner.split('/').next()?;
    match v.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

fn recirc_targets(f: &Megaflow) -> Vec<u32> {
    f.actions
        .iter()
        .filter_map(|a| a.strip_prefix("recirc(")?.strip_suffix(')'))
        .filter_map(|v| match v.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        })
        .collect()
}

/// Where a flow sits in the recirculation chains: its own recirculation id
/// and those its actions recirculate into.
struct Link {
    id: Option<u32>,
    targets: Vec<u32>,
}

impl Link {
    fn of(f: &Megaflow) -> Link {
        Link {
            id: recirc_id(f),
            targets: recirc_targets(f),
        }
    }
}

/// A flow after recirculation is in the NIC only if a flow that jumps to its
/// chain is; one reached only from slow-path flows carries only what they
/// carry.
fn chain(flows: &mut [(Verdict, Vec<Finding>)], links: &[Link]) {
    for _ in 0..8 {
        let mut changed = false;
        let mut parents: BTreeMap<u32, Vec<Verdict>> = BTreeMap::new();
        for ((v, _), l) in flows.iter().zip(links) {
            for t in &l.targets {
                parents.entry(*t).or_default().push(v.clone());
            }
        }
        for ((verdict, _), l) in flows.iter_mut().zip(links) {
            let Some(id) = l.id.filter(|r| *r != 0) else {
                continue;
            };
            let Some(ps) = parents.get(&id) else {
                continue;
            };
            if matches!(verdict, Verdict::SlowPath(_)) {
                continue;
            }
            if ps.iter().all(|v| matches!(v, Verdict::SlowPath(_))) {
                let why = match &ps[0] {
                    Verdict::SlowPath(f) => f.rule.id,
                    _ => "",
                };
                *verdict = Verdict::SlowPath(Finding::new(
                    rules::CHAIN,
                    format!("reached only from slow-path flows ({why})"),
                ));
                changed = true;
            } else if !ps.iter().any(|v| matches!(v, Verdict::NicMatchable)) {
                let f = Finding::new(
                    rules::CHAIN,
                    format!("every flow that recirculates into {id:#x} stays in software"),
                );
                match verdict {
                    Verdict::Software(fs) if fs.iter().any(|x| x.rule.id == rules::CHAIN.id) => {
                        continue
                    }
                    Verdict::Software(fs) => fs.push(f),
                    v => *v = Verdict::Software(vec![f]),
                }
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
}

/// The exact source and destination addresses in a flow's key.
fn key_addresses(f: &Megaflow) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for name in ["ipv4", "ipv6"] {
        let Some(a) = f.attr(name) else { continue };
        for (k, v) in a.matched_parts() {
            if matches!(k, "src" | "dst") {
                if let Some(ip) = v.split('/').next().and_then(|x| x.parse().ok()) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
