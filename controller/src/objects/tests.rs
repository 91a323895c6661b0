//! apply, get, delete and diff on the embedded store (the same calls run on
//! etcd in `tests/objects_cli.rs`).

use super::*;
use crate::kv::LocalStore;

const VPC: &str = "apiVersion: dpu.yusur.io/v1alpha1
kind: Vpc
metadata: {name: vpc-a}
spec: {vni: 100}
";

const WEB: &str = "apiVersion: dpu.yusur.io/v1alpha1
kind: YusurService
metadata: {name: web}
spec:
  vpc: vpc-a
  clusterIPs: [10.96.0.10]
  ports:
    - {name: http, protocol: TCP, port: 80, targetPort: 8080}
  backends: []
  scenario: ClusterIP
";

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::Local(LocalStore::open(&dir.path().join("store")).unwrap());
    (dir, s)
}

fn inputs(dir: &Path, name: &str, text: &str) -> Vec<Input> {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    read_inputs(path.to_str().unwrap()).unwrap()
}

/// Applies the Vpc and the Service.
async fn apply_both(s: &Store, dir: &Path) {
    apply(
        s,
        &inputs(dir, "a.yaml", &format!("{VPC}---\n{WEB}")),
        "apply",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn apply_creates_then_configures_then_leaves_alone() {
    let (dir, s) = store();
    let both = format!("{VPC}---\n{WEB}");
    let got = apply(&s, &inputs(dir.path(), "a.yaml", &both), "apply")
        .await
        .unwrap();
    assert_eq!(
        got,
        [
            ("intent/Vpc/vpc-a".to_string(), Change::Created),
            ("intent/YusurService/web".to_string(), Change::Created),
        ]
    );
    let c = current(&s).await.unwrap();
    assert_eq!(c.objects.len(), 2);
    assert!(c.guard > 0 && c.guard == c.revision);

    // The same again writes nothing: no new revision.
    let got = apply(&s, &inputs(dir.path(), "a.yaml", &both), "apply")
        .await
        .unwrap();
    assert!(got.iter().all(|(_, c)| *c == Change::Unchanged));
    assert_eq!(current(&s).await.unwrap().revision, c.revision);

    // A changed object is configured; get shows it.
    let web2 = WEB.replace("10.96.0.10", "10.96.0.11");
    let got = apply(&s, &inputs(dir.path(), "b.yaml", &web2), "apply")
        .await
        .unwrap();
    assert_eq!(
        got,
        [("intent/YusurService/web".to_string(), Change::Configured)]
    );
    let c = current(&s).await.unwrap();
    let yaml = get(&c, Some(Kind::Service), Some("web"), Format::Yaml).unwrap();
    assert!(
        yaml.starts_with("---\napiVersion: dpu.yusur.io/v1alpha1\nkind: YusurService\n"),
        "{yaml}"
    );
    assert!(yaml.contains("10.96.0.11"), "{yaml}");
    let json: serde_json::Value =
        serde_json::from_str(&get(&c, None, None, Format::Json).unwrap()).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 2);
    assert_eq!(json["items"][1]["metadata"]["name"], "web");
}

#[tokio::test]
async fn an_invalid_apply_names_file_document_object_and_field_and_changes_nothing() {
    let (dir, s) = store();
    apply(&s, &inputs(dir.path(), "vpc.yaml", VPC), "apply")
        .await
        .unwrap();
    let before = current(&s).await.unwrap().revision;
    // A field the schema does not have.
    let bad = format!("{VPC}---\n{}", WEB.replace("scenario:", "scenarioo:"));
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, bad).unwrap();
    let err = read_inputs(path.to_str().unwrap()).unwrap_err().to_string();
    assert!(
        err.contains("bad.yaml") && err.contains("document 2") && err.contains("scenarioo"),
        "{err}"
    );
    // A reference to a VPC that does not exist, with a good object beside it.
    let orphan = WEB.replace("vpc: vpc-a", "vpc: vpc-x");
    let two = format!("{}---\n{orphan}", VPC.replace("vni: 100", "vni: 101"));
    let err = apply(&s, &inputs(dir.path(), "c.yaml", &two), "apply")
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 3);
    let text = err.to_string();
    assert!(
        text.contains("c.yaml: document 2: YusurService/web: spec.vpc: Vpc/vpc-x does not exist")
            && text.contains("YusurService/web")
            && text.contains("spec.vpc"),
        "{text}"
    );
    assert!(text.contains("nothing was changed"), "{text}");
    let c = current(&s).await.unwrap();
    assert_eq!(c.revision, before);
    assert!(c.objects["intent/Vpc/vpc-a"]
        .0
        .manifest
        .contains("vni: 100"));
}

