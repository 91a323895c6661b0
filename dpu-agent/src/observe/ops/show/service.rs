//! `show service NAME`: one Service as the load balancer sees it: its VIPs and
//! groups, each backend's state and share of new connections, and how much of
//! its traffic the datapath offloaded. What could not be read is said in
//! place, so the rest still shows.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::compile::pipeline::cookie::Cookie;
use crate::observe::lb_index::{GroupView, ServiceCounters, ServiceView};

use super::text::columns;

/// Datapath flows whose key sends to one of the Service's VIPs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offload {
    pub total: usize,
    pub offloaded: usize,
}

/// The destination addresses in a `dpctl/dump-flows` line's `ipv4(...)` and
/// `ipv6(...)` keys (masked fields as `dst=a/m`; the actions are not looked at).
pub fn key_destinations(line: &str) -> Vec<IpAddr> {
    let key = line.split(" actions:").next().unwrap_or(line);
    let mut out = Vec::new();
    for start in ["ipv4(", "ipv6("] {
        let mut rest = key;
        while let Some(i) = rest.find(start) {
            let at_boundary = i == 0 || matches!(rest.as_bytes()[i - 1], b',' | b' ');
            let body = &rest[i + start.len()..];
            let end = body.find(')').unwrap_or(body.len());
            if at_boundary {
                let dst = body[..end]
                    .split(',')
                    .find_map(|f| f.strip_prefix("dst="))
                    .and_then(|v| v.split('/').next())
                    .and_then(|v| v.parse::<IpAddr>().ok());
                out.extend(dst);
            }
            rest = &body[end..];
        }
    }
    out
}

/// How many of `lines` have a key sending to one of `vips`.
pub fn count_vip_flows(lines: &[String], vips: &[IpAddr]) -> usize {
    lines
        .iter()
        .filter(|l| key_destinations(l).iter().any(|d| vips.contains(d)))
        .count()
}

/// The Service, with its counters (or why they could not be read) and its
/// datapath flows (likewise).
pub fn render(
    view: &ServiceView,
    counters: &Result<ServiceCounters, String>,
    offload: &Result<Offload, String>,
) -> String {
    let mut out = format!(
        "Service {} (VPC {}, {})\n",
        view.name(),
        view.vpc(),
        view.scenario()
    );
    let vips: Vec<String> = view.vips().iter().map(ToString::to_string).collect();
    let vips = if vips.is_empty() {
        "none".to_string()
    } else {
        vips.join(", ")
    };
    let _ = writeln!(out, "  VIPs: {vips}");
    let affinity = view
        .affinity_timeout()
        .map_or("none".to_string(), |t| format!("ClientIP, {t} s"));
    let _ = writeln!(out, "  session affinity: {affinity}");
    if view.external_traffic_local() {
        out.push_str("  externalTrafficPolicy: Local (traffic from outside the VPC stays on this DPU's backends)\n");
    }
    let _ = writeln!(
        out,
        "  cookie: {:#018x}/{:#018x} (its flows in any round)",
        view.cookie,
        Cookie::SELECT_MASK
    );

    out.push_str("\nports\n");
    if view.ports().len() == 0 {
        out.push_str("  none\n");
    }
    for p in view.ports() {
        let _ = writeln!(
            out,
            "  {} {}/{} -> {}",
            p.name, p.protocol, p.port, p.target_port
        );
        if p.groups.is_empty() {
            out.push_str("    no group (none allocated yet)\n");
        }
        for g in p.groups {
            let _ = writeln!(out, "    {}", group_line(g));
        }
    }

    out.push_str("\nbackends\n");
    if view.backends().len() == 0 {
        out.push_str("  none\n");
    } else {
        let per_backend = counters.as_ref().ok().map(|c| &c.backends);
        let rows: Vec<Vec<String>> = view
            .backends()
            .enumerate()
            .map(|(i, b)| {
                let (conns, bytes) = match per_backend {
                    Some(m) => {
                        let (p, b) = m.get(&i).copied().unwrap_or_default();
                        (p.to_string(), b.to_string())
                    }
                    None => ("-".into(), "-".into()),
                };
                vec![
                    b.vpc.to_string(),
                    b.ip.to_string(),
                    b.workload.unwrap_or("-").to_string(),
                    b.weight.to_string(),
                    b.state.as_str().into(),
                    if b.local { "yes" } else { "no" }.into(),
                    conns,
                    bytes,
                ]
            })
            .collect();
        out.push_str(&columns(
            2,
            &[
                "VPC",
                "IP",
                "WORKLOAD",
                "WEIGHT",
                "STATE",
                "LOCAL",
                "NEW CONNS",
                "BYTES",
            ],
            &rows,
        ));
        if view.groups.iter().any(|g| g.mismatch) {
            out.push_str(
                "  (a group's buckets differ from the applied intent's: its counters are not split by backend)\n",
            );
        }
    }

    out.push('\n');
    match counters {
        Ok(c) => {
            let _ = writeln!(
                out,
                "totals: {} packets, {} bytes through its ServiceLb flows; {} new connections",
                c.packets, c.bytes, c.new_connections
            );
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "totals: unknown (cannot read the switch's counters: {e})"
            );
        }
    }
    match offload {
        Ok(o) => {
            let _ = writeln!(
                out,
                "offloaded: {} of {} datapath flows for its VIPs",
                o.offloaded, o.total
            );
        }
        Err(e) => {
            let _ = writeln!(out, "offloaded: unknown (cannot read the datapath: {e})");
        }
    }
    out
}

