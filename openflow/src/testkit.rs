//! The switch's side of a connection, scripted by a test: what a real OVS
//! rarely does on cue (an echo request mid-bundle, refusing the third
//! message, closing mid-apply, splitting a dump) done on purpose. Every
//! function panics when the peer does not do what the script expects.
//!
//! Built for this crate's tests and with the `testkit` feature.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::codec::{self, msg_type};

/// A message of `kind` with `body`.
pub fn msg(kind: u8, xid: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![codec::OFP_VERSION, kind];
    m.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    m.extend_from_slice(&xid.to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// The xid of a message.
pub fn xid(m: &[u8]) -> u32 {
    u32::from_be_bytes([m[4], m[5], m[6], m[7]])
}

/// The next whole message from the controller; `None` once it is gone.
pub async fn read_msg(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut m = vec![0u8; 8];
    s.read_exact(&mut m).await.ok()?;
    let len = usize::from(u16::from_be_bytes([m[2], m[3]]));
    m.resize(len, 0);
    s.read_exact(&mut m[8..]).await.ok()?;
    Some(m)
}

/// Writes `m` to the controller.
pub async fn send(s: &mut UnixStream, m: &[u8]) {
    s.write_all(m).await.unwrap();
}

/// The switch's side of HELLO and FEATURES.
pub async fn handshake(s: &mut UnixStream) {
    let hello = read_msg(s).await.unwrap();
    assert_eq!(hello[1], msg_type::HELLO);
    send(s, &codec::hello(100)).await;
    let features = read_msg(s).await.unwrap();
    assert_eq!(features[1], msg_type::FEATURES_REQUEST);
    send(s, &msg(msg_type::FEATURES_REPLY, xid(&features), &[0; 24])).await;
}

/// The BUNDLE_CONTROL reply of `kind` (1 open, 5 commit, 7 discard) to `request`.
pub fn bundle_reply(request: &[u8], kind: u16) -> Vec<u8> {
    let mut body = request[8..12].to_vec();
    body.extend_from_slice(&kind.to_be_bytes());
    body.extend_from_slice(&request[14..16]);
    msg(msg_type::BUNDLE_CONTROL, xid(request), &body)
}

/// An OFPT_ERROR about `about`, carrying its first 64 bytes as OVS does.
pub fn error(about: &[u8], err_type: u16, code: u16) -> Vec<u8> {
    let mut body = err_type.to_be_bytes().to_vec();
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(&about[..about.len().min(64)]);
    msg(msg_type::ERROR, xid(about), &body)
}

/// The type of a BUNDLE_CONTROL request (0 open, 4 commit, 6 discard).
pub fn bundle_ctrl_type(m: &[u8]) -> u16 {
    u16::from_be_bytes([m[12], m[13]])
}

/// Accepts the next connection on `l` and serves its handshake.
pub async fn accept(l: &UnixListener) -> UnixStream {
    let (mut s, _) = l.accept().await.unwrap();
    handshake(&mut s).await;
    s
}

/// Serves an atomic, ordered bundle's OPEN; returns the request.
pub async fn open_bundle(s: &mut UnixStream) -> Vec<u8> {
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
    send(s, &bundle_reply(&open, 1)).await;
    open
}

/// Serves OPEN and every add up to the barrier after them; returns the adds.
pub async fn take_bundle(s: &mut UnixStream) -> Vec<Vec<u8>> {
    open_bundle(s).await;
    let mut adds = Vec::new();
    loop {
        let m = read_msg(s).await.unwrap();
        match m[1] {
            msg_type::BUNDLE_ADD_MESSAGE => adds.push(m),
            msg_type::BARRIER_REQUEST => {
                send(s, &barrier_reply(&m)).await;
                return adds;
            }
            other => panic!("message type {other} inside the bundle"),
        }
    }
}

/// Serves COMMIT (successfully) and the barrier after it.
pub async fn commit(s: &mut UnixStream) {
    let c = read_msg(s).await.unwrap();
    assert_eq!((c[1], bundle_ctrl_type(&c)), (msg_type::BUNDLE_CONTROL, 4));
    send(s, &bundle_reply(&c, 5)).await;
    let b = read_msg(s).await.unwrap();
    send(s, &barrier_reply(&b)).await;
}

/// A listening socket `br0.mgmt` in `dir`.
pub fn socket(dir: &Path) -> (PathBuf, UnixListener) {
    let path = dir.join("br0.mgmt");
    let l = UnixListener::bind(&path).unwrap();
    (path, l)
}

/// A MULTIPART_REPLY of `kind` to `request` with `body`, flagged REPLY_MORE
/// when `more`.
pub fn multipart_reply(request: &[u8], kind: u16, more: bool, body: &[u8]) -> Vec<u8> {
    let mut b = kind.to_be_bytes().to_vec();
    b.extend_from_slice(&u16::from(more).to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(body);
    msg(msg_type::MULTIPART_REPLY, xid(request), &b)
}

/// An ofp_group_desc of a select group with `buckets` bytes of buckets (not
/// valid ones: only a wrapped reply carries any).
pub fn group_desc(id: u32, buckets: usize) -> Vec<u8> {
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
pub fn group_stats(id: u32, buckets: usize) -> Vec<u8> {
    let len = 40 + 16 * buckets;
    let mut e = (len as u16).to_be_bytes().to_vec();
    e.extend_from_slice(&[0, 0]);
    e.extend_from_slice(&id.to_be_bytes());
    e.resize(len, 0);
    e
}

/// The BARRIER_REPLY to `request`, which must be a BARRIER_REQUEST.
pub fn barrier_reply(request: &[u8]) -> Vec<u8> {
    assert_eq!(request[1], msg_type::BARRIER_REQUEST);
    msg(msg_type::BARRIER_REPLY, xid(request), &[])
}

/// The group id a GROUP_STATS or GROUP_DESC request asks about.
pub fn requested_group(request: &[u8]) -> u32 {
    u32::from_be_bytes([request[16], request[17], request[18], request[19]])
}
