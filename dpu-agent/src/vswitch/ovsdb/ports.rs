//! Plugging and unplugging ports on our bridge (representors of attached VFs).
//! Each is one transaction, guarded so it is idempotent: plugging a port that is
//! already there only refreshes its `external_ids`; unplugging a missing one is a
//! no-op.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::atom::{as_uuid, map, named_uuid, row, set, set_elements, uuid};
use super::{Condition, Mutation, Op, OvsdbClient, OvsdbError, VSWITCH_DB};
use crate::compile::pipeline::TUNNEL_IFACE_ID;

fn rows(result: &Value) -> Vec<Value> {
    result
        .get("rows")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

async fn find_port(
    client: &OvsdbClient,
    port: &str,
) -> Result<Option<(String, Vec<String>)>, OvsdbError> {
    let r = client
        .transact(
            VSWITCH_DB,
            &[Op::select("Port", vec![Condition::eq("name", json!(port))])
                .with_columns(&["_uuid", "interfaces"])],
        )
        .await?;
    let Some(found) = r.first().map(rows).and_then(|v| v.into_iter().next()) else {
        return Ok(None);
    };
    let id = found
        .get("_uuid")
        .and_then(as_uuid)
        .unwrap_or_default()
        .to_string();
    let ifaces = found
        .get("interfaces")
        .map(|v| {
            set_elements(v)
                .into_iter()
                .filter_map(|u| as_uuid(u).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(Some((id, ifaces)))
}

/// Adds `port` (a system interface of the same name) to `bridge` with
/// `external_ids`, or refreshes the ids of the port that is already there.
pub async fn plug_port(
    client: &OvsdbClient,
    bridge: &str,
    port: &str,
    external_ids: &BTreeMap<String, String>,
) -> Result<(), OvsdbError> {
    let ids = map(external_ids.iter().map(|(k, v)| (k.clone(), v.clone())));
    plug_interface(client, bridge, port, row([("external_ids", ids)])).await
}

/// Adds (or refreshes) the bridge's flow-based Geneve port: `remote_ip=flow` and
/// `key=flow`, so one port reaches every other DPU, each flow setting `tun_dst`
/// and the VNI in `tun_id`.
pub async fn ensure_tunnel_port(
    client: &OvsdbClient,
    bridge: &str,
    port: &str,
) -> Result<(), OvsdbError> {
    let iface = row([
        ("type", json!("geneve")),
        ("options", map([("remote_ip", "flow"), ("key", "flow")])),
        ("external_ids", map([("iface-id", TUNNEL_IFACE_ID)])),
    ]);
    plug_interface(client, bridge, port, iface).await
}

/// Adds (or refreshes) an internal port `port` on `bridge` with `mac` and
/// `external_ids:iface-id=<iface_id>`: `ovs-vswitchd` makes a network device of
/// that name, which the agent then configures (the health-probe links).
pub async fn ensure_internal_port(
    client: &OvsdbClient,
    bridge: &str,
    port: &str,
    iface_id: &str,
    mac: &str,
) -> Result<(), OvsdbError> {
    let iface = row([
        ("type", json!("internal")),
        ("mac", json!(mac)),
        ("external_ids", map([("iface-id", iface_id)])),
    ]);
    plug_interface(client, bridge, port, iface).await
}

/// One transaction: the port and its interface (with `settings`) on `bridge`,
/// or, when the port exists, `settings` applied to its interfaces in place.
async fn plug_interface(
    client: &OvsdbClient,
    bridge: &str,
    port: &str,
    settings: super::atom::Row,
) -> Result<(), OvsdbError> {
    if let Some((_, ifaces)) = find_port(client, port).await? {
        let ops: Vec<Op> = ifaces
            .iter()
            .map(|i| {
                Op::update(
                    "Interface",
                    vec![Condition::eq("_uuid", uuid(i))],
                    settings.clone(),
                )
            })
            .collect();
        client.transact(VSWITCH_DB, &ops).await?;
        return Ok(());
    }
    let mut iface = settings;
    iface.insert("name".into(), json!(port));
    let ops = [
        Op::insert("Interface", iface).with_uuid_name("iface"),
        Op::insert(
            "Port",
            row([
                ("name", json!(port)),
                ("interfaces", set([named_uuid("iface")])),
            ]),
        )
        .with_uuid_name("port"),
        Op::mutate(
            "Bridge",
            vec![Condition::eq("name", json!(bridge))],
            vec![Mutation::insert("ports", set([named_uuid("port")]))],
        ),
    ];
    let r = client.transact(VSWITCH_DB, &ops).await?;
    if r.get(2)
        .and_then(|m| m.get("count"))
        .and_then(Value::as_u64)
        == Some(0)
    {
        return Err(OvsdbError::State(format!("bridge {bridge} does not exist")));
    }
    Ok(())
}

/// Removes `port` from `bridge`; returns whether it was there.
pub async fn unplug_port(
    client: &OvsdbClient,
    bridge: &str,
    port: &str,
) -> Result<bool, OvsdbError> {
    let Some((id, _)) = find_port(client, port).await? else {
        return Ok(false);
    };
    // The Port and its Interfaces are not root rows: dropping the reference from
    // the bridge garbage-collects them.
    client
        .transact(
            VSWITCH_DB,
            &[Op::mutate(
                "Bridge",
                vec![Condition::eq("name", json!(bridge))],
                vec![Mutation::delete("ports", set([uuid(&id)]))],
            )],
        )
        .await?;
    Ok(true)
}
