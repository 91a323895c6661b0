//! The OVSDB client and session against a real `ovsdb-server` (and `ovs-vswitchd` where
//! a bridge must really exist), each test with its own private OVS from the lab. Every
//! wait is bounded; results are checked with `ovs-vsctl`/`ovs-ofctl`, not only with the
//! client's own view.

use std::collections::BTreeMap;
use std::time::Duration;

use dpu_agent::vswitch::ovsdb::atom::{
    as_uuid, map, map_get, named_uuid, row, set, set_elements, uuid,
};
use dpu_agent::vswitch::ovsdb::{
    ensure_bridge, BridgeSpec, Condition, EnsureOutcome, MonitorRequest, Mutation, Op, OvsdbClient,
    OvsdbError, OvsdbSession, OvsdbState, TableCache, WaitUntil, VSWITCH_DB,
};
use dpu_lab::ovs::OvsInstance;
use serde_json::{json, Value};
use tokio::sync::watch;

const STATE_BOUND: Duration = Duration::from_secs(10);

/// `ovs-vsctl` with whitespace-separated arguments.
fn vsctl(ovs: &OvsInstance, args: &str) -> String {
    ovs.vsctl(&args.split_whitespace().collect::<Vec<_>>())
        .unwrap()
}

fn spec(name: &str) -> BridgeSpec {
    BridgeSpec {
        name: name.into(),
        datapath_type: "netdev".into(),
        hw_offload: false,
    }
}

/// Waits (bounded) until the session state satisfies `pred`.
async fn wait_state(
    rx: &mut watch::Receiver<OvsdbState>,
    what: &str,
    pred: impl FnMut(&OvsdbState) -> bool,
) -> OvsdbState {
    let result = tokio::time::timeout(STATE_BOUND, rx.wait_for(pred))
        .await
        .map(|r| r.map(|state| state.clone()));
    match result {
        Ok(Ok(state)) => state,
        Ok(Err(_)) => panic!("session stopped while waiting for {what}"),
        Err(_) => panic!(
            "timed out waiting for {what}; last state: {:?}",
            *rx.borrow()
        ),
    }
}

/// The rows of the `i`th select result.
fn rows(results: &[Value], i: usize) -> Vec<Value> {
    results[i]["rows"].as_array().cloned().unwrap_or_default()
}

