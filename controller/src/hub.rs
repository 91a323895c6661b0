//! The `AgentControl` gRPC service: one task per agent session.
//!
//! A session authenticates the node by its client certificate, then runs the
//! `SessionCore` state machine against the published intent and the agent's
//! replies, and records what happens in the status. A certificate of a revoked
//! node (or a revoked serial) is refused before the session starts, and a live
//! session ends when its node is revoked (see `revocation`). The hub keeps one
//! session per node: a new one replaces (ends) the old. The pods an agent reports
//! (`LocalWorkloads`) are checked here and handed to the intent task through the
//! report inbox; they come back as a new intent version like a manifest reload.
//! An agent's `Status` is checked by `agentstatus` and recorded in the status
//! (`StatusHandle::record_agent_status`): one over its bounds is refused whole
//! and named in the node's `last_error`, and the session goes on.
//!
//! Authorization (`authz`): a node's Health verdicts count only for the backends
//! it hosts. The hub keeps each node's claim and the part of it that counts,
//! re-filtered whenever the intent changes (`refilter_health`), and sends every
//! agent the union of what counts, at most every `HEALTH_MIN_INTERVAL` and only
//! when it changed. Revoking a node (`revoke_node`) drops its verdicts and its
//! reported pods at once. Peer-supplied text is bounded and escaped before it
//! reaches the log or the status.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dpu_proto::v1 as pb;
use dpu_proto::v1::agent_control_server::AgentControl;
use dpu_proto::v1::agent_message::Msg;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::escape::escape_peer;
use crate::nodes::NodeRecord;
use crate::pki::{peer_identity, PeerIdentity};
use crate::reported::{check_report, ReportInbox, ReportedSet, RevisionGate};
use crate::session::{Published, SessionCore};
use crate::shutdown::shutdown_requested;
use crate::status::{now_rfc3339, NackRecord, StatusHandle};
use crate::verdicts::{BackendKey, Change, Claim, ClaimInbox, Verdicts, MAX_HEALTH_ENTRIES};

/// The agent must say Hello within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// An agent that does not take an update within this time is disconnected.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
const OUTBOUND_QUEUE: usize = 4;
/// The longest `Hello.agent_version` (a version string, kept in the status).
pub const MAX_AGENT_VERSION_LEN: usize = 128;
/// The longest `Hello.store_id` (ours are 33 bytes: two 16-digit hex ids).
/// It is only compared, never stored or printed.
pub const MAX_STORE_ID_LEN: usize = 128;
/// At most one Health message per session within this time: changes in between
/// are coalesced into the next one (the latest union), so a node that flips its
/// verdicts cannot make the controller flood every agent.
pub const HEALTH_MIN_INTERVAL: Duration = Duration::from_millis(250);
/// How much of a peer-supplied string a log line or the status shows.
const PEER_TEXT_MAX: usize = 200;
/// At most one log line per node per this time about verdicts that do not count.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The unhealthy backends every agent is told: the union over the nodes of the
/// verdicts that count.
pub type HealthUnion = Arc<BTreeSet<BackendKey>>;

type Outbound = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

/// A registered session: who it is and how to end it (with the status the
/// agent is told).
#[derive(Debug)]
struct Registered {
    id: u64,
    serial: String,
    end: watch::Sender<Option<Status>>,
}

/// A live session as the revocation watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    pub node: String,
    pub id: u64,
    /// The serial of the client certificate it authenticated with.
    pub serial: String,
}

/// Shared by all sessions.
#[derive(Debug)]
pub struct Hub {
    intent: watch::Receiver<Arc<Published>>,
    status: StatusHandle,
    shutdown: watch::Receiver<bool>,
    /// Reported sets on their way to the intent task.
    reports: Arc<ReportInbox>,
    /// The node records, as the store has them (`revocation` keeps this
    /// current from a watch).
    /// A record the store holds but that cannot be read is kept as why: it
    /// refuses new sessions of its node (revocation fails closed).
    records: Mutex<HashMap<String, Result<NodeRecord, String>>>,
    /// node → its current session.
    sessions: Mutex<HashMap<String, Registered>>,
    next_id: AtomicU64,
    /// Verdicts per node: the claims and what counts of them.
    verdicts: Mutex<Verdicts>,
    /// node → when a refusal of its verdicts was last logged.
    refusal_logged: Mutex<HashMap<String, tokio::time::Instant>>,
    /// The union of the verdicts that count, for the sessions.
    health: watch::Sender<HealthUnion>,
    /// The last few versions published, newest last: an agent that comes back
    /// at one of them gets the increment from there (`SessionCore::start`).
    recent: Mutex<VecDeque<Arc<Published>>>,
    /// Claims made here, on their way to the store, so that every replica
    /// counts them (`healthsync`).
    claims_out: Arc<ClaimInbox>,
}

