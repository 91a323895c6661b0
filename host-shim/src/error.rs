//! Every failure the shim reports, and the one place ([`ShimError::code`]) that maps a
//! failure to its CNI error code. Codes below 100 are the spec's; ours start at 100 and
//! are listed in the README.

use std::fmt;

/// A CNI error code (spec §5 "Error"). Plugin-specific codes are 100 and up.
pub type CniCode = u32;

/// Codes of our own, documented in `README.md`. They never change meaning.
pub mod codes {
    use super::CniCode;

    /// The spec's well-known codes.
    pub const INCOMPATIBLE_VERSION: CniCode = 1;
    pub const UNSUPPORTED_FIELD: CniCode = 2;
    pub const UNKNOWN_CONTAINER: CniCode = 3;
    pub const INVALID_ENV: CniCode = 4;
    pub const IO_FAILURE: CniCode = 5;
    pub const DECODE_FAILURE: CniCode = 6;
    pub const INVALID_CONFIG: CniCode = 7;
    pub const TRY_AGAIN_LATER: CniCode = 11;
    pub const PLUGIN_NOT_AVAILABLE: CniCode = 50;
    pub const LIMITED_CONNECTIVITY: CniCode = 51;

    /// CHECK found the pod's interface differs from the attachment the agent holds.
    pub const DRIFT: CniCode = 100;
    /// The agent answered, but refused the request (any gRPC status other than
    /// UNAVAILABLE, DEADLINE_EXCEEDED or, where it means "already gone", NOT_FOUND).
    pub const AGENT_REFUSED: CniCode = 101;
    /// A netlink operation on the VF (down, rename, MAC, move, address, route) failed.
    pub const NETLINK: CniCode = 102;
    /// The agent's reply does not describe a usable attachment (bad MAC, CIDR, ...).
    pub const BAD_ATTACHMENT: CniCode = 103;
    /// ADD: `CNI_IFNAME` already exists in the container's netns.
    pub const INTERFACE_EXISTS: CniCode = 104;
    /// ADD: the VF the agent named is not in the host netns.
    pub const VF_MISSING: CniCode = 105;
    /// ADD: the netdev the agent named is not one the config lets the shim move (not a
    /// VF of `pf`, or not in `vfAllowList`). Nothing was moved.
    pub const VF_NOT_ALLOWED: CniCode = 106;
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The config's `cniVersion` is not one we speak, or the command needs a newer one.
    #[error("incompatible CNI version {version:?}: {reason}")]
    IncompatibleVersion { version: String, reason: String },

    /// A config field we recognise but do not support.
    #[error("unsupported field {field}: {value}")]
    UnsupportedField { field: String, value: String },

    /// The container's netns does not exist.
    #[error("container netns {netns} does not exist")]
    UnknownContainer { netns: String },

    /// Required environment variables are missing or malformed.
    #[error("{}", describe_env(vars, reason))]
    InvalidEnv {
        vars: Vec<&'static str>,
        reason: String,
    },

    #[error("I/O failure: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot decode {what}: {detail}")]
    Decode { what: String, detail: String },

    #[error("invalid network config: {field}: {reason}")]
    InvalidConfig { field: String, reason: String },

    /// The agent could not be reached (connect, TLS, UNAVAILABLE, timeout).
    #[error("agent {agent} unreachable: {detail}")]
    AgentUnavailable { agent: String, detail: String },

    /// STATUS: the agent could not be reached.
    #[error("plugin not available: agent {agent} unreachable: {detail}")]
    PluginNotAvailable { agent: String, detail: String },

    /// STATUS: the agent answered that it cannot attach pods now.
    #[error("agent {agent} not ready: {reason}")]
    AgentNotReady { agent: String, reason: String },

    #[error("agent refused {rpc}: {status}: {message}")]
    AgentRefused {
        rpc: &'static str,
        status: String,
        message: String,
    },

    #[error("interface drifted from the attachment: {}", drifts.join("; "))]
    Drift { drifts: Vec<String> },

    #[error("netlink: {op}: {detail}")]
    Netlink { op: String, detail: String },

