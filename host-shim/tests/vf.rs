//! The real binary moving a VF, against an in-process fake agent over real mTLS.
//!
//! Topology per test: a "host" netns holding the VF (one end of a veth pair whose peer,
//! the representor, stays in the root netns) and a "pod" netns. The plugin runs inside
//! the host netns (`ip netns exec`), as a runtime runs it on a host. The fake agent's
//! socket is bound to 127.0.0.1 *inside the host netns* (on a thread that entered it)
//! and served from the test process, so no addresses are needed in the root netns and
//! parallel tests cannot collide.

mod common;

use common::*;
use serde_json::{json, Value};

/// Everything one test needs; dropped in field order (agent first, netns last).
struct Lab {
    agent: FakeAgent,
    vf: Vf,
    pod: Netns,
    host: Netns,
    pki: Pki,
    original_mac: String,
    prefix: String,
}

impl Lab {
    fn new(state: impl FnOnce(&str) -> FakeState) -> Self {
        require_root_and_ip();
        let prefix = unique_prefix();
        let host = new_netns(&format!("{prefix}-host"));
        let pod = new_netns(&format!("{prefix}-pod"));
        let vf = Vf::new(&prefix, &host);
        let pki = Pki::new();
        let agent = FakeAgent::start(&pki, Some(host.name()), state(&vf.vf));
        let original_mac = link(host.name(), &vf.vf)["address"]
            .as_str()
            .unwrap()
            .to_string();
        Self {
            agent,
            vf,
            pod,
            host,
            pki,
            original_mac,
            prefix,
        }
    }

    fn standard() -> Self {
        Self::new(|vf| FakeState {
            template: template(vf),
            ready: true,
            ..Default::default()
        })
    }

    /// The network config: this lab's agent, and its one VF (a veth) as the only
    /// netdev the shim may move, as the lab's configs list theirs.
    fn config(&self) -> Value {
        self.config_at(&self.agent.url)
    }

    /// [`Lab::config`] with another agent address.
    fn config_at(&self, agent: &str) -> Value {
        let mut cfg = config(&self.pki, agent);
        cfg["vfAllowList"] = json!([self.vf.vf]);
        cfg
    }

    /// Runs `command` for container `cid`/eth0 in the pod, from the host netns.
    fn run(&self, command: &str, cid: &str, config: &Value) -> ShimRun {
        let netns = self.pod.path();
        shim(
            &Invocation {
                command,
                container_id: cid,
                ifname: "eth0",
                netns: Some(&netns),
                run_in: Some(self.host.name()),
                timed: false,
            },
            config,
        )
    }

    fn with_prev(&self, prev: &Value) -> Value {
        let mut cfg = self.config();
        cfg["prevResult"] = prev.clone();
        cfg
    }

    fn add(&self, cid: &str) -> Value {
        let out = self.run("ADD", cid, &self.config());
        assert_eq!(out.code, 0, "ADD failed: {}\n{}", out.json, out.stderr);
        out.json
    }

    fn assert_vf_home(&self) {
        let vf = link(self.host.name(), &self.vf.vf);
        assert!(
            !vf.is_null(),
            "VF {} is not back in the host netns",
            self.vf.vf
        );
        assert_eq!(
            link(self.pod.name(), "eth0"),
            Value::Null,
            "eth0 left in the pod"
        );
    }
}

