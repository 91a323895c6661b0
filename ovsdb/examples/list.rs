//! Lists the databases of an `ovsdb-server` and the bridges of its
//! `Open_vSwitch` database, then prints every change to the Bridge table
//! until interrupted.
//!
//! ```sh
//! cargo run -p ovsdb --example list -- /run/openvswitch/db.sock
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use ovsdb::{MonitorRequest, Op, OvsdbClient, TableCache};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| "/run/openvswitch/db.sock".into());
    let client = OvsdbClient::connect(&path).await?;
    println!("databases: {:?}", client.list_dbs().await?);
    let bridges = client
        .transact("Open_vSwitch", &[Op::select("Bridge", vec![])])
        .await?;
    println!("bridges: {bridges:?}");

    let mut cache = TableCache::new(client.get_schema("Open_vSwitch").await?);
    let mut tables = BTreeMap::new();
    tables.insert("Bridge".to_string(), MonitorRequest::columns(&["name"]));
    let (initial, mut monitor) = client
        .monitor_cond("Open_vSwitch", "example", &tables)
        .await?;
    cache.apply(&initial)?;
    while let Some(update) = monitor.next().await {
        cache.apply(&update)?;
        println!("Bridge changed: {update:?}");
    }
    Ok(())
}
