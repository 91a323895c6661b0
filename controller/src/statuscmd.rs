//! `dpu-controller status`: reads `status.json` and shows it as the fleet table,
//! one node (`--node`), one Service on a node (`--service`), or JSON.

use std::io;
use std::path::{Path, PathBuf};

use dpu_proto::MAX_SERVICE_STATUS;

use crate::escape::escape_peer;
use crate::status::{read_status, NodeStatus, StatusDoc, STATUS_FILE};
use crate::statusfmt::{human_bytes, is_stale, layout, percent};
use crate::statusview::{connection, render_node, render_service, stale_note};

#[derive(Debug, thiserror::Error)]
pub enum StatusCmdError {
    /// No controller has written status in this state directory.
    #[error("{path}: {source} (has a controller run with this --state-dir?)")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `--node` names a node the status does not know.
    #[error("node {node} is not in status.json ({})", known_nodes(.known))]
    UnknownNode { node: String, known: Vec<String> },
    /// `--service` on a node that has sent no Status.
    #[error("node {node} has sent no Status yet; `dpu-agent show service {service}` on the DPU shows any Service")]
    NoAgentStatus { node: String, service: String },
    /// `--service` names a Service the node's last Status does not list.
    #[error("Service {service} is not in the last Status of node {node} ({listed} of {services} Services listed; the agent lists at most {MAX_SERVICE_STATUS}, those with a backend not serving first, then the busiest); `dpu-agent show service {service}` on the DPU shows any Service")]
    UnknownService {
        node: String,
        service: String,
        listed: usize,
        services: u32,
    },
    /// The store could not be read (`status --etcd`).
    #[error("{0}")]
    Store(String),
}

fn known_nodes(known: &[String]) -> String {
    if known.is_empty() {
        "no node has connected".to_string()
    } else {
        format!("known: {}", known.join(", "))
    }
}

/// What to show: the fleet, one node, or one Service on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub node: Option<String>,
    /// Only with `node`.
    pub service: Option<String>,
    pub json: bool,
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

pub fn run(state_dir: &Path, query: &Query) -> Result<String, StatusCmdError> {
    let doc = read_status(state_dir).map_err(|source| StatusCmdError::Read {
        path: state_dir.join(STATUS_FILE),
        source,
    })?;
    let running = pid_alive(doc.controller_pid);
    render(&doc, running, query, crate::timeutil::unix_now())
}

/// `status --etcd`: every replica's status, from the store.
pub async fn from_store(store: &crate::kv::Store, query: &Query) -> Result<String, StatusCmdError> {
    let doc = crate::statussync::read(store)
        .await
        .map_err(|e| StatusCmdError::Store(e.to_string()))?;
    render(&doc, true, query, crate::timeutil::unix_now())
}

/// The output for `query` at `now` (Unix seconds), from a document already read.
pub fn render(
    doc: &StatusDoc,
    running: bool,
    query: &Query,
    now: i64,
) -> Result<String, StatusCmdError> {
    let pretty =
        |v: serde_json::Value| serde_json::to_string_pretty(&v).expect("json serializes") + "\n";
    let Some(name) = &query.node else {
        if query.json {
            let mut v = serde_json::to_value(doc).expect("status serializes");
            v["controller_running"] = serde_json::Value::Bool(running);
            return Ok(pretty(v));
        }
        return Ok(render_table(doc, running, now));
    };
    let n = doc
        .nodes
        .get(name)
        .ok_or_else(|| StatusCmdError::UnknownNode {
            node: name.clone(),
            known: doc.nodes.keys().cloned().collect(),
        })?;
    let Some(service) = &query.service else {
        if query.json {
            return Ok(pretty(serde_json::to_value(n).expect("status serializes")));
        }
        return Ok(render_node(name, n, now));
    };
    let a = n
        .agent_status
        .as_ref()
        .ok_or_else(|| StatusCmdError::NoAgentStatus {
            node: name.clone(),
            service: service.clone(),
        })?;
    let s = a
        .service(service)
        .ok_or_else(|| StatusCmdError::UnknownService {
            node: name.clone(),
            service: service.clone(),
            listed: a.service_status.len(),
            services: a.services,
        })?;
    if query.json {
        return Ok(pretty(serde_json::to_value(s).expect("status serializes")));
    }
    Ok(render_service(name, n, s, now))
}

/// `applied`, or `applied/desired` while the node is behind what was sent.
fn versions(n: &NodeStatus) -> String {
    if n.sent_version == 0 || n.sent_version == n.applied_version {
        n.applied_version.to_string()
    } else {
        format!("{}/{}", n.applied_version, n.sent_version)
    }
}

