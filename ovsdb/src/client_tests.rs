//! Tests of the connection task against a scripted fake server on a unix socket.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::*;
use crate::atom::row;
use crate::RowUpdate;

const BOUND: Duration = Duration::from_secs(5);

struct FakeServer {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    listener: UnixListener,
}

impl FakeServer {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.sock");
        let listener = UnixListener::bind(&path).unwrap();
        FakeServer {
            _dir: dir,
            path,
            listener,
        }
    }

    async fn accept(&self) -> Peer {
        let (stream, _) = tokio::time::timeout(BOUND, self.listener.accept())
            .await
            .unwrap()
            .unwrap();
        Peer {
            stream,
            decoder: FrameDecoder::new(1 << 20),
        }
    }
}

struct Peer {
    stream: UnixStream,
    decoder: FrameDecoder,
}

impl Peer {
    async fn recv(&mut self) -> Value {
        loop {
            if let Some(message) = self.decoder.next_message().unwrap() {
                return message;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(BOUND, self.stream.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "client closed the connection");
            self.decoder.push(&buf[..n]);
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }
}

fn options(call_timeout: Duration) -> ClientOptions {
    ClientOptions {
        call_timeout,
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn server_echo_is_answered_with_same_id_and_params() {
    let server = FakeServer::new();
    let client = OvsdbClient::connect(&server.path).await.unwrap();
    let mut peer = server.accept().await;
    peer.send_raw(br#"{"id":"echo","meth"#).await;
    peer.send_raw(br#"od":"echo","params":["x",1]}"#).await;
    let reply = peer.recv().await;
    assert_eq!(
        reply,
        json!({"id": "echo", "result": ["x", 1], "error": null})
    );
    assert_eq!(client.echoes_answered(), 1);
}

#[tokio::test]
async fn replies_are_matched_to_calls_by_id() {
    let server = FakeServer::new();
    let client = OvsdbClient::connect(&server.path).await.unwrap();
    let mut peer = server.accept().await;
    let (a, b) = (client.clone(), client.clone());
    let first = tokio::spawn(async move { a.call("list_dbs", json!([])).await });
    let second = tokio::spawn(async move { b.call("get_schema", json!(["db"])).await });
    let (r1, r2) = (peer.recv().await, peer.recv().await);
    // Answer both in one write, in reverse order, each with its method name as result.
    let answer = |r: &Value| json!({"id": r["id"], "result": r["method"], "error": null});
    let bytes = format!("{}{}", answer(&r2), answer(&r1));
    peer.send_raw(bytes.as_bytes()).await;
    assert_eq!(first.await.unwrap().unwrap(), json!("list_dbs"));
    assert_eq!(second.await.unwrap().unwrap(), json!("get_schema"));
}

#[tokio::test]
async fn call_times_out_naming_the_method() {
    let server = FakeServer::new();
    let client = OvsdbClient::connect_with(&server.path, options(Duration::from_millis(100)))
        .await
        .unwrap();
    let _peer = server.accept().await;
    let err = client.transact("db", &[]).await.unwrap_err();
    assert!(
        matches!(&err, OvsdbError::Timeout { method, .. } if method == "transact"),
        "{err}"
    );
}

#[tokio::test]
async fn pending_calls_fail_when_the_server_goes_away() {
    let server = FakeServer::new();
    let client = OvsdbClient::connect(&server.path).await.unwrap();
    let mut peer = server.accept().await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.echo().await }
    });
    peer.recv().await;
    drop(peer);
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, OvsdbError::Disconnected { .. }), "{err}");
    tokio::time::timeout(BOUND, client.closed()).await.unwrap();
    assert!(client.is_closed());
}

#[tokio::test]
async fn oversized_message_closes_the_connection() {
    let server = FakeServer::new();
    let small = ClientOptions {
        max_message_bytes: 1024,
        ..ClientOptions::default()
    };
    let client = OvsdbClient::connect_with(&server.path, small)
        .await
        .unwrap();
    let mut peer = server.accept().await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.echo().await }
    });
    peer.recv().await;
    peer.send_raw(format!("{{\"id\":1,\"result\":\"{}", "a".repeat(4096)).as_bytes())
        .await;
    let err = call.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("1024-byte bound"), "{err}");
}

#[tokio::test]
async fn failed_op_is_named_by_index() {
    let server = FakeServer::new();
    let client = OvsdbClient::connect(&server.path).await.unwrap();
    let mut peer = server.accept().await;
    let ops = [
        Op::select("T", vec![]),
        Op::update("T", vec![], row([("a", json!(1))])),
    ];
    let call = tokio::spawn(async move { client.transact("db", &ops).await });
    let request = peer.recv().await;
    assert_eq!(request["method"], "transact");
    assert_eq!(request["params"][0], "db");
    assert_eq!(request["params"][2]["op"], "update");
    let reply = json!({"id": request["id"], "error": null,
        "result": [{"rows": []}, {"error": "constraint violation", "details": "bad a"}]});
    peer.send_raw(reply.to_string().as_bytes()).await;
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, OvsdbError::OpFailed { index: 1, op, .. } if op == "update"),
        "{err}"
    );
    assert!(
        err.to_string().contains("constraint violation (bad a)"),
        "{err}"
    );
}

#[tokio::test]
async fn update2_notifications_reach_their_monitor() {
    let server = FakeServer::new();
    let client = OvsdbClient::connect(&server.path).await.unwrap();
    let mut peer = server.accept().await;
    let requests = BTreeMap::from([("T".to_string(), MonitorRequest::columns(&["name"]))]);
    let monitor = tokio::spawn(async move { client.monitor_cond("db", "m1", &requests).await });
    let request = peer.recv().await;
    assert_eq!(
        request["params"],
        json!(["db", "m1", {"T": [{"columns": ["name"]}]}])
    );
    let reply = json!({"id": request["id"], "error": null,
        "result": {"T": {"u1": {"initial": {"name": "a"}}}}});
    let update = json!({"id": null, "method": "update2",
        "params": ["m1", {"T": {"u1": {"modify": {"name": "b"}}}}]});
    peer.send_raw(format!("{reply}{update}").as_bytes()).await;
    let (initial, mut monitor) = monitor.await.unwrap().unwrap();
    assert!(matches!(initial["T"]["u1"], RowUpdate::Initial(_)));
    let next = tokio::time::timeout(BOUND, monitor.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next["T"]["u1"],
        RowUpdate::Modify(row([("name", json!("b"))]))
    );
}
