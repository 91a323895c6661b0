//! The long-lived OVSDB session: one task that connects (backoff with jitter), ensures
//! the bridge, monitors it, and publishes [`OvsdbState`] on a `watch` channel; on any
//! failure it publishes `connected = false` and starts over. The state machine is
//! `backing off → connecting → ensuring → monitoring → (error) → backing off`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::atom::{as_uuid, map_get, set_elements, Row};
use super::bridge::{ensure_bridge, BridgeSpec, VSWITCH_DB};
use super::Condition;
use super::OvsdbError;
use super::TableCache;
use super::{MonitorRequest, OvsdbClient};

const MONITOR_ID: &str = "dpu-agent";
/// Fastest re-ensure after the bridge drifted from its spec (someone else edited it).
const REENSURE_INTERVAL: Duration = Duration::from_secs(1);
/// Idle time after which the session checks the server with an `echo`.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// The OpenFlow port number of a bridge's own (LOCAL) port.
const OFPP_LOCAL: i64 = 65534;

/// One interface on our bridge that carries an `iface-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortFact {
    /// The OVS interface name.
    pub interface: String,
    /// Its OpenFlow port number (> 0).
    pub ofport: u32,
}

/// What the session knows about the switch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OvsdbState {
    /// A connection is up and monitoring.
    pub connected: bool,
    /// The bridge row matches the spec and `ovs-vswitchd` has instantiated it (its local
    /// interface has ofport 65534), so its `.mgmt` socket can be used.
    pub bridge_ready: bool,
    /// Connections established after the first one.
    pub reconnects: u64,
    /// `external_ids:iface-id` → interface, for interfaces of ports of our bridge with an
    /// ofport > 0. While disconnected this is the last known set (the switch keeps
    /// forwarding); it is refreshed as soon as the session is back.
    pub ports: BTreeMap<String, PortFact>,
    /// The latest failure (connect, ensure, bridge interface error); cleared once the
    /// session is connected with the bridge ready.
    pub last_error: Option<String>,
}

/// Reconnect delays: doubling from `min` to `max`, each drawn uniformly from
/// `[d/2, d]` so that many agents restarting together do not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let ceiling_ms = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ceiling_ms / 2..=ceiling_ms))
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// A running session. Dropping it stops the task and closes the connection.
#[derive(Debug)]
pub struct OvsdbSession {
    state: watch::Receiver<OvsdbState>,
    client: watch::Receiver<Option<OvsdbClient>>,
    task: JoinHandle<()>,
}

impl OvsdbSession {
    /// Starts the session task for `spec` on the OVSDB socket `sock`.
    pub fn spawn(sock: PathBuf, spec: BridgeSpec) -> Self {
        let (state_tx, state) = watch::channel(OvsdbState::default());
        let (client_tx, client) = watch::channel(None);
        let runner = Runner {
            sock,
            spec,
            state: state_tx,
            client: client_tx,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            connections: 0,
        };
        OvsdbSession {
            state,
            client,
            task: tokio::spawn(runner.run()),
        }
    }

    /// The published state; changes only when something in it changed.
    pub fn state(&self) -> watch::Receiver<OvsdbState> {
        self.state.clone()
    }

    /// The current connection, for other writers (e.g. `flow-restore-wait`).
    pub fn client(&self) -> Option<OvsdbClient> {
        self.client.borrow().clone()
    }
}

impl Drop for OvsdbSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Runner {
    sock: PathBuf,
    spec: BridgeSpec,
    state: watch::Sender<OvsdbState>,
    client: watch::Sender<Option<OvsdbClient>>,
    backoff: Backoff,
    connections: u64,
}

