//! The hops `explain` walks for one Service, in the order a new connection
//! needs them: in the intent, allocated, ARP answered, ServiceLb flows,
//! groups with the right buckets, a backend serving. Pure: it reads what
//! `explain::run` gathered (the agent's intent and LbIndex, its summary, the
//! switch's own dumps) and says where the chain breaks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use dpu_model::Intent;

use super::switch::SwitchView;
use crate::compile::flows::DesiredState;
use crate::compile::pipeline::cookie::Cookie;
use crate::compile::pipeline::TUNNEL_IFACE_ID;
use crate::compile::pipeline::{ARP_RESPONDER, SERVICE_LB};
use crate::observe::lb_index::{BackendState, BackendView, LbIndex, ServiceView};
use crate::observe::Summary;

/// Everything the hops read.
#[derive(Debug, Clone, Copy)]
pub struct Gathered<'a> {
    pub name: &'a str,
    pub node: &'a str,
    /// The applied intent and its version; `None` before the first.
    pub intent: Option<(u64, &'a Intent)>,
    pub lb: &'a LbIndex,
    pub summary: &'a Summary,
    /// What the reconciler believes it installed.
    pub installed: Option<&'a DesiredState>,
    /// The switch's own view, or why it could not be read.
    pub switch: Result<&'a SwitchView, &'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Broken,
    /// An earlier hop broke in a way that makes this one meaningless.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Broken => "BROKEN",
            Status::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub name: &'static str,
    pub status: Status,
    pub reason: String,
    /// Lines under the hop (one per backend, one per missing bucket).
    pub details: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub service: String,
    pub hops: Vec<Hop>,
    /// `OK: ...` or `BROKEN at <hop>: <reason>`.
    pub verdict: String,
}

impl Report {
    /// The first hop that broke.
    pub fn broken(&self) -> Option<&Hop> {
        self.hops.iter().find(|h| h.status == Status::Broken)
    }

    pub fn render(&self) -> String {
        let mut out = format!("explain Service {}\n", self.service);
        for (i, h) in self.hops.iter().enumerate() {
            writeln!(
                out,
                "{} {:<10} {:<7} {}",
                i + 1,
                h.name,
                h.status.as_str(),
                h.reason
            )
            .ok();
            for d in &h.details {
                writeln!(out, "    {d}").ok();
            }
        }
        out += &self.verdict;
        out.push('\n');
        out
    }
}

/// The hop names, in order.
pub const HOPS: [&str; 6] = [
    "intent",
    "allocation",
    "arp",
    "servicelb",
    "groups",
    "backends",
];

fn hop(name: &'static str, status: Status, reason: impl Into<String>) -> Hop {
    Hop {
        name,
        status,
        reason: reason.into(),
        details: Vec::new(),
    }
}

pub fn check(g: &Gathered<'_>) -> Report {
    let mut hops = Vec::new();
    let view = intent_hop(g, &mut hops);
    if let Some((intent, view)) = view {
        hops.push(allocation(g, intent, view));
        hops.push(arp(g, intent, view));
        hops.push(service_lb(g, view));
        hops.push(groups(g, view));
        hops.push(backends(g, intent, view));
    }
    for name in HOPS.iter().skip(hops.len()) {
        hops.push(hop(
            name,
            Status::Skipped,
            "needs the Service in the intent",
        ));
    }
    let verdict = match hops.iter().find(|h| h.status == Status::Broken) {
        Some(h) => format!("BROKEN at {}: {}", h.name, h.reason),
        None => {
            let on =
                g.lb.services
                    .get(g.name)
                    .map(answers_on)
                    .unwrap_or_default();
            format!("OK: {} answers on {on}", g.name)
        }
    };
    Report {
        service: g.name.to_string(),
        hops,
        verdict,
    }
}

