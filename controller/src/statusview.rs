//! The drill-in views of `dpu-controller status`: one node (`--node N`) and one
//! Service on it (`--node N --service S`), rendered from `status.json` without
//! I/O. Finding the node and the Service, and the errors when they are missing,
//! are `statuscmd`'s.

use dpu_proto::{MAX_BACKEND_STATUS, MAX_SERVICE_STATUS};

use crate::agentstatus::{AgentStatus, ServiceStatus};
use crate::status::NodeStatus;
use crate::statusfmt::{
    human_age, human_bytes, is_stale, layout, percent, status_age, time_and_age,
};

/// `yes (since T)`, `no (since T)` or `no`.
pub fn connection(n: &NodeStatus) -> String {
    match (n.connected, &n.connected_since, &n.disconnected_at) {
        (true, Some(since), _) => format!("yes (since {since})"),
        (true, None, _) => "yes".to_string(),
        (false, _, Some(at)) => format!("no (since {at})"),
        (false, _, None) => "no".to_string(),
    }
}

/// Where the values of a node's last status come from, and whether they are
/// current: `T (12s ago)`, plus why they are only last known values.
fn status_line(n: &NodeStatus, a: &AgentStatus, now: i64) -> String {
    let mut line = time_and_age(&a.at, now);
    if is_stale(n, now) {
        line += if n.connected {
            "; stale: the agent has not reported since"
        } else {
            "; stale: last known values, the node is disconnected"
        };
    }
    line
}

fn counters_line(new_connections: u64, packets: u64, bytes: u64) -> String {
    format!(
        "new connections {new_connections}, packets {packets}, bytes {}",
        human_bytes(bytes)
    )
}

/// Everything recorded about one node.
pub fn render_node(name: &str, n: &NodeStatus, now: i64) -> String {
    let mut rows: Vec<[String; 2]> = Vec::new();
    let mut row = |k: &str, v: String| rows.push([format!("{k}:"), v]);
    let mut conn = connection(n);
    if let Some(peer) = &n.peer {
        conn += &format!(", peer {peer}");
    }
    if !n.agent_version.is_empty() {
        conn += &format!(", agent {}", n.agent_version);
    }
    row("connected", conn);
    let mut versions = format!("applied {}, sent {}", n.applied_version, n.sent_version);
    if let Some(a) = &n.agent_status {
        versions += &format!(
            "; the agent reports applied {}, desired {}",
            a.applied_version, a.desired_version
        );
    }
    row("versions", versions);
    row(
        "last error",
        n.last_error.clone().unwrap_or_else(|| "-".to_string()),
    );
    if let Some(nack) = &n.last_nack {
        let pending = if n.nack_pending {
            ""
        } else {
            " (cleared by a later ACK)"
        };
        row(
            "last NACK",
            format!(
                "version {} at {}{pending}: {}",
                nack.version,
                nack.at,
                nack.errors.join("; ")
            ),
        );
    }
    if n.refused_health > 0 {
        row(
            "refused verdicts",
            format!(
                "{} health verdicts for backends this node does not host do not count (e.g. {})",
                n.refused_health,
                n.refused_health_examples.join(", ")
            ),
        );
    }
    if let Some(why) = &n.refused_status {
        row(
            "refused Status",
            format!("{why} (the values below are older)"),
        );
    }
    let Some(a) = &n.agent_status else {
        row("last status", "none yet".to_string());
        return format!("node {name}\n{}", layout(&rows));
    };
    row("last status", status_line(n, a, now));
    row(
        "agent error",
        a.last_error.clone().unwrap_or_else(|| "-".to_string()),
    );
    row("reconciles", a.reconciles.to_string());
    row("NACKs", a.nacks.to_string());
    match &a.facts {
        Some(f) => {
            row(
                "DPU CPU",
                format!("{} of {} CPUs", percent(f.cpu_percent), f.cpus),
            );
            row(
                "DPU memory",
                format!(
                    "{} used of {}",
                    human_bytes(f.mem_used_bytes),
                    human_bytes(f.mem_total_bytes)
                ),
            );
            row(
                "agent",
                format!(
                    "CPU {} of one CPU, RSS {}",
                    percent(f.agent_cpu_percent),
                    human_bytes(f.agent_rss_bytes)
                ),
            );
            row(
                "datapath flows",
                format!(
                    "{} total, {} offloaded",
                    f.datapath_flows, f.offloaded_flows
                ),
            );
        }
        None => row("DPU facts", "not reported by this agent".to_string()),
    }
    if let Some(c) = &a.counters {
        row(
            "counters",
            counters_line(c.new_connections, c.packets, c.bytes),
        );
    }
    row(
        "OpenFlow",
        format!("{} flows, {} groups", a.flows, a.groups),
    );
    if !a.pending_ports.is_empty() {
        row("pending ports", a.pending_ports.join(", "));
    }
    let mut out = format!("node {name}\n{}", layout(&rows));
    out += &format!("unhealthy backends: {}\n", a.unhealthy.len());
    for b in &a.unhealthy {
        out += &format!("  {} {}\n", b.vpc, b.ip);
    }
    out += &services_table(a);
    out
}

