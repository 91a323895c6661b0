//! The cluster CA and the certificates it issues.
//!
//! The CA lives in `<state-dir>/pki/` (`ca.pem`, `ca.key`). Node certificates name
//! the node as CN and as their only DNS SAN; the controller serves a node only the
//! intent of the node its certificate names. Every leaf carries its role as a URI
//! SAN (`dpu_proto::roles`): the controller serves only the node role, and an
//! agent's attachment service accepts only the host-shim role, so the host's
//! certificate can never speak for a DPU. Node names may not be the controller's
//! own server names (`RESERVED_NAMES` and the SANs of `server.pem`). All keys are
//! ECDSA P-256 and are written mode 0600.

use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

use crate::fsutil::{ensure_private_dir, write_atomic, PUBLIC_MODE, SECRET_MODE};

pub const CA_DAYS: i64 = 3650;
pub const DEFAULT_CERT_DAYS: u32 = 365;
/// Tolerated clock skew between the issuer and whoever checks the certificate.
const BACKDATE: Duration = Duration::minutes(5);
/// An existing server certificate this close to expiry is replaced at start.
const RENEW_BEFORE: Duration = Duration::days(7);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// `ca init` would overwrite a CA.
    #[error("a CA already exists at {0}; pass --force to replace it (every certificate it issued stops working)")]
    CaExists(PathBuf),
    /// There is no CA to sign with.
    #[error("no CA in {0}; run `dpu-controller ca init --state-dir <dir>` first")]
    NoCa(PathBuf),
    /// A replica without the CA key has no serving certificate.
    #[error("{0}")]
    NoServerCert(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The name to put in a certificate is not acceptable.
    #[error("invalid name {name:?}: {message}")]
    BadName { name: String, message: String },
    /// Certificate generation or parsing failed.
    #[error("{context}: {source}")]
    Rcgen {
        context: String,
        #[source]
        source: rcgen::Error,
    },
    /// A certificate could not be parsed.
    #[error("cannot parse certificate: {0}")]
    Parse(String),
    /// A peer's certificate does not carry the role the call needs.
    #[error("{0}")]
    WrongRole(String),
}

/// Names no node may have: the controller's default server name and loopback.
/// The SANs of the controller's own server certificate are refused too.
pub const RESERVED_NAMES: [&str; 2] = ["dpu-controller", "localhost"];

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn rcgen_err(context: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Rcgen {
        context: context.to_string(),
        source,
    }
}

/// Paths of the PKI files under a state directory.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl PkiPaths {
    pub fn new(state_dir: &Path) -> Self {
        let dir = state_dir.join("pki");
        PkiPaths {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            dir,
        }
    }
}

/// What the node records and the Enrollment answers say about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Lowercase hex of the DER serial number's bytes.
    pub serial: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

/// A certificate this CA signed.
#[derive(Debug, Clone)]
pub struct Signed {
    pub cert_pem: String,
    pub info: CertInfo,
}

/// PEM text of an issued certificate and the key generated for it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub info: CertInfo,
}

/// A loaded CA, ready to sign.
#[derive(Debug)]
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// Names a node may not take: `RESERVED_NAMES` and the controller's own
    /// server certificate's names.
    reserved: Vec<String>,
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f; // a positive INTEGER
    SerialNumber::from(bytes.to_vec())
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

fn duration_of_days(days: u32) -> Duration {
    Duration::days(i64::from(days))
}

fn to_time_duration(d: std::time::Duration) -> Result<Duration, PkiError> {
    Duration::try_from(d).map_err(|e| PkiError::Parse(format!("certificate lifetime {d:?}: {e}")))
}

/// Creates the CA under `state_dir`. Refuses to replace one unless `force`; a
/// forced replacement also removes the server certificate the old CA signed.
pub fn init_ca(state_dir: &Path, force: bool) -> Result<PkiPaths, PkiError> {
    let paths = PkiPaths::new(state_dir);
    ensure_private_dir(state_dir).map_err(io_err(state_dir))?;
    ensure_private_dir(&paths.dir).map_err(io_err(&paths.dir))?;
    if !force && (paths.ca_cert.exists() || paths.ca_key.exists()) {
        return Err(PkiError::CaExists(paths.dir));
    }
    let key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "dpu-controller CA");
    dn.push(DnType::OrganizationName, "dpu");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    validity(&mut params, Duration::days(CA_DAYS));
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_err("signing the CA certificate"))?;
    write_atomic(&paths.ca_key, key.serialize_pem().as_bytes(), SECRET_MODE)
        .map_err(io_err(&paths.ca_key))?;
    write_atomic(&paths.ca_cert, cert.pem().as_bytes(), PUBLIC_MODE)
        .map_err(io_err(&paths.ca_cert))?;
    for stale in [&paths.server_cert, &paths.server_key] {
        match fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(stale)(e)),
        }
    }
    Ok(paths)
}

