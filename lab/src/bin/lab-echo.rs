//! `lab-echo`: the lab's backend. Every TCP line and every UDP datagram is answered
//! with `NAME\n`, so a client can tell which backend it reached. A TCP connection
//! stays open until the client closes it; a client that sends nothing gets the answer
//! as a banner. A first line starting with `GET ` gets a minimal HTTP response and the
//! connection is closed, which is enough for curl.
//!
//! Each port is served on `0.0.0.0` and on `[::]` (with `IPV6_V6ONLY`, so IPv4 clients
//! keep arriving on the IPv4 socket and are logged as `10.0.1.2:12345`, IPv6 ones as
//! `[fd00:1::2]:12345`). Where the kernel has no IPv6 the `[::]` sockets are skipped
//! with one log line and IPv4 is served alone.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::Parser;
use dpu_lab::traffic::{ECHO_READY, ECHO_TCP_PEER};
use socket2::{Domain, Socket, Type};

/// How long a new connection may stay silent before it gets the answer as a banner.
const BANNER_AFTER: Duration = Duration::from_millis(1000);
/// A connection idle for this long is closed, so lost clients do not pin threads.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest line read; longer input is answered in pieces.
const MAX_LINE: u64 = 4096;
/// Most HTTP header lines read before answering.
const MAX_HEADERS: usize = 100;
/// Most connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 1024;
/// The listen backlog of the `[::]` TCP sockets (std uses the same for `0.0.0.0`).
const BACKLOG: i32 = 128;

static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// Answer every TCP line and UDP datagram with NAME.
#[derive(Debug, Parser)]
#[command(name = "lab-echo")]
struct Args {
    /// The name to answer with (one line, no whitespace at the ends).
    #[arg(long)]
    name: String,
    /// A TCP port to serve on 0.0.0.0 and [::] (repeatable).
    #[arg(long = "tcp", value_name = "PORT")]
    tcp: Vec<u16>,
    /// A UDP port to serve on 0.0.0.0 and [::] (repeatable).
    #[arg(long = "udp", value_name = "PORT")]
    udp: Vec<u16>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.tcp.is_empty() && args.udp.is_empty() {
        eprintln!("lab-echo: give at least one --tcp or --udp port");
        return ExitCode::from(2);
    }
    if args.name.is_empty() || args.name.contains(['\n', '\r']) || args.name.trim() != args.name {
        eprintln!("lab-echo: --name must be one non-empty line without surrounding spaces");
        return ExitCode::from(2);
    }
    let reply: Arc<str> = format!("{}\n", args.name).into();

    let mut servers = Vec::new();
    let mut bound = Vec::new();
    // Cleared by the first [::] bind that finds no IPv6; later ports skip it.
    let mut ipv6 = true;
    for port in &args.tcp {
        let listener = match TcpListener::bind(("0.0.0.0", *port)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("lab-echo: bind tcp port {port}: {e}");
                return ExitCode::from(1);
            }
        };
        bound.push(format!("tcp {}", local_port(listener.local_addr())));
        // The same port on [::], also when --tcp 0 let the kernel pick it.
        let v6_port = listener.local_addr().map_or(*port, |a| a.port());
        let v6 = match bind_ipv6("tcp", v6_port, &mut ipv6) {
            Ok(v6) => v6.map(TcpListener::from),
            Err(e) => {
                eprintln!("lab-echo: {e}");
                return ExitCode::from(1);
            }
        };
        for listener in std::iter::once(listener).chain(v6) {
            let reply = reply.clone();
            servers.push(thread::spawn(move || serve_tcp(listener, reply)));
        }
    }
    for port in &args.udp {
        let socket = match UdpSocket::bind(("0.0.0.0", *port)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("lab-echo: bind udp port {port}: {e}");
                return ExitCode::from(1);
            }
        };
        bound.push(format!("udp {}", local_port(socket.local_addr())));
        let v6_port = socket.local_addr().map_or(*port, |a| a.port());
        let v6 = match bind_ipv6("udp", v6_port, &mut ipv6) {
            Ok(v6) => v6.map(UdpSocket::from),
            Err(e) => {
                eprintln!("lab-echo: {e}");
                return ExitCode::from(1);
            }
        };
        for socket in std::iter::once(socket).chain(v6) {
            let reply = reply.clone();
            servers.push(thread::spawn(move || serve_udp(socket, reply)));
        }
    }
    let families = if ipv6 { "" } else { " (IPv4 only)" };
    eprintln!(
        "{ECHO_READY} name={} {}{families}",
        args.name,
        bound.join(", ")
    );
    for server in servers {
        let _ = server.join();
    }
    ExitCode::from(1)
}

fn local_port(addr: std::io::Result<SocketAddr>) -> String {
    addr.map_or_else(|e| format!("?({e})"), |a| a.port().to_string())
}

