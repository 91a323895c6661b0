//! Enrollment end to end: a DPU with no certificate enrolls with a bootstrap
//! token, renews before expiry under traffic and swaps certificates without a
//! restart, and is refused once revoked. Real controller, agent, OVS and traffic.
//!
//! The controller issues 30 s certificates here (`--enroll-cert-ttl 30s`), so the
//! agent renews about 20 s after each write.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use dpu_lab::fixture::{Lab, NODE, SHIM_NAME};
use dpu_lab::process::wait_until;
use dpu_lab::scenario::{backends_lab, web_service, VIP};
use dpu_lab::traffic;

/// What the tests read off a certificate file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cert {
    serial: String,
    not_after: u64,
    names: Vec<String>,
}

fn cert_of(pem: &[u8]) -> Result<Cert> {
    use x509_parser::extensions::GeneralName;
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| anyhow!("not PEM: {e}"))?;
    let c = p.parse_x509().map_err(|e| anyhow!("not X.509: {e}"))?;
    let names = c
        .subject_alternative_name()
        .map_err(|e| anyhow!("{e}"))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Cert {
        serial: hex_serial(c.raw_serial()),
        not_after: u64::try_from(c.validity().not_after.timestamp())?,
        names,
    })
}

fn hex_serial(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_cert(path: &Path) -> Result<Cert> {
    cert_of(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One server running `web_service` on two backends, certificates of 30 s.
fn enrolling_lab(tag: &str) -> Result<Lab> {
    let mut lab = backends_lab(tag, 2, &web_service(""))?;
    lab.serve_args = vec!["--enroll-cert-ttl".into(), "30s".into()];
    lab.start_controller()?;
    Ok(lab)
}

fn restart_controller(lab: &mut Lab) -> Result<()> {
    if let Some(mut c) = lab.controller.take() {
        c.kill9()?;
    }
    lab.start_controller()
}

fn connected(lab: &Lab) -> bool {
    lab.node_status()
        .map(|n| n["connected"] == true)
        .unwrap_or(false)
}

/// The serial of the certificate the agent's shim service presents, read with
/// `openssl s_client` as the shim would connect (with the shim's certificate).
fn served_serial(lab: &Lab) -> Result<String> {
    let sh = lab.shim.as_ref().context("no shim")?;
    let pki = lab.pki();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -cert {pki}/{SHIM_NAME}.pem -key {pki}/{SHIM_NAME}.key \
             -CAfile {pki}/ca.pem -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial",
            addr = sh.agent_addr,
            pki = pki.display()
        ))
        .output()
        .context("running openssl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("serial=")
        .map(|s| s.to_ascii_lowercase())
        .ok_or_else(|| anyhow!("openssl printed no serial: {text:?}"))
}

#[test]
fn first_boot_enrolls_then_renews_under_traffic_without_losing_a_request() -> Result<()> {
    let mut lab = enrolling_lab("enr")?;
    lab.enable_shim(1)?;
    let token = lab.token_create(NODE, "10m")?;
    assert!(token.starts_with("dpub."), "token format: {token}");
    lab.enroll_with(&token)?;
    let (cert_path, key_path) = lab.agent_identity();
    assert!(!cert_path.exists(), "the agent starts with no certificate");
    lab.start_agent()?;
    let version = lab.wait_converged()?;

    // The key was made on the DPU, is private, and the certificate names the node.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_path)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode");
    let first = read_cert(&cert_path)?;
    assert_eq!(first.names, vec![NODE.to_string()]);
    let life = first.not_after.saturating_sub(now());
    assert!(life <= 31, "a 30 s certificate, {life} s left");
    let first_key = std::fs::read(&key_path)?;
    wait_until("the shim service to serve", Duration::from_secs(10), || {
        served_serial(&lab).is_ok_and(|s| s == first.serial)
    })?;

    // Traffic through the VIP at 10 requests/s across the renewal.
    let client = &lab.host("client")?.ns;
    let (renewed, result) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            traffic::run_client(
                client,
                &format!("{VIP}:80"),
                "tcp",
                250,
                &["--interval-ms", "100", "--timeout-ms", "1500"],
            )
        });
        let renewed = wait_until(
            "the certificate to be renewed",
            Duration::from_secs(40),
            || read_cert(&cert_path).is_ok_and(|c| c.serial != first.serial),
        );
        (renewed, load.join())
    });
    renewed?;
    let result = result.map_err(|_| anyhow!("client thread panicked"))??;
    assert_eq!(
        result.failed, 0,
        "requests lost across the renewal: {result:?}"
    );
    assert_eq!(result.ok, 250);

    let second = read_cert(&cert_path)?;
    assert!(second.not_after > first.not_after);
    assert_ne!(
        std::fs::read(&key_path)?,
        first_key,
        "a renewal uses a fresh key"
    );
    let log = lab.agent_log();
    assert!(log.contains("certificate renewed"), "agent log");
    assert!(log.contains("reconnecting with the renewed certificate"));
    wait_until("the session to be back", Duration::from_secs(10), || {
        connected(&lab)
    })?;
    assert_eq!(
        lab.node_status()?["applied_version"].as_u64(),
        Some(version),
        "the reconnect applied nothing new"
    );
    // New shim connections get the new certificate, without a restart.
    wait_until("the shim service to swap", Duration::from_secs(10), || {
        served_serial(&lab).is_ok_and(|s| s != first.serial)
    })?;

    // Once the first certificate has expired, a fresh connection still works:
    // the agent connects with the renewed one.
    let wait = first.not_after.saturating_sub(now()) + 1;
    std::thread::sleep(Duration::from_secs(wait));
    restart_controller(&mut lab)?;
    wait_until("the agent to reconnect", Duration::from_secs(20), || {
        connected(&lab)
    })?;
    let tcp = lab.client("client", &format!("{VIP}:80"), "tcp", 20)?;
    assert_eq!(tcp.failed, 0, "{tcp:?}");
    Ok(())
}

