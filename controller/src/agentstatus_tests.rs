//! Tests of `agentstatus`: conversion, the bounds, refusing a Status whole, and
//! loading a `status.json` written before the new fields existed. `sample` is
//! also the fixture of the status views' tests.

use super::*;
use crate::status::{read_status, StatusHandle};

/// A Status as an agent sends it: two Services, one backend unhealthy.
pub(crate) fn pb_status() -> pb::Status {
    let backend = |ip: &str, workload: &str, state: &str, conns: u64| pb::BackendStatus {
        vpc: "blue".into(),
        ip: ip.into(),
        workload: workload.into(),
        weight: 1,
        state: state.into(),
        new_connections: conns,
        bytes: conns * 1000,
    };
    pb::Status {
        applied_version: 7,
        flows: 120,
        groups: 4,
        pending_ports: vec![],
        desired_version: 8,
        services: 3,
        unhealthy: vec![pb::BackendRef {
            vpc: "blue".into(),
            ip: "10.1.1.11".into(),
        }],
        last_error: String::new(),
        reconciles: 42,
        nacks: 1,
        facts: Some(pb::DpuFacts {
            cpu_percent: 12.4,
            cpus: 8,
            mem_total_bytes: 16 << 30,
            mem_used_bytes: 3 << 30,
            agent_cpu_percent: 1.5,
            agent_rss_bytes: 45 << 20,
            datapath_flows: 1200,
            offloaded_flows: 800,
        }),
        counters: Some(pb::CounterSummary {
            new_connections: 1500,
            packets: 90_000,
            bytes: 12 << 20,
        }),
        service_status: vec![
            pb::ServiceStatus {
                name: "web".into(),
                vips: vec!["10.96.0.10".into(), "fd00::10".into()],
                backends: 3,
                serving: 2,
                backend_status: vec![
                    backend("10.1.1.11", "web-1", "unhealthy", 0),
                    backend("10.1.1.10", "web-2", "serving", 700),
                    backend("10.1.2.10", "", "serving", 800),
                ],
                new_connections: 1500,
                packets: 80_000,
                bytes: 1_500_000,
            },
            pb::ServiceStatus {
                name: "db".into(),
                vips: vec!["10.96.0.20".into()],
                backends: 1,
                serving: 1,
                backend_status: vec![backend("10.1.1.20", "db-1", "serving", 0)],
                new_connections: 0,
                packets: 0,
                bytes: 0,
            },
        ],
        services_omitted: 1,
    }
}

/// `pb_status` as recorded at `at`.
pub(crate) fn sample(at: &str) -> AgentStatus {
    AgentStatus::from_proto(pb_status(), at.to_string()).unwrap()
}

#[test]
fn converts_every_field() {
    let a = sample("T");
    assert_eq!((a.applied_version, a.desired_version), (7, 8));
    assert_eq!((a.flows, a.groups, a.services), (120, 4, 3));
    assert_eq!(
        a.unhealthy,
        [BackendRef {
            vpc: "blue".into(),
            ip: "10.1.1.11".into()
        }]
    );
    assert_eq!(a.last_error, None);
    assert_eq!((a.reconciles, a.nacks, a.services_omitted), (42, 1, 1));
    let f = a.facts.as_ref().unwrap();
    assert_eq!(
        (f.cpu_percent, f.cpus, f.mem_used_bytes),
        (12.4, 8, 3 << 30)
    );
    assert_eq!((f.datapath_flows, f.offloaded_flows), (1200, 800));
    assert_eq!(a.counters.as_ref().unwrap().packets, 90_000);
    let web = a.service("web").unwrap();
    assert_eq!(web.vips, ["10.96.0.10", "fd00::10"]);
    assert_eq!((web.backends, web.serving, web.bytes), (3, 2, 1_500_000));
    assert_eq!(web.backend_status[0].state, "unhealthy");
    assert_eq!(web.backend_status[1].workload, "web-2");
    assert!(a.service("nope").is_none());

    let mut s = pb_status();
    s.last_error = "reconcile: ovs-vswitchd is not running".into();
    s.facts = None;
    let a = AgentStatus::from_proto(s, "T".into()).unwrap();
    assert_eq!(
        a.last_error.as_deref(),
        Some("reconcile: ovs-vswitchd is not running")
    );
    assert_eq!(a.facts, None);
}