/// `10.96.0.10:80/tcp, 10.96.0.10:53/udp`.
fn answers_on(s: &ServiceView) -> String {
    s.vips()
        .into_iter()
        .flat_map(|vip| {
            s.ports()
                .map(move |p| format!("{}/{}", addr(vip, p.port), p.protocol))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn intent_hop<'a>(g: &Gathered<'a>, hops: &mut Vec<Hop>) -> Option<(&'a Intent, &'a ServiceView)> {
    let Some((version, intent)) = g.intent else {
        hops.push(hop(
            "intent",
            Status::Broken,
            "no intent applied yet on this node",
        ));
        return None;
    };
    if !intent.services.contains_key(g.name) {
        hops.push(hop(
            "intent",
            Status::Broken,
            format!(
                "Service {} is not in intent version {version}: was it removed, or not sent to this node?",
                g.name
            ),
        ));
        return None;
    }
    let Some(view) = g.lb.services.get(g.name) else {
        hops.push(hop(
            "intent",
            Status::Broken,
            format!(
                "Service {} is in intent version {version} but not in the load-balancing index (version {}): the agent has not applied it yet",
                g.name, g.lb.version
            ),
        ));
        return None;
    };
    hops.push(hop(
        "intent",
        Status::Ok,
        format!(
            "in intent version {version}: VPC {}, {}",
            view.vpc(),
            view.scenario()
        ),
    ));
    Some((intent, view))
}

fn allocation(_g: &Gathered<'_>, intent: &Intent, s: &ServiceView) -> Hop {
    let gateway = s.scenario() == "EIP service gateway";
    if !gateway && !intent.vpcs.contains_key(s.vpc()) {
        return hop(
            "allocation",
            Status::Broken,
            format!("its VPC {} is not in the intent: it has no zone", s.vpc()),
        );
    }
    let missing: Vec<&str> = s
        .ports()
        .filter(|p| p.groups.is_empty())
        .map(|p| p.name)
        .collect();
    if !missing.is_empty() {
        return hop(
            "allocation",
            Status::Broken,
            format!("no group allocated for port(s) {}", missing.join(", ")),
        );
    }
    let groups: Vec<String> = s
        .ports()
        .map(|p| {
            let ids: Vec<String> = p
                .groups
                .iter()
                .map(|g| {
                    let tags = match (g.v6, g.local) {
                        (false, false) => "",
                        (true, false) => " (IPv6)",
                        (false, true) => " (local)",
                        (true, true) => " (IPv6, local)",
                    };
                    format!("group {}{tags}", g.id)
                })
                .collect();
            format!("{} → {}", p.name, ids.join(" and "))
        })
        .collect();
    let zone = if gateway {
        "the gateway zone".to_string()
    } else {
        format!("VPC {}", s.vpc())
    };
    hop(
        "allocation",
        Status::Ok,
        format!("{zone}; {}", groups.join(", ")),
    )
}

fn switch_or_broken<'a>(g: &Gathered<'a>, name: &'static str) -> Result<&'a SwitchView, Hop> {
    g.switch
        .map_err(|e| hop(name, Status::Broken, format!("cannot read the switch: {e}")))
}

/// The match keyword an ArpResponder flow answering `ip` carries.
fn arp_token(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("arp_tpa={a}"),
        IpAddr::V6(a) => format!("nd_target={a}"),
    }
}

fn arp(g: &Gathered<'_>, intent: &Intent, s: &ServiceView) -> Hop {
    if s.scenario() == "EIP service gateway" {
        return hop(
            "arp",
            Status::Ok,
            "a service gateway has no cluster IP (its EIP is answered on the uplink)",
        );
    }
    let cluster_ips = intent
        .services
        .get(s.name())
        .map(|x| x.cluster_ips.clone())
        .unwrap_or_default();
    if cluster_ips.is_empty() {
        return hop("arp", Status::Ok, "no cluster IP to answer for");
    }
    let sw = match switch_or_broken(g, "arp") {
        Ok(sw) => sw,
        Err(h) => return h,
    };
    let mut missing = Vec::new();
    for ip in &cluster_ips {
        let token = arp_token(*ip);
        let answered = sw.flows.iter().any(|f| {
            f.table == ARP_RESPONDER.id && f.has(&token) && !f.has("arp_op=2") && !f.drops()
        });
        if !answered {
            let believed = g.installed.is_some_and(|d| {
                d.flows.keys().any(|k| {
                    k.table == ARP_RESPONDER.id
                        && k.matches.fields().iter().any(|t| t.to_string() == token)
                })
            });
            let why = if believed {
                " (the agent believes it installed it: the switch lost it)"
            } else {
                ""
            };
            missing.push(format!(
                "no flow in ArpResponder (table {}) on the switch answers {ip}{why}",
                ARP_RESPONDER.id
            ));
        }
    }
    if missing.is_empty() {
        let ips: Vec<String> = cluster_ips.iter().map(ToString::to_string).collect();
        hop(
            "arp",
            Status::Ok,
            format!("ArpResponder answers {} on the switch", ips.join(", ")),
        )
    } else {
        let mut h = hop("arp", Status::Broken, missing[0].clone());
        h.details = missing.into_iter().skip(1).collect();
        h
    }
}

fn service_lb(g: &Gathered<'_>, s: &ServiceView) -> Hop {
    let sw = match switch_or_broken(g, "servicelb") {
        Ok(sw) => sw,
        Err(h) => return h,
    };
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for vip in &s.vips() {
        for p in s.ports() {
            let (proto, dst) = match vip {
                IpAddr::V4(a) => (p.protocol.to_string(), format!("nw_dst={a}")),
                IpAddr::V6(a) => (format!("{}6", p.protocol), format!("ipv6_dst={a}")),
            };
            let tp = format!("tp_dst={}", p.port);
            let on_switch = sw.flows.iter().any(|f| {
                f.table == SERVICE_LB.id
                    && f.cookie & Cookie::SELECT_MASK == s.cookie
                    && f.has(&proto)
                    && f.has(&dst)
                    && f.has(&tp)
            });
            let what = format!("{}/{}", addr(*vip, p.port), p.protocol);
            if on_switch {
                found.push(what);
            } else {
                missing.push(what);
            }
        }
    }
    if missing.is_empty() {
        hop(
            "servicelb",
            Status::Ok,
            format!("ServiceLb flows for {} on the switch", found.join(", ")),
        )
    } else {
        hop(
            "servicelb",
            Status::Broken,
            format!(
                "ServiceLb (table {}) on the switch has no flow of the Service (cookie {:#x}) for {}",
                SERVICE_LB.id,
                s.cookie,
                missing.join(", ")
            ),
        )
    }
}

fn backend_name(b: &BackendView) -> String {
    match b.workload {
        Some(w) => format!("backend {} ({w})", b.ip),
        None => format!("backend {}", b.ip),
    }
}

fn groups(g: &Gathered<'_>, s: &ServiceView) -> Hop {
    let sw = match switch_or_broken(g, "groups") {
        Ok(sw) => sw,
        Err(h) => return h,
    };
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    let mut details = Vec::new();
    for p in s.ports() {
        for gv in p.groups {
            if gv.buckets.is_empty() {
                // No backend to give a bucket: no group is installed, and the
                // backends hop says why.
                continue;
            }
            let Some(on_switch) = sw.groups.get(&gv.id) else {
                problems.push(format!(
                    "group {} (port {}) is not on the switch",
                    gv.id, p.name
                ));
                continue;
            };
            let have: BTreeSet<u32> = on_switch.iter().copied().collect();
            let mut bad = false;
            for (bid, bi) in gv.buckets.iter() {
                if !have.contains(&bid) {
                    bad = true;
                    details.push(format!(
                        "{}: bucket {bid} missing on the switch (group {}, port {})",
                        backend_name(&s.backend(bi).expect("a bucket's backend")),
                        gv.id,
                        p.name
                    ));
                }
            }
            for bid in have.iter().filter(|&&b| !gv.buckets.contains(b)) {
                bad = true;
                details.push(format!(
                    "group {}: bucket {bid} on the switch is no backend's",
                    gv.id
                ));
            }
            if bad {
                problems.push(format!(
                    "group {} (port {}) differs from what the agent expects",
                    gv.id, p.name
                ));
            } else {
                ok.push(format!("group {}: {} buckets", gv.id, gv.buckets.len()));
            }
        }
    }
    if problems.is_empty() {
        let reason = if ok.is_empty() {
            "no group to check (no backend has a bucket)".to_string()
        } else {
            format!("{}, as expected", ok.join(", "))
        };
        return hop("groups", Status::Ok, reason);
    }
    // The first missing bucket names the backend: the most useful line.
    let lines: Vec<String> = problems.into_iter().chain(details).collect();
    let first = lines
        .iter()
        .position(|d| d.contains("missing on the switch"))
        .unwrap_or(0);
    let mut h = hop("groups", Status::Broken, lines[first].clone());
    h.details = lines
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != first)
        .map(|(_, l)| l)
        .collect();
    h
}

