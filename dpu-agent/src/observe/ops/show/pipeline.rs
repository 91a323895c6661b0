//! `show pipeline`: what the reconciler installed, table by table in pipeline
//! order, each flow with the owner its cookie names; then the select groups,
//! each bucket with the backend it stands for.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use dpu_model::{AccessScenario, Intent};

use crate::compile::endpoint_key;
use crate::compile::flows::{FlowBody, FlowKey, Group};
use crate::compile::pipeline::cookie::{Category, Cookie};
use crate::compile::pipeline::{table_by_id, Miss, Table, TABLES};
use crate::observe::lb_index::{GroupView, ServiceView};
use crate::observe::{Installed, LbIndex};

use super::text;
use crate::observe::ops::OpsError;

/// Cookie (category and object, round 0) → the owning object's name. The
/// object part is a hash, so names come from hashing the keys the compiler
/// uses for each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners(BTreeMap<u64, String>);

impl Owners {
    pub fn new(intent: Option<&Intent>, lb: &LbIndex, node: &str) -> Owners {
        let mut m = BTreeMap::new();
        let mut put = |cat: Category, key: &str, name: &str| {
            m.insert(Cookie::new(cat, key).value(0), name.to_string());
        };
        // Shared by everything of the kind: the category says it all.
        put(Category::Pipeline, "pipeline", "");
        put(Category::Gateway, "gateway", "");
        put(Category::Node, node, node);
        put(Category::Uplink, node, node);
        if let Some(i) = intent {
            for v in i.vpcs.keys() {
                put(Category::Vpc, v, v);
                put(Category::Probe, v, v);
                put(Category::Gateway, v, v);
            }
            for s in i.subnets.keys() {
                put(Category::Subnet, s, s);
            }
            for w in i.workloads.keys() {
                put(Category::Workload, w, w);
            }
            for n in i.nodes.keys() {
                put(Category::Node, n, n);
            }
            // Keyed as the compiler keys them (`endpoint_key`).
            for s in i.services.values() {
                let gateway = s.scenario == AccessScenario::EipServiceGateway;
                for p in &s.ports {
                    for b in &s.backends {
                        let proto = p.protocol.as_str();
                        let (ip, port) = (b.ip, p.target_port);
                        // Named by the backend's VPC, in both cases.
                        let name = endpoint_key(false, &b.vpc, &b.vpc, proto, ip, port);
                        let key = endpoint_key(gateway, &s.vpc, &b.vpc, proto, ip, port);
                        put(Category::Endpoint, &key, &name);
                    }
                }
            }
        }
        for (&c, name) in &lb.cookies {
            m.insert(c, name.to_string());
        }
        // Learned entries carry a cookie per Service, VIP, port and backend.
        for view in lb.services.values() {
            for (c, _) in view.affinity_cookies() {
                m.insert(c, view.name().to_string());
            }
        }
        Owners(m)
    }

    /// `Service web`, `Endpoint blue/tcp/10.0.0.5:8080`, or `Vpc #3a0f…` when
    /// the name is not known.
    pub fn label(&self, c: Cookie) -> String {
        match self.0.get(&c.value(0)) {
            Some(name) if name.is_empty() => format!("{:?}", c.category()),
            Some(name) => format!("{:?} {name}", c.category()),
            None => format!("{:?} #{:010x}", c.category(), c.object()),
        }
    }
}

/// Which flows and groups a `--service` filter keeps.
struct Filter<'a> {
    view: &'a ServiceView,
    /// The cookies of its backends' EndpointDnat flows: those are owned by
    /// the endpoint (Services of a VPC may share one), so they are found by
    /// the owner key, which names the VPC too.
    endpoints: Vec<u64>,
}

impl Filter<'_> {
    fn keeps_flow(&self, body: &FlowBody) -> bool {
        match body.cookie.category() {
            Category::Endpoint => self.endpoints.contains(&body.cookie.value(0)),
            Category::AffinityLearned => self
                .view
                .affinity_cookies()
                .iter()
                .any(|(c, _)| *c == body.cookie.value(0)),
            _ => body.cookie.value(0) == self.view.cookie,
        }
    }

    fn keeps_group(&self, g: &Group, lb: &LbIndex) -> bool {
        g.owner.value(0) == self.view.cookie
            || lb
                .groups
                .get(&g.id)
                .is_some_and(|(s, _)| **s == *self.view.name())
    }
}

