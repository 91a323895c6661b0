//! The client against a real `ovsdb-server` (Debian's `openvswitch-switch`)
//! that the test starts on a socket of its own, with the `Open_vSwitch` schema,
//! and stops by pid. A missing `ovsdb-server` or `ovsdb-tool` fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ovsdb::atom::row;
use ovsdb::{Condition, MonitorRequest, Mutation, Op, OvsdbClient, OvsdbError, TableCache};
use serde_json::json;

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const DB: &str = "Open_vSwitch";

/// An `ovsdb-server` in a temporary directory, killed on drop.
struct Server {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("conf.db");
        let sock = dir.path().join("db.sock");
        let status = Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(SCHEMA)
            .status()
            .expect("ovsdb-tool (openvswitch-common) is installed");
        assert!(status.success(), "ovsdb-tool create: {status}");
        let child = Command::new("ovsdb-server")
            .arg(&db)
            .arg(format!("--remote=punix:{}", sock.display()))
            .arg("--unixctl")
            .arg(dir.path().join("ovsdb-server.ctl"))
            .arg("--no-chdir")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ovsdb-server (openvswitch-switch) is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "ovsdb-server made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            sock,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(sock: &Path) -> OvsdbClient {
    OvsdbClient::connect(sock).await.unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn transact_and_monitor_against_a_real_server() {
    let server = Server::start();
    let client = connect(&server.sock).await;
    client.echo().await.unwrap();
    assert!(client.list_dbs().await.unwrap().contains(&DB.to_string()));

    // The root row, then a monitor of it: the initial rows, then an update2
    // for a mutation made on another connection.
    client
        .transact(DB, &[Op::insert(DB, row([("next_cfg", json!(1))]))])
        .await
        .unwrap();
    let mut cache = TableCache::new(client.get_schema(DB).await.unwrap());
    let mut tables = BTreeMap::new();
    tables.insert(
        DB.to_string(),
        MonitorRequest::columns(&["next_cfg", "external_ids"]),
    );
    let (initial, mut monitor) = client.monitor_cond(DB, "test", &tables).await.unwrap();
    cache.apply(&initial).unwrap();
    assert_eq!(cache.table(DB).count(), 1);

    let other = connect(&server.sock).await;
    other
        .transact(
            DB,
            &[Op::mutate(
                DB,
                vec![],
                vec![Mutation::insert(
                    "external_ids",
                    json!(["map", [["k", "v"]]]),
                )],
            )],
        )
        .await
        .unwrap();
    let update = tokio::time::timeout(Duration::from_secs(5), monitor.next())
        .await
        .expect("an update2 within 5 s")
        .expect("the monitor stays open");
    cache.apply(&update).unwrap();
    let (_, root) = cache.table(DB).next().unwrap();
    assert_eq!(
        root["external_ids"],
        json!(["map", [["k", "v"]]]),
        "{root:?}"
    );

    // The server's own refusal comes back as an error naming the call.
    let e = client
        .transact(
            DB,
            &[Op::update(
                DB,
                vec![Condition::eq("no_such_column", json!(1))],
                row([]),
            )],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, OvsdbError::Server { .. } | OvsdbError::OpFailed { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("no_such_column"), "{e}");
}
