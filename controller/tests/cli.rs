//! The command line: certificate issuance and the exit code of each failure class.

mod common;

use std::fs;

use common::*;

#[test]
fn cli_failures_have_their_exit_codes() {
    let lab = Lab::new();
    let state = s(&lab.state);

    // An existing CA is not overwritten without --force.
    let ca_before = fs::read(lab.state.join("pki/ca.pem")).unwrap();
    let out = cli(&["ca", "init", "--state-dir", state]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(fs::read(lab.state.join("pki/ca.pem")).unwrap(), ca_before);

    // Key files are private.
    use std::os::unix::fs::PermissionsExt;
    for key in [lab.state.join("pki/ca.key"), lab.certs.join("dpu-1.key")] {
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(
        fs::metadata(&lab.state).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // A bad node name is a usage error; no CA is a PKI error; bad flags are usage.
    let out = cli(&[
        "issue",
        "--state-dir",
        state,
        "--node",
        "DPU_1",
        "--out",
        s(&lab.certs),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let nowhere = lab.state.with_file_name("no-state");
    let out = cli(&[
        "issue",
        "--state-dir",
        s(&nowhere),
        "--node",
        "dpu-1",
        "--out",
        s(&lab.certs),
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(cli(&["serve", "--bogus"]).status.code(), Some(2));

    // A server certificate with extra SANs.
    let out = cli_ok(&[
        "issue",
        "--state-dir",
        state,
        "--server",
        "--name",
        "ctl.example",
        "--san",
        "10.0.0.1",
        "--out",
        s(&lab.certs),
    ]);
    assert!(out.contains("ctl.example.pem"), "{out}");

    // An invalid intent at start: exit 3, errors on stderr and in status.
    write_manifest(&lab.intent, "bad.yaml", "apiVersion: dpu.yusur.io/v1alpha1\nkind: Subnet\nmetadata: {name: s}\nspec: {vpc: blue, cidr: 10.2.0.0/33, gateway: 10.2.0.1}\n");
    let out = cli(&[
        "serve",
        "--state-dir",
        state,
        "--intent-dir",
        s(&lab.intent),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml: document 1: Subnet/s: spec.cidr:"),
        "{stderr}"
    );
    let st = lab.status_json();
    assert_eq!(st["last_reload_ok"], false);
    assert_eq!(st["controller_running"], false);
    assert_eq!(st["intent_errors"][0]["object"], "Subnet/s");

    // A missing intent dir is a configuration error.
    let out = cli(&[
        "serve",
        "--state-dir",
        state,
        "--intent-dir",
        s(&nowhere),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
