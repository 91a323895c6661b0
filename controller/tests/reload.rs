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

    // Eight changes at scattered points of the poll's 5 s period. By polling
    // alone each would wait 2.5 s on average (uniform over 0–5 s): six or more
    // of eight within 1 s and none over 3 s has a chance of about 3 in 10,000.
    // One or two slow pickups are allowed: on a loaded CI machine a round (the
    // import, a store write, a resolve) has taken just over 1 s.
    let mut took = Vec::new();
    for i in 0..8u32 {
        tokio::time::sleep(Duration::from_millis(300 + 370 * u64::from(i % 5))).await;
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
    let quick = took.iter().filter(|t| **t < Duration::from_secs(1)).count();
    assert!(
        quick >= 6 && took.iter().all(|t| *t < Duration::from_secs(3)),
        "{took:?}: only {quick} of 8 within 1 s: picked up by the poll, not by the watch"
    );
    assert!(server.log().contains("new intent version"));
}
