//! The connection against a scripted fake switch on a unix socket
//! ([`crate::testkit`]): the bundle protocol and the dumps.

use std::time::Duration;

use crate::codec::{self, msg_type, Change, FlowMod};
use crate::ir::{Actions, Field, Match};
use crate::testkit::*;
use crate::{Bundle, Connection, Error};

/// A bundle of `n` flows `reg0=i+1 actions=drop` with cookies 0x1000 + i.
fn bundle(n: usize) -> Bundle {
    let (m, act) = (matches(n), Actions::drop());
    let mut b = Bundle::with_capacity(n);
    for change in flows(n, &m, &act) {
        b.push(change).unwrap();
    }
    b
}

/// The flows of [`bundle`], as changes; `m` from [`matches`].
fn flows<'a>(n: usize, m: &'a [Match], act: &'a Actions) -> impl Iterator<Item = Change<'a>> {
    (0..n).map(move |i| FlowMod::add(0, 100, 0x1000 + i as u64, &m[i], act).into())
}

fn matches(n: usize) -> Vec<Match> {
    (0..n)
        .map(|i| Match::new().reg(Field::Reg0, i as u32 + 1))
        .collect()
}

/// The switch's side of a bundle whose `nth` add (from 1) it refuses: it
/// answers the barrier after the adds and the discard that must follow, and
/// returns whatever came after the discard (nothing, or it was committed).
async fn refusing_switch(l: tokio::net::UnixListener, nth: usize) -> Option<Vec<u8>> {
    let mut s = accept(&l).await;
    open_bundle(&mut s).await;
    let mut adds = 0;
    loop {
        let m = read_msg(&mut s).await.unwrap();
        if m[1] == msg_type::BARRIER_REQUEST {
            send(&mut s, &barrier_reply(&m)).await;
            break;
        }
        adds += 1;
        if adds == nth {
            send(&mut s, &error(&m, 2, 9)).await;
        }
    }
    let discard = read_msg(&mut s).await.unwrap();
    assert_eq!(bundle_ctrl_type(&discard), 6);
    send(&mut s, &bundle_reply(&discard, 7)).await;
    read_msg(&mut s).await
}

#[tokio::test]
async fn a_missing_socket_is_unreachable() {
    let e = Connection::connect("/nonexistent/br0.mgmt")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/br0.mgmt"), "{e}");
}

#[tokio::test]
async fn a_switch_without_openflow_1_5_is_named_with_what_it_offers() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        read_msg(&mut s).await.unwrap();
        // OpenFlow 1.3 in the header, a bitmap of 1.0 and 1.3.
        let mut hello = msg(msg_type::HELLO, 7, &[0, 1, 0, 8, 0, 0, 0, 0b10010]);
        hello[0] = 4;
        send(&mut s, &hello).await;
        let _ = read_msg(&mut s).await;
    });
    let e = Connection::connect(&path).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Protocol(_)), "{text}");
    assert!(
        text.contains("OpenFlow 1.0, OpenFlow 1.3") && text.contains("1.5"),
        "{text}"
    );
}

/// 20 000 flows (megabytes, far past any socket buffer); the switch asks for an
/// echo after the first and wants the reply before the barrier.
#[tokio::test]
async fn echo_requests_are_answered_in_the_middle_of_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let n = 20_000;
    let switch = tokio::spawn(async move {
        let mut s = accept(&l).await;
        open_bundle(&mut s).await;
        let (mut adds, mut echoed) = (0, false);
        loop {
            let m = read_msg(&mut s).await.unwrap();
            match m[1] {
                msg_type::BUNDLE_ADD_MESSAGE => {
                    adds += 1;
                    if adds == 1 {
                        send(&mut s, &codec::echo_request(0xec40, b"ping")).await;
                    }
                }
                msg_type::ECHO_REPLY => {
                    assert_eq!((xid(&m), &m[8..]), (0xec40, &b"ping"[..]));
                    echoed = true;
                }
                msg_type::BARRIER_REQUEST => {
                    send(&mut s, &barrier_reply(&m)).await;
                    break;
                }
                other => panic!("type {other}"),
            }
        }
        commit(&mut s).await;
        (adds, echoed)
    });
    let mut conn = Connection::connect(&path).await.unwrap();
    let mut b = bundle(n);
    assert_eq!((b.ops(), b.messages()), (n, n));
    assert!(conn.apply(&mut b).await.unwrap().is_empty());
    let (adds, echoed) = switch.await.unwrap();
    assert_eq!(adds, n);
    assert!(echoed, "no echo reply before the barrier");
}

