//! The client side of the operator socket, for `dpu-agent show|trace|explain`:
//! blocking, no runtime, so the command stays a thin printer.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Request, Response};

/// Answers beyond this are refused rather than buffered without end.
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: no such socket: is dpu-agent running, and is `[ops] socket` in its config this path? (--socket PATH names another)", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: permission denied: the operator socket is root only (run with sudo)", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("{}: connection refused: no agent is listening there (is dpu-agent running?)", path.display())]
    Refused { path: PathBuf },
    #[error("{}: no answer within {timeout:?} (is the agent stuck? see `journalctl -u dpu-agent`)", path.display())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("{}: the agent closed the connection without an answer (did it stop?)", path.display())]
    NoAnswer { path: PathBuf },
    #[error("{}: cannot {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("{}: the agent's answer is not a response (a different dpu-agent version?): {source}", path.display())]
    BadResponse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Sends `req` to the agent at `path` and waits up to `timeout` for each of
/// connecting, sending and the answer.
pub fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let io_err =
        |what: &'static str| move |source: io::Error| classify(path, what, timeout, source);
    let mut stream = UnixStream::connect(path).map_err(io_err("connect"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io_err("set a timeout on the socket"))?;
    let mut body = serde_json::to_vec(req).expect("a request always encodes");
    body.push(b'\n');
    stream
        .write_all(&body)
        .map_err(io_err("send the request"))?;
    // The agent reads up to the newline; closing our side also tells it we are
    // done, should it read to the end.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    match stream.take(MAX_RESPONSE).read_to_end(&mut answer) {
        Ok(_) => {}
        // An agent that closes with part of our request unread (it refused
        // it) makes the read after its answer fail: the answer is complete.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !answer.is_empty() => {}
        Err(e) => return Err(io_err("read the answer")(e)),
    }
    if answer.iter().all(u8::is_ascii_whitespace) {
        return Err(ClientError::NoAnswer {
            path: path.to_path_buf(),
        });
    }
    serde_json::from_slice(&answer).map_err(|source| ClientError::BadResponse {
        path: path.to_path_buf(),
        source,
    })
}

fn classify(path: &Path, what: &'static str, timeout: Duration, e: io::Error) -> ClientError {
    let path = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound => ClientError::NotFound { path },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path },
        io::ErrorKind::ConnectionRefused => ClientError::Refused { path },
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            ClientError::Timeout { path, timeout }
        }
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
            ClientError::NoAnswer { path }
        }
        _ => ClientError::Io {
            path,
            what,
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_socket_names_the_path_and_what_to_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.sock");
        let e = call(&path, &Request::ShowIntent, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ClientError::NotFound { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(msg.contains("is dpu-agent running"), "{msg}");
        assert!(msg.contains("[ops] socket"), "{msg}");
    }

    #[test]
    fn a_socket_nobody_listens_on_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = call(&path, &Request::ShowIntent, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ClientError::Refused { .. }), "{e:?}");
    }

    #[test]
    fn permission_denied_says_root_only() {
        let e = classify(
            Path::new("/run/dpu-agent/ops.sock"),
            "connect",
            Duration::from_secs(1),
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert_eq!(
            e.to_string(),
            "/run/dpu-agent/ops.sock: permission denied: the operator socket is root only (run with sudo)"
        );
    }

    #[test]
    fn a_silent_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.sock");
        // Accepted by the kernel (backlog) but never answered.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = call(&path, &Request::ShowIntent, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
        assert!(e.to_string().contains("no answer within"), "{e}");
    }
}
