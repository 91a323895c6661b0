//! Certificate signing requests from DPUs: parsed, their signature verified, and
//! their names checked against the node they are for. Only the public key of a
//! request is used; the certificate's names and usages are the controller's.

use std::net::IpAddr;

use rcgen::{CertificateSigningRequestParams, PublicKeyData};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// The largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_BYTES: usize = 16 << 10;

/// Why a CSR is refused. The messages go to the DPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is {0} bytes; at most {MAX_CSR_BYTES}")]
    TooLarge(usize),
    #[error("the CSR is not a PEM \"CERTIFICATE REQUEST\": {0}")]
    NotPem(String),
    #[error("the CSR cannot be parsed: {0}")]
    Unparsable(String),
    #[error("the CSR signature does not verify")]
    BadSignature,
    /// It asks for a name other than the node's.
    #[error(
        "the CSR names {names:?}, not node {node:?} (CN and the only DNS SAN must be the node)"
    )]
    OtherName { node: String, names: Vec<String> },
    /// It lacks the CN or the DNS SAN.
    #[error(
        "the CSR must have CN {node:?} and DNS SAN {node:?}; it has CN {cn:?} and SANs {sans:?}"
    )]
    MissingName {
        node: String,
        cn: Vec<String>,
        sans: Vec<String>,
    },
}

/// A request whose signature verified.
#[derive(Debug)]
pub struct Csr {
    params: CertificateSigningRequestParams,
    /// The subject's common names.
    pub cn: Vec<String>,
    /// Every SAN, DNS names as they are and other kinds as `Kind(value)`.
    pub sans: Vec<String>,
}

impl Csr {
    pub fn parse(pem: &str) -> Result<Csr, CsrError> {
        if pem.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge(pem.len()));
        }
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| CsrError::NotPem(e.to_string()))?;
        if block.label != "CERTIFICATE REQUEST" {
            return Err(CsrError::NotPem(format!("it is a {:?}", block.label)));
        }
        let der = block.contents;
        let (_, req) = X509CertificationRequest::from_der(&der)
            .map_err(|e| CsrError::Unparsable(e.to_string()))?;
        req.verify_signature().map_err(|_| CsrError::BadSignature)?;
        let cn = req
            .certification_request_info
            .subject
            .iter_common_name()
            .map(|a| {
                a.as_str()
                    .map_or_else(|_| "<not a string>".into(), str::to_string)
            })
            .collect();
        let mut sans = Vec::new();
        for ext in req.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                sans.extend(san.general_names.iter().map(show_name));
            }
        }
        // rcgen parses it again for the public key in the form it signs with.
        let params = CertificateSigningRequestParams::from_der(&der.as_slice().into())
            .map_err(|e| CsrError::Unparsable(e.to_string()))?;
        Ok(Csr { params, cn, sans })
    }

    /// Checks that the request names exactly `node`: CN and the only SAN.
    pub fn check_names(&self, node: &str) -> Result<(), CsrError> {
        let mut others: Vec<String> = self
            .cn
            .iter()
            .chain(&self.sans)
            .filter(|n| *n != node)
            .cloned()
            .collect();
        others.dedup();
        if !others.is_empty() {
            return Err(CsrError::OtherName {
                node: node.to_string(),
                names: others,
            });
        }
        if self.cn.len() != 1 || self.sans.len() != 1 {
            return Err(CsrError::MissingName {
                node: node.to_string(),
                cn: self.cn.clone(),
                sans: self.sans.clone(),
            });
        }
        Ok(())
    }

    pub fn public_key(&self) -> &impl PublicKeyData {
        &self.params.public_key
    }
}

fn show_name(name: &GeneralName<'_>) -> String {
    let ip = |octets: &[u8]| match octets.len() {
        4 => <[u8; 4]>::try_from(octets)
            .ok()
            .map(|o| IpAddr::from(o).to_string()),
        16 => <[u8; 16]>::try_from(octets)
            .ok()
            .map(|o| IpAddr::from(o).to_string()),
        _ => None,
    };
    match name {
        GeneralName::DNSName(d) => d.to_string(),
        GeneralName::IPAddress(o) => ip(o).unwrap_or_else(|| name.to_string()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn csr(cn: Option<&str>, sans: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn names_must_be_exactly_the_node() {
        let ok = Csr::parse(&csr(Some("dpu-1"), &["dpu-1"])).unwrap();
        assert_eq!(ok.check_names("dpu-1"), Ok(()));
        let e = ok.check_names("dpu-2").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the CSR names [\"dpu-1\"], not node \"dpu-2\" (CN and the only DNS SAN must be the node)"
        );
        let cases = [
            (csr(Some("dpu-1"), &["dpu-1", "dpu-2"]), "names [\"dpu-2\"]"),
            (csr(Some("dpu-2"), &["dpu-1"]), "names [\"dpu-2\"]"),
            (csr(Some("dpu-1"), &["dpu-1", "10.0.0.1"]), "10.0.0.1"),
            (csr(Some("dpu-1"), &[]), "must have CN"),
            (csr(None, &["dpu-1"]), "must have CN"),
        ];
        for (pem, want) in cases {
            let e = Csr::parse(&pem).unwrap().check_names("dpu-1").unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn malformed_tampered_and_oversized_requests_are_refused() {
        assert!(matches!(Csr::parse("hello"), Err(CsrError::NotPem(_))));
        let key = KeyPair::generate().unwrap();
        assert!(matches!(
            Csr::parse(&key.serialize_pem()),
            Err(CsrError::NotPem(_))
        ));
        let good = csr(Some("dpu-1"), &["dpu-1"]);
        let e = Csr::parse(&tamper(&good)).unwrap_err();
        assert_eq!(e, CsrError::BadSignature);
        let big = format!("{good}{}", " ".repeat(MAX_CSR_BYTES));
        assert!(matches!(Csr::parse(&big), Err(CsrError::TooLarge(_))));
    }

    /// Changes one base64 character near the end (inside the signature).
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
}