pub fn load_ca(state_dir: &Path) -> Result<Ca, PkiError> {
    let paths = PkiPaths::new(state_dir);
    if !paths.ca_cert.exists() || !paths.ca_key.exists() {
        return Err(PkiError::NoCa(paths.dir));
    }
    let cert_pem = fs::read_to_string(&paths.ca_cert).map_err(io_err(&paths.ca_cert))?;
    let key_pem = fs::read_to_string(&paths.ca_key).map_err(io_err(&paths.ca_key))?;
    let key = KeyPair::from_pem(&key_pem).map_err(rcgen_err("reading the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
        .map_err(rcgen_err("reading the CA certificate"))?;
    let mut reserved: Vec<String> = RESERVED_NAMES.iter().map(|n| n.to_string()).collect();
    match fs::read_to_string(&paths.server_cert) {
        Ok(pem) => reserved.extend(server_names(&pem)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&paths.server_cert)(e)),
    }
    Ok(Ca {
        cert_pem,
        issuer,
        reserved,
    })
}

/// The CN and DNS SANs of a server certificate (PEM).
fn server_names(pem: &str) -> Result<Vec<String>, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    let mut names = dns_sans(&pem.contents)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    if let Some(cn) = cert.subject().iter_common_name().next() {
        names.extend(cn.as_str().ok().map(str::to_string));
    }
    Ok(names)
}

impl Ca {
    /// A node certificate and a new key: CN and DNS SAN = `node`, for client and
    /// server auth.
    pub fn issue_node(&self, node: &str, days: u32) -> Result<Issued, PkiError> {
        let params = self.node_params(node, duration_of_days(days))?;
        self.issue(params)
    }

    /// A host shim's certificate and a new key: CN and DNS SAN = `name` (what the
    /// agent's `[shim] client_name` names), the host-shim role, client auth only.
    /// The controller refuses it; only an agent's attachment service takes it.
    pub fn issue_host_shim(&self, name: &str, days: u32) -> Result<Issued, PkiError> {
        let san = dns_san(name)?;
        let role = role_san(dpu_proto::roles::HOST_SHIM);
        let params = leaf_params(
            name,
            vec![san, role],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            duration_of_days(days),
        );
        self.issue(params)
    }

    /// The shape of every node certificate: CN and the only DNS SAN are `node`
    /// (a `dpu_model::check_name` name that is not one of the controller's
    /// names), the node role, EKU client auth (the controller) and server auth
    /// (the agent serves its host's shim with it).
    fn node_params(&self, node: &str, lifetime: Duration) -> Result<CertificateParams, PkiError> {
        dpu_model::check_name(node).map_err(|message| PkiError::BadName {
            name: node.to_string(),
            message,
        })?;
        if self.reserved.iter().any(|r| r.eq_ignore_ascii_case(node)) {
            return Err(PkiError::BadName {
                name: node.to_string(),
                message: "is a name of the controller itself; a node certificate with it could pose as the controller".into(),
            });
        }
        Ok(leaf_params(
            node,
            vec![dns_san(node)?, role_san(dpu_proto::roles::NODE)],
            vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
            lifetime,
        ))
    }

    /// Refuses `node` if no node may have that name (for `token create`, before
    /// any token exists).
    pub fn check_node_name(&self, node: &str) -> Result<(), PkiError> {
        self.node_params(node, Duration::days(1)).map(|_| ())
    }

    /// A node certificate for a key the node generated (the public key of a
    /// checked CSR), valid for `lifetime` from now. Only the key is taken from
    /// the request; names and usages are the same as `issue_node`'s.
    pub fn sign_node_key(
        &self,
        node: &str,
        public_key: &impl PublicKeyData,
        lifetime: std::time::Duration,
    ) -> Result<Signed, PkiError> {
        let params = self.node_params(node, to_time_duration(lifetime)?)?;
        self.sign(&params, public_key)
    }

