//! `dpu-controller serve`: wires PKI, the intent task (manifest reloads and
//! agent-reported workloads), the status writer, the revocation watcher and the
//! gRPC server (`AgentControl` and `Enrollment` on one TLS listener) together,
//! and shuts them down on SIGTERM/SIGINT.
//!
//! The listener asks for a client certificate but does not require one, so that
//! a DPU without one can call `Enroll`; every other RPC checks for it itself.
//!
//! What peers can hold is bounded (`dpu_listen`): a handshake must finish within
//! 10 s, connections in the handshake, with a client certificate and without
//! one each have their own budget, sized from RLIMIT_NOFILE after a reserve for
//! the controller's own files (`FD_PLAN`; docs/limits.md, "Connections and
//! descriptors"), and accept errors back off.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dpu_listen::fds::{Budget, Plan};
use dpu_listen::{BoundedListener, Limits};
use dpu_proto::v1::agent_control_server::AgentControlServer;
use dpu_proto::v1::enrollment_server::EnrollmentServer;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tonic::transport::Server;

use crate::diag::{lines, IntentError};
use crate::effective::Effective;
use crate::enroll::{EnrollService, Enroller, MAX_REQUEST_BYTES};
use crate::fsutil::ensure_private_dir;
use crate::hub::{ControlService, Hub};
use crate::intenttask::{self, StartError};
use crate::kv::{EtcdStore, LocalStore, Store};
use crate::pki::{ensure_server_cert, load_ca_for_serving, PkiError};
use crate::reported::ReportInbox;
use crate::shutdown::shutdown_requested;
use crate::status::StatusHandle;
use crate::store::StoreError;

/// The largest message an agent may send.
pub const MAX_DECODING_MESSAGE: usize = 4 << 20;
/// The largest message the controller sends (a big snapshot).
pub const MAX_ENCODING_MESSAGE: usize = 64 << 20;
/// How long shutdown waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The controller's descriptors (docs/limits.md, "Connections and
/// descriptors"). 128 stay with the controller itself: stdio, the runtime
/// (epoll, its wake and signal pipes), the listener, the status writer, the
/// intent directory's reads, node and token records and their lock, the CA,
/// and the blocking pool's open files (a few each), with room to spare. Of the
/// rest a quarter (at most 1,024) is for connections in the TLS handshake, an
/// eighth (at most 256) for `Enroll` callers without a certificate, and the
/// rest for agents with one.
pub const FD_PLAN: Plan = Plan {
    reserved: 128,
    max_handshaking: 1024,
    max_anonymous: 256,
    max_authenticated: 1 << 20,
};
/// The soft RLIMIT_NOFILE is raised to the hard limit, at most this.
const NOFILE_CAP: u64 = 1 << 20;

/// Reads (and raises) RLIMIT_NOFILE and splits it by `FD_PLAN` (logged as
/// `controller connection budget`).
fn fd_budget() -> Budget {
    dpu_listen::fds::budget_from_rlimit(
        "controller",
        &FD_PLAN,
        NOFILE_CAP,
        "the file limit is too low for the controller's reserve plus its listener; peers may exhaust descriptors (accepts then back off)",
    )
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub state_dir: PathBuf,
    /// Imported into the store when its files change; without it the intent
    /// comes from `apply` only.
    pub intent_dir: Option<PathBuf>,
    /// The store on etcd; without it, the embedded store in the state dir.
    pub etcd: Option<crate::kv::EtcdOptions>,
    pub listen: SocketAddr,
    pub server_name: String,
    /// Lifetime of the certificates `Enroll` and `Renew` issue.
    pub enroll_cert_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The command line or the environment is wrong (paths, listen address).
    #[error("{0}")]
    Config(String),
    /// The intent directory or the store does not hold a valid intent at start.
    #[error("the intent in {from} is invalid:\n  {}", lines(.errors))]
    InvalidIntent {
        from: String,
        errors: Vec<IntentError>,
    },
    /// The store could not be opened or read at start.
    #[error(transparent)]
    Kv(#[from] crate::kv::KvError),
    /// The CA or server certificate is missing or unusable.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The TLS configuration was refused.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The version counter could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(String),
}

impl ServeError {
    /// The process exit code for this failure class.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Config(_) | ServeError::Pki(PkiError::BadName { .. }) => 2,
            ServeError::InvalidIntent { .. } => 3,
            ServeError::Pki(_) | ServeError::Tls(_) => 4,
            ServeError::Store(_) | ServeError::Kv(_) | ServeError::Transport(_) => 1,
        }
    }
}

pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown_tx = Arc::new(shutdown_tx);
    let signals = spawn_signal_handler(shutdown_tx.clone())?;

    let state = &opts.state_dir;
    ensure_private_dir(state)
        .map_err(|e| ServeError::Config(format!("state dir {}: {e}", state.display())))?;
    if let Some(dir) = opts.intent_dir.as_ref().filter(|d| !d.is_dir()) {
        return Err(ServeError::Config(format!(
            "intent dir {} is not a directory",
            dir.display()
        )));
    }
    let identity = ensure_server_cert(state, &opts.server_name, opts.listen)?;
    let (ca_pem, ca) = load_ca_for_serving(state)?;
    if let Err(why) = &ca {
        tracing::warn!("this replica holds no CA key ({why}): it serves agents and verifies their certificates, but refuses Enroll and Renew (unavailable), so DPUs enroll through a replica that has it");
    }
    let status = StatusHandle::new(state);

    let store = match &opts.etcd {
        None => Store::Local(LocalStore::open(&state.join(crate::cli::STORE_DIR))?),
        Some(o) => Store::Etcd(EtcdStore::connect(o.clone()).await?),
    };
    let backend = store.describe();
    crate::migrate::enrollment_files(&store, state)
        .await
        .map_err(|e| match e {
            crate::migrate::MigrateError::Kv(e) => ServeError::Kv(e),
            e => ServeError::Config(e.to_string()),
        })?;
    let enroller = Arc::new(Enroller::new(
        store.clone(),
        ca_pem,
        ca,
        opts.enroll_cert_ttl,
    ));
    let (_, records) = crate::revocation::load(&store).await?;
    let from = opts
        .intent_dir
        .as_ref()
        .map_or_else(|| backend.clone(), |d| d.display().to_string());
    // The leader imports the intent directory and compacts; every replica serves.
    let (leader_tx, mut leader_rx) = watch::channel(None);
    let leading = tokio::spawn(intenttask::lead(
        store.clone(),
        format!(
            "{} {} pid {}",
            opts.server_name,
            opts.listen,
            std::process::id()
        ),
        leader_tx,
        status.clone(),
        shutdown_rx.clone(),
    ));
    let started = intenttask::start(store, state, opts.intent_dir.as_deref(), &mut leader_rx).await;
    let (source, manifests) = match started {
        Ok(r) => r,
        Err(StartError::Invalid(errors)) => {
            status.record_reload(0, &errors);
            if let Err(e) = status.write_now() {
                tracing::warn!(error = %e, "cannot write the status file");
            }
            return Err(ServeError::InvalidIntent { from, errors });
        }
        Err(StartError::Load(e)) => return Err(ServeError::Config(e.to_string())),
        Err(StartError::Store(e)) => return Err(ServeError::Kv(e)),
        Err(StartError::Conflict(e)) => return Err(ServeError::Config(e)),
    };
    status.record_store(&backend, source.mirror.revision, None);
    let mut source = source;
    let cluster_id = source.store.cluster_id().await?;
    let mut effective = Effective::new(manifests, &cluster_id, source.reported_sets());
    let published =
        match intenttask::first_version(&mut source, &mut effective, &mut leader_rx).await {
            Ok(p) => p,
            Err(StartError::Store(e)) => return Err(ServeError::Kv(e)),
            Err(e) => return Err(ServeError::Config(e.to_string())),
        };
    tracing::info!(
        version = published.version,
        objects = published.intent.len(),
        reported_nodes = effective.summaries().len(),
        store = %backend,
        store_revision = source.mirror.revision,
        dir = opts.intent_dir.as_ref().map(|d| d.display().to_string()),
        "intent loaded"
    );
    status.record_reload(published.version, &[]);
    status.record_reported(effective.summaries());

    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| ServeError::Config(format!("cannot listen on {}: {e}", opts.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::Config(e.to_string()))?;

    let (intent_tx, intent_rx) = watch::channel(Arc::new(published));
    let reports = Arc::new(ReportInbox::default());
    reports.set_reporters(effective.summaries().keys().cloned());
    let hub = Arc::new(Hub::new(
        intent_rx,
        status.clone(),
        shutdown_rx.clone(),
        reports.clone(),
        records,
    ));
    // Exactly what tonic's `ServerTlsConfig` with `client_auth_optional(true)`
    // built: a certificate that is presented must chain to the CA.
    let tls = dpu_listen::server_config(
        identity.cert_pem.as_bytes(),
        identity.key_pem.as_bytes(),
        identity.ca_pem.as_bytes(),
        true,
    )
    .map_err(ServeError::Tls)?;
    let budget = fd_budget();
    let (_tls_tx, tls_rx) = watch::channel(Some(tls));
    let bounded =
        BoundedListener::new("controller", listener, tls_rx, Limits::with_budget(&budget));
    let service = AgentControlServer::new(ControlService::new(hub.clone()))
        .max_decoding_message_size(MAX_DECODING_MESSAGE)
        .max_encoding_message_size(MAX_ENCODING_MESSAGE);
    let enrollment = EnrollmentServer::new(EnrollService::new(enroller))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(bounded.track(service))
        .add_service(bounded.track(enrollment));

    let writer = tokio::spawn(status.clone().run_writer(shutdown_rx.clone()));
    let health_authz = tokio::spawn(refilter_health_on_intent(hub.clone(), shutdown_rx.clone()));
    let status_sync = tokio::spawn(crate::statussync::run(
        source.store.clone(),
        status.clone(),
        format!("{} {}", opts.server_name, opts.listen),
        shutdown_rx.clone(),
    ));
    let health_sync = tokio::spawn(crate::healthsync::run(
        source.store.clone(),
        hub.clone(),
        shutdown_rx.clone(),
    ));
    let revocations = tokio::spawn(crate::revocation::run(
        source.store.clone(),
        hub,
        shutdown_rx.clone(),
    ));
    let reload = tokio::spawn(intenttask::run(
        source,
        effective,
        intent_tx,
        status.clone(),
        reports,
        leader_rx,
        shutdown_rx.clone(),
    ));
    let mut server_shutdown = shutdown_rx.clone();
    let mut server = tokio::spawn(
        router.serve_with_incoming_shutdown(bounded.incoming(), async move {
            shutdown_requested(&mut server_shutdown).await
        }),
    );
    tracing::info!(
        listen = %local,
        pid = std::process::id(),
        enroll_cert_ttl = %crate::timeutil::format_duration(opts.enroll_cert_ttl),
        "serving agents over mTLS"
    );

    let mut stop = shutdown_rx.clone();
    let result = tokio::select! {
        r = &mut server => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Transport(e.to_string())),
            Err(e) => Err(ServeError::Transport(e.to_string())),
        },
        _ = shutdown_requested(&mut stop) => {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err() {
                tracing::warn!("connections did not close within {SHUTDOWN_GRACE:?}; stopping anyway");
                server.abort();
            }
            Ok(())
        }
    };
    signals.abort();
    stop_all(&status);
    // Also stops the writer (after a last write) and the intent task when the
    // server failed on its own.
    shutdown_tx.send_replace(true);
    let _ = reload.await;
    let _ = leading.await;
    let _ = revocations.await;
    let _ = health_authz.await;
    let _ = health_sync.await;
    let _ = status_sync.await;
    if tokio::time::timeout(SHUTDOWN_GRACE, writer).await.is_err() {
        let _ = status.write_now();
    }
    tracing::info!("stopped");
    result
}

/// Health verdicts count only for backends their node hosts; when the intent
/// changes, what counts is worked out again. Each version is also kept among
/// the hub's recent ones.
async fn refilter_health_on_intent(hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let mut intent = hub.intent_receiver();
    loop {
        tokio::select! {
            changed = intent.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = intent.borrow_and_update().clone();
                hub.record_version(current);
                hub.refilter_health();
            }
            _ = shutdown_requested(&mut shutdown) => return,
        }
    }
}

/// Marks every node disconnected; the controller is going away.
fn stop_all(status: &StatusHandle) {
    let now = crate::status::now_rfc3339();
    status.update(|d| {
        for node in d.nodes.values_mut().filter(|n| n.connected) {
            node.connected = false;
            node.disconnected_at = Some(now.clone());
        }
    })
}

fn spawn_signal_handler(
    shutdown: Arc<watch::Sender<bool>>,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let setup = |kind: SignalKind| {
        signal(kind)
            .map_err(|e| ServeError::Config(format!("cannot install a signal handler: {e}")))
    };
    let mut term = setup(SignalKind::terminate())?;
    let mut int = setup(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name}: shutting down");
        shutdown.send_replace(true);
    }))
}
