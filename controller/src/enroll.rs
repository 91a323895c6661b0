//! The `Enrollment` gRPC service: a DPU trades a bootstrap token and a CSR for
//! its node certificate (`Enroll`), then renews it over mTLS (`Renew`).
//!
//! Every check runs before anything on disk changes, so a refused request
//! changes nothing. The token's secret is checked before anything else about
//! the request is looked at. On success `Enroll` claims the token (of
//! concurrent callers one wins the rename), then signs and records the
//! certificate under the node lock, and only then marks the token used; if
//! recording fails the token is put back (a rename: it needs no space). See
//! `tokens` for what a crash leaves.
//!
//! Before any of that, `EnrollService` limits failed attempts per source
//! address and per token id (`limits`), and logs refusals at a bounded rate
//! with peer text escaped and cut (`crate::escape`).

mod limits;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dpu_proto::v1 as pb;
use dpu_proto::v1::enrollment_server::Enrollment;
use tonic::{Code, Request, Response, Status};

use crate::csr::{Csr, CsrError, MAX_CSR_BYTES};
use crate::escape::escape_peer;
use crate::nodes::{CertEntry, NodeError, NodeRecord, NodeStore, Revoked};
use crate::pki::{peer_identity, Ca, PkiError, Signed};
use crate::timeutil::unix_now;
use crate::tokens::{Token, TokenError, TokenRefusal, TokenStore};

pub use limits::{
    EnrollLimits, Limited, LogBudget, LogVerdict, Outcome, Rate, LOG_INTERVAL, LOG_MAX_LINES,
    MAX_TRACKED, SOURCE_BURST, SOURCE_REFILL, TOKEN_BURST, TOKEN_REFILL,
};

/// Lifetime of enrolled and renewed certificates unless `--enroll-cert-ttl`.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MIN_CERT_TTL: Duration = Duration::from_secs(30);
pub const MAX_CERT_TTL: Duration = Duration::from_secs(365 * 86_400);
/// The largest Enroll/Renew request: a CSR and a token with room to spare.
pub const MAX_REQUEST_BYTES: usize = 4 * MAX_CSR_BYTES;
/// Peer-supplied names in refusals and log lines are cut to this many characters.
pub const MAX_SHOWN_NAME: usize = 64;
/// A refusal's text in the log is cut to this many characters.
pub const MAX_LOGGED_REASON: usize = 512;

/// Why an Enroll or Renew was refused, or failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("invalid node name {name:?}: {message}")]
    BadName { name: String, message: String },
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Revoked(#[from] Revoked),
    #[error("a client certificate is required")]
    NoClientCert,
    #[error("the client certificate names {0:?}; a node certificate names exactly one node")]
    NotANodeCert(Vec<String>),
    /// The client certificate is not a node's (a host shim's, say).
    #[error("{0}")]
    WrongRole(String),
    /// The node holds too many unexpired certificates.
    #[error("{0}")]
    Limit(String),
    /// Too many failed attempts; the request was not looked at.
    #[error("too many failed enrollment attempts from {from}; retry in {secs} s")]
    SourceLimited { from: String, secs: u64 },
    #[error("too many failed attempts with token {id}; retry in {secs} s")]
    TokenLimited { id: String, secs: u64 },
    /// Reading or writing the state directory, or signing, failed.
    #[error("{0}")]
    Internal(String),
    /// Recording the certificate failed after the token was claimed; the token
    /// was put back.
    #[error("{0}; the token was put back")]
    NotRecorded(String),
}

impl EnrollError {
    /// The status the DPU gets. Internal failures are described in the log
    /// only; an unknown token and a wrong secret read the same.
    pub fn status(&self) -> Status {
        let code = match self {
            EnrollError::BadName { .. } => Code::InvalidArgument,
            EnrollError::Token(TokenRefusal::Malformed) => Code::InvalidArgument,
            EnrollError::Token(TokenRefusal::Unknown { id } | TokenRefusal::WrongSecret { id }) => {
                return Status::unauthenticated(format!(
                    "token {id} is unknown or its secret is wrong"
                ))
            }
            EnrollError::Token(_) => Code::PermissionDenied,
            EnrollError::Csr(CsrError::OtherName { .. }) => Code::PermissionDenied,
            EnrollError::Csr(_) => Code::InvalidArgument,
            EnrollError::Revoked(_)
            | EnrollError::NotANodeCert(_)
            | EnrollError::WrongRole(_) => Code::PermissionDenied,
            EnrollError::NoClientCert => Code::Unauthenticated,
            EnrollError::Limit(_) => Code::ResourceExhausted,
            EnrollError::SourceLimited { secs, .. } | EnrollError::TokenLimited { secs, .. } => {
                let mut status = Status::resource_exhausted(self.to_string());
                status
                    .metadata_mut()
                    .insert("retry-after", secs.to_string().parse().expect("ASCII digits"));
                return status;
            }
            EnrollError::Internal(_) => {
                return Status::internal(
                    "the controller failed to complete the request; see its log",
                )
            }
            EnrollError::NotRecorded(_) => {
                return Status::internal(
                    "the controller failed to complete the request (see its log); the token is still unused, so try again",
                )
            }
        };
        Status::new(code, self.to_string())
    }

