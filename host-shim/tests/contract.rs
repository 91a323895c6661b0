//! The CNI contract, checked on the real binary: environment and stdin in, one JSON
//! document on stdout, the exit status telling success from failure.

mod common;

use common::*;
use serde_json::json;

fn add_env() -> Invocation<'static> {
    Invocation {
        command: "ADD",
        container_id: "c1",
        ifname: "eth0",
        netns: Some("/run/netns/does-not-matter"),
        run_in: None,
        timed: false,
    }
}

#[test]
fn version_reports_the_supported_versions() {
    require_root_and_ip();
    let inv = Invocation {
        command: "VERSION",
        ..Default::default()
    };
    let out = shim_raw(&inv, b"", &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.json,
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    );
    // The runtime's version is echoed when it is one we speak.
    let out = shim_raw(&inv, br#"{"cniVersion":"1.0.0"}"#, &[]);
    assert_eq!(out.json["cniVersion"], "1.0.0");
}

#[test]
fn missing_variables_are_error_4_naming_them() {
    require_root_and_ip();
    let pki = Pki::new();
    let mut cfg = config(&pki, "https://127.0.0.1:1");
    cfg["vfAllowList"] = json!(["vf0"]);
    for (inv, var) in [
        (
            Invocation {
                command: "",
                ..add_env()
            },
            "CNI_COMMAND",
        ),
        (
            Invocation {
                container_id: "",
                ..add_env()
            },
            "CNI_CONTAINERID",
        ),
        (
            Invocation {
                ifname: "",
                ..add_env()
            },
            "CNI_IFNAME",
        ),
        (
            Invocation {
                netns: None,
                ..add_env()
            },
            "CNI_NETNS",
        ),
        (
            Invocation {
                ifname: "way-too-long-name0",
                ..add_env()
            },
            "CNI_IFNAME",
        ),
        (
            // The plugin's own netns is not a container's.
            Invocation {
                netns: Some("/proc/self/ns/net"),
                ..add_env()
            },
            "CNI_NETNS",
        ),
    ] {
        let out = shim(&inv, &cfg);
        assert_eq!(out.error_code(), 4, "{var}: {}", out.json);
        assert_ne!(out.code, 0);
        assert!(
            out.json["msg"].as_str().unwrap().contains(var),
            "{var}: {}",
            out.json
        );
        assert!(
            out.json["details"].as_str().unwrap().contains(var),
            "{var}: {}",
            out.json
        );
        assert_eq!(out.json["cniVersion"], "1.1.0");
    }
}

#[test]
fn undecodable_config_is_error_6() {
    require_root_and_ip();
    let out = shim_raw(&add_env(), b"{\"cniVersion\": \"1.1.0\", oops", &[]);
    assert_eq!(out.error_code(), 6, "{}", out.json);
    assert_eq!(out.code, 6);
}

#[test]
fn unsupported_version_is_error_1() {
    require_root_and_ip();
    let pki = Pki::new();
    let mut cfg = config(&pki, "https://127.0.0.1:1");
    cfg["cniVersion"] = json!("0.3.1");
    let out = shim(&add_env(), &cfg);
    assert_eq!(out.error_code(), 1, "{}", out.json);
    assert!(out.msg().contains("0.3.1"), "{}", out.json);
    // STATUS and GC exist from 1.1.0 on.
    cfg["cniVersion"] = json!("1.0.0");
    let status = Invocation {
        command: "STATUS",
        ..Default::default()
    };
    assert_eq!(shim(&status, &cfg).error_code(), 1);
}

#[test]
fn missing_agent_or_subnet_is_error_7_naming_the_field() {
    require_root_and_ip();
    let pki = Pki::new();
    for field in ["agent", "subnet", "agentName", "tls"] {
        let mut cfg = config(&pki, "https://127.0.0.1:1");
        cfg.as_object_mut().unwrap().remove(field);
        let out = shim(&add_env(), &cfg);
        assert_eq!(out.error_code(), 7, "{field}: {}", out.json);
        assert!(
            out.json["msg"].as_str().unwrap().contains(field),
            "{}",
            out.json
        );
    }
    let mut cfg = config(&pki, "https://127.0.0.1:1");
    cfg["ipam"] = json!({"type": "host-local"});
    assert_eq!(shim(&add_env(), &cfg).error_code(), 2);
}

#[test]
fn add_without_a_pf_or_an_allow_list_is_error_7() {
    require_root_and_ip();
    // Refused from the config alone: nothing listens at the agent's address.
    let pki = Pki::new();
    let cfg = config(&pki, &format!("https://127.0.0.1:{}", closed_port()));
    let out = shim(&add_env(), &cfg);
    assert_eq!(out.error_code(), 7, "{}", out.json);
    assert_eq!(
        out.json["msg"],
        "invalid network configuration: pf or vfAllowList"
    );
    let details = out.json["details"].as_str().unwrap();
    assert!(details.contains("vfAllowList"), "{details}");
    // DEL, CHECK and STATUS do not move a host netdev into a pod; STATUS still runs.
    let status = Invocation {
        command: "STATUS",
        ..Default::default()
    };
    assert_eq!(shim(&status, &cfg).error_code(), 50);
}

#[test]
fn status_with_nothing_listening_is_error_50() {
    require_root_and_ip();
    let pki = Pki::new();
    let cfg = config(&pki, &format!("https://127.0.0.1:{}", closed_port()));
    let inv = Invocation {
        command: "STATUS",
        ..Default::default()
    };
    let out = shim(&inv, &cfg);
    assert_eq!(out.error_code(), 50, "{}", out.json);
    assert_eq!(out.code, 50);
    assert!(out.msg().contains("unreachable"), "{}", out.json);
}

#[test]
fn nothing_but_the_result_goes_to_stdout() {
    require_root_and_ip();
    // Debug logging is on in every run of these tests; stdout still parses as one
    // document (shim_raw panics otherwise) and the log lines are on stderr.
    let pki = Pki::new();
    let cfg = config(&pki, &format!("https://127.0.0.1:{}", closed_port()));
    let out = shim(&add_env(), &cfg);
    assert!(out.stderr.contains("host-shim:"), "{}", out.stderr);
    assert!(out.json.is_object());
}
