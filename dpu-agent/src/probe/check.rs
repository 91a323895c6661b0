//! One health check of one backend: a TCP connect, or an HTTP `GET` whose status
//! decides, as Kubernetes' TCP and HTTP probes do.
//!
//! The socket is bound to a device (`SO_BINDTODEVICE`), normally the probe link of
//! the backend's VPC, and optionally to a source address, so the check is routed
//! inside that VPC even where VPC address ranges overlap. Everything, connect
//! included, happens within one timeout. Binding to a device needs `CAP_NET_RAW`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// The most of an HTTP response read while looking for its status line.
pub const MAX_STATUS_READ: usize = 8 * 1024;
/// The `User-Agent` of HTTP checks.
pub const USER_AGENT: &str = "dpu-agent-probe";

/// How much of a malformed status line an error quotes.
const QUOTE_MAX: usize = 100;

const ENODEV: i32 = 19;
const ECONNREFUSED: i32 = 111;

/// What a check does once connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// The connect alone decides.
    Tcp,
    /// `GET path`; a status in `statuses` is healthy (by default 200..=399,
    /// Kubernetes' rule).
    Http {
        /// The request target, starting with `/` (validated by the model).
        path: String,
        statuses: std::ops::RangeInclusive<u16>,
    },
}

/// Why a check failed, in an operator's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The device to probe through does not exist (the probe link is not set up).
    #[error("device {0:?} does not exist")]
    NoDevice(String),
    /// Binding to the device failed for another reason (e.g. no `CAP_NET_RAW`).
    #[error("cannot bind to device {device:?}: {reason}")]
    Device {
        /// The device name.
        device: String,
        /// The system's words.
        reason: String,
    },
    /// The source address cannot be used (not on this host, wrong family, …).
    #[error("cannot send from {addr}: {reason}")]
    Source {
        /// The source address asked for.
        addr: IpAddr,
        /// Why not.
        reason: String,
    },
    /// The backend answered the connect with a reset: nothing listens on the port.
    #[error("connection refused")]
    Refused,
    /// The connect failed otherwise (unreachable network or host, …).
    #[error("connect failed: {0}")]
    Connect(String),
    /// The timeout expired; `waiting_for` says at which step.
    #[error("timed out after {ms} ms waiting for {waiting_for}")]
    Timeout {
        /// The timeout, in milliseconds.
        ms: u64,
        /// "the connection" or "the HTTP status line".
        waiting_for: &'static str,
    },
    /// Sending the request or reading the response failed.
    #[error("{during}: {reason}")]
    Io {
        /// "sending the HTTP request" or "reading the HTTP response".
        during: &'static str,
        /// The system's words.
        reason: String,
    },
    /// The backend closed the connection without sending a status line.
    #[error("connection closed before an HTTP status line")]
    Closed,
    /// The response did not start with `HTTP/x.y NNN` (quoted, cut to 100 chars).
    #[error("malformed HTTP status line {0:?}")]
    Malformed(String),
    /// The backend answered with a status outside the probe's range.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The HTTP path cannot be sent as is (whitespace or control characters).
    #[error("HTTP path {0:?} has whitespace or control characters")]
    BadPath(String),
}

/// Checks `target` once: through `device` and from `source` when given, all within
/// `timeout`. `Ok` means healthy.
pub async fn check(
    kind: &ProbeKind,
    device: Option<&str>,
    source: Option<IpAddr>,
    target: SocketAddr,
    timeout: Duration,
) -> Result<(), CheckError> {
    let request = match kind {
        ProbeKind::Tcp => None,
        ProbeKind::Http { path, .. } => Some(http_request(path, target)?),
    };
    let deadline = Instant::now() + timeout;
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let socket = socket(device, source, target)?;
    let stream = match tokio::time::timeout_at(deadline, socket.connect(target)).await {
        Err(_) => {
            return Err(CheckError::Timeout {
                ms,
                waiting_for: "the connection",
            });
        }
        Ok(Err(e)) if e.raw_os_error() == Some(ECONNREFUSED) => return Err(CheckError::Refused),
        Ok(Err(e)) => return Err(CheckError::Connect(e.to_string())),
        Ok(Ok(stream)) => stream,
    };
    let Some(request) = request else {
        return Ok(());
    };
    match tokio::time::timeout_at(deadline, http_status(stream, &request)).await {
        Err(_) => Err(CheckError::Timeout {
            ms,
            waiting_for: "the HTTP status line",
        }),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status))
            if match kind {
                ProbeKind::Http { statuses, .. } => statuses.contains(&status),
                ProbeKind::Tcp => true,
            } =>
        {
            Ok(())
        }
        Ok(Ok(status)) => Err(CheckError::Status(status)),
    }
}

