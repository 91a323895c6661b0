//! `dpu-controller status` end to end: an agent's Status with DPU facts,
//! counters and per-Service status reaches `status.json`, the fleet table and the
//! drill-in views; an oversized Status is refused without ending the session.

mod common;

use common::*;
use dpu_proto::v1 as pb;
use pb::agent_message::Msg;

fn status_msg(applied: u64, services: usize) -> pb::AgentMessage {
    let web = pb::ServiceStatus {
        name: "web".into(),
        vips: vec!["10.96.0.10".into()],
        backends: 2,
        serving: 1,
        backend_status: vec![
            pb::BackendStatus {
                vpc: "blue".into(),
                ip: "10.1.1.11".into(),
                workload: "web-2".into(),
                weight: 1,
                state: "unhealthy".into(),
                new_connections: 0,
                bytes: 0,
            },
            pb::BackendStatus {
                vpc: "blue".into(),
                ip: "10.1.1.10".into(),
                workload: "web-1".into(),
                weight: 1,
                state: "serving".into(),
                new_connections: 77,
                bytes: 5000,
            },
        ],
        new_connections: 77,
        packets: 400,
        bytes: 5000,
    };
    pb::AgentMessage {
        msg: Some(Msg::Status(pb::Status {
            applied_version: applied,
            flows: 40,
            groups: 1,
            desired_version: applied,
            services: 1,
            unhealthy: vec![pb::BackendRef {
                vpc: "blue".into(),
                ip: "10.1.1.11".into(),
            }],
            reconciles: 3,
            facts: Some(pb::DpuFacts {
                cpu_percent: 7.5,
                cpus: 8,
                mem_total_bytes: 16 << 30,
                mem_used_bytes: 2 << 30,
                agent_cpu_percent: 0.5,
                agent_rss_bytes: 30 << 20,
                datapath_flows: 12,
                offloaded_flows: 10,
            }),
            counters: Some(pb::CounterSummary {
                new_connections: 77,
                packets: 400,
                bytes: 5000,
            }),
            service_status: vec![web; services],
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_status_reaches_the_table_and_the_drill_in() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let ca = lab.read("ca.pem");
    let id = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let ch = channel(server.port, &ca, id).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    agent.ack(snap.version, &snap.nonce).await;
    let v = snap.version;

    agent.tx.send(status_msg(v, 1)).await.unwrap();
    let st = lab.wait_status("the agent's status", |st| {
        node(st, "dpu-1")["agent_status"]["services"] == 1
    });
    let a = &node(&st, "dpu-1")["agent_status"];
    assert_eq!(a["facts"]["cpu_percent"], 7.5, "{st:#}");
    assert_eq!(a["facts"]["offloaded_flows"], 10);
    assert_eq!(a["counters"]["new_connections"], 77);
    assert_eq!(a["unhealthy"][0]["ip"], "10.1.1.11");
    assert_eq!(
        a["service_status"][0]["backend_status"][1]["workload"],
        "web-1"
    );

    let state = s(&lab.state);
    let table = cli_ok(&["status", "--state-dir", state]);
    assert!(table.contains("NODE   CONNECTED  "), "{table}");
    let row = table.lines().find(|l| l.starts_with("dpu-1")).unwrap();
    for cell in [
        format!("  {v}  "),
        "  1  ".into(),
        "7.5%".into(),
        "2.0G/16G".into(),
    ] {
        assert!(row.contains(&cell), "{cell:?} not in {row:?}\n{table}");
    }
    let view = cli_ok(&["status", "--state-dir", state, "--node", "dpu-1"]);
    assert!(view.contains("DPU CPU:         7.5% of 8 CPUs\n"), "{view}");
    assert!(
        view.contains("datapath flows:  12 total, 10 offloaded\n"),
        "{view}"
    );
    assert!(
        view.contains("unhealthy backends: 1\n  blue 10.1.1.11\n"),
        "{view}"
    );
    assert!(
        view.contains("\nweb      10.96.0.10  1/2      77         4.9K\n"),
        "{view}"
    );
    let web = cli_ok(&[
        "status",
        "--state-dir",
        state,
        "--node",
        "dpu-1",
        "--service",
        "web",
    ]);
    assert!(
        web.contains("\nblue  10.1.1.11  web-2     1       unhealthy  0          0B\n"),
        "{web}"
    );

    // Usage and lookup errors.
    let out = cli(&["status", "--state-dir", state, "--service", "web"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&["status", "--state-dir", state, "--node", "dpu-9"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node dpu-9 is not in status.json (known: dpu-1)"),
        "{err}"
    );
    let out = cli(&[
        "status",
        "--state-dir",
        state,
        "--node",
        "dpu-1",
        "--service",
        "api",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`dpu-agent show service api` on the DPU"),
        "{err}"
    );

    // Too many Services: refused whole, the session goes on, the field is named.
    agent.tx.send(status_msg(v + 100, 300)).await.unwrap();
    let st = lab.wait_status("the refused status", |st| {
        node(st, "dpu-1")["last_error"] == "Status.service_status: 300 entries, at most 256"
    });
    assert_eq!(node(&st, "dpu-1")["agent_status"]["applied_version"], v);
    assert_eq!(node(&st, "dpu-1")["connected"], true);
    agent.tx.send(status_msg(v, 2)).await.unwrap();
    let st = lab.wait_status("a good status again", |st| {
        node(st, "dpu-1")["agent_status"]["service_status"]
            .as_array()
            .is_some_and(|s| s.len() == 2)
    });
    assert_eq!(node(&st, "dpu-1")["last_error"], serde_json::Value::Null);

    // Disconnected: not connected, the last values marked as last known.
    drop(agent);
    lab.wait_status("dpu-1 disconnected", |st| {
        node(st, "dpu-1")["connected"] == false
    });
    let table = cli_ok(&["status", "--state-dir", state]);
    let row = table.lines().find(|l| l.starts_with("dpu-1")).unwrap();
    assert!(row.contains(" no (since "), "{table}");
    assert!(row.contains("7.5%*"), "{table}");
    assert!(
        table.contains("* last known values:\n  dpu-1: disconnected; last status "),
        "{table}"
    );
    drop(server);
}
