//! The one error type of the OVSDB client.

use std::path::PathBuf;
use std::time::Duration;

/// Longest excerpt of a bad message quoted in an error.
const EXCERPT_CHARS: usize = 120;

/// Everything that can go wrong talking to `ovsdb-server`.
#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    /// The unix socket could not be connected.
    #[error("cannot connect to OVSDB at {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why the connect failed.
        #[source]
        source: std::io::Error,
    },

    /// A call got no reply within its time bound.
    #[error("OVSDB call `{method}` got no reply within {timeout:?}")]
    Timeout {
        /// The JSON-RPC method.
        method: String,
        /// The bound that expired.
        timeout: Duration,
    },

    /// The server answered a call with a JSON-RPC error.
    #[error("OVSDB call `{method}` failed: {error}{}", details_suffix(details))]
    Server {
        /// The JSON-RPC method.
        method: String,
        /// The server's error string.
        error: String,
        /// The server's details, if any.
        details: String,
    },

    /// One operation of a transaction failed (`index` is its position; an index one past
    /// the last operation means the commit itself failed, e.g. a constraint violation).
    #[error(
        "OVSDB transaction failed at op #{index} ({op}): {error}{}",
        details_suffix(details)
    )]
    OpFailed {
        /// Position of the failing operation.
        index: usize,
        /// Its kind (`insert`, `wait`, …, or `commit`).
        op: String,
        /// The server's error string.
        error: String,
        /// The server's details, if any.
        details: String,
    },

    /// The peer sent bytes that are not valid OVSDB JSON-RPC, or a reply of the wrong shape.
    #[error("OVSDB protocol error: {reason} (near {excerpt:?})")]
    Protocol {
        /// What was wrong.
        reason: String,
        /// The start of the offending text.
        excerpt: String,
    },

    /// A single message grew past the size bound before it was complete.
    #[error("OVSDB message larger than the {limit}-byte bound")]
    MessageTooLarge {
        /// The bound in bytes.
        limit: usize,
    },

    /// The connection is gone; pending and later calls fail with this.
    #[error("OVSDB connection closed: {reason}")]
    Disconnected {
        /// Why it closed.
        reason: String,
    },

    /// The database content or a request is not what the caller can work with
    /// (no `Open_vSwitch` row, an invalid bridge spec, repeated races).
    #[error("OVSDB state: {0}")]
    State(String),
}

impl OvsdbError {
    /// A protocol error quoting the start of `text`.
    pub(crate) fn protocol(reason: impl Into<String>, text: &[u8]) -> Self {
        let text = String::from_utf8_lossy(text);
        let excerpt: String = text.chars().take(EXCERPT_CHARS).collect();
        OvsdbError::Protocol {
            reason: reason.into(),
            excerpt,
        }
    }

    /// A protocol error about a JSON value of the wrong shape (for callers
    /// that read replies, like a `select` result, themselves).
    pub fn shape(reason: impl Into<String>, value: &serde_json::Value) -> Self {
        Self::protocol(reason, value.to_string().as_bytes())
    }

    /// The connection is gone, for `reason`.
    pub fn disconnected(reason: impl Into<String>) -> Self {
        OvsdbError::Disconnected {
            reason: reason.into(),
        }
    }
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}
