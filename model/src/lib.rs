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
pub use validate::{
    node_rules, validate, validate_changes, validate_for_every_node, validate_for_node, vnic_owner,
    Index,
};

use std::fmt;

/// A rejection of one object, naming its kind, name and the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ObjectError {
    pub key: ObjectKey,
    /// The field in manifest terms, e.g. `spec.ports[0].port`.
    pub field: String,
    pub message: String,
    /// When two objects collide (the same VIP:port, address, VNI, port, ...):
    /// the same conflict told from the other object's side (its key and field,
    /// a message naming this one). `message` names the other object and its
    /// field too, as `Kind/name (field)`, so the text alone says who is
    /// involved; a caller that knows which of the two is new (the controller,
    /// across a reload) can show the error at that one.
    pub other: Option<Box<ObjectError>>,
}

impl ObjectError {
    pub fn new(key: ObjectKey, field: impl Into<String>, message: impl Into<String>) -> Self {
        ObjectError {
            key,
            field: field.into(),
            message: message.into(),
            other: None,
        }
    }

    /// A conflict between `a` and `b` (each a key and a field), reported at
    /// `a`. Each side says `before`, then the other as `Kind/name (field)`,
    /// then `after`: `a`'s message is `a_says` around `b`, and `b`'s side
    /// (in [`ObjectError::other`]) is `b_says` around `a`.
    pub fn conflict(
        a: (ObjectKey, String),
        a_says: (&str, &str),
        b: (ObjectKey, String),
        b_says: (&str, &str),
    ) -> Self {
        let mirror = ObjectError::new(
            b.0.clone(),
            b.1.clone(),
            format!("{} {} ({}){}", b_says.0, a.0, a.1, b_says.1),
        );
        ObjectError {
            message: format!("{} {} ({}){}", a_says.0, b.0, b.1, a_says.1),
            key: a.0,
            field: a.1,
            other: Some(Box::new(mirror)),
        }
    }

    /// The same error told from the other object's side, if it is a conflict
    /// (the mirror's `other` is this one).
    pub fn flipped(&self) -> Option<ObjectError> {
        let mirror = self.other.as_deref()?;
        let mut me = self.clone();
        me.other = None;
        let mut out = mirror.clone();
        out.other = Some(Box::new(me));
        Some(out)
    }
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.key, self.field, self.message)
    }
}
