//! `show intent`: the applied intent, one object a line (a Service a few),
//! kinds in the order they depend on each other.

use std::fmt::Write as _;
use std::net::IpAddr;

use dpu_model::{AccessScenario, Intent, ProbeType, Service, WorkloadKind};

use super::text::columns;

/// The intent applied at `version`; `node` is this DPU (marked in the lists).
pub fn render(version: u64, intent: &Intent, node: &str) -> String {
    let mut out = format!("intent version {version}\n");
    section(&mut out, "VPCs", intent.vpcs.len());
    if !intent.vpcs.is_empty() {
        let rows: Vec<Vec<String>> = intent
            .vpcs
            .values()
            .map(|v| vec![v.name.clone(), v.vni.to_string()])
            .collect();
        out.push_str(&columns(2, &["NAME", "VNI"], &rows));
    }
    section(&mut out, "Subnets", intent.subnets.len());
    if !intent.subnets.is_empty() {
        let rows: Vec<Vec<String>> = intent
            .subnets
            .values()
            .map(|s| {
                let blocks: Vec<String> = s
                    .node_blocks
                    .iter()
                    .map(|b| format!("{} {}", b.node, b.cidr))
                    .collect();
                vec![
                    s.name.clone(),
                    s.vpc.clone(),
                    s.cidr.to_string(),
                    s.gateway.to_string(),
                    or_dash(blocks.join(", ")),
                ]
            })
            .collect();
        out.push_str(&columns(
            2,
            &["NAME", "VPC", "CIDR", "GATEWAY", "NODE BLOCKS"],
            &rows,
        ));
    }
    section(&mut out, "Workloads", intent.workloads.len());
    if !intent.workloads.is_empty() {
        let rows: Vec<Vec<String>> = intent
            .workloads
            .values()
            .map(|w| {
                let mut ips = w.ip.to_string();
                if let Some(v6) = w.ipv6 {
                    let _ = write!(ips, ", {v6}");
                }
                vec![
                    w.name.clone(),
                    workload_kind(w.kind).into(),
                    w.vpc.clone(),
                    ips,
                    w.mac.map_or("-".into(), |m| m.to_string()),
                    here(&w.node, node),
                    w.port.clone(),
                ]
            })
            .collect();
        out.push_str(&columns(
            2,
            &[
                "NAME",
                "KIND",
                "VPC",
                "IP",
                "MAC",
                "NODE",
                "PORT (iface-id)",
            ],
            &rows,
        ));
    }
    section(&mut out, "Services", intent.services.len());
    for s in intent.services.values() {
        service(&mut out, s);
    }
    section(&mut out, "NetworkProbes", intent.probes.len());
    for p in intent.probes.values() {
        let what = match p.probe_type {
            ProbeType::Tcp => format!("tcp :{}", p.port),
            ProbeType::Http => format!(
                "http :{}{} (healthy: {}-{})",
                p.port,
                p.http_path,
                p.http_statuses.start(),
                p.http_statuses.end()
            ),
        };
        let _ = writeln!(
            out,
            "  {}  Service {}  {what}  every {} ms, timeout {} ms, healthy after {}, unhealthy after {}",
            p.name, p.service, p.period_ms, p.timeout_ms, p.success_threshold, p.failure_threshold
        );
    }
    section(&mut out, "Nodes", intent.nodes.len());
    if !intent.nodes.is_empty() {
        let rows: Vec<Vec<String>> = intent
            .nodes
            .values()
            .map(|n| {
                vec![
                    here(&n.name, node),
                    n.tunnel_ip.to_string(),
                    n.host.map_or("-".into(), |(ip, mac)| format!("{ip} {mac}")),
                ]
            })
            .collect();
        out.push_str(&columns(2, &["NAME", "TUNNEL IP", "HOST (PF)"], &rows));
    }
    out
}