/// A socket for `target`'s family, bound to `device` and `source` when given.
fn socket(
    device: Option<&str>,
    source: Option<IpAddr>,
    target: SocketAddr,
) -> Result<TcpSocket, CheckError> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| CheckError::Connect(format!("cannot create a socket: {e}")))?;
    if let Some(device) = device {
        socket
            .bind_device(Some(device.as_bytes()))
            .map_err(|e| match e.raw_os_error() {
                Some(ENODEV) => CheckError::NoDevice(device.to_string()),
                _ => CheckError::Device {
                    device: device.to_string(),
                    reason: e.to_string(),
                },
            })?;
    }
    if let Some(addr) = source {
        if addr.is_ipv4() != target.is_ipv4() {
            return Err(CheckError::Source {
                addr,
                reason: format!("the target {} is of the other address family", target.ip()),
            });
        }
        socket
            .bind(SocketAddr::new(addr, 0))
            .map_err(|e| CheckError::Source {
                addr,
                reason: e.to_string(),
            })?;
    }
    Ok(socket)
}

/// The request of an HTTP check of `path` on `target`.
fn http_request(path: &str, target: SocketAddr) -> Result<String, CheckError> {
    if path.is_empty() || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(CheckError::BadPath(path.to_string()));
    }
    let host = match (target.ip(), target.port()) {
        (IpAddr::V4(ip), 80) => ip.to_string(),
        (IpAddr::V6(ip), 80) => format!("[{ip}]"),
        (_, _) => target.to_string(),
    };
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n"
    ))
}