fn refused(edit: impl FnOnce(&mut pb::Status)) -> String {
    let mut s = pb_status();
    edit(&mut s);
    AgentStatus::from_proto(s, "T".into())
        .unwrap_err()
        .to_string()
}

#[test]
fn each_bound_names_its_field() {
    assert_eq!(
        refused(|s| {
            let one = s.service_status[1].clone();
            s.service_status = vec![one; 300];
        }),
        "Status.service_status: 300 entries, at most 256"
    );
    assert_eq!(
        refused(|s| {
            let one = s.service_status[1].backend_status[0].clone();
            s.service_status[1].backend_status = vec![one; 65];
        }),
        "Status.service_status[1].backend_status: 65 entries, at most 64"
    );
    assert_eq!(
        refused(|s| s.service_status[0].backend_status[2].workload = "w".repeat(300)),
        "Status.service_status[0].backend_status[2].workload: 300 bytes long, at most 253"
    );
    assert_eq!(
        refused(|s| s.service_status[0].name = "n".repeat(254)),
        "Status.service_status[0].name: 254 bytes long, at most 253"
    );
    assert_eq!(
        refused(|s| s.service_status[1].vips = vec!["10.96.0.1".into(); 17]),
        "Status.service_status[1].vips: 17 entries, at most 16"
    );
    assert_eq!(
        refused(|s| s.service_status[1].vips[0] = "1".repeat(65)),
        "Status.service_status[1].vips[0]: 65 bytes long, at most 64"
    );
    assert_eq!(
        refused(|s| s.service_status[0].backend_status[0].state = "s".repeat(33)),
        "Status.service_status[0].backend_status[0].state: 33 bytes long, at most 32"
    );
    assert_eq!(
        refused(|s| s.last_error = "e".repeat(5000)),
        "Status.last_error: 5000 bytes long, at most 4096"
    );
    assert_eq!(
        refused(|s| s.unhealthy[0].ip = "x".repeat(100)),
        "Status.unhealthy[0].ip: 100 bytes long, at most 64"
    );
    assert_eq!(
        refused(|s| s.pending_ports = vec!["p".repeat(254)]),
        "Status.pending_ports[0]: 254 bytes long, at most 253"
    );
    assert_eq!(
        refused(|s| s.facts.as_mut().unwrap().cpu_percent = f64::NAN),
        "Status.facts.cpu_percent: NaN is not a finite, non-negative percentage"
    );
    assert_eq!(
        refused(|s| s.facts.as_mut().unwrap().cpu_percent = f64::INFINITY),
        "Status.facts.cpu_percent: inf is not a finite, non-negative percentage"
    );
    assert_eq!(
        refused(|s| s.facts.as_mut().unwrap().agent_cpu_percent = -0.5),
        "Status.facts.agent_cpu_percent: -0.5 is not a finite, non-negative percentage"
    );
    // At the limits exactly: accepted.
    let mut s = pb_status();
    let one = s.service_status[1].clone();
    s.service_status = vec![one; MAX_SERVICE_STATUS];
    let b = s.service_status[0].backend_status[0].clone();
    s.service_status[0].backend_status = vec![b; MAX_BACKEND_STATUS];
    s.last_error = "e".repeat(MAX_STATUS_ERROR_LEN);
    s.facts.as_mut().unwrap().agent_cpu_percent = 0.0;
    assert!(AgentStatus::from_proto(s, "T".into()).is_ok());
}