/// How long a session waits for this replica to reach the version an agent
/// already has (it came from a replica further along) before refusing it.
pub const CATCH_UP: Duration = Duration::from_secs(5);

/// How many published versions the hub keeps for agents a little behind. Each
/// holds a whole intent, so few: at 10k Services one is ~13 MiB.
pub const RECENT_VERSIONS: usize = 4;

impl Hub {
    pub fn new(
        intent: watch::Receiver<Arc<Published>>,
        status: StatusHandle,
        shutdown: watch::Receiver<bool>,
        reports: Arc<ReportInbox>,
        records: Vec<crate::nodes::Held>,
    ) -> Self {
        let first = intent.borrow().clone();
        Hub {
            recent: Mutex::new(VecDeque::from([first])),
            claims_out: Arc::new(ClaimInbox::default()),
            intent,
            status,
            shutdown,
            reports,
            records: Mutex::new(records.into_iter().collect()),
            sessions: Mutex::new(HashMap::new()),
            verdicts: Mutex::new(Verdicts::default()),
            refusal_logged: Mutex::new(HashMap::new()),
            health: watch::channel(Arc::new(BTreeSet::new())).0,
            next_id: AtomicU64::new(1),
        }
    }

    /// Replaces `node`'s claim and recomputes what counts of it against the
    /// intent in force; the refused part is logged (at a bounded rate) and shown
    /// in the node's status.
    fn set_health_claim(&self, node: &str, claim: Claim) {
        self.claims_out.submit(node, claim.clone());
        self.count_claim(node, claim);
    }

    /// Counts a claim that the store holds (made here or at another replica).
    pub fn count_claim(&self, node: &str, claim: Claim) {
        let intent = self.intent.borrow().intent.clone();
        let mut v = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        let change = v.set_claim(&intent, node, claim);
        self.apply(change);
    }

    /// Filters every node's claim again, against the intent in force now (a
    /// backend may have moved to another node, or gone).
    pub fn refilter_health(&self) {
        let intent = self.intent.borrow().intent.clone();
        let mut v = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        let change = v.refilter(&intent);
        self.apply(change);
    }

    /// Logs and records the refusals of a change, and tells the sessions the
    /// new union. Called with the verdicts locked, so unions go out in order.
    fn apply(&self, change: Change) {
        for (node, refused) in &change.refused {
            self.record_refused(node, refused);
        }
        if let Some(union) = change.union {
            self.health.send_if_modified(|u| {
                if **u == union {
                    return false;
                }
                *u = Arc::new(union);
                true
            });
        }
    }

    /// Shows in the node's status how many of its verdicts do not count (the
    /// status is written only when that changed), and logs them at most once
    /// per node per `REFUSAL_LOG_INTERVAL`.
    fn record_refused(&self, node: &str, refused: &[String]) {
        if !refused.is_empty() {
            let now = tokio::time::Instant::now();
            let mut logged = self
                .refusal_logged
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let due = logged
                .get(node)
                .is_none_or(|at| now.duration_since(*at) >= REFUSAL_LOG_INTERVAL);
            if due {
                logged.insert(node.to_string(), now);
                tracing::warn!(
                    node,
                    refused = refused.len(),
                    examples = ?refused.iter().take(3).collect::<Vec<_>>(),
                    "health verdicts for backends this node does not host do not count"
                );
            }
        }
        let examples: Vec<String> = refused.iter().take(5).cloned().collect();
        let known = self.status.refused_health(node);
        if known.as_ref() == Some(&(refused.len(), examples.clone()))
            || (known.is_none() && refused.is_empty())
        {
            return;
        }
        self.status.update_node(node, |n| {
            n.refused_health = refused.len();
            n.refused_health_examples = examples;
        });
    }