    /// A server certificate: CN = `name`, SANs = `name` and `sans` (each an IP
    /// address or a DNS name), for server auth.
    pub fn issue_server(&self, name: &str, sans: &[String], days: u32) -> Result<Issued, PkiError> {
        self.issue_server_for(
            name,
            sans,
            std::time::Duration::from_secs(u64::from(days) * 86_400),
        )
    }

    /// A server certificate as `issue_server` makes it, valid for `lifetime`
    /// from now (for short-lived certificates and tests).
    pub fn issue_server_for(
        &self,
        name: &str,
        sans: &[String],
        lifetime: std::time::Duration,
    ) -> Result<Issued, PkiError> {
        let mut all = vec![name.to_string()];
        for s in sans {
            if !all.contains(s) {
                all.push(s.clone());
            }
        }
        let mut out = Vec::new();
        for s in &all {
            out.push(match s.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(s.as_str().try_into().map_err(|e: rcgen::Error| {
                    PkiError::BadName {
                        name: s.clone(),
                        message: e.to_string(),
                    }
                })?),
            });
        }
        let params = leaf_params(
            name,
            out,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            to_time_duration(lifetime)?,
        );
        self.issue(params)
    }

    /// Signs `params` for a new key.
    fn issue(&self, params: CertificateParams) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(rcgen_err("generating a key"))?;
        let signed = self.sign(&params, &key)?;
        Ok(Issued {
            cert_pem: signed.cert_pem,
            key_pem: key.serialize_pem(),
            info: signed.info,
        })
    }

    fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<Signed, PkiError> {
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(rcgen_err("signing the certificate"))?;
        Ok(Signed {
            info: cert_info(cert.der())?,
            cert_pem: cert.pem(),
        })
    }
}

fn dns_san(name: &str) -> Result<SanType, PkiError> {
    dpu_model::check_name(name).map_err(|message| PkiError::BadName {
        name: name.to_string(),
        message,
    })?;
    Ok(SanType::DnsName(name.try_into().map_err(
        |e: rcgen::Error| PkiError::BadName {
            name: name.to_string(),
            message: e.to_string(),
        },
    )?))
}

fn role_san(role: &'static str) -> SanType {
    SanType::URI(role.try_into().expect("role URIs are ASCII"))
}

fn leaf_params(
    cn: &str,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    lifetime: Duration,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = ekus;
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    validity(&mut params, lifetime);
    params
}

/// Writes `<out>/<name>.pem`, `<out>/<name>.key` (0600) and `<out>/ca.pem`.
/// Returns the paths written.
pub fn write_issued(
    out: &Path,
    name: &str,
    issued: &Issued,
    ca: &Ca,
) -> Result<Vec<PathBuf>, PkiError> {
    if !out.exists() {
        ensure_private_dir(out).map_err(io_err(out))?;
    }
    let files = [
        (
            out.join(format!("{name}.pem")),
            &issued.cert_pem,
            PUBLIC_MODE,
        ),
        (
            out.join(format!("{name}.key")),
            &issued.key_pem,
            SECRET_MODE,
        ),
        (out.join("ca.pem"), &ca.cert_pem, PUBLIC_MODE),
    ];
    for (path, text, mode) in &files {
        write_atomic(path, text.as_bytes(), *mode).map_err(io_err(path))?;
    }
    Ok(files.into_iter().map(|(p, _, _)| p).collect())
}