/// Why a backend takes no new connections, in the operator's terms.
fn backend_reason(g: &Gathered<'_>, intent: &Intent, b: &BackendView) -> String {
    match b.state {
        BackendState::Serving => "serving".into(),
        BackendState::WeightZero => "weight 0: takes no new connections".into(),
        BackendState::NoVpc => format!("its VPC {} has no zone here", b.vpc),
        BackendState::Unhealthy => {
            let detail = g
                .summary
                .probe_details
                .get(&format!("{}/{}", b.vpc, b.ip))
                .filter(|d| !d.is_empty());
            if let (true, Some(d)) = (b.local, detail) {
                format!("unhealthy: this node's probe failed it ({d})")
            } else if b.local {
                "unhealthy: this node's probe failed it".into()
            } else {
                "unhealthy: the controller's verdict (probed by its own node)".into()
            }
        }
        BackendState::NotReady => not_ready(g, intent, b),
    }
}

fn not_ready(g: &Gathered<'_>, intent: &Intent, b: &BackendView) -> String {
    let Some(w) = b.workload.and_then(|w| intent.workloads.get(w)) else {
        return "not ready".into();
    };
    if w.node == g.node {
        if g.summary.ports.contains_key(&w.port) {
            "not ready (its port is on the bridge now; the next reconcile binds it)".into()
        } else {
            format!(
                "not ready: port {} of workload {} is not on the bridge",
                w.port, w.name
            )
        }
    } else if !intent.nodes.contains_key(&w.node) {
        format!(
            "not ready: its node {} has no DpuNode, so no tunnel reaches it",
            w.node
        )
    } else if !g.summary.ports.contains_key(TUNNEL_IFACE_ID) {
        format!(
            "not ready: its node {} is reached through the tunnel port, which is not on the bridge",
            w.node
        )
    } else {
        format!("not ready: its node {} is unreachable", w.node)
    }
}