    /// Drops everything `node` said: its verdicts now, and its reported pods
    /// at the intent task's next round (a new version for every agent). Later
    /// reports of it are ignored until a new session is admitted for it.
    pub fn revoke_node(&self, node: &str) {
        self.reports.revoke(node);
        self.claims_out.submit(node, Claim::new());
        let mut v = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        let union = v.drop_node(node);
        self.apply(Change {
            refused: Vec::new(),
            union,
        });
        drop(v);
        self.refusal_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
        self.status.update_node(node, |n| {
            n.refused_health = 0;
            n.refused_health_examples.clear();
            n.last_error = Some(format!(
                "node {node} is revoked: its reported pods and health verdicts were dropped"
            ));
        });
        tracing::warn!(
            node,
            "node revoked: its reported pods and health verdicts are dropped"
        );
    }

    /// The nodes whose reports (pods or verdicts) are in force, for the
    /// revocation watcher.
    pub fn reporting_nodes(&self) -> BTreeSet<String> {
        let v = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        let mut nodes: BTreeSet<String> = v.nodes().cloned().collect();
        nodes.extend(self.reports.reporters());
        nodes
    }

    /// Whether `node` is one of [`Hub::reporting_nodes`].
    fn is_reporting(&self, node: &str) -> bool {
        let v = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        v.has_claim(node) || self.reports.is_reporter(node)
    }

