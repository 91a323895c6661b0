//! A throwaway PKI for tests that speak real TLS: a CA made in memory and the
//! server and client certificates it signs, each with a fresh key; and
//! certificate signing requests as an enrolling node sends them. Tests that
//! need the controller's own CA use `dpu_controller::pki` instead.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// A self-signed certificate authority.
#[derive(Debug)]
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A CA named `CN=common_name`, with a fresh key. Two CAs of the same name
    /// differ only in their keys, so a certificate one signed fails the other's
    /// signature check rather than its issuer lookup.
    pub fn new(common_name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a fresh key pair");
        let issuer =
            CertifiedIssuer::self_signed(params, key).expect("a self-signed CA certificate");
        TestCa { issuer }
    }

    /// The CA's certificate (`.der()` for rustls, `.pem()` for files).
    pub fn cert(&self) -> &Certificate {
        self.issuer.as_ref()
    }

    /// The CA's certificate in PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names`, signed by this CA, for `usage`. Each name is a
    /// DNS name or, if it parses as one, an IP address; the first is also the
    /// subject's common name. It carries the CA's key identifier.
    pub fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        self.issue_for(names, vec![usage])
    }

    /// [`TestCa::issue`] with several extended key usages (a server that is also
    /// a client of itself, as etcd's gateway is).
    pub fn issue_for(&self, names: &[&str], usages: Vec<ExtendedKeyUsagePurpose>) -> Leaf {
        let first = names.first().expect("a certificate needs a name");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("valid DNS names or IP addresses");
        params.distinguished_name = common_name_dn(first);
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("a fresh key pair");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a certificate signed by the test CA");
        Leaf { cert, key }
    }

    /// [`TestCa::issue`] for a TLS server.
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// [`TestCa::issue`] for a TLS client.
    pub fn client(&self, names: &[&str]) -> Leaf {
        self.issue(names, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A certificate and its private key.
#[derive(Debug)]
pub struct Leaf {
    pub cert: Certificate,
    pub key: KeyPair,
}

impl Leaf {
    /// The certificate in PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The private key in PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// A fresh key and a PEM certificate signing request for `CN=cn` with the DNS
/// names `sans`, as a node sends to Enroll or Renew.
pub fn csr(cn: &str, sans: &[&str]) -> (KeyPair, String) {
    let key = KeyPair::generate().expect("a fresh key pair");
    let names: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("valid DNS names");
    params.distinguished_name = common_name_dn(cn);
    let pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .expect("a signing request");
    (key, pem)
}

fn common_name_dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_name_their_subject_and_issuer() {
        use x509_parser::extensions::GeneralName;
        let ca = TestCa::new("unit test CA");
        let leaf = ca.server(&["dpu-1", "127.0.0.1"]);
        assert!(ca.pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.cert.der()).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=dpu-1");
        assert_eq!(cert.issuer().to_string(), "CN=unit test CA");
        let sans = &cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            sans.general_names,
            [
                GeneralName::DNSName("dpu-1"),
                GeneralName::IPAddress(&[127, 0, 0, 1])
            ]
        );
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert().der()).unwrap();
        assert!(ca_cert.is_ca());
        assert!(cert.verify_signature(Some(ca_cert.public_key())).is_ok());
    }

    #[test]
    fn a_csr_carries_its_name() {
        let (_, pem) = csr("dpu-1", &["dpu-1"]);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    }
}
