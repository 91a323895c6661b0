//! A fake [`OpenFlowBackend`] for tests and examples of everything up to the
//! switch. Compiled for this crate's unit tests and, with the `testkit`
//! feature, for its integration tests and examples (Cargo.toml enables it
//! there). The switch model of the reconciler's property tests, which checks
//! every op, is `tests/reconcile_props.rs`'s `MemorySwitch`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{BundleOp, InstalledSummary, OpenFlowBackend, OpenFlowError};

/// A switch that accepts every bundle at once and reports holding nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSwitch;

impl OpenFlowBackend for NullSwitch {
    async fn apply(&mut self, _ops: &[BundleOp]) -> Result<(), OpenFlowError> {
        Ok(())
    }

    async fn installed(&mut self) -> Result<InstalledSummary, OpenFlowError> {
        Ok(InstalledSummary::default())
    }
}

/// A switch that keeps every bundle it accepts and refuses them while
/// `refuse` is set, as a real switch that rejects a bundle does (nothing in
/// it applied). Clones share the record, so a test keeps one and hands the
/// other to the reconciler. It reports holding nothing.
#[derive(Debug, Default, Clone)]
pub struct RecordingSwitch {
    /// Every accepted bundle, in order.
    pub bundles: Arc<Mutex<Vec<Vec<BundleOp>>>>,
    /// While set, every bundle is refused.
    pub refuse: Arc<AtomicBool>,
}

impl RecordingSwitch {
    /// How many bundles were accepted.
    pub fn count(&self) -> usize {
        self.bundles.lock().unwrap().len()
    }

    /// The last accepted bundle (empty if none).
    pub fn last(&self) -> Vec<BundleOp> {
        self.bundles
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

impl OpenFlowBackend for RecordingSwitch {
    async fn apply(&mut self, ops: &[BundleOp]) -> Result<(), OpenFlowError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(OpenFlowError::Rejected("refused by the test".into()));
        }
        self.bundles.lock().unwrap().push(ops.to_vec());
        Ok(())
    }

    async fn installed(&mut self) -> Result<InstalledSummary, OpenFlowError> {
        Ok(InstalledSummary::default())
    }
}