#[tokio::test]
async fn delete_refuses_what_would_leave_a_dangling_reference() {
    let (dir, s) = store();
    apply_both(&s, dir.path()).await;
    let err = delete(&s, Kind::Vpc, "vpc-a")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("YusurService/web") && err.contains("after deleting Vpc/vpc-a"),
        "{err}"
    );
    assert_eq!(
        delete(&s, Kind::Vpc, "nope").await.unwrap_err().to_string(),
        "Vpc/nope not found"
    );
    delete(&s, Kind::Service, "web").await.unwrap();
    delete(&s, Kind::Vpc, "vpc-a").await.unwrap();
    assert!(current(&s).await.unwrap().objects.is_empty());
}

#[tokio::test]
async fn a_concurrent_change_between_read_and_write_is_a_conflict() {
    let (dir, s) = store();
    apply(&s, &inputs(dir.path(), "vpc.yaml", VPC), "apply")
        .await
        .unwrap();
    let read = current(&s).await.unwrap();
    // Another writer changes the intent after our read.
    apply(&s, &inputs(dir.path(), "web.yaml", WEB), "apply")
        .await
        .unwrap();
    let mine = inputs(dir.path(), "v.yaml", &VPC.replace("vni: 100", "vni: 102"));
    let err = commit(
        &s,
        Txn::new().put(key(Kind::Vpc, "vpc-a"), "x"),
        &read,
        "apply",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ObjectError::Conflict(_)), "{err}");
    // Read again, it passes.
    apply(&s, &mine, "apply").await.unwrap();
}

#[tokio::test]
async fn diff_shows_what_apply_would_change() {
    let (dir, s) = store();
    apply_both(&s, dir.path()).await;
    let c = current(&s).await.unwrap();
    assert_eq!(diff(&c, &inputs(dir.path(), "a.yaml", VPC)).unwrap(), "");
    let d = diff(
        &c,
        &inputs(dir.path(), "b.yaml", &VPC.replace("vni: 100", "vni: 7")),
    )
    .unwrap();
    assert!(
        d.starts_with("--- store:intent/Vpc/vpc-a\n+++ intent/Vpc/vpc-a\n"),
        "{d}"
    );
    assert!(d.contains("\n-  vni: 100\n+  vni: 7\n"), "{d}");
    assert!(d.contains("\n kind: Vpc\n"), "{d}");
}

#[tokio::test]
async fn a_hostile_value_in_the_store_is_an_error_naming_its_key() {
    let (_dir, s) = store();
    s.txn(Txn::new().put("intent/Vpc/x", "not json"))
        .await
        .unwrap();
    let err = current(&s).await.unwrap_err().to_string();
    assert!(
        err.contains("store:intent/Vpc/x") && err.contains("not a stored object"),
        "{err}"
    );
    let other = Stored {
        source: "apply".into(),
        manifest: VPC.into(),
    };
    s.txn(
        Txn::new()
            .delete("intent/Vpc/x")
            .put("intent/Vpc/y", serde_json::to_string(&other).unwrap()),
    )
    .await
    .unwrap();
    let err = current(&s).await.unwrap_err().to_string();
    assert!(
        err.contains("store:intent/Vpc/y") && err.contains("holds Vpc/vpc-a"),
        "{err}"
    );
}

#[test]
fn kinds_parse_as_users_type_them() {
    for (t, k) in [
        ("YusurService", Kind::Service),
        ("service", Kind::Service),
        ("yusurservices", Kind::Service),
        ("DpuNode", Kind::Node),
        ("vpcs", Kind::Vpc),
        ("NetworkProbe", Kind::NetworkProbe),
    ] {
        assert_eq!(parse_kind(t).unwrap(), k, "{t}");
    }
    let err = parse_kind("pod").unwrap_err().to_string();
    assert!(
        err.contains("unknown kind \"pod\"") && err.contains("YusurService"),
        "{err}"
    );
}
