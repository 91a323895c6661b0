//! `dpu-controller token …`, `node …` and `issue --node`: bootstrap tokens and
//! node records from the command line, in the store named by --state-dir (the
//! embedded one) or --etcd, so they work from any machine that reaches the
//! store. Each function returns what to print.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::cli::StoreArgs;
use crate::kv::{KvError, Store};
use crate::nodes::{CertEntry, NodeError, NodeRecord, NodeStore, Revoked};
use crate::pki::{load_ca, write_issued, PkiError, PkiPaths, RESERVED_NAMES};
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
    #[error(transparent)]
    Kv(#[from] KvError),
}

impl CmdError {
    /// 2 for what the operator asked wrongly, 4 for a missing or unusable CA,
    /// 1 for the rest (the store, I/O).
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
pub async fn token_create(
    store: &StoreArgs,
    node: &str,
    ttl: Duration,
) -> Result<String, CmdError> {
    match &store.state_dir {
        Some(state_dir) if store.etcd.options().is_none() => {
            let paths = PkiPaths::new(state_dir);
            if !paths.ca_cert.exists() {
                // A token for a state directory without a CA could never be used.
                return Err(PkiError::NoCa(paths.dir).into());
            }
            // Nor could one for a name no node may have (the controller's own).
            load_ca(state_dir)?.check_node_name(node)?;
        }
        // On etcd the CA is on the replicas: the names every controller keeps.
        _ => {
            if let Some(r) = RESERVED_NAMES.iter().find(|r| r.eq_ignore_ascii_case(node)) {
                return Err(PkiError::BadName {
                    name: node.to_string(),
                    message: format!("{r:?} is a name of the controller itself"),
                }
                .into());
            }
        }
    }
    let store = store.open().await?;
    let (token, _) = TokenStore::new(store).create(node, ttl, unix_now()).await?;
    Ok(format!("{token}\n"))
}

/// `token list`: id, node, state and times; never secrets (only their hashes
/// are stored, and those are not shown either).
pub async fn token_list(store: &StoreArgs, json: bool) -> Result<String, CmdError> {
    let tokens = TokenStore::new(store.open().await?)
        .list(unix_now())
        .await?;
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

pub async fn token_delete(store: &StoreArgs, id: &str) -> Result<String, CmdError> {
    TokenStore::new(store.open().await?).delete(id).await?;
    Ok(format!("token {id} deleted\n"))
}

/// Which nodes are connected: from `status.json` when a controller runs on
/// this state directory, from every replica's status in the store on etcd.
async fn connected_nodes(args: &StoreArgs, store: &Store) -> Option<Vec<String>> {
    let doc = match (&args.state_dir, store) {
        (_, Store::Etcd(_)) => crate::statussync::read(store).await.ok(),
        (Some(dir), Store::Local(_)) => read_status(dir)
            .ok()
            .filter(|s| pid_alive(s.controller_pid)),
        (None, _) => None,
    }?;
    Some(
        doc.nodes
            .iter()
            .filter(|(_, n)| n.connected)
            .map(|(k, _)| k.clone())
            .collect(),
    )
}

/// `node list`: every node record, with `connected` when a controller's
/// status says.
pub async fn node_list(args: &StoreArgs, json: bool) -> Result<String, CmdError> {
    let store = args.open().await?;
    let records = NodeStore::new(store.clone()).list().await?;
    let status = connected_nodes(args, &store).await;
    let connected = |node: &str| status.as_ref().map(|s| s.iter().any(|n| n == node));
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

/// `node revoke`: the node's certificates are refused from now on; every
/// running replica ends its sessions within a second.
pub async fn node_revoke(store: &StoreArgs, node: &str) -> Result<String, CmdError> {
    let now = unix_now();
    let nodes = NodeStore::new(store.open().await?);
    let (was_revoked, count) = nodes
        .modify(node, |record| {
            let mut r = record.ok_or_else(|| NodeError::Unknown(node.to_string()))?;
            let was_revoked = r.revoked;
            let before = r.revoked_serials.len();
            r.revoke(now);
            let count = r.revoked_serials.len().saturating_sub(before);
            Ok::<_, NodeError>((r, (was_revoked, count)))
        })
        .await?;
    Ok(if was_revoked {
        format!("node {node} was already revoked\n")
    } else {
        format!(
            "node {node} revoked ({count} unexpired certificate(s)); every running controller replica ends its session within a second\n\
             to re-admit it: dpu-controller token create {} --node {node}, then let it enroll\n",
            store_flags(store)
        )
    })
}

/// The store options as the operator gave them, for hints.
fn store_flags(store: &StoreArgs) -> String {
    match (&store.state_dir, store.etcd.options()) {
        (_, Some(o)) => format!("--etcd {} (and its TLS options)", o.endpoints.join(",")),
        (Some(d), None) => format!("--state-dir {}", d.display()),
        (None, None) => String::new(),
    }
}

/// `issue --node`: a certificate and key for `node`, signed with the CA in
/// `state_dir` and recorded like an enrolled one in the store (`etcd`, else
/// the embedded one in `state_dir`). Refused for a revoked node (re-admission
/// is by token).
pub async fn issue_node(
    state_dir: &Path,
    etcd: Option<crate::kv::EtcdOptions>,
    node: &str,
    days: u32,
    out: &Path,
) -> Result<Vec<PathBuf>, CmdError> {
    let ca = load_ca(state_dir)?;
    let store = match etcd {
        Some(o) => Store::Etcd(crate::kv::EtcdStore::connect(o).await?),
        None => Store::Local(crate::kv::LocalStore::open(
            &state_dir.join(crate::cli::STORE_DIR),
        )?),
    };
    let now = unix_now();
    let issued = NodeStore::new(store)
        .modify(node, |record| {
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
        })
        .await?;
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
