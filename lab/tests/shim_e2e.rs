//! Pods attached through the real host shim (run exactly as a container runtime
//! runs a CNI plugin: environment, config on stdin, result on stdout) against the
//! real agent, controller and OVS, with real traffic. Needs root.

use anyhow::Result;
use dpu_lab::fixture::Lab;
use dpu_lab::traffic;

const VIP: &str = "10.96.0.10";

const INTENT: &str = r#"apiVersion: dpu.yusur.io/v1alpha1
kind: Vpc
metadata: {name: vpc-a}
spec: {vni: 100}
---
apiVersion: dpu.yusur.io/v1alpha1
kind: Subnet
metadata: {name: pods}
spec:
  vpc: vpc-a
  cidr: 10.0.1.0/24
  gateway: 10.0.1.1
  nodeBlocks: [{node: dpu-1, cidr: 10.0.1.64/26}]
---
apiVersion: dpu.yusur.io/v1alpha1
kind: Subnet
metadata: {name: tiny}
spec:
  vpc: vpc-a
  cidr: 10.0.2.0/24
  gateway: 10.0.2.1
  nodeBlocks: [{node: dpu-1, cidr: 10.0.2.0/30}]
---
apiVersion: dpu.yusur.io/v1alpha1
kind: YusurService
metadata: {name: web}
spec:
  vpc: vpc-a
  clusterIPs: [10.96.0.10]
  ports: [{protocol: TCP, port: 80, targetPort: 8080}, {protocol: UDP, port: 53, targetPort: 5353}]
  selector: {app: web}
"#;

fn lab(tag: &str, vfs: usize) -> Result<Lab> {
    let mut lab = Lab::new(tag)?;
    lab.enable_shim(vfs)?;
    lab.write_manifest("00-intent.yaml", INTENT)?;
    lab.start_controller()?;
    lab.start_agent()?;
    lab.wait_converged()?;
    Ok(lab)
}

/// ADD for pod `name` in its own namespace; returns the pod's address.
fn add(lab: &mut Lab, name: &str, subnet: &str, app: &str) -> Result<String> {
    Ok(add_result(lab, name, subnet, app)?.0)
}

