//! The `Enrollment` gRPC service: a DPU trades a bootstrap token and a CSR for
//! its node certificate (`Enroll`), then renews it over mTLS (`Renew`).
//!
//! Every check runs before anything in the store changes, so a refused request
//! changes nothing. The token's secret is checked before anything else about
//! the request is looked at. On success `Enroll` signs the certificate, then
//! records it in the node's record and marks the token used in one store
//! transaction, which holds only if neither key changed since it was read: of
//! concurrent enrollments with one token exactly one lands, and a failure
//! leaves the token unused. A certificate whose transaction did not land is
//! never handed out.
//!
//! A replica without the CA's private key (`pki/ca.key`) serves agents and
//! verifies certificates, but refuses Enroll and Renew with `unavailable`, so
//! that the DPU tries another controller.
//!
//! Before any of that, `EnrollService` limits failed attempts per source
//! address and per token id (`limits`), and logs refusals at a bounded rate
//! with peer text escaped and cut (`crate::escape`).

mod limits;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dpu_proto::v1 as pb;
use dpu_proto::v1::enrollment_server::Enrollment;
use tonic::{Code, Request, Response, Status};

use crate::csr::{Csr, CsrError, MAX_CSR_BYTES};
use crate::escape::escape_peer;
use crate::kv::{KvError, Store};
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
    /// Reading or writing the store, or signing, failed.
    #[error("{0}")]
    Internal(String),
    /// The store cannot be reached: nothing was recorded, the token is unused.
    #[error("{0}")]
    Unavailable(String),
    /// This replica holds no CA key.
    #[error("this controller holds no CA key ({0}), so it issues no certificates")]
    NoCaKey(String),
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
            EnrollError::Unavailable(_) => {
                return Status::unavailable(
                    "the controller's store is unavailable; nothing was recorded (a bootstrap token stays unused), so try again",
                )
            }
            EnrollError::NoCaKey(_) => {
                return Status::unavailable(
                    "this controller replica holds no CA key and issues no certificates; try another controller",
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
                | EnrollError::Unavailable(_)
                | EnrollError::NoCaKey(_)
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
            NodeError::Kv(e) => e.into(),
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
            TokenError::Kv(e) => e.into(),
            e => EnrollError::Internal(e.to_string()),
        }
    }
}