/// `1 flow`, `2 flows`.
pub fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn miss(t: &Table) -> String {
    match t.miss {
        Miss::Drop => "drop".into(),
        Miss::Return => "return to the caller".into(),
        Miss::Goto(id) => match table_by_id(id) {
            Some(n) => format!("goto table {id} {}", n.name),
            None => format!("goto table {id}"),
        },
    }
}

/// The installed flows and groups, or only `service`'s.
pub fn render(
    installed: &Installed,
    lb: &LbIndex,
    owners: &Owners,
    service: Option<&str>,
) -> Result<String, OpsError> {
    let filter = match service {
        None => None,
        Some(name) => {
            let Some(view) = lb.services.get(name) else {
                let names: Vec<&str> = lb.services.keys().map(|k| &**k).collect();
                return Err(OpsError(text::unknown("Service", name, &names)));
            };
            let endpoints = view.endpoint_cookies();
            Some(Filter { view, endpoints })
        }
    };
    let state = &installed.state;
    let flows: Vec<(&FlowKey, &FlowBody)> = state
        .flows
        .iter()
        .filter(|(_, b)| filter.as_ref().is_none_or(|f| f.keeps_flow(b)))
        .collect();
    let groups: Vec<&Group> = state
        .groups
        .values()
        .map(|g| &**g)
        .filter(|g| filter.as_ref().is_none_or(|f| f.keeps_group(g, lb)))
        .collect();

    let mut out = match &filter {
        None => format!(
            "installed version {}, round {}: {}, {}\n",
            installed.version,
            installed.round,
            count(flows.len(), "flow"),
            count(groups.len(), "group")
        ),
        Some(f) => format!(
            "Service {}: {}, {} (of {}, {} installed at version {}, round {})\n",
            f.view.name(),
            count(flows.len(), "flow"),
            count(groups.len(), "group"),
            count(state.flows.len(), "flow"),
            count(state.groups.len(), "group"),
            installed.version,
            installed.round
        ),
    };
    if lb.version != installed.version {
        let _ = writeln!(
            out,
            "(owners and buckets are named from intent version {}; the switch has version {})",
            lb.version, installed.version
        );
    }
    let mut by_table: BTreeMap<u8, Vec<(&FlowKey, &FlowBody)>> = BTreeMap::new();
    for (k, b) in flows {
        by_table.entry(k.table).or_default().push((k, b));
    }
    for list in by_table.values_mut() {
        // Highest priority first: the order the switch tries them; then by
        // the match as written.
        list.sort_by_cached_key(|(k, _)| (std::cmp::Reverse(k.priority), k.matches.to_string()));
    }
    for t in TABLES {
        let list = by_table.remove(&t.id).unwrap_or_default();
        if list.is_empty() && filter.is_some() {
            continue;
        }
        let _ = writeln!(
            out,
            "\ntable {} {} ({}; miss: {})",
            t.id,
            t.name,
            t.stage,
            miss(&t)
        );
        if list.is_empty() {
            out.push_str("  no flows\n");
        }
        for (k, b) in list {
            flow_line(&mut out, k, b, installed.round, owners);
        }
    }
    // Flows in a table the registry does not know: an older agent's, or a bug.
    for (id, list) in by_table {
        let _ = writeln!(out, "\ntable {id} (not in the pipeline registry)");
        for (k, b) in list {
            flow_line(&mut out, k, b, installed.round, owners);
        }
    }
    if !groups.is_empty() {
        out.push_str("\ngroups\n");
    }
    for g in groups {
        group_lines(&mut out, g, lb, owners);
    }
    Ok(out)
}

fn flow_line(out: &mut String, k: &FlowKey, b: &FlowBody, round: u16, owners: &Owners) {
    let m = if k.matches.is_empty() {
        "*".to_string()
    } else {
        k.matches.to_string()
    };
    let _ = writeln!(
        out,
        "  priority={} {m} actions={}  [{}, round {round}]",
        k.priority,
        b.actions,
        owners.label(b.cookie)
    );
}

