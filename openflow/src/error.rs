//! The errors of a [`crate::Connection`].

use std::fmt;
use std::path::PathBuf;

/// How many refused messages a [`Refusals`] keeps one by one.
pub(crate) const ERRORS_NAMED: usize = 3;

/// Everything that can go wrong talking to a switch. (Encoding errors are
/// [`crate::codec::CodecError`]s, raised before anything is sent.)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The switch could not be reached, closed the connection, or the socket
    /// failed.
    #[error("cannot talk to the switch at {}: {reason}", path.display())]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Something from the switch that could not be understood, or a switch
    /// that does not speak OpenFlow 1.5.
    #[error("unexpected reply from the switch: {0}")]
    Protocol(String),
    /// The switch refused a request that is not a message of a bundle, such
    /// as opening one (the text says which, and the switch's error).
    #[error("the switch refused {0}")]
    Refused(String),
    /// The switch refused messages of a bundle, or its commit: nothing in it
    /// was applied.
    #[error("the switch rejected the bundle: {0}")]
    Bundle(BundleRefused),
    /// A change of [`crate::Connection::apply_changes`] could not be encoded:
    /// the bundle was discarded, nothing in it applied.
    #[error("change {op} of the bundle cannot be encoded: {reason}")]
    Unencodable {
        /// Its index among the changes.
        op: usize,
        /// Why.
        reason: String,
    },
}

/// One error the switch sent about a message of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error's OpenFlow name (`OFPBAC_BAD_OUT_GROUP`), see
    /// [`crate::codec::ErrorMsg::name`].
    pub error: String,
    /// The index of the bundle's op the refused message came from, when the
    /// error names a message of the bundle.
    pub op: Option<usize>,
    /// The xid of the error message.
    pub xid: u32,
}

/// The errors the switch sent about messages of one bundle: the first few
/// one by one, and how many in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusals {
    /// The first errors (up to 3), in the order they came.
    pub first: Vec<Refusal>,
    /// How many errors came in all.
    pub count: usize,
}

impl Refusals {
    pub(crate) fn note(&mut self, r: Refusal) {
        self.count += 1;
        if self.first.len() < ERRORS_NAMED {
            self.first.push(r);
        }
    }

    /// Whether no error came.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The first errors, each with the op it is about as `op` writes it
    /// (`op 3`, or the op itself in the caller's syntax), joined by `; `.
    pub fn describe(&self, mut op: impl FnMut(usize) -> String) -> String {
        let mut parts: Vec<String> = self
            .first
            .iter()
            .map(|r| match r.op {
                Some(i) => format!("{} for {}", r.error, op(i)),
                None => format!("{} (xid {:#x})", r.error, r.xid),
            })
            .collect();
        if self.count > self.first.len() {
            parts.push(format!("and {} more errors", self.count - self.first.len()));
        }
        parts.join("; ")
    }
}

/// Why the switch refused a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRefused {
    /// Errors about the bundle's messages.
    pub refusals: Refusals,
    /// The error the commit got, if the bundle got as far as a commit.
    pub commit: Option<String>,
}

impl BundleRefused {
    /// The refusals (see [`Refusals::describe`]) and the commit's error.
    pub fn describe(&self, op: impl FnMut(usize) -> String) -> String {
        match (&self.commit, self.refusals.is_empty()) {
            (Some(c), true) => format!("commit: {c}"),
            (Some(c), false) => format!("{}; commit: {c}", self.refusals.describe(op)),
            (None, _) => self.refusals.describe(op),
        }
    }
}

impl fmt::Display for BundleRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(|i| format!("op {}", i + 1)))
    }
}
