//! The agent binary's contract: `check-config`, `DPU_AGENT_*` overrides, and the
//! exit code for a bad config (systemd's `RestartPreventExitStatus=` relies on it).

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
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_dpu-agent"))
        .args(["check-config", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap()
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("surprise"));
    let out = agent(CONFIG, &[("DPU_AGENT_OVS__DATAPATH_TYPE", "dpdk")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ovs.datapath_type"));
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
