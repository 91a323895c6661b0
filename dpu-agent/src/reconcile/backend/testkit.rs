//! A fake [`OpenFlowBackend`] for tests and examples of everything up to the
//! switch. Compiled for this crate's unit tests and, with the `testkit`
//! feature, for its integration tests and examples (Cargo.toml enables it
//! there). The switch model of the reconciler's property tests, which checks
//! every op, is `tests/reconcile_props.rs`'s `MemorySwitch`.

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
