//! The controller with an etcd user limited to its prefix, as
//! controller/README.md ("An etcd user for the controller") sets it up: etcd's
//! auth enabled, the user named by the client certificate's CN
//! (`dpu-controller`) with readwrite on `/dpu/` only. Everything the
//! controller does works with that user (serve, lead, apply, tokens,
//! compaction); a key outside the prefix is refused.

mod common;

use std::process::Command;

use common::*;
use dpu_controller::kv::{EtcdStore, Store};
use test_support::etcd::TestEtcd;

/// `etcdctl` with the test client certificate, and `user` (name:password)
/// when given.
fn etcdctl(etcd: &TestEtcd, user: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut c = Command::new("etcdctl");
    c.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.url))
        .arg(format!("--cacert={}", etcd.ca.display()))
        .arg(format!("--cert={}", etcd.cert.display()))
        .arg(format!("--key={}", etcd.key.display()));
    if let Some(u) = user {
        c.arg(format!("--user={u}"));
    }
    c.args(args)
        .output()
        .expect("etcdctl runs (Debian's etcd-client, lab/install-deps)")
}

#[track_caller]
fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_user_limited_to_its_prefix_is_enough() {
    let lab = Lab::new();
    let etcd = TestEtcd::start(&lab.state.with_file_name("etcd"));
    // The set-up the README shows.
    for args in [
        &["user", "add", "root", "--new-user-password=root-secret"][..],
        &["role", "add", "dpu-controller"],
        &[
            "role",
            "grant-permission",
            "dpu-controller",
            "--prefix=true",
            "readwrite",
            "/dpu/",
        ],
        &["user", "add", "dpu-controller", "--no-password"],
        &["user", "grant-role", "dpu-controller", "dpu-controller"],
        &["auth", "enable"],
    ] {
        ok(etcdctl(&etcd, None, args));
    }
    // Outside the prefix, the controller's certificate is refused.
    let out = etcdctl(&etcd, None, &["put", "/other/x", "y"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // serve leads, imports the directory, and serves an agent.
    let store = etcd_args(&etcd);
    let extra: Vec<&str> = store.iter().map(String::as_str).collect();
    let server = Server::start_with(&lab, &extra);
    lab.wait_status("leading on etcd with auth", |v| {
        v["store"]["leader"] == true && v["store"]["state"] == "ok"
    });
    let id = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let ch = channel(server.port, &lab.read("ca.pem"), id).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    assert!(keys(&snap).contains(&"YusurService/web".to_string()));

    // The commands, as that user.
    let mut args = vec!["token", "create", "--node", "dpu-9"];
    args.extend(extra.iter().copied());
    let token = cli_ok(&args);
    assert!(token.starts_with("dpub."), "{token}");
    let mut args = vec!["get", "vpc"];
    args.extend(extra.iter().copied());
    assert!(cli_ok(&args).contains("kind: Vpc"));

    // Compaction, the leader's duty, is allowed to it too.
    let s = Store::Etcd(
        EtcdStore::connect(common::etcd_options(&etcd, "/dpu/"))
            .await
            .unwrap(),
    );
    let (rev, _) = s.get("intent/.guard").await.unwrap();
    s.compact(rev - 1).await.unwrap();
    assert!(!s.cluster_id().await.unwrap().is_empty());
    // And the root user still sees everything (what an operator checks with).
    let keys = ok(etcdctl(
        &etcd,
        Some("root:root-secret"),
        &["get", "--prefix", "--keys-only", "/dpu/tokens/"],
    ));
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 1, "{keys}");
    drop(server);
}
