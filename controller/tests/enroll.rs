//! End to end: enrollment with a bootstrap token, renewal, revocation and
//! re-admission against the real binary over TLS. Every refusal is checked to
//! have changed nothing under `tokens/` and `nodes/` in the store.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use dpu_controller::kv::{LocalStore, Store};
use dpu_controller::tokens::{Token, TokenStore};
use dpu_proto::v1 as pb;
use dpu_proto::v1::enrollment_client::EnrollmentClient;
use rcgen::{KeyPair, PublicKeyData};
use test_support::pki::csr;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use x509_parser::extensions::GeneralName;

/// A fresh key and a CSR for `node`, named as its certificate must be.
fn node_csr(node: &str) -> (KeyPair, String) {
    csr(node, &[node])
}

static NEXT_SOURCE: AtomicU32 = AtomicU32::new(1);

/// A loopback address no other call of this test binary uses: the controller
/// limits failed enrollments per source address.
fn fresh_source() -> IpAddr {
    let n = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed);
    IpAddr::V4(Ipv4Addr::new(127, 1, (n >> 8) as u8, n as u8))
}

/// A TLS channel (no client certificate) from the loopback address `source`.
async fn channel_from(port: u16, ca: &str, source: IpAddr) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("dpu-controller");
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .local_address(Some(source))
        .connect_timeout(Duration::from_secs(5));
    tokio::time::timeout(WAIT, endpoint.connect())
        .await
        .expect("connect timed out")
        .unwrap()
}

async fn enroll_on(
    ch: Channel,
    node: &str,
    token: &str,
    csr_pem: &str,
) -> Result<pb::EnrollResponse, Status> {
    let req = pb::EnrollRequest {
        node: node.into(),
        token: token.into(),
        csr_pem: csr_pem.into(),
    };
    Ok(EnrollmentClient::new(ch).enroll(req).await?.into_inner())
}

/// Enroll from `source`.
async fn enroll_from(
    port: u16,
    ca: &str,
    source: IpAddr,
    node: &str,
    token: &str,
    csr_pem: &str,
) -> Result<pb::EnrollResponse, Status> {
    let ch = channel_from(port, ca, source).await;
    enroll_on(ch, node, token, csr_pem).await
}

/// Enroll from an address of its own.
async fn enroll(
    port: u16,
    ca: &str,
    node: &str,
    token: &str,
    csr_pem: &str,
) -> Result<pb::EnrollResponse, Status> {
    enroll_from(port, ca, fresh_source(), node, token, csr_pem).await
}

async fn renew(
    port: u16,
    ca: &str,
    identity: Option<(String, String)>,
    csr_pem: &str,
) -> Result<pb::EnrollResponse, Status> {
    let ch = channel(port, ca, identity).await.unwrap();
    let req = pb::RenewRequest {
        csr_pem: csr_pem.into(),
    };
    Ok(EnrollmentClient::new(ch).renew(req).await?.into_inner())
}

/// The certificate an answer carries, with the key it was requested for.
fn identity(answer: &pb::EnrollResponse, key: &KeyPair) -> Option<(String, String)> {
    Some((answer.cert_pem.clone(), key.serialize_pem()))
}

fn token_create(lab: &Lab, node: &str) -> String {
    let out = cli_ok(&[
        "token",
        "create",
        "--state-dir",
        s(&lab.state),
        "--node",
        node,
    ]);
    out.trim().to_string()
}

fn token_id(token: &str) -> &str {
    &token[5..21]
}

/// The lab's embedded store (the one `serve --state-dir` uses).
fn store(state: &Path) -> Store {
    Store::Local(LocalStore::open(&state.join("store")).unwrap())
}

/// Every key under `tokens/` and `nodes/` with its value and revision.
fn snapshot(state: &Path) -> BTreeMap<String, (String, i64)> {
    // The embedded store reads files: no runtime needed.
    let s = LocalStore::open(&state.join("store")).unwrap();
    let mut out = BTreeMap::new();
    for prefix in ["tokens/", "nodes/"] {
        let listing = s.list(prefix).unwrap();
        for e in listing.entries {
            out.insert(e.key, (e.value, e.mod_revision));
        }
    }
    out
}

fn node_record(lab: &Lab, node: &str) -> serde_json::Value {
    let (value, _) = snapshot(&lab.state)
        .remove(&format!("nodes/{node}"))
        .unwrap_or_else(|| panic!("no record of {node}"));
    serde_json::from_str(&value).unwrap()
}