fn backends(g: &Gathered<'_>, intent: &Intent, s: &ServiceView) -> Hop {
    let mut details = Vec::new();
    let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
    for b in s.backends() {
        let reason = backend_reason(g, intent, &b);
        *by_state.entry(b.state.as_str()).or_default() += 1;
        let w = b.workload.map(|w| format!(" ({w})")).unwrap_or_default();
        details.push(format!(
            "backend {}/{}{w}, weight {}: {reason}",
            b.vpc, b.ip, b.weight
        ));
    }
    let serving = by_state.get("serving").copied().unwrap_or(0);
    let total = s.backends().len();
    let (status, reason) = if total == 0 {
        (Status::Broken, "the Service has no backend".to_string())
    } else if serving == 0 {
        let first = s
            .backends()
            .map(|b| format!("{}: {}", backend_name(&b), backend_reason(g, intent, &b)))
            .next()
            .unwrap_or_default();
        let why = if total == 1 {
            first
        } else {
            format!("{first}; and {} more", total - 1)
        };
        (Status::Broken, format!("no backend serves ({why})"))
    } else if serving < total {
        let counts: Vec<String> = by_state
            .iter()
            .filter(|(k, _)| **k != "serving")
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        (
            Status::Warn,
            format!("{serving} of {total} serving; {}", counts.join(", ")),
        )
    } else {
        (Status::Ok, format!("{serving} of {total} serving"))
    };
    let mut h = hop("backends", status, reason);
    h.details = details;
    h
}

#[cfg(test)]
#[path = "hops_tests.rs"]
mod tests;