/// The controller's serving identity: the CA and the server certificate, issued
/// now if there is none (or it is about to expire).
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The CA as this replica has it: its certificate always; the CA itself (its
/// key) only where it was provisioned, else why not. A replica without the key
/// serves and verifies, but issues no certificates.
pub fn load_ca_for_serving(state_dir: &Path) -> Result<(String, Result<Ca, String>), PkiError> {
    let paths = PkiPaths::new(state_dir);
    if !paths.ca_cert.exists() {
        return Err(PkiError::NoCa(paths.dir));
    }
    if !paths.ca_key.exists() {
        let cert_pem = fs::read_to_string(&paths.ca_cert).map_err(io_err(&paths.ca_cert))?;
        let why = format!("no {}", paths.ca_key.display());
        return Ok((cert_pem, Err(why)));
    }
    let ca = load_ca(state_dir)?;
    Ok((ca.cert_pem.clone(), Ok(ca)))
}

pub fn ensure_server_cert(
    state_dir: &Path,
    server_name: &str,
    listen: SocketAddr,
) -> Result<ServerIdentity, PkiError> {
    let (ca_pem, ca) = load_ca_for_serving(state_dir)?;
    let paths = PkiPaths::new(state_dir);
    if paths.server_cert.exists() && paths.server_key.exists() {
        let cert_pem =
            fs::read_to_string(&paths.server_cert).map_err(io_err(&paths.server_cert))?;
        let key_pem = fs::read_to_string(&paths.server_key).map_err(io_err(&paths.server_key))?;
        let expires = not_after(&cert_pem)?;
        let now = OffsetDateTime::now_utc();
        let keep = match &ca {
            _ if expires > now + RENEW_BEFORE => true,
            Err(why) if expires > now => {
                tracing::warn!(
                    "{} expires at {expires}, and this replica cannot issue a new one ({why}): provision a new one with `dpu-controller issue --server` where the CA key is",
                    paths.server_cert.display()
                );
                true
            }
            _ => false,
        };
        if keep {
            return Ok(ServerIdentity {
                ca_pem,
                cert_pem,
                key_pem,
            });
        }
        tracing::info!(
            "{} expires soon; issuing a new one",
            paths.server_cert.display()
        );
    }
    let ca = ca.map_err(|why| {
        PkiError::NoServerCert(format!(
            "no usable {} and {}, and this replica cannot issue one ({why}); provision them (dpu-controller issue --server --name NAME --san IP --out DIR where the CA key is)",
            paths.server_cert.display(),
            paths.server_key.display()
        ))
    })?;
    let mut sans = vec!["localhost".to_string()];
    if !listen.ip().is_unspecified() {
        sans.push(listen.ip().to_string());
    }
    let issued = ca.issue_server(server_name, &sans, DEFAULT_CERT_DAYS)?;
    write_atomic(&paths.server_key, issued.key_pem.as_bytes(), SECRET_MODE)
        .map_err(io_err(&paths.server_key))?;
    write_atomic(&paths.server_cert, issued.cert_pem.as_bytes(), PUBLIC_MODE)
        .map_err(io_err(&paths.server_cert))?;
    tracing::info!(
        server_name,
        ?sans,
        "issued server certificate {}",
        paths.server_cert.display()
    );
    Ok(ServerIdentity {
        ca_pem: ca.cert_pem,
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    })
}

fn not_after(cert_pem: &str) -> Result<OffsetDateTime, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(cert.validity().not_after.to_datetime())
}

/// Serial and validity of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(CertInfo {
        serial: hex::encode(cert.raw_serial()),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// Who a node's certificate (DER) says it is: its DNS SANs and its serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub names: Vec<String>,
    pub serial: String,
}

/// The identity of a peer that must be a node: its certificate carries the
/// node role (`dpu_proto::roles::NODE`) and no other. A host shim's certificate,
/// a server certificate, or one issued before roles existed is refused
/// (`PkiError::WrongRole`).
pub fn peer_identity(der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let names = dns_sans(der)?;
    let roles = cert_roles(der)?;
    if roles != [dpu_proto::roles::NODE] {
        let what = match roles.as_slice() {
            [] => "carries no role (a server certificate, or one issued before roles; issue a new one with `dpu-controller issue --node` or enroll again)".to_string(),
            [r] if r == dpu_proto::roles::HOST_SHIM => {
                "is a host shim's certificate; it may call only its DPU's attachment service".to_string()
            }
            _ => format!("carries the roles {roles:?}"),
        };
        return Err(PkiError::WrongRole(format!(
            "the client certificate (names {names:?}) {what}; only a node certificate (role {}) may act for a DPU",
            dpu_proto::roles::NODE
        )));
    }
    Ok(PeerIdentity {
        names,
        serial: cert_info(der)?.serial,
    })
}

/// The role URIs (`dpu_proto::roles::PREFIX`…) among a certificate's SANs.
pub fn cert_roles(der: &[u8]) -> Result<Vec<String>, PkiError> {
    Ok(general_names(der)?
        .into_iter()
        .filter_map(|n| match n {
            San::Uri(u) if u.starts_with(dpu_proto::roles::PREFIX) => Some(u),
            _ => None,
        })
        .collect())
}

enum San {
    Dns(String),
    Uri(String),
}

