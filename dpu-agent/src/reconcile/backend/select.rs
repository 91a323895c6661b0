//! The backend `ovs.openflow_backend` names: the native OpenFlow 1.5 connection
//! (the default) or `ovs-ofctl` (kept for comparison and as a fallback).

use super::{
    BundleOp, InstalledSummary, NativeBackend, OfctlBackend, OpenFlowBackend, OpenFlowError,
};

/// `ovs.openflow_backend = "native"`.
pub const NATIVE: &str = "native";
/// `ovs.openflow_backend = "ovs-ofctl"`.
pub const OFCTL: &str = "ovs-ofctl";

/// One of the backends, chosen at start from the config.
#[derive(Debug)]
pub enum Backend {
    Native(NativeBackend),
    Ofctl(OfctlBackend),
}

impl Backend {
    /// The backend `name` (one of [`NATIVE`], [`OFCTL`]) for `target`
    /// (`unix:<rundir>/<bridge>.mgmt`); `ofctl_path` is the `ovs-ofctl` binary.
    pub fn new(name: &str, target: String, ofctl_path: &str) -> Result<Backend, OpenFlowError> {
        match name {
            NATIVE => Ok(Backend::Native(NativeBackend::new(target)?)),
            OFCTL => Ok(Backend::Ofctl(OfctlBackend::new(target, ofctl_path))),
            other => Err(OpenFlowError::Protocol(format!(
                "unknown OpenFlow backend {other:?}; want {NATIVE:?} or {OFCTL:?}"
            ))),
        }
    }

    /// The config name of this backend.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Native(_) => NATIVE,
            Backend::Ofctl(_) => OFCTL,
        }
    }
}

impl OpenFlowBackend for Backend {
    async fn apply(&mut self, ops: &[BundleOp]) -> Result<(), OpenFlowError> {
        match self {
            Backend::Native(b) => b.apply(ops).await,
            Backend::Ofctl(b) => b.apply(ops).await,
        }
    }

    async fn installed(&mut self) -> Result<InstalledSummary, OpenFlowError> {
        match self {
            Backend::Native(b) => b.installed().await,
            Backend::Ofctl(b) => b.installed().await,
        }
    }
}
