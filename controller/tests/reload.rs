//! Change pickup: a manifest written into the intent directory reaches an
//! agent without waiting for a poll (inotify; the poll runs every 5 s as a
//! safety net).

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_written_manifest_reaches_the_agent_without_waiting_for_a_poll() {
    let lab = Lab::new();
    let server = Server::start(&lab);
    let id = Some((lab.read("dpu-1.pem"), lab.read("dpu-1.key")));
    let ch = channel(server.port, &lab.read("ca.pem"), id).await.unwrap();
    let mut agent = open(ch, "dpu-1", 0).await.unwrap();
    let snap = agent.update().await;
    agent.ack(snap.version, &snap.nonce).await;

    // Five changes at random points of the poll's 5 s period. By polling alone
    // each would wait 2.5 s on average, and all five would come within 1 s
    // with a chance of 0.2^5.
    let mut took = Vec::new();
    for i in 0..5u32 {
        tokio::time::sleep(Duration::from_millis(300 + 370 * u64::from(i))).await;
        let doc = format!(
            "apiVersion: dpu.yusur.io/v1alpha1\nkind: Workload\nmetadata: {{name: extra-{i}, labels: {{app: other}}}}\nspec: {{kind: VM, vpc: blue, ip: 10.1.1.{}, mac: \"02:00:00:00:09:{i:02x}\", node: dpu-1, port: extra-{i}}}\n",
            150 + i
        );
        let started = Instant::now();
        write_manifest(&lab.intent, &format!("50-extra-{i}.yaml"), &doc);
        let u = agent.update().await;
        took.push(started.elapsed());
        assert!(
            keys(&u).contains(&format!("Workload/extra-{i}")),
            "{:?}",
            keys(&u)
        );
        agent.ack(u.version, &u.nonce).await;
    }
    eprintln!("manifest written → update at the agent: {took:?}");
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(1)),
        "{took:?}: picked up by the poll, not by the watch"
    );
    assert!(server.log().contains("new intent version"));
}
