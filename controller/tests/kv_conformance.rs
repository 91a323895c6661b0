//! The store interface's contract, run against both stores: the embedded one
//! (`kv::local`, files in a temporary directory) and etcd (a real `etcd`
//! started for the test, over mutual TLS). See `src/kv/mod.rs`.

mod common;

use std::time::Duration;

use dpu_controller::kv::{
    Cmp, EtcdOptions, EtcdStore, Event, EventKind, KvError, LocalStore, Store, Txn, WatchItem,
};
use test_support::etcd::TestEtcd;

const WAIT: Duration = Duration::from_secs(10);

async fn etcd_store(etcd: &TestEtcd, prefix: &str) -> Store {
    Store::Etcd(
        EtcdStore::connect(common::etcd_options(etcd, prefix))
            .await
            .expect("connect to the test etcd"),
    )
}

/// The events of a watch until `want` have arrived, in order.
async fn next_events(w: &mut dpu_controller::kv::Watch, want: usize) -> Vec<Event> {
    let mut got = Vec::new();
    while got.len() < want {
        match tokio::time::timeout(WAIT, w.items.recv()).await {
            Ok(Some(Ok(WatchItem::Events(evs)))) => got.extend(evs),
            Ok(Some(Ok(WatchItem::Progress(_)))) => {}
            other => panic!("waiting for {want} events, got {got:?} then {other:?}"),
        }
    }
    got
}

fn keys(evs: &[Event]) -> Vec<(i64, EventKind, String, Option<String>)> {
    let mut v: Vec<_> = evs
        .iter()
        .map(|e| (e.mod_revision, e.kind, e.key.clone(), e.value.clone()))
        .collect();
    v.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
    v
}

/// The contract, as one scenario.
async fn contract(s: &Store) {
    use EventKind::{Delete, Put};
    let id = s.cluster_id().await.unwrap();
    assert_eq!(id.len(), 16, "{id}");
    assert_eq!(
        s.cluster_id().await.unwrap(),
        id,
        "the cluster id is stable"
    );

    let (r0, none) = s.get("intent/Vpc/blue").await.unwrap();
    assert!(none.is_none());

    // Create only if absent.
    let t = s
        .txn(
            Txn::new()
                .when(Cmp::ModRevision("intent/Vpc/blue".into(), 0))
                .put("intent/Vpc/blue", "v1"),
        )
        .await
        .unwrap();
    assert!(t.succeeded);
    let r1 = t.revision;
    assert!(r1 > r0);
    let (_, e) = s.get("intent/Vpc/blue").await.unwrap();
    let e = e.unwrap();
    assert_eq!(
        (e.value.as_str(), e.create_revision, e.mod_revision),
        ("v1", r1, r1)
    );

    // A comparison that fails applies nothing, and moves no revision.
    let t = s
        .txn(
            Txn::new()
                .when(Cmp::ModRevision("intent/Vpc/blue".into(), 0))
                .put("intent/Vpc/blue", "v2")
                .put("intent/Vpc/red", "x"),
        )
        .await
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(t.revision, r1);
    assert!(s.get("intent/Vpc/red").await.unwrap().1.is_none());

    // A transaction is one revision, whatever it writes.
    let t = s
        .txn(
            Txn::new()
                .when(Cmp::ModRevision("intent/Vpc/blue".into(), r1))
                .put("intent/Service/web", "w")
                .put("intent/Service/api", "a")
                .delete("intent/Vpc/blue"),
        )
        .await
        .unwrap();
    assert!(t.succeeded);
    let r2 = t.revision;
    assert_eq!(r2, r1 + 1);

    // A delete of nothing is not a write.
    let t = s.txn(Txn::new().delete("intent/Vpc/none")).await.unwrap();
    assert!(t.succeeded);
    assert_eq!(t.revision, r2);

    let l = s.list("intent/").await.unwrap();
    assert_eq!(l.revision, r2);
    let listed: Vec<_> = l
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        listed,
        [("intent/Service/api", "a"), ("intent/Service/web", "w")]
    );
    assert!(s.list("intent/Service/w").await.unwrap().entries.len() == 1);

    // A watch from r1 replays r1 and r2, then follows.
    let mut w = s.watch("intent/", r1).await.unwrap();
    let evs = next_events(&mut w, 4).await;
    assert_eq!(
        keys(&evs),
        [
            (r1, Put, "intent/Vpc/blue".into(), Some("v1".into())),
            (r2, Put, "intent/Service/api".into(), Some("a".into())),
            (r2, Put, "intent/Service/web".into(), Some("w".into())),
            (r2, Delete, "intent/Vpc/blue".into(), None),
        ]
    );
    // Keys outside the prefix are not seen.
    s.txn(Txn::new().put("nodes/n1", "r")).await.unwrap();
    let t = s
        .txn(Txn::new().delete_prefix("intent/Service/"))
        .await
        .unwrap();
    let r4 = t.revision;
    let evs = next_events(&mut w, 2).await;
    assert_eq!(
        keys(&evs),
        [
            (r4, Delete, "intent/Service/api".into(), None),
            (r4, Delete, "intent/Service/web".into(), None),
        ]
    );
    drop(w);

    // Fencing: a write that holds only while the leader's key is the one it made.
    let lead = s
        .txn(Txn::new().put("leader", "replica-a"))
        .await
        .unwrap()
        .revision;
    let fenced = |v: &'static str| {
        Txn::new()
            .when(Cmp::CreateRevision("leader".into(), lead))
            .put("intent/Vpc/green", v)
    };
    assert!(s.txn(fenced("1")).await.unwrap().succeeded);
    // The key rewritten keeps its create revision; deleted and made again it does not.
    s.txn(Txn::new().put("leader", "replica-a")).await.unwrap();
    assert!(s.txn(fenced("2")).await.unwrap().succeeded);
    s.txn(Txn::new().delete("leader")).await.unwrap();
    s.txn(Txn::new().put("leader", "replica-b")).await.unwrap();
    assert!(!s.txn(fenced("3")).await.unwrap().succeeded);
    assert_eq!(
        s.get("intent/Vpc/green").await.unwrap().1.unwrap().value,
        "2"
    );

    // A key is written at most once per transaction.
    for dup in [
        Txn::new().put("a", "1").put("a", "2"),
        Txn::new().delete("a").put("a", "2"),
        Txn::new().put("intent/x", "1").delete_prefix("intent/"),
    ] {
        let err = s.txn(dup).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("duplicate key given in txn request"),
            "{err}"
        );
    }
    assert!(s.get("a").await.unwrap().1.is_none());

    // After a compaction, a watch from before it is told so.
    let (now, _) = s.get("leader").await.unwrap();
    s.compact(now).await.unwrap();
    let mut w = s.watch("intent/", r1).await.unwrap();
    match tokio::time::timeout(WAIT, w.items.recv()).await {
        Ok(Some(Ok(WatchItem::Compacted(c)))) => assert!(c >= r1, "compacted at {c}"),
        other => panic!("expected Compacted, got {other:?}"),
    }
    // A watch from now on works.
    let mut w = s.watch("intent/", now + 1).await.unwrap();
    let t = s.txn(Txn::new().put("intent/Vpc/late", "l")).await.unwrap();
    assert_eq!(
        keys(&next_events(&mut w, 1).await),
        [(t.revision, Put, "intent/Vpc/late".into(), Some("l".into()))]
    );
}

