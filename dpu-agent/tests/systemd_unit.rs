//! CI gate for `systemd/dpu-agent.service`: `systemd-analyze verify` passes and
//! `systemd-analyze security --offline=yes` scores it at most [`MAX_EXPOSURE`].
//! A missing `systemd-analyze` fails (lab/install-deps installs `systemd`).
//!
//! `verify` checks that `ExecStart=` is executable, and `/usr/bin/dpu-agent` is not
//! installed on a build machine, so it runs on a temp copy whose `ExecStart=` names
//! the binary cargo just built; nothing else in the copy changes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const MAX_EXPOSURE: f64 = 3.0;
const INSTALLED_BIN: &str = "/usr/bin/dpu-agent";

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/dpu-agent.service")
}

fn analyze(args: &[&str], unit: &Path) -> Output {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(args).arg(unit).env("SYSTEMD_LOG_COLOR", "0");
    dpu_lab::process::run_bounded(cmd, Duration::from_secs(60)).unwrap_or_else(|e| {
        panic!("systemd-analyze is required (apt-get install systemd; see lab/install-deps): {e:#}")
    })
}

/// The number in "Overall exposure level for dpu-agent.service: 2.0 OK".
fn exposure(stdout: &str) -> Option<f64> {
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.rsplit_once(": ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn exposure_parser() {
    assert_eq!(
        exposure("x\n→ Overall exposure level for dpu-agent.service: 2.0 OK 🙂\n"),
        Some(2.0)
    );
    assert_eq!(exposure("nothing here"), None);
}

#[test]
fn unit_security_exposure_is_at_most_3() {
    let out = analyze(&["security", "--offline=yes", "--no-pager"], &unit_path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let score = exposure(&stdout).unwrap_or_else(|| {
        panic!(
            "no exposure score from systemd-analyze security ({:?}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{stdout}"
    );
}

#[test]
fn unit_verifies() {
    let text = std::fs::read_to_string(unit_path()).unwrap();
    let exec = format!("ExecStart={INSTALLED_BIN} ");
    assert!(text.contains(&exec), "the unit runs {INSTALLED_BIN}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("dpu-agent.service");
    let built = format!("ExecStart={} ", env!("CARGO_BIN_EXE_dpu-agent"));
    std::fs::write(&copy, text.replace(&exec, &built)).unwrap();
    let out = analyze(&["verify", "--no-pager"], &copy);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify ({:?}):\n{stderr}",
        out.status
    );
}

#[test]
fn unit_keeps_the_contract_with_main() {
    let text = std::fs::read_to_string(unit_path()).unwrap();
    for line in [
        "Type=notify",
        "RestartPreventExitStatus=2 3",
        "Restart=on-failure",
        "StateDirectoryMode=0700",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}");
    }
    assert!(text.lines().any(|l| l.starts_with("WatchdogSec=")));
}