    /// Whether the request got past the token's secret (what counts for the
    /// per-token limit is only attempts that did not).
    fn secret_proven(&self) -> bool {
        !matches!(
            self,
            EnrollError::BadName { .. }
                | EnrollError::Token(
                    TokenRefusal::Malformed
                        | TokenRefusal::Unknown { .. }
                        | TokenRefusal::WrongSecret { .. }
                )
                | EnrollError::Internal(_)
                | EnrollError::SourceLimited { .. }
                | EnrollError::TokenLimited { .. }
        )
    }
}

fn limited(l: Limited) -> EnrollError {
    match l {
        Limited::Source { source, retry } => EnrollError::SourceLimited {
            from: source.to_string(),
            secs: limits::retry_secs(retry),
        },
        Limited::Token { id, retry } => EnrollError::TokenLimited {
            id,
            secs: limits::retry_secs(retry),
        },
    }
}

/// A name as refusals show it: cut to `MAX_SHOWN_NAME` characters (they are
/// shown with `{:?}`, which escapes control characters).
fn shown_name(name: &str) -> String {
    match name.char_indices().nth(MAX_SHOWN_NAME) {
        None => name.to_string(),
        Some((at, _)) => format!("{}…", &name[..at]),
    }
}

impl From<NodeError> for EnrollError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Revoked(r) => EnrollError::Revoked(r),
            NodeError::BadName { name, message } => EnrollError::BadName {
                name: shown_name(&name),
                message,
            },
            e @ NodeError::TooManyCerts { .. } => EnrollError::Limit(e.to_string()),
            e => EnrollError::Internal(e.to_string()),
        }
    }
}

impl From<TokenError> for EnrollError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Refused(r) => EnrollError::Token(r),
            TokenError::BadName { name, message } => EnrollError::BadName {
                name: shown_name(&name),
                message,
            },
            e => EnrollError::Internal(e.to_string()),
        }
    }
}

impl From<PkiError> for EnrollError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::BadName { name, message } => EnrollError::BadName {
                name: shown_name(&name),
                message,
            },
            PkiError::WrongRole(m) => EnrollError::WrongRole(m),
            e => EnrollError::Internal(e.to_string()),
        }
    }
}

fn check_name(node: &str) -> Result<(), EnrollError> {
    dpu_model::check_name(node).map_err(|message| EnrollError::BadName {
        name: shown_name(node),
        message,
    })
}

fn entry(signed: &Signed) -> CertEntry {
    CertEntry {
        serial: signed.info.serial.clone(),
        not_after_unix: signed.info.not_after_unix,
    }
}

/// Enrollment and renewal against one state directory; blocking (file locks).
#[derive(Debug)]
pub struct Enroller {
    tokens: TokenStore,
    nodes: NodeStore,
    ca: Ca,
    cert_ttl: Duration,
}

impl Enroller {
    /// Also settles tokens a crash left claimed (see `settle_claimed`).
    pub fn new(state_dir: &Path, ca: Ca, cert_ttl: Duration) -> Self {
        let e = Enroller {
            tokens: TokenStore::new(state_dir),
            nodes: NodeStore::new(state_dir),
            ca,
            cert_ttl,
        };
        e.settle_claimed();
        e
    }