#[tokio::test]
async fn the_embedded_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(&Store::Local(
        LocalStore::open(&dir.path().join("store")).unwrap(),
    ))
    .await;
}

#[tokio::test]
async fn etcd_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = TestEtcd::start(dir.path());
    let s = etcd_store(&etcd, "/dpu-test/").await;
    contract(&s).await;
    // Another prefix on the same etcd is another key space, with the same cluster id.
    let other = etcd_store(&etcd, "/other/").await;
    assert!(other.list("").await.unwrap().entries.is_empty());
    assert_eq!(
        other.cluster_id().await.unwrap(),
        s.cluster_id().await.unwrap()
    );
}

#[tokio::test]
async fn etcd_down_is_unavailable_within_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = TestEtcd::start(dir.path());
    let s = etcd_store(&etcd, "/dpu/").await;
    s.txn(Txn::new().put("k", "v")).await.unwrap();
    etcd.kill();
    let start = std::time::Instant::now();
    let err = s.txn(Txn::new().put("k", "w")).await.unwrap_err();
    assert!(matches!(err, KvError::Unavailable(_)), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "{:?}",
        start.elapsed()
    );
    assert!(err.to_string().starts_with("store unavailable: "), "{err}");
}

#[tokio::test]
async fn etcd_refuses_a_client_certificate_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = TestEtcd::start(&dir.path().join("etcd"));
    let rogue = test_support::pki::TestCa::new("test etcd CA");
    let leaf = rogue.client(&["dpu-controller"]);
    let cert = dir.path().join("rogue.pem");
    let key = dir.path().join("rogue-key.pem");
    std::fs::write(&cert, leaf.cert_pem()).unwrap();
    std::fs::write(&key, leaf.key_pem()).unwrap();
    let s = EtcdStore::connect(EtcdOptions {
        endpoints: vec![etcd.url.clone()],
        ca: etcd.ca.clone(),
        cert,
        key,
        prefix: "/dpu/".into(),
    })
    .await;
    let err = match s {
        Err(e) => e,
        Ok(s) => s.get("k").await.unwrap_err(),
    };
    assert!(matches!(err, KvError::Unavailable(_)), "{err}");
    // Nothing was written by the rogue client.
    let ok = etcd_store(&etcd, "/dpu/").await;
    assert!(ok.list("").await.unwrap().entries.is_empty());
}

#[test]
fn etcd_options_are_checked_before_any_connection() {
    let base = EtcdOptions {
        endpoints: vec!["https://10.0.0.1:2379".into()],
        ca: "ca".into(),
        cert: "c".into(),
        key: "k".into(),
        prefix: "/dpu/".into(),
    };
    assert!(base.validate().is_ok());
    let mut o = base.clone();
    o.endpoints.push("http://10.0.0.2:2379".into());
    assert_eq!(
        o.validate().unwrap_err().to_string(),
        "store refused the request: --etcd[1]: \"http://10.0.0.2:2379\": must be an https:// URL (mutual TLS only)"
    );
    let mut o = base;
    o.prefix = "dpu".into();
    assert!(o
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--etcd-prefix"));
}
