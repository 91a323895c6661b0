//! `trace`'s words for what `ofproto/trace` printed: table names, the
//! owner of each flow by its cookie, the backend a group's chosen bucket
//! stands for, and the verdict. Pure: the parsed trace and the agent's views
//! in, text out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use dpu_model::Intent;

use super::parse::{Step, Trace};
use super::DEFAULT_SRC_PORT;
use crate::compile::endpoint_key;
use crate::compile::pipeline::cookie::{self, Category};
use crate::compile::pipeline::table_by_id;
use crate::observe::lb_index::LbIndex;
use crate::observe::ops::TraceRequest;

/// What the trace's numbers are called: Services and backends (LbIndex),
/// other owners of cookies (intent), ports (iface-ids).
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    pub lb: &'a LbIndex,
    pub intent: &'a Intent,
    pub ports: &'a BTreeMap<String, u32>,
}

impl Names<'_> {
    fn port(&self, ofport: u32) -> String {
        self.ports
            .iter()
            .find(|(_, &p)| p == ofport)
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| format!("ofport {ofport}"))
    }

    /// Who installed the flow with this cookie.
    pub fn owner(&self, c: u64) -> String {
        if let Some(s) = self.lb.service_of_cookie(c) {
            return format!("Service {s}");
        }
        let object = c & cookie::OBJECT_MASK;
        let category = (c & cookie::CATEGORY_MASK) >> cookie::CATEGORY_SHIFT;
        let is = |cat: Category| category == cat as u64;
        let named = |kind: &str, mut keys: Box<dyn Iterator<Item = &str> + '_>| {
            keys.find(|k| cookie::object_hash(k) == object)
                .map(|k| format!("{kind} {k}"))
        };
        let i = self.intent;
        let found = if is(Category::Pipeline) {
            Some("Pipeline (table miss)".to_string())
        } else if is(Category::Vpc) {
            named("Vpc", Box::new(i.vpcs.keys().map(String::as_str)))
        } else if is(Category::Subnet) {
            named("Subnet", Box::new(i.subnets.keys().map(String::as_str)))
        } else if is(Category::Workload) {
            named("Workload", Box::new(i.workloads.keys().map(String::as_str)))
        } else if is(Category::Node) {
            named("Node", Box::new(i.nodes.keys().map(String::as_str)))
        } else if is(Category::Probe) {
            named(
                "Probe link of VPC",
                Box::new(i.vpcs.keys().map(String::as_str)),
            )
        } else if is(Category::Endpoint) {
            self.endpoint(object)
        } else if is(Category::AffinityLearned) {
            let c = c & cookie::Cookie::SELECT_MASK;
            self.lb.services.values().find_map(|s| {
                s.affinity_cookies()
                    .into_iter()
                    .find(|(learned, _)| *learned == c)
                    .map(|(_, b)| {
                        format!(
                            "affinity entry of Service {} (backend {})",
                            s.name(),
                            s.backend(b).expect("an affinity cookie's backend").ip
                        )
                    })
            })
        } else if is(Category::Gateway) {
            Some("Gateway".to_string())
        } else if is(Category::Uplink) {
            Some("Uplink".to_string())
        } else {
            None
        };
        found.unwrap_or_else(|| format!("{c:#x}"))
    }

    /// An EndpointDnat flow's owner, keyed as the compiler keys it
    /// (`<vpc>/<proto>/<ip>:<port>`, or `gateway/...` behind a gateway).
    fn endpoint(&self, object: u64) -> Option<String> {
        for s in self.lb.services.values() {
            for p in s.ports() {
                for b in s.backends() {
                    let (ip, port) = (b.ip, p.target_port);
                    let key = |gw| endpoint_key(gw, s.vpc(), b.vpc, p.protocol, ip, port);
                    if [false, true]
                        .into_iter()
                        .any(|gw| cookie::object_hash(&key(gw)) == object)
                    {
                        return Some(format!("Endpoint {}", endpoint_addr(b.ip, p.target_port)));
                    }
                }
            }
        }
        Some("Endpoint".to_string())
    }

    /// `Service web port http → bucket 17 = backend vpc-a/10.0.1.13
    /// (workload web-3)`, and the backend's address and target port.
    fn group(&self, id: u32, bucket: Option<u32>) -> (String, Option<(String, String)>) {
        let Some((svc, pi)) = self.lb.groups.get(&id) else {
            let b = bucket.map(|b| format!(" → bucket {b}")).unwrap_or_default();
            return (format!("a group the agent does not know{b}"), None);
        };
        let s = &self.lb.services[svc];
        let p = s.port(*pi).expect("a group's port");
        let head = format!("Service {svc} port {}", p.name);
        let Some(bucket) = bucket else {
            return (format!("{head} → no bucket chosen"), None);
        };
        let backend = p
            .groups
            .iter()
            .find(|g| g.id == id)
            .and_then(|g| g.buckets.get(bucket))
            .map(|bi| s.backend(bi).expect("a bucket's backend"));
        match backend {
            Some(b) => {
                let w = b
                    .workload
                    .map(|w| format!(" (workload {w})"))
                    .unwrap_or_default();
                (
                    format!("{head} → bucket {bucket} = backend {}/{}{w}", b.vpc, b.ip),
                    Some((svc.to_string(), endpoint_addr(b.ip, p.target_port))),
                )
            }
            None => (
                format!("{head} → bucket {bucket}, which no backend of the agent's view has"),
                Some((svc.to_string(), format!("bucket {bucket}"))),
            ),
        }
    }
}

