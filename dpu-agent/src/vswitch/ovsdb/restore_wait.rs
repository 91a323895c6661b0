//! `other_config:flow-restore-wait` of the `Open_vSwitch` row. While it is
//! `true`, a (re)starting `ovs-vswitchd` neither flushes the datapath's flows nor
//! handles new packets with tables that are still being refilled; the agent sets
//! it when `ovs-vswitchd` goes away, reinstalls everything once it is back, then
//! removes it and reads it back.

use serde_json::json;

use super::atom::{map, map_get, set};
use super::{Mutation, Op, OvsdbClient, OvsdbError, VSWITCH_DB};

const KEY: &str = "flow-restore-wait";

/// Sets (`true`) or removes the key on the `Open_vSwitch` row, in one transaction.
pub async fn set_flow_restore_wait(client: &OvsdbClient, on: bool) -> Result<(), OvsdbError> {
    let mut mutations = vec![Mutation::delete("other_config", set([json!(KEY)]))];
    if on {
        mutations.push(Mutation::insert("other_config", map([(KEY, "true")])));
    }
    client
        .transact(VSWITCH_DB, &[Op::mutate("Open_vSwitch", vec![], mutations)])
        .await
        .map(drop)
}

/// Whether the key is set to `true` (read from the database, not a cache).
pub async fn flow_restore_wait(client: &OvsdbClient) -> Result<bool, OvsdbError> {
    let reply = client
        .transact(
            VSWITCH_DB,
            &[Op::select("Open_vSwitch", vec![]).with_columns(&["other_config"])],
        )
        .await?;
    let first = reply.first().cloned().unwrap_or_default();
    let rows = first
        .get("rows")
        .and_then(|r| r.as_array())
        .ok_or_else(|| OvsdbError::shape("select of Open_vSwitch has no rows", &first))?;
    Ok(rows.iter().any(|row| {
        row.get("other_config")
            .and_then(|c| map_get(c, KEY))
            .and_then(|v| v.as_str())
            == Some("true")
    }))
}
