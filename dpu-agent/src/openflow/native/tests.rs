//! The bundle protocol against a scripted fake switch on a unix socket: what a
//! real OVS rarely does on cue (echo requests mid-bundle, refusing the third
//! message, closing mid-apply, splitting a dump) happens here on purpose.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::codec::{self, msg_type};
use super::NativeBackend;
use crate::flows::{Actions, FlowBody, FlowKey, Match};
use crate::openflow::ir::Field;
use crate::openflow::{BundleOp, OpenFlowBackend, OpenFlowError};
use crate::pipeline::cookie::{Category, Cookie};

fn msg(kind: u8, xid: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![codec::OFP_VERSION, kind];
    m.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    m.extend_from_slice(&xid.to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn xid(m: &[u8]) -> u32 {
    u32::from_be_bytes([m[4], m[5], m[6], m[7]])
}

async fn read_msg(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut m = vec![0u8; 8];
    s.read_exact(&mut m).await.ok()?;
    let len = usize::from(u16::from_be_bytes([m[2], m[3]]));
    m.resize(len, 0);
    s.read_exact(&mut m[8..]).await.ok()?;
    Some(m)
}

/// The switch's side of HELLO and FEATURES.
async fn handshake(s: &mut UnixStream) {
    let hello = read_msg(s).await.unwrap();
    assert_eq!(hello[1], msg_type::HELLO);
    s.write_all(&codec::hello(100)).await.unwrap();
    let features = read_msg(s).await.unwrap();
    assert_eq!(features[1], msg_type::FEATURES_REQUEST);
    s.write_all(&msg(msg_type::FEATURES_REPLY, xid(&features), &[0; 24]))
        .await
        .unwrap();
}

fn bundle_reply(request: &[u8], kind: u16) -> Vec<u8> {
    let mut body = request[8..12].to_vec();
    body.extend_from_slice(&kind.to_be_bytes());
    body.extend_from_slice(&request[14..16]);
    msg(msg_type::BUNDLE_CONTROL, xid(request), &body)
}

/// An OFPT_ERROR about `about`, carrying its first 64 bytes as OVS does.
fn error(about: &[u8], err_type: u16, code: u16) -> Vec<u8> {
    let mut body = err_type.to_be_bytes().to_vec();
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(&about[..about.len().min(64)]);
    msg(msg_type::ERROR, xid(about), &body)
}

fn bundle_ctrl_type(m: &[u8]) -> u16 {
    u16::from_be_bytes([m[12], m[13]])
}

fn ops(n: usize) -> Vec<BundleOp> {
    (0..n)
        .map(|i| BundleOp::AddFlow {
            key: FlowKey::new(0, 100, Match::new().reg(Field::Reg0, i as u32 + 1)),
            body: FlowBody::new(Actions::drop(), Cookie::new(Category::Service, "s")),
            cookie: 0x1000 + i as u64,
        })
        .collect()
}

/// Serves OPEN and every add up to the barrier after them; returns the adds.
async fn take_bundle(s: &mut UnixStream) -> Vec<Vec<u8>> {
    let open = read_msg(s).await.unwrap();
    assert_eq!(
        (open[1], bundle_ctrl_type(&open)),
        (msg_type::BUNDLE_CONTROL, 0)
    );
    assert_eq!(
        u16::from_be_bytes([open[14], open[15]]),
        3,
        "atomic|ordered"
    );
    s.write_all(&bundle_reply(&open, 1)).await.unwrap();
    let mut adds = Vec::new();
    loop {
        let m = read_msg(s).await.unwrap();
        match m[1] {
            msg_type::BUNDLE_ADD_MESSAGE => adds.push(m),
            msg_type::BARRIER_REQUEST => {
                s.write_all(&msg(msg_type::BARRIER_REPLY, xid(&m), &[]))
                    .await
                    .unwrap();
                return adds;
            }
            other => panic!("message type {other} inside the bundle"),
        }
    }
}

/// Serves COMMIT (successfully) and the barrier after it.
async fn commit(s: &mut UnixStream) {
    let c = read_msg(s).await.unwrap();
    assert_eq!((c[1], bundle_ctrl_type(&c)), (msg_type::BUNDLE_CONTROL, 4));
    s.write_all(&bundle_reply(&c, 5)).await.unwrap();
    let b = read_msg(s).await.unwrap();
    assert_eq!(b[1], msg_type::BARRIER_REQUEST);
    s.write_all(&msg(msg_type::BARRIER_REPLY, xid(&b), &[]))
        .await
        .unwrap();
}

fn socket(dir: &Path) -> (PathBuf, UnixListener) {
    let path = dir.join("br0.mgmt");
    let l = UnixListener::bind(&path).unwrap();
    (path, l)
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
async fn a_switch_without_openflow_1_5_is_named_with_what_it_offers() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        read_msg(&mut s).await.unwrap();
        // OpenFlow 1.3 in the header, a bitmap of 1.0 and 1.3.
        let hello = msg(msg_type::HELLO, 7, &[0, 1, 0, 8, 0, 0, 0, 0b10010]);
        let mut hello = hello;
        hello[0] = 4;
        s.write_all(&hello).await.unwrap();
        let _ = read_msg(&mut s).await;
    });
    let e = backend(&path).apply(&ops(1)).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, OpenFlowError::Protocol(_)), "{text}");
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
        let (mut s, _) = l.accept().await.unwrap();
        handshake(&mut s).await;
        let open = read_msg(&mut s).await.unwrap();
        s.write_all(&bundle_reply(&open, 1)).await.unwrap();
        let mut adds = 0;
        let mut echoed = false;
        loop {
            let m = read_msg(&mut s).await.unwrap();
            match m[1] {
                msg_type::BUNDLE_ADD_MESSAGE => {
                    adds += 1;
                    if adds == 1 {
                        s.write_all(&codec::echo_request(0xec40, b"ping"))
                            .await
                            .unwrap();
                    }
                }
                msg_type::ECHO_REPLY => {
                    assert_eq!((xid(&m), &m[8..]), (0xec40, &b"ping"[..]));
                    echoed = true;
                }
                msg_type::BARRIER_REQUEST => {
                    s.write_all(&msg(msg_type::BARRIER_REPLY, xid(&m), &[]))
                        .await
                        .unwrap();
                    break;
                }
                other => panic!("type {other}"),
            }
        }
        commit(&mut s).await;
        (adds, echoed)
    });
    backend(&path).apply(&ops(n)).await.unwrap();
    let (adds, echoed) = switch.await.unwrap();
    assert_eq!(adds, n);
    assert!(echoed, "no echo reply before the barrier");
}

