//! Starting the agent and driving its loop: everything the loop waits on
//! becomes an [`Event`] for [`Agent::handle`].

use std::sync::Arc;
use std::time::Duration;

use dpu_proto::v1 as pb;
use tokio::sync::{mpsc, watch};

use super::notify::Systemd;
use super::probes::Probes;
use super::vswitch::{ports_of, PortJob};
use super::{Agent, AgentError, Event, Parts};
use crate::attach::{self, AttachCmd};
use crate::compile::NodeFacts;
use crate::config::Config;
use crate::control::session;
use crate::observe::registry::Registry;
use crate::reconcile::backend::{Backend, OpenFlowBackend};
use crate::reconcile::Reconciler;
use crate::state::applied::Applied;
use crate::state::pods::Pods;
use crate::state::store::Store;
use crate::vswitch::liveness;
use crate::vswitch::ovsdb::{BridgeSpec, OvsdbSession, OvsdbState};
use crate::vswitch::portwriter::PortWriter;

/// Runs the agent. `systemd` gets `READY=1` once the bridge and the reconciler are
/// up and the persisted intent (if any) is back on the switch, `STATUS=` lines as
/// things change, and a heartbeat on every loop iteration for its watchdog.
pub async fn run(
    mut cfg: Config,
    mut shutdown: watch::Receiver<bool>,
    systemd: Systemd,
) -> Result<(), AgentError> {
    if let Some(shim) = cfg.shim.as_mut() {
        if let Some(sys) = &shim.vfs_from_sysfs {
            let found = attach::sysfs::discover(sys).map_err(AgentError::Discovery)?;
            tracing::info!(uplink = %sys.uplink, pf = sys.pf, vfs = found.len(), "VF representors found in sysfs");
            shim.vfs.extend(found);
        }
    }
    let store = Store::open(&cfg.state_dir)?;
    let persisted = store.load()?;
    let journal = match persisted {
        Some(_) => store.load_journal()?,
        None => Vec::new(),
    };

    let ovsdb = OvsdbSession::spawn(
        cfg.ovs.db_socket.clone(),
        BridgeSpec {
            name: cfg.ovs.bridge.clone(),
            datapath_type: cfg.ovs.datapath_type.clone(),
            hw_offload: cfg.ovs.hw_offload,
        },
    );
    let mut ovs_rx = ovsdb.state();
    let facts = wait_bridge(&cfg, &mut ovs_rx, &mut shutdown).await;
    let Some(facts) = facts else {
        return Ok(());
    };
    // Port writes run on their own task; their completions come back to the loop.
    let (writer, mut written) = PortWriter::<PortJob>::spawn(&cfg.ovs.bridge);

    let backend = Backend::new(
        &cfg.ovs.openflow_backend,
        cfg.ofctl_target(),
        &cfg.ovs.ofctl_path,
    )
    .map_err(|e| AgentError::OpenFlow(e.to_string()))?;
    tracing::info!(backend = backend.name(), target = %cfg.ofctl_target(), "OpenFlow backend");
    let Some(mut reconciler) = start_reconciler(backend, &mut shutdown).await else {
        return Ok(());
    };
    let (observer, mut query_rx) = crate::observe::Agent::channel();
    reconciler.set_busy_signal(observer.switch_busy());

    let mut applied = Applied::default();
    if let Some(p) = persisted {
        applied = Applied::restore(p, journal, &cfg.node_name)
            .map_err(|r| AgentError::PersistedInvalid(r.to_string()))?;
        tracing::info!(
            version = applied.version,
            "restored the last applied intent"
        );
    }
    let pods = Pods::load(&store)?;
    let registry = Arc::new(Registry::default());
    let probes = Probes::start(&cfg);
    let (mut agent, feeds) = Agent::new(Parts {
        cfg: cfg.clone(),
        store,
        ovsdb,
        writer,
        reconciler,
        applied,
        pods,
        facts,
        probes,
        registry: registry.clone(),
    });
    agent.start();

    let (attach_tx, mut attach_rx) = mpsc::channel::<AttachCmd>(16);
    let mut attach_open = true;
    let shim = {
        let cfg = cfg.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = attach::serve(&cfg, attach_tx, shutdown).await {
                tracing::error!(error = %e, "shim service stopped");
            }
        })
    };
    let (status_tx, status_rx) = watch::channel(pb::Status::default());
    let observers = start_observers(
        &cfg,
        observer,
        registry,
        feeds.changed,
        status_tx,
        &shutdown,
    );
    let (ev_tx, mut ev_rx) = mpsc::channel(4);
    let identity = crate::control::enroll::NodeIdentity::from_config(&cfg);
    let session = tokio::spawn(session::run(
        cfg.controller.clone(),
        cfg.node_name.clone(),
        identity,
        session::Feeds {
            applied: feeds.applied,
            status: status_rx,
            local: feeds.local,
            health: feeds.health,
        },
        ev_tx,
    ));

    let mut switch_rx = liveness::watch_switch(cfg.mgmt_path());
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Keeps the heartbeat fresh while the loop is idle; without a watchdog it is moot.
    let mut beat = tokio::time::interval(systemd.beat_period().unwrap_or(Duration::from_secs(60)));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        systemd.heartbeat().beat();
        let status = agent.settle().await;
        if agent.dirty {
            // Not ready while the restored intent is not on the switch yet.
            systemd.status(&status);
        } else {
            systemd.ready(&status);
            systemd.status(&status);
        }
        // What the loop waits on, as one event; `None` ends the loop.
        let ev = tokio::select! {
            _ = shutdown.changed() => None,
            ev = ev_rx.recv() => ev.map(Event::Session),
            changed = ovs_rx.changed() => match changed {
                Ok(()) => Some(Event::Ovsdb(ovs_rx.borrow_and_update().clone())),
                Err(_) => None,
            },
            // Without `[shim]` the attachment service returns at once and the
            // channel closes; a closed channel is ready forever, so stop polling it.
            // While a pod's port write is in flight the next request waits in the
            // channel.
            cmd = attach_rx.recv(), if attach_open && agent.accepts_attach() => match cmd {
                Some(cmd) => Some(Event::Attach(cmd)),
                None => {
                    attach_open = false;
                    Some(Event::Tick)
                }
            },
            Some(done) = written.recv() => Some(Event::PortWritten(done)),
            Some(t) = agent.probes.next_transition() => Some(Event::Probe(t)),
            changed = switch_rx.changed() => match changed {
                Ok(()) => Some(Event::Switch(*switch_rx.borrow_and_update())),
                Err(_) => None,
            },
            Some(q) = query_rx.recv() => Some(Event::Query(q)),
            _ = retry.tick(), if agent.wants_retry() => Some(Event::Tick),
            _ = beat.tick() => Some(Event::Tick),
        };
        let Some(ev) = ev else { break };
        agent.handle(ev).await;
    }
    drop(agent);
    session.abort();
    shim.abort();
    for o in observers {
        o.abort();
    }
    tracing::info!("agent stopped; the switch keeps forwarding");
    Ok(())
}