fn addresses(ns: &str, dev: &str) -> Vec<String> {
    ip_json(&["-n", ns, "addr", "show", "dev", dev])
        .get(0)
        .and_then(|l| l["addr_info"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

#[test]
fn add_moves_the_vf_into_the_pod_and_del_brings_it_back() {
    let lab = Lab::standard();
    let result = lab.add("c1");
    assert_eq!(
        result,
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": "02:00:0a:00:01:46", "mtu": 1400, "sandbox": lab.pod.path()}],
            "ips": [{"address": "10.0.1.70/24", "gateway": "10.0.1.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.1.1"}, {"dst": "10.96.0.0/12", "gw": "10.0.1.1"}]
        })
    );

    // The pod, seen by iproute2 rather than by the plugin.
    let eth0 = link(lab.pod.name(), "eth0");
    assert_eq!(eth0["address"], "02:00:0a:00:01:46", "{eth0}");
    assert_eq!(eth0["mtu"], 1400, "{eth0}");
    assert!(
        eth0["flags"].as_array().unwrap().contains(&json!("UP")),
        "{eth0}"
    );
    assert_eq!(eth0["operstate"], "UP", "{eth0}");
    assert!(addresses(lab.pod.name(), "eth0").contains(&"10.0.1.70/24".to_string()));
    let routes = ip_json(&["-n", lab.pod.name(), "route", "show"]);
    let has = |dst: &str, gw: &str| {
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == dst && r["gateway"] == gw && r["dev"] == "eth0")
    };
    assert!(has("default", "10.0.1.1"), "{routes}");
    assert!(has("10.96.0.0/12", "10.0.1.1"), "{routes}");
    assert_eq!(
        link(lab.host.name(), &lab.vf.vf),
        Value::Null,
        "VF still on the host"
    );

    // What the agent was asked for.
    {
        let s = lab.agent.state();
        let req = &s.attach_requests[0];
        assert_eq!(req.pod_namespace, "default");
        assert_eq!(req.pod_name, "web-0");
        assert_eq!(req.subnet, "blue-a");
        assert_eq!(req.network, "dpu-net");
        assert_eq!(req.labels[0].key, "app");
        assert_eq!(req.labels[0].value, "web");
    }

    let check = lab.run("CHECK", "c1", &lab.with_prev(&result));
    assert_eq!(check.code, 0, "CHECK: {}\n{}", check.json, check.stderr);
    assert_eq!(check.json, Value::Null, "CHECK prints nothing on success");

    let del = lab.run("DEL", "c1", &lab.with_prev(&result));
    assert_eq!(del.code, 0, "DEL: {}\n{}", del.json, del.stderr);
    assert_eq!(del.json, Value::Null);
    lab.assert_vf_home();
    assert_eq!(
        lab.agent.state().detached,
        [("c1".to_string(), "eth0".to_string())]
    );

    // DEL again, and without prevResult: still success.
    let again = lab.run("DEL", "c1", &lab.config());
    assert_eq!(
        again.code, 0,
        "second DEL: {}\n{}",
        again.json, again.stderr
    );
    lab.assert_vf_home();
}

#[test]
fn check_names_the_address_that_went_missing() {
    let lab = Lab::standard();
    let result = lab.add("c1");
    let ok = lab.run("CHECK", "c1", &lab.with_prev(&result));
    assert_eq!(ok.code, 0, "{}", ok.json);

    ip(&[
        "-n",
        lab.pod.name(),
        "addr",
        "del",
        "10.0.1.70/24",
        "dev",
        "eth0",
    ]);
    let drift = lab.run("CHECK", "c1", &lab.with_prev(&result));
    assert_eq!(drift.error_code(), 100, "{}", drift.json);
    assert!(
        drift.msg().contains("address 10.0.1.70/24 missing on eth0"),
        "{}",
        drift.json
    );

    ip(&["-n", lab.pod.name(), "link", "set", "eth0", "down"]);
    let down = lab.run("CHECK", "c1", &lab.with_prev(&result));
    assert!(down.msg().contains("eth0 is down"), "{}", down.json);

    // CHECK without prevResult is a config error.
    assert_eq!(lab.run("CHECK", "c1", &lab.config()).error_code(), 7);
}

#[test]
fn del_succeeds_when_the_netns_is_gone() {
    let lab = Lab::standard();
    lab.add("c1");
    // The pod's netns disappears (a reboot, or the runtime cleaned up first).
    ip(&["netns", "del", lab.pod.name()]);
    let out = lab.run("DEL", "c1", &lab.config());
    assert_eq!(out.code, 0, "{}\n{}", out.json, out.stderr);
    assert_eq!(
        lab.agent.state().detached,
        [("c1".to_string(), "eth0".to_string())]
    );
    // And with no CNI_NETNS at all.
    let out = shim(
        &Invocation {
            command: "DEL",
            container_id: "c1",
            ifname: "eth0",
            netns: None,
            run_in: Some(lab.host.name()),
            timed: false,
        },
        &lab.config(),
    );
    assert_eq!(out.code, 0, "{}\n{}", out.json, out.stderr);
}