#[tokio::test]
async fn a_message_refused_while_adding_names_its_op_and_discards_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let switch = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        handshake(&mut s).await;
        let open = read_msg(&mut s).await.unwrap();
        s.write_all(&bundle_reply(&open, 1)).await.unwrap();
        let mut adds = 0;
        loop {
            let m = read_msg(&mut s).await.unwrap();
            if m[1] == msg_type::BARRIER_REQUEST {
                s.write_all(&msg(msg_type::BARRIER_REPLY, xid(&m), &[]))
                    .await
                    .unwrap();
                break;
            }
            adds += 1;
            // The third add: OFPBAC_BAD_OUT_GROUP.
            if adds == 3 {
                s.write_all(&error(&m, 2, 9)).await.unwrap();
            }
        }
        let discard = read_msg(&mut s).await.unwrap();
        assert_eq!(bundle_ctrl_type(&discard), 6);
        s.write_all(&bundle_reply(&discard, 7)).await.unwrap();
        read_msg(&mut s).await
    });
    let mut b = backend(&path);
    let e = b.apply(&ops(5)).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, OpenFlowError::Rejected(_)), "{text}");
    assert!(
        text.contains("op 3 `flow add table=0,priority=100,cookie=0x1002,reg0=0x3 actions=drop`"),
        "{text}"
    );
    drop(b);
    // Nothing after the discard: no commit.
    assert!(switch.await.unwrap().is_none());
}

