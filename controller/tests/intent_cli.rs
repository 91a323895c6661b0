//! `dpu-controller apply / diff / get / delete`, the real binary, on the
//! embedded store and on a real etcd over mutual TLS: the same commands, the
//! same answers.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::etcd_args;
use test_support::etcd::{TestEtcd, TestEtcdCluster};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_dpu-controller");

fn examples() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .display()
        .to_string()
}

fn run(store: &[String], args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(store)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("dpu-controller runs");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The same session of commands against one store.
fn session(store: &[String]) {
    let ex = examples();
    let out = ok(&run(store, &["apply", "-f", &ex], None));
    assert_eq!(out.lines().count(), 8, "{out}");
    assert!(
        out.contains("Vpc/vpc-a created\n") && out.contains("YusurService/web created\n"),
        "{out}"
    );
    // Again: nothing to do, and nothing to diff.
    let out = ok(&run(store, &["apply", "-f", &ex], None));
    assert!(out.lines().all(|l| l.ends_with(" unchanged")), "{out}");
    let d = run(store, &["diff", "-f", &ex], None);
    assert_eq!((d.status.code(), d.stdout.len()), (Some(0), 0));

    // get: one object as JSON, a kind as YAML.
    let web: serde_json::Value = serde_json::from_str(&ok(&run(
        store,
        &["get", "service", "web", "-o", "json"],
        None,
    )))
    .unwrap();
    assert_eq!(web["kind"], "YusurService");
    assert_eq!(web["spec"]["clusterIPs"][0], "10.96.0.10");
    let yaml = ok(&run(store, &["get", "workloads"], None));
    assert_eq!(yaml.matches("kind: Workload\n").count(), 4, "{yaml}");

    // diff of a change from stdin shows it and exits 1; apply from stdin makes it.
    let change = web_yaml(store).replace("10.96.0.10", "10.96.0.20");
    let d = run(store, &["diff", "-f", "-"], Some(&change));
    assert_eq!(d.status.code(), Some(1));
    let text = String::from_utf8_lossy(&d.stdout);
    assert!(
        text.contains("\n-  - 10.96.0.10\n+  - 10.96.0.20\n"),
        "{text}"
    );
    assert_eq!(
        ok(&run(store, &["apply", "-f", "-"], Some(&change))),
        "YusurService/web configured\n"
    );

    // A refused apply names the file, document, object and field; exit 3.
    let bad = change.replace("- 10.96.0.20", "- 10.96.0.300");
    let out = run(store, &["apply", "-f", "-"], Some(&bad));
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "<stdin>: document 1: YusurService/web: spec.clusterIPs[0]: \"10.96.0.300\" is not an IP address"
        ),
        "{err}"
    );
    assert!(web_yaml(store).contains("10.96.0.20"));

    // delete: refused while something needs it, then done.
    let out = run(store, &["delete", "vpc", "vpc-a"], None);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ok(&run(store, &["delete", "networkprobe", "web-http"], None)),
        "NetworkProbe/web-http deleted\n"
    );
    let out = run(store, &["get", "networkprobe", "web-http"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NetworkProbe/web-http not found"));
}

fn web_yaml(store: &[String]) -> String {
    ok(&run(store, &["get", "YusurService", "web"], None))
}

#[test]
fn the_intent_commands_work_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    session(&["--state-dir".into(), dir.path().display().to_string()]);
    assert!(dir.path().join("store/log.jsonl").is_file());
}

#[test]
fn the_intent_commands_work_on_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = TestEtcd::start(dir.path());
    let store = etcd_args(&etcd);
    session(&store);
    // What landed, as etcd's own client sees it.
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.url))
        .arg(format!("--cacert={}", etcd.ca.display()))
        .arg(format!("--cert={}", etcd.cert.display()))
        .arg(format!("--key={}", etcd.key.display()))
        .args(["get", "--prefix", "--keys-only", "/dpu/intent/"])
        .output()
        .expect("etcdctl runs (Debian's etcd-client, lab/install-deps)");
    let keys = String::from_utf8(out.stdout).unwrap();
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 8, "{keys:?}");
    assert!(
        keys.contains(&"/dpu/intent/.guard") && keys.contains(&"/dpu/intent/YusurService/web"),
        "{keys:?}"
    );
    assert!(
        !keys.contains(&"/dpu/intent/NetworkProbe/web-http"),
        "{keys:?}"
    );
}

#[test]
fn an_unreachable_etcd_is_a_clear_error_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = TestEtcd::start(dir.path());
    let store = etcd_args(&etcd);
    etcd.kill();
    let out = run(&store, &["apply", "-f", &examples()], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("dpu-controller: store unavailable: etcd: "),
        "{err}"
    );
}

/// etcd allows 128 writes per transaction by default: a larger apply is
/// refused whole, and the error says which etcd flag to raise.
#[test]
fn an_apply_larger_than_etcd_allows_is_refused_whole_with_the_flag_to_raise() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = TestEtcd::start(dir.path());
    let store = etcd_args(&etcd);
    let vpcs: String = (1..=200)
        .map(|i| {
            format!(
                "---\napiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {{name: vpc-{i}}}\nspec: {{vni: {i}}}\n"
            )
        })
        .collect();
    let out = run(&store, &["apply", "-f", "-"], Some(&vpcs));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("too many operations in txn request") && err.contains("--max-txn-ops"),
        "{err}"
    );
    assert_eq!(ok(&run(&store, &["get"], None)), "");
}

/// With one member of three down (the first one listed), every command still
/// works, every time: a new process' first request used to go to the dead
/// member, which the client counts as ready because it fails at once, and
/// fail with `tcp connect error`.
#[test]
fn the_commands_work_with_one_etcd_member_of_three_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = TestEtcdCluster::start(dir.path(), 3);
    let store = common::cluster_args(&etcd);
    etcd.kill(0);
    // One member down, not an election in progress: if member 0 led, a
    // request in flight meanwhile is refused with `leader changed` (what
    // ha_e2e measures); wait for the two left to elect one of them.
    etcd.wait_leader(Duration::from_secs(15));
    let out = ok(&run(&store, &["apply", "-f", &examples()], None));
    assert_eq!(out.lines().count(), 8, "{out}");
    for _ in 0..5 {
        let web = ok(&run(&store, &["get", "service", "web", "-o", "json"], None));
        assert!(web.contains("\"YusurService\""), "{web}");
    }
}
