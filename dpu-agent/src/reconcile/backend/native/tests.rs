//! The adapter against a scripted fake switch on a unix socket
//! (`openflow::testkit`): connecting again after the switch went away or
//! stopped answering, time bounds, a bad op refused before anything is sent,
//! and the agent's form of refusals and dumps. The bundle protocol and the
//! dumps themselves are tested in the `openflow` crate.

use std::path::Path;
use std::time::Duration;

use ::openflow::codec::{BucketDesc, FlowDesc, GroupDesc, GroupType};
use ::openflow::testkit::*;
use ::openflow::{BundleRefused, Dump, OversizedGroup, Refusal, Refusals};

use super::{from_crate, summary, NativeBackend};
use crate::compile::flows::{Actions, FlowBody, FlowKey, Match};
use crate::compile::pipeline::cookie::{Category, Cookie};
use crate::reconcile::backend::{BundleOp, InstalledBucket, OpenFlowBackend, OpenFlowError};
use ::openflow::ir::Field;

fn ops(n: usize) -> Vec<BundleOp> {
    (0..n)
        .map(|i| BundleOp::AddFlow {
            key: FlowKey::new(0, 100, Match::new().reg(Field::Reg0, i as u32 + 1)),
            body: FlowBody::new(Actions::drop(), Cookie::new(Category::Service, "s")),
            cookie: 0x1000 + i as u64,
        })
        .collect()
}

fn backend(path: &Path) -> NativeBackend {
    NativeBackend::new(format!("unix:{}", path.display()))
        .unwrap()
        .with_timeouts(Duration::from_secs(10), Duration::from_secs(2))
}

#[test]
fn only_unix_targets_are_taken() {
    let e = NativeBackend::new("tcp:127.0.0.1:6653").unwrap_err();
    assert!(e.to_string().contains("unix:"), "{e}");
    assert!(NativeBackend::new("unix:").is_err());
}

#[tokio::test]
async fn an_empty_bundle_touches_nothing() {
    let mut b = backend(Path::new("/nonexistent/br0.mgmt"));
    b.apply(&[]).await.unwrap();
    assert!(matches!(
        b.installed().await,
        Err(OpenFlowError::Unreachable { .. })
    ));
}

#[tokio::test]
async fn a_switch_gone_mid_apply_is_unreachable_and_the_next_call_connects_again() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let switch = tokio::spawn(async move {
        let mut s = accept(&l).await;
        open_bundle(&mut s).await;
        read_msg(&mut s).await.unwrap();
        drop(s);
        // A restarted switch.
        let mut s = accept(&l).await;
        let adds = take_bundle(&mut s).await;
        commit(&mut s).await;
        adds.len()
    });
    let mut b = backend(&path);
    let e = b.apply(&ops(20_000)).await.unwrap_err();
    assert!(matches!(e, OpenFlowError::Unreachable { .. }), "{e}");
    b.apply(&ops(3)).await.unwrap();
    assert_eq!(switch.await.unwrap(), 3);
}

#[tokio::test]
async fn a_silent_switch_times_out_and_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let switch = tokio::spawn(async move {
        let mut s = accept(&l).await;
        // Swallow the OPEN; never answer.
        read_msg(&mut s).await.unwrap();
        let mut s2 = accept(&l).await;
        let adds = take_bundle(&mut s2).await;
        commit(&mut s2).await;
        drop(s);
        adds.len()
    });
    let mut b = backend(&path).with_timeouts(Duration::from_millis(300), Duration::from_secs(2));
    let e = b.apply(&ops(1)).await.unwrap_err();
    assert!(e.to_string().contains("no answer within"), "{e}");
    b.apply(&ops(2)).await.unwrap();
    assert_eq!(switch.await.unwrap(), 2);
}

#[tokio::test]
async fn a_connection_the_switch_closed_while_idle_is_replaced_without_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let (closed, wait_closed) = tokio::sync::oneshot::channel::<()>();
    let switch = tokio::spawn(async move {
        let mut s = accept(&l).await;
        take_bundle(&mut s).await;
        commit(&mut s).await;
        drop(s);
        closed.send(()).unwrap();
        let mut s = accept(&l).await;
        let adds = take_bundle(&mut s).await;
        commit(&mut s).await;
        adds.len()
    });
    let mut b = backend(&path);
    b.apply(&ops(1)).await.unwrap();
    wait_closed.await.unwrap();
    b.apply(&ops(4)).await.unwrap();
    assert_eq!(switch.await.unwrap(), 4);
}

/// An op the codec cannot encode (here a match on `nw_dst` without `ip`,
/// which the types allow and OpenFlow does not) refuses the bundle, named by
/// its op. The bundle is encoded while it is sent, a part at a time
/// (`openflow::STREAM_CHUNK`); an op in the first part refuses it before
/// anything is sent (one in a later part discards it: `openflow`'s tests).
#[tokio::test]
async fn an_op_that_cannot_be_encoded_refuses_the_bundle_unsent() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let switch = tokio::spawn(async move {
        let mut s = accept(&l).await;
        read_msg(&mut s).await
    });
    let mut b = backend(&path);
    let mut bad = ops(3);
    if let BundleOp::AddFlow { key, .. } = &mut bad[1] {
        let m = Match::new().exact(Field::IpDst, std::net::Ipv4Addr::new(10, 0, 0, 2));
        *key = FlowKey::new(0, 100, m);
    }
    let e = b.apply(&bad).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, OpenFlowError::Rejected(_)), "{text}");
    assert!(
        text.contains("flow add table=0,priority=100,cookie=0x1001,nw_dst=10.0.0.2 actions=drop: "),
        "{text}"
    );
    drop(b);
    assert_eq!(switch.await.unwrap(), None, "nothing was sent");
    assert!(text.contains("prerequisites"), "{text}");
}