#[test]
fn del_succeeds_when_the_interface_is_gone() {
    let lab = Lab::standard();
    lab.add("c1");
    ip(&["-n", lab.pod.name(), "link", "del", "eth0"]);
    let out = lab.run("DEL", "c1", &lab.config());
    assert_eq!(out.code, 0, "{}\n{}", out.json, out.stderr);
    assert_eq!(lab.agent.state().detached.len(), 1);
    assert!(lab.agent.state().attachments.is_empty());
}

#[test]
fn del_with_the_agent_unreachable_is_try_again_later() {
    let lab = Lab::standard();
    lab.add("c1");
    let port = bind_in(Some(lab.host.name())).local_addr().unwrap().port();
    let cfg = lab.config_at(&format!("https://127.0.0.1:{port}"));
    let out = lab.run("DEL", "c1", &cfg);
    assert_eq!(out.error_code(), 11, "{}", out.json);
    // Nothing was touched: the pod keeps its interface until the agent is back.
    assert!(!link(lab.pod.name(), "eth0").is_null());
    let out = lab.run("DEL", "c1", &lab.config());
    assert_eq!(out.code, 0, "{}", out.json);
    lab.assert_vf_home();
}

#[test]
fn add_with_the_agent_unreachable_leaves_the_vf_where_it_was() {
    let lab = Lab::standard();
    let port = bind_in(Some(lab.host.name())).local_addr().unwrap().port();
    let cfg = lab.config_at(&format!("https://127.0.0.1:{port}"));
    let out = lab.run("ADD", "c1", &cfg);
    assert_eq!(out.error_code(), 11, "{}", out.json);
    assert_ne!(out.code, 0);
    assert!(out.msg().contains("unreachable"), "{}", out.json);
    let vf = link(lab.host.name(), &lab.vf.vf);
    assert_eq!(vf["address"], lab.original_mac.as_str(), "{vf}");
    assert_eq!(link(lab.pod.name(), "eth0"), Value::Null);
}

#[test]
fn a_failure_after_attach_is_undone() {
    // A route whose next hop is not on any connected network: the kernel refuses it
    // after the VF is already in the pod with its address.
    let lab = Lab::new(|vf| {
        let mut t = template(vf);
        t.routes.push(dpu_proto::v1::Route {
            dst: "10.200.0.0/16".into(),
            gw: "192.168.77.1".into(),
        });
        FakeState {
            template: t,
            ready: true,
            ..Default::default()
        }
    });
    ip(&["-n", lab.host.name(), "link", "set", &lab.vf.vf, "up"]);
    let out = lab.run("ADD", "c1", &lab.config());
    assert_eq!(out.error_code(), 102, "{}", out.json);
    assert!(out.msg().contains("10.200.0.0/16"), "{}", out.json);

    lab.assert_vf_home();
    let vf = link(lab.host.name(), &lab.vf.vf);
    assert_eq!(
        vf["address"],
        lab.original_mac.as_str(),
        "MAC restored: {vf}"
    );
    assert_eq!(vf["mtu"], 1500, "MTU restored: {vf}");
    assert!(
        vf["flags"].as_array().unwrap().contains(&json!("UP")),
        "state restored: {vf}"
    );
    let leftovers = ip_json(&["-n", lab.pod.name(), "link", "show"]);
    assert_eq!(
        leftovers.as_array().unwrap().len(),
        1,
        "only lo: {leftovers}"
    );
    let s = lab.agent.state();
    assert_eq!(s.detached, [("c1".to_string(), "eth0".to_string())]);
    assert!(s.attachments.is_empty());
}