    /// A token left claimed by a crash is used if its node's record names it
    /// (the certificate was recorded), else put back. One that cannot be
    /// settled stays claimed, which admits no one.
    pub fn settle_claimed(&self) {
        let claimed = match self.tokens.claimed() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot read the claimed tokens: {e}");
                return;
            }
        };
        for t in claimed {
            let (id, node) = (&t.id, &t.node);
            let result = match self.nodes.load(node) {
                Ok(Some(r)) if r.token_id.as_deref() == Some(id.as_str()) => self
                    .tokens
                    .finish(id, unix_now())
                    .map(|()| "used: its node's record has the certificate"),
                Ok(_) => self
                    .tokens
                    .restore(id)
                    .map(|()| "put back: no certificate was recorded with it"),
                Err(e) => {
                    tracing::warn!(token = %id, node = %node, "cannot settle a claimed token: {e}");
                    continue;
                }
            };
            match result {
                Ok(what) => {
                    tracing::info!(token = %id, node = %node, "token left claimed by an interrupted enrollment {what}")
                }
                Err(e) => {
                    tracing::warn!(token = %id, node = %node, "cannot settle a claimed token: {e}")
                }
            }
        }
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// First boot: a certificate for `node` if `token` is an unused, unexpired
    /// token for it and the CSR names exactly `node`.
    pub fn enroll(&self, node: &str, token: &str, csr_pem: &str) -> Result<Signed, EnrollError> {
        let now = unix_now();
        check_name(node)?;
        let token = Token::parse(token.trim())?;
        self.tokens.check(&token, node, now)?;
        let csr = Csr::parse(csr_pem)?;
        csr.check_names(node)?;

        self.tokens.claim(&token.id)?;
        let recorded = self.nodes.modify(node, |record| {
            let mut r = record.unwrap_or_else(|| NodeRecord::new(node, now));
            r.readmit(&token.id, now);
            let signed = self
                .ca
                .sign_node_key(node, csr.public_key(), self.cert_ttl)?;
            r.add_cert(entry(&signed), now)?;
            Ok::<_, EnrollError>((r, signed))
        });
        match recorded {
            Ok(signed) => {
                if let Err(e) = self.tokens.finish(&token.id, unix_now()) {
                    // The certificate is recorded: the token stays claimed
                    // (admits no one) until the next start marks it used.
                    tracing::error!(node, token = %token.id, "cannot mark the token used: {e}");
                }
                Ok(signed)
            }
            Err(e) => match self.tokens.restore(&token.id) {
                Err(re) => {
                    tracing::error!(node, token = %token.id, "cannot put the token back after a failed enrollment: {re}");
                    Err(e)
                }
                Ok(()) => match e {
                    EnrollError::Internal(m) => Err(EnrollError::NotRecorded(m)),
                    e => Err(e),
                },
            },
        }
    }

    /// Before expiry: a new certificate for the key in the CSR, for the node
    /// the client certificate (`peer`, DER) names, unless it is revoked.
    pub fn renew(&self, peer: Option<&[u8]>, csr_pem: &str) -> Result<Signed, EnrollError> {
        let der = peer.ok_or(EnrollError::NoClientCert)?;
        let id = peer_identity(der)?;
        let [node] = id.names.as_slice() else {
            return Err(EnrollError::NotANodeCert(id.names));
        };
        check_name(node)?;
        // Told before anything else about the request; checked again under the lock.
        if let Some(r) = self.nodes.load(node)? {
            r.admits(&id.serial)?;
        }
        let csr = Csr::parse(csr_pem)?;
        csr.check_names(node)?;
        let now = unix_now();
        self.nodes.modify(node, |record| {
            // A certificate from before node records existed has none yet.
            let mut r = record.unwrap_or_else(|| NodeRecord::new(node, now));
            r.admits(&id.serial)?;
            let signed = self
                .ca
                .sign_node_key(node, csr.public_key(), self.cert_ttl)?;
            r.add_cert(entry(&signed), now)?;
            Ok::<_, EnrollError>((r, signed))
        })
    }
}

/// The gRPC face of the `Enroller`, with the limits on failed attempts and
/// on the log lines they make.
#[derive(Debug, Clone)]
pub struct EnrollService {
    enroller: Arc<Enroller>,
    limits: Arc<Mutex<EnrollLimits>>,
    log: Arc<Mutex<LogBudget>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn shown_peer(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unknown".into(), |p| p.to_string())
}

impl EnrollService {
    pub fn new(enroller: Arc<Enroller>) -> Self {
        Self::with_limits(enroller, EnrollLimits::default(), LogBudget::default())
    }

    pub fn with_limits(enroller: Arc<Enroller>, limits: EnrollLimits, log: LogBudget) -> Self {
        EnrollService {
            enroller,
            limits: Arc::new(Mutex::new(limits)),
            log: Arc::new(Mutex::new(log)),
        }
    }

