//! The loop driven by events, without a loop: an [`Agent`] over a recording
//! switch (`testkit::RecordingSwitch`), a store in a temporary directory and
//! no OVSDB (its session never connects, so no port is written). Each test
//! sends the events a real run would and checks what the switch got, what
//! was answered and what the agent publishes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dpu_model::object_to_proto;
use dpu_proto::v1 as pb;
use tokio::sync::oneshot;

use super::*;
use crate::observe::Summary;
use crate::reconcile::backend::testkit::RecordingSwitch as Recording;
use crate::reconcile::backend::BundleOp;
use crate::vswitch::ovsdb::BridgeSpec;

struct Harness {
    agent: Agent<Recording>,
    feeds: Feeds,
    switch: Recording,
    _dir: tempfile::TempDir,
}

fn config(state_dir: &std::path::Path) -> Config {
    let text = crate::config::tests::GOOD.replace("/tmp/x", &state_dir.display().to_string());
    crate::config::tests::load(&text).unwrap()
}

/// An agent on node `dpu-1` whose bridge has the ports of the golden case
/// `basic`, with nothing applied yet.
async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let store = Store::open(&cfg.state_dir).unwrap();
    let switch = Recording::default();
    let reconciler = Reconciler::start(switch.clone()).await.ok().unwrap();
    // Nothing listens here: the session stays down and `client()` is None.
    let ovsdb = OvsdbSession::spawn(
        dir.path().join("no-ovsdb.sock"),
        BridgeSpec {
            name: cfg.ovs.bridge.clone(),
            datapath_type: "netdev".into(),
            hw_offload: false,
        },
    );
    let (writer, _written) = PortWriter::spawn(&cfg.ovs.bridge);
    let pods = Pods::load(&store).unwrap();
    let facts = NodeFacts {
        node: "dpu-1".into(),
        ports: [("client", 1), ("web-1", 2), ("web-2", 3), ("web-3", 4)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ..NodeFacts::default()
    };
    let (agent, feeds) = Agent::new(Parts {
        cfg,
        store,
        ovsdb,
        writer,
        reconciler,
        applied: Applied::default(),
        pods,
        facts,
        probes: Probes::with(None),
        registry: Arc::new(Registry::default()),
    });
    Harness {
        agent,
        feeds,
        switch,
        _dir: dir,
    }
}

/// The golden case `basic` as one snapshot update.
fn basic_update(version: u64) -> pb::Update {
    let intent = crate::observe::ops::trace::fixture::intent();
    pb::Update {
        version,
        base_version: 0,
        snapshot: true,
        nonce: String::new(),
        upserts: intent.objects().map(|o| object_to_proto(&o)).collect(),
        deletes: vec![],
        store_id: String::new(),
    }
}

/// `basic` without its Service (and the probe that names it), as a snapshot.
fn without_services(version: u64) -> pb::Update {
    use pb::object::Object;
    let mut u = basic_update(version);
    u.upserts
        .retain(|o| !matches!(o.object, Some(Object::Service(_) | Object::NetworkProbe(_))));
    u
}

impl Harness {
    /// Sends `update` as the session would and waits for the answer.
    async fn update(&mut self, update: pb::Update) -> pb::agent_message::Msg {
        let (tx, rx) = oneshot::channel();
        self.agent
            .handle(Event::Session(SessionEvent::Update(update, tx)))
            .await;
        rx.await.expect("every update is answered")
    }

    async fn summary(&mut self) -> Summary {
        let (tx, rx) = oneshot::channel();
        self.agent.handle(Event::Query(Query::Summary(tx))).await;
        rx.await.unwrap()
    }

    fn flows_added(&self) -> usize {
        self.switch
            .last()
            .iter()
            .filter(|op| matches!(op, BundleOp::AddFlow { .. }))
            .count()
    }
}

/// What OVSDB reports with these ports (iface-id → ofport) on the bridge.
fn ovs_state(ports: &std::collections::BTreeMap<String, u32>, ready: bool) -> OvsdbState {
    let fact = |id: &String, ofport: &u32| crate::vswitch::ovsdb::PortFact {
        interface: id.clone(),
        ofport: *ofport,
    };
    OvsdbState {
        connected: true,
        bridge_ready: ready,
        ports: ports
            .iter()
            .map(|(id, p)| (id.clone(), fact(id, p)))
            .collect(),
        ..OvsdbState::default()
    }
}