#[test]
fn add_refuses_an_interface_name_already_in_the_pod() {
    let lab = Lab::standard();
    // No dummy module on these machines; a veth pair inside the pod will do.
    ip(&[
        "-n",
        lab.pod.name(),
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0peer",
    ]);
    let out = lab.run("ADD", "c1", &lab.config());
    assert_eq!(out.error_code(), 104, "{}", out.json);
    assert!(lab.agent.state().attach_requests.is_empty());
    assert!(!link(lab.host.name(), &lab.vf.vf).is_null());
}

#[test]
fn gc_detaches_only_attachments_the_runtime_no_longer_lists() {
    let lab = Lab::new(|vf| {
        let mut state = FakeState {
            template: template(vf),
            ready: true,
            ..Default::default()
        };
        for (cid, ifname, subnet) in [
            ("c1", "eth0", "blue-a"),
            ("c2", "eth0", "blue-a"),
            ("c3", "net1", "blue-a"),
            ("c4", "eth0", "red"),
        ] {
            let mut a = template(vf);
            a.key = Some(dpu_proto::v1::AttachmentKey {
                container_id: cid.into(),
                ifname: ifname.into(),
            });
            a.subnet = subnet.into();
            state.attachments.insert((cid.into(), ifname.into()), a);
        }
        state
    });
    let mut cfg = lab.config();
    cfg["cni.dev/valid-attachments"] =
        json!([{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c3", "ifname": "net1"}]);
    let out = shim(
        &Invocation {
            command: "GC",
            run_in: Some(lab.host.name()),
            ..Default::default()
        },
        &cfg,
    );
    assert_eq!(out.code, 0, "{}\n{}", out.json, out.stderr);
    let s = lab.agent.state();
    // c4 belongs to another network (subnet "red") and is left to that network's GC.
    assert_eq!(s.detached, [("c2".to_string(), "eth0".to_string())]);
    assert_eq!(s.attachments.len(), 3);
}

#[test]
fn status_reports_ready_and_not_ready() {
    let lab = Lab::standard();
    let status = Invocation {
        command: "STATUS",
        run_in: Some(lab.host.name()),
        ..Default::default()
    };
    let out = shim(&status, &lab.config());
    assert_eq!(out.code, 0, "{}\n{}", out.json, out.stderr);
    assert_eq!(out.json, Value::Null);

    {
        let mut s = lab.agent.state();
        s.ready = false;
        s.not_ready_reason = "no free VF".into();
    }
    let out = shim(&status, &lab.config());
    assert_eq!(out.error_code(), 51, "{}", out.json);
    assert!(out.msg().contains("no free VF"), "{}", out.json);
}

/// A host interface that is not a VF: a veth pair inside the host netns (both ends),
/// up, with an address, like the host's management link. Goes with the host netns.
fn management_link(lab: &Lab) -> String {
    let mgmt = format!("{}mgmt", lab.prefix);
    let peer = format!("{}mgmp", lab.prefix);
    let host = lab.host.name();
    ip(&[
        "-n", host, "link", "add", &mgmt, "type", "veth", "peer", "name", &peer,
    ]);
    ip(&["-n", host, "addr", "add", "192.168.250.1/24", "dev", &mgmt]);
    ip(&["-n", host, "link", "set", &peer, "up"]);
    ip(&["-n", host, "link", "set", &mgmt, "up"]);
    mgmt
}

/// What must not change on a refused interface: index, name, MAC, MTU, flags,
/// addresses.
fn fingerprint(ns: &str, dev: &str) -> Value {
    let l = link(ns, dev);
    assert!(!l.is_null(), "{dev} is not in {ns}");
    json!({
        "ifindex": l["ifindex"], "ifname": l["ifname"], "address": l["address"],
        "mtu": l["mtu"], "flags": l["flags"], "addrs": addresses(ns, dev),
    })
}

/// Asserts the refusal left everything as it was: the interface, the VF, an empty
/// pod, and the attachment released.
fn assert_refused_and_untouched(lab: &Lab, out: &ShimRun, mgmt: &str, before: &Value) {
    assert_eq!(
        fingerprint(lab.host.name(), mgmt),
        *before,
        "{mgmt} changed on the host"
    );
    let pod_links = ip_json(&["-n", lab.pod.name(), "link", "show"]);
    assert_eq!(
        pod_links.as_array().unwrap().len(),
        1,
        "only lo in the pod: {pod_links}"
    );
    assert_eq!(
        link(lab.host.name(), &lab.vf.vf)["address"],
        lab.original_mac.as_str(),
        "the real VF was touched"
    );
    let s = lab.agent.state();
    assert_eq!(s.attach_requests.len(), 1, "{}", out.json);
    assert_eq!(s.detached, [("c1".to_string(), "eth0".to_string())]);
    assert!(s.attachments.is_empty(), "the attachment is released");
}

#[test]
fn add_refuses_a_host_interface_that_is_not_in_the_allow_list() {
    // The agent names the host's management link as the VF (`vf = "mgmt0"`).
    let lab = Lab::standard();
    let mgmt = management_link(&lab);
    lab.agent.state().template.vf = mgmt.clone();
    let before = fingerprint(lab.host.name(), &mgmt);

    let out = lab.run("ADD", "c1", &lab.config());
    assert_eq!(out.error_code(), 106, "{}\n{}", out.json, out.stderr);
    assert_eq!(out.code, 106);
    assert_eq!(
        out.json["msg"],
        format!("the DPU agent named a netdev that is not an allowed VF: {mgmt}")
    );
    let details = out.json["details"].as_str().unwrap();
    assert!(
        details.contains(&format!(
            "{mgmt} is not in the network config's vfAllowList"
        )),
        "{details}"
    );
    assert!(details.contains(&lab.vf.vf), "the list is shown: {details}");
    assert!(details.contains("nothing was moved"), "{details}");
    assert_refused_and_untouched(&lab, &out, &mgmt, &before);

    // The runtime's DEL that follows a failed ADD finds nothing to do.
    let del = lab.run("DEL", "c1", &lab.config());
    assert_eq!(del.code, 0, "{}", del.json);
    assert_eq!(fingerprint(lab.host.name(), &mgmt), before);
}

#[test]
fn add_with_a_pf_refuses_a_netdev_that_is_not_its_vf() {
    // The hardware config: "pf" and no list. Neither netdev in the host netns is an
    // SR-IOV VF (sysfs has no `device/physfn` for a veth), so the management link
    // the agent names is refused.
    let lab = Lab::standard();
    let mgmt = management_link(&lab);
    lab.agent.state().template.vf = mgmt.clone();
    let before = fingerprint(lab.host.name(), &mgmt);
    let mut cfg = config(&lab.pki, &lab.agent.url);
    cfg["pf"] = json!(lab.vf.vf);

    let out = lab.run("ADD", "c1", &cfg);
    assert_eq!(out.error_code(), 106, "{}\n{}", out.json, out.stderr);
    let details = out.json["details"].as_str().unwrap();
    assert!(
        details.contains(&format!("refusing to move {mgmt} into the pod")),
        "{details}"
    );
    assert!(
        details.contains(&format!("against PF {}", lab.vf.vf)),
        "{details}"
    );
    assert_refused_and_untouched(&lab, &out, &mgmt, &before);
}

#[test]
fn add_without_a_pf_or_an_allow_list_is_refused_before_the_agent_is_asked() {
    let lab = Lab::standard();
    let cfg = config(&lab.pki, &lab.agent.url);
    let out = lab.run("ADD", "c1", &cfg);
    assert_eq!(out.error_code(), 7, "{}", out.json);
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap()
            .contains("pf or vfAllowList"),
        "{}",
        out.json
    );
    assert!(lab.agent.state().attach_requests.is_empty());
    lab.assert_vf_home();
    assert_eq!(
        link(lab.host.name(), &lab.vf.vf)["address"],
        lab.original_mac.as_str()
    );
}