fn group_lines(out: &mut String, g: &Group, lb: &LbIndex, owners: &Owners) {
    let known = lb.groups.get(&g.id).and_then(|(s, pi)| {
        let view = lb.services.get(s)?;
        let port = view.port(*pi)?;
        let gv = port.groups.iter().find(|v| v.id == g.id)?;
        Some((view, port, gv))
    });
    let buckets = count(g.buckets.len(), "bucket");
    let Some((view, port, gv)) = known else {
        let _ = writeln!(
            out,
            "  group {}: {}, {buckets}",
            g.id,
            owners.label(g.owner)
        );
        for b in &g.buckets {
            let _ = writeln!(out, "    bucket {}: actions={}", b.id, b.actions);
        }
        return;
    };
    let _ = writeln!(
        out,
        "  group {}: Service {} port {} {}/{} {}{}, {buckets}",
        g.id,
        view.name(),
        port.name,
        port.protocol,
        port.port,
        if gv.v6 { "IPv6" } else { "IPv4" },
        if gv.local {
            " (local backends only)"
        } else {
            ""
        },
    );
    if gv.mismatch {
        out.push_str("    (its bucket ids differ from the applied intent's; showing actions)\n");
    }
    for b in &g.buckets {
        match backend_of(gv, b.id, view) {
            Some(who) if !gv.mismatch => {
                let _ = writeln!(out, "    bucket {} -> {who}", b.id);
            }
            _ => {
                let _ = writeln!(out, "    bucket {}: actions={}", b.id, b.actions);
            }
        }
    }
}