fn services_table(a: &AgentStatus) -> String {
    let mut out = format!("services: {}", a.services);
    if a.services_omitted > 0 {
        out += &format!(
            " ({} listed, {} omitted: the agent lists at most {MAX_SERVICE_STATUS}, those with a backend not serving first, then the busiest)",
            a.service_status.len(),
            a.services_omitted
        );
    }
    out.push('\n');
    if a.service_status.is_empty() {
        return out;
    }
    let mut rows = vec![[
        "SERVICE".to_string(),
        "VIPS".to_string(),
        "SERVING".to_string(),
        "NEW CONNS".to_string(),
        "BYTES".to_string(),
    ]];
    for s in &a.service_status {
        rows.push([
            s.name.clone(),
            vips(s),
            format!("{}/{}", s.serving, s.backends),
            s.new_connections.to_string(),
            human_bytes(s.bytes),
        ]);
    }
    out + &layout(&rows)
}

fn vips(s: &ServiceStatus) -> String {
    if s.vips.is_empty() {
        "-".to_string()
    } else {
        s.vips.join(",")
    }
}

/// One Service as the node's last status reports it, with its backends.
pub fn render_service(node: &str, n: &NodeStatus, s: &ServiceStatus, now: i64) -> String {
    let mut out = format!("service {} on node {node}\n", s.name);
    let mut rows: Vec<[String; 2]> = Vec::new();
    if let Some(a) = &n.agent_status {
        rows.push(["status of:".to_string(), status_line(n, a, now)]);
    }
    rows.push(["VIPs:".to_string(), vips(s)]);
    rows.push([
        "backends:".to_string(),
        format!("{} of {} serving", s.serving, s.backends),
    ]);
    rows.push([
        "counters:".to_string(),
        counters_line(s.new_connections, s.packets, s.bytes),
    ]);
    out += &layout(&rows);
    if s.backend_status.is_empty() {
        return out;
    }
    let mut table = vec![[
        "VPC".to_string(),
        "IP".to_string(),
        "WORKLOAD".to_string(),
        "WEIGHT".to_string(),
        "STATE".to_string(),
        "NEW CONNS".to_string(),
        "BYTES".to_string(),
    ]];
    for b in &s.backend_status {
        table.push([
            b.vpc.clone(),
            b.ip.clone(),
            if b.workload.is_empty() {
                "-".to_string()
            } else {
                b.workload.clone()
            },
            b.weight.to_string(),
            b.state.clone(),
            b.new_connections.to_string(),
            human_bytes(b.bytes),
        ]);
    }
    out += &layout(&table);
    let listed = s.backend_status.len();
    if (listed as u64) < u64::from(s.backends) {
        out += &format!(
            "({listed} of {} backends listed: the agent lists at most {MAX_BACKEND_STATUS}, those not serving first)\n",
            s.backends
        );
    }
    out
}

/// How old the node's values are, for the fleet table's footnote.
pub fn stale_note(name: &str, n: &NodeStatus, now: i64) -> Option<String> {
    if !is_stale(n, now) {
        return None;
    }
    let a = n.agent_status.as_ref()?;
    let age = status_age(n, now).map_or(String::new(), |age| format!("{} ago, ", human_age(age)));
    Some(if n.connected {
        format!("{name}: connected, but no status since {age}at {}", a.at)
    } else {
        format!("{name}: disconnected; last status {age}at {}", a.at)
    })
}

#[cfg(test)]
#[path = "statusview_tests.rs"]
mod tests;
