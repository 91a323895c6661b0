//! Whether `ovs-vswitchd` is serving the bridge right now: one plain OpenFlow
//! connection to the bridge's `.mgmt` socket, kept open with HELLO and echo
//! requests. `ovs-vswitchd` holds that socket, so the connection ends the moment
//! it exits, and a new one is accepted as soon as a new `ovs-vswitchd` has the
//! bridge again. OVSDB cannot tell: `ovsdb-server` keeps running, and the rows a
//! restarted `ovs-vswitchd` writes back are the same as before.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

/// OpenFlow 1.5.
const OFP_VERSION: u8 = 0x06;
const OFPT_HELLO: u8 = 0;
const OFPT_ECHO_REQUEST: u8 = 2;
const OFPT_ECHO_REPLY: u8 = 3;
/// Bound on one OpenFlow message we accept on this connection.
const MAX_MESSAGE: usize = 64 * 1024;
/// How often an idle connection is probed, and how long an answer may take.
const ECHO_INTERVAL: Duration = Duration::from_secs(1);
const ECHO_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between connection attempts while the switch is away.
const RETRY: Duration = Duration::from_millis(200);

/// The switch as this connection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchLink {
    /// No connection has been tried yet.
    Unknown,
    /// Connected; `generation` counts connections since the agent started, so a
    /// new value means a new `ovs-vswitchd` (or the same one after a gap).
    Up { generation: u64 },
    /// The last connection ended or none can be made.
    Down,
}

/// Watches `mgmt` (the socket path, without `unix:`) until the receiver is dropped.
pub fn watch_switch(mgmt: PathBuf) -> watch::Receiver<SwitchLink> {
    let (tx, rx) = watch::channel(SwitchLink::Unknown);
    tokio::spawn(async move {
        let mut generation = 0;
        loop {
            match UnixStream::connect(&mgmt).await {
                Ok(stream) => {
                    generation += 1;
                    let reason = serve(stream, &tx, generation).await;
                    tracing::debug!(path = %mgmt.display(), %reason, "OpenFlow liveness connection ended");
                }
                Err(e) => {
                    tracing::trace!(path = %mgmt.display(), error = %e, "switch not accepting")
                }
            }
            if tx.send(SwitchLink::Down).is_err() && tx.is_closed() {
                return;
            }
            tokio::time::sleep(RETRY).await;
        }
    });
    rx
}

fn header(kind: u8, length: u16, xid: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = OFP_VERSION;
    h[1] = kind;
    h[2..4].copy_from_slice(&length.to_be_bytes());
    h[4..8].copy_from_slice(&xid.to_be_bytes());
    h
}

/// Runs one connection; returns why it ended.
async fn serve(stream: UnixStream, tx: &watch::Sender<SwitchLink>, generation: u64) -> String {
    let (mut rd, mut wr) = stream.into_split();
    if let Err(e) = wr.write_all(&header(OFPT_HELLO, 8, 1)).await {
        return format!("sending HELLO: {e}");
    }
    let mut up = false;
    let mut xid: u32 = 1;
    let mut waiting_since: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(ECHO_INTERVAL);
    loop {
        let mut head = [0u8; 8];
        tokio::select! {
            r = rd.read_exact(&mut head) => {
                if let Err(e) = r {
                    return format!("reading: {e}");
                }
                let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
                if !(8..=MAX_MESSAGE).contains(&len) {
                    return format!("message length {len} out of bounds");
                }
                let mut body = vec![0u8; len - 8];
                if let Err(e) = rd.read_exact(&mut body).await {
                    return format!("reading a message body: {e}");
                }
                match head[1] {
                    OFPT_ECHO_REQUEST => {
                        let xid = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                        let mut reply = header(OFPT_ECHO_REPLY, len as u16, xid).to_vec();
                        reply.extend_from_slice(&body);
                        if let Err(e) = wr.write_all(&reply).await {
                            return format!("answering an echo: {e}");
                        }
                    }
                    OFPT_ECHO_REPLY => waiting_since = None,
                    _ => {}
                }
                // Any answer (HELLO, or an error naming a version we both lack)
                // proves a live switch behind the socket.
                if !up {
                    up = true;
                    let _ = tx.send(SwitchLink::Up { generation });
                }
            }
            _ = tick.tick() => {
                if let Some(since) = waiting_since {
                    if since.elapsed() > ECHO_TIMEOUT {
                        return format!("no echo reply in {ECHO_TIMEOUT:?}");
                    }
                    continue;
                }
                xid = xid.wrapping_add(1);
                if let Err(e) = wr.write_all(&header(OFPT_ECHO_REQUEST, 8, xid)).await {
                    return format!("sending an echo: {e}");
                }
                waiting_since = Some(tokio::time::Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_openflow_1_5() {
        assert_eq!(header(OFPT_HELLO, 8, 1), [6, 0, 0, 8, 0, 0, 0, 1]);
        assert_eq!(
            header(OFPT_ECHO_REQUEST, 8, 0x0102_0304),
            [6, 2, 0, 8, 1, 2, 3, 4]
        );
    }

    /// A fake switch on a socket pair: answers HELLO, then closes. The watcher
    /// reports Up, then Down when the socket is gone, then Up with a new
    /// generation when a listener is back.
    #[tokio::test]
    async fn up_then_down_then_up_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("br.mgmt");
        let serve_once = |path: PathBuf| async move {
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            let (mut s, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 8];
            s.read_exact(&mut hello).await.unwrap();
            assert_eq!(hello[..2], [OFP_VERSION, OFPT_HELLO]);
            s.write_all(&header(OFPT_HELLO, 8, 9)).await.unwrap();
            // Let the watcher see it, then go away like an exiting vswitchd.
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(s);
            drop(listener);
            std::fs::remove_file(&path).unwrap();
        };
        let server = tokio::spawn(serve_once(path.clone()));
        let mut rx = watch_switch(path.clone());
        let wait_for = |rx: &mut watch::Receiver<SwitchLink>, want: fn(&SwitchLink) -> bool| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), rx.wait_for(want))
                    .await
                    .expect("in time")
                    .map(|s| *s)
                    .unwrap()
            }
        };
        assert_eq!(
            wait_for(&mut rx, |s| matches!(s, SwitchLink::Up { .. })).await,
            SwitchLink::Up { generation: 1 }
        );
        server.await.unwrap();
        assert_eq!(
            wait_for(&mut rx, |s| *s == SwitchLink::Down).await,
            SwitchLink::Down
        );
        let server = tokio::spawn(serve_once(path.clone()));
        let back = wait_for(&mut rx, |s| matches!(s, SwitchLink::Up { .. })).await;
        assert!(
            matches!(back, SwitchLink::Up { generation } if generation >= 2),
            "{back:?}"
        );
        server.await.unwrap();
    }
}