#[tokio::test]
async fn a_message_refused_while_adding_names_its_op_and_discards_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let switch = tokio::spawn(refusing_switch(l, 3));
    let mut conn = Connection::connect(&path).await.unwrap();
    let e = conn.apply(&mut bundle(5)).await.unwrap_err();
    let Error::Bundle(refused) = &e else {
        panic!("{e}")
    };
    assert_eq!(refused.refusals.count, 1);
    assert_eq!(refused.refusals.first[0].op, Some(2));
    assert_eq!(refused.commit, None);
    assert_eq!(
        e.to_string(),
        "the switch rejected the bundle: OFPBAC_BAD_OUT_GROUP for op 3"
    );
    drop(conn);
    // Nothing after the discard: no commit.
    assert!(switch.await.unwrap().is_none());
}

#[tokio::test]
async fn a_message_refused_at_commit_names_its_op_and_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    tokio::spawn(async move {
        let mut s = accept(&l).await;
        let adds = take_bundle(&mut s).await;
        let c = read_msg(&mut s).await.unwrap();
        // As OVS: the error names the bundled message, then the commit fails.
        let mut inner = adds[3][16..].to_vec();
        inner.truncate(64);
        send(&mut s, &error(&inner, 6, 0)).await;
        send(&mut s, &error(&c, 17, 16)).await;
        let b = read_msg(&mut s).await.unwrap();
        send(&mut s, &barrier_reply(&b)).await;
        let _ = read_msg(&mut s).await;
    });
    let mut conn = Connection::connect(&path).await.unwrap();
    let e = conn.apply(&mut bundle(6)).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "the switch rejected the bundle: OFPGMFC_GROUP_EXISTS for op 4; \
         commit: type 17 code 16"
    );
}

#[tokio::test]
async fn an_empty_bundle_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let switch = tokio::spawn(async move {
        let mut s = accept(&l).await;
        read_msg(&mut s).await
    });
    let mut conn = Connection::connect(&path).await.unwrap();
    conn.apply(&mut Bundle::new()).await.unwrap();
    drop(conn);
    assert!(switch.await.unwrap().is_none());
}

#[tokio::test]
async fn a_dump_split_over_several_replies_is_read_to_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut s = accept(&l).await;
        let flows = read_msg(&mut s).await.unwrap();
        let stats = read_msg(&mut s).await.unwrap();
        let barrier = read_msg(&mut s).await.unwrap();
        send(&mut s, &multipart_reply(&flows, 1, true, &[])).await;
        send(
            &mut s,
            &multipart_reply(&stats, 6, true, &group_stats(4, 2)),
        )
        .await;
        send(
            &mut s,
            &multipart_reply(&stats, 6, false, &group_stats(5, 0)),
        )
        .await;
        wait.await.unwrap();
        send(&mut s, &multipart_reply(&flows, 1, false, &[])).await;
        send(&mut s, &barrier_reply(&barrier)).await;
        // Small groups: described all at once.
        let groups = read_msg(&mut s).await.unwrap();
        assert_eq!(requested_group(&groups), 0xffff_fffc);
        let barrier = read_msg(&mut s).await.unwrap();
        send(
            &mut s,
            &multipart_reply(&groups, 7, true, &group_desc(4, 0)),
        )
        .await;
        send(
            &mut s,
            &multipart_reply(&groups, 7, false, &group_desc(5, 0)),
        )
        .await;
        send(&mut s, &barrier_reply(&barrier)).await;
        let _ = read_msg(&mut s).await;
    });
    let mut conn = Connection::connect(&path).await.unwrap();
    let mut dump = Box::pin(conn.dump());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut dump)
            .await
            .is_err(),
        "the dump ended before the reply without REPLY_MORE"
    );
    go.send(()).unwrap();
    let dump = dump.await.unwrap();
    assert!(dump.flows.is_empty());
    assert_eq!(
        dump.groups.iter().map(|g| g.id).collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert!(dump.oversized_groups.is_empty());
}

