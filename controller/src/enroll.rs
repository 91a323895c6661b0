//! The `Enrollment` gRPC service: a DPU trades a bootstrap token and a CSR for
//! its node certificate (`Enroll`), then renews it over mTLS (`Renew`).
//!
//! Every check runs before anything on disk changes, so a refused request
//! changes nothing. On success `Enroll` consumes the token first (the commit
//! point: of concurrent callers one wins the rename), then signs and records the
//! certificate under the node lock; if that fails the token is put back.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dpu_proto::v1 as pb;
use dpu_proto::v1::enrollment_server::Enrollment;
use tonic::{Code, Request, Response, Status};

use crate::csr::{Csr, CsrError, MAX_CSR_BYTES};
use crate::nodes::{CertEntry, NodeError, NodeRecord, NodeStore, Revoked};
use crate::pki::{peer_identity, Ca, PkiError, Signed};
use crate::timeutil::unix_now;
use crate::tokens::{Token, TokenError, TokenRefusal, TokenStore};

/// Lifetime of enrolled and renewed certificates unless `--enroll-cert-ttl`.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MIN_CERT_TTL: Duration = Duration::from_secs(30);
pub const MAX_CERT_TTL: Duration = Duration::from_secs(365 * 86_400);
/// The largest Enroll/Renew request: a CSR and a token with room to spare.
pub const MAX_REQUEST_BYTES: usize = 4 * MAX_CSR_BYTES;

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
    /// The node holds too many unexpired certificates.
    #[error("{0}")]
    Limit(String),
    /// Reading or writing the state directory, or signing, failed.
    #[error("{0}")]
    Internal(String),
}

impl EnrollError {
    /// The status the DPU gets. Internal failures are described in the log only.
    pub fn status(&self) -> Status {
        let code = match self {
            EnrollError::BadName { .. } => Code::InvalidArgument,
            EnrollError::Token(TokenRefusal::Malformed) => Code::InvalidArgument,
            EnrollError::Token(TokenRefusal::Unknown { .. } | TokenRefusal::WrongSecret { .. }) => {
                Code::Unauthenticated
            }
            EnrollError::Token(_) => Code::PermissionDenied,
            EnrollError::Csr(CsrError::OtherName { .. }) => Code::PermissionDenied,
            EnrollError::Csr(_) => Code::InvalidArgument,
            EnrollError::Revoked(_) | EnrollError::NotANodeCert(_) => Code::PermissionDenied,
            EnrollError::NoClientCert => Code::Unauthenticated,
            EnrollError::Limit(_) => Code::ResourceExhausted,
            EnrollError::Internal(_) => {
                return Status::internal(
                    "the controller failed to complete the request; see its log",
                )
            }
        };
        Status::new(code, self.to_string())
    }
}

impl From<NodeError> for EnrollError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Revoked(r) => EnrollError::Revoked(r),
            NodeError::BadName { name, message } => EnrollError::BadName { name, message },
            e @ NodeError::TooManyCerts { .. } => EnrollError::Limit(e.to_string()),
            e => EnrollError::Internal(e.to_string()),
        }
    }
}

impl From<TokenError> for EnrollError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Refused(r) => EnrollError::Token(r),
            TokenError::BadName { name, message } => EnrollError::BadName { name, message },
            e => EnrollError::Internal(e.to_string()),
        }
    }
}

impl From<PkiError> for EnrollError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::BadName { name, message } => EnrollError::BadName { name, message },
            e => EnrollError::Internal(e.to_string()),
        }
    }
}

fn check_name(node: &str) -> Result<(), EnrollError> {
    dpu_model::check_name(node).map_err(|message| EnrollError::BadName {
        name: node.to_string(),
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
    pub fn new(state_dir: &Path, ca: Ca, cert_ttl: Duration) -> Self {
        Enroller {
            tokens: TokenStore::new(state_dir),
            nodes: NodeStore::new(state_dir),
            ca,
            cert_ttl,
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
        let csr = Csr::parse(csr_pem)?;
        self.tokens.check(&token, node, now)?;
        csr.check_names(node)?;

        self.tokens.consume(&token.id)?;
        let recorded = self.nodes.modify(node, |record| {
            let mut r = record.unwrap_or_else(|| NodeRecord::new(node, now));
            r.readmit(&token.id, now);
            let signed = self
                .ca
                .sign_node_key(node, csr.public_key(), self.cert_ttl)?;
            r.add_cert(entry(&signed), now)?;
            Ok::<_, EnrollError>((r, signed))
        });
        if recorded.is_err() {
            if let Err(e) = self.tokens.restore(&token.id) {
                tracing::error!(node, token = %token.id, "cannot put the token back after a failed enrollment: {e}");
            }
        }
        recorded
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

/// The gRPC face of the `Enroller`.
#[derive(Debug, Clone)]
pub struct EnrollService {
    enroller: Arc<Enroller>,
}

impl EnrollService {
    pub fn new(enroller: Arc<Enroller>) -> Self {
        EnrollService { enroller }
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
                tracing::info!(node, ?peer, serial = %s.info.serial, not_after = s.info.not_after_unix, "{what}: certificate issued");
                Ok(Response::new(pb::EnrollResponse {
                    cert_pem: s.cert_pem,
                    ca_pem: self.enroller.ca_pem().to_string(),
                    not_before_unix: s.info.not_before_unix,
                    not_after_unix: s.info.not_after_unix,
                    serial: s.info.serial,
                }))
            }
            Err(e @ EnrollError::Internal(_)) => {
                tracing::error!(node, ?peer, "{what} failed: {e}");
                Err(e.status())
            }
            Err(e) => {
                tracing::warn!(node, ?peer, "{what} refused: {e}");
                Err(e.status())
            }
        }
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
        let enroller = self.enroller.clone();
        let result = tokio::task::spawn_blocking(move || {
            enroller.enroll(&req.node, &req.token, &req.csr_pem)
        })
        .await
        .unwrap_or_else(task_failed);
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