#[test]
fn a_refused_status_keeps_the_previous_one_and_a_good_one_clears_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let h = StatusHandle::new(dir.path());
    h.record_agent_status("dpu-1", pb_status()).unwrap();
    let before = h.snapshot().nodes["dpu-1"].agent_status.clone().unwrap();

    let mut big = pb_status();
    big.applied_version = 99;
    let one = big.service_status[1].clone();
    big.service_status = vec![one; 300];
    let e = h.record_agent_status("dpu-1", big).unwrap_err();
    let n = h.snapshot().nodes["dpu-1"].clone();
    assert_eq!(
        n.agent_status.as_ref(),
        Some(&before),
        "nothing of it is kept"
    );
    let why = "Status.service_status: 300 entries, at most 256";
    assert_eq!(e.to_string(), why);
    assert_eq!(n.last_error.as_deref(), Some(why));
    assert_eq!(n.refused_status.as_deref(), Some(why));

    let mut nan = pb_status();
    nan.applied_version = 98;
    nan.facts.as_mut().unwrap().cpu_percent = f64::NAN;
    h.record_agent_status("dpu-1", nan).unwrap_err();
    let n = h.snapshot().nodes["dpu-1"].clone();
    assert_eq!(n.agent_status.as_ref().unwrap().applied_version, 7);
    assert!(n
        .last_error
        .unwrap()
        .starts_with("Status.facts.cpu_percent: NaN"));
    // The document still writes and loads (no NaN in it).
    h.write_now().unwrap();
    assert_eq!(read_status(dir.path()).unwrap(), h.snapshot());

    let mut good = pb_status();
    good.applied_version = 8;
    h.record_agent_status("dpu-1", good).unwrap();
    let n = h.snapshot().nodes["dpu-1"].clone();
    assert_eq!(n.agent_status.unwrap().applied_version, 8);
    assert_eq!((n.last_error, n.refused_status), (None, None));

    // An error the session recorded later is not the refused Status's to clear.
    h.record_agent_status("dpu-1", {
        let mut s = pb_status();
        s.last_error = "e".repeat(5000);
        s
    })
    .unwrap_err();
    h.update_node("dpu-1", |n| {
        n.last_error = Some("NACK of version 9: x".into())
    });
    h.record_agent_status("dpu-1", pb_status()).unwrap();
    let n = h.snapshot().nodes["dpu-1"].clone();
    assert_eq!(n.last_error.as_deref(), Some("NACK of version 9: x"));
    assert_eq!(n.refused_status, None);
}

#[test]
fn an_old_status_json_still_loads() {
    let old = r#"{
  "controller_pid": 1234,
  "intent_version": 3,
  "last_reload": "2025-01-01T00:00:00Z",
  "last_reload_ok": true,
  "intent_errors": [],
  "intent_error_lines": [],
  "nodes": {
    "dpu-1": {
      "connected": true, "connected_since": "2025-01-01T00:00:00Z", "disconnected_at": null,
      "peer": "127.0.0.1:40000", "agent_version": "0.1.0",
      "hello_version": 0, "sent_version": 3, "applied_version": 3,
      "nack_pending": false, "last_nack": null, "last_error": null,
      "agent_status": {"applied_version": 3, "flows": 120, "groups": 4,
                       "pending_ports": ["p"], "at": "2025-01-01T00:00:01Z"},
      "reported_workloads": 1,
      "reported_errors": []
    }
  }
}
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(crate::status::STATUS_FILE), old).unwrap();
    let doc = read_status(dir.path()).unwrap();
    let n = &doc.nodes["dpu-1"];
    assert_eq!(n.refused_status, None);
    let a = n.agent_status.as_ref().unwrap();
    assert_eq!((a.applied_version, a.flows, a.groups), (3, 120, 4));
    assert_eq!(a.pending_ports, ["p"]);
    assert_eq!(
        (a.desired_version, a.services, a.reconciles, a.nacks),
        (0, 0, 0, 0)
    );
    assert!(a.unhealthy.is_empty() && a.service_status.is_empty());
    assert_eq!(
        (&a.facts, &a.counters, &a.last_error),
        (&None, &None, &None)
    );
}

#[test]
fn a_full_status_round_trips_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let h = StatusHandle::new(dir.path());
    h.record_agent_status("dpu-1", pb_status()).unwrap();
    h.write_now().unwrap();
    assert_eq!(read_status(dir.path()).unwrap(), h.snapshot());
}