#[tokio::test]
async fn a_message_refused_at_commit_names_its_op() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        handshake(&mut s).await;
        let adds = take_bundle(&mut s).await;
        let c = read_msg(&mut s).await.unwrap();
        // As OVS: the error names the bundled message, then the commit fails.
        let mut inner = adds[3][16..].to_vec();
        inner.truncate(64);
        s.write_all(&error(&inner, 6, 0)).await.unwrap();
        s.write_all(&error(&c, 17, 16)).await.unwrap();
        let b = read_msg(&mut s).await.unwrap();
        s.write_all(&msg(msg_type::BARRIER_REPLY, xid(&b), &[]))
            .await
            .unwrap();
        let _ = read_msg(&mut s).await;
    });
    let e = backend(&path).apply(&ops(6)).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, OpenFlowError::Rejected(_)), "{text}");
    assert!(
        text.contains("op 4 `flow add table=0,priority=100,cookie=0x1003,reg0=0x4"),
        "{text}"
    );
    assert!(text.contains("commit"), "{text}");
}

#[tokio::test]
async fn a_switch_gone_mid_apply_is_unreachable_and_the_next_call_connects_again() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let switch = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        handshake(&mut s).await;
        let open = read_msg(&mut s).await.unwrap();
        s.write_all(&bundle_reply(&open, 1)).await.unwrap();
        read_msg(&mut s).await.unwrap();
        drop(s);
        // A restarted switch.
        let (mut s, _) = l.accept().await.unwrap();
        handshake(&mut s).await;
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
        let (mut s, _) = l.accept().await.unwrap();
        handshake(&mut s).await;
        // Swallow the OPEN; never answer.
        read_msg(&mut s).await.unwrap();
        let (mut s2, _) = l.accept().await.unwrap();
        handshake(&mut s2).await;
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

fn multipart_reply(request: &[u8], kind: u16, more: bool, body: &[u8]) -> Vec<u8> {
    let mut b = kind.to_be_bytes().to_vec();
    b.extend_from_slice(&u16::from(more).to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(body);
    msg(msg_type::MULTIPART_REPLY, xid(request), &b)
}

/// An ofp_group_desc of a select group with `buckets` bytes of buckets (not
/// valid ones: only the wrapped reply carries any).
fn group_desc(id: u32, buckets: usize) -> Vec<u8> {
    let len = 16 + buckets;
    let mut e = (len as u16).to_be_bytes().to_vec();
    e.extend_from_slice(&[1, 0]);
    e.extend_from_slice(&id.to_be_bytes());
    e.extend_from_slice(&(buckets as u16).to_be_bytes());
    e.extend_from_slice(&[0; 6]);
    e.resize(len, 0xab);
    e
}

/// A GROUP_STATS entry with `buckets` bucket counters.
fn group_stats(id: u32, buckets: usize) -> Vec<u8> {
    let len = 40 + 16 * buckets;
    let mut e = (len as u16).to_be_bytes().to_vec();
    e.extend_from_slice(&[0, 0]);
    e.extend_from_slice(&id.to_be_bytes());
    e.resize(len, 0);
    e
}

fn barrier_reply(request: &[u8]) -> Vec<u8> {
    assert_eq!(request[1], msg_type::BARRIER_REQUEST);
    msg(msg_type::BARRIER_REPLY, xid(request), &[])
}

fn requested_group(request: &[u8]) -> u32 {
    u32::from_be_bytes([request[16], request[17], request[18], request[19]])
}

#[tokio::test]
async fn a_dump_split_over_several_replies_is_read_to_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        handshake(&mut s).await;
        let flows = read_msg(&mut s).await.unwrap();
        let stats = read_msg(&mut s).await.unwrap();
        let barrier = read_msg(&mut s).await.unwrap();
        s.write_all(&multipart_reply(&flows, 1, true, &[]))
            .await
            .unwrap();
        s.write_all(&multipart_reply(&stats, 6, true, &group_stats(4, 2)))
            .await
            .unwrap();
        s.write_all(&multipart_reply(&stats, 6, false, &group_stats(5, 0)))
            .await
            .unwrap();
        wait.await.unwrap();
        s.write_all(&multipart_reply(&flows, 1, false, &[]))
            .await
            .unwrap();
        s.write_all(&barrier_reply(&barrier)).await.unwrap();
        // Small groups: described all at once.
        let groups = read_msg(&mut s).await.unwrap();
        assert_eq!(requested_group(&groups), 0xffff_fffc);
        let barrier = read_msg(&mut s).await.unwrap();
        s.write_all(&multipart_reply(&groups, 7, true, &group_desc(4, 0)))
            .await
            .unwrap();
        s.write_all(&multipart_reply(&groups, 7, false, &group_desc(5, 0)))
            .await
            .unwrap();
        s.write_all(&barrier_reply(&barrier)).await.unwrap();
        let _ = read_msg(&mut s).await;
    });
    let mut b = backend(&path);
    let mut dump = Box::pin(b.installed());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut dump)
            .await
            .is_err(),
        "the dump ended before the reply without REPLY_MORE"
    );
    go.send(()).unwrap();
    let sum = dump.await.unwrap();
    assert_eq!(sum.flows, 0);
    assert_eq!(sum.groups.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
}