impl From<KvError> for EnrollError {
    fn from(e: KvError) -> Self {
        match e {
            e @ KvError::Unavailable(_) => EnrollError::Unavailable(e.to_string()),
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

/// Enrollment and renewal against the store.
#[derive(Debug)]
pub struct Enroller {
    tokens: TokenStore,
    nodes: NodeStore,
    store: Store,
    /// The CA's certificate, handed to every enrolled DPU.
    ca_pem: String,
    /// `None` on a replica that was not given the CA's key.
    ca: Result<Ca, String>,
    cert_ttl: Duration,
}

impl Enroller {
    /// `ca` is the CA with its key, or why this replica has none (then it
    /// refuses Enroll and Renew with `unavailable`).
    pub fn new(store: Store, ca_pem: String, ca: Result<Ca, String>, cert_ttl: Duration) -> Self {
        Enroller {
            tokens: TokenStore::new(store.clone()),
            nodes: NodeStore::new(store.clone()),
            store,
            ca_pem,
            ca,
            cert_ttl,
        }
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn ca(&self) -> Result<&Ca, EnrollError> {
        self.ca
            .as_ref()
            .map_err(|why| EnrollError::NoCaKey(why.clone()))
    }

    /// First boot: a certificate for `node` if `token` is an unused, unexpired
    /// token for it and the CSR names exactly `node`.
    pub async fn enroll(
        &self,
        node: &str,
        token: &str,
        csr_pem: &str,
    ) -> Result<Signed, EnrollError> {
        let now = unix_now();
        check_name(node)?;
        let token = Token::parse(token.trim())?;
        let (record, token_rev) = self.tokens.check(&token, node, now).await?;
        let csr = Csr::parse(csr_pem)?;
        csr.check_names(node)?;
        let ca = self.ca()?;

        for _ in 0..crate::nodes::MAX_ATTEMPTS {
            let (current, node_rev) = self.nodes.get(node).await?;
            let mut r = current.unwrap_or_else(|| NodeRecord::new(node, now));
            r.readmit(&token.id, now);
            let signed = ca.sign_node_key(node, csr.public_key(), self.cert_ttl)?;
            r.add_cert(entry(&signed), now)?;
            let (cmp, key, used) = TokenStore::consume(&record, token_rev, now);
            let txn = NodeStore::put_if(&r, node_rev).when(cmp).put(key, used);
            if self.store.txn(txn).await?.succeeded {
                return Ok(signed);
            }
            // Either the token was consumed meanwhile, or only the node's
            // record changed (a renewal, a revocation): read it again.
            if !self.tokens.unchanged_since(&token.id, token_rev).await? {
                return Err(TokenRefusal::Used { id: token.id }.into());
            }
        }
        Err(NodeError::Contended(node.to_string()).into())
    }

    /// Before expiry: a new certificate for the key in the CSR, for the node
    /// the client certificate (`peer`, DER) names, unless it is revoked.
    pub async fn renew(&self, peer: Option<&[u8]>, csr_pem: &str) -> Result<Signed, EnrollError> {
        let der = peer.ok_or(EnrollError::NoClientCert)?;
        let id = peer_identity(der)?;
        let [node] = id.names.as_slice() else {
            return Err(EnrollError::NotANodeCert(id.names));
        };
        check_name(node)?;
        // Told before anything else about the request; checked again in the change.
        if let Some(r) = self.nodes.load(node).await? {
            r.admits(&id.serial)?;
        }
        let csr = Csr::parse(csr_pem)?;
        csr.check_names(node)?;
        let ca = self.ca()?;
        let now = unix_now();
        self.nodes
            .modify(node, |record| {
                // A certificate from before node records existed has none yet.
                let mut r = record.unwrap_or_else(|| NodeRecord::new(node, now));
                r.admits(&id.serial)?;
                let signed = ca.sign_node_key(node, csr.public_key(), self.cert_ttl)?;
                r.add_cert(entry(&signed), now)?;
                Ok::<_, EnrollError>((r, signed))
            })
            .await
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
            Err(
                e @ (EnrollError::Internal(_)
                | EnrollError::Unavailable(_)
                | EnrollError::NoCaKey(_)),
            ) => {
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
        let result = self
            .enroller
            .enroll(&req.node, &req.token, &req.csr_pem)
            .await;
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
        let result = self.enroller.renew(der.as_deref(), &csr_pem).await;
        self.answer("renewal", &node, peer, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{init_ca, load_ca};
    use crate::tokens::TokenState;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn csr(node: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![node.to_string()]).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        params.distinguished_name = dn;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    /// An enroller on an embedded store in `state`, with a CA there.
    fn enroller(state: &std::path::Path) -> Enroller {
        init_ca(state, false).unwrap();
        let store = Store::Local(crate::kv::LocalStore::open(&state.join("store")).unwrap());
        let ca = load_ca(state).unwrap();
        Enroller::new(store, ca.cert_pem.clone(), Ok(ca), DEFAULT_CERT_TTL)
    }

    async fn state_of(tokens: &TokenStore, id: &str) -> TokenState {
        let list = tokens.list(unix_now()).await.unwrap();
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

    #[tokio::test]
    async fn a_failure_to_record_leaves_the_token_unused() {
        let dir = tempfile::tempdir().unwrap();
        let e = enroller(dir.path());
        let (token, _) = e
            .tokens
            .create("dpu-1", DEFAULT_CERT_TTL, unix_now())
            .await
            .unwrap();
        let before = e.store.get(&crate::tokens::key(&token.id)).await.unwrap().1;
        // The node's record cannot be read: something else wrote its key.
        let bad = crate::kv::Txn::new().put("nodes/dpu-1", "not json");
        e.store.txn(bad).await.unwrap();
        let err = e
            .enroll("dpu-1", &token.to_string(), &csr("dpu-1"))
            .await
            .unwrap_err();
        assert!(matches!(err, EnrollError::Internal(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("store key nodes/dpu-1: not a node record"),
            "{err}"
        );
        let after = e.store.get(&crate::tokens::key(&token.id)).await.unwrap().1;
        assert_eq!(after, before, "the very same record");
        assert_eq!(state_of(&e.tokens, &token.id).await, TokenState::Unused);

        e.store
            .txn(crate::kv::Txn::new().delete("nodes/dpu-1"))
            .await
            .unwrap();
        e.enroll("dpu-1", &token.to_string(), &csr("dpu-1"))
            .await
            .unwrap();
        assert_eq!(state_of(&e.tokens, &token.id).await, TokenState::Used);
        let record = e.nodes.load("dpu-1").await.unwrap().unwrap();
        assert_eq!(record.token_id.as_deref(), Some(token.id.as_str()));
        assert_eq!(record.certs.len(), 1);
        let again = e.enroll("dpu-1", &token.to_string(), &csr("dpu-1")).await;
        assert!(matches!(
            again,
            Err(EnrollError::Token(TokenRefusal::Used { .. }))
        ));
    }

    /// Of eight enrollments with one token at once, exactly one gets a
    /// certificate, and exactly one certificate is recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_token_enrolls_once_under_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let e = Arc::new(enroller(dir.path()));
        let (token, _) = e
            .tokens
            .create("dpu-1", DEFAULT_CERT_TTL, unix_now())
            .await
            .unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (e, t) = (e.clone(), token.to_string());
                tokio::spawn(async move { e.enroll("dpu-1", &t, &csr("dpu-1")).await })
            })
            .collect();
        let mut issued = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => issued += 1,
                Err(EnrollError::Token(TokenRefusal::Used { .. })) => {}
                Err(other) => panic!("unexpected: {other:?}"),
            }
        }
        assert_eq!(issued, 1);
        let record = e.nodes.load("dpu-1").await.unwrap().unwrap();
        assert_eq!(record.certs.len(), 1);
    }

    /// A replica given no CA key refuses with `unavailable` and writes nothing.
    #[tokio::test]
    async fn a_replica_without_the_ca_key_issues_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let full = enroller(dir.path());
        let e = Enroller::new(
            full.store.clone(),
            full.ca_pem.clone(),
            Err("no pki/ca.key".into()),
            DEFAULT_CERT_TTL,
        );
        let (token, _) = e
            .tokens
            .create("dpu-1", DEFAULT_CERT_TTL, unix_now())
            .await
            .unwrap();
        let err = e
            .enroll("dpu-1", &token.to_string(), &csr("dpu-1"))
            .await
            .unwrap_err();
        assert_eq!(err.status().code(), Code::Unavailable, "{err}");
        assert!(err.status().message().contains("holds no CA key"));
        assert_eq!(state_of(&e.tokens, &token.id).await, TokenState::Unused);
        assert!(e.nodes.load("dpu-1").await.unwrap().is_none());
        // The replica with the key enrolls it with the same token.
        full.enroll("dpu-1", &token.to_string(), &csr("dpu-1"))
            .await
            .unwrap();
    }
}