/// A NACK no ACK has cleared, else the session's last error, else why the
/// last Status was refused, else the agent's own.
fn last_error(n: &NodeStatus) -> String {
    match (&n.last_nack, n.nack_pending) {
        (Some(nack), true) => format!(
            "NACK v{}: {}",
            nack.version,
            nack.errors.first().map(String::as_str).unwrap_or("")
        ),
        _ => n
            .last_error
            .clone()
            .or_else(|| n.refused_status.clone())
            .or_else(|| {
                let agent = n.agent_status.as_ref()?.last_error.as_ref()?;
                Some(format!("agent: {agent}"))
            })
            .unwrap_or_else(|| "-".to_string()),
    }
}

/// SERVICES, UNHEALTHY, CPU and MEM from the last agent status; `*` marks
/// last known values (see the footnote).
fn agent_columns(n: &NodeStatus, now: i64) -> [String; 4] {
    let Some(a) = &n.agent_status else {
        return ["-", "-", "-", "-"].map(String::from);
    };
    let mark = if is_stale(n, now) { "*" } else { "" };
    let (cpu, mem) = match &a.facts {
        Some(f) => (
            percent(f.cpu_percent),
            format!(
                "{}/{}",
                human_bytes(f.mem_used_bytes),
                human_bytes(f.mem_total_bytes)
            ),
        ),
        None => ("-".to_string(), "-".to_string()),
    };
    [
        a.services.to_string(),
        a.unhealthy.len().to_string(),
        cpu,
        mem,
    ]
    .map(|v| v + mark)
}

fn render_table(doc: &StatusDoc, running: bool, now: i64) -> String {
    let mut out = String::new();
    if !doc.replicas.is_empty() {
        out += &format!(
            "controller replicas (from the store): {}\n",
            escape_peer(&doc.replicas.join(", "), 1024)
        );
    } else if running {
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
    if !doc.store.backend.is_empty() {
        out += &format!(
            "store: {} {} (revision {}, {}){}\n",
            escape_peer(&doc.store.backend, 256),
            doc.store.state,
            doc.store.revision,
            if doc.store.leader {
                "leader"
            } else {
                "follower"
            },
            doc.store
                .error
                .as_ref()
                .map(|e| format!(
                    ": {}; the last intent read stays in force",
                    escape_peer(e, 512)
                ))
                .unwrap_or_default()
        );
    }
    if !doc.intent_errors.is_empty() {
        out += "intent errors (the last good intent stays in force):\n";
        for e in &doc.intent_errors {
            out += &format!("  {}\n", escape_peer(&e.to_string(), 1024));
        }
    }
    if doc.nodes.is_empty() {
        out += "no node has connected\n";
        return out;
    }
    let mut rows = vec![[
        "NODE",
        "CONNECTED",
        "APPLIED",
        "SERVICES",
        "UNHEALTHY",
        "CPU",
        "MEM",
        "PODS",
        "LAST ERROR",
    ]
    .map(String::from)];
    let mut stale = Vec::new();
    for (name, n) in &doc.nodes {
        // Reported pods in force, and how many were dropped.
        let pods = match n.reported_errors.len() {
            0 => n.reported_workloads.to_string(),
            e => format!("{} ({e} dropped)", n.reported_workloads),
        };
        let [services, unhealthy, cpu, mem] = agent_columns(n, now);
        rows.push([
            name.clone(),
            connection(n),
            versions(n),
            services,
            unhealthy,
            cpu,
            mem,
            pods,
            last_error(n),
        ]);
        stale.extend(stale_note(name, n, now));
    }
    out += &layout(&rows);
    if !stale.is_empty() {
        out += "* last known values:\n";
        for note in stale {
            out += &format!("  {note}\n");
        }
    }
    let dropped: Vec<_> = doc
        .nodes
        .iter()
        .flat_map(|(name, n)| n.reported_errors.iter().map(move |e| (name, e)))
        .collect();
    if !dropped.is_empty() {
        out += "reported workloads dropped:\n";
        for (name, e) in dropped {
            out += &format!("  {name}: {}\n", escape_peer(e, 512));
        }
    }
    let refused: Vec<_> = doc
        .nodes
        .iter()
        .filter(|(_, n)| n.refused_health > 0)
        .collect();
    if !refused.is_empty() {
        out += "health verdicts that do not count (backends the node does not host):\n";
        for (name, n) in refused {
            let examples: Vec<String> = n
                .refused_health_examples
                .iter()
                .map(|e| escape_peer(e, 64))
                .collect();
            out += &format!(
                "  {name}: {} (e.g. {})\n",
                n.refused_health,
                examples.join(", ")
            );
        }
    }
    out
}

#[cfg(test)]
#[path = "statuscmd_tests.rs"]
pub(crate) mod tests;