    #[error("agent returned an unusable attachment: {field}: {reason}")]
    BadAttachment { field: &'static str, reason: String },

    #[error("interface {ifname} already exists in {netns}")]
    InterfaceExists { ifname: String, netns: String },

    #[error("VF {vf} named by the agent is not in the host netns")]
    VfMissing { vf: String },

    /// ADD: the agent named a netdev the config does not let the shim move.
    #[error("refusing to move {vf} into the pod: {reason}; nothing was moved")]
    VfNotAllowed { vf: String, reason: String },

    /// An ADD step failed and the undo did not finish either; both are reported.
    #[error("{error}; undo incomplete: {}", undo.join("; "))]
    UndoIncomplete {
        error: Box<ShimError>,
        undo: Vec<String>,
    },

    /// GC: some stale attachments could not be released.
    #[error("GC released {released} stale attachments, {} failed: {}", failures.len(), join_failures(failures))]
    GcIncomplete {
        released: usize,
        failures: Vec<(String, ShimError)>,
    },
}

fn describe_env(vars: &[&'static str], reason: &str) -> String {
    format!("{}: {reason}", vars.join(","))
}

fn join_failures(failures: &[(String, ShimError)]) -> String {
    let parts: Vec<String> = failures.iter().map(|(k, e)| format!("{k}: {e}")).collect();
    parts.join("; ")
}

impl ShimError {
    /// The CNI error code of this failure. The only place codes are chosen.
    pub fn code(&self) -> CniCode {
        use codes::*;
        match self {
            Self::IncompatibleVersion { .. } => INCOMPATIBLE_VERSION,
            Self::UnsupportedField { .. } => UNSUPPORTED_FIELD,
            Self::UnknownContainer { .. } => UNKNOWN_CONTAINER,
            Self::InvalidEnv { .. } => INVALID_ENV,
            Self::Io { .. } => IO_FAILURE,
            Self::Decode { .. } => DECODE_FAILURE,
            Self::InvalidConfig { .. } => INVALID_CONFIG,
            Self::AgentUnavailable { .. } => TRY_AGAIN_LATER,
            Self::PluginNotAvailable { .. } => PLUGIN_NOT_AVAILABLE,
            Self::AgentNotReady { .. } => LIMITED_CONNECTIVITY,
            Self::Drift { .. } => DRIFT,
            Self::AgentRefused { .. } => AGENT_REFUSED,
            Self::Netlink { .. } => NETLINK,
            Self::BadAttachment { .. } => BAD_ATTACHMENT,
            Self::InterfaceExists { .. } => INTERFACE_EXISTS,
            Self::VfMissing { .. } => VF_MISSING,
            Self::VfNotAllowed { .. } => VF_NOT_ALLOWED,
            Self::UndoIncomplete { error, .. } => error.code(),
            Self::GcIncomplete { failures, .. } => failures
                .iter()
                .map(|(_, e)| e.code())
                .min()
                .unwrap_or(AGENT_REFUSED),
        }
    }

    /// The short `msg` of the CNI error: what class of failure this is.
    pub fn summary(&self) -> &'static str {
        match self {
            Self::IncompatibleVersion { .. } => "incompatible CNI version",
            Self::UnsupportedField { .. } => "unsupported field in network configuration",
            Self::UnknownContainer { .. } => "container unknown or does not exist",
            Self::InvalidEnv { .. } => "invalid environment variables",
            Self::Io { .. } => "I/O failure",
            Self::Decode { .. } => "failed to decode content",
            Self::InvalidConfig { .. } => "invalid network configuration",
            Self::AgentUnavailable { .. } => "DPU agent unreachable, try again later",
            Self::PluginNotAvailable { .. } => "plugin not available",
            Self::AgentNotReady { .. } => "plugin not available, limited connectivity",
            Self::Drift { .. } => "interface drifted",
            Self::AgentRefused { .. } => "DPU agent refused the request",
            Self::Netlink { .. } => "netlink operation failed",
            Self::BadAttachment { .. } => "unusable attachment from the DPU agent",
            Self::InterfaceExists { .. } => "interface already exists",
            Self::VfMissing { .. } => "VF missing on the host",
            Self::VfNotAllowed { .. } => "the DPU agent named a netdev that is not an allowed VF",
            Self::UndoIncomplete { error, .. } => error.summary(),
            Self::GcIncomplete { .. } => "garbage collection incomplete",
        }
    }

    /// The CNI Error result (spec §5), as JSON text.
    pub fn to_cni_json(&self, cni_version: &str) -> String {
        let doc = CniErrorDoc {
            cni_version,
            code: self.code(),
            msg: format!("{}: {}", self.summary(), self.msg_subject()),
            details: ErrorChain(self).to_string(),
        };
        serde_json::to_string(&doc).unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"{cni_version}\",\"code\":{},\"msg\":\"error\"}}",
                self.code()
            )
        })
    }

    /// The object the error is about, for `msg` (the variable, field or interface).
    fn msg_subject(&self) -> String {
        match self {
            Self::InvalidEnv { vars, .. } => vars.join(","),
            Self::InvalidConfig { field, .. } => field.clone(),
            Self::UnsupportedField { field, .. } => field.clone(),
            Self::IncompatibleVersion { version, .. } => version.clone(),
            Self::UndoIncomplete { error, .. } => error.msg_subject(),
            Self::VfNotAllowed { vf, .. } => vf.clone(),
            other => other.to_string(),
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn netlink(op: impl Into<String>, detail: impl fmt::Display) -> Self {
        Self::Netlink {
            op: op.into(),
            detail: detail.to_string(),
        }
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct CniErrorDoc<'a> {
    cni_version: &'a str,
    code: CniCode,
    msg: String,
    details: String,
}

/// Formats an error with its sources, "outer: inner: innermost".
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(inner) = cur {
            let text = inner.to_string();
            // Some errors repeat their source in their own message.
            if !self.0.to_string().contains(&text) {
                write!(f, ": {text}")?;
            }
            cur = inner.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_error_names_the_variable_in_msg_and_details() {
        let e = ShimError::InvalidEnv {
            vars: vec!["CNI_IFNAME"],
            reason: "required, missing".into(),
        };
        let doc: serde_json::Value = serde_json::from_str(&e.to_cni_json("1.1.0")).unwrap();
        assert_eq!(doc["code"], 4);
        assert_eq!(doc["cniVersion"], "1.1.0");
        assert!(doc["msg"].as_str().unwrap().contains("CNI_IFNAME"));
        assert!(doc["details"].as_str().unwrap().contains("CNI_IFNAME"));
    }

    #[test]
    fn a_refused_vf_is_106_naming_the_netdev_and_why() {
        let e = ShimError::VfNotAllowed {
            vf: "mgmt0".into(),
            reason: "mgmt0 is not in vfAllowList [\"lab-vf0\"]".into(),
        };
        let doc: serde_json::Value = serde_json::from_str(&e.to_cni_json("1.0.0")).unwrap();
        assert_eq!(doc["code"], 106);
        assert_eq!(
            doc["msg"],
            "the DPU agent named a netdev that is not an allowed VF: mgmt0"
        );
        let details = doc["details"].as_str().unwrap();
        assert!(details.contains("not in vfAllowList"), "{details}");
        assert!(details.contains("nothing was moved"), "{details}");
    }

    #[test]
    fn undo_failure_keeps_the_original_code() {
        let e = ShimError::UndoIncomplete {
            error: Box::new(ShimError::netlink("set MTU", "EINVAL")),
            undo: vec!["move back: ENODEV".into()],
        };
        assert_eq!(e.code(), codes::NETLINK);
        assert!(e.to_string().contains("undo incomplete: move back: ENODEV"));
    }

    #[test]
    fn gc_reports_try_again_when_any_failure_is_transient() {
        let e = ShimError::GcIncomplete {
            released: 1,
            failures: vec![
                (
                    "c1/eth0".into(),
                    ShimError::AgentRefused {
                        rpc: "Detach",
                        status: "Internal".into(),
                        message: "boom".into(),
                    },
                ),
                (
                    "c2/eth0".into(),
                    ShimError::AgentUnavailable {
                        agent: "a".into(),
                        detail: "refused".into(),
                    },
                ),
            ],
        };
        assert_eq!(e.code(), codes::TRY_AGAIN_LATER);
    }
}
