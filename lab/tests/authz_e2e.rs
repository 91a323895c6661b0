//! Authorization against the real data plane: two emulated DPUs (real
//! controller, agents and OVS, real TCP), and an attacker with certificates
//! from the cluster CA who talks to the controller over real mTLS sessions.
//! What the attacker says is refused, the refusal is shown in the status, and
//! the switches of both DPUs stay byte-identical. Needs root; a missing
//! prerequisite fails the test.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dpu_lab::multi::MultiLab;
use dpu_lab::scenario::{mac, placed_workload, service_yaml, vpc_yaml, GW, VIP};
use dpu_proto::v1 as pb;
use dpu_proto::v1::agent_control_client::AgentControlClient;
use pb::agent_message::Msg;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// What a switch holds, without counters: flows and groups.
fn switch_state(lab: &MultiLab, dpu: usize) -> Result<(Vec<String>, Vec<String>)> {
    let d = lab.fabric.dpu(dpu)?;
    Ok((
        d.ovs().dump_flows(d.bridge())?,
        d.ovs().dump_groups(d.bridge())?,
    ))
}

/// An mTLS session to the controller as `node`, with the certificate `name`
/// in `pki`; the sender and the stream of what the controller says.
async fn session(
    addr: &str,
    pki: &Path,
    name: &str,
    node: &str,
) -> Result<(
    mpsc::Sender<pb::AgentMessage>,
    tonic::Streaming<pb::ControllerMessage>,
)> {
    let read = |f: String| std::fs::read_to_string(pki.join(&f)).with_context(|| f);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem".into())?))
        .domain_name("dpu-controller")
        .identity(Identity::from_pem(
            read(format!("{name}.pem"))?,
            read(format!("{name}.key"))?,
        ));
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::AgentMessage {
        msg: Some(Msg::Hello(pb::Hello {
            node: node.into(),
            last_applied_version: 0,
            agent_version: "attacker".into(),
            store_id: String::new(),
        })),
    })
    .await?;
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        AgentControlClient::new(channel).session(ReceiverStream::new(rx)),
    )
    .await??
    .into_inner();
    Ok((tx, stream))
}