    /// `node`'s session now running, if any.
    fn session_of(&self, node: &str) -> Option<LiveSession> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get(node).map(|r| LiveSession {
            node: node.to_string(),
            id: r.id,
            serial: r.serial.clone(),
        })
    }

    /// Hands a reported set to the intent task, unless a newer session of the
    /// node has taken over (its agent reports for itself). True if handed on.
    fn submit_report(&self, node: &str, id: u64, set: ReportedSet) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get(node).is_some_and(|r| r.id == id) && self.reports.submit(node, set)
    }

    /// Makes this the node's session, ending any earlier one. The receiver
    /// gets the status to end this session with.
    fn register(&self, node: &str, serial: &str) -> (u64, watch::Receiver<Option<Status>>) {
        // Admitted (not revoked): its reports count again.
        self.reports.readmit(node);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (end, rx) = watch::channel(None);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let new = Registered {
            id,
            serial: serial.to_string(),
            end,
        };
        if let Some(old) = sessions.insert(node.to_string(), new) {
            tracing::info!(
                node,
                old_session = old.id,
                session = id,
                "a new session replaces the old one"
            );
            let _ = old.end.send(Some(Status::aborted(format!(
                "replaced by a newer session for node {node}"
            ))));
        }
        (id, rx)
    }

    /// Forgets the session; true if it was still the node's current one.
    fn unregister(&self, node: &str, id: u64) -> bool {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(node).is_some_and(|r| r.id == id) {
            sessions.remove(node);
            true
        } else {
            false
        }
    }

    /// The sessions now running.
    pub fn live_sessions(&self) -> Vec<LiveSession> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .iter()
            .map(|(node, r)| LiveSession {
                node: node.clone(),
                id: r.id,
                serial: r.serial.clone(),
            })
            .collect()
    }

    /// Ends session `id` of `node` (if it still runs) with `status`.
    pub fn end_session(&self, node: &str, id: u64, status: Status) {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = sessions.get(node).filter(|r| r.id == id) {
            let _ = r.end.send(Some(status));
        }
    }

    /// A node's record changed in the store (`None`: deleted). Sessions it no
    /// longer admits end; a revoked node's reports are dropped.
    pub fn set_record(&self, node: &str, record: Option<Result<NodeRecord, String>>) {
        {
            let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
            match &record {
                Some(r) if records.get(node) == Some(r) => {
                    drop(records);
                    // Unchanged, but a revoked node's reports may have come
                    // back meanwhile (written by a replica that had not seen
                    // the revocation yet, or in force at start).
                    if matches!(r, Ok(r) if r.revoked) && self.is_reporting(node) {
                        self.revoke_node(node);
                    }
                    return;
                }
                Some(r) => {
                    records.insert(node.to_string(), r.clone());
                }
                None => {
                    if records.remove(node).is_none() {
                        return;
                    }
                }
            }
        }
        // Only after the record is in place (see `admitted`).
        let Some(Ok(record)) = record else { return };
        let session = self.session_of(node);
        if record.revoked && (session.is_some() || self.is_reporting(node)) {
            self.revoke_node(node);
        }
        if let Some(s) = session {
            if let Err(revoked) = record.admits(&s.serial) {
                tracing::warn!(node, session = s.id, "ending the session: {revoked}");
                self.end_session(node, s.id, Status::permission_denied(revoked.to_string()));
            }
        }
    }

    /// Every record, as a re-list read them: changed ones act as in
    /// `set_record`, and records no longer listed are forgotten.
    pub fn set_records(&self, records: Vec<crate::nodes::Held>) {
        let gone: Vec<String> = {
            let held = self.records.lock().unwrap_or_else(|e| e.into_inner());
            let listed: BTreeSet<&str> = records.iter().map(|(n, _)| n.as_str()).collect();
            held.keys()
                .filter(|n| !listed.contains(n.as_str()))
                .cloned()
                .collect()
        };
        for node in gone {
            self.set_record(&node, None);
        }
        for (node, r) in records {
            self.set_record(&node, Some(r));
        }
    }

    /// Whether `node`'s record admits the certificate `serial`. A session is
    /// registered before this is asked, and `set_record` updates the record
    /// before it looks at sessions, so a revocation is never missed between
    /// the two.
    fn admitted(&self, node: &str, serial: &str) -> Result<(), Status> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        match records.get(node) {
            None => Ok(()),
            Some(Ok(r)) => r
                .admits(serial)
                .map_err(|e| Status::permission_denied(e.to_string())),
            Some(Err(why)) => {
                tracing::error!(node, "cannot check revocation: {why}");
                Err(Status::unavailable(format!(
                    "cannot check whether node {node} is revoked; try again"
                )))
            }
        }
    }

    /// The published intent, for tasks that follow it.
    /// The claims made here, for `healthsync` to write to the store.
    pub fn claims_out(&self) -> Arc<ClaimInbox> {
        self.claims_out.clone()
    }

    /// Whether `node` was revoked since its last admitted session.
    pub fn is_revoked(&self, node: &str) -> bool {
        self.reports.is_revoked(node)
    }

    /// Keeps `p` among the recent versions (see [`RECENT_VERSIONS`]).
    pub fn record_version(&self, p: Arc<Published>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.back().is_some_and(|b| b.version == p.version) {
            return;
        }
        recent.push_back(p);
        while recent.len() > RECENT_VERSIONS {
            recent.pop_front();
        }
    }

    /// The recent version `version`, if the hub still holds it.
    fn recent_version(&self, version: u64) -> Option<Arc<Published>> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|p| p.version == version)
            .cloned()
    }

    pub fn intent_receiver(&self) -> watch::Receiver<Arc<Published>> {
        self.intent.clone()
    }

    /// Refuses a certificate whose node is revoked, or whose serial is.
    fn check_admitted(&self, peer: &PeerIdentity) -> Result<(), Status> {
        for name in &peer.names {
            if dpu_model::check_name(name).is_err() {
                continue; // never a node; Hello cannot name it
            }
            self.admitted(name, &peer.serial)?;
        }
        Ok(())
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct ControlService {
    hub: Arc<Hub>,
}

impl ControlService {
    pub fn new(hub: Arc<Hub>) -> Self {
        ControlService { hub }
    }
}

#[tonic::async_trait]
impl AgentControl for ControlService {
    type SessionStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let certs = request
            .peer_certs()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let peer = request.remote_addr();
        let identity = peer_identity(&certs[0]).map_err(|e| {
            tracing::warn!(?peer, "session refused: {e}");
            match e {
                crate::pki::PkiError::WrongRole(m) => Status::permission_denied(m),
                e => Status::unauthenticated(e.to_string()),
            }
        })?;
        if let Err(status) = self.hub.check_admitted(&identity) {
            tracing::warn!(?peer, names = ?identity.names, serial = %identity.serial, "session refused: {}", status.message());
            return Err(status);
        }
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        tokio::spawn(run_session(
            self.hub.clone(),
            identity,
            peer,
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Why a session ended, as the agent is told.
fn end_with(tx: &Outbound, status: Status) {
    // The stream may already be gone; there is nobody left to tell then.
    let _ = tx.try_send(Err(status));
}

async fn run_session(
    hub: Arc<Hub>,
    identity: PeerIdentity,
    peer: Option<SocketAddr>,
    mut inbound: Streaming<pb::AgentMessage>,
    tx: Outbound,
) {
    let cert_names = identity.names;
    let hello = match await_hello(&mut inbound).await {
        Ok(h) => h,
        Err(status) => {
            tracing::warn!(?peer, ?cert_names, "session refused: {}", status.message());
            return end_with(&tx, status);
        }
    };
    if !cert_names.contains(&hello.node) {
        let msg = format!(
            "Hello names node {} but the client certificate is for {:?}",
            escape_peer(&format!("{:?}", hello.node), PEER_TEXT_MAX),
            cert_names.join(", ")
        );
        tracing::warn!(?peer, "session refused: {msg}");
        return end_with(&tx, Status::permission_denied(msg));
    }
    for (field, len, max) in [
        (
            "agent_version",
            hello.agent_version.len(),
            MAX_AGENT_VERSION_LEN,
        ),
        ("store_id", hello.store_id.len(), MAX_STORE_ID_LEN),
    ] {
        if len > max {
            let msg = format!("Hello.{field}: {len} bytes, at most {max}");
            tracing::warn!(?peer, node = %hello.node, "session refused: {msg}");
            return end_with(&tx, Status::invalid_argument(msg));
        }
    }
    let agent_version = escape_peer(&hello.agent_version, MAX_AGENT_VERSION_LEN);
    let node = hello.node.clone();
    let (id, ended) = hub.register(&node, &identity.serial);
    // Again, now that the session is registered (see `Hub::admitted`).
    if let Err(status) = hub.admitted(&node, &identity.serial) {
        tracing::warn!(?peer, node, "session refused: {}", status.message());
        hub.unregister(&node, id);
        return end_with(&tx, status);
    }
    tracing::info!(node, session = id, ?peer, hello_version = hello.last_applied_version, agent = %agent_version, "agent connected");
    hub.status.update_node(&node, |n| {
        n.connected = true;
        n.connected_since = Some(now_rfc3339());
        n.disconnected_at = None;
        n.peer = peer.map(|p| p.to_string());
        n.agent_version = agent_version.clone();
        n.hello_version = hello.last_applied_version;
    });

    let result = drive(&hub, &node, id, &hello, ended, &mut inbound, &tx).await;
    if let Err(status) = &result {
        if !matches!(
            status.code(),
            tonic::Code::Aborted | tonic::Code::Unavailable
        ) {
            hub.status
                .update_node(&node, |n| n.last_error = Some(status.message().to_string()));
        }
        tracing::info!(node, session = id, "session ended: {}", status.message());
    } else {
        tracing::info!(node, session = id, "agent disconnected");
    }
    if let Err(status) = result {
        end_with(&tx, status);
    }
    if hub.unregister(&node, id) {
        hub.status.update_node(&node, |n| {
            n.connected = false;
            n.disconnected_at = Some(now_rfc3339());
        });
    }
}

/// Waits for the first message, which must be Hello.
async fn await_hello<S>(inbound: &mut S) -> Result<pb::Hello, Status>
where
    S: Stream<Item = Result<pb::AgentMessage, Status>> + Unpin,
{
    match tokio::time::timeout(HELLO_TIMEOUT, inbound.next()).await {
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no Hello within {} s",
            HELLO_TIMEOUT.as_secs()
        ))),
        Ok(None) => Err(Status::cancelled("the stream ended before Hello")),
        Ok(Some(Err(status))) => Err(status),
        Ok(Some(Ok(pb::AgentMessage {
            msg: Some(Msg::Hello(h)),
        }))) => Ok(h),
        Ok(Some(Ok(_))) => Err(Status::invalid_argument("the first message must be Hello")),
    }
}

/// The session after Hello: updates out, replies in, until one side ends it.
async fn drive(
    hub: &Hub,
    node: &str,
    id: u64,
    hello: &pb::Hello,
    mut ended: watch::Receiver<Option<Status>>,
    inbound: &mut Streaming<pb::AgentMessage>,
    tx: &Outbound,
) -> Result<(), Status> {
    let mut intent = hub.intent.clone();
    let mut shutdown = hub.shutdown.clone();
    let mut core = SessionCore::new(node);
    // Revisions count per agent process; a new session starts over.
    let mut gate = RevisionGate::default();
    let mut current = intent.borrow_and_update().clone();
    // An agent ahead in this very numbering came from a replica whose watch
    // is further along: wait for this one to catch up rather than send a
    // version that goes backwards; if it does not, the agent tries another.
    if hello.last_applied_version > current.version && hello.store_id == *current.store_id {
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        while current.version < hello.last_applied_version {
            match tokio::time::timeout_at(deadline, intent.changed()).await {
                Ok(Ok(())) => current = intent.borrow_and_update().clone(),
                Ok(Err(_)) => return Err(Status::unavailable("the controller is shutting down")),
                Err(_) => {
                    return Err(Status::unavailable(format!(
                        "this controller is at version {}, behind the agent's {}; try another controller",
                        current.version, hello.last_applied_version
                    )))
                }
            }
        }
    }
    if hello.last_applied_version > current.version {
        tracing::warn!(
            node,
            agent = hello.last_applied_version,
            controller = current.version,
            "the agent is ahead of this controller (was the state dir replaced?); sending a snapshot"
        );
    }
    let mut health = hub.health.subscribe();
    let nack_pending = hub.status.nack_pending(node);
    let earlier = hub.recent_version(hello.last_applied_version);
    match core.start(
        hello.last_applied_version,
        &hello.store_id,
        nack_pending,
        &current,
        earlier.as_deref(),
    ) {
        Some(update) => send(hub, node, tx, update).await?,
        None => {
            tracing::info!(node, version = current.version, "agent is up to date");
            hub.status.update_node(node, |n| {
                n.sent_version = current.version;
                n.applied_version = n.applied_version.max(hello.last_applied_version);
            });
        }
    }
    // Health goes out on every change, but at most every HEALTH_MIN_INTERVAL
    // (the latest union then), and only when it differs from what was sent.
    let mut health_sent = health.borrow_and_update().clone();
    send_health(node, tx, &health_sent).await?;
    let mut health_sent_at = tokio::time::Instant::now();
    let mut health_due: Option<tokio::time::Instant> = None;
    // A version only the switch refused is sent again, with backoff: the switch
    // may take it later. A refusal of the intent itself is not retried.
    let mut retry = SwitchRetry::default();
    // Versions that changed nothing for this node, told at most every
    // QUIET_FLUSH in one empty update (`SessionCore::on_version_quietly`).
    let mut quiet_due: Option<tokio::time::Instant> = None;
    let mut quiet_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = sleep_until_or_never(quiet_due), if quiet_due.is_some() => {
                quiet_due = None;
                quiet_since = None;
                if let Some(update) = core.flush() {
                    send(hub, node, tx, update).await?;
                }
            }
            _ = sleep_until_or_never(retry.at), if retry.at.is_some() => {
                retry.at = None;
                let current = intent.borrow().clone();
                if let Some(update) = core.retry(&current) {
                    tracing::info!(node, version = current.version, "sending again the version the switch refused");
                    send(hub, node, tx, update).await?;
                }
            }
            _ = ended.changed() => {
                let why = ended.borrow().clone();
                return Err(why.unwrap_or_else(|| Status::aborted("ended by the controller")));
            }
            changed = health.changed() => {
                if changed.is_err() {
                    return Err(Status::unavailable("the controller is shutting down"));
                }
                health.borrow_and_update();
                let earliest = health_sent_at + HEALTH_MIN_INTERVAL;
                health_due.get_or_insert(earliest.max(tokio::time::Instant::now()));
            }
            _ = sleep_until_or_never(health_due), if health_due.is_some() => {
                health_due = None;
                let now = health.borrow().clone();
                if !Arc::ptr_eq(&now, &health_sent) && *now != *health_sent {
                    send_health(node, tx, &now).await?;
                    health_sent = now;
                    health_sent_at = tokio::time::Instant::now();
                }
            }
            _ = shutdown_requested(&mut shutdown) => {
                return Err(Status::unavailable("the controller is shutting down"));
            }
            changed = intent.changed() => {
                if changed.is_err() {
                    return Err(Status::unavailable("the controller is shutting down"));
                }
                let current = intent.borrow_and_update().clone();
                if let Some(update) = core.on_version_quietly(&current) {
                    quiet_due = None;
                    quiet_since = None;
                    send(hub, node, tx, update).await?;
                } else if core.is_quiet() {
                    // Told once versions stop coming for QUIET_FLUSH, and at
                    // least every QUIET_MAX while they keep coming.
                    let now = tokio::time::Instant::now();
                    let since = *quiet_since.get_or_insert(now);
                    quiet_due = Some((now + crate::session::QUIET_FLUSH).min(since + crate::session::QUIET_MAX));
                }
            }
            msg = inbound.message() => match msg? {
                None => return Ok(()),
                Some(pb::AgentMessage { msg: Some(m) }) => {
                    match on_message(hub, node, id, &mut core, &mut gate, m)? {
                        Reply::SwitchRefused => retry.schedule(),
                        Reply::Applied => retry = SwitchRetry::default(),
                        Reply::Other => {}
                    }
                }
                Some(_) => return Err(Status::invalid_argument("empty AgentMessage")),
            },
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// Sends the union of every node's verdicts that count.
async fn send_health(node: &str, tx: &Outbound, union: &HealthUnion) -> Result<(), Status> {
    let msg = pb::ControllerMessage {
        msg: Some(pb::controller_message::Msg::Health(pb::Health {
            unhealthy: union
                .iter()
                .map(|(vpc, ip)| pb::BackendRef {
                    vpc: vpc.clone(),
                    ip: ip.clone(),
                })
                .collect(),
        })),
    };
    match tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(msg))).await {
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the agent took no health update for {} s",
            SEND_TIMEOUT.as_secs()
        ))),
        Ok(Err(_)) => Err(Status::cancelled("the agent went away")),
        Ok(Ok(())) => {
            tracing::debug!(node, unhealthy = union.len(), "sent health");
            Ok(())
        }
    }
}