    fn answer(
        &self,
        what: &str,
        node: &str,
        peer: Option<SocketAddr>,
        result: Result<Signed, EnrollError>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        match result {
            Ok(s) => {
                tracing::info!(node = %escape_peer(node, MAX_SHOWN_NAME), peer = %shown_peer(peer), serial = %s.info.serial, not_after = s.info.not_after_unix, "{what}: certificate issued");
                Ok(Response::new(pb::EnrollResponse {
                    cert_pem: s.cert_pem,
                    ca_pem: self.enroller.ca_pem().to_string(),
                    not_before_unix: s.info.not_before_unix,
                    not_after_unix: s.info.not_after_unix,
                    serial: s.info.serial,
                }))
            }
            Err(e @ (EnrollError::Internal(_) | EnrollError::NotRecorded(_))) => {
                // Only after the token's secret or a client certificate was
                // proven (or the controller's own files fail): not rate-bound.
                let reason = escape_peer(&e.to_string(), MAX_LOGGED_REASON);
                tracing::error!(node = %escape_peer(node, MAX_SHOWN_NAME), peer = %shown_peer(peer), "{what} failed: {reason}");
                Err(e.status())
            }
            Err(e) => {
                self.log_refusal(what, node, peer, &e);
                Err(e.status())
            }
        }
    }

    /// One WARN line per refusal, at most `LOG_MAX_LINES` per `LOG_INTERVAL`;
    /// then one line at the end of the interval with how many were left out.
    fn log_refusal(&self, what: &str, node: &str, peer: Option<SocketAddr>, e: &EnrollError) {
        let (due, verdict) = lock(&self.log).admit(Instant::now());
        if let Some(n) = due {
            self.log_suppressed(n);
        }
        match verdict {
            LogVerdict::Log => {
                let reason = escape_peer(&e.to_string(), MAX_LOGGED_REASON);
                tracing::warn!(node = %escape_peer(node, MAX_SHOWN_NAME), peer = %shown_peer(peer), "{what} refused: {reason}");
            }
            LogVerdict::Suppress {
                summary: Some((generation, at)),
            } => {
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                    let n = lock(&this.log).flush(generation);
                    if let Some(n) = n {
                        this.log_suppressed(n);
                    }
                });
            }
            LogVerdict::Suppress { summary: None } => {}
        }
    }

    fn log_suppressed(&self, n: u64) {
        let (max, interval) = {
            let log = lock(&self.log);
            (log.max(), log.interval())
        };
        tracing::warn!(
            "{n} more enrollment failure(s) not logged in the last {} s (at most {max} are logged per {} s)",
            interval.as_secs(),
            interval.as_secs()
        );
    }
}

fn task_failed(e: tokio::task::JoinError) -> Result<Signed, EnrollError> {
    Err(EnrollError::Internal(format!(
        "the enrollment task failed: {e}"
    )))
}