/// A call dropped midway (the agent gave up on it) leaves the connection at an
/// unknown point; the next call does not use it.
#[tokio::test]
async fn a_cancelled_call_is_not_continued_on_the_same_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let switch = tokio::spawn(async move {
        let mut s = accept(&l).await;
        // Takes the OPEN, answers nothing.
        read_msg(&mut s).await.unwrap();
        let mut s2 = accept(&l).await;
        let adds = take_bundle(&mut s2).await;
        commit(&mut s2).await;
        drop(s);
        adds.len()
    });
    let mut b = backend(&path);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), b.apply(&ops(1)))
            .await
            .is_err()
    );
    b.apply(&ops(2)).await.unwrap();
    assert_eq!(switch.await.unwrap(), 2);
}

/// A refusal names the op in `ovs-ofctl bundle` syntax, and the commit's error.
#[test]
fn refusals_name_the_op_as_ovs_ofctl_writes_it() {
    let ops = ops(6);
    let refused = |first: Vec<Refusal>, count, commit: Option<&str>| {
        ::openflow::Error::Bundle(BundleRefused {
            refusals: Refusals { first, count },
            commit: commit.map(String::from),
        })
    };
    let bad_group = |op| Refusal {
        error: "OFPBAC_BAD_OUT_GROUP".into(),
        op,
        xid: 0x13,
    };
    let e = from_crate("unix:/x", refused(vec![bad_group(Some(2))], 1, None), &ops);
    assert!(matches!(e, OpenFlowError::Rejected(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "the switch rejected the bundle: OFPBAC_BAD_OUT_GROUP for op 3 \
         `flow add table=0,priority=100,cookie=0x1002,reg0=0x3 actions=drop`"
    );
    let e = from_crate(
        "unix:/x",
        refused(
            vec![bad_group(Some(3)), bad_group(None)],
            5,
            Some("OFPBFC_MSG_FAILED"),
        ),
        &ops,
    );
    assert_eq!(
        e.to_string(),
        "the switch rejected the bundle: OFPBAC_BAD_OUT_GROUP for op 4 \
         `flow add table=0,priority=100,cookie=0x1003,reg0=0x4 actions=drop`; \
         OFPBAC_BAD_OUT_GROUP (xid 0x13); and 3 more errors; commit: OFPBFC_MSG_FAILED"
    );
    let e = from_crate("unix:/x", refused(vec![], 0, Some("OFPBFC_TIMEOUT")), &ops);
    assert_eq!(
        e.to_string(),
        "the switch rejected the bundle: commit: OFPBFC_TIMEOUT"
    );
    let e = from_crate(
        "unix:/x",
        ::openflow::Error::Unreachable {
            path: "/x".into(),
            reason: "gone".into(),
        },
        &ops,
    );
    assert_eq!(e.to_string(), "cannot talk to the switch at unix:/x: gone");
}

/// A dump as the reconciler sees it: cookies, the groups each flow names,
/// groups in the canonical form (buckets by id, as hex), and a group too
/// large to read as one that will be written again.
#[test]
fn a_dump_becomes_the_installed_summary() {
    let flow = |cookie, groups: Vec<u32>| FlowDesc {
        table: 40,
        priority: 100,
        cookie,
        groups,
    };
    let dump = Dump {
        flows: vec![flow(7, vec![5]), flow(8, vec![5]), flow(8, vec![])],
        groups: vec![GroupDesc {
            id: 5,
            group_type: GroupType::Select,
            selection_method: Some("hash".into()),
            hash_fields: vec!["ip_src".into()],
            properties: vec![],
            buckets: vec![
                BucketDesc {
                    id: 9,
                    properties: vec!["weight:50".into()],
                    actions: vec![0xab, 0xcd],
                },
                BucketDesc {
                    id: 2,
                    properties: vec![],
                    actions: vec![0x01],
                },
            ],
        }],
        oversized_groups: vec![OversizedGroup {
            id: 6,
            group_type: GroupType::Select,
            bytes: 150_000,
        }],
    };
    let sum = summary(dump);
    assert_eq!(sum.flows, 3);
    assert_eq!(sum.cookies.iter().copied().collect::<Vec<_>>(), [7, 8]);
    assert_eq!(
        sum.group_users[&5].iter().copied().collect::<Vec<_>>(),
        [7, 8]
    );
    let g = &sum.groups[&5];
    assert!(g.wire);
    assert_eq!(
        (g.kind.as_str(), g.hash_fields.as_slice()),
        ("select", &["ip_src".to_string()][..])
    );
    assert_eq!(
        g.buckets,
        [
            InstalledBucket::new(2, "01"),
            InstalledBucket::new(9, "weight:50,abcd")
        ]
    );
    let big = &sum.groups[&6];
    assert_eq!(big.kind, "select");
    assert!(big.properties[0].starts_with("unreadable"), "{big:?}");
}
