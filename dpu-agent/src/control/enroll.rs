//! The node identity: first-boot enrollment with a bootstrap token, and renewal
//! over mTLS before the certificate expires.
//!
//! The private key is generated here and never leaves the DPU: only a CSR goes
//! to the controller. Each renewal uses a fresh key. The key and certificate are
//! written to `controller.key_file` / `controller.cert_file` (key mode 0600) as a
//! pair: both are written as `*.new` first, then the key is renamed into place,
//! then the certificate. [`NodeIdentity::finish_interrupted`] completes or discards
//! a pair a crash left half-renamed, so the files on disk always match.
//!
//! Renewal is due at two thirds of the time between when the certificate was
//! written (its file's mtime) and its expiry. The controller back-dates
//! `not_before` to tolerate clock skew, so `not_before` would make short-lived
//! certificates look older than they are.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dpu_proto::v1 as pb;
use dpu_proto::v1::enrollment_client::EnrollmentClient;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};

use crate::config::{ControllerConfig, EnrollConfig};
use crate::control::session::{self, SessionError};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// A file of the identity could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The certificate on disk cannot serve as this node's identity.
    #[error("certificate {path}: {message}")]
    BadCert { path: PathBuf, message: String },
    /// There is no usable certificate and no token to enroll with.
    #[error("no usable certificate ({reason}) and no bootstrap token configured ([enroll] token or token_file)")]
    NoToken { reason: String },
    /// Key or CSR generation failed.
    #[error("generating the key or CSR: {0}")]
    Crypto(String),
    /// The controller could not be reached.
    #[error(transparent)]
    Connect(#[from] SessionError),
    /// The controller refused the request.
    #[error("controller refused {what}: {code}: {message}")]
    Refused {
        what: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// The controller's answer is not a certificate we can use.
    #[error("controller's {what} answer: {message}")]
    BadAnswer { what: &'static str, message: String },
}

/// The validity of the certificate in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub serial: String,
    pub not_after: SystemTime,
    /// When the certificate was written here (the file's mtime).
    pub written: SystemTime,
}

impl CertInfo {
    /// When to renew: two thirds of the way from `written` to `not_after`.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.written)
            .unwrap_or(Duration::ZERO);
        self.written + life.mul_f64(2.0 / 3.0)
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// The node's identity files and how to (re)obtain them.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node: String,
    pub controller: ControllerConfig,
    /// Where the bootstrap token comes from. A token file is read at every
    /// attempt, so an operator can drop a new token in place without a restart.
    pub enroll: Option<EnrollConfig>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EnrollError + '_ {
    move |source| EnrollError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

impl NodeIdentity {
    /// The managed identity, when `[enroll]` is configured; without it the
    /// certificate files are the operator's to provide and replace.
    pub fn from_config(cfg: &crate::config::Config) -> Option<NodeIdentity> {
        let enroll = cfg.enroll.clone()?;
        Some(NodeIdentity {
            node: cfg.node_name.clone(),
            controller: cfg.controller.clone(),
            enroll: Some(enroll),
        })
    }

    /// Completes a pair write a crash interrupted: if the new key was never
    /// renamed into place, the old pair is intact and the leftovers go; if it was,
    /// the new certificate follows it.
    pub fn finish_interrupted(&self) -> Result<(), EnrollError> {
        let (cert, key) = (&self.controller.cert_file, &self.controller.key_file);
        let (cert_new, key_new) = (with_suffix(cert, ".new"), with_suffix(key, ".new"));
        if key_new.exists() {
            for p in [&key_new, &cert_new] {
                match fs::remove_file(p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(p)(e)),
                    _ => {}
                }
            }
        } else if cert_new.exists() {
            fs::rename(&cert_new, cert).map_err(io_err(cert))?;
        }
        Ok(())
    }

    /// The certificate in use, if there is one that names this node and has not
    /// expired. `Ok(None)` says why there is none; errors are I/O failures.
    pub fn current(&self) -> Result<Result<CertInfo, String>, EnrollError> {
        let path = &self.controller.cert_file;
        let pem = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(format!("{} does not exist", path.display())))
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        let written = fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(io_err(path))?;
        let info = match parse_cert(&pem, &self.node) {
            Ok((serial, not_after, _)) => CertInfo {
                serial,
                not_after,
                written: written.min(SystemTime::now()),
            },
            Err(m) => return Ok(Err(format!("{}: {m}", path.display()))),
        };
        if info.expired(SystemTime::now()) {
            return Ok(Err(format!(
                "{} expired at {}",
                path.display(),
                unix(info.not_after)
            )));
        }
        if !self.controller.key_file.exists() {
            return Ok(Err(format!(
                "{} does not exist",
                self.controller.key_file.display()
            )));
        }
        Ok(Ok(info))
    }

    /// A usable certificate: the one on disk, or a new one by enrollment with
    /// the controller at `endpoint`.
    pub async fn ensure(&self, endpoint: &str) -> Result<CertInfo, EnrollError> {
        self.finish_interrupted()?;
        match self.current()? {
            Ok(info) => Ok(info),
            Err(reason) => {
                let Some(enroll) = &self.enroll else {
                    return Err(EnrollError::NoToken { reason });
                };
                tracing::info!(node = %self.node, %reason, "enrolling with the bootstrap token");
                let token = enroll.token().map_err(|source| EnrollError::Io {
                    path: enroll
                        .token_file
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("enroll.token")),
                    source,
                })?;
                let info = self.enroll(endpoint, &token).await?;
                tracing::info!(node = %self.node, serial = %info.serial,
                    not_after = unix(info.not_after), "enrolled");
                Ok(info)
            }
        }
    }

    async fn enroll(&self, endpoint: &str, token: &str) -> Result<CertInfo, EnrollError> {
        let (key, csr) = self.key_and_csr()?;
        let channel = session::connect_with(&self.controller, endpoint, false).await?;
        let answer = EnrollmentClient::new(channel)
            .enroll(pb::EnrollRequest {
                node: self.node.clone(),
                token: token.to_string(),
                csr_pem: csr,
            })
            .await
            .map_err(|s| refused("enrollment", s))?
            .into_inner();
        self.install("enrollment", &key, &answer)
    }

    /// Renews with the controller at `endpoint`, over mTLS with the current
    /// certificate, with a fresh key.
    pub async fn renew(&self, endpoint: &str) -> Result<CertInfo, EnrollError> {
        let (key, csr) = self.key_and_csr()?;
        let channel = session::connect_with(&self.controller, endpoint, true).await?;
        let answer = EnrollmentClient::new(channel)
            .renew(pb::RenewRequest { csr_pem: csr })
            .await
            .map_err(|s| refused("renewal", s))?
            .into_inner();
        let info = self.install("renewal", &key, &answer)?;
        tracing::info!(node = %self.node, serial = %info.serial,
            not_after = unix(info.not_after), "certificate renewed");
        Ok(info)
    }

    fn key_and_csr(&self) -> Result<(KeyPair, String), EnrollError> {
        let crypto = |e: rcgen::Error| EnrollError::Crypto(e.to_string());
        let key = KeyPair::generate().map_err(crypto)?;
        let mut params = CertificateParams::new(vec![self.node.clone()]).map_err(crypto)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.node.clone());
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key).map_err(crypto)?;
        Ok((key, csr.pem().map_err(crypto)?))
    }

    /// Checks the answer against our key, node and CA, then writes the pair.
    fn install(
        &self,
        what: &'static str,
        key: &KeyPair,
        answer: &pb::EnrollResponse,
    ) -> Result<CertInfo, EnrollError> {
        let bad = |message: String| EnrollError::BadAnswer { what, message };
        let (serial, not_after, spki) =
            parse_cert(answer.cert_pem.as_bytes(), &self.node).map_err(bad)?;
        if spki != key.subject_public_key_info() {
            return Err(bad("the certificate is not for the key we sent".into()));
        }
        let ca = fs::read(&self.controller.ca_file).map_err(io_err(&self.controller.ca_file))?;
        if pem_der(&ca) != pem_der(answer.ca_pem.as_bytes()) {
            return Err(bad(format!(
                "the controller's CA differs from {}",
                self.controller.ca_file.display()
            )));
        }
        let (cert, keyf) = (&self.controller.cert_file, &self.controller.key_file);
        let (cert_new, key_new) = (with_suffix(cert, ".new"), with_suffix(keyf, ".new"));
        for p in [cert, keyf] {
            if let Some(dir) = p.parent() {
                fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
        }
        write_synced(&key_new, key.serialize_pem().as_bytes())?;
        write_synced(&cert_new, answer.cert_pem.as_bytes())?;
        fs::rename(&key_new, keyf).map_err(io_err(keyf))?;
        fs::rename(&cert_new, cert).map_err(io_err(cert))?;
        for p in [cert, keyf] {
            if let Some(dir) = p.parent() {
                fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(dir))?;
            }
        }
        Ok(CertInfo {
            serial,
            not_after,
            written: SystemTime::now(),
        })
    }
}

