//! The agent binary's contract: `check-config`, the config layers (file, drop-ins,
//! `DPU_AGENT_*`), and the exit code for a bad config (systemd's
//! `RestartPreventExitStatus=` relies on it).

use std::path::{Path, PathBuf};
use std::process::Command;

const CONFIG: &str = r#"
node_name = "dpu-1"
state_dir = "/tmp/dpu-agent-cli-test"
[controller]
endpoint = "https://127.0.0.1:50051"
ca_file = "ca.pem"
cert_file = "dpu-1.pem"
key_file = "dpu-1.key"
[ovs]
db_socket = "/run/openvswitch/db.sock"
run_dir = "/run/openvswitch"
"#;

fn agent(config: &str, env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    check_config(&path, env)
}

fn check_config(path: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dpu-agent"));
    cmd.args(["check-config", "--config"]).arg(path);
    // Only the variables the test sets: none inherited from whoever runs the tests.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DPU_AGENT_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

/// `agent.toml` (CONFIG) plus drop-ins in `agent.toml.d/`.
fn with_drop_ins(drop_ins: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let d = dir.path().join("agent.toml.d");
    std::fs::create_dir(&d).unwrap();
    for (name, text) in drop_ins {
        std::fs::write(d.join(name), text).unwrap();
    }
    (dir, path)
}

#[test]
fn check_config_prints_the_merged_config_with_secrets_redacted() {
    let (dir, path) = with_drop_ins(&[(
        "50-provision.toml",
        "node_name = \"dpu-7\"\n[enroll]\ntoken = \"dpub.s3cret-t0ken\"\n",
    )]);
    let out = check_config(&path, &[("DPU_AGENT_OVS__BRIDGE", "br-test")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(!stdout.contains("s3cret"), "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "# {}: ok (node dpu-7, bridge br-test)\n",
            path.display()
        )),
        "{stdout}"
    );
    let merged: toml::Table = toml::from_str(&stdout).unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    assert_eq!(merged["node_name"].as_str(), Some("dpu-7"));
    assert_eq!(merged["enroll"]["token"].as_str(), Some("<redacted>"));
    assert_eq!(merged["ovs"]["bridge"].as_str(), Some("br-test"));
    // Defaults are filled in.
    assert_eq!(merged["ovs"]["datapath_type"].as_str(), Some("netdev"));
    assert_eq!(
        merged["controller"]["backoff_max_ms"].as_integer(),
        Some(10_000)
    );
    // The layers, in order.
    let dropin = dir.path().join("agent.toml.d/50-provision.toml");
    let layers: Vec<_> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("# Layers"))
        .skip(1)
        .collect();
    assert_eq!(
        layers,
        [
            format!("#   {}", path.display()),
            format!("#   {}", dropin.display()),
            "#   DPU_AGENT_OVS__BRIDGE".to_string(),
        ]
    );
}

#[test]
fn a_bad_drop_in_exits_2_and_names_the_key_and_the_file() {
    let (dir, path) = with_drop_ins(&[
        ("10-ok.toml", "[ovs]\nbridge = \"br-x\"\n"),
        ("50-x.toml", "[ovs]\ndatapath_type = \"foo\"\n"),
    ]);
    let out = check_config(&path, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let want = format!(
        "dpu-agent: {}: ovs.datapath_type: \"foo\": want \"netdev\" or \"system\"\n",
        dir.path().join("agent.toml.d/50-x.toml").display()
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), want);

    let (dir, path) = with_drop_ins(&[(
        "50-x.toml",
        "[enroll]\ntoken = \"a\"\ntoken_file = \"/t\"\n",
    )]);
    let out = check_config(&path, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}: enroll.token: ",
        dir.path().join("agent.toml.d/50-x.toml").display()
    );
    assert!(stderr.contains(&want), "{stderr}");
}

#[test]
fn environment_overrides_the_file() {
    let out = agent(CONFIG, &[("DPU_AGENT_OVS__BRIDGE", "br-test")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("bridge br-test"), "{stdout}");
}

#[test]
fn a_bad_config_exits_2_and_names_the_field() {
    let out = agent(&format!("{CONFIG}\nsurprise = true\n"), &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent.toml: ovs.surprise: unknown key"));
    let out = agent(CONFIG, &[("DPU_AGENT_OVS__DATAPATH_TYPE", "dpdk")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("DPU_AGENT_OVS__DATAPATH_TYPE: ovs.datapath_type: \"dpdk\""));
}

#[test]
fn version_and_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_dpu-agent"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(env!("CARGO_BIN_EXE_dpu-agent"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