async fn root_uuid(client: &OvsdbClient) -> String {
    let results = client
        .transact(
            VSWITCH_DB,
            &[Op::select("Open_vSwitch", vec![]).with_columns(&["_uuid"])],
        )
        .await
        .unwrap();
    as_uuid(&rows(&results, 0)[0]["_uuid"]).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transact_insert_update_mutate_wait_delete_round_trip() {
    let ovs = OvsInstance::start_db_only().unwrap();
    let client = OvsdbClient::connect(&ovs.db_sock()).await.unwrap();
    assert!(client
        .list_dbs()
        .await
        .unwrap()
        .contains(&VSWITCH_DB.to_string()));
    let root = root_uuid(&client).await;
    let by_name = || vec![Condition::eq("name", json!("rt0"))];

    // insert with uuid-names, referenced within the same transaction
    let results = client
        .transact(
            VSWITCH_DB,
            &[
                Op::insert(
                    "Interface",
                    row([("name", json!("rt0")), ("type", json!("internal"))]),
                )
                .with_uuid_name("i"),
                Op::insert(
                    "Port",
                    row([("name", json!("rt0")), ("interfaces", named_uuid("i"))]),
                )
                .with_uuid_name("p"),
                Op::insert(
                    "Bridge",
                    row([("name", json!("rt0")), ("ports", named_uuid("p"))]),
                )
                .with_uuid_name("b"),
                Op::mutate(
                    "Open_vSwitch",
                    vec![Condition::eq("_uuid", uuid(&root))],
                    vec![Mutation::insert("bridges", set([named_uuid("b")]))],
                ),
            ],
        )
        .await
        .unwrap();
    let bridge_uuid = as_uuid(&results[2]["uuid"]).unwrap().to_string();
    assert_eq!(vsctl(&ovs, "list-br"), "rt0");
    assert_eq!(vsctl(&ovs, "get Bridge rt0 _uuid"), bridge_uuid);

    // update, then mutate a map column, then read back with select
    let results = client
        .transact(
            VSWITCH_DB,
            &[
                Op::update(
                    "Bridge",
                    by_name(),
                    row([("external_ids", map([("a", "1")]))]),
                ),
                Op::mutate(
                    "Bridge",
                    by_name(),
                    vec![Mutation::insert("external_ids", map([("b", "2")]))],
                ),
                Op::select("Bridge", by_name()).with_columns(&["external_ids"]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(results[0]["count"], 1);
    assert_eq!(results[1]["count"], 1);
    let ids = &rows(&results, 2)[0]["external_ids"];
    assert_eq!(map_get(ids, "a"), Some(&json!("1")));
    assert_eq!(map_get(ids, "b"), Some(&json!("2")));
    assert_eq!(vsctl(&ovs, "get Bridge rt0 external_ids:b"), "\"2\"");

    // a wait that holds lets the transaction through; one that does not aborts it
    let holds = Op::wait(
        "Bridge",
        by_name(),
        &["name"],
        WaitUntil::Equal,
        vec![row([("name", json!("rt0"))])],
    );
    client.transact(VSWITCH_DB, &[holds]).await.unwrap();
    let fails = Op::wait("Bridge", by_name(), &["name"], WaitUntil::Equal, vec![]);
    let update = Op::update("Bridge", by_name(), row([("fail_mode", json!("secure"))]));
    let err = client
        .transact(VSWITCH_DB, &[fails, update])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OvsdbError::OpFailed { index: 0, op, error, .. } if op == "wait" && error == "timed out"),
        "{err}"
    );
    assert_eq!(vsctl(&ovs, "get Bridge rt0 fail_mode"), "[]");

    // a bad op is reported with its index and the server's error
    let bad = Op::update("Bridge", by_name(), row([("no_such_column", json!(1))]));
    let err = client
        .transact(VSWITCH_DB, &[Op::select("Bridge", vec![]), bad])
        .await
        .unwrap_err();
    assert!(
        matches!(err, OvsdbError::OpFailed { index: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("op #1 (update)"), "{err}");

    // delete: unlink from the root row and delete the row
    let results = client
        .transact(
            VSWITCH_DB,
            &[
                Op::mutate(
                    "Open_vSwitch",
                    vec![Condition::eq("_uuid", uuid(&root))],
                    vec![Mutation::delete("bridges", set([uuid(&bridge_uuid)]))],
                ),
                Op::delete("Bridge", by_name()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(results[1]["count"], 1);
    assert_eq!(vsctl(&ovs, "list-br"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_cond_follows_real_set_and_map_diffs() {
    let ovs = OvsInstance::start_db_only().unwrap();
    let client = OvsdbClient::connect(&ovs.db_sock()).await.unwrap();
    let schema = client.get_schema(VSWITCH_DB).await.unwrap();
    let requests = BTreeMap::from([(
        "Bridge".to_string(),
        MonitorRequest::columns(&["name", "ports", "external_ids"])
            .with_conditions(vec![Condition::eq("name", json!("mon0"))]),
    )]);
    let (initial, mut monitor) = client
        .monitor_cond(VSWITCH_DB, "t", &requests)
        .await
        .unwrap();
    let mut cache = TableCache::new(schema);
    cache.apply(&initial).unwrap();
    assert_eq!(cache.table("Bridge").count(), 0);

    // Each step changes the db with ovs-vsctl, then the cache must equal what
    // ovs-vsctl reads back once the update arrived.
    let steps = [
        "add-br mon0 -- set Bridge mon0 external_ids:a=1 external_ids:b=2",
        "add-br other0", // filtered out by the condition
        "set Bridge mon0 external_ids:b=3 external_ids:c=4",
        "remove Bridge mon0 external_ids a",
        "add-port mon0 q1 -- add-port mon0 q2",
        "del-port mon0 q1",
    ];
    for step in steps {
        vsctl(&ovs, step);
        if step.contains("other0") {
            continue;
        }
        let update = tokio::time::timeout(STATE_BOUND, monitor.next())
            .await
            .unwrap()
            .unwrap();
        assert!(!update["Bridge"].is_empty(), "{step:?}: {update:?}");
        cache.apply(&update).unwrap();
        let (_, bridge) = cache.table("Bridge").next().unwrap();
        let mut ids: Vec<(String, String)> = dpu_agent::vswitch::ovsdb::atom::map_entries(
            bridge.get("external_ids").unwrap_or(&json!(["map", []])),
        )
        .into_iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect();
        ids.sort();
        let expected = vsctl(&ovs, "get Bridge mon0 external_ids");
        let rendered = ids
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>();
        assert_eq!(
            format!("{{{}}}", rendered.join(", ")),
            expected,
            "after {step:?}"
        );
        let mut ports: Vec<String> = bridge
            .get("ports")
            .map(set_elements)
            .unwrap_or_default()
            .into_iter()
            .filter_map(as_uuid)
            .map(str::to_string)
            .collect();
        ports.sort();
        let expected = vsctl(&ovs, "get Bridge mon0 ports");
        assert_eq!(
            format!("[{}]", ports.join(", ")),
            expected,
            "after {step:?}"
        );
    }
    assert_eq!(
        cache.table("Bridge").count(),
        1,
        "other0 must not be monitored"
    );
}

/// ovsdb-server only sends inactivity probes on remotes with a probe interval. A Manager
/// row with `inactivity_probe=1000` gives us one: the server sends `echo` after 1 s of
/// silence and drops the connection 1 s later if unanswered. Staying silent for 3.5 s
/// and still being connected proves the echoes were answered correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_echo_is_answered_and_connection_survives_inactivity_probe() {
    let ovs = OvsInstance::start_db_only().unwrap();
    ovs.db_appctl(&[
        "ovsdb-server/add-remote",
        "db:Open_vSwitch,Open_vSwitch,manager_options",
    ])
    .unwrap();
    let probe_sock = ovs.dir().join("probe.sock");
    vsctl(
        &ovs,
        &format!(
            "-- --id=@m create Manager target=\"punix:{}\" inactivity_probe=1000 \
             -- add Open_vSwitch . manager_options @m",
            probe_sock.display()
        ),
    );
    let deadline = std::time::Instant::now() + STATE_BOUND;
    while !probe_sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            probe_sock.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let client = OvsdbClient::connect(&probe_sock).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        !client.is_closed(),
        "server dropped the connection: echo not answered"
    );
    assert!(
        client.echoes_answered() >= 2,
        "only {} echoes",
        client.echoes_answered()
    );
    client.echo().await.unwrap();
    assert!(client.list_dbs().await.is_ok());
    let log = std::fs::read_to_string(ovs.dir().join("ovsdb-server.log")).unwrap();
    assert!(!log.contains("inactivity probe"), "server log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ensures_bridge_and_tracks_ports() {
    dpu_lab::prereq::assert_root_and_ovs();
    let ovs = OvsInstance::start().unwrap();
    let session = OvsdbSession::spawn(ovs.db_sock(), spec("br-t"));
    let mut state = session.state();
    let ready = wait_state(&mut state, "bridge ready", |s| {
        s.connected && s.bridge_ready
    })
    .await;
    assert_eq!(ready.reconnects, 0);
    assert_eq!(ready.last_error, None);
    assert!(ready.ports.is_empty());

    let get = |column: &str| vsctl(&ovs, &format!("get Bridge br-t {column}"));
    assert_eq!(get("fail_mode"), "secure");
    assert_eq!(get("protocols"), "[OpenFlow15]");
    assert_eq!(get("datapath_type"), "netdev");
    let offload = vsctl(&ovs, "get Open_vSwitch . other_config:hw-offload");
    assert_eq!(offload, "\"false\"");
    assert!(
        ovs.dump_flows("br-t").unwrap().is_empty(),
        "secure bridge starts without flows"
    );

    // ensure again: idempotent, same bridge row, an installed flow survives
    ovs.ofctl(&[
        "add-flow",
        &ovs.mgmt("br-t"),
        "table=0,priority=5,actions=drop",
    ])
    .unwrap();
    let bridge_uuid = get("_uuid");
    let client = session.client().expect("session is connected");
    let outcome = ensure_bridge(&client, &spec("br-t")).await.unwrap();
    assert_eq!(outcome, EnsureOutcome::Existing);
    assert_eq!(get("_uuid"), bridge_uuid);
    assert_eq!(
        ovs.dump_flows("br-t").unwrap(),
        vec!["priority=5 actions=drop".to_string()]
    );

    // a port with an iface-id appears with the ofport OVS assigned
    vsctl(
        &ovs,
        "add-port br-t p1 -- set Interface p1 type=internal external_ids:iface-id=web-1",
    );
    let with_port = wait_state(&mut state, "port web-1", |s| s.ports.contains_key("web-1")).await;
    let fact = &with_port.ports["web-1"];
    assert_eq!(fact.interface, "p1");
    assert!(fact.ofport > 0);
    assert_eq!(
        vsctl(&ovs, "get Interface p1 ofport"),
        fact.ofport.to_string()
    );
    // a port without an iface-id is not reported
    vsctl(&ovs, "add-port br-t p2 -- set Interface p2 type=internal");

    vsctl(&ovs, "del-port br-t p1");
    let gone = wait_state(&mut state, "port web-1 gone", |s| s.ports.is_empty()).await;
    assert!(gone.connected && gone.bridge_ready);

    // a bridge deleted behind the agent's back is recreated with the spec's settings
    vsctl(&ovs, "del-br br-t");
    let deadline = std::time::Instant::now() + STATE_BOUND;
    while ovs.vsctl(&["br-exists", "br-t"]).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "br-t was not recreated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(get("_uuid"), bridge_uuid);
    assert_eq!(get("fail_mode"), "secure");
    wait_state(&mut state, "recreated bridge ready", |s| s.bridge_ready).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reconnects_after_ovsdb_server_restart() {
    dpu_lab::prereq::assert_root_and_ovs();
    let ovs = OvsInstance::start().unwrap();
    let session = OvsdbSession::spawn(ovs.db_sock(), spec("br-r"));
    let mut state = session.state();
    wait_state(&mut state, "bridge ready", |s| {
        s.connected && s.bridge_ready
    })
    .await;
    vsctl(
        &ovs,
        "add-port br-r p1 -- set Interface p1 type=internal external_ids:iface-id=web-1",
    );
    let before = wait_state(&mut state, "port web-1", |s| s.ports.contains_key("web-1")).await;

    ovs.stop_ovsdb_server().unwrap();
    let down = wait_state(&mut state, "disconnect", |s| !s.connected).await;
    assert!(down.last_error.is_some());
    ovs.start_ovsdb_server().unwrap();

    let after = wait_state(&mut state, "reconnected with port", |s| {
        s.connected && s.bridge_ready && s.reconnects >= 1 && s.ports.contains_key("web-1")
    })
    .await;
    assert_eq!(after.ports, before.ports);
    assert_eq!(after.last_error, None);
    assert_eq!(vsctl(&ovs, "get Bridge br-r fail_mode"), "secure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reports_a_missing_socket_and_keeps_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let session = OvsdbSession::spawn(dir.path().join("nope.sock"), spec("br-x"));
    let mut state = session.state();
    let failed = wait_state(&mut state, "an error", |s| s.last_error.is_some()).await;
    assert!(!failed.connected);
    let error = failed.last_error.unwrap();
    assert!(
        error.contains("cannot connect") && error.contains("nope.sock"),
        "{error}"
    );
}