fn refused(what: &'static str, s: tonic::Status) -> EnrollError {
    EnrollError::Refused {
        what,
        code: s.code(),
        message: s.message().to_string(),
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), EnrollError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(io_err(path))
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn pem_der(pem: &[u8]) -> Option<Vec<u8>> {
    x509_parser::pem::parse_x509_pem(pem)
        .ok()
        .map(|(_, p)| p.contents)
}

/// The DNS names in a certificate's SubjectAltName (none if it has no or an
/// unreadable extension).
pub fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    general_names(cert, |n| match n {
        GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    })
}

/// The role URIs (`dpu_proto::roles`) in a certificate's SubjectAltName.
pub fn role_uris(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    general_names(cert, |n| match n {
        GeneralName::URI(u) if u.starts_with(dpu_proto::roles::PREFIX) => Some(u.to_string()),
        _ => None,
    })
}

fn general_names(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    pick: impl Fn(&x509_parser::extensions::GeneralName<'_>) -> Option<String>,
) -> Vec<String> {
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| san.value.general_names.iter().filter_map(&pick).collect())
        .unwrap_or_default()
}

/// Serial (hex), expiry and SubjectPublicKeyInfo of a PEM certificate that must
/// name `node` as its DNS SAN.
fn parse_cert(pem: &[u8], node: &str) -> Result<(String, SystemTime, Vec<u8>), String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    let cert = p.parse_x509().map_err(|e| format!("not X.509: {e}"))?;
    let names = dns_names(&cert);
    if !names.iter().any(|n| n == node) {
        return Err(format!("names {names:?}, not node {node:?}"));
    }
    let ts = cert.validity().not_after.timestamp();
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).unwrap_or(0));
    Ok((
        hex::encode(cert.raw_serial()),
        not_after,
        cert.public_key().raw.to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(dir: &Path) -> NodeIdentity {
        NodeIdentity {
            node: "dpu-1".into(),
            controller: ControllerConfig {
                endpoint: Some("https://127.0.0.1:1".into()),
                endpoints: Vec::new(),
                server_name: "dpu-controller".into(),
                ca_file: dir.join("ca.pem"),
                cert_file: dir.join("id/node.pem"),
                key_file: dir.join("id/node.key"),
                backoff_min_ms: 10,
                backoff_max_ms: 100,
            },
            enroll: None,
        }
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_remaining_life() {
        let written = UNIX_EPOCH + Duration::from_secs(1000);
        let info = CertInfo {
            serial: "01".into(),
            not_after: written + Duration::from_secs(300),
            written,
        };
        assert_eq!(info.renew_at(), written + Duration::from_secs(200));
        assert!(!info.expired(written + Duration::from_secs(299)));
        assert!(info.expired(written + Duration::from_secs(300)));
    }

    #[test]
    fn an_interrupted_pair_write_is_finished_or_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        fs::create_dir_all(dir.path().join("id")).unwrap();
        let (cert, key) = (&id.controller.cert_file, &id.controller.key_file);
        fs::write(cert, "old-cert").unwrap();
        fs::write(key, "old-key").unwrap();
        // Crash before the key was renamed: the old pair stays.
        fs::write(with_suffix(cert, ".new"), "new-cert").unwrap();
        fs::write(with_suffix(key, ".new"), "new-key").unwrap();
        id.finish_interrupted().unwrap();
        assert_eq!(fs::read_to_string(cert).unwrap(), "old-cert");
        assert_eq!(fs::read_to_string(key).unwrap(), "old-key");
        assert!(!with_suffix(cert, ".new").exists());
        // Crash after the key was renamed: the certificate follows.
        fs::write(key, "new-key").unwrap();
        fs::write(with_suffix(cert, ".new"), "new-cert").unwrap();
        id.finish_interrupted().unwrap();
        assert_eq!(fs::read_to_string(cert).unwrap(), "new-cert");
    }

    #[test]
    fn a_missing_certificate_without_a_token_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let why = id.current().unwrap().unwrap_err();
        assert!(why.contains("node.pem does not exist"), "{why}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt
            .block_on(id.ensure("https://127.0.0.1:1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no bootstrap token"), "{e}");
    }

    #[test]
    fn a_certificate_for_another_node_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path());
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["dpu-2".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        fs::create_dir_all(dir.path().join("id")).unwrap();
        fs::write(&id.controller.cert_file, cert.pem()).unwrap();
        fs::write(&id.controller.key_file, key.serialize_pem()).unwrap();
        let why = id.current().unwrap().unwrap_err();
        assert!(why.contains("not node \"dpu-1\""), "{why}");
    }
}