fn section(out: &mut String, kind: &str, n: usize) {
    let _ = writeln!(out, "\n{kind} ({n})");
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn here(name: &str, node: &str) -> String {
    if name == node {
        format!("{name} (this node)")
    } else {
        name.to_string()
    }
}

fn workload_kind(k: WorkloadKind) -> &'static str {
    match k {
        WorkloadKind::Pod => "pod",
        WorkloadKind::Vm => "vm",
        WorkloadKind::BareMetal => "bare-metal",
        WorkloadKind::VnicIp => "vnic-ip",
    }
}

pub fn scenario(s: AccessScenario) -> &'static str {
    match s {
        AccessScenario::ClusterIp => "ClusterIP",
        AccessScenario::NodeClusterIp => "NodeClusterIP",
        AccessScenario::EipLoadBalancer => "EIP LoadBalancer",
        AccessScenario::EipServiceGateway => "EIP service gateway",
    }
}

fn ips(v: &[IpAddr]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn service(out: &mut String, s: &Service) {
    let _ = writeln!(
        out,
        "  {}  VPC {}  {}  VIPs {}",
        s.name,
        s.vpc,
        scenario(s.scenario),
        or_dash(ips(&s.cluster_ips))
    );
    if let Some(eip) = s.eip {
        let owner = s
            .eip_node
            .as_deref()
            .map_or(String::new(), |n| format!(" (owned by node {n})"));
        let _ = writeln!(out, "    EIP {eip}{owner}");
    }
    let mut extra = Vec::new();
    if let Some(t) = s.affinity_timeout {
        extra.push(format!("session affinity ClientIP {t} s"));
    }
    if s.external_traffic_local {
        extra.push("externalTrafficPolicy Local".into());
    }
    if !extra.is_empty() {
        let _ = writeln!(out, "    {}", extra.join(", "));
    }
    let ports: Vec<String> = s
        .ports
        .iter()
        .map(|p| {
            format!(
                "{} {}/{} -> {}",
                p.name,
                p.protocol.as_str(),
                p.port,
                p.target_port
            )
        })
        .collect();
    let _ = writeln!(out, "    ports: {}", or_dash(ports.join(", ")));
    if s.backends.is_empty() {
        let _ = writeln!(out, "    backends: none");
        return;
    }
    let _ = writeln!(out, "    backends:");
    let rows: Vec<Vec<String>> = s
        .backends
        .iter()
        .map(|b| {
            vec![
                b.vpc.clone(),
                b.ip.to_string(),
                b.workload.clone().unwrap_or_else(|| "-".into()),
                b.weight.to_string(),
            ]
        })
        .collect();
    out.push_str(&columns(6, &["VPC", "IP", "WORKLOAD", "WEIGHT"], &rows));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::ops::show::fixtures::sample_intent as sample;

    #[test]
    fn renders_every_kind_in_order() {
        let got = render(7, &sample(), "dpu-1");
        let want = "\
intent version 7

VPCs (1)
  NAME  VNI
  blue  100

Subnets (1)
  NAME    VPC   CIDR         GATEWAY   NODE BLOCKS
  blue-a  blue  10.0.0.0/24  10.0.0.1  dpu-1 10.0.0.0/26

Workloads (1)
  NAME   KIND  VPC   IP        MAC                NODE               PORT (iface-id)
  web-1  pod   blue  10.0.0.5  02:00:00:00:00:05  dpu-1 (this node)  web-1-eth0

Services (1)
  web  VPC blue  ClusterIP  VIPs 10.96.0.10
    session affinity ClientIP 10800 s
    ports: http tcp/80 -> 8080
    backends:
      VPC   IP        WORKLOAD  WEIGHT
      blue  10.0.0.5  web-1     2

NetworkProbes (1)
  web-http  Service web  http :8080/healthz (healthy: 200-399)  every 1000 ms, timeout 500 ms, healthy after 1, unhealthy after 3

Nodes (1)
  NAME               TUNNEL IP    HOST (PF)
  dpu-1 (this node)  192.168.1.1  -
";
        assert_eq!(got, want, "\n{got}");
    }

    #[test]
    fn empty_kinds_show_a_zero_count() {
        let got = render(1, &Intent::default(), "dpu-1");
        assert!(got.contains("\nServices (0)\n"), "{got}");
        assert!(got.contains("\nNodes (0)\n"), "{got}");
    }
}