fn ack_version(msg: &pb::agent_message::Msg) -> Option<u64> {
    match msg {
        pb::agent_message::Msg::Ack(a) => Some(a.version),
        _ => None,
    }
}

#[tokio::test]
async fn an_update_is_acked_after_its_bundle_and_published() {
    let mut h = harness().await;
    let generation = *h.feeds.changed.borrow();
    let msg = h.update(basic_update(1)).await;
    assert_eq!(ack_version(&msg), Some(1), "{msg:?}");
    assert_eq!(h.switch.count(), 1, "one update, one bundle");
    assert!(h.flows_added() > 0);
    assert_eq!(
        h.feeds.applied.borrow().version,
        1,
        "the session's Hello version"
    );
    assert!(*h.feeds.changed.borrow() > generation, "observers told");
    let s = h.summary().await;
    assert_eq!((s.applied_version, s.services, s.last_error), (1, 1, None));
    assert_eq!(s.flows, h.flows_added(), "the installed view is the bundle");
    // Settling after an ACK sends nothing: the switch already holds it all.
    h.agent.settle().await;
    assert_eq!(h.switch.count(), 1);
}

#[tokio::test]
async fn an_update_the_switch_refuses_is_nacked_and_nothing_changes() {
    let mut h = harness().await;
    assert!(ack_version(&h.update(basic_update(1)).await).is_some());
    h.switch.refuse.store(true, Ordering::SeqCst);
    let msg = h.update(without_services(2)).await;
    let pb::agent_message::Msg::Nack(nack) = &msg else {
        panic!("not a NACK: {msg:?}");
    };
    assert!(
        nack.errors
            .iter()
            .any(|e| e.message.contains("refused by the test")),
        "NACKed for the switch's refusal: {nack:?}"
    );
    assert_eq!(
        h.feeds.applied.borrow().version,
        1,
        "still the last applied version"
    );
    let s = h.summary().await;
    assert_eq!((s.applied_version, s.services), (1, 1));
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("NACK v2")),
        "{:?}",
        s.last_error
    );
    // Once the switch takes bundles again, the same update applies.
    h.switch.refuse.store(false, Ordering::SeqCst);
    let msg = h.update(without_services(2)).await;
    assert_eq!(ack_version(&msg), Some(2), "{msg:?}");
    assert_eq!(h.summary().await.services, 0);
}

#[tokio::test]
async fn an_invalid_update_is_nacked_without_a_bundle() {
    let mut h = harness().await;
    assert!(ack_version(&h.update(basic_update(1)).await).is_some());
    // A delta on a base the agent does not have.
    let mut gap = basic_update(5);
    gap.snapshot = false;
    gap.base_version = 4;
    let msg = h.update(gap).await;
    let pb::agent_message::Msg::Nack(nack) = &msg else {
        panic!("not a NACK: {msg:?}");
    };
    assert!(
        nack.errors.iter().any(|e| e.field == "update.base_version"),
        "{nack:?}"
    );
    assert_eq!(h.switch.count(), 1, "nothing sent for a refused update");
    assert_eq!(h.feeds.applied.borrow().version, 1);
}

#[tokio::test]
async fn the_bridge_coming_back_reinstalls_everything() {
    let mut h = harness().await;
    assert!(ack_version(&h.update(basic_update(1)).await).is_some());
    let installed = h.flows_added();
    let ports = h.agent.facts.ports.clone();
    let state = |ready: bool| ovs_state(&ports, ready);
    h.agent.handle(Event::Ovsdb(state(false))).await;
    h.agent.settle().await;
    assert_eq!(
        h.switch.count(),
        1,
        "nothing to install while the bridge is gone"
    );
    h.agent.handle(Event::Ovsdb(state(true))).await;
    assert!(h.agent.dirty);
    h.agent.settle().await;
    assert_eq!(h.switch.count(), 2, "one reinstall");
    assert_eq!(h.flows_added(), installed, "every flow again");
    assert!(!h.agent.dirty);
}