#[test]
fn a_revoked_node_is_refused_at_its_next_connection_and_cannot_renew() -> Result<()> {
    let mut lab = enrolling_lab("rev")?;
    let token = lab.token_create(NODE, "10m")?;
    lab.enroll_with(&token)?;
    lab.start_agent()?;
    lab.wait_converged()?;
    let (cert_path, _) = lab.agent_identity();
    let before = read_cert(&cert_path)?;

    lab.controller_cmd(&[
        "node",
        "revoke",
        "--state-dir",
        &lab.ctl_state().display().to_string(),
        "--node",
        NODE,
    ])?;
    let listed = lab.controller_cmd(&[
        "node",
        "list",
        "--state-dir",
        &lab.ctl_state().display().to_string(),
    ])?;
    assert!(listed.contains("revoked"), "node list: {listed}");
    // The live session is ended with the reason ...
    wait_until("the live session to end", Duration::from_secs(5), || {
        lab.agent_log().contains("is revoked")
    })?;
    // ... and a new controller process refuses the next connection too.
    let seen = lab.agent_log().matches("is revoked").count();
    restart_controller(&mut lab)?;
    wait_until(
        "the restarted controller to refuse the node",
        Duration::from_secs(20),
        || lab.agent_log().matches("is revoked").count() > seen,
    )?;
    wait_until("the status to show it", Duration::from_secs(5), || {
        !connected(&lab)
    })?;
    assert!(
        lab.controller_log().contains("revoked"),
        "the controller logs the refusal"
    );

    // Forwarding does not depend on the controller (fail-static).
    let tcp = lab.client("client", &format!("{VIP}:80"), "tcp", 20)?;
    assert_eq!(tcp.failed, 0, "{tcp:?}");

    // The renewal (due ~20 s after enrollment) is refused and changes nothing.
    wait_until("a refused renewal", Duration::from_secs(40), || {
        lab.agent_log()
            .lines()
            .any(|l| l.contains("certificate renewal failed") && l.contains("revoked"))
    })?;
    assert_eq!(
        read_cert(&cert_path)?,
        before,
        "the certificate must not change"
    );
    assert!(!connected(&lab));
    Ok(())
}

#[test]
fn a_wrong_token_leaves_nothing_behind_and_a_corrected_token_file_is_picked_up() -> Result<()> {
    let mut lab = enrolling_lab("tok")?;
    let token = lab.token_create(NODE, "10m")?;
    // Same token id, wrong secret.
    let mut wrong = token.clone();
    let last = wrong.pop().context("empty token")?;
    wrong.push(if last == '0' { '1' } else { '0' });
    let token_file = lab.enroll_with(&wrong)?;
    lab.start_agent()?;
    wait_until("the refusal", Duration::from_secs(20), || {
        lab.agent_log().contains("controller refused enrollment")
    })?;
    let (cert_path, key_path) = lab.agent_identity();
    assert!(
        !cert_path.exists() && !key_path.exists(),
        "nothing is written"
    );
    let tokens = lab.controller_cmd(&[
        "token",
        "list",
        "--state-dir",
        &lab.ctl_state().display().to_string(),
    ])?;
    assert!(
        tokens.contains("unused"),
        "a wrong secret does not burn the token: {tokens}"
    );

    // The operator drops the right token in place; no restart is needed.
    std::fs::write(&token_file, format!("{token}\n"))?;
    lab.wait_converged()?;
    assert_eq!(read_cert(&cert_path)?.names, vec![NODE.to_string()]);
    Ok(())
}