fn general_names(der: &[u8]) -> Result<Vec<San>, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(San::Dns(d.to_string())),
                    GeneralName::URI(u) => Some(San::Uri(u.to_string())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The DNS names in the SubjectAltName of a DER certificate.
pub fn dns_sans(der: &[u8]) -> Result<Vec<String>, PkiError> {
    Ok(general_names(der)?
        .into_iter()
        .filter_map(|n| match n {
            San::Dns(d) => Some(d),
            San::Uri(_) => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }

    #[test]
    fn ca_init_refuses_to_overwrite_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let paths = init_ca(&state, false).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&paths.ca_key), 0o600);
        let first = fs::read(&paths.ca_cert).unwrap();
        assert!(matches!(init_ca(&state, false), Err(PkiError::CaExists(_))));
        assert_eq!(fs::read(&paths.ca_cert).unwrap(), first);
        init_ca(&state, true).unwrap();
        assert_ne!(fs::read(&paths.ca_cert).unwrap(), first);
    }

    #[test]
    fn node_cert_names_the_node() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), false).unwrap();
        let ca = load_ca(dir.path()).unwrap();
        let issued = ca.issue_node("dpu-1", 30).unwrap();
        let d = der(&issued.cert_pem);
        assert_eq!(dns_sans(&d).unwrap(), ["dpu-1"]);
        let (_, cert) = x509_parser::parse_x509_certificate(&d).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "dpu-1");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
        assert_eq!(cert_roles(&d).unwrap(), [dpu_proto::roles::NODE]);
        assert_eq!(peer_identity(&d).unwrap().names, ["dpu-1"]);
        assert!(matches!(
            ca.issue_node("Not_A_Name", 30),
            Err(PkiError::BadName { .. })
        ));
    }

    #[test]
    fn only_a_node_certificate_is_a_peer_identity() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), false).unwrap();
        let ca = load_ca(dir.path()).unwrap();

        // The host shim's certificate: its role, client auth only.
        let shim = der(&ca.issue_host_shim("host-dpu-1", 30).unwrap().cert_pem);
        assert_eq!(dns_sans(&shim).unwrap(), ["host-dpu-1"]);
        assert_eq!(cert_roles(&shim).unwrap(), [dpu_proto::roles::HOST_SHIM]);
        let (_, cert) = x509_parser::parse_x509_certificate(&shim).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let e = peer_identity(&shim).unwrap_err().to_string();
        assert!(e.contains("is a host shim's certificate"), "{e}");
        assert!(e.contains("names [\"host-dpu-1\"]"), "{e}");

        // A certificate without a role: a server's, or one from before roles.
        let server = der(&ca.issue_server("dpu-controller", &[], 30).unwrap().cert_pem);
        let e = peer_identity(&server).unwrap_err().to_string();
        assert!(e.contains("carries no role"), "{e}");
        let old = leaf_params(
            "dpu-7",
            vec![dns_san("dpu-7").unwrap()],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            Duration::days(1),
        );
        let old = der(&ca.issue(old).unwrap().cert_pem);
        assert!(matches!(peer_identity(&old), Err(PkiError::WrongRole(_))));
    }

    #[test]
    fn a_node_may_not_take_a_name_of_the_controller() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), false).unwrap();
        let listen: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        ensure_server_cert(dir.path(), "ctl-east", listen).unwrap();
        let ca = load_ca(dir.path()).unwrap();
        for name in ["dpu-controller", "localhost", "ctl-east"] {
            let e = ca.issue_node(name, 1).unwrap_err().to_string();
            assert!(e.contains("a name of the controller itself"), "{name}: {e}");
            assert!(ca.check_node_name(name).is_err());
        }
        assert!(ca.check_node_name("dpu-1").is_ok());
    }

    #[test]
    fn server_cert_is_issued_once_with_listen_ip() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), false).unwrap();
        let listen: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let a = ensure_server_cert(dir.path(), "dpu-controller", listen).unwrap();
        let d = der(&a.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&d).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let names: Vec<String> = san.general_names.iter().map(|n| n.to_string()).collect();
        assert!(
            names.iter().any(|n| n.contains("dpu-controller")),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n.contains("localhost")), "{names:?}");
        let loopback = GeneralName::IPAddress(&[127, 0, 0, 1]);
        assert!(san.general_names.contains(&loopback), "{names:?}");
        let b = ensure_server_cert(dir.path(), "dpu-controller", listen).unwrap();
        assert_eq!(a.cert_pem, b.cert_pem, "an existing certificate is reused");
    }
}
