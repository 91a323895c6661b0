//! The agent binary's contract: `check-config`, the config layers (file, drop-ins,
//! `DPU_AGENT_*`), the exit code for a bad config (systemd's
//! `RestartPreventExitStatus=` relies on it), and the operator commands'
//! arguments and exit codes (`show|trace|explain`).

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

/// Runs the binary with `args` and no inherited `DPU_AGENT_*` variables.
fn run_agent(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dpu-agent"));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DPU_AGENT_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().unwrap()
}

#[test]
fn operator_commands_reject_bad_arguments_with_exit_2() {
    let bad: &[&[&str]] = &[
        &["show"],
        &["show", "everything"],
        &["show", "service"],
        &["explain"],
        // Where the packet enters: one of --in-port and --vpc, not both.
        &[
            "trace", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "icmp",
        ],
        &[
            "trace",
            "--src",
            "10.0.0.1",
            "--dst",
            "10.0.0.2",
            "--proto",
            "icmp",
            "--vpc",
            "a",
            "--in-port",
            "p",
        ],
        &[
            "trace", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "gre", "--vpc", "a",
        ],
        &[
            "trace", "--src", "nope", "--dst", "10.0.0.2", "--proto", "icmp", "--vpc", "a",
        ],
        // tcp and udp need a destination port; icmp takes none.
        &[
            "trace", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "tcp", "--vpc", "a",
        ],
        &[
            "trace", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "icmp", "--dport", "80",
            "--vpc", "a",
        ],
        &[
            "trace", "--src", "10.0.0.1", "--dst", "fd00::2", "--proto", "icmp", "--vpc", "a",
        ],
    ];
    for args in bad {
        let out = run_agent(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: {out:?}");
    }
}

#[test]
fn no_agent_at_the_socket_exits_4_and_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ops.sock");
    let s = sock.to_str().unwrap();
    let good: &[&[&str]] = &[
        &["show", "intent", "--socket", s],
        &["show", "--socket", s, "pipeline", "--service", "web"],
        &["show", "service", "web", "--socket", s],
        &["explain", "web", "--socket", s],
        &["explain", "--offload", "--socket", s],
        &["explain", "--offload", "web", "--socket", s],
        &[
            "trace",
            "--src",
            "10.0.0.1",
            "--dst",
            "10.96.0.10",
            "--proto",
            "tcp",
            "--dport",
            "80",
            "--sport",
            "40000",
            "--in-port",
            "web-1-eth0",
            "--socket",
            s,
        ],
        &[
            "trace", "--src", "fd00::1", "--dst", "fd00::2", "--proto", "icmp", "--vpc", "blue",
            "--raw", "--socket", s,
        ],
    ];
    for args in good {
        let out = run_agent(args);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr,
            format!(
                "dpu-agent: {s}: no such socket: is dpu-agent running, and is `[ops] socket` in its config this path? (--socket PATH names another)\n"
            ),
            "{args:?}"
        );
    }
}

#[test]
fn the_socket_comes_from_the_config_unless_given() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("from-config.sock");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        format!("{CONFIG}[ops]\nsocket = \"{}\"\n", sock.display()),
    )
    .unwrap();
    let config = path.to_str().unwrap();
    let out = run_agent(&["show", "intent", "--config", config]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("dpu-agent: {}: no such socket", sock.display())),
        "{stderr}"
    );
    // --socket wins.
    let out = run_agent(&[
        "show",
        "intent",
        "--config",
        config,
        "--socket",
        "/nonexistent/x.sock",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("dpu-agent: /nonexistent/x.sock: "),
        "{out:?}"
    );
    // A --config that does not load is a usage error, named.
    let missing = dir.path().join("missing.toml");
    let out = run_agent(&["show", "intent", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.toml"),
        "{out:?}"
    );
}

#[test]
fn an_error_answer_goes_to_stderr_with_exit_1() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ops.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // A one-shot stand-in for the agent: reads the request, answers ok:false.
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = String::new();
        s.read_to_string(&mut req).unwrap();
        s.write_all(br#"{"ok":false,"output":"no Service named \"wbe\" in the applied intent; close names: web"}"#)
            .unwrap();
        req
    });
    let out = run_agent(&["show", "service", "wbe", "--socket", sock.to_str().unwrap()]);
    let req = server.join().unwrap();
    assert_eq!(req.trim_end(), r#"{"cmd":"show-service","name":"wbe"}"#);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "dpu-agent: no Service named \"wbe\" in the applied intent; close names: web\n"
    );
}