fn endpoint_addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn table_name(id: u8) -> String {
    table_by_id(id)
        .map(|t| t.name.to_string())
        .unwrap_or_else(|| "(not a pipeline table)".into())
}

pub(super) fn describe(req: &TraceRequest, ofport: u32, names: &Names<'_>) -> String {
    let port = |p: Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
    let sport = if req.dst_port.is_some() {
        Some(req.src_port.unwrap_or(DEFAULT_SRC_PORT))
    } else {
        None
    };
    format!(
        "{} {}{} → {}{}, in on {} (ofport {ofport})",
        req.proto,
        req.src,
        port(sport),
        req.dst,
        port(req.dst_port),
        names.port(ofport)
    )
}

/// The trace in the pipeline's words, ending with the verdict.
pub fn render(trace: &Trace, names: &Names<'_>) -> String {
    let mut out = String::new();
    let mut chosen: Option<(String, String)> = None;
    for pass in &trace.passes {
        if let Some(r) = &pass.resume {
            let how = r.split_once(" - ").map(|(_, h)| h).unwrap_or(r);
            writeln!(out, "recirculation: {how}").ok();
        }
        for step in &pass.steps {
            match step {
                Step::Flow(h) => {
                    let m = if h.matches.is_empty() {
                        "*"
                    } else {
                        &h.matches
                    };
                    writeln!(
                        out,
                        "{:>2} {}: {m}, priority {}, cookie {}",
                        h.table,
                        table_name(h.table),
                        h.priority,
                        names.owner(h.cookie)
                    )
                    .ok();
                }
                Step::Miss { table } => {
                    writeln!(out, "{table:>2} {}: no flow matched", table_name(*table)).ok();
                }
                Step::Group { id, bucket } => {
                    let (text, pick) = names.group(*id, *bucket);
                    writeln!(out, "   group {id} = {text}").ok();
                    if pick.is_some() {
                        chosen = pick;
                    }
                }
                Step::Note(n) => {
                    writeln!(out, "   !! {n}").ok();
                }
            }
        }
        writeln!(out, "   datapath: {}", pass.datapath_actions).ok();
    }
    writeln!(out, "final datapath actions: {}", trace.final_actions()).ok();
    writeln!(out, "verdict: {}", verdict(trace, names, chosen)).ok();
    out
}

fn verdict(trace: &Trace, names: &Names<'_>, chosen: Option<(String, String)>) -> String {
    let fate = fate(trace, names);
    match chosen {
        Some((svc, backend)) => format!("Service {svc} → backend {backend}, {fate}"),
        None => fate,
    }
}

const IN_PORT: &str = "in_port";

/// What finally happened: the port it left by, or the table that dropped it.
fn fate(trace: &Trace, names: &Names<'_>) -> String {
    let Some(last) = trace.passes.last() else {
        return "no trace".into();
    };
    let mut out_port: Option<String> = None;
    let mut last_table: Option<(u8, bool)> = None;
    let mut note: Option<&str> = None;
    for step in &last.steps {
        match step {
            Step::Note(n) => note = Some(n),
            Step::Flow(h) => {
                last_table = Some((h.table, h.actions.iter().any(|a| a == "drop")));
                for a in &h.actions {
                    if let Some(p) = a.strip_prefix("output:") {
                        out_port = Some(match p.parse::<u32>() {
                            Ok(n) => names.port(n),
                            Err(_) => p.to_string(),
                        });
                    } else if a == "in_port" || a == "IN_PORT" {
                        out_port = Some(IN_PORT.into());
                    }
                }
            }
            Step::Miss { table } => last_table = Some((*table, true)),
            _ => {}
        }
    }
    let dropped = trace.final_actions() == "drop" || trace.final_actions().is_empty();
    match (dropped, out_port, last_table) {
        (false, Some(p), _) if p == IN_PORT => {
            "answered: sent back out of the port it came in on".into()
        }
        (false, Some(p), _) => format!("delivered to port {p}"),
        (_, _, Some((t, _))) if dropped => {
            // OVS says why an output was not taken (a hairpin to the input
            // port, a port that does not exist).
            let why = note.map(|n| format!(" ({n})")).unwrap_or_default();
            format!("dropped in {}{why}", table_name(t))
        }
        (_, _, _) if dropped => "dropped".into(),
        _ => format!("datapath actions {}", trace.final_actions()),
    }
}