/// Sends `request` and returns the status code of the response.
async fn http_status(mut stream: TcpStream, request: &str) -> Result<u16, CheckError> {
    let io_err = |during: &'static str| {
        move |e: io::Error| CheckError::Io {
            during,
            reason: e.to_string(),
        }
    };
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_err("sending the HTTP request"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            return parse_status_line(&buf[..end]);
        }
        if buf.len() >= MAX_STATUS_READ {
            return parse_status_line(&buf);
        }
        let room = (MAX_STATUS_READ - buf.len()).min(chunk.len());
        let n = stream
            .read(&mut chunk[..room])
            .await
            .map_err(io_err("reading the HTTP response"))?;
        if n == 0 {
            if buf.is_empty() {
                return Err(CheckError::Closed);
            }
            return parse_status_line(&buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The code of a status line `HTTP/x.y NNN [reason]` (without its line end).
fn parse_status_line(line: &[u8]) -> Result<u16, CheckError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let malformed = || {
        let text = String::from_utf8_lossy(line);
        CheckError::Malformed(text.chars().take(QUOTE_MAX).collect())
    };
    let (version, rest) = line
        .iter()
        .position(|b| *b == b' ')
        .map(|i| (&line[..i], &line[i + 1..]))
        .ok_or_else(malformed)?;
    if !version.starts_with(b"HTTP/") {
        return Err(malformed());
    }
    let (code, after) = rest.split_at(rest.len().min(3));
    if code.len() != 3
        || !code.iter().all(u8::is_ascii_digit)
        || after.first().is_some_and(|b| *b != b' ')
    {
        return Err(malformed());
    }
    Ok(code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(5);

    async fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    /// A one-shot HTTP server answering `response` and returning the request.
    async fn serve(response: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let (l, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut chunk = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "request cut short");
                req.extend_from_slice(&chunk[..n]);
            }
            s.write_all(response).await.unwrap();
            String::from_utf8(req).unwrap()
        });
        (addr, server)
    }

    fn http(path: &str) -> ProbeKind {
        ProbeKind::Http {
            path: path.to_string(),
            statuses: 200..=399,
        }
    }

    #[tokio::test]
    async fn tcp_connect_succeeds() {
        let (_l, addr) = listener().await;
        check(&ProbeKind::Tcp, None, None, addr, T).await.unwrap();
    }

    #[tokio::test]
    async fn tcp_closed_port_is_refused() {
        let (l, addr) = listener().await;
        drop(l);
        let e = check(&ProbeKind::Tcp, None, None, addr, T)
            .await
            .unwrap_err();
        assert_eq!(e, CheckError::Refused);
        assert_eq!(e.to_string(), "connection refused");
    }

    #[tokio::test]
    async fn tcp_times_out_within_the_bound() {
        // Bound to lo, a non-local address is sent to lo, where the kernel drops it
        // (martian source 127.0.0.1): no answer ever comes.
        let timeout = Duration::from_millis(200);
        let target = SocketAddr::from((Ipv4Addr::new(10, 255, 255, 1), 80));
        let start = std::time::Instant::now();
        let e = check(&ProbeKind::Tcp, Some("lo"), None, target, timeout)
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert_eq!(
            e,
            CheckError::Timeout {
                ms: 200,
                waiting_for: "the connection"
            }
        );
        assert_eq!(
            e.to_string(),
            "timed out after 200 ms waiting for the connection"
        );
        assert!(took >= timeout, "{took:?}");
        assert!(took < timeout + Duration::from_millis(500), "{took:?}");
    }

    #[tokio::test]
    async fn device_lo_works_and_a_missing_device_is_named() {
        let (_l, addr) = listener().await;
        check(&ProbeKind::Tcp, Some("lo"), None, addr, T)
            .await
            .unwrap();
        check(
            &ProbeKind::Tcp,
            Some("lo"),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            addr,
            T,
        )
        .await
        .unwrap();
        let e = check(&ProbeKind::Tcp, Some("nosuchdev0"), None, addr, T)
            .await
            .unwrap_err();
        assert_eq!(e, CheckError::NoDevice("nosuchdev0".into()));
        assert_eq!(e.to_string(), "device \"nosuchdev0\" does not exist");
    }

    #[tokio::test]
    async fn unusable_source_is_named() {
        let (_l, addr) = listener().await;
        let foreign = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let e = check(&ProbeKind::Tcp, None, Some(foreign), addr, T)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, CheckError::Source { addr, .. } if *addr == foreign),
            "{e}"
        );
        assert!(
            e.to_string().starts_with("cannot send from 203.0.113.7: "),
            "{e}"
        );
        let e = check(
            &ProbeKind::Tcp,
            None,
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            addr,
            T,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, CheckError::Source { .. }), "{e}");
    }

    #[tokio::test]
    async fn http_200_succeeds_and_the_request_is_as_specified() {
        let (addr, server) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        check(&http("/healthz?x=1"), Some("lo"), None, addr, T)
            .await
            .unwrap();
        let req = server.await.unwrap();
        assert_eq!(
            req,
            format!(
                "GET /healthz?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: dpu-agent-probe\r\nConnection: close\r\n\r\n",
                addr.port()
            )
        );
    }

    #[tokio::test]
    async fn http_redirect_is_healthy() {
        let (addr, _server) = serve(b"HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\n").await;
        check(&http("/"), None, None, addr, T).await.unwrap();
    }

    #[tokio::test]
    async fn http_503_fails_with_the_status() {
        let (addr, _server) = serve(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let e = check(&http("/"), None, None, addr, T).await.unwrap_err();
        assert_eq!(e, CheckError::Status(503));
        assert_eq!(e.to_string(), "HTTP status 503");
    }

    #[tokio::test]
    async fn the_status_range_is_the_probes() {
        let only_204 = ProbeKind::Http {
            path: "/".into(),
            statuses: 204..=204,
        };
        let (addr, _server) = serve(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        check(&only_204, None, None, addr, T).await.unwrap();
        let (addr, _server) = serve(b"HTTP/1.1 200 OK\r\n\r\n").await;
        let e = check(&only_204, None, None, addr, T).await.unwrap_err();
        assert_eq!(e, CheckError::Status(200));
    }

    #[tokio::test]
    async fn http_garbage_is_malformed() {
        let (addr, _server) = serve(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        let e = check(&http("/"), None, None, addr, T).await.unwrap_err();
        assert_eq!(e, CheckError::Malformed("SSH-2.0-OpenSSH_9.6".into()));
        assert_eq!(
            e.to_string(),
            "malformed HTTP status line \"SSH-2.0-OpenSSH_9.6\""
        );
    }

    #[tokio::test]
    async fn http_endless_line_is_cut_at_the_read_bound() {
        static LONG: [u8; 3 * MAX_STATUS_READ] = [b'x'; 3 * MAX_STATUS_READ];
        let (addr, _server) = serve(&LONG).await;
        let e = check(&http("/"), None, None, addr, T).await.unwrap_err();
        assert_eq!(e, CheckError::Malformed("x".repeat(QUOTE_MAX)));
    }

    #[tokio::test]
    async fn http_close_without_status() {
        let (addr, _server) = serve(b"").await;
        let e = check(&http("/"), None, None, addr, T).await.unwrap_err();
        assert_eq!(e, CheckError::Closed);
    }

    #[tokio::test]
    async fn http_silent_server_times_out() {
        let (l, addr) = listener().await;
        let _server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        });
        let timeout = Duration::from_millis(200);
        let start = std::time::Instant::now();
        let e = check(&http("/"), None, None, addr, timeout)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "timed out after 200 ms waiting for the HTTP status line"
        );
        assert!(start.elapsed() < timeout + Duration::from_millis(500));
    }

    #[tokio::test]
    async fn http_path_with_whitespace_is_not_sent() {
        let (_l, addr) = listener().await;
        let e = check(&http("/a b"), None, None, addr, T).await.unwrap_err();
        assert_eq!(e, CheckError::BadPath("/a b".into()));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 404"), Ok(404));
        assert_eq!(parse_status_line(b"HTTP/2 399 whatever"), Ok(399));
        for bad in [
            &b""[..],
            b"HTTP/1.1",
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 2x0 OK",
            b"http/1.1 200 OK",
            b"FTP/1.1 200 OK",
        ] {
            assert!(
                matches!(parse_status_line(bad), Err(CheckError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn host_header_forms() {
        let v4 = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 5), 80));
        assert!(http_request("/", v4)
            .unwrap()
            .contains("\r\nHost: 10.0.0.5\r\n"));
        let v4 = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 5), 8080));
        assert!(http_request("/", v4)
            .unwrap()
            .contains("\r\nHost: 10.0.0.5:8080\r\n"));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 80));
        assert!(http_request("/", v6)
            .unwrap()
            .contains("\r\nHost: [::1]\r\n"));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 8080));
        assert!(http_request("/", v6)
            .unwrap()
            .contains("\r\nHost: [::1]:8080\r\n"));
    }
}
