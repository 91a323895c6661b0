//! `dpu-controller status`: reads `status.json` and shows it as a table or JSON.

use std::io;
use std::path::{Path, PathBuf};

use crate::status::{read_status, StatusDoc, STATUS_FILE};

#[derive(Debug, thiserror::Error)]
pub enum StatusCmdError {
    /// No controller has written status in this state directory.
    #[error("{path}: {source} (has a controller run with this --state-dir?)")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Whether a process with `pid` is alive (and not a zombie). Linux only: it
/// reads /proc.
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn run(state_dir: &Path, json: bool) -> Result<String, StatusCmdError> {
    let doc = read_status(state_dir).map_err(|source| StatusCmdError::Read {
        path: state_dir.join(STATUS_FILE),
        source,
    })?;
    let running = pid_alive(doc.controller_pid);
    if json {
        let mut v = serde_json::to_value(&doc).expect("status serializes");
        v["controller_running"] = serde_json::Value::Bool(running);
        return Ok(serde_json::to_string_pretty(&v).expect("json serializes") + "\n");
    }
    Ok(render_table(&doc, running))
}

fn render_table(doc: &StatusDoc, running: bool) -> String {
    let mut out = String::new();
    if running {
        out += &format!("controller: running (pid {})\n", doc.controller_pid);
    } else {
        out += &format!(
            "controller not running (pid {} is gone); the state below is from its last run\n",
            doc.controller_pid
        );
    }
    out += &format!(
        "intent version: {} (last reload {}: {})\n",
        doc.intent_version,
        doc.last_reload.as_deref().unwrap_or("never"),
        if doc.last_reload_ok { "ok" } else { "refused" }
    );
    if !doc.intent_errors.is_empty() {
        out += "intent errors (the last good intent stays in force):\n";
        for e in &doc.intent_errors {
            out += &format!("  {e}\n");
        }
    }
    let mut rows = vec![[
        "NODE".to_string(),
        "CONNECTED".to_string(),
        "APPLIED".to_string(),
        "SENT".to_string(),
        "PODS".to_string(),
        "LAST ERROR".to_string(),
    ]];
    for (name, n) in &doc.nodes {
        let connected = match (&n.connected_since, n.connected) {
            (Some(since), true) => format!("yes (since {since})"),
            _ => "no".to_string(),
        };
        let last_error = match (&n.last_nack, n.nack_pending) {
            (Some(nack), true) => format!(
                "NACK v{}: {}",
                nack.version,
                nack.errors.first().map(String::as_str).unwrap_or("")
            ),
            _ => n.last_error.clone().unwrap_or_else(|| "-".to_string()),
        };
        // Reported pods in force, and how many were dropped.
        let pods = match n.reported_errors.len() {
            0 => n.reported_workloads.to_string(),
            e => format!("{} ({e} dropped)", n.reported_workloads),
        };
        rows.push([
            name.clone(),
            connected,
            n.applied_version.to_string(),
            n.sent_version.to_string(),
            pods,
            last_error,
        ]);
    }
    if doc.nodes.is_empty() {
        out += "no node has connected\n";
        return out;
    }
    let last = rows[0].len() - 1;
    let widths: Vec<usize> = (0..last)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, w) in widths.iter().enumerate() {
            line += &format!("{:<w$}  ", r[i], w = w);
        }
        line += &r[last];
        out += line.trim_end();
        out.push('\n');
    }
    let dropped: Vec<_> = doc
        .nodes
        .iter()
        .flat_map(|(name, n)| n.reported_errors.iter().map(move |e| (name, e)))
        .collect();
    if !dropped.is_empty() {
        out += "reported workloads dropped:\n";
        for (name, e) in dropped {
            out += &format!("  {name}: {e}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{NackRecord, NodeStatus};

    #[test]
    fn table_shows_nodes_and_errors() {
        let mut doc = StatusDoc {
            controller_pid: 1,
            intent_version: 4,
            last_reload_ok: true,
            ..StatusDoc::default()
        };
        doc.nodes.insert(
            "dpu-1".into(),
            NodeStatus {
                connected: true,
                connected_since: Some("T".into()),
                applied_version: 3,
                sent_version: 4,
                nack_pending: true,
                last_nack: Some(NackRecord {
                    version: 4,
                    at: "T".into(),
                    errors: vec!["Vpc/a: spec.vni: bad".into()],
                }),
                reported_workloads: 2,
                reported_errors: vec!["Workload/p: spec.node: not here".into()],
                ..NodeStatus::default()
            },
        );
        let t = render_table(&doc, false);
        assert!(t.starts_with("controller not running"), "{t}");
        assert!(t.contains("intent version: 4"), "{t}");
        assert!(t.contains("PODS"), "{t}");
        assert!(
            t.contains("dpu-1  yes (since T)  3        4     2 (1 dropped)  NACK v4"),
            "{t}"
        );
        assert!(
            t.contains("reported workloads dropped:\n  dpu-1: Workload/p: spec.node: not here"),
            "{t}"
        );
        assert!(t.contains("NACK v4: Vpc/a: spec.vni: bad"), "{t}");
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
    }
}
