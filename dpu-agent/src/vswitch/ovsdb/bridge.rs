//! The agent's bridge: [`BridgeSpec`] says what it must look like and [`ensure_bridge`]
//! makes the database say so, in one transaction guarded by a `wait` op. It creates the
//! bridge only when it is missing and otherwise updates columns in place, so it never
//! recreates a bridge or removes flows (changing `datapath_type` makes `ovs-vswitchd`
//! rebuild the datapath, so that case is logged loudly).

use serde_json::{json, Value};

use super::atom::{as_uuid, map, named_uuid, row, set, set_elements, uuid, Row};
use super::{Condition, Mutation, Op, WaitUntil};
use super::{OvsdbClient, OvsdbError};

/// The database the agent works in.
pub const VSWITCH_DB: &str = "Open_vSwitch";
/// The only OpenFlow version the agent speaks.
pub const OPENFLOW_VERSION: &str = "OpenFlow15";
/// How often a transaction that lost a race with another writer is retried.
const ENSURE_ATTEMPTS: usize = 3;

/// The bridge the agent owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    /// Bridge name, also the name of its internal port and interface.
    pub name: String,
    /// `netdev` (userspace datapath, the lab) or `system` (kernel datapath, a DPU).
    pub datapath_type: String,
    /// Value of `Open_vSwitch other_config:hw-offload`.
    pub hw_offload: bool,
}

impl BridgeSpec {
    /// Refuses a spec that OVS would reject later and less clearly.
    pub fn validate(&self) -> Result<(), OvsdbError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 15
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(OvsdbError::State(format!(
                "bridge name {:?} must be 1-15 characters of [A-Za-z0-9._-]",
                self.name
            )));
        }
        if !matches!(self.datapath_type.as_str(), "netdev" | "system") {
            return Err(OvsdbError::State(format!(
                "bridge {}: datapath_type {:?} must be \"netdev\" or \"system\"",
                self.name, self.datapath_type
            )));
        }
        Ok(())
    }

    /// Whether a `Bridge` row (as monitored or selected) already matches the spec.
    pub fn is_applied_to(&self, bridge: &Row) -> bool {
        let text = |column: &str| bridge.get(column).and_then(Value::as_str).unwrap_or("");
        let protocols: Vec<&Value> = bridge
            .get("protocols")
            .map(set_elements)
            .unwrap_or_default();
        text("name") == self.name
            && text("datapath_type") == self.datapath_type
            && text("fail_mode") == "secure"
            && protocols == [&json!(OPENFLOW_VERSION)]
    }

    fn settings(&self) -> Row {
        row([
            ("datapath_type", json!(self.datapath_type)),
            ("fail_mode", json!("secure")),
            ("protocols", set([json!(OPENFLOW_VERSION)])),
        ])
    }
}

/// What [`ensure_bridge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsureOutcome {
    /// The bridge was missing and has been created.
    Created,
    /// The bridge existed; its settings were (re)applied in place.
    Existing,
}

/// Makes the bridge exist with the spec's settings and sets `hw-offload`. Idempotent.
pub async fn ensure_bridge(
    client: &OvsdbClient,
    spec: &BridgeSpec,
) -> Result<EnsureOutcome, OvsdbError> {
    spec.validate()?;
    for attempt in 1..=ENSURE_ATTEMPTS {
        let (root_uuid, existing) = read_current(client, spec).await?;
        let (outcome, mut ops) = match &existing {
            None => (EnsureOutcome::Created, create_ops(spec, &root_uuid)),
            Some(bridge) => {
                let current = bridge
                    .get("datapath_type")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if current != spec.datapath_type {
                    tracing::warn!(
                        bridge = %spec.name, from = current, to = %spec.datapath_type,
                        "changing datapath_type of an existing bridge; ovs-vswitchd rebuilds its datapath"
                    );
                }
                (EnsureOutcome::Existing, update_ops(spec))
            }
        };
        ops.push(hw_offload_op(&root_uuid, spec.hw_offload));
        match client.transact(VSWITCH_DB, &ops).await {
            Ok(_) => {
                if outcome == EnsureOutcome::Created {
                    tracing::info!(bridge = %spec.name, datapath = %spec.datapath_type, "created bridge");
                }
                return Ok(outcome);
            }
            // Op 0 is the wait: another writer created or deleted the bridge meanwhile.
            Err(OvsdbError::OpFailed {
                index: 0, error, ..
            }) if error == "timed out" => {
                tracing::debug!(bridge = %spec.name, attempt, "bridge changed under us; retrying");
            }
            Err(e) => return Err(e),
        }
    }
    Err(OvsdbError::State(format!(
        "bridge {}: another writer kept changing it; gave up after {ENSURE_ATTEMPTS} attempts",
        spec.name
    )))
}