fn group_line(g: &GroupView) -> String {
    let fam = if g.v6 { "IPv6" } else { "IPv4" };
    let local = if g.local { " local-only" } else { "" };
    let n = g.buckets.len();
    let state = if g.installed {
        format!("installed, {n} bucket{}", if n == 1 { "" } else { "s" })
    } else if n == 0 {
        "not installed (no serving backend)".into()
    } else {
        "not installed (yet)".into()
    };
    format!("group {} {fam}{local}: {state}", g.id)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::observe::ops::show::fixtures;

    const DUMP: [&str; 4] = [
        // To the VIP, before conntrack.
        "recirc_id(0),in_port(3),packet_type(ns=0,id=0),eth(src=02:00:00:00:00:09,dst=02:d9:00:00:00:01),eth_type(0x0800),ipv4(src=10.0.0.9,dst=10.96.0.10,proto=6,frag=no),tcp(dst=80), packets:5, bytes:370, used:0.010s, flags:S, actions:ct(zone=1),recirc(0x1)",
        // After DNAT: to a backend; the VIP only in the actions.
        "recirc_id(0x1),in_port(3),ct_state(+new+trk),eth_type(0x0800),ipv4(dst=10.0.0.5,frag=no), packets:1, bytes:74, used:0.010s, actions:set(ipv4(dst=10.96.0.10)),2",
        // `-m` style, masked fields and an IPv6 key.
        "ufid:1, recirc_id(0),ipv6(src=fd00::9/::,dst=fd00::10,label=0/0,proto=6/0,frag=no), packets:0, bytes:0, used:never, offloaded:yes, dp:tc, actions:drop",
        // A tunnel's outer destination is not the packet's.
        "tunnel(tun_id=0x64,src=192.168.1.2,dst=10.96.0.10,flags(-df+csum+key)),recirc_id(0),in_port(1),eth_type(0x0806), packets:1, bytes:42, used:0.5s, actions:drop",
    ];

    #[test]
    fn destinations_come_from_the_ip_keys_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(key_destinations(DUMP[0]), [ip("10.96.0.10")]);
        assert_eq!(key_destinations(DUMP[1]), [ip("10.0.0.5")]);
        assert_eq!(key_destinations(DUMP[2]), [ip("fd00::10")]);
        assert!(key_destinations(DUMP[3]).is_empty());
        let lines: Vec<String> = DUMP.iter().map(|l| l.to_string()).collect();
        assert_eq!(count_vip_flows(&lines, &[ip("10.96.0.10")]), 1);
        assert_eq!(
            count_vip_flows(&lines, &[ip("10.96.0.10"), ip("fd00::10")]),
            2
        );
    }

    #[test]
    fn renders_ports_backends_with_counters_totals_and_offload() {
        let lb = fixtures::lb();
        let counters = ServiceCounters {
            packets: 40,
            bytes: 5000,
            new_connections: 12,
            backends: BTreeMap::from([(0, (9, 3400)), (1, (3, 1100))]),
        };
        let offload = Offload {
            total: 3,
            offloaded: 0,
        };
        let got = render(&lb.services["web"], &Ok(counters), &Ok(offload));
        let want = format!(
            "\
Service web (VPC blue, ClusterIP)
  VIPs: 10.96.0.10
  session affinity: ClientIP, 10800 s
  cookie: {:#018x}/0x0000ffffffffffff (its flows in any round)

ports
  http tcp/80 -> 8080
    group 5 IPv4: installed, 3 buckets

backends
  VPC   IP        WORKLOAD  WEIGHT  STATE      LOCAL  NEW CONNS  BYTES
  blue  10.0.0.5  web-1     2       serving    yes    9          3400
  blue  10.0.0.6  web-2     1       serving    no     3          1100
  blue  10.0.0.7  -         1       unhealthy  no     0          0

totals: 40 packets, 5000 bytes through its ServiceLb flows; 12 new connections
offloaded: 0 of 3 datapath flows for its VIPs
",
            lb.services["web"].cookie
        );
        assert_eq!(got, want, "\n{got}");
    }

    #[test]
    fn what_cannot_be_read_is_said_in_place() {
        let lb = fixtures::lb();
        let got = render(
            &lb.services["web"],
            &Err("unix:/run/openvswitch/br-int.mgmt: connection refused".into()),
            &Err("`ovs-appctl -t x dpctl/dump-flows` failed".into()),
        );
        assert!(
            got.contains("  blue  10.0.0.5  web-1     2       serving    yes    -          -\n"),
            "{got}"
        );
        assert!(got.contains("totals: unknown (cannot read the switch's counters: unix:/run/openvswitch/br-int.mgmt: connection refused)\n"), "{got}");
        assert!(got.contains("offloaded: unknown (cannot read the datapath: `ovs-appctl -t x dpctl/dump-flows` failed)\n"), "{got}");
    }

    #[test]
    fn groups_say_why_they_are_not_installed() {
        let mut lb = fixtures::lb();
        let web = lb.services.get_mut("web").unwrap();
        web.groups[0].installed = false;
        web.groups[0].buckets.clear();
        web.groups[0].local = true;
        let got = render(
            &lb.services["web"],
            &Ok(ServiceCounters::default()),
            &Ok(Offload::default()),
        );
        assert!(
            got.contains("    group 5 IPv4 local-only: not installed (no serving backend)\n"),
            "{got}"
        );
        let got = render(
            &lb.services["db"],
            &Ok(ServiceCounters::default()),
            &Ok(Offload::default()),
        );
        assert!(
            got.contains("\nports\n  none\n\nbackends\n  none\n"),
            "{got}"
        );
    }
}