async fn wait_bridge(
    cfg: &Config,
    rx: &mut watch::Receiver<OvsdbState>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<NodeFacts> {
    loop {
        {
            let s = rx.borrow_and_update();
            if s.connected && s.bridge_ready {
                return Some(NodeFacts {
                    node: cfg.node_name.clone(),
                    ports: ports_of(&s),
                    host_port: cfg.host.as_ref().map(|h| h.port.clone()),
                    uplink: cfg
                        .uplink
                        .as_ref()
                        .map(|u| (u.port.clone(), u.mac_for(&cfg.node_name))),
                    unhealthy: Default::default(),
                });
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return None,
            r = rx.changed() => if r.is_err() { return None },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                let s = rx.borrow();
                tracing::warn!(db = %cfg.ovs.db_socket.display(), error = ?s.last_error, "waiting for OVSDB and the bridge");
            }
        }
    }
}

async fn start_reconciler<B: OpenFlowBackend>(
    backend: B,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Reconciler<B>> {
    let mut backend = Some(backend);
    loop {
        // The management socket appears a moment after the bridge.
        match Reconciler::start(backend.take()?).await {
            Ok(r) => return Some(r),
            Err((b, e)) => {
                tracing::warn!(error = %e, "cannot read the switch yet");
                backend = Some(b);
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return None,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Starts the observers: the status sent to the controller, the metrics
/// endpoint and the operator socket. A failure to start one is logged; the
/// agent forwards without them.
fn start_observers(
    cfg: &Config,
    agent: crate::observe::Agent,
    registry: Arc<Registry>,
    changed: watch::Receiver<u64>,
    status: watch::Sender<pb::Status>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use crate::observe::collect::Collector;
    let collector = Arc::new(Collector::new(cfg, agent.clone(), registry));
    let mut tasks = vec![tokio::spawn(collector.clone().run_status(
        changed,
        status,
        shutdown.clone(),
    ))];
    if cfg.metrics.enabled {
        let m = cfg.metrics.clone();
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let server = match crate::observe::http::bind(&m).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "metrics endpoint not started");
                    return;
                }
            };
            tracing::info!(addr = %server.local_addr(), tls = m.tls(), "metrics endpoint");
            // Scrapes share one observation at a time: each reads the switch.
            let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
            server
                .run(
                    move || {
                        let (c, lock) = (collector.clone(), one_at_a_time.clone());
                        async move {
                            let _turn = lock.lock().await;
                            c.metrics_text().await
                        }
                    },
                    stop,
                )
                .await;
        }));
    }
    let ctx = crate::observe::ops::Ctx {
        agent,
        node: cfg.node_name.clone(),
        bridge: cfg.ovs.bridge.clone(),
        ofctl_target: cfg.ofctl_target(),
        run_dir: cfg.ovs.run_dir.clone(),
        appctl_path: cfg.ovs.appctl_path.clone(),
        ofctl_path: cfg.ovs.ofctl_path.clone(),
        datapath_type: cfg.ovs.datapath_type.clone(),
    };
    let (path, stop) = (cfg.ops.socket.clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::observe::ops::server::serve(&path, ctx, stop).await {
            tracing::error!(error = %e, "operator socket not served");
        }
    }));
    tasks
}