async fn send(hub: &Hub, node: &str, tx: &Outbound, update: pb::Update) -> Result<(), Status> {
    let (version, base, snapshot) = (update.version, update.base_version, update.snapshot);
    let (upserts, deletes) = (update.upserts.len(), update.deletes.len());
    let msg = pb::ControllerMessage {
        msg: Some(pb::controller_message::Msg::Update(update)),
    };
    match tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(msg))).await {
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "the agent took no update for {} s",
                SEND_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(_)) => return Err(Status::cancelled("the agent went away")),
        Ok(Ok(())) => {}
    }
    tracing::info!(
        node,
        version,
        base,
        snapshot,
        upserts,
        deletes,
        "sent update"
    );
    hub.status.update_node(node, |n| n.sent_version = version);
    Ok(())
}

/// What an agent message meant for retrying.
enum Reply {
    /// An Ack: the agent has the version.
    Applied,
    /// A Nack whose every error is the switch's (field `switch`).
    SwitchRefused,
    Other,
}

/// Backoff for sending a switch-refused version again: 2 s, doubling to 60 s,
/// reset by an Ack.
#[derive(Debug, Default)]
struct SwitchRetry {
    at: Option<tokio::time::Instant>,
    delay: Option<std::time::Duration>,
}

impl SwitchRetry {
    const FIRST: std::time::Duration = std::time::Duration::from_secs(2);
    const MAX: std::time::Duration = std::time::Duration::from_secs(60);

