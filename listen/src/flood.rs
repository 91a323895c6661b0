//! What the flood tests of every listener share (feature `testkit`, for tests
//! only): a bare ClientHello, a flood of idle and half-finished handshakes,
//! and whether the server has closed a connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ClientConnection, RootCertStore};

/// The first flight of a TLS client for `server_name`: a ClientHello, and
/// nothing after it.
pub fn client_hello(server_name: &str) -> Vec<u8> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).expect("a valid server name");
    let mut c = ClientConnection::new(Arc::new(config), name).expect("a client connection");
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).expect("writing to a Vec");
    }
    assert!(out.len() > 100 && out[0] == 0x16, "not a handshake record");
    out
}

/// `idle` plain TCP connections to `addr` that send nothing, then `half_open`
/// that send `hello` and stop.
///
/// A connect waits at most 10 s: a listener whose accept queue is full (the
/// kernel caps the backlog at `net.core.somaxconn`, 128 on some hosts) drops
/// SYNs, and a plain connect would then wait through minutes of retries.
pub fn flood(addr: SocketAddr, idle: usize, half_open: usize, hello: &[u8]) -> Vec<TcpStream> {
    (0..idle + half_open)
        .map(|i| {
            let mut s = TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))
                .unwrap_or_else(|e| {
                    panic!("connection {i} of the flood to {addr}: {e} (is the accept queue full?)")
                });
            if i >= idle {
                s.write_all(hello).expect("sending the ClientHello");
            }
            s
        })
        .collect()
}

/// Whether the server closed this connection: reads what it sent (a
/// ServerHello, an alert) until end of stream, an error, or nothing more.
pub fn closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("a socket");
    let mut s = s;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// How many of `conns` the server still holds.
pub fn open_count(conns: &[TcpStream]) -> usize {
    conns.iter().filter(|s| !closed(s)).count()
}
