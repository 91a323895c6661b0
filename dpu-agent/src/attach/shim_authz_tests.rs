//! Which client certificates the attachment service takes: certificates made
//! by the controller's own CA code, as an operator would make them.

use super::authorize_shim;
use dpu_controller::pki::{init_ca, load_ca};
use tonic::Code;

fn der(pem: &str) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    p.contents
}

#[test]
fn only_the_host_shims_certificate_may_attach() {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path(), false).unwrap();
    let ca = load_ca(dir.path()).unwrap();

    let shim = der(&ca.issue_host_shim("host-dpu-1", 1).unwrap().cert_pem);
    authorize_shim(&shim, "host-dpu-1").expect("the shim's certificate");

    // Another host's shim.
    let e = authorize_shim(&shim, "host-dpu-2").unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("only host-dpu-2 may attach"), "{e:?}");

    // A node certificate with the shim's name (what docs/host-shim.md once
    // told operators to make): the wrong role.
    let node = der(&ca.issue_node("host-dpu-1", 1).unwrap().cert_pem);
    let e = authorize_shim(&node, "host-dpu-1").unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("urn:dpu:role:node"), "{e:?}");
    assert!(e.message().contains("--host-shim host-dpu-1"), "{e:?}");

    // A certificate with no role at all.
    let server = der(&ca.issue_server("host-dpu-1", &[], 1).unwrap().cert_pem);
    assert_eq!(
        authorize_shim(&server, "host-dpu-1").unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        authorize_shim(b"not a certificate", "host-dpu-1")
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
}
