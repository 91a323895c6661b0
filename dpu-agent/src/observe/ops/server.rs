//! The operator socket's listener: one JSON [`Request`] in, one JSON
//! [`Response`] out, per connection. Only root (or the agent's own user) may
//! ask; the answer is text the agent renders from its own state.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::{Ctx, Request, Response};

/// A request larger than this is refused: requests are a few hundred bytes.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client has to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may run (reading the switch and the datapath included).
pub const HANDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After answering, how long and how much unread input is taken before
/// closing (see `connection`).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
const DRAIN_MAX: u64 = 1024 * 1024;
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 8;
/// After a failed `accept` (out of file descriptors), wait before trying again
/// rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum OpsServeError {
    #[error("ops socket {}: cannot create its directory: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("ops socket {}: a file that is not a socket is in the way; move it, or set [ops] socket to another path", path.display())]
    NotASocket { path: PathBuf },
    #[error("ops socket {}: another process is listening on it (a second dpu-agent?)", path.display())]
    InUse { path: PathBuf },
    #[error("ops socket {}: cannot remove the stale socket: {source}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("ops socket {}: cannot bind: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("ops socket {}: cannot make it mode 0600: {source}", path.display())]
    Chmod { path: PathBuf, source: io::Error },
}

/// Serves the operator socket at `path` until `shutdown` turns true (or its
/// sender goes: `wait_for` then fails, which stops it too), then removes the
/// socket file.
pub async fn serve(
    path: &Path,
    ctx: Ctx,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), OpsServeError> {
    let listener = bind(path)?;
    // The inode we bound: on shutdown, remove the file only if it is still ours.
    let ino = std::fs::metadata(path).map(|m| m.ino()).ok();
    tracing::info!(socket = %path.display(), "operator socket listening");
    let ctx = Arc::new(ctx);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match stream {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                conns.spawn(async move {
                    connection(stream, &ctx).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "operator socket: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    // A request still running answers nothing: its client sees the connection
    // close and says the agent went away.
    conns.shutdown().await;
    drop(listener);
    let ours = std::fs::metadata(path).map(|m| Some(m.ino()) == ino);
    if ours.unwrap_or(false) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(socket = %path.display(), error = %e, "cannot remove the operator socket");
        }
    }
    tracing::info!(socket = %path.display(), "operator socket closed");
    Ok(())
}

fn bind(path: &Path) -> Result<UnixListener, OpsServeError> {
    let err_path = || path.to_path_buf();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|source| OpsServeError::CreateDir {
                    path: err_path(),
                    source,
                })?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // A socket someone still answers on is not stale.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(OpsServeError::InUse { path: err_path() });
            }
            std::fs::remove_file(path).map_err(|source| OpsServeError::RemoveStale {
                path: err_path(),
                source,
            })?;
        }
        Ok(_) => return Err(OpsServeError::NotASocket { path: err_path() }),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| OpsServeError::Bind {
        path: err_path(),
        source,
    })?;
    // Between bind and chmod the socket has the umask's mode; the peer check
    // below refuses other users anyway, so the window opens nothing.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        OpsServeError::Chmod {
            path: err_path(),
            source,
        }
    })?;
    Ok(listener)
}

/// Root, or whoever the agent runs as (a test, or an unprivileged lab agent).
fn peer_allowed(uid: u32, own_euid: u32) -> bool {
    uid == 0 || uid == own_euid
}

async fn connection(mut stream: UnixStream, ctx: &Ctx) {
    let resp = answer(&mut stream, ctx).await;
    let mut body = serde_json::to_vec(&resp).unwrap_or_else(|e| {
        format!("{{\"ok\":false,\"output\":\"cannot encode the answer: {e}\"}}").into_bytes()
    });
    body.push(b'\n');
    let sent = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
    if let Ok(Err(e)) = sent {
        tracing::debug!(error = %e, "operator socket: client went away before the answer");
    }
    // Closing a unix socket with unread input makes the client's next read
    // fail (ECONNRESET) instead of ending: take what is left of a request we
    // refused unread, briefly, so the client sees its answer end cleanly.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut sink = tokio::io::sink();
        tokio::io::copy(&mut (&mut stream).take(DRAIN_MAX), &mut sink).await
    })
    .await;
}

fn refuse(output: impl Into<String>) -> Response {
    Response {
        ok: false,
        output: output.into(),
    }
}

async fn answer(stream: &mut UnixStream, ctx: &Ctx) -> Response {
    let uid =
        match nix::sys::socket::getsockopt(&*stream, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(c) => c.uid(),
            Err(e) => return refuse(format!("cannot tell who is asking (SO_PEERCRED): {e}")),
        };
    if !peer_allowed(uid, nix::unistd::geteuid().as_raw()) {
        tracing::warn!(uid, "operator socket: refused a non-root client");
        return refuse("root only: the operator socket answers root (run with sudo)");
    }
    let req = match tokio::time::timeout(READ_TIMEOUT, read_request(stream)).await {
        Err(_) => {
            return refuse(format!(
                "no complete request within {} s",
                READ_TIMEOUT.as_secs()
            ))
        }
        Ok(Err(msg)) => return refuse(msg),
        Ok(Ok(req)) => req,
    };
    tracing::debug!(?req, "operator request");
    match tokio::time::timeout(HANDLE_TIMEOUT, super::handle(ctx, &req)).await {
        Ok(Ok(output)) => Response { ok: true, output },
        Ok(Err(e)) => refuse(e.to_string()),
        Err(_) => refuse(format!(
            "the request took longer than {} s and was abandoned (is the agent loop or the switch stuck?)",
            HANDLE_TIMEOUT.as_secs()
        )),
    }
}

