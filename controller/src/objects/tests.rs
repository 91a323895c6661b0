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

/// A Service added on the VIP:port of one that was there is blamed, at its
/// own file, whichever name sorts first; the untouched one is named with its
/// file. The directory's objects are imported as `serve --intent-dir` does.
#[tokio::test]
async fn an_import_blames_a_conflict_on_the_newcomer() {
    let svc = |name: &str| {
        format!(
            "apiVersion: dpu.yusur.io/v1alpha1\nkind: YusurService\nmetadata: {{name: {name}}}\nspec: {{vpc: a, clusterIPs: [10.96.0.10], ports: [{{port: 80}}]}}\n"
        )
    };
    let vpc = "apiVersion: dpu.yusur.io/v1alpha1\nkind: Vpc\nmetadata: {name: a}\nspec: {vni: 1}\n";
    let subnet = "apiVersion: dpu.yusur.io/v1alpha1\nkind: Subnet\nmetadata: {name: s}\nspec: {vpc: a, cidr: 10.0.0.0/24, gateway: 10.0.0.1}\n";
    for name in ["a-dup", "z-dup"] {
        let (dir, s) = store();
        let intent = dir.path().join("intent");
        std::fs::create_dir(&intent).unwrap();
        std::fs::write(intent.join("10.yaml"), format!("{vpc}---\n{subnet}")).unwrap();
        std::fs::write(intent.join("30-services.yaml"), svc("web")).unwrap();
        let first = read_inputs(intent.to_str().unwrap()).unwrap();
        import(&s, &first, "dir:intent", None, None, None)
            .await
            .unwrap();
        let c = current(&s).await.unwrap();
        let previous = resolve(&c.docs()).unwrap();
        std::fs::write(intent.join("99-dup.yaml"), svc(name)).unwrap();
        let next = read_inputs(intent.to_str().unwrap()).unwrap();
        match import(&s, &next, "dir:intent", Some(&c), Some(&previous), None).await {
            Err(ObjectError::Invalid(errs)) => {
                assert_eq!(errs.len(), 1, "{errs:?}");
                let e = &errs[0];
                assert_eq!(e.object.as_deref(), Some(&*format!("YusurService/{name}")));
                assert!(e.file.as_deref().unwrap().ends_with("99-dup.yaml"), "{e}");
                assert!(
                    e.message.contains("also served by YusurService/web (")
                        && e.message
                            .contains("30-services.yaml, document 1, spec.clusterIPs[0])"),
                    "{e}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(current(&s).await.unwrap().revision, c.revision);
    }
}

/// Imports `dir` as `serve --intent-dir` would (source `dir:i`).
async fn import_dir(s: &Store, dir: &Path) -> Imported {
    let inputs = read_inputs(dir.to_str().unwrap()).unwrap();
    import(s, &inputs, "dir:i", None, None, None).await.unwrap()
}

/// An import writes what changed and deletes what the directory no longer
/// has, and leaves objects other writers made alone.
#[tokio::test]
async fn an_import_sweeps_only_its_own_objects() {
    let (dir, s) = store();
    let intent = dir.path().join("intent");
    std::fs::create_dir(&intent).unwrap();
    std::fs::write(intent.join("a.yaml"), format!("{VPC}---\n{WEB}")).unwrap();
    let got = import_dir(&s, &intent).await;
    assert_eq!(
        got,
        Imported {
            written: 2,
            deleted: 0
        }
    );
    // Another writer adds a Service of its own.
    apply(
        &s,
        &inputs(
            dir.path(),
            "api.yaml",
            &WEB.replace("name: web", "name: api")
                .replace("10.96.0.10", "10.96.0.12"),
        ),
        "apply",
    )
    .await
    .unwrap();
    // The directory drops web: web goes, api stays.
    std::fs::write(intent.join("a.yaml"), VPC).unwrap();
    let got = import_dir(&s, &intent).await;
    assert_eq!(
        got,
        Imported {
            written: 0,
            deleted: 1
        }
    );
    let keys: Vec<String> = current(&s).await.unwrap().objects.into_keys().collect();
    assert_eq!(keys, ["intent/Vpc/vpc-a", "intent/YusurService/api"]);
    // The same files again: nothing written, no new revision.
    let before = current(&s).await.unwrap().revision;
    let got = import_dir(&s, &intent).await;
    assert_eq!(got, Imported::default());
    assert_eq!(current(&s).await.unwrap().revision, before);
}

/// The serve side's mirror: events applied one by one equal a fresh listing.
#[tokio::test]
async fn watch_events_keep_a_mirror_equal_to_a_listing() {
    let (dir, s) = store();
    apply_both(&s, dir.path()).await;
    let mut mirror = current(&s).await.unwrap();
    let mut w = s.watch(PREFIX, mirror.revision + 1).await.unwrap();
    apply(
        &s,
        &inputs(
            dir.path(),
            "b.yaml",
            &WEB.replace("10.96.0.10", "10.96.0.11"),
        ),
        "apply",
    )
    .await
    .unwrap();
    delete(&s, Kind::Service, "web").await.unwrap();
    let want = current(&s).await.unwrap();
    while mirror.revision < want.revision {
        match tokio::time::timeout(std::time::Duration::from_secs(5), w.items.recv()).await {
            Ok(Some(Ok(crate::kv::WatchItem::Events(evs)))) => {
                assert!(mirror.apply_events(&evs).is_empty())
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(mirror.differences(&want), 0);
    assert_eq!(mirror.guard, want.guard);
    assert_eq!(
        mirror.objects.keys().collect::<Vec<_>>(),
        ["intent/Vpc/vpc-a"]
    );
    // A value written around apply that does not parse leaves the key as it
    // was, and says so.
    s.txn(Txn::new().put("intent/Vpc/vpc-a", "{"))
        .await
        .unwrap();
    let evs = loop {
        if let Some(Ok(crate::kv::WatchItem::Events(evs))) = w.items.recv().await {
            break evs;
        }
    };
    let errs = mirror.apply_events(&evs);
    assert!(
        errs[0].to_string().contains("store:intent/Vpc/vpc-a"),
        "{errs:?}"
    );
    assert!(mirror.objects.contains_key("intent/Vpc/vpc-a"));
}
