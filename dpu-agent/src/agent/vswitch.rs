//! What the loop keeps about the vswitch besides the flows: the Geneve port,
//! the restart of `ovs-vswitchd`, and what each port write was for.

use std::collections::BTreeMap;
use std::time::Duration;

use super::probes::ProbeJob;
use crate::compile::pipeline::TUNNEL_IFACE_ID;
use crate::compile::NodeFacts;
use crate::state::pods::PodJob;
use crate::vswitch::ovsdb::{OvsdbError, OvsdbSession, OvsdbState};
use crate::vswitch::portwriter::{PortWrite, PortWriter};

/// What a port write was for, carried back to the loop in its completion.
#[derive(Debug)]
pub(super) enum PortJob {
    Tunnel,
    Probe(ProbeJob),
    Pod(Box<PodJob>),
}

impl From<PodJob> for PortJob {
    fn from(j: PodJob) -> Self {
        PortJob::Pod(Box::new(j))
    }
}

impl From<ProbeJob> for PortJob {
    fn from(j: ProbeJob) -> Self {
        PortJob::Probe(j)
    }
}

/// What the agent does when `ovs-vswitchd` goes away and comes back: set
/// `flow-restore-wait` so the new one does not forward with half-filled tables,
/// reinstall everything once it is back, then clear the key and read it back.
#[derive(Debug, Default)]
pub(super) struct SwitchRestart {
    /// When the switch was seen gone (the start of the forwarding gap).
    pub(super) since: Option<tokio::time::Instant>,
    /// The key is set (or may be) and the next successful apply clears it.
    pub(super) reinstalling: bool,
}

impl SwitchRestart {
    pub(super) async fn gone(&mut self, ovsdb: &OvsdbSession) {
        if self.since.is_some() {
            return;
        }
        self.since = Some(tokio::time::Instant::now());
        let set = match ovsdb.client() {
            Some(c) => crate::vswitch::ovsdb::set_flow_restore_wait(&c, true)
                .await
                .map_err(|e| e.to_string()),
            None => Err("OVSDB is not connected".into()),
        };
        match set {
            Ok(()) => tracing::warn!(
                "ovs-vswitchd is gone; set flow-restore-wait until everything is back"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "ovs-vswitchd is gone; could not set flow-restore-wait")
            }
        }
    }

    /// After a successful apply: clear the key and check that it is cleared.
    pub(super) async fn finish(&mut self, ovsdb: &OvsdbSession) {
        let Some(c) = ovsdb.client() else { return };
        let cleared = async {
            crate::vswitch::ovsdb::set_flow_restore_wait(&c, false).await?;
            crate::vswitch::ovsdb::flow_restore_wait(&c).await
        };
        match cleared.await {
            Ok(false) => {
                let gap_ms = self.since.map(|t| t.elapsed().as_millis());
                tracing::info!(?gap_ms, "reinstalled after the ovs-vswitchd restart; flow-restore-wait cleared and verified");
                *self = SwitchRestart::default();
            }
            Ok(true) => {
                tracing::warn!("flow-restore-wait is still set after clearing it; retrying")
            }
            Err(e) => tracing::warn!(error = %e, "cannot clear flow-restore-wait; retrying"),
        }
    }
}

/// The bridge's Geneve port, put back whenever it is missing (the bridge was
/// recreated, someone deleted it), at most every 2 s.
pub(super) struct TunnelPort {
    pub(super) name: String,
    pub(super) last_try: Option<tokio::time::Instant>,
    /// A write is in flight.
    pub(super) writing: bool,
}

impl TunnelPort {
    pub(super) fn new(bridge: &str) -> Self {
        TunnelPort {
            name: format!("{bridge}-gnv"),
            last_try: None,
            writing: false,
        }
    }

    /// Queues the port's write on `writer` when it is missing, none is in flight
    /// and the last try is 2 s old.
    pub(super) fn ensure(
        &mut self,
        ovsdb: &OvsdbSession,
        writer: &PortWriter<PortJob>,
        facts: &NodeFacts,
    ) {
        if facts.ports.contains_key(TUNNEL_IFACE_ID)
            || self.writing
            || self
                .last_try
                .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        self.last_try = Some(tokio::time::Instant::now());
        let Some(client) = ovsdb.client() else { return };
        self.writing = true;
        writer.send(
            client,
            PortWrite::Tunnel {
                port: self.name.clone(),
            },
            PortJob::Tunnel,
        );
    }

    pub(super) fn completed(&mut self, result: Result<(), OvsdbError>) {
        self.writing = false;
        match result {
            Ok(()) => tracing::info!(port = %self.name, "Geneve tunnel port on the bridge"),
            Err(e) => tracing::warn!(port = %self.name, error = %e, "cannot add the tunnel port"),
        }
    }
}

pub(super) fn ports_of(state: &OvsdbState) -> BTreeMap<String, u32> {
    state
        .ports
        .iter()
        .map(|(id, p)| (id.clone(), p.ofport))
        .collect()
}
