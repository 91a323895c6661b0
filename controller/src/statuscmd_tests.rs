//! Tests of `statuscmd`: the fleet table, the drill-in lookups and their errors.

use super::*;
use crate::agentstatus::tests::sample;
use crate::status::NackRecord;

/// 2026-11-26T05:00:00Z.
pub(crate) const NOW: i64 = 1_795_669_200;

/// dpu-1 connected and current; dpu-2 disconnected 50 minutes ago with its last
/// values; dpu-3 connected but silent.
pub(crate) fn fleet() -> StatusDoc {
    let mut doc = StatusDoc {
        controller_pid: 1,
        intent_version: 8,
        last_reload: Some("2026-11-26T04:00:00Z".into()),
        last_reload_ok: true,
        ..StatusDoc::default()
    };
    doc.nodes.insert(
        "dpu-1".into(),
        NodeStatus {
            connected: true,
            connected_since: Some("2026-11-26T04:30:00Z".into()),
            peer: Some("10.0.0.1:40000".into()),
            agent_version: "0.1.0".into(),
            sent_version: 8,
            applied_version: 7,
            agent_status: Some(sample("2026-11-26T04:59:48Z")),
            reported_workloads: 2,
            ..NodeStatus::default()
        },
    );
    let mut old = sample("2026-11-26T04:09:55Z");
    old.services = 2;
    old.services_omitted = 0;
    (old.applied_version, old.desired_version) = (6, 6);
    old.unhealthy.clear();
    old.last_error = Some("reconcile: the bridge is gone".into());
    doc.nodes.insert(
        "dpu-2".into(),
        NodeStatus {
            connected: false,
            connected_since: Some("2026-11-26T03:00:00Z".into()),
            disconnected_at: Some("2026-11-26T04:10:00Z".into()),
            sent_version: 6,
            applied_version: 6,
            agent_status: Some(old),
            reported_workloads: 1,
            reported_errors: vec!["Workload/p: spec.node: not here".into()],
            ..NodeStatus::default()
        },
    );
    doc.nodes.insert(
        "dpu-3".into(),
        NodeStatus {
            connected: true,
            connected_since: Some("2026-11-26T04:58:00Z".into()),
            sent_version: 8,
            applied_version: 3,
            nack_pending: true,
            last_nack: Some(NackRecord {
                version: 8,
                at: "2026-11-26T04:58:01Z".into(),
                errors: vec!["Vpc/a: spec.vni: bad".into()],
            }),
            ..NodeStatus::default()
        },
    );
    doc
}

fn table(doc: &StatusDoc) -> String {
    render(doc, true, &Query::default(), NOW).unwrap()
}

const TABLE: &str = "\
controller: running (pid 1)
intent version: 8 (last reload 2026-11-26T04:00:00Z: ok)
NODE   CONNECTED                         APPLIED  SERVICES  UNHEALTHY  CPU     MEM        PODS           LAST ERROR
dpu-1  yes (since 2026-11-26T04:30:00Z)  7/8      3         1          12.4%   3.0G/16G   2              -
dpu-2  no (since 2026-11-26T04:10:00Z)   6        2*        0*         12.4%*  3.0G/16G*  1 (1 dropped)  agent: reconcile: the bridge is gone
dpu-3  yes (since 2026-11-26T04:58:00Z)  3/8      -         -          -       -          0              NACK v8: Vpc/a: spec.vni: bad
* last known values:
  dpu-2: disconnected; last status 50m 5s ago, at 2026-11-26T04:09:55Z
reported workloads dropped:
  dpu-2: Workload/p: spec.node: not here
";

#[test]
fn table_shows_connected_and_disconnected_nodes() {
    assert_eq!(table(&fleet()), TABLE);
}

#[test]
fn a_connected_node_that_stopped_reporting_is_stale_too() {
    let mut doc = fleet();
    doc.nodes.retain(|name, _| name == "dpu-1");
    let n = doc.nodes.get_mut("dpu-1").unwrap();
    n.agent_status.as_mut().unwrap().at = "2026-11-26T04:55:00Z".into();
    n.last_error = Some("Status.service_status: 300 entries, at most 256".into());
    let t = render(&doc, false, &Query::default(), NOW).unwrap();
    assert!(
        t.starts_with("controller not running (pid 1 is gone)"),
        "{t}"
    );
    assert!(t.contains("  7/8      3*        1*         12.4%*  3.0G/16G*  2     Status.service_status: 300 entries, at most 256\n"), "{t}");
    assert!(t.ends_with("* last known values:\n  dpu-1: connected, but no status since 5m 0s ago, at 2026-11-26T04:55:00Z\n"), "{t}");
}

#[test]
fn table_without_nodes_or_with_intent_errors() {
    let doc = StatusDoc::default();
    assert_eq!(
        table(&doc),
        "controller: running (pid 0)\nintent version: 0 (last reload never: refused)\nno node has connected\n"
    );
}

#[test]
fn json_is_the_document_the_node_or_the_service() {
    let doc = fleet();
    let json = |node: Option<&str>, service: Option<&str>| -> serde_json::Value {
        let q = Query {
            node: node.map(String::from),
            service: service.map(String::from),
            json: true,
        };
        serde_json::from_str(&render(&doc, false, &q, NOW).unwrap()).unwrap()
    };
    let all = json(None, None);
    assert_eq!(all["controller_running"], false);
    assert_eq!(all["nodes"]["dpu-1"]["agent_status"]["facts"]["cpus"], 8);
    let node = json(Some("dpu-2"), None);
    assert_eq!(node["connected"], false);
    assert_eq!(node["agent_status"]["services"], 2);
    let web = json(Some("dpu-1"), Some("web"));
    assert_eq!(web["serving"], 2);
    assert_eq!(web["backend_status"][0]["state"], "unhealthy");
}

#[test]
fn drill_in_errors_name_what_is_missing() {
    let doc = fleet();
    let err = |node: &str, service: Option<&str>| {
        let q = Query {
            node: Some(node.into()),
            service: service.map(String::from),
            json: false,
        };
        render(&doc, true, &q, NOW).unwrap_err().to_string()
    };
    assert_eq!(
        err("dpu-9", None),
        "node dpu-9 is not in status.json (known: dpu-1, dpu-2, dpu-3)"
    );
    assert_eq!(
        render(
            &StatusDoc::default(),
            true,
            &Query {
                node: Some("dpu-1".into()),
                ..Query::default()
            },
            NOW
        )
        .unwrap_err()
        .to_string(),
        "node dpu-1 is not in status.json (no node has connected)"
    );
    assert_eq!(
        err("dpu-1", Some("api")),
        "Service api is not in the last Status of node dpu-1 (2 of 3 Services listed; the agent lists at most 256, those with a backend not serving first, then the busiest); `dpu-agent show service api` on the DPU shows any Service"
    );
    assert_eq!(
        err("dpu-3", Some("web")),
        "node dpu-3 has sent no Status yet; `dpu-agent show service web` on the DPU shows any Service"
    );
}

#[test]
fn own_pid_is_alive() {
    assert!(pid_alive(std::process::id()));
    assert!(!pid_alive(0));
}