/// ADD, returning the address and the CNI Result.
fn add_result(
    lab: &mut Lab,
    name: &str,
    subnet: &str,
    app: &str,
) -> Result<(String, serde_json::Value)> {
    let netns = lab.pod_netns(name)?;
    let cfg = lab.cni_config(subnet, &[("app", app)])?;
    let (code, out) = lab.cni("ADD", name, &netns, "eth0", &cfg)?;
    anyhow::ensure!(
        code == 0,
        "ADD {name} failed ({code}): {out}\nagent:\n{}",
        dpu_lab::fixture::tail(&lab.agent_log())
    );
    let ip = out["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((ip.split('/').next().unwrap_or_default().to_string(), out))
}

fn link_json(lab: &Lab, pod: &str) -> Result<serde_json::Value> {
    let out = lab
        .pod(pod)?
        .exec(["ip", "-j", "addr", "show", "dev", "eth0"])?;
    Ok(serde_json::from_str(&out)?)
}

#[test]
fn pods_added_through_the_shim_reach_a_service_of_pods() -> Result<()> {
    let mut lab = lab("shim", 4)?;
    let v0 = lab.intent_version()?;
    let mut ips = Vec::new();
    for (name, app) in [("web-a", "web"), ("web-b", "web"), ("client", "client")] {
        ips.push(add(&mut lab, name, "pods", app)?);
    }
    // Between pod events nothing of ours runs on the host: the host namespace has no
    // process at all (the plugin exited after each call).
    let host_ns = lab.shim.as_ref().expect("shim").ns.name().to_string();
    let pids = std::process::Command::new("ip")
        .args(["netns", "pids", &host_ns])
        .output()?;
    assert!(
        pids.stdout.is_empty(),
        "processes left on the host: {}",
        String::from_utf8_lossy(&pids.stdout)
    );
    // The result JSON and the pod agree: address, MAC, state.
    let link = link_json(&lab, "client")?;
    let addr = &link[0];
    assert_eq!(addr["operstate"], "UP", "{link}");
    assert!(addr["addr_info"].to_string().contains(&ips[2]), "{link}");
    assert!(ips.iter().all(|ip| ip.starts_with("10.0.1.")), "{ips:?}");
    let mut echoes = Vec::new();
    for name in ["web-a", "web-b"] {
        let log = lab.path(&format!("logs/echo-{name}.log"));
        echoes.push(traffic::start_echo(
            lab.pod(name)?,
            name,
            &[8080],
            &[5353],
            &log,
        )?);
    }
    // The controller merged the reported pods (no manifest change) and the agent ACKed.
    lab.wait_converged_after(v0)?;
    let node = lab.node_status()?;
    assert_eq!(node["reported_workloads"], 3, "{node}");
    let client = lab.pod("client")?;
    let tcp = traffic::run_client(client, &format!("{VIP}:80"), "tcp", 40, &[])?;
    let udp = traffic::run_client(client, &format!("{VIP}:53"), "udp", 40, &[])?;
    for (r, what) in [(&tcp, "tcp"), (&udp, "udp")] {
        assert_eq!(r.failed, 0, "{what}: {r:?}");
        assert!(
            r.count_for("web-a") > 0 && r.count_for("web-b") > 0,
            "{what}: {r:?}"
        );
    }
    Ok(())
}

#[test]
fn del_is_idempotent_and_check_catches_drift() -> Result<()> {
    let mut lab = lab("del", 2)?;
    let (ip, prev) = add_result(&mut lab, "p1", "pods", "web")?;
    let netns = lab.pod("p1")?.path();
    let cfg = lab.cni_config("pods", &[("app", "web")])?;
    // CHECK needs prevResult: what ADD returned.
    let mut with_prev = cfg.clone();
    with_prev["prevResult"] = prev;
    let (code, out) = lab.cni("CHECK", "p1", &netns, "eth0", &with_prev)?;
    assert_eq!(code, 0, "CHECK of a healthy pod: {out}");
    lab.pod("p1")?
        .exec(["ip", "addr", "del", &format!("{ip}/24"), "dev", "eth0"])?;
    let (code, out) = lab.cni("CHECK", "p1", &netns, "eth0", &with_prev)?;
    assert_ne!(code, 0, "CHECK missed a removed address: {out}");
    assert!(
        out["msg"].as_str().unwrap_or_default().contains(&ip) || out.to_string().contains(&ip),
        "{out}"
    );
    // DEL twice, and DEL without prevResult.
    for round in 0..2 {
        let (code, out) = lab.cni("DEL", "p1", &netns, "eth0", &cfg)?;
        assert_eq!(code, 0, "DEL round {round}: {out}");
    }
    // The VF is back in the host namespace under its own name.
    let sh = lab.shim.as_ref().expect("shim");
    let vf = &sh.vfs[0].0;
    assert!(
        sh.ns.link_exists(vf),
        "VF {vf} not back in the host namespace"
    );
    assert!(!lab.pod("p1")?.link_exists("eth0"));
    Ok(())
}

#[test]
fn add_fails_cleanly_when_the_agent_is_down_and_pods_attach_without_the_controller() -> Result<()> {
    let mut lab = lab("down", 3)?;
    // Controller down: pods still attach from the locally held block.
    lab.controller.as_mut().expect("controller").terminate()?;
    let ip = add(&mut lab, "p1", "pods", "web")?;
    assert!(ip.starts_with("10.0.1."), "{ip}");
    let peer = add(&mut lab, "p2", "pods", "client")?;
    let log = lab.path("logs/echo-p1.log");
    let _echo = traffic::start_echo(lab.pod("p1")?, "p1", &[8080], &[], &log)?;
    let r = traffic::run_client(lab.pod("p2")?, &format!("{ip}:8080"), "tcp", 5, &[])?;
    assert_eq!(
        r.count_for("p1"),
        5,
        "pod-to-pod without the controller ({peer} -> {ip}): {r:?}"
    );

    // Agent down: ADD fails with a CNI error and leaves the VF where it was.
    lab.agent.as_mut().expect("agent").terminate()?;
    let netns = lab.pod_netns("p3")?;
    let cfg = lab.cni_config("pods", &[])?;
    let (code, out) = lab.cni("ADD", "p3", &netns, "eth0", &cfg)?;
    assert_ne!(code, 0, "{out}");
    assert!(
        out["code"].as_u64().is_some() && out["msg"].is_string(),
        "not a CNI error: {out}"
    );
    let sh = lab.shim.as_ref().expect("shim");
    assert!(sh.ns.link_exists(&sh.vfs[2].0), "the free VF moved");
    assert!(!lab.pod("p3")?.link_exists("eth0"));
    Ok(())
}

#[test]
fn address_exhaustion_and_bad_config_are_clear_errors() -> Result<()> {
    let mut lab = lab("exh", 3)?;
    // The tiny block 10.0.2.0/30 has one usable address (.1 is the gateway).
    add(&mut lab, "t1", "tiny", "x")?;
    let netns = lab.pod_netns("t2")?;
    let cfg = lab.cni_config("tiny", &[])?;
    let (code, out) = lab.cni("ADD", "t2", &netns, "eth0", &cfg)?;
    assert_ne!(code, 0, "{out}");
    assert!(out.to_string().contains("no free address"), "{out}");
    let sh = lab.shim.as_ref().expect("shim");
    assert!(
        sh.ns.link_exists(&sh.vfs[1].0),
        "a VF was taken by a failed ADD"
    );
    // A config without the agent address is a spec error (7: invalid network config).
    let mut bad = cfg.clone();
    bad.as_object_mut().expect("object").remove("agent");
    let (code, out) = lab.cni("ADD", "t2", &netns, "eth0", &bad)?;
    assert_ne!(code, 0);
    assert_eq!(out["code"], 7, "{out}");
    Ok(())
}

/// Builds `lab/cnitool` (a cnitool over Debian's libcni, the library containerd,
/// CRI-O and podman use to run plugins) into the lab's directory.
fn build_cnitool(lab: &Lab) -> Result<std::path::PathBuf> {
    let out = lab.path("cnitool-lab");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cnitool");
    let status = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", lab.path("gocache"))
        .env("GOFLAGS", "")
        .output()
        .map_err(|e| anyhow::anyhow!("running go (Debian's golang-go is needed): {e}"))?;
    anyhow::ensure!(
        status.status.success(),
        "building cnitool-lab failed (needs golang-go and golang-github-appc-cni-dev): {}",
        String::from_utf8_lossy(&status.stderr)
    );
    Ok(out)
}

#[test]
fn libcni_drives_the_plugin_like_a_runtime() -> Result<()> {
    let mut lab = lab("lcni", 2)?;
    let tool = build_cnitool(&lab)?;
    // A conflist as a runtime reads it; libcni 1.1 speaks spec 1.0.0.
    let mut plugin = lab.cni_config("pods", &[("app", "web")])?;
    let obj = plugin.as_object_mut().expect("object");
    obj.remove("cniVersion");
    obj.remove("name");
    let list = serde_json::json!({"cniVersion": "1.0.0", "name": "dpu", "plugins": [plugin]});
    let conf = lab.path("10-dpu.conflist");
    std::fs::write(&conf, list.to_string())?;
    let netns = lab.pod_netns("lc1")?;
    let plugin_dir = traffic::lab_bin("host-shim")?
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let host_ns = lab.shim.as_ref().expect("shim").ns.name().to_string();
    let run = |cmd: &str| -> Result<std::process::Output> {
        Ok(std::process::Command::new("ip")
            .args(["netns", "exec", &host_ns])
            .arg(&tool)
            .arg(cmd)
            .arg(&conf)
            .args([netns.as_str(), "lc1", "eth0"])
            .env("CNI_PATH", &plugin_dir)
            .env("CNI_CACHE_DIR", lab.path("cni-cache"))
            .output()?)
    };
    let out = run("add")?;
    anyhow::ensure!(
        out.status.success(),
        "libcni ADD: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ip = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(ip.starts_with("10.0.1."), "{result}");
    let addr = lab
        .pod("lc1")?
        .exec(["ip", "-j", "addr", "show", "dev", "eth0"])?;
    assert!(addr.contains(ip.split('/').next().unwrap_or("?")), "{addr}");
    // CHECK gets prevResult from libcni's cache, as under a real runtime.
    let out = run("check")?;
    assert!(
        out.status.success(),
        "libcni CHECK: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for round in 0..2 {
        let out = run("del")?;
        assert!(
            out.status.success(),
            "libcni DEL {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sh = lab.shim.as_ref().expect("shim");
    assert!(
        sh.ns.link_exists(&sh.vfs[0].0),
        "VF not returned to the host"
    );
    Ok(())
}

#[test]
fn the_shim_refuses_the_host_link_when_the_agent_names_it_as_a_vf() -> Result<()> {
    let mut lab = Lab::new("mgmt")?;
    lab.enable_shim(1)?;
    // What the host's operator allows: the lab's VF veths, listed in the config.
    let cfg = lab.cni_config("pods", &[("app", "web")])?;
    // The agent's inventory names the host's link to the DPU (the lab's management
    // link) as its VF, as `vf = "mgmt0"` did.
    let mgmt = format!("{}L", lab.prefix);
    lab.shim.as_mut().expect("shim").vfs[0].0 = mgmt.clone();
    lab.write_manifest("00-intent.yaml", INTENT)?;
    lab.start_controller()?;
    lab.start_agent()?;
    lab.wait_converged()?;
    let host = &lab.shim.as_ref().expect("shim").ns;
    let before = host.exec(["ip", "-j", "addr", "show", "dev", &mgmt])?;

    let netns = lab.pod_netns("m1")?;
    let (code, out) = lab.cni("ADD", "m1", &netns, "eth0", &cfg)?;
    assert_eq!(code, 106, "{out}");
    assert_eq!(out["code"], 106, "{out}");
    assert!(
        out["msg"].as_str().unwrap_or_default().contains(&mgmt),
        "{out}"
    );
    assert!(
        out["details"]
            .as_str()
            .unwrap_or_default()
            .contains("vfAllowList"),
        "{out}"
    );
    // The link is where it was, as it was, and still carries the shim's calls.
    let host = &lab.shim.as_ref().expect("shim").ns;
    assert_eq!(
        host.exec(["ip", "-j", "addr", "show", "dev", &mgmt])?,
        before
    );
    assert!(!lab.pod("m1")?.link_exists("eth0"));
    let (code, out) = lab.cni("STATUS", "m1", &netns, "eth0", &cfg)?;
    assert_eq!(
        code, 0,
        "STATUS over the host link after the refusal: {out}"
    );
    // The refused ADD released its attachment: the agent reports no pod (once its
    // status, debounced, has caught up with the Attach and the Detach).
    let mut last = serde_json::Value::Null;
    let released = dpu_lab::process::wait_until(
        "the agent to report no pod",
        std::time::Duration::from_secs(15),
        || {
            last = lab.node_status().unwrap_or_default();
            last["reported_workloads"] == 0
        },
    );
    assert!(released.is_ok(), "{last}");
    Ok(())
}