fn backend_of(gv: &GroupView, bucket: u32, view: &ServiceView) -> Option<String> {
    let b = view.backend(gv.buckets.get(bucket)?)?;
    Some(match b.workload {
        Some(w) => format!("{}/{} (workload {w})", b.vpc, b.ip),
        None => format!("{}/{}", b.vpc, b.ip),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::ops::show::fixtures;

    fn owners() -> Owners {
        Owners::new(Some(&fixtures::sample_intent()), &fixtures::lb(), "dpu-1")
    }

    #[test]
    fn every_table_in_order_with_owners_then_groups() {
        let got = render(&fixtures::installed(), &fixtures::lb(), &owners(), None).unwrap();
        let want = "\
installed version 7, round 3: 8 flows, 2 groups

table 0 Classify (classify; miss: drop)
  priority=100 in_port=3 actions=set_field:0x1->reg0,goto_table:10  [Workload web-1, round 3]
  priority=0 * actions=drop  [Pipeline, round 3]

table 10 SpoofGuard (spoof guard; miss: drop)
  no flows

table 20 ArpResponder (ARP responder; miss: drop)
  no flows

table 21 NdAdvertise (ARP responder; miss: drop)
  no flows

table 30 Conntrack (conntrack; miss: drop)
  no flows

table 40 ServiceLb (service LB; miss: drop)
  priority=100 reg0=0x1,tcp,nw_dst=10.96.0.10,tp_dst=80 actions=group:5  [Service web, round 3]
  priority=100 reg0=0x1,tcp,nw_dst=10.96.0.20,tp_dst=5432 actions=drop  [Service db, round 3]

table 41 SessionAffinity (service LB; miss: return to the caller)
  no flows

table 42 ServiceSelect (service LB; miss: return to the caller)
  no flows

table 43 AffinityLearn (service LB; miss: return to the caller)
  no flows

table 45 EndpointDnat (service LB; miss: drop)
  priority=100 reg0=0x1,reg3=0xa000005,tcp,reg4=0x1f90 actions=ct(commit,table=50,zone=NXM_NX_REG0[0..15],nat(dst=10.0.0.5:8080))  [Endpoint blue/tcp/10.0.0.5:8080, round 3]
  priority=100 reg0=0x2,reg3=0xa000005,tcp,reg4=0x1f90 actions=ct(commit,table=50,zone=NXM_NX_REG0[0..15],nat(dst=10.0.0.5:8080))  [Endpoint #a3a94bfea5, round 3]

table 46 GatewaySnat (service gateway; miss: drop)
  no flows

table 48 ReturnPath (return path; miss: goto table 50 L3Forward)
  no flows

table 50 L3Forward (L3 forward; miss: drop)
  priority=200 reg0=0x1,ip,nw_dst=10.0.0.0/24 actions=goto_table:48  [Vpc blue, round 3]

table 77 (not in the pipeline registry)
  priority=1 * actions=drop  [Node #dab9fb4896, round 3]

groups
  group 5: Service web port http tcp/80 IPv4, 3 buckets
    bucket 11 -> blue/10.0.0.5 (workload web-1)
    bucket 12 -> blue/10.0.0.5 (workload web-1)
    bucket 21 -> blue/10.0.0.6 (workload web-2)
  group 9: Service #720ea0b8ce, 1 bucket
    bucket 0: actions=drop
";
        assert_eq!(got, want, "\n{got}");
    }

    #[test]
    fn a_service_filter_keeps_its_flows_groups_and_endpoints() {
        // Not green's EndpointDnat flow for the same address and port.
        let got = render(
            &fixtures::installed(),
            &fixtures::lb(),
            &owners(),
            Some("web"),
        )
        .unwrap();
        let want = "\
Service web: 2 flows, 1 group (of 8 flows, 2 groups installed at version 7, round 3)

table 40 ServiceLb (service LB; miss: drop)
  priority=100 reg0=0x1,tcp,nw_dst=10.96.0.10,tp_dst=80 actions=group:5  [Service web, round 3]

table 45 EndpointDnat (service LB; miss: drop)
  priority=100 reg0=0x1,reg3=0xa000005,tcp,reg4=0x1f90 actions=ct(commit,table=50,zone=NXM_NX_REG0[0..15],nat(dst=10.0.0.5:8080))  [Endpoint blue/tcp/10.0.0.5:8080, round 3]

groups
  group 5: Service web port http tcp/80 IPv4, 3 buckets
    bucket 11 -> blue/10.0.0.5 (workload web-1)
    bucket 12 -> blue/10.0.0.5 (workload web-1)
    bucket 21 -> blue/10.0.0.6 (workload web-2)
";
        assert_eq!(got, want, "\n{got}");
    }

    #[test]
    fn a_group_whose_buckets_differ_shows_actions() {
        let mut lb = fixtures::lb();
        lb.services.get_mut("web").unwrap().groups[0].mismatch = true;
        let got = render(&fixtures::installed(), &lb, &owners(), Some("web")).unwrap();
        assert!(
            got.contains("(its bucket ids differ from the applied intent's; showing actions)\n    bucket 11: actions=set_field:0xa000005->reg3"),
            "{got}"
        );
        lb.version = 8;
        let got = render(&fixtures::installed(), &lb, &owners(), None).unwrap();
        assert!(
            got.starts_with("installed version 7, round 3: 8 flows, 2 groups\n(owners and buckets are named from intent version 8; the switch has version 7)\n"),
            "{got}"
        );
    }

    #[test]
    fn an_unknown_service_is_named_with_close_names() {
        let e = render(
            &fixtures::installed(),
            &fixtures::lb(),
            &owners(),
            Some("wbe"),
        )
        .unwrap_err();
        assert_eq!(
            e.0,
            "no Service named \"wbe\" in the applied intent; close names: web"
        );
    }

    #[test]
    fn owners_name_learned_flows_and_fall_back_to_the_hash() {
        let o = owners();
        let web = fixtures::service_cookie("web");
        assert_eq!(o.label(web), "Service web");
        // An entry learned for web's backend, as the compiler keys it.
        let learned = crate::compile::affinity_cookie(
            "web",
            "10.96.0.10".parse().unwrap(),
            "tcp",
            80,
            "blue",
            "10.0.0.5".parse().unwrap(),
            8080,
        );
        assert_eq!(o.label(learned), "AffinityLearned web");
        assert_eq!(o.label(Cookie::new(Category::Vpc, "blue")), "Vpc blue");
        let c = Cookie::new(Category::Endpoint, "blue/tcp/10.0.0.5:8080");
        assert_eq!(o.label(c), "Endpoint blue/tcp/10.0.0.5:8080");
        let c = Cookie::new(Category::Endpoint, "blue/tcp/10.0.0.99:8080");
        assert_eq!(o.label(c), format!("Endpoint #{:010x}", c.object()));
    }
}