impl Runner {
    async fn run(mut self) {
        loop {
            let error = self.serve_one_connection().await;
            tracing::warn!(sock = %self.sock.display(), %error, "OVSDB session down");
            self.client.send_replace(None);
            self.publish(|s| {
                s.connected = false;
                s.bridge_ready = false;
                s.last_error = Some(error.to_string());
            });
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
    }

    /// Connects, ensures, monitors; returns only with the error that ended it.
    async fn serve_one_connection(&mut self) -> OvsdbError {
        match self.try_serve().await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn try_serve(&mut self) -> Result<std::convert::Infallible, OvsdbError> {
        let client = OvsdbClient::connect(&self.sock).await?;
        let schema = client.get_schema(VSWITCH_DB).await?;
        ensure_bridge(&client, &self.spec).await?;
        let (initial, mut monitor) = client
            .monitor_cond(VSWITCH_DB, MONITOR_ID, &self.monitor_requests())
            .await?;
        let mut cache = TableCache::new(schema);
        cache.apply(&initial)?;

        self.connections += 1;
        let reconnects = self.connections - 1;
        if reconnects > 0 {
            tracing::info!(reconnects, "OVSDB session re-established");
        }
        self.backoff.reset();
        self.client.send_replace(Some(client.clone()));
        let view = BridgeView::derive(&cache, &self.spec);
        self.publish(|s| {
            s.connected = true;
            s.reconnects = reconnects;
            view.write_into(s);
        });

        let mut last_ensure = Instant::now();
        let mut ensure_at: Option<Instant> = None;
        loop {
            let view = BridgeView::derive(&cache, &self.spec);
            if !view.applied && ensure_at.is_none() {
                ensure_at = Some((last_ensure + REENSURE_INTERVAL).max(Instant::now()));
            }
            self.publish(|s| view.write_into(s));

            tokio::select! {
                update = monitor.next() => {
                    let update = update.ok_or_else(|| {
                        OvsdbError::disconnected("the monitor stream ended")
                    })?;
                    cache.apply(&update)?;
                }
                _ = sleep_until_or_never(ensure_at) => {
                    tracing::warn!(bridge = %self.spec.name, "bridge differs from its spec; re-ensuring");
                    ensure_at = None;
                    last_ensure = Instant::now();
                    ensure_bridge(&client, &self.spec).await?;
                }
                _ = tokio::time::sleep(KEEPALIVE_INTERVAL) => client.echo().await?,
            }
        }
    }

    fn monitor_requests(&self) -> BTreeMap<String, MonitorRequest> {
        let bridge =
            MonitorRequest::columns(&["name", "ports", "datapath_type", "fail_mode", "protocols"])
                .with_conditions(vec![Condition::eq("name", json!(self.spec.name))]);
        BTreeMap::from([
            ("Bridge".to_string(), bridge),
            (
                "Port".to_string(),
                MonitorRequest::columns(&["name", "interfaces"]),
            ),
            (
                "Interface".to_string(),
                MonitorRequest::columns(&["name", "ofport", "external_ids", "error"]),
            ),
        ])
    }

    fn publish(&self, change: impl FnOnce(&mut OvsdbState)) {
        self.state.send_if_modified(|state| {
            let mut next = state.clone();
            change(&mut next);
            let changed = next != *state;
            *state = next;
            changed
        });
    }
}

async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What the cache says about our bridge.
#[derive(Debug, Default, PartialEq)]
struct BridgeView {
    /// The bridge row exists and matches the spec.
    applied: bool,
    /// …and `ovs-vswitchd` gave its local interface ofport 65534.
    ready: bool,
    ports: BTreeMap<String, PortFact>,
    /// `Interface.error` of the bridge's own interface.
    error: Option<String>,
}

impl BridgeView {
    fn derive(cache: &TableCache, spec: &BridgeSpec) -> Self {
        let Some((_, bridge)) = cache
            .table("Bridge")
            .find(|(_, b)| text(b, "name") == spec.name)
        else {
            return BridgeView::default();
        };
        let mut view = BridgeView {
            applied: spec.is_applied_to(bridge),
            ..Default::default()
        };
        let interfaces = bridge
            .get("ports")
            .map(set_elements)
            .unwrap_or_default()
            .into_iter()
            .filter_map(as_uuid)
            .filter_map(|port| cache.row("Port", port))
            .flat_map(|port| port.get("interfaces").map(set_elements).unwrap_or_default())
            .filter_map(as_uuid)
            .filter_map(|iface| cache.row("Interface", iface));
        for iface in interfaces {
            let name = text(iface, "name");
            let ofport = iface.get("ofport").and_then(Value::as_i64).unwrap_or(0);
            if name == spec.name {
                view.ready = view.applied && ofport == OFPP_LOCAL;
                let error = text(iface, "error");
                if !error.is_empty() {
                    view.error = Some(format!("bridge {}: {error}", spec.name));
                }
                continue;
            }
            let iface_id = iface
                .get("external_ids")
                .and_then(|ids| map_get(ids, "iface-id"))
                .and_then(Value::as_str);
            let (Some(iface_id), Ok(ofport @ 1..)) = (iface_id, u32::try_from(ofport)) else {
                continue;
            };
            let fact = PortFact {
                interface: name.to_string(),
                ofport,
            };
            if let Some(other) = view.ports.insert(iface_id.to_string(), fact) {
                tracing::warn!(iface_id, first = %other.interface, second = %name,
                    "two interfaces carry the same iface-id; using the later one");
            }
        }
        view
    }

    fn write_into(&self, state: &mut OvsdbState) {
        state.bridge_ready = self.ready;
        state.ports = self.ports.clone();
        if let Some(error) = &self.error {
            state.last_error = Some(error.clone());
        } else if self.ready {
            state.last_error = None;
        }
    }
}

/// A string column; a missing column or an empty optional reads as "".
fn text<'a>(row: &'a Row, column: &str) -> &'a str {
    row.get(column).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vswitch::ovsdb::{parse_table_updates2, Schema};

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= Duration::from_secs(5));
        }
        let late = backoff.next_delay();
        assert!(late >= Duration::from_millis(2500), "{late:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn view_keeps_only_our_bridges_ports_with_iface_id_and_ofport() {
        let schema = Schema::parse(&json!({"name": "Open_vSwitch", "tables": {
            "Bridge": {"columns": {"name": {"type": "string"},
                "ports": {"type": {"key": "uuid", "min": 0, "max": "unlimited"}}}},
            "Port": {"columns": {"name": {"type": "string"},
                "interfaces": {"type": {"key": "uuid", "min": 1, "max": "unlimited"}}}},
            "Interface": {"columns": {"name": {"type": "string"},
                "ofport": {"type": {"key": "integer", "min": 0, "max": 1}},
                "external_ids": {"type": {"key": "string", "value": "string",
                                          "min": 0, "max": "unlimited"}}}}}}))
        .unwrap();
        let mut cache = TableCache::new(schema);
        let ids = |id: &str| json!(["map", [["iface-id", id]]]);
        let updates = json!({
            "Bridge": {"b1": {"initial": {"name": "br", "ports": ["set", [["uuid", "p0"], ["uuid", "p1"], ["uuid", "p2"]]],
                                          "datapath_type": "netdev", "fail_mode": "secure", "protocols": "OpenFlow15"}},
                       "b2": {"initial": {"name": "other", "ports": ["uuid", "p3"]}}},
            "Port": {"p0": {"initial": {"name": "br", "interfaces": ["uuid", "i0"]}},
                     "p1": {"initial": {"name": "p1", "interfaces": ["uuid", "i1"]}},
                     "p2": {"initial": {"name": "p2", "interfaces": ["uuid", "i2"]}},
                     "p3": {"initial": {"name": "p3", "interfaces": ["uuid", "i3"]}}},
            "Interface": {"i0": {"initial": {"name": "br", "ofport": 65534}},
                          "i1": {"initial": {"name": "p1", "ofport": 3, "external_ids": ids("web-1")}},
                          "i2": {"initial": {"name": "p2", "external_ids": ids("web-2")}},
                          "i3": {"initial": {"name": "p3", "ofport": 4, "external_ids": ids("db-1")}}}
        });
        cache
            .apply(&parse_table_updates2(&updates).unwrap())
            .unwrap();
        let spec = BridgeSpec {
            name: "br".into(),
            datapath_type: "netdev".into(),
            hw_offload: false,
        };
        let view = BridgeView::derive(&cache, &spec);
        assert!(view.applied && view.ready);
        let expected = BTreeMap::from([(
            "web-1".to_string(),
            PortFact {
                interface: "p1".into(),
                ofport: 3,
            },
        )]);
        assert_eq!(view.ports, expected);
    }
}