/// With a large group on the switch, every group is described by its own
/// request (a dump of all would crash OVS 3.1). The large one comes back as OVS
/// sends it, an empty part and then one reply whose length wrapped: the dump
/// frames it by what follows, reports it unreadable, and reads the rest.
#[tokio::test]
async fn with_a_large_group_groups_are_described_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        handshake(&mut s).await;
        let flows = read_msg(&mut s).await.unwrap();
        let stats = read_msg(&mut s).await.unwrap();
        let barrier = read_msg(&mut s).await.unwrap();
        s.write_all(&multipart_reply(&flows, 1, false, &[]))
            .await
            .unwrap();
        let mut entries = group_stats(1, 1);
        entries.extend(group_stats(9, 2000));
        entries.extend(group_stats(2, 0));
        s.write_all(&multipart_reply(&stats, 6, false, &entries))
            .await
            .unwrap();
        s.write_all(&barrier_reply(&barrier)).await.unwrap();
        let mut requests = Vec::new();
        for _ in 0..3 {
            requests.push(read_msg(&mut s).await.unwrap());
        }
        let barrier = read_msg(&mut s).await.unwrap();
        let ids: Vec<u32> = requests.iter().map(|r| requested_group(r)).collect();
        assert_eq!(ids, vec![1, 9, 2]);
        s.write_all(&multipart_reply(&requests[0], 7, false, &group_desc(1, 0)))
            .await
            .unwrap();
        s.write_all(&multipart_reply(&requests[1], 7, true, &[]))
            .await
            .unwrap();
        // 150 000 bytes; the header says 150 016 mod 65 536.
        let mut big = multipart_reply(&requests[1], 7, false, &group_desc(9, 150_000 - 16));
        let wrapped = (big.len() % 65_536) as u16;
        big[2..4].copy_from_slice(&wrapped.to_be_bytes());
        s.write_all(&big).await.unwrap();
        s.write_all(&multipart_reply(&requests[2], 7, false, &group_desc(2, 0)))
            .await
            .unwrap();
        s.write_all(&barrier_reply(&barrier)).await.unwrap();
        let _ = read_msg(&mut s).await;
    });
    let sum = backend(&path).installed().await.unwrap();
    assert_eq!(
        sum.groups.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 9]
    );
    assert_eq!(sum.groups[&9].kind, "select");
    assert!(sum.groups[&9].properties[0].starts_with("unreadable"));
    assert!(sum.groups[&1].properties.is_empty());
}

#[tokio::test]
async fn a_connection_the_switch_closed_while_idle_is_replaced_without_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let (closed, wait_closed) = tokio::sync::oneshot::channel::<()>();
    let switch = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        handshake(&mut s).await;
        take_bundle(&mut s).await;
        commit(&mut s).await;
        drop(s);
        closed.send(()).unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        handshake(&mut s).await;
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
/// which the types allow and OpenFlow does not) refuses the bundle before
/// anything is sent: the socket does not even exist, and the error is not
/// about reaching it.
#[tokio::test]
async fn an_op_that_cannot_be_encoded_refuses_the_bundle_unsent() {
    let mut b = backend(Path::new("/nonexistent/br0.mgmt"));
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
    assert!(text.contains("prerequisites"), "{text}");
}

/// A call dropped midway (the agent gave up on it) leaves the connection at an
/// unknown point; the next call does not use it.
#[tokio::test]
async fn a_cancelled_call_is_not_continued_on_the_same_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (path, l) = socket(dir.path());
    let switch = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        handshake(&mut s).await;
        // Takes the OPEN, answers nothing.
        read_msg(&mut s).await.unwrap();
        let (mut s2, _) = l.accept().await.unwrap();
        handshake(&mut s2).await;
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