    fn schedule(&mut self) {
        let d = self.delay.map_or(Self::FIRST, |d| (d * 2).min(Self::MAX));
        self.delay = Some(d);
        self.at = Some(tokio::time::Instant::now() + d);
    }
}

async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn on_message(
    hub: &Hub,
    node: &str,
    id: u64,
    core: &mut SessionCore,
    gate: &mut RevisionGate,
    msg: Msg,
) -> Result<Reply, Status> {
    let mut reply = Reply::Other;
    match msg {
        Msg::Hello(_) => return Err(Status::invalid_argument("Hello may only be sent once")),
        Msg::LocalWorkloads(lw) => on_local_workloads(hub, node, id, gate, lw),
        Msg::Health(h) => on_health(hub, node, h)?,
        Msg::Ack(ack) => {
            if core.on_ack(ack.version, &ack.nonce) {
                reply = Reply::Applied;
                tracing::info!(node, version = ack.version, "agent applied");
                hub.status.update_node(node, |n| {
                    n.applied_version = n.applied_version.max(ack.version);
                    n.nack_pending = false;
                    n.last_error = None;
                });
            } else {
                tracing::warn!(node, version = ack.version, nonce = %escape_peer(&ack.nonce, 64), "ignoring an Ack that matches no update sent");
            }
        }
        Msg::Nack(nack) => {
            if core.on_nack(nack.version, &nack.nonce) {
                if !nack.errors.is_empty()
                    && nack
                        .errors
                        .iter()
                        .all(|e| e.key.is_none() && e.field == "switch")
                {
                    reply = Reply::SwitchRefused;
                }
                let errors: Vec<String> = nack
                    .errors
                    .iter()
                    .map(|e| escape_peer(&dpu_model::error_text(e), 1024))
                    .collect();
                tracing::warn!(
                    node,
                    version = nack.version,
                    ?errors,
                    "agent refused update"
                );
                hub.status.update_node(node, |n| {
                    n.nack_pending = true;
                    n.last_error = Some(format!(
                        "NACK of version {}: {}",
                        nack.version,
                        errors.join("; ")
                    ));
                    n.last_nack = Some(NackRecord {
                        version: nack.version,
                        at: now_rfc3339(),
                        errors,
                    });
                });
            } else {
                tracing::warn!(node, version = nack.version, nonce = %escape_peer(&nack.nonce, 64), "ignoring a Nack that matches no update sent");
            }
        }
        Msg::Status(s) => {
            // A refused Status is recorded in the status, not fatal: the
            // session and the data plane are fine.
            if let Err(e) = hub.status.record_agent_status(node, s) {
                tracing::warn!(node, "keeping the previous agent status: {e}");
            }
        }
    }
    Ok(reply)
}