/// With a large group on the switch, every group is described by its own
/// request (a dump of all would crash OVS 3.1). The large one comes back as OVS
/// sends it, an empty part and then one reply whose length wrapped: the dump
/// frames it by what follows, reports it oversized, and reads the rest.
#[tokio::test]
async fn with_a_large_group_groups_are_described_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    tokio::spawn(async move {
        let mut s = accept(&l).await;
        let flows = read_msg(&mut s).await.unwrap();
        let stats = read_msg(&mut s).await.unwrap();
        let barrier = read_msg(&mut s).await.unwrap();
        send(&mut s, &multipart_reply(&flows, 1, false, &[])).await;
        let mut entries = group_stats(1, 1);
        entries.extend(group_stats(9, 2000));
        entries.extend(group_stats(2, 0));
        send(&mut s, &multipart_reply(&stats, 6, false, &entries)).await;
        send(&mut s, &barrier_reply(&barrier)).await;
        let mut requests = Vec::new();
        for _ in 0..3 {
            requests.push(read_msg(&mut s).await.unwrap());
        }
        let barrier = read_msg(&mut s).await.unwrap();
        let ids: Vec<u32> = requests.iter().map(|r| requested_group(r)).collect();
        assert_eq!(ids, vec![1, 9, 2]);
        send(
            &mut s,
            &multipart_reply(&requests[0], 7, false, &group_desc(1, 0)),
        )
        .await;
        send(&mut s, &multipart_reply(&requests[1], 7, true, &[])).await;
        // 150 000 bytes; the header says 150 016 mod 65 536.
        let mut big = multipart_reply(&requests[1], 7, false, &group_desc(9, 150_000 - 16));
        let wrapped = (big.len() % 65_536) as u16;
        big[2..4].copy_from_slice(&wrapped.to_be_bytes());
        send(&mut s, &big).await;
        send(
            &mut s,
            &multipart_reply(&requests[2], 7, false, &group_desc(2, 0)),
        )
        .await;
        send(&mut s, &barrier_reply(&barrier)).await;
        let _ = read_msg(&mut s).await;
    });
    let mut conn = Connection::connect(&path).await.unwrap();
    let dump = conn.dump().await.unwrap();
    assert_eq!(
        dump.groups.iter().map(|g| g.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(dump.groups[0].properties.is_empty());
    assert_eq!(
        dump.oversized_groups,
        [crate::OversizedGroup {
            id: 9,
            group_type: codec::GroupType::Select,
            bytes: 150_000,
        }]
    );
}

/// What reaches the switch is each change's messages, as [`Change::encode`]
/// writes them, wrapped in BUNDLE_ADD_MESSAGEs of one bundle, numbered in
/// order; a group too large for one message takes several.
#[tokio::test]
async fn a_bundle_carries_each_change_encoded_and_numbered() {
    let m: Match = "ip,nw_dst=10.0.0.1".parse().unwrap();
    let a: Actions = "group:7".parse().unwrap();
    let hash = [crate::ir::HashField::whole(Field::IpSrc)];
    let bucket_actions: Vec<Actions> = (0..1500u32)
        .map(|i| Actions::new().set_reg(Field::Reg3, i).resubmit(45))
        .collect();
    let group = codec::GroupMod {
        id: 7,
        hash_fields: &hash,
        buckets: (0..).zip(&bucket_actions).collect(),
    };
    let changes: Vec<Change> = vec![
        group.clone().into(),
        FlowMod::add(3, 100, 0x42, &m, &a).into(),
        FlowMod::delete_strict(3, 100, &m).into(),
        FlowMod::delete_by_cookie(None, 0x42, u64::MAX).into(),
        Change::DeleteGroup(7),
    ];
    let mut b = Bundle::new();
    for c in &changes {
        b.push(c.clone()).unwrap();
    }
    let split = group.split().unwrap();
    assert!(split.len() > 1, "{split:?}");
    assert_eq!((b.ops(), b.messages()), (5, split.len() + 4));

    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let switch = tokio::spawn(async move {
        let mut s = accept(&l).await;
        let adds = take_bundle(&mut s).await;
        commit(&mut s).await;
        adds
    });
    let mut conn = Connection::connect(&path).await.unwrap();
    conn.apply(&mut b).await.unwrap();
    let adds = switch.await.unwrap();
    let first = xid(&adds[0]);
    let bundle_id = u32::from_be_bytes(adds[0][8..12].try_into().unwrap());
    let want: Vec<Vec<u8>> = changes
        .iter()
        .flat_map(|c| c.encode(0).unwrap())
        .enumerate()
        .map(|(i, inner)| {
            let x = first.wrapping_add(i as u32);
            codec::bundle_add(x, bundle_id, 3, &inner)
        })
        .collect();
    assert_eq!(adds.len(), want.len());
    for (i, (got, want)) in adds.iter().zip(&want).enumerate() {
        assert!(got == want, "message {i} differs");
    }
}

/// `apply_changes` writes its changes part by part as it encodes them: the
/// switch gets the very messages `apply` sends for the same bundle, in order
/// and numbered on from one part to the next.
#[tokio::test]
async fn changes_are_written_part_by_part_numbered_on_from_the_part_before() {
    const N: usize = 5000;
    let (m, act) = (matches(N), Actions::drop());
    let whole = bundle(N);
    assert!(
        whole.bytes() > 3 * crate::bundle::STREAM_CHUNK,
        "{} bytes: several parts",
        whole.bytes()
    );
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let switch = tokio::spawn(async move {
        let mut s = accept(&l).await;
        let adds = take_bundle(&mut s).await;
        commit(&mut s).await;
        adds
    });
    let mut conn = Connection::connect(&path).await.unwrap();
    assert!(conn
        .apply_changes(flows(N, &m, &act))
        .await
        .unwrap()
        .is_empty());
    let adds = switch.await.unwrap();
    assert_eq!(adds.len(), N);
    let first = xid(&adds[0]);
    let bundle_id = u32::from_be_bytes(adds[0][8..12].try_into().unwrap());
    for (i, (got, change)) in adds.iter().zip(flows(N, &m, &act)).enumerate() {
        let inner = change.encode(0).unwrap();
        let want = codec::bundle_add(first.wrapping_add(i as u32), bundle_id, 3, &inner[0]);
        assert!(*got == want, "message {i} differs");
    }
}

/// A change that cannot be encoded, after parts were written, discards the
/// bundle (nothing of it applied) and is named by its index; one that is
/// first sends nothing at all.
#[tokio::test]
async fn a_change_that_cannot_be_encoded_discards_what_was_sent() {
    const N: usize = 4000;
    let (m, act) = (matches(2 * N), Actions::drop());
    let hash = [crate::ir::HashField::whole(Field::IpSrc)];
    let bad_actions = Actions::drop();
    // A bucket id OpenFlow reserves.
    let bad = codec::GroupMod {
        id: 9,
        hash_fields: &hash,
        buckets: vec![(0xffff_ffff, &bad_actions)],
    };
    assert!(Change::from(bad.clone()).encode(0).is_err());

    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let switch = tokio::spawn(async move {
        let mut s = accept(&l).await;
        open_bundle(&mut s).await;
        let mut adds = 0;
        loop {
            let msg = read_msg(&mut s).await.unwrap();
            if msg[1] == msg_type::BUNDLE_ADD_MESSAGE {
                adds += 1;
                continue;
            }
            assert_eq!(
                (msg[1], bundle_ctrl_type(&msg)),
                (msg_type::BUNDLE_CONTROL, 6)
            );
            send(&mut s, &bundle_reply(&msg, 7)).await;
            break;
        }
        // Nothing after the discard: no commit. Then the next connection,
        // for a bundle whose first change is the bad one: nothing at all.
        let after = read_msg(&mut s).await;
        let mut s = accept(&l).await;
        (adds, after, read_msg(&mut s).await)
    });
    let mut conn = Connection::connect(&path).await.unwrap();
    let changes = flows(N, &m, &act)
        .chain([Change::from(bad.clone())])
        .chain(flows(2 * N, &m, &act).skip(N));
    let e = conn.apply_changes(changes).await.unwrap_err();
    assert!(
        matches!(&e, Error::Unencodable { op, .. } if *op == N),
        "{e}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "change {N} of the bundle cannot be encoded: group 9"
        )),
        "{e}"
    );
    drop(conn);
    let mut conn = Connection::connect(&path).await.unwrap();
    let e = conn
        .apply_changes([Change::from(bad)].into_iter().chain(flows(N, &m, &act)))
        .await
        .unwrap_err();
    assert!(matches!(&e, Error::Unencodable { op: 0, .. }), "{e}");
    drop(conn);
    let (adds, after, second) = switch.await.unwrap();
    assert!(
        adds > 0 && adds <= N,
        "{adds} messages sent before the discard"
    );
    assert!(after.is_none());
    assert!(second.is_none(), "the second bundle was not even opened");
}

/// A message the switch refuses in a later part is named by its own op.
#[tokio::test]
async fn a_refusal_in_a_later_part_names_its_op() {
    const N: usize = 5000;
    let (m, act) = (matches(N), Actions::drop());
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    tokio::spawn(refusing_switch(l, 4321));
    let mut conn = Connection::connect(&path).await.unwrap();
    let e = conn.apply_changes(flows(N, &m, &act)).await.unwrap_err();
    let Error::Bundle(refused) = &e else {
        panic!("{e}")
    };
    assert_eq!(refused.refusals.first[0].op, Some(4320));
    assert_eq!(refused.commit, None);
}
