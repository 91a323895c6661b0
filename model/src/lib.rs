//! Domain model for VPC and Service intent.
//!
//! Both programs share it: the controller turns manifests into these types, the
//! agent turns wire messages into them (`convert`), and both run the same
//! cross-object rules (`validate`). The core of the agent never sees protobuf.

mod convert;
pub mod limits;
mod types;
mod validate;

pub use convert::*;
pub use types::*;
pub use validate::{validate, validate_changes, vnic_owner, Index};

use std::fmt;

/// A rejection of one object, naming its kind, name and the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ObjectError {
    pub key: ObjectKey,
    /// The field in manifest terms, e.g. `spec.ports[0].port`.
    pub field: String,
    pub message: String,
}

impl ObjectError {
    pub fn new(key: ObjectKey, field: impl Into<String>, message: impl Into<String>) -> Self {
        ObjectError {
            key,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.key, self.field, self.message)
    }
}