/// A node's unhealthy backends, replacing its previous report. A malformed or
/// oversized report ends the session with the reason; nothing of it is kept.
/// Of a well-formed one, only the verdicts for backends the node hosts count
/// (`authz`); the rest is logged and shown in its status.
fn on_health(hub: &Hub, node: &str, h: pb::Health) -> Result<(), Status> {
    if h.unhealthy.len() > MAX_HEALTH_ENTRIES {
        return Err(Status::invalid_argument(format!(
            "Health: {} entries; at most {MAX_HEALTH_ENTRIES}",
            h.unhealthy.len()
        )));
    }
    let mut claim = BTreeSet::new();
    for (i, b) in h.unhealthy.iter().enumerate() {
        dpu_model::check_name(&b.vpc).map_err(|m| {
            Status::invalid_argument(format!(
                "Health: unhealthy[{i}].vpc: {}",
                escape_peer(&m, PEER_TEXT_MAX)
            ))
        })?;
        let ip: IpAddr = b.ip.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "Health: unhealthy[{i}].ip: {} is not an IP address",
                escape_peer(&format!("{:?}", b.ip), PEER_TEXT_MAX)
            ))
        })?;
        claim.insert((b.vpc.clone(), ip));
    }
    if hub.reports.is_revoked(node) {
        tracing::warn!(node, "ignoring a Health report of a revoked node");
        return Ok(());
    }
    tracing::debug!(
        node,
        unhealthy = claim.len(),
        "node reported backend health"
    );
    hub.set_health_claim(node, claim);
    Ok(())
}

