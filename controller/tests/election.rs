//! Leader election and fenced writes on both stores: one leader at a time, a
//! waiting replica takes over when the leader goes, and the old leader's
//! writes fail once it has lost (its fence no longer holds). On etcd, a lease
//! revoked behind the leader's back (as when a leader is paused past its TTL)
//! lets another replica win while the old one still believes it leads: both
//! write at once and exactly one write lands, the new leader's; the old one
//! then notices.

mod common;

use std::time::Duration;

use dpu_controller::kv::{EtcdStore, LocalStore, Store, Txn};
use test_support::etcd::TestEtcd;

async fn fenced_put(s: &Store, fence: dpu_controller::kv::Cmp, v: &str) -> bool {
    s.txn(Txn::new().when(fence).put("intent/.guard", v))
        .await
        .unwrap()
        .succeeded
}

/// A leads; B waits; A goes; B leads, and A's fence fails.
async fn one_leader_at_a_time(a_store: &Store, b_store: Store) {
    let a = a_store.campaign("replica-a").await.unwrap();
    let a_fence = a.fence();
    assert!(fenced_put(a_store, a_fence.clone(), "a").await);
    let b = tokio::spawn(async move {
        let l = b_store.campaign("replica-b").await.unwrap();
        (b_store, l)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!b.is_finished(), "B won while A leads");
    let start = std::time::Instant::now();
    a.resign().await;
    let (b_store, b) = tokio::time::timeout(Duration::from_secs(5), b)
        .await
        .expect("B wins once A resigns")
        .unwrap();
    println!("takeover after resign: {:?}", start.elapsed());
    assert!(
        !fenced_put(&b_store, a_fence, "a again").await,
        "the old leader's write passed"
    );
    assert!(fenced_put(&b_store, b.fence(), "b").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_has_one_leader_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let a = Store::Local(LocalStore::open(&path).unwrap());
    // Another handle, as another process would open it.
    let b = Store::Local(LocalStore::open(&path).unwrap());
    one_leader_at_a_time(&a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_has_one_leader_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = TestEtcd::start(dir.path());
    let a = Store::Etcd(
        EtcdStore::connect(common::etcd_options(&etcd, "/dpu/"))
            .await
            .unwrap(),
    );
    let b = Store::Etcd(
        EtcdStore::connect(common::etcd_options(&etcd, "/dpu/"))
            .await
            .unwrap(),
    );
    one_leader_at_a_time(&a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_gone_knows_it_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = TestEtcd::start(dir.path());
    let s = Store::Etcd(
        EtcdStore::connect(common::etcd_options(&etcd, "/dpu/"))
            .await
            .unwrap(),
    );
    let mut l = s.campaign("replica-a").await.unwrap();
    assert!(l.key.starts_with("election/"), "{}", l.key);
    // The lease revoked behind its back (as etcd does when a leader was
    // paused past its TTL).
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.url))
        .arg(format!("--cacert={}", etcd.ca.display()))
        .arg(format!("--cert={}", etcd.cert.display()))
        .arg(format!("--key={}", etcd.key.display()))
        .args(["lease", "revoke", &format!("{:x}", l.lease().unwrap())])
        .output()
        .expect("etcdctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another campaign wins at once, before A has noticed: two replicas that
    // both believe they lead write at the same moment, and exactly one write
    // lands, the new leader's.
    let b = Store::Etcd(
        EtcdStore::connect(common::etcd_options(&etcd, "/dpu/"))
            .await
            .unwrap(),
    );
    let l2 = tokio::time::timeout(Duration::from_secs(5), b.campaign("replica-b"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !l.is_lost(),
        "A has not noticed yet: it still believes it leads"
    );
    let (a_landed, b_landed) = tokio::join!(
        fenced_put(&s, l.fence(), "a"),
        fenced_put(&b, l2.fence(), "b")
    );
    assert_eq!((a_landed, b_landed), (false, true));
    let (_, guard) = s.get("intent/.guard").await.unwrap();
    assert_eq!(guard.unwrap().value, "b");
    tokio::time::timeout(Duration::from_secs(10), l.lost())
        .await
        .expect("the leader notices within a third of its TTL or so");
    assert!(l.is_lost());
    assert!(!fenced_put(&s, l.fence(), "late").await);
}