#[tokio::test]
async fn a_port_that_goes_away_recompiles() {
    let mut h = harness().await;
    assert!(ack_version(&h.update(basic_update(1)).await).is_some());
    let mut ports = h.agent.facts.ports.clone();
    ports.remove("web-2");
    let state = ovs_state(&ports, true);
    h.agent.handle(Event::Ovsdb(state)).await;
    assert!(!h.agent.facts.ports.contains_key("web-2"));
    h.agent.settle().await;
    assert_eq!(h.switch.count(), 2);
    let summary = h.summary().await;
    assert!(
        summary.pending_ports.contains(&"web-2".to_string()),
        "{:?}",
        summary.pending_ports
    );
}

/// The controller's verdict: `ip` in vpc-a is unhealthy.
fn unhealthy(ip: &str) -> Event {
    Event::Session(SessionEvent::Health(pb::Health {
        unhealthy: vec![pb::BackendRef {
            vpc: "vpc-a".into(),
            ip: ip.into(),
        }],
    }))
}

/// Buckets per group id, over the groups `ops` puts.
fn buckets(ops: &[BundleOp]) -> std::collections::BTreeMap<u32, usize> {
    ops.iter()
        .filter_map(|op| match op {
            BundleOp::PutGroup(g) => Some((g.id, g.buckets.len())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_controllers_health_verdicts_take_a_backend_out() {
    let mut h = harness().await;
    assert!(ack_version(&h.update(basic_update(1)).await).is_some());
    let before = buckets(&h.switch.last());
    // web-2 (10.0.1.12) is one of web's backends.
    h.agent.handle(unhealthy("10.0.1.12")).await;
    assert!(h.agent.dirty, "a new verdict is a recompile");
    h.agent.settle().await;
    assert_eq!(h.switch.count(), 2);
    let after = buckets(&h.switch.last());
    assert!(!after.is_empty(), "the Service's groups were rewritten");
    for (id, n) in &after {
        assert_eq!(
            Some(n + 1),
            before.get(id).copied(),
            "group {id} lost one bucket"
        );
    }
    let s = h.summary().await;
    assert_eq!(s.unhealthy, vec!["vpc-a/10.0.1.12".to_string()]);
    // The same verdict again changes nothing.
    h.agent.handle(unhealthy("10.0.1.12")).await;
    assert!(!h.agent.dirty);
}

#[tokio::test]
async fn a_new_vswitchd_is_reinstalled_and_the_restart_is_retried() {
    let mut h = harness().await;
    assert!(ack_version(&h.update(basic_update(1)).await).is_some());
    h.agent.handle(Event::Switch(SwitchLink::Down)).await;
    assert!(h.agent.restart.since.is_some(), "the forwarding gap starts");
    h.agent
        .handle(Event::Switch(SwitchLink::Up { generation: 2 }))
        .await;
    assert!(h.agent.dirty && h.agent.restart.reinstalling);
    h.agent.settle().await;
    assert_eq!(h.switch.count(), 2, "everything reinstalled");
    // Without OVSDB flow-restore-wait cannot be cleared: the agent keeps
    // trying on its retry timer.
    assert!(h.agent.restart.reinstalling && h.agent.wants_retry());
}

#[tokio::test]
async fn the_first_switch_up_is_not_a_restart() {
    let mut h = harness().await;
    assert!(ack_version(&h.update(basic_update(1)).await).is_some());
    h.agent
        .handle(Event::Switch(SwitchLink::Up { generation: 1 }))
        .await;
    assert!(!h.agent.dirty && !h.agent.restart.reinstalling);
    h.agent.settle().await;
    assert_eq!(h.switch.count(), 1);
}

#[tokio::test]
async fn a_controller_session_going_down_is_published() {
    let mut h = harness().await;
    h.agent
        .handle(Event::Session(SessionEvent::Connected(Some(
            "https://b:50051".into(),
        ))))
        .await;
    assert_eq!(
        h.summary().await.controller.as_deref(),
        Some("https://b:50051")
    );
    let status = h.agent.settle().await;
    assert_eq!(status.controller.as_deref(), Some("https://b:50051"));
    assert!(status.applied_version.is_none());
    h.agent
        .handle(Event::Session(SessionEvent::Connected(None)))
        .await;
    assert!(h.summary().await.controller.is_none());
}
