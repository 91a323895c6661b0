//! The port writer: one task that owns the agent loop's OVSDB port writes (probe
//! links, the Geneve port, pods' representors). The loop sends it typed commands
//! and goes on; each transaction's outcome comes back on the completion channel,
//! which the loop polls, carrying the loop's own tag (what to update when it is
//! done, e.g. a CNI ADD's reply). A slow `ovsdb-server` then delays only the
//! writes, never an update's ACK.
//!
//! Commands run one at a time, in the order sent: a plug after an unplug of the
//! same representor lands after it. The loop keeps at most one write per thing in
//! flight (per probe zone, the tunnel port, one pod command), so the queue stays
//! small.

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::vswitch::ovsdb::{
    ensure_internal_port, ensure_tunnel_port, plug_port, unplug_port, OvsdbClient, OvsdbError,
};

/// One port write on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortWrite {
    /// An internal port with a MAC and `iface-id` ([`ensure_internal_port`]).
    Internal {
        port: String,
        iface_id: String,
        mac: String,
    },
    /// The flow-based Geneve port ([`ensure_tunnel_port`]).
    Tunnel { port: String },
    /// A system interface with `external_ids` ([`plug_port`]).
    Plug {
        port: String,
        external_ids: BTreeMap<String, String>,
    },
    /// Removes a port; a missing one is not an error ([`unplug_port`]).
    Unplug { port: String },
}

/// A finished write: the sender's tag and the transaction's outcome.
#[derive(Debug)]
pub struct Done<T> {
    pub tag: T,
    pub result: Result<(), OvsdbError>,
}

struct Cmd<T> {
    client: OvsdbClient,
    write: PortWrite,
    tag: T,
}

/// The command side. Dropping it stops the task (a write in flight is abandoned,
/// as when the loop ends).
#[derive(Debug)]
pub struct PortWriter<T> {
    tx: mpsc::UnboundedSender<Cmd<T>>,
    task: JoinHandle<()>,
}

impl<T> std::fmt::Debug for Cmd<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmd").field("write", &self.write).finish()
    }
}

impl<T: Send + 'static> PortWriter<T> {
    /// Starts the task for `bridge`; completions arrive on the receiver.
    pub fn spawn(bridge: &str) -> (Self, mpsc::UnboundedReceiver<Done<T>>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd<T>>();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let bridge = bridge.to_string();
        let task = tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                let result = run(&cmd.client, &bridge, &cmd.write).await;
                if done_tx
                    .send(Done {
                        tag: cmd.tag,
                        result,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        (PortWriter { tx, task }, done_rx)
    }

    /// Queues `write` over `client`; never waits. Its completion carries `tag`.
    pub fn send(&self, client: OvsdbClient, write: PortWrite, tag: impl Into<T>) {
        let tag = tag.into();
        // Fails only when the task is gone, i.e. the agent is stopping.
        let _ = self.tx.send(Cmd { client, write, tag });
    }
}

impl<T> Drop for PortWriter<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(client: &OvsdbClient, bridge: &str, write: &PortWrite) -> Result<(), OvsdbError> {
    match write {
        PortWrite::Internal {
            port,
            iface_id,
            mac,
        } => ensure_internal_port(client, bridge, port, iface_id, mac).await,
        PortWrite::Tunnel { port } => ensure_tunnel_port(client, bridge, port).await,
        PortWrite::Plug { port, external_ids } => {
            plug_port(client, bridge, port, external_ids).await
        }
        PortWrite::Unplug { port } => unplug_port(client, bridge, port).await.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// An `ovsdb-server` stand-in that reads requests and answers only when told
    /// (each `select` with no rows, anything else with an empty result), so a
    /// write stays in flight for as long as the test wants.
    async fn silent_server(
        path: &std::path::Path,
    ) -> (mpsc::UnboundedSender<()>, mpsc::UnboundedReceiver<String>) {
        let listener = UnixListener::bind(path).expect("bind");
        let (go_tx, mut go_rx) = mpsc::unbounded_channel::<()>();
        let (seen_tx, seen_rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r);
            let mut buf = Vec::new();
            let mut depth = 0i32;
            let mut in_str = false;
            let mut esc = false;
            // Requests are JSON objects back to back; split them by depth.
            loop {
                let chunk = match lines.fill_buf().await {
                    Ok([]) | Err(_) => return,
                    Ok(c) => c.to_vec(),
                };
                lines.consume(chunk.len());
                for b in chunk {
                    buf.push(b);
                    match b {
                        _ if esc => esc = false,
                        b'\\' if in_str => esc = true,
                        b'"' => in_str = !in_str,
                        b'{' if !in_str => depth += 1,
                        b'}' if !in_str => {
                            depth -= 1;
                            if depth == 0 {
                                let req: serde_json::Value =
                                    serde_json::from_slice(&buf).expect("json");
                                buf.clear();
                                let _ = seen_tx.send(req.to_string());
                                if go_rx.recv().await.is_none() {
                                    return;
                                }
                                let result = serde_json::json!([{"rows": [], "count": 1}]);
                                let reply = serde_json::json!({
                                    "id": req["id"], "result": result, "error": null
                                });
                                let _ = w.write_all(reply.to_string().as_bytes()).await;
                            }
                        }
                        _ => {}
                    }
                }
            }
        });
        (go_tx, seen_rx)
    }

    /// The sender never waits for OVSDB: with the server silent, `send` returns at
    /// once and nothing completes; each write completes, in order, only when the
    /// server answers.
    #[tokio::test]
    async fn writes_complete_later_and_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("db.sock");
        let (go, mut seen) = silent_server(&sock).await;
        let client = OvsdbClient::connect(&sock).await.expect("connect");
        let (writer, mut done) = PortWriter::<u32>::spawn("br-test");
        let started = std::time::Instant::now();
        writer.send(
            client.clone(),
            PortWrite::Unplug {
                port: "rep0".into(),
            },
            1u32,
        );
        writer.send(
            client,
            PortWrite::Unplug {
                port: "rep1".into(),
            },
            2u32,
        );
        assert!(started.elapsed() < Duration::from_millis(50));
        // The first write's select is at the server, unanswered.
        let first = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("the writer sent nothing")
            .expect("server gone");
        assert!(first.contains("rep0"), "{first}");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), done.recv())
                .await
                .is_err(),
            "a write completed while the server was silent"
        );
        // Answered (the port is not there: done), then the second one.
        go.send(()).expect("server");
        let d = done.recv().await.expect("done");
        assert_eq!(d.tag, 1);
        assert!(d.result.is_ok(), "{:?}", d.result);
        let second = seen.recv().await.expect("server gone");
        assert!(second.contains("rep1"), "{second}");
        go.send(()).expect("server");
        let d = done.recv().await.expect("done");
        assert_eq!(d.tag, 2);
    }
}