/// The first thing the controller says on `stream`: an update (accepted) or
/// the status that ended it (refused).
async fn first_answer(stream: &mut tonic::Streaming<pb::ControllerMessage>) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Err(_) => Err("no answer".into()),
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err("the stream ended".into()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

#[test]
fn a_node_and_the_host_cannot_steer_another_dpus_service() -> Result<()> {
    let mut lab = MultiLab::new("authz", 2)?;
    let mut yaml = vpc_yaml("vpc-a", 100, "10.0.1.0/24", GW);
    yaml += &placed_workload("client", "vpc-a", "10.0.1.2", &mac(2), "client", 0, "Pod");
    yaml += &placed_workload("web-1", "vpc-a", "10.0.1.11", &mac(11), "web", 0, "Pod");
    yaml += &placed_workload("web-2", "vpc-a", "10.0.1.12", &mac(12), "web", 1, "VM");
    lab.add_host(0, "client", "10.0.1.2/24", &mac(2), GW)?;
    lab.add_host(0, "web-1", "10.0.1.11/24", &mac(11), GW)?;
    lab.add_host(1, "web-2", "10.0.1.12/24", &mac(12), GW)?;
    lab.echo("web-1", &[8080], &[5353])?;
    lab.echo("web-2", &[8080], &[5353])?;
    lab.write_manifest("00-vpc.yaml", &yaml)?;
    lab.write_manifest("05-nodes.yaml", &lab.dpu_nodes_yaml())?;
    lab.write_manifest(
        "10-svc.yaml",
        &service_yaml("web", "vpc-a", VIP, "  selector: {app: web}", ""),
    )?;
    lab.start_controller()?;
    lab.start_agent(0)?;
    lab.start_agent(1)?;
    let version = lab.wait_converged()?;
    let before = [switch_state(&lab, 0)?, switch_state(&lab, 1)?];

    // The attacker's certificates, from the cluster CA: the host's (as
    // docs/host-shim.md says to make it) and a node's that hosts nothing.
    let state = lab.path("controller-state").display().to_string();
    let pki = lab.path("pki");
    let out = pki.display().to_string();
    lab.controller_cmd(&[
        "issue",
        "--state-dir",
        &state,
        "--host-shim",
        "host-dpu-1",
        "--out",
        &out,
    ])?;
    lab.controller_cmd(&[
        "issue",
        "--state-dir",
        &state,
        "--node",
        "dpu-3",
        "--out",
        &out,
    ])?;

    let addr = lab.controller_addr.clone();
    let rt = tokio::runtime::Runtime::new()?;
    let (refused, hold) = rt.block_on(async {
        // The host's certificate is no node's, under any name.
        let refused = match session(&addr, &pki, "host-dpu-1", "dpu-1").await {
            Err(e) => match e.downcast_ref::<tonic::Status>() {
                Some(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                None => Err(e.to_string()),
            },
            Ok((_tx, mut host)) => first_answer(&mut host).await,
        };
        // dpu-3 reports `evil` into vpc-a with app=web, and calls both real
        // backends unhealthy.
        let (tx, mut node3) = session(&addr, &pki, "dpu-3", "dpu-3").await?;
        first_answer(&mut node3)
            .await
            .map_err(|e| anyhow!("dpu-3: {e}"))?;
        let evil = pb::Workload {
            name: "evil".into(),
            kind: pb::WorkloadKind::Pod as i32,
            vpc: "vpc-a".into(),
            ip: "10.0.1.66".into(),
            ipv6: String::new(),
            mac: mac(66),
            labels: [("app".to_string(), "web".to_string())].into(),
            node: "dpu-3".into(),
            port: "evil".into(),
        };
        for msg in [
            Msg::LocalWorkloads(pb::LocalWorkloads {
                revision: 1,
                workloads: vec![evil],
            }),
            Msg::Health(pb::Health {
                unhealthy: ["10.0.1.11", "10.0.1.12"]
                    .map(|ip| pb::BackendRef {
                        vpc: "vpc-a".into(),
                        ip: ip.into(),
                    })
                    .to_vec(),
            }),
        ] {
            tx.send(pb::AgentMessage { msg: Some(msg) }).await?;
        }
        Ok::<_, anyhow::Error>((refused, (tx, node3)))
    })?;
    let e = refused.expect_err("the host's certificate opened a session");
    assert!(
        e.starts_with("PermissionDenied") && e.contains("host shim's certificate"),
        "{e}"
    );

    // The controller shows what it refused ...
    let mut last = serde_json::Value::Null;
    dpu_lab::process::wait_until(
        "dpu-3's refusals in the status",
        Duration::from_secs(10),
        || {
            let Ok(st) = lab.status() else { return false };
            last = st.clone();
            let n = &st["nodes"]["dpu-3"];
            n["refused_health"] == 2
                && n["reported_errors"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e.to_string().contains("no block")))
        },
    )
    .map_err(|e| anyhow!("{e}: {last:#}"))?;
    // ... and no new version came of it (give the controller time to make one).
    std::thread::sleep(Duration::from_secs(2));
    let st = lab.status()?;
    assert_eq!(st["intent_version"].as_u64(), Some(version), "{st:#}");
    let table = lab.controller_cmd(&["status", "--state-dir", &state])?;
    for want in [
        "dpu-3: Workload/evil: spec.vpc: node dpu-3 has no block",
        "dpu-3: 2 (e.g. vpc-a/10.0.1.11, vpc-a/10.0.1.12)",
    ] {
        if !table.contains(want) {
            bail!("the status table lacks {want:?}:\n{table}");
        }
    }

    // Both switches are exactly as they were, and both backends serve.
    let after = [switch_state(&lab, 0)?, switch_state(&lab, 1)?];
    for dpu in 0..2 {
        assert_eq!(before[dpu].0, after[dpu].0, "flows of dpu-{}", dpu + 1);
        assert_eq!(before[dpu].1, after[dpu].1, "groups of dpu-{}", dpu + 1);
    }
    let tcp = lab.client("client", &format!("{VIP}:80"), "tcp", 40)?;
    assert_eq!(tcp.failed, 0, "{tcp:?}");
    assert!(
        tcp.count_for("web-1") > 0 && tcp.count_for("web-2") > 0,
        "{tcp:?}"
    );
    assert_eq!(tcp.count_for("evil"), 0);
    drop(hold);
    Ok(())
}
