//! The switch's own view for `explain`, read independently of what the
//! reconciler believes it installed: the ArpResponder and ServiceLb flows as
//! `ovs-ofctl dump-flows` shows them, and every group's bucket ids over a
//! read-only OpenFlow connection. Reading is not writing: the reconciler
//! stays the only writer.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::process::Command;

use crate::compile::pipeline::{ARP_RESPONDER, SERVICE_LB};
use crate::reconcile::backend::{NativeBackend, OpenFlowBackend};

/// How long one dump may take.
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwitchView {
    /// Flows of the tables `explain` checks (ArpResponder, ServiceLb).
    pub flows: Vec<DumpedFlow>,
    /// Group id → its bucket ids, as the switch holds them.
    pub groups: BTreeMap<u32, Vec<u32>>,
}

/// One line of `ovs-ofctl --no-stats dump-flows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedFlow {
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    /// The match, as `,`-separated keywords and fields (no priority).
    pub matches: String,
    pub actions: String,
}

impl DumpedFlow {
    /// The match holds this keyword or `field=value` exactly.
    pub fn has(&self, token: &str) -> bool {
        self.matches.split(',').any(|t| t == token)
    }

    pub fn drops(&self) -> bool {
        self.actions == "drop"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchReadError {
    #[error("`{cmd}` failed: {why}")]
    Ofctl { cmd: String, why: String },
    #[error("reading the groups: {0}")]
    Groups(#[from] crate::reconcile::backend::OpenFlowError),
}

/// Parses `ovs-ofctl dump-flows` text; lines that are not flows (the reply
/// header) are skipped.
pub fn parse_dump_flows(text: &str) -> Vec<DumpedFlow> {
    text.lines().filter_map(parse_flow_line).collect()
}

/// Fields of a dump line that are counters or timers, not the match.
const STATS: [&str; 6] = [
    "duration=",
    "n_packets=",
    "n_bytes=",
    "idle_age=",
    "hard_age=",
    "reset_counts",
];

fn parse_flow_line(line: &str) -> Option<DumpedFlow> {
    let line = line.trim();
    let (head, actions) = line.split_once(" actions=")?;
    let mut table = 0u8;
    let mut cookie = 0u64;
    let mut priority = 0u16;
    let mut matches = Vec::new();
    for part in head.split(", ") {
        for f in part.split(',') {
            let f = f.trim();
            if let Some(v) = f.strip_prefix("cookie=") {
                cookie = u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()?;
            } else if let Some(v) = f.strip_prefix("table=") {
                table = v.parse().ok()?;
            } else if let Some(v) = f.strip_prefix("priority=") {
                priority = v.parse().ok()?;
            } else if !f.is_empty() && !STATS.iter().any(|s| f.starts_with(s)) {
                matches.push(f.to_string());
            }
        }
    }
    Some(DumpedFlow {
        table,
        priority,
        cookie,
        matches: matches.join(","),
        actions: actions.trim().to_string(),
    })
}

/// Reads the switch at `target` (`unix:<run_dir>/<bridge>.mgmt`).
pub async fn read(ofctl_path: &str, target: &str) -> Result<SwitchView, SwitchReadError> {
    let mut flows = Vec::new();
    for table in [ARP_RESPONDER.id, SERVICE_LB.id] {
        let text = ofctl(
            ofctl_path,
            &[
                "-O",
                "OpenFlow15",
                "--no-stats",
                "dump-flows",
                target,
                &format!("table={table}"),
            ],
        )
        .await?;
        flows.extend(parse_dump_flows(&text));
    }
    let mut native = NativeBackend::new(target.to_string())?;
    let installed = native.installed().await?;
    let groups = installed
        .groups
        .iter()
        .map(|(id, g)| (*id, g.buckets.iter().map(|b| b.id).collect()))
        .collect();
    Ok(SwitchView { flows, groups })
}

async fn ofctl(path: &str, args: &[&str]) -> Result<String, SwitchReadError> {
    let cmd = format!("{path} {}", args.join(" "));
    let run = Command::new(path).args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(DUMP_TIMEOUT, run)
        .await
        .map_err(|_| SwitchReadError::Ofctl {
            cmd: cmd.clone(),
            why: format!("no answer within {DUMP_TIMEOUT:?}"),
        })?
        .map_err(|e| SwitchReadError::Ofctl {
            cmd: cmd.clone(),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SwitchReadError::Ofctl {
            cmd,
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_lines_are_read_with_cookie_table_match_and_actions() {
        let text = "OFPST_FLOW reply (OF1.5) (xid=0x2):\n \
 cookie=0x3500bd2bd04a69, table=20, priority=100,arp,reg0=0x1,arp_tpa=10.96.0.10,arp_op=1 actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],in_port\n \
 cookie=0x3010000000001, table=20, priority=0 actions=drop\n";
        let flows = parse_dump_flows(text);
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[0].cookie, 0x3500bd2bd04a69);
        assert_eq!(flows[0].table, 20);
        assert_eq!(flows[0].priority, 100);
        assert!(flows[0].has("arp_tpa=10.96.0.10") && flows[0].has("arp"));
        assert!(!flows[0].has("arp_tpa=10.96.0.1"));
        assert!(flows[1].drops() && flows[1].matches.is_empty());
    }
}