/// The `Open_vSwitch` row's uuid and our bridge's row, if it exists.
async fn read_current(
    client: &OvsdbClient,
    spec: &BridgeSpec,
) -> Result<(String, Option<Row>), OvsdbError> {
    let ops = [
        Op::select("Open_vSwitch", vec![]).with_columns(&["_uuid"]),
        Op::select("Bridge", vec![by_name(spec)]).with_columns(&["_uuid", "datapath_type"]),
    ];
    let results = client.transact(VSWITCH_DB, &ops).await?;
    let rows = |i: usize| -> Result<Vec<Row>, OvsdbError> {
        let rows = results[i].get("rows").cloned().unwrap_or(Value::Null);
        serde_json::from_value(rows.clone())
            .map_err(|_| OvsdbError::shape("select result has no \"rows\" array", &rows))
    };
    let roots = rows(0)?;
    let root_uuid = match roots.as_slice() {
        [root] => root.get("_uuid").and_then(as_uuid).map(str::to_string),
        _ => None,
    };
    let root_uuid = root_uuid.ok_or_else(|| {
        OvsdbError::State(format!(
            "the Open_vSwitch table has {} rows, expected 1 (was `ovs-vsctl init` run?)",
            roots.len()
        ))
    })?;
    Ok((root_uuid, rows(1)?.into_iter().next()))
}

fn by_name(spec: &BridgeSpec) -> Condition {
    Condition::eq("name", json!(spec.name))
}

/// Bridge + internal Port + Interface named like the bridge, linked into the root row,
/// guarded by "no bridge of that name exists".
fn create_ops(spec: &BridgeSpec, root_uuid: &str) -> Vec<Op> {
    let mut bridge = spec.settings();
    bridge.insert("name".into(), json!(spec.name));
    bridge.insert("ports".into(), named_uuid("port"));
    vec![
        Op::wait(
            "Bridge",
            vec![by_name(spec)],
            &["name"],
            WaitUntil::Equal,
            vec![],
        ),
        Op::insert(
            "Interface",
            row([("name", json!(spec.name)), ("type", json!("internal"))]),
        )
        .with_uuid_name("iface"),
        Op::insert(
            "Port",
            row([
                ("name", json!(spec.name)),
                ("interfaces", named_uuid("iface")),
            ]),
        )
        .with_uuid_name("port"),
        Op::insert("Bridge", bridge).with_uuid_name("bridge"),
        Op::mutate(
            "Open_vSwitch",
            vec![Condition::eq("_uuid", uuid(root_uuid))],
            vec![Mutation::insert("bridges", set([named_uuid("bridge")]))],
        ),
    ]
}

/// Settings applied in place, guarded by "the bridge still exists".
fn update_ops(spec: &BridgeSpec) -> Vec<Op> {
    let exists = vec![row([("name", json!(spec.name))])];
    vec![
        Op::wait(
            "Bridge",
            vec![by_name(spec)],
            &["name"],
            WaitUntil::Equal,
            exists,
        ),
        Op::update("Bridge", vec![by_name(spec)], spec.settings()),
    ]
}

/// Replaces the one key `hw-offload` of `other_config`, leaving the other keys alone.
fn hw_offload_op(root_uuid: &str, on: bool) -> Op {
    Op::mutate(
        "Open_vSwitch",
        vec![Condition::eq("_uuid", uuid(root_uuid))],
        vec![
            Mutation::delete("other_config", set([json!("hw-offload")])),
            Mutation::insert("other_config", map([("hw-offload", on.to_string())])),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BridgeSpec {
        BridgeSpec {
            name: "br-dpu".into(),
            datapath_type: "netdev".into(),
            hw_offload: false,
        }
    }

    #[test]
    fn spec_validation() {
        assert!(spec().validate().is_ok());
        let long = BridgeSpec {
            name: "x".repeat(16),
            ..spec()
        };
        assert!(long.validate().is_err());
        let bad_dp = BridgeSpec {
            datapath_type: "dpdk".into(),
            ..spec()
        };
        assert!(bad_dp
            .validate()
            .unwrap_err()
            .to_string()
            .contains("datapath_type"));
    }

    #[test]
    fn create_transaction_is_guarded_and_linked() {
        let ops: Vec<Value> = create_ops(&spec(), "r00t")
            .iter()
            .map(Op::to_json)
            .collect();
        assert_eq!(
            ops[0],
            json!({"op": "wait", "table": "Bridge", "where": [["name", "==", "br-dpu"]],
                   "columns": ["name"], "until": "==", "rows": [], "timeout": 0})
        );
        assert_eq!(ops[3]["row"]["ports"], json!(["named-uuid", "port"]));
        assert_eq!(ops[3]["row"]["protocols"], json!(["set", ["OpenFlow15"]]));
        assert_eq!(
            ops[4]["mutations"],
            json!([["bridges", "insert", ["set", [["named-uuid", "bridge"]]]]])
        );
    }

    #[test]
    fn applied_check_reads_monitored_row() {
        let mut bridge = spec().settings();
        bridge.insert("name".into(), json!("br-dpu"));
        assert!(spec().is_applied_to(&bridge));
        bridge.insert("protocols".into(), json!("OpenFlow15")); // one-element set as atom
        assert!(spec().is_applied_to(&bridge));
        bridge.insert("fail_mode".into(), json!(["set", []]));
        assert!(!spec().is_applied_to(&bridge));
    }
}