/// One request: a JSON object ended by a newline or by the client closing its
/// side.
async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut buf = Vec::new();
    let mut limited = BufReader::new(stream.take(MAX_REQUEST as u64 + 1));
    limited
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| format!("cannot read the request: {e}"))?;
    if buf.len() > MAX_REQUEST {
        return Err(format!(
            "request larger than {} KiB refused",
            MAX_REQUEST / 1024
        ));
    }
    parse_request(&buf)
}

fn parse_request(buf: &[u8]) -> Result<Request, String> {
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err("empty request: send one JSON object".into());
    }
    serde_json::from_slice(buf).map_err(|e| format!("malformed request: {e}"))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::observe::ops::client;
    use crate::observe::{Agent, IntentSnapshot, LbReply, Query};

    /// A `Ctx` whose agent loop is a task answering `intent()` (version 7,
    /// empty) and `lb()` (no Services); other queries find it gone.
    fn fake_ctx() -> Ctx {
        let (agent, mut rx) = Agent::channel();
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                match q {
                    Query::Intent(tx) => {
                        let _ = tx.send(Some(IntentSnapshot {
                            version: 7,
                            ..IntentSnapshot::default()
                        }));
                    }
                    Query::Lb { tx, .. } => {
                        let _ = tx.send(LbReply::Build(1, Box::default()));
                    }
                    _ => {}
                }
            }
        });
        Ctx {
            agent,
            node: "dpu-1".into(),
            bridge: "br-int".into(),
            ofctl_target: "unix:/nonexistent/br-int.mgmt".into(),
            run_dir: "/nonexistent".into(),
            appctl_path: "ovs-appctl".into(),
            ofctl_path: "/nonexistent/br-int.mgmt".into(),
            datapath_type: "netdev".into(),
        }
    }

    struct Running {
        _dir: tempfile::TempDir,
        path: PathBuf,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<Result<(), OpsServeError>>,
    }

    /// Serves on `<tmp>/run/ops.sock` (the directory does not exist yet).
    async fn start() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/ops.sock");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn({
            let path = path.clone();
            let ctx = fake_ctx();
            async move { serve(&path, ctx, rx).await }
        });
        for _ in 0..200 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Running {
            _dir: dir,
            path,
            stop,
            task,
        }
    }

    async fn call(path: &Path, req: Request) -> Response {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || client::call(&path, &req, Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap()
    }

    /// Sends `raw` as is and returns the decoded answer.
    async fn raw(path: &Path, raw: Vec<u8>) -> Response {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            // The server may answer before reading all of an oversized request.
            let _ = s.write_all(&raw);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            serde_json::from_slice(&out).unwrap()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn answers_requests_and_cleans_up_on_shutdown() {
        let r = start().await;
        let mode = std::fs::metadata(&r.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let resp = call(&r.path, Request::ShowIntent).await;
        assert!(resp.ok, "{resp:?}");
        assert!(resp.output.starts_with("intent version 7\n"), "{resp:?}");

        let resp = call(&r.path, Request::ShowService { name: "web".into() }).await;
        assert!(!resp.ok);
        assert!(
            resp.output.starts_with("no Service named \"web\""),
            "{resp:?}"
        );

        // Several at once.
        let many: Vec<_> = (0..MAX_CONNECTIONS * 2)
            .map(|_| tokio::spawn(call_owned(r.path.clone())))
            .collect();
        for h in many {
            assert!(h.await.unwrap().ok);
        }

        r.stop.send(true).unwrap();
        r.task.await.unwrap().unwrap();
        assert!(!r.path.exists(), "the socket file is removed on shutdown");
    }

    async fn call_owned(path: PathBuf) -> Response {
        call(&path, Request::ShowIntent).await
    }

    #[tokio::test]
    async fn malformed_oversized_and_empty_requests_are_refused_by_name() {
        let r = start().await;
        let resp = raw(&r.path, b"{\"cmd\":\"show-everything\"}\n".to_vec()).await;
        assert!(!resp.ok);
        assert!(
            resp.output
                .starts_with("malformed request: unknown variant `show-everything`"),
            "{resp:?}"
        );

        let resp = raw(&r.path, b"not json".to_vec()).await;
        assert!(!resp.ok);
        assert!(resp.output.starts_with("malformed request: "), "{resp:?}");

        let resp = raw(&r.path, vec![b' '; MAX_REQUEST + 10]).await;
        assert!(!resp.ok);
        assert_eq!(resp.output, "request larger than 64 KiB refused");

        let resp = raw(&r.path, Vec::new()).await;
        assert!(!resp.ok);
        assert_eq!(resp.output, "empty request: send one JSON object");
        r.stop.send(true).unwrap();
        r.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_anything_else_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&path).unwrap();

        // Still listening: not stale.
        let e = bind(&path).unwrap_err();
        assert!(matches!(e, OpsServeError::InUse { .. }), "{e}");
        drop(listener);

        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "keep me").unwrap();
        let e = bind(&path).unwrap_err();
        assert!(matches!(e, OpsServeError::NotASocket { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[test]
    fn root_and_the_agents_own_user_may_ask() {
        assert!(peer_allowed(0, 0));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(1000, 0));
        assert!(!peer_allowed(1001, 1000));
    }
}