/// The token's record in the store, if it has one.
fn token_record(lab: &Lab, id: &str) -> Option<serde_json::Value> {
    snapshot(&lab.state)
        .remove(&format!("tokens/{id}"))
        .map(|(v, _)| serde_json::from_str(&v).unwrap())
}

fn serials(record: &serde_json::Value, field: &str) -> Vec<String> {
    record[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["serial"].as_str().unwrap().to_string())
        .collect()
}

/// Asserts `result` is refused with `code` and a message containing `want`,
/// and that nothing under tokens/ and nodes/ changed.
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(
    lab: &Lab,
    before: &BTreeMap<String, (String, i64)>,
    result: Result<T, Status>,
    code: Code,
    want: &str,
) {
    let status = result.expect_err("expected a refusal");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(want),
        "{:?} does not contain {want:?}",
        status.message()
    );
    assert!(
        snapshot(&lab.state) == *before,
        "a refusal ({want}) changed the store"
    );
}

/// Checks that `cert_pem` is for `node`, signed by `ca_pem`, for `key`.
fn check_cert(cert_pem: &str, ca_pem: &str, node: &str, key: &KeyPair) -> (i64, i64, String) {
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).unwrap();
    let ca = ca.parse_x509().unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    cert.verify_signature(Some(ca.public_key()))
        .expect("the certificate chains to the CA");
    assert_eq!(cert.issuer(), ca.subject());
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cn, [node]);
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    let dns: Vec<_> = san
        .general_names
        .iter()
        .filter(|n| matches!(n, GeneralName::DNSName(_)))
        .collect();
    assert_eq!(dns, [&GeneralName::DNSName(node)]);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && eku.server_auth);
    assert_eq!(cert.public_key().raw, key.subject_public_key_info());
    (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
        hex::encode(cert.raw_serial()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_renews_and_serves_the_enrolled_node() {
    let lab = Lab::new();
    let server = Server::start_with(&lab, &["--enroll-cert-ttl", "2h"]);
    let ca = lab.read("ca.pem");
    let token = token_create(&lab, "dpu-2");
    let id = token_id(&token);

    let (key, request) = node_csr("dpu-2");
    let answer = enroll(server.port, &ca, "dpu-2", &token, &request)
        .await
        .unwrap();
    assert_eq!(answer.ca_pem, ca);
    let (not_before, not_after, serial) = check_cert(&answer.cert_pem, &ca, "dpu-2", &key);
    assert_eq!(
        (answer.not_before_unix, answer.not_after_unix),
        (not_before, not_after)
    );
    assert_eq!(answer.serial, serial);
    // The lifetime is --enroll-cert-ttl, plus the 5 minutes not_before is backdated.
    assert_eq!(not_after - not_before, 2 * 3600 + 300);

    // The token is consumed; the node is recorded.
    assert!(token_record(&lab, id).unwrap()["used_unix"].is_i64());
    let record = node_record(&lab, "dpu-2");
    assert_eq!(record["token_id"], id);
    assert_eq!(record["revoked"], false);
    assert_eq!(serials(&record, "certs"), [serial.as_str()]);
    let tokens = cli_ok(&["token", "list", "--state-dir", s(&lab.state)]);
    assert!(tokens.contains(id) && tokens.contains("used"), "{tokens}");

    // The certificate opens a session.
    let ch = channel(server.port, &ca, identity(&answer, &key))
        .await
        .unwrap();
    let mut agent = open(ch, "dpu-2", 0).await.unwrap();
    assert!(agent.update().await.snapshot);

    // Renewal over mTLS with it: a new certificate for a new key.
    let (key2, request2) = node_csr("dpu-2");
    let renewed = renew(server.port, &ca, identity(&answer, &key), &request2)
        .await
        .unwrap();
    let (_, _, serial2) = check_cert(&renewed.cert_pem, &ca, "dpu-2", &key2);
    assert_ne!(serial2, serial);
    assert_eq!(renewed.serial, serial2);
    assert_eq!(
        renewed.not_after_unix - renewed.not_before_unix,
        2 * 3600 + 300
    );
    assert_eq!(
        serials(&node_record(&lab, "dpu-2"), "certs"),
        [serial.clone(), serial2.clone()]
    );
    let ch = channel(server.port, &ca, identity(&renewed, &key2))
        .await
        .unwrap();
    let mut renewed_agent = open(ch, "dpu-2", 0).await.unwrap();
    assert!(renewed_agent.update().await.snapshot);

    // `node list` shows it, with its newest certificate, connected.
    let deadline = Instant::now() + WAIT;
    let list = loop {
        let out = cli_ok(&["node", "list", "--state-dir", s(&lab.state), "--json"]);
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let dpu2 = list
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "dpu-2")
            .cloned()
            .unwrap();
        if dpu2["connected"] == true || Instant::now() > deadline {
            break dpu2;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(list["connected"], true, "{list:#}");
    assert_eq!(list["state"], "enrolled");
    let table = cli_ok(&["node", "list", "--state-dir", s(&lab.state)]);
    let line = table.lines().find(|l| l.starts_with("dpu-2 ")).unwrap();
    assert!(
        line.contains("enrolled") && line.contains(&serial2),
        "{table}"
    );
    assert!(line.ends_with("yes"), "{table}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_enrollments_change_nothing() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let ca = lab.read("ca.pem");
    let port = server.port;
    let token = token_create(&lab, "dpu-2");
    let id = token_id(&token).to_string();
    // An expired token, written through the module as if created two hours ago.
    let two_hours_ago = dpu_controller::timeutil::unix_now() - 7200;
    let (expired, _) = TokenStore::new(store(&lab.state))
        .create("dpu-2", Duration::from_secs(3600), two_hours_ago)
        .await
        .unwrap();
    let expired = expired.to_string();
    let (_, good) = node_csr("dpu-2");
    let before = snapshot(&lab.state);
    assert!(before.contains_key(&format!("tokens/{id}")));

    let r = enroll(port, &ca, "dpu-2", "dpub.1234.abcd", &good).await;
    assert_refused(&lab, &before, r, Code::InvalidArgument, "malformed token");

    // An unknown token id and a wrong secret get one answer, so that a caller
    // cannot tell which token ids exist; the controller's log tells them apart.
    let unknown = Token::generate().to_string();
    let unknown_id = token_id(&unknown);
    let r = enroll(port, &ca, "dpu-2", &unknown, &good).await;
    let want = format!("token {unknown_id} is unknown or its secret is wrong");
    assert_refused(&lab, &before, r.clone(), Code::Unauthenticated, &want);
    let as_unknown = r.unwrap_err();
    let wrong = wrong_secret(&token);
    let r = enroll(port, &ca, "dpu-2", &wrong, &good).await;
    let want = format!("token {id} is unknown or its secret is wrong");
    assert_refused(&lab, &before, r.clone(), Code::Unauthenticated, &want);
    let as_wrong = r.unwrap_err();
    assert_eq!(as_unknown.code(), as_wrong.code());
    assert_eq!(
        as_unknown.message().replace(unknown_id, "<id>"),
        as_wrong.message().replace(&id, "<id>")
    );
    wait_log(&server, &format!("unknown token {unknown_id}"));
    wait_log(&server, &format!("wrong secret for token {id}"));

    let r = enroll(port, &ca, "dpu-2", &expired, &good).await;
    let want = format!("token {} expired at", token_id(&expired));
    assert_refused(&lab, &before, r, Code::PermissionDenied, &want);

    // A token for dpu-2 presented by dpu-1 (with a CSR for dpu-1).
    let (_, dpu1) = node_csr("dpu-1");
    let r = enroll(port, &ca, "dpu-1", &token, &dpu1).await;
    let want = format!("token {id} is for node \"dpu-2\", not \"dpu-1\"");
    assert_refused(&lab, &before, r, Code::PermissionDenied, &want);

    // The right token and node, but a CSR with a different name.
    let r = enroll(port, &ca, "dpu-2", &token, &dpu1).await;
    let want = "the CSR names [\"dpu-1\"], not node \"dpu-2\"";
    assert_refused(&lab, &before, r, Code::PermissionDenied, want);
    let (_, extra) = csr("dpu-2", &["dpu-2", "dpu-1"]);
    let r = enroll(port, &ca, "dpu-2", &token, &extra).await;
    assert_refused(&lab, &before, r, Code::PermissionDenied, want);
    let (_, no_san) = csr("dpu-2", &[]);
    let r = enroll(port, &ca, "dpu-2", &token, &no_san).await;
    let want = "the CSR must have CN \"dpu-2\" and DNS SAN \"dpu-2\"";
    assert_refused(&lab, &before, r, Code::InvalidArgument, want);

    let r = enroll(port, &ca, "dpu-2", &token, &tamper(&good)).await;
    let want = "the CSR signature does not verify";
    assert_refused(&lab, &before, r, Code::InvalidArgument, want);
    let r = enroll(port, &ca, "dpu-2", &token, "not a csr").await;
    let want = "the CSR is not a PEM \"CERTIFICATE REQUEST\"";
    assert_refused(&lab, &before, r, Code::InvalidArgument, want);
    let huge = format!("{good}{}", "x".repeat(16 << 10));
    let r = enroll(port, &ca, "dpu-2", &token, &huge).await;
    assert_refused(
        &lab,
        &before,
        r,
        Code::InvalidArgument,
        "bytes; at most 16384",
    );

    let (_, bad_name) = node_csr("dpu-2");
    let r = enroll(port, &ca, "DPU_2", &token, &bad_name).await;
    assert_refused(
        &lab,
        &before,
        r,
        Code::InvalidArgument,
        "invalid node name \"DPU_2\"",
    );

    // Renew and Session need a client certificate.
    let r = renew(port, &ca, None, &good).await;
    let want = "a client certificate is required";
    assert_refused(&lab, &before, r, Code::Unauthenticated, want);
    let e = refused(port, &ca, None, "dpu-2").await;
    assert_eq!(e, format!("Unauthenticated: {want}"));
    assert!(snapshot(&lab.state) == before);

    // Now the token works, once.
    enroll(port, &ca, "dpu-2", &token, &good).await.unwrap();
    let after = snapshot(&lab.state);
    assert_ne!(after, before);
    let (_, again) = node_csr("dpu-2");
    let r = enroll(port, &ca, "dpu-2", &token, &again).await;
    let want = format!("token {id} was already used");
    assert_refused(&lab, &after, r, Code::PermissionDenied, &want);

    // Two enrollments racing for one token: one wins.
    let race = token_create(&lab, "dpu-3");
    let (_, a) = node_csr("dpu-3");
    let (_, b) = node_csr("dpu-3");
    let (ra, rb) = tokio::join!(
        enroll(port, &ca, "dpu-3", &race, &a),
        enroll(port, &ca, "dpu-3", &race, &b)
    );
    let (won, lost) = match (ra, rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("expected one winner: {other:?}"),
    };
    assert_eq!(lost.code(), Code::PermissionDenied);
    assert!(lost.message().ends_with("was already used"), "{lost:?}");
    let record = node_record(&lab, "dpu-3");
    assert_eq!(serials(&record, "certs"), [won.serial]);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_node_is_refused_until_readmitted() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let ca = lab.read("ca.pem");
    let port = server.port;
    let (key, request) = node_csr("dpu-2");
    let first = enroll(port, &ca, "dpu-2", &token_create(&lab, "dpu-2"), &request)
        .await
        .unwrap();
    let old = identity(&first, &key);
    let ch = channel(port, &ca, old.clone()).await.unwrap();
    let mut agent = open(ch, "dpu-2", 0).await.unwrap();
    assert!(agent.update().await.snapshot);

    // Revoking ends the live session.
    let revoked_at = Instant::now();
    let out = cli_ok(&[
        "node",
        "revoke",
        "--state-dir",
        s(&lab.state),
        "--node",
        "dpu-2",
    ]);
    assert!(
        out.contains("node dpu-2 revoked (1 unexpired certificate(s))"),
        "{out}"
    );
    let ended = agent.next().await;
    let elapsed = revoked_at.elapsed();
    match ended {
        Err(s) => {
            assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
            assert!(s.message().starts_with("node dpu-2 is revoked"), "{s:?}");
        }
        other => panic!("expected the session to end: {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(2), "ended after {elapsed:?}");
    let record = node_record(&lab, "dpu-2");
    assert_eq!(record["revoked"], true);
    assert_eq!(serials(&record, "revoked_serials"), [first.serial.as_str()]);
    assert!(serials(&record, "certs").is_empty());

    // Renewal after revocation: refused, nothing changes; so is a new session.
    let before = snapshot(&lab.state);
    let (_, request) = node_csr("dpu-2");
    let r = renew(port, &ca, old.clone(), &request).await;
    assert_refused(
        &lab,
        &before,
        r,
        Code::PermissionDenied,
        "node dpu-2 is revoked",
    );
    let e = refused(port, &ca, old.clone(), "dpu-2").await;
    assert!(
        e.starts_with("PermissionDenied: node dpu-2 is revoked;"),
        "{e}"
    );
    let table = cli_ok(&["node", "list", "--state-dir", s(&lab.state)]);
    let line = table.lines().find(|l| l.starts_with("dpu-2 ")).unwrap();
    assert!(line.contains("revoked"), "{table}");
    // `issue --node` does not re-admit it either.
    let out = cli(&[
        "issue",
        "--state-dir",
        s(&lab.state),
        "--node",
        "dpu-2",
        "--out",
        s(&lab.certs),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node dpu-2 is revoked"));
    assert!(snapshot(&lab.state) == before);

    // Re-admission: a new token, a new key. The old certificate stays refused.
    let (key2, request2) = node_csr("dpu-2");
    let second = enroll(port, &ca, "dpu-2", &token_create(&lab, "dpu-2"), &request2)
        .await
        .unwrap();
    let record = node_record(&lab, "dpu-2");
    assert_eq!(record["revoked"], false);
    assert_eq!(serials(&record, "certs"), [second.serial.as_str()]);
    assert_eq!(serials(&record, "revoked_serials"), [first.serial.as_str()]);
    let ch = channel(port, &ca, identity(&second, &key2)).await.unwrap();
    let mut agent = open(ch, "dpu-2", 0).await.unwrap();
    assert!(agent.update().await.snapshot);
    let e = refused(port, &ca, old.clone(), "dpu-2").await;
    let want = format!(
        "PermissionDenied: node dpu-2 is revoked for certificate {}",
        first.serial
    );
    assert!(e.starts_with(&want), "{e}");
    let before = snapshot(&lab.state);
    let (_, request) = node_csr("dpu-2");
    let r = renew(port, &ca, old, &request).await;
    let want = format!("node dpu-2 is revoked for certificate {}", first.serial);
    assert_refused(&lab, &before, r, Code::PermissionDenied, &want);
    // The old session was not disturbed by that.
    agent.nothing_for(Duration::from_millis(700)).await;

    // A renewal naming another node is refused too.
    let (_, other) = node_csr("dpu-1");
    let r = renew(port, &ca, identity(&second, &key2), &other).await;
    assert_refused(
        &lab,
        &before,
        r,
        Code::PermissionDenied,
        "not node \"dpu-2\"",
    );
    drop(server);
}

#[test]
fn token_and_node_commands() {
    let lab = Lab::new();
    let state = s(&lab.state);
    let token = cli_ok(&[
        "token",
        "create",
        "--state-dir",
        state,
        "--node",
        "dpu-2",
        "--ttl",
        "15m",
    ]);
    let token = token.strip_suffix('\n').unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts[0], "dpub");
    assert_eq!(
        (parts.len(), parts[1].len(), parts[2].len()),
        (3, 16, 64),
        "{token}"
    );
    let id = parts[1];
    let secret = parts[2];

    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let record = token_record(&lab, id).unwrap();
    assert_eq!(record["node"], "dpu-2");
    assert_eq!(record["id"], id);
    let ttl = record["expires_unix"].as_i64().unwrap() - record["created_unix"].as_i64().unwrap();
    assert_eq!(ttl, 900);
    assert_eq!(record["secret_sha256"].as_str().unwrap().len(), 64);
    assert!(!record.to_string().contains(secret));
    // The embedded store is private to the controller's user.
    assert_eq!(mode(&lab.state.join("store")), 0o700);
    for f in fs::read_dir(lab.state.join("store")).unwrap() {
        let p = f.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }

    for json in [false, true] {
        let mut args = vec!["token", "list", "--state-dir", state];
        if json {
            args.push("--json");
        }
        let list = cli_ok(&args);
        assert!(list.contains(id) && list.contains("unused"), "{list}");
        assert!(
            !list.contains(secret) && !list.contains(record["secret_sha256"].as_str().unwrap())
        );
    }

    // Bad input is a usage error (exit 2) and writes nothing.
    for args in [
        vec![
            "token",
            "create",
            "--state-dir",
            state,
            "--node",
            "dpu-2",
            "--ttl",
            "31d",
        ],
        vec![
            "token",
            "create",
            "--state-dir",
            state,
            "--node",
            "dpu-2",
            "--ttl",
            "0s",
        ],
        vec!["token", "create", "--state-dir", state, "--node", "DPU_2"],
        vec![
            "token",
            "delete",
            "--state-dir",
            state,
            "--id",
            "0123456789abcdef",
        ],
        vec!["node", "revoke", "--state-dir", state, "--node", "dpu-9"],
        vec![
            "serve",
            "--state-dir",
            state,
            "--intent-dir",
            "i",
            "--enroll-cert-ttl",
            "10s",
        ],
    ] {
        let out = cli(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        snapshot(&lab.state)
            .keys()
            .filter(|k| k.starts_with("tokens/"))
            .count(),
        1,
        "the one token"
    );
    let nowhere = lab.state.with_file_name("no-state");
    let out = cli(&[
        "token",
        "create",
        "--state-dir",
        s(&nowhere),
        "--node",
        "dpu-2",
    ]);
    assert_eq!(out.status.code(), Some(4), "no CA");

    cli_ok(&["token", "delete", "--state-dir", state, "--id", id]);
    assert!(token_record(&lab, id).is_none());
    assert_eq!(
        cli_ok(&["token", "list", "--state-dir", state]),
        "no tokens\n"
    );

    // `issue --node` records the node (Lab::new issued dpu-1).
    let nodes: serde_json::Value =
        serde_json::from_str(&cli_ok(&["node", "list", "--state-dir", state, "--json"])).unwrap();
    let dpu1 = &nodes[0];
    assert_eq!(dpu1["node"], "dpu-1");
    assert_eq!(dpu1["state"], "issued");
    assert_eq!(dpu1["token_id"], serde_json::Value::Null);
    assert_eq!(dpu1["certs"].as_array().unwrap().len(), 1);
    assert_eq!(
        dpu1["connected"],
        serde_json::Value::Null,
        "no controller running"
    );
    let out = cli_ok(&["node", "revoke", "--state-dir", state, "--node", "dpu-1"]);
    assert!(out.contains("token create"), "{out}");
    let out = cli_ok(&["node", "revoke", "--state-dir", state, "--node", "dpu-1"]);
    assert_eq!(out, "node dpu-1 was already revoked\n");
}

/// `token` with the last hex digit of its secret changed.
fn wrong_secret(token: &str) -> String {
    let last = token.chars().last().unwrap();
    format!(
        "{}{}",
        &token[..token.len() - 1],
        if last == '0' { '1' } else { '0' }
    )
}

/// Waits until the controller's log contains `want`.
#[track_caller]
fn wait_log(server: &Server, want: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = server.log();
        if log.contains(want) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {want:?} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_enrollments_are_limited_per_source_and_per_token() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let ca = lab.read("ca.pem");
    let port = server.port;
    let (_, dpu2) = node_csr("dpu-2");

    // Five failures from one address are each answered; the sixth attempt is
    // refused without being looked at, with when to retry.
    let src = fresh_source();
    for _ in 0..5 {
        let guess = Token::generate().to_string();
        let e = enroll_from(port, &ca, src, "dpu-2", &guess, &dpu2)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    let token = token_create(&lab, "dpu-2");
    let e = enroll_from(port, &ca, src, "dpu-2", &token, &dpu2)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let want = format!("too many failed enrollment attempts from {src}; retry in ");
    assert!(e.message().starts_with(&want), "{e:?}");
    let secs: u64 = e.message()[want.len()..]
        .trim_end_matches(" s")
        .parse()
        .unwrap_or_else(|_| panic!("{e:?}"));
    assert!((1..=2).contains(&secs), "{e:?}");
    assert_eq!(
        e.metadata().get("retry-after").unwrap().to_str().unwrap(),
        secs.to_string()
    );
    // After that time, the same address gets in with the good token.
    tokio::time::sleep(Duration::from_secs(secs)).await;
    enroll_from(port, &ca, src, "dpu-2", &token, &dpu2)
        .await
        .unwrap();

    // Wrong secrets for one token id, from different addresses: three are
    // answered, then that id is limited, for the right secret too.
    let token = token_create(&lab, "dpu-3");
    let id = token_id(&token);
    let wrong = wrong_secret(&token);
    let (_, dpu3) = node_csr("dpu-3");
    for _ in 0..3 {
        let e = enroll(port, &ca, "dpu-3", &wrong, &dpu3).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    for t in [&wrong, &token] {
        let e = enroll(port, &ca, "dpu-3", t, &dpu3).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        let want = format!("too many failed attempts with token {id}; retry in ");
        assert!(e.message().starts_with(&want), "{e:?}");
    }
    // Other failures with a proven secret do not count against the token.
    let token = token_create(&lab, "dpu-4");
    let (_, dpu4) = node_csr("dpu-4");
    for _ in 0..4 {
        let e = enroll(port, &ca, "dpu-4", &token, &dpu3).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    enroll(port, &ca, "dpu-4", &token, &dpu4).await.unwrap();

    // Successes do not count: a fleet behind one address enrolls.
    let src = fresh_source();
    for i in 0..8 {
        let node = format!("fleet-{i}");
        let token = token_create(&lab, &node);
        let (_, request) = node_csr(&node);
        enroll_from(port, &ca, src, &node, &token, &request)
            .await
            .unwrap();
    }
    drop(server);
}

/// The log lines of an Enroll failure (a refusal or its summary).
fn failure_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("enrollment refused") || l.contains(" not logged"))
        .collect()
}

/// Peer text reaches the log escaped and cut: a node name with a newline
/// cannot forge a line, a 50,000-character one is cut (in the answer too), and
/// a terminal escape in a CSR stays text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_text_in_the_log_is_escaped_and_bounded() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let ca = lab.read("ca.pem");
    let port = server.port;
    let (_, dpu2) = node_csr("dpu-2");
    let guess = Token::generate().to_string();
    let forged = "dpu-9\n2030-01-01T00:00:00.000000Z  INFO dpu_controller::enroll: forged";
    let huge = "n".repeat(50_000);
    for node in [forged, &huge] {
        let e = enroll(port, &ca, node, &guess, &dpu2).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().len() < 1_000, "{e:?}");
    }
    let token = token_create(&lab, "dpu-2");
    let (_, evil) = csr("dpu-2\x1b[2J\nFORGED", &["dpu-2"]);
    let e = enroll(port, &ca, "dpu-2", &token, &evil).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let log = wait_log(&server, "the CSR names");
    assert!(log.contains("dpu-9\\n2030-01-01"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2030-01-01") || l.starts_with("FORGED")),
        "a forged line: {log}"
    );
    assert!(!log.contains('\x1b'), "{log}");
    assert!(log.lines().all(|l| l.len() < 2_000), "{log}");
    drop(server);
}

/// Guesses tokens as fast as it can, from one address and from 64, for
/// `ENROLL_GUESS_SECS` (default 3) seconds. The controller logs at most ten
/// failures per ten seconds and then one line that counts the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_is_logged_at_a_bounded_rate() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let ca = lab.read("ca.pem");
    let port = server.port;
    let (_, dpu2) = node_csr("dpu-2");

    let secs: u64 = std::env::var("ENROLL_GUESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut channels = vec![channel_from(port, &ca, fresh_source()).await];
    for _ in 0..64 {
        channels.push(channel_from(port, &ca, fresh_source()).await);
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let channels = channels.clone();
        let csr = dpu2.clone();
        tasks.push(tokio::spawn(async move {
            let mut counts = BTreeMap::<String, u64>::new();
            let mut i = worker;
            while Instant::now() < until {
                // Half the guesses from the first address, the rest spread.
                let ch = if i % 2 == 0 { 0 } else { 1 + (i / 2) % 64 };
                i += 1;
                let guess = Token::generate().to_string();
                let code = match enroll_on(channels[ch].clone(), "dpu-2", &guess, &csr).await {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("{:?}", e.code()),
                };
                *counts.entry(code).or_default() += 1;
            }
            counts
        }));
    }
    let mut counts = BTreeMap::<String, u64>::new();
    for t in tasks {
        for (code, n) in t.await.unwrap() {
            *counts.entry(code).or_default() += n;
        }
    }
    let elapsed = started.elapsed();
    let attempts: u64 = counts.values().sum();
    let log = server.log();
    let lines = failure_lines(&log);
    eprintln!(
        "{attempts} guesses in {elapsed:.1?} ({counts:?}); {} failure lines, log {} bytes",
        lines.len(),
        log.len()
    );
    assert!(!counts.contains_key("ok"), "{counts:?}");
    assert!(
        counts.get("ResourceExhausted").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    // At most ten lines per ten seconds (two windows at most for a short run),
    // plus a summary per window.
    let windows = elapsed.as_secs() / 10 + 2;
    assert!(
        lines.len() as u64 <= windows * 11,
        "{} lines for {attempts} failures:\n{}",
        lines.len(),
        lines.join("\n")
    );
    // The summary counts every failure that was not logged.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let log = server.log();
        let logged = log
            .lines()
            .filter(|l| l.contains("enrollment refused"))
            .count() as u64;
        let suppressed: u64 = log
            .lines()
            .filter_map(|l| {
                l.split(" more enrollment failure(s) not logged")
                    .next()
                    .filter(|p| p.len() < l.len())
            })
            .map(|p| p.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        if logged + suppressed == attempts {
            eprintln!("{}", failure_lines(&log).join("\n"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logged {logged} + suppressed {suppressed} != {attempts} guesses:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(server);
}

/// A tmpfs mounted on a directory; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs on {} (the test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut c = std::process::Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            c.arg(&self.0).status().is_ok_and(|s| s.success())
        };
        if !umount(false) {
            umount(true);
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            fs::create_dir(&target).unwrap();
            copy_tree(&e.path(), &target);
            let mode = e.metadata().unwrap().permissions().mode();
            fs::set_permissions(&target, fs::Permissions::from_mode(mode)).unwrap();
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Writes to `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap();
    for chunk in [64 << 10, 4 << 10, 1] {
        let buf = vec![0u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(n) if n == chunk => {}
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let _ = f.sync_all();
}

/// On a full state directory (a small tmpfs) Enroll fails, names the reason in
/// the log and leaves the token unused; once there is room, the same token
/// enrolls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_the_token_usable() {
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test mounts a tmpfs and needs root"
    );
    let lab = Lab::new();
    // Move the state directory onto a 1 MiB tmpfs.
    let moved = lab.state.with_file_name("state.orig");
    fs::rename(&lab.state, &moved).unwrap();
    fs::create_dir(&lab.state).unwrap();
    let _tmpfs = Tmpfs::mount(&lab.state, "1m");
    copy_tree(&moved, &lab.state);
    let server = Server::start(&lab);
    let ca = lab.read("ca.pem");
    let port = server.port;
    let token = token_create(&lab, "dpu-2");
    let id = token_id(&token);
    // The server has written what it writes at start (status.json).
    let deadline = Instant::now() + WAIT;
    while !lab.state.join("status.json").exists() {
        assert!(Instant::now() < deadline, "no status.json");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The store appends a line per write; tmpfs takes a new page only when a
    // line does not fit the last one. Pad the log (with tokens for another
    // node) until the enrollment's line (~650 bytes) cannot fit, once the
    // server's own writes at start are over.
    let log_file = lab.state.join("store/log.jsonl");
    let size = || fs::metadata(&log_file).map_or(0, |m| m.len());
    let mut stable = (size(), Instant::now());
    while stable.1.elapsed() < Duration::from_millis(2500) {
        assert!(Instant::now() < deadline + WAIT, "the store keeps growing");
        std::thread::sleep(Duration::from_millis(100));
        if size() != stable.0 {
            stable = (size(), Instant::now());
        }
    }
    let slack = |len: u64| (4096 - len % 4096) % 4096;
    while slack(size()) >= 500 {
        token_create(&lab, "dpu-pad");
    }
    let filler = lab.state.join("filler");
    fill(&filler);
    let (_, request) = node_csr("dpu-2");
    let e = enroll(port, &ca, "dpu-2", &token, &request)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    let log = wait_log(&server, "enrollment failed");
    assert!(
        token_record(&lab, id).unwrap()["used_unix"].is_null(),
        "the token is not unused: {log}"
    );
    let list = cli_ok(&["token", "list", "--state-dir", s(&lab.state)]);
    assert!(list.contains(id) && list.contains("unused"), "{list}");
    let line = log
        .lines()
        .find(|l| l.contains("enrollment failed"))
        .unwrap();
    assert!(line.contains("No space left on device"), "{line}");
    assert_eq!(
        e.message(),
        "the controller failed to complete the request; see its log"
    );

    fs::remove_file(&filler).unwrap();
    let (key, request) = node_csr("dpu-2");
    let answer = enroll(port, &ca, "dpu-2", &token, &request).await.unwrap();
    check_cert(&answer.cert_pem, &ca, "dpu-2", &key);
    assert!(token_record(&lab, id).unwrap()["used_unix"].is_i64());
    let e = enroll(port, &ca, "dpu-2", &token, &request)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    drop(server);
}

/// Changes one base64 character near the end of a PEM (inside the signature).
fn tamper(pem: &str) -> String {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut body = body.into_bytes();
    let at = body.len() - 20;
    body[at] = if body[at] == b'A' { b'B' } else { b'A' };
    let body = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    )
}
