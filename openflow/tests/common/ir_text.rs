//! Flows written as `ovs-ofctl` text in tests, parsed into the flow IR; a
//! malformed fixture panics naming the text. Shared by this crate's tests and
//! the agent's (`dpu-agent/tests/ofp_codec.rs`, `reconcile_props.rs`, by path).

#![allow(dead_code)]

use openflow::ir::{Actions, HashField, Match};

/// A match written as `ovs-ofctl` text, in the IR.
pub fn parse_match(text: &str) -> Match {
    text.parse()
        .unwrap_or_else(|e| panic!("match `{text}`: {e}"))
}

/// Actions written as `ovs-ofctl` text, in the IR.
pub fn parse_actions(text: &str) -> Actions {
    text.parse()
        .unwrap_or_else(|e| panic!("actions `{text}`: {e}"))
}

/// Select-group hash fields by name (`ip_src`, `tcp_src=63`).
pub fn hash_fields(names: &[&str]) -> Vec<HashField> {
    names
        .iter()
        .map(|f| HashField::parse(f).unwrap_or_else(|e| panic!("hash field `{f}`: {e}")))
        .collect()
}