#[tonic::async_trait]
impl Enrollment for EnrollService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let peer = request.remote_addr();
        let req = request.into_inner();
        let node = req.node.clone();
        let token_id = Token::parse(req.token.trim()).ok().map(|t| t.id);
        let admitted =
            lock(&self.limits).admit(peer.map(|p| p.ip()), token_id.as_deref(), Instant::now());
        let permit = match admitted {
            Ok(p) => p,
            Err(l) => return self.answer("enrollment", &node, peer, Err(limited(l))),
        };
        let enroller = self.enroller.clone();
        let result = tokio::task::spawn_blocking(move || {
            enroller.enroll(&req.node, &req.token, &req.csr_pem)
        })
        .await
        .unwrap_or_else(task_failed);
        let outcome = match &result {
            Ok(_) => Outcome::Issued,
            Err(e) if e.secret_proven() => Outcome::FailedWithSecret,
            Err(_) => Outcome::Failed,
        };
        lock(&self.limits).finish(permit, outcome, Instant::now());
        self.answer("enrollment", &node, peer, result)
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let peer = request.remote_addr();
        let der = request
            .peer_certs()
            .and_then(|c| c.first().map(|d| d.to_vec()));
        let node = der
            .as_deref()
            .and_then(|d| peer_identity(d).ok())
            .map(|id| id.names.join(","))
            .unwrap_or_default();
        let csr_pem = request.into_inner().csr_pem;
        let enroller = self.enroller.clone();
        let result = tokio::task::spawn_blocking(move || enroller.renew(der.as_deref(), &csr_pem))
            .await
            .unwrap_or_else(task_failed);
        self.answer("renewal", &node, peer, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{init_ca, load_ca};
    use crate::tokens::TokenState;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
    use std::fs;

    fn csr(node: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![node.to_string()]).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        params.distinguished_name = dn;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn enroller(state: &Path) -> Enroller {
        init_ca(state, false).unwrap();
        Enroller::new(state, load_ca(state).unwrap(), DEFAULT_CERT_TTL)
    }

    fn state_of(tokens: &TokenStore, id: &str) -> TokenState {
        let list = tokens.list(unix_now()).unwrap();
        list.iter().find(|(r, _)| r.id == id).unwrap().1
    }

    #[test]
    fn an_unknown_token_and_a_wrong_secret_read_the_same_to_the_caller() {
        let unknown = EnrollError::Token(TokenRefusal::Unknown { id: "ab".into() });
        let wrong = EnrollError::Token(TokenRefusal::WrongSecret { id: "ab".into() });
        let (u, w) = (unknown.status(), wrong.status());
        assert_eq!((u.code(), u.message()), (w.code(), w.message()));
        assert_eq!(u.code(), Code::Unauthenticated);
        assert_eq!(u.message(), "token ab is unknown or its secret is wrong");
        // The log keeps the reason.
        assert_eq!(unknown.to_string(), "unknown token ab");
        assert_eq!(wrong.to_string(), "wrong secret for token ab");
    }

    #[test]
    fn names_in_refusals_are_cut() {
        let e = check_name(&"x".repeat(10_000)).unwrap_err();
        let text = e.status().message().to_string();
        assert!(text.len() < 300, "{text}");
        assert!(text.contains(&format!("\"{}…\"", "x".repeat(MAX_SHOWN_NAME))));
    }

    #[test]
    fn a_failure_to_record_puts_the_token_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let e = enroller(dir.path());
        let (token, _) = e
            .tokens
            .create("dpu-1", DEFAULT_CERT_TTL, unix_now())
            .unwrap();
        let record = dir.path().join(format!("tokens/{}.json", token.id));
        let before = fs::read(&record).unwrap();
        // The node record cannot be written: a directory is in its place.
        fs::create_dir_all(dir.path().join("nodes/dpu-1.json")).unwrap();
        let err = e
            .enroll("dpu-1", &token.to_string(), &csr("dpu-1"))
            .unwrap_err();
        assert!(matches!(err, EnrollError::NotRecorded(_)), "{err:?}");
        assert!(err.status().message().contains("the token is still unused"));
        assert_eq!(fs::read(&record).unwrap(), before, "the very same record");
        assert_eq!(state_of(&e.tokens, &token.id), TokenState::Unused);

        fs::remove_dir(dir.path().join("nodes/dpu-1.json")).unwrap();
        e.enroll("dpu-1", &token.to_string(), &csr("dpu-1"))
            .unwrap();
        assert_eq!(state_of(&e.tokens, &token.id), TokenState::Used);
        assert!(e.tokens.claimed().unwrap().is_empty());
        let again = e.enroll("dpu-1", &token.to_string(), &csr("dpu-1"));
        assert!(matches!(
            again,
            Err(EnrollError::Token(TokenRefusal::Used { .. }))
        ));
    }

    /// What a crash between claiming a token and finishing leaves, settled
    /// at the next start: never usable twice, usable again if no certificate
    /// was recorded with it.
    #[test]
    fn tokens_left_claimed_by_a_crash_are_settled_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let e = enroller(state);
        let now = unix_now();
        // Crashed before the node record was written.
        let (lost, _) = e.tokens.create("dpu-1", DEFAULT_CERT_TTL, now).unwrap();
        e.tokens.claim(&lost.id).unwrap();
        // Crashed after the node record was written (it names the token).
        let (done, _) = e.tokens.create("dpu-2", DEFAULT_CERT_TTL, now).unwrap();
        e.tokens.claim(&done.id).unwrap();
        e.nodes
            .modify("dpu-2", |r| {
                let mut r = r.unwrap_or_else(|| NodeRecord::new("dpu-2", now));
                r.readmit(&done.id, now);
                Ok::<_, NodeError>((r, ()))
            })
            .unwrap();
        // Meanwhile neither admits anyone.
        for t in [&lost, &done] {
            let node = if t == &lost { "dpu-1" } else { "dpu-2" };
            let r = e.enroll(node, &t.to_string(), &csr(node));
            assert!(
                matches!(r, Err(EnrollError::Token(TokenRefusal::Used { .. }))),
                "{r:?}"
            );
        }
        assert_eq!(state_of(&e.tokens, &lost.id), TokenState::Claimed);

        let restarted = Enroller::new(state, load_ca(state).unwrap(), DEFAULT_CERT_TTL);
        assert_eq!(state_of(&e.tokens, &lost.id), TokenState::Unused);
        assert_eq!(state_of(&e.tokens, &done.id), TokenState::Used);
        assert!(e.tokens.claimed().unwrap().is_empty());
        restarted
            .enroll("dpu-1", &lost.to_string(), &csr("dpu-1"))
            .unwrap();
        let r = restarted.enroll("dpu-2", &done.to_string(), &csr("dpu-2"));
        assert!(matches!(
            r,
            Err(EnrollError::Token(TokenRefusal::Used { .. }))
        ));
    }
}