/// Binds `proto` (`tcp` or `udp`) `[::]:port` with `IPV6_V6ONLY`, so it does not
/// collide with the `0.0.0.0` socket on the same port. `Ok(None)` when `ipv6` is
/// already cleared, or when the kernel turns out to have no IPv6: then one line is
/// logged and `ipv6` cleared. Other failures (the port taken, say) are errors.
fn bind_ipv6(proto: &str, port: u16, ipv6: &mut bool) -> Result<Option<Socket>, String> {
    if !*ipv6 {
        return Ok(None);
    }
    let stream = proto == "tcp";
    let bind = || -> std::io::Result<Socket> {
        let kind = if stream { Type::STREAM } else { Type::DGRAM };
        let socket = Socket::new(Domain::IPV6, kind, None)?;
        socket.set_only_v6(true)?;
        if stream {
            // As std does for TcpListener::bind: a restart need not wait out TIME_WAIT.
            socket.set_reuse_address(true)?;
        }
        socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        if stream {
            socket.listen(BACKLOG)?;
        }
        Ok(socket)
    };
    match bind() {
        Ok(socket) => Ok(Some(socket)),
        Err(e) if no_ipv6(&e) => {
            eprintln!("lab-echo: no IPv6 here ({proto} [::]:{port}: {e}); serving IPv4 only");
            *ipv6 = false;
            Ok(None)
        }
        Err(e) => Err(format!("bind {proto} port {port} on [::]: {e}")),
    }
}

/// Whether `e` says the kernel (or this namespace) has no IPv6: no address family
/// (booted with `ipv6.disable=1`), or no `[::]` to bind.
fn no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

fn serve_tcp(listener: TcpListener, reply: Arc<str>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if OPEN_CONNECTIONS.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    OPEN_CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
                    eprintln!("lab-echo: over {MAX_CONNECTIONS} connections, closing one");
                    continue;
                }
                let reply = reply.clone();
                thread::spawn(move || {
                    let peer = stream
                        .peer_addr()
                        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
                    eprintln!("{ECHO_TCP_PEER}{peer}");
                    if let Err(e) = serve_connection(stream, &reply) {
                        eprintln!("{ECHO_TCP_PEER}{peer}: {e}");
                    }
                    OPEN_CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) => {
                eprintln!("lab-echo: accept: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Reads one line of at most [`MAX_LINE`] bytes; 0 at end of stream.
fn read_line(reader: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> std::io::Result<usize> {
    line.clear();
    reader.by_ref().take(MAX_LINE).read_until(b'\n', line)
}

fn serve_connection(stream: TcpStream, reply: &str) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    stream.set_read_timeout(Some(BANNER_AFTER))?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    match read_line(&mut reader, &mut line) {
        Ok(0) => return Ok(()),
        Ok(_) if line.starts_with(b"GET ") => return serve_http(reader, writer, reply),
        Ok(_) => writer.write_all(reply.as_bytes())?,
        // Silent client, or bytes without a newline: answer what we have.
        Err(e) if is_timeout(&e) => writer.write_all(reply.as_bytes())?,
        Err(e) => return Err(e),
    }
    reader.get_ref().set_read_timeout(Some(IDLE_TIMEOUT))?;
    loop {
        match read_line(&mut reader, &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => writer.write_all(reply.as_bytes())?,
            Err(e) if is_timeout(&e) => {
                eprintln!("lab-echo: closing a connection idle for {IDLE_TIMEOUT:?}");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

fn serve_http(
    mut reader: BufReader<TcpStream>,
    mut writer: TcpStream,
    reply: &str,
) -> std::io::Result<()> {
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = Vec::new();
    // Read the headers so closing does not reset the connection over unread bytes.
    for _ in 0..MAX_HEADERS {
        match read_line(&mut reader, &mut line) {
            Ok(0) => break,
            Ok(_) if line == b"\r\n" || line == b"\n" => break,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => break,
            Err(e) => return Err(e),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{reply}",
        reply.len()
    );
    writer.write_all(response.as_bytes())?;
    writer.flush()?;
    writer.shutdown(std::net::Shutdown::Write)
}

fn serve_udp(socket: UdpSocket, reply: Arc<str>) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = socket.send_to(reply.as_bytes(), peer) {
                    eprintln!("lab-echo: udp reply to {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("lab-echo: udp receive: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_ipv6_is_tolerated() {
        for errno in [
            libc::EAFNOSUPPORT,
            libc::EPROTONOSUPPORT,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(
                no_ipv6(&std::io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        for errno in [libc::EADDRINUSE, libc::EACCES] {
            assert!(
                !no_ipv6(&std::io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }

    #[test]
    fn ipv6_sockets_share_the_port_with_ipv4() {
        let v4 = TcpListener::bind(("0.0.0.0", 0)).unwrap();
        let port = v4.local_addr().unwrap().port();
        let mut ipv6 = true;
        match bind_ipv6("tcp", port, &mut ipv6).unwrap() {
            Some(v6) => {
                assert!(v6.only_v6().unwrap());
                let addr = TcpListener::from(v6).local_addr().unwrap();
                assert_eq!(addr, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
            }
            // A kernel without IPv6: logged, and IPv4 goes on alone.
            None => assert!(!ipv6),
        }
        let mut skip = false;
        assert!(bind_ipv6("udp", port, &mut skip).unwrap().is_none());
    }
}
