//! `dpu-agent trace`: sends a made-up packet through the bridge with
//! `ovs-appctl ofproto/trace` and tells its way in the pipeline's own words:
//! table names, the Service or object that owns each flow (by cookie), which
//! backend a Service's group picked, and a one-line verdict. The switch
//! computes the path (not the agent's belief), conntrack recirculations are
//! followed as a new connection (`--ct-next trk,new`), and the packet is never
//! really sent.

pub mod parse;
mod render;

#[cfg(test)]
pub(crate) mod fixture;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use dpu_model::Intent;

pub use self::render::{render, Names};
use super::{Ctx, OpsError, TraceRequest};
use crate::compile::pipeline::ROUTER_MAC;

/// The source port when the request names none.
pub const DEFAULT_SRC_PORT: u16 = 40000;
/// `ofproto/trace` runs the pipeline in `ovs-vswitchd`; it answers in
/// milliseconds unless the daemon is stuck.
const TRACE_TIMEOUT: Duration = Duration::from_secs(10);
/// Recirculations the trace resumes as a new connection: Conntrack,
/// EndpointDnat's commit and, behind the service gateway, GatewaySnat's two
/// `ct()`. Unused ones are ignored by OVS.
const CT_NEXT: usize = 4;

pub async fn run(ctx: &Ctx, req: &TraceRequest) -> Result<String, OpsError> {
    let summary = ctx.agent.summary().await?;
    let intent = ctx.agent.intent().await?;
    let lb = ctx.agent.lb().await?;
    let intent = intent.map(|(_, i)| i).unwrap_or_default();
    let (ofport, dl_src) = entry(req, &ctx.node, &intent, &summary.ports)?;
    let flow = bridge_flow(req, ofport, dl_src.as_deref())?;
    let args = appctl_args(&ctx.bridge, &flow);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let raw =
        crate::observe::datapath::appctl(&ctx.appctl_path, &ctx.run_dir, &args, TRACE_TIMEOUT)
            .await
            .map_err(|e| OpsError(format!("ofproto/trace {flow}: {e}")))?;
    let trace = parse::parse(&raw).map_err(|e| OpsError(e.to_string()))?;
    let names = Names {
        lb: &lb,
        intent: &intent,
        ports: &summary.ports,
    };
    let mut out = format!("packet: {}\n", render::describe(req, ofport, &names));
    out += &render(&trace, &names);
    if req.raw {
        out += "\n--- ovs-appctl ";
        out += &args.join(" ");
        out += "\n";
        out += &raw;
    }
    Ok(out)
}

/// The `ovs-appctl` arguments that trace `flow` on `bridge`.
pub fn appctl_args(bridge: &str, flow: &str) -> Vec<String> {
    let mut args = vec!["ofproto/trace".to_string()];
    for _ in 0..CT_NEXT {
        args.push("--ct-next".into());
        args.push("trk,new".into());
    }
    args.push(bridge.into());
    args.push(flow.into());
    args
}

/// Where the packet enters: the OpenFlow port and, when known, the MAC the
/// spoof guard expects from it.
pub fn entry(
    req: &TraceRequest,
    node: &str,
    intent: &Intent,
    ports: &BTreeMap<String, u32>,
) -> Result<(u32, Option<String>), OpsError> {
    let owns_src = |w: &&dpu_model::Workload| {
        IpAddr::V4(w.ip) == req.src || w.ipv6.map(IpAddr::V6) == Some(req.src)
    };
    if let Some(port) = &req.in_port {
        let ofport = *ports.get(port).ok_or_else(|| {
            let known: Vec<&str> = ports.keys().map(String::as_str).collect();
            OpsError(format!(
                "unknown port {port:?}; the bridge's ports are: {}",
                known.join(", ")
            ))
        })?;
        let on_port: Vec<&dpu_model::Workload> = intent
            .workloads
            .values()
            .map(|w| &**w)
            .filter(|w| w.node == node && &w.port == port)
            .collect();
        // A shared port (the uplink) holds several workloads: the one owning
        // the source address first.
        let mac = on_port
            .iter()
            .find(|w| owns_src(w))
            .or(on_port.first())
            .and_then(|w| w.mac)
            .map(|m| m.to_string())
            .or_else(|| {
                let (ip, mac) = intent.nodes.get(node)?.host?;
                (IpAddr::V4(ip) == req.src).then(|| mac.to_string())
            });
        return Ok((ofport, mac));
    }
    let Some(vpc) = &req.vpc else {
        return Err(OpsError(
            "say where the packet enters: --in-port <iface-id> or --vpc <vpc>".into(),
        ));
    };
    if !intent.vpcs.contains_key(vpc) {
        return Err(OpsError(format!("VPC {vpc} is not in the applied intent")));
    }
    let w = intent
        .workloads
        .values()
        .map(|w| &**w)
        .filter(|w| w.node == node && &w.vpc == vpc)
        .find(owns_src)
        .ok_or_else(|| {
            OpsError(format!(
                "no workload of node {node} in VPC {vpc} has the address {}",
                req.src
            ))
        })?;
    let ofport = *ports.get(&w.port).ok_or_else(|| {
        OpsError(format!(
            "workload {} sits behind port {}, which is not on the bridge",
            w.name, w.port
        ))
    })?;
    Ok((ofport, w.mac.map(|m| m.to_string())))
}

/// The bridge flow for `ofproto/trace`: the entry port, Ethernet addresses
/// (to the router MAC), addresses, protocol and ports, TTL 64 (so
/// L3Forward's `dec_ttl` does not turn it into an exception).
pub fn bridge_flow(
    req: &TraceRequest,
    ofport: u32,
    dl_src: Option<&str>,
) -> Result<String, OpsError> {
    let v6 = match (req.src, req.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => {
            return Err(OpsError(format!(
                "{} and {} are not of the same family",
                req.src, req.dst
            )))
        }
    };
    let proto = req.proto.to_ascii_lowercase();
    let l4 = match proto.as_str() {
        "tcp" | "udp" | "sctp" => true,
        "icmp" => false,
        other => {
            return Err(OpsError(format!(
                "protocol {other:?}: say tcp, udp, sctp or icmp"
            )))
        }
    };
    let keyword = match (proto.as_str(), v6) {
        ("icmp", true) => "icmp6".to_string(),
        (p, true) => format!("{p}6"),
        (p, false) => p.to_string(),
    };
    let mut f = format!("in_port={ofport},{keyword}");
    if let Some(mac) = dl_src {
        write!(f, ",dl_src={mac}").ok();
    }
    let (src, dst) = if v6 {
        ("ipv6_src", "ipv6_dst")
    } else {
        ("nw_src", "nw_dst")
    };
    write!(
        f,
        ",dl_dst={ROUTER_MAC},{src}={},{dst}={},nw_ttl=64",
        req.src, req.dst
    )
    .ok();
    if l4 {
        let dport = req
            .dst_port
            .ok_or_else(|| OpsError(format!("{proto} needs a destination port")))?;
        let sport = req.src_port.unwrap_or(DEFAULT_SRC_PORT);
        write!(f, ",tp_src={sport},tp_dst={dport}").ok();
    } else {
        // An echo request.
        f += if v6 { ",icmp_type=128" } else { ",icmp_type=8" };
    }
    Ok(f)
}

#[cfg(test)]
mod tests;
