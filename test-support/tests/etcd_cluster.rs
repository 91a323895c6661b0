//! The three-member etcd fixture itself: one leader, a killed leader replaced
//! by another member, a restarted member rejoining, and the whole cluster
//! stopped and started again on its data. Needs Debian's `etcd-server` and
//! `etcd-client` (lab/install-deps); without them it fails saying so.

use std::time::{Duration, Instant};

use test_support::etcd::TestEtcdCluster;

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "etcdctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn three_members_lose_their_leader_and_come_back_with_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = TestEtcdCluster::start(dir.path(), 3);
    assert_eq!(etcd.urls.len(), 3);
    assert_eq!(etcd.endpoints().split(',').count(), 3);
    ok(etcd.etcdctl(&["put", "/k", "v1"]));
    let rev = etcd.mod_revision("/k").expect("the key's revision");
    assert!(rev > 1, "{rev}");

    // The leader killed: another member leads, and writes go on.
    let leader = etcd.wait_leader(Duration::from_secs(10));
    let pid = etcd.pid(leader).expect("the leader runs");
    etcd.kill(leader);
    assert_eq!(etcd.pid(leader), None);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let killed = Instant::now();
    let next = etcd.wait_leader(Duration::from_secs(15));
    println!(
        "a new leader (member {next}) {:?} after the kill",
        killed.elapsed()
    );
    assert_ne!(next, leader);
    ok(etcd.etcdctl(&["put", "/k", "v2"]));

    // Back on its data, it rejoins.
    etcd.restart(leader);
    // etcdctl prints its health lines on stderr.
    let out = etcd.etcdctl(&["endpoint", "health"]);
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");

    // All gone, all back: the data is still there.
    etcd.stop_all();
    assert!((0..3).all(|i| etcd.pid(i).is_none()));
    etcd.start_all();
    let out = ok(etcd.etcdctl(&["get", "/k", "--print-value-only"]));
    assert_eq!(out.trim(), "v2");
    assert!(etcd.mod_revision("/k").unwrap() > rev);
}
