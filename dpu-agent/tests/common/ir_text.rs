//! Flows written as `ovs-ofctl` text in tests, parsed into the flow IR; a
//! malformed fixture panics naming the text.

use dpu_agent::flows::{Actions, Match};

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