/// A node's full set of attached pods: checked entry by entry (the good ones are
/// kept), then merged by the intent task. A set older than the last one this
/// session accepted is ignored.
fn on_local_workloads(
    hub: &Hub,
    node: &str,
    id: u64,
    gate: &mut RevisionGate,
    lw: pb::LocalWorkloads,
) {
    if !gate.admit(lw.revision) {
        tracing::warn!(
            node,
            revision = lw.revision,
            "ignoring a stale set of local workloads (an older revision than the last)"
        );
        return;
    }
    let set = check_report(node, &lw.workloads);
    // The set's errors are escaped; a few go to the log, all to the status.
    for e in set.errors.iter().take(5) {
        tracing::warn!(
            node,
            revision = lw.revision,
            "dropping a reported workload: {e}"
        );
    }
    if set.errors.len() > 5 {
        tracing::warn!(
            node,
            revision = lw.revision,
            "dropping {} more reported workloads (see the node's status)",
            set.errors.len() - 5
        );
    }
    tracing::info!(
        node,
        revision = lw.revision,
        reported = lw.workloads.len(),
        valid = set.workloads.len(),
        "agent reported local workloads"
    );
    if !hub.submit_report(node, id, set) {
        tracing::info!(
            node,
            session = id,
            "ignoring local workloads from a replaced session or a revoked node"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn msg(m: Msg) -> Result<pb::AgentMessage, Status> {
        Ok(pb::AgentMessage { msg: Some(m) })
    }

    #[tokio::test(start_paused = true)]
    async fn hello_must_come_first_and_within_the_timeout() {
        let started = tokio::time::Instant::now();
        let mut silent = tokio_stream::pending::<Result<pb::AgentMessage, Status>>();
        let e = await_hello(&mut silent).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded);
        assert!(started.elapsed() >= HELLO_TIMEOUT);

        let ack = msg(Msg::Ack(pb::Ack::default()));
        let e = await_hello(&mut tokio_stream::iter([ack]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);

        let e = await_hello(&mut tokio_stream::empty()).await.unwrap_err();
        assert_eq!(e.code(), Code::Cancelled);

        let hello = msg(Msg::Hello(pb::Hello {
            store_id: String::new(),
            node: "dpu-1".into(),
            ..Default::default()
        }));
        let h = await_hello(&mut tokio_stream::iter([hello])).await.unwrap();
        assert_eq!(h.node, "dpu-1");
    }
}
