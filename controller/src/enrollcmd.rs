//! `dpu-controller token …`, `node …` and `issue --node`: bootstrap tokens and
//! node records from the command line. Each function returns what to print.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::nodes::{CertEntry, NodeError, NodeRecord, NodeStore, Revoked};
use crate::pki::{load_ca, write_issued, PkiError, PkiPaths};
use crate::status::read_status;
use crate::statuscmd::pid_alive;
use crate::timeutil::{rfc3339, unix_now};
use crate::tokens::{TokenError, TokenStore};

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

impl CmdError {
    /// 2 for what the operator asked wrongly, 4 for a missing or unusable CA,
    /// 1 for the rest (I/O).
    pub fn exit_code(&self) -> u8 {
        match self {
            CmdError::Token(TokenError::BadName { .. } | TokenError::NoSuchToken(_)) => 2,
            CmdError::Node(
                NodeError::BadName { .. }
                | NodeError::Unknown(_)
                | NodeError::Revoked(_)
                | NodeError::TooManyCerts { .. },
            ) => 2,
            CmdError::Pki(PkiError::BadName { .. } | PkiError::CaExists(_)) => 2,
            CmdError::Pki(_) => 4,
            _ => 1,
        }
    }
}

/// `token create`: the token text, the only place its secret ever appears.
pub fn token_create(state_dir: &Path, node: &str, ttl: Duration) -> Result<String, CmdError> {
    let paths = PkiPaths::new(state_dir);
    if !paths.ca_cert.exists() {
        // A token for a state directory without a CA could never be used.
        return Err(PkiError::NoCa(paths.dir).into());
    }
    // Nor could one for a name no node may have (the controller's own).
    load_ca(state_dir)?.check_node_name(node)?;
    let (token, _) = TokenStore::new(state_dir).create(node, ttl, unix_now())?;
    Ok(format!("{token}\n"))
}

/// `token list`: id, node, state and times; never secrets (only their hashes
/// are stored, and those are not shown either).
pub fn token_list(state_dir: &Path, json: bool) -> Result<String, CmdError> {
    let tokens = TokenStore::new(state_dir).list(unix_now())?;
    if json {
        let items: Vec<Value> = tokens
            .iter()
            .map(|(r, state)| {
                serde_json::json!({
                    "id": r.id,
                    "node": r.node,
                    "state": state.as_str(),
                    "created_unix": r.created_unix,
                    "expires_unix": r.expires_unix,
                    "used_unix": r.used_unix,
                })
            })
            .collect();
        return Ok(pretty(&Value::Array(items)));
    }
    if tokens.is_empty() {
        return Ok("no tokens\n".into());
    }
    let mut rows = vec![row(["ID", "NODE", "STATE", "CREATED", "EXPIRES", "USED"])];
    for (r, state) in &tokens {
        rows.push(vec![
            r.id.clone(),
            r.node.clone(),
            state.as_str().into(),
            rfc3339(r.created_unix),
            rfc3339(r.expires_unix),
            r.used_unix.map_or_else(|| "-".into(), rfc3339),
        ]);
    }
    Ok(table(&rows))
}

pub fn token_delete(state_dir: &Path, id: &str) -> Result<String, CmdError> {
    TokenStore::new(state_dir).delete(id)?;
    Ok(format!("token {id} deleted\n"))
}

/// `node list`: every node record, with `connected` from `status.json` when a
/// controller is running.
pub fn node_list(state_dir: &Path, json: bool) -> Result<String, CmdError> {
    let records = NodeStore::new(state_dir).list()?;
    let status = read_status(state_dir)
        .ok()
        .filter(|s| pid_alive(s.controller_pid));
    let connected = |node: &str| {
        status
            .as_ref()
            .map(|s| s.nodes.get(node).is_some_and(|n| n.connected))
    };
    if json {
        let items: Vec<Value> = records
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("a node record serializes");
                v["state"] = state(r).into();
                v["connected"] = connected(&r.node).into();
                v
            })
            .collect();
        return Ok(pretty(&Value::Array(items)));
    }
    if records.is_empty() {
        return Ok("no nodes\n".into());
    }
    let mut rows = vec![row([
        "NODE",
        "STATE",
        "SERIAL",
        "NOT AFTER",
        "ENROLLED",
        "CONNECTED",
    ])];
    let now = unix_now();
    for r in &records {
        let live = r.current().filter(|c| c.not_after_unix > now);
        rows.push(vec![
            r.node.clone(),
            state(r).into(),
            live.map_or_else(|| "-".into(), |c| c.serial.clone()),
            live.map_or_else(|| "-".into(), |c| rfc3339(c.not_after_unix)),
            rfc3339(r.enrolled_unix),
            match connected(&r.node) {
                None => "-".into(),
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
            },
        ]);
    }
    Ok(table(&rows))
}

fn state(r: &NodeRecord) -> &'static str {
    if r.revoked {
        "revoked"
    } else if r.token_id.is_some() {
        "enrolled"
    } else {
        // Only `issue --node` certificates so far.
        "issued"
    }
}

/// `node revoke`: the node's certificates are refused from now on; a running
/// controller ends its session within a second.
pub fn node_revoke(state_dir: &Path, node: &str) -> Result<String, CmdError> {
    let now = unix_now();
    let (was_revoked, count) = NodeStore::new(state_dir).modify(node, |record| {
        let mut r = record.ok_or_else(|| NodeError::Unknown(node.to_string()))?;
        let was_revoked = r.revoked;
        let before = r.revoked_serials.len();
        r.revoke(now);
        let count = r.revoked_serials.len().saturating_sub(before);
        Ok::<_, NodeError>((r, (was_revoked, count)))
    })?;
    let dir = state_dir.display();
    Ok(if was_revoked {
        format!("node {node} was already revoked\n")
    } else {
        format!(
            "node {node} revoked ({count} unexpired certificate(s)); a running controller ends its session within a second\n\
             to re-admit it: dpu-controller token create --state-dir {dir} --node {node}, then let it enroll\n"
        )
    })
}

/// `issue --node`: a certificate and key for `node`, recorded like an
/// enrolled one. Refused for a revoked node (re-admission is by token).
pub fn issue_node(
    state_dir: &Path,
    node: &str,
    days: u32,
    out: &Path,
) -> Result<Vec<PathBuf>, CmdError> {
    let ca = load_ca(state_dir)?;
    let now = unix_now();
    let issued = NodeStore::new(state_dir).modify(node, |record| {
        let mut r = record.unwrap_or_else(|| NodeRecord::new(node, now));
        if r.revoked {
            return Err(CmdError::Node(
                Revoked::Node {
                    node: node.to_string(),
                }
                .into(),
            ));
        }
        let issued = ca.issue_node(node, days)?;
        r.add_cert(
            CertEntry {
                serial: issued.info.serial.clone(),
                not_after_unix: issued.info.not_after_unix,
            },
            now,
        )?;
        Ok((r, issued))
    })?;
    Ok(write_issued(out, node, &issued, &ca)?)
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (cell, w) in r.iter().zip(&widths) {
            line += &format!("{cell:<w$}  ");
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("json serializes") + "\n"
}
