//! Observability: what the agent tells operators. The agent loop stays the only
//! owner of intent and switch state; observers (the metrics endpoint, the
//! operator socket, the status sent to the controller) ask it through
//! [`Query`], and count events through the shared [`registry::Registry`].
//! Switch counters are read over a connection of their own (`switch_stats`):
//! reading is not writing, and the reconciler stays the only writer.

pub mod collect;
pub mod datapath;
pub mod http;
pub mod lb_index;
pub mod metrics;
pub mod offload;
pub mod ops;
pub mod registry;
pub mod switch_stats;
pub mod sysfacts;
pub mod tunnel;

use std::collections::BTreeMap;
use std::sync::Arc;

use dpu_model::{Intent, Workload};
use tokio::sync::{mpsc, oneshot};

use crate::compile::flows::DesiredState;
pub use lb_index::{LbIndex, LbInputs};

/// A question for the agent loop; the answer comes back on the oneshot.
#[derive(Debug)]
pub enum Query {
    /// Cheap facts: versions, counts, health.
    Summary(oneshot::Sender<Summary>),
    /// The intent as applied, shared, and this node's attached pods.
    Intent(oneshot::Sender<Option<IntentSnapshot>>),
    /// What the reconciler last installed (its view of the switch) and the round
    /// stamped into cookies.
    Installed(oneshot::Sender<Option<Installed>>),
    /// What the LB index (Services, their groups and buckets, backends'
    /// health) is built from, unless the asker's index, built at state
    /// generation `have`, is still current. The loop only hands out shared
    /// snapshots; the asker builds the index, off the loop.
    Lb {
        have: Option<u64>,
        tx: oneshot::Sender<LbReply>,
    },
}

/// The applied intent as the loop holds it. Merging the pods in is the
/// reader's work ([`IntentSnapshot::with_pods`]), not the loop's.
#[derive(Debug, Clone, Default)]
pub struct IntentSnapshot {
    pub version: u64,
    pub intent: Arc<Intent>,
    /// This node's attached pods (workloads the controller does not send).
    pub pods: Vec<Workload>,
}

impl IntentSnapshot {
    /// The intent with this node's attached pods in, as the compiler sees it.
    pub fn with_pods(&self) -> std::borrow::Cow<'_, Intent> {
        crate::state::pods::intent_with_pods(&self.intent, &self.pods)
    }
}

/// The loop's answer to [`Query::Lb`].
#[derive(Debug)]
pub enum LbReply {
    /// The state has not changed since the asker's index was built.
    Unchanged,
    /// The state at this generation, to build the index from.
    Build(u64, Box<LbInputs>),
}

/// The reconciler's view of the switch.
#[derive(Debug, Clone)]
pub struct Installed {
    pub version: u64,
    pub round: u16,
    /// The reconciler's own view, shared: taking it costs the loop nothing.
    pub state: std::sync::Arc<DesiredState>,
}

/// What every observer wants to know, cheap to build.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub node: String,
    /// The version on the switch (0: none yet).
    pub applied_version: u64,
    /// The newest version the controller sent (applied or not).
    pub desired_version: u64,
    pub have_intent: bool,
    /// The endpoint the controller session is up on; `None` while it is down.
    pub controller: Option<String>,
    pub services: usize,
    pub flows: usize,
    pub groups: usize,
    pub pending_ports: Vec<String>,
    /// The bridge's ports the agent knows: `iface-id` → OpenFlow port number.
    pub ports: BTreeMap<String, u32>,
    /// Backends with no bucket because they are unhealthy (this node's probes
    /// plus the controller's verdicts), as `vpc/ip`.
    pub unhealthy: Vec<String>,
    /// Why this node's probes found each backend they probe (`vpc/ip`) as
    /// they did, last: `HTTP 503`, `connect timeout`, ...
    pub probe_details: BTreeMap<String, String>,
    /// The last reconcile or update that failed, with why; cleared by success.
    pub last_error: Option<String>,
    /// This node's own `DpuNode.tunnelIP`, if the intent has one.
    pub tunnel_ip: Option<std::net::Ipv4Addr>,
}

/// The sending side of the query channel, for observers.
#[derive(Debug, Clone)]
pub struct Agent {
    tx: mpsc::Sender<Query>,
    /// The last LB index and the state generation it was built at, shared by
    /// every observer; the lock makes concurrent askers build it once.
    lb: Arc<tokio::sync::Mutex<Option<BuiltLb>>>,
    /// True while the reconciler has a bundle under way: it sets it, readers
    /// of the switch's counters wait on it between their requests.
    busy: Arc<tokio::sync::watch::Sender<bool>>,
}

/// An LB index and the state generation it was built at.
type BuiltLb = (u64, Arc<LbIndex>);

/// The agent loop has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the agent loop is not running")]
pub struct Gone;

impl Agent {
    /// A handle and the receiving end the agent loop serves.
    pub fn channel() -> (Agent, mpsc::Receiver<Query>) {
        let (tx, rx) = mpsc::channel(16);
        (
            Agent {
                tx,
                lb: Arc::default(),
                busy: Arc::new(tokio::sync::watch::Sender::new(false)),
            },
            rx,
        )
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, Gone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    /// The signal the reconciler sets while a bundle is under way
    /// ([`crate::reconcile::Reconciler::set_busy_signal`]).
    pub fn switch_busy(&self) -> Arc<tokio::sync::watch::Sender<bool>> {
        self.busy.clone()
    }

    /// A receiver of that signal, for a reader of the switch.
    pub fn watch_switch_busy(&self) -> tokio::sync::watch::Receiver<bool> {
        self.busy.subscribe()
    }

    pub async fn summary(&self) -> Result<Summary, Gone> {
        self.ask(Query::Summary).await
    }

    /// The applied intent with this node's pods, copied off the loop.
    pub async fn intent(&self) -> Result<Option<(u64, Intent)>, Gone> {
        let Some(snap) = self.ask(Query::Intent).await? else {
            return Ok(None);
        };
        Ok(Some((snap.version, snap.with_pods().into_owned())))
    }

    pub async fn installed(&self) -> Result<Option<Installed>, Gone> {
        self.ask(Query::Installed).await
    }

    /// The LB index of the current state: built once per state, on a
    /// blocking thread from the loop's shared snapshot (O(intent) work the
    /// loop never does).
    pub async fn lb(&self) -> Result<Arc<LbIndex>, Gone> {
        let mut cache = self.lb.lock().await;
        let have = cache.as_ref().map(|(g, _)| *g);
        match self.ask(|tx| Query::Lb { have, tx }).await? {
            LbReply::Unchanged => match cache.as_ref() {
                Some((_, lb)) => Ok(lb.clone()),
                None => Err(Gone),
            },
            LbReply::Build(generation, inputs) => {
                let lb = tokio::task::spawn_blocking(move || {
                    let mut inputs = inputs;
                    inputs.unshare();
                    Arc::new(inputs.build())
                })
                .await
                .map_err(|_| Gone)?;
                *cache = Some((generation, lb.clone()));
                Ok(lb)
            }
        }
    }
}
