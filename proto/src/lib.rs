//! Generated types for the `dpu.v1` API. Nothing but generated code and the wire
//! limits the proto comments name lives here; conversion into domain types happens
//! in `dpu-model`.
#![allow(missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("dpu.v1");
}

/// At most this many `Status.service_status` entries; the controller refuses a
/// larger Status whole.
pub const MAX_SERVICE_STATUS: usize = 256;
/// At most this many `ServiceStatus.backend_status` entries per Service.
pub const MAX_BACKEND_STATUS: usize = 64;
/// The longest `Status.last_error`, in bytes; an agent truncates a longer one.
pub const MAX_STATUS_ERROR_LEN: usize = 4096;

/// What a certificate of the cluster CA may be used for, named by a URI
/// SubjectAltName. The controller serves only certificates with the node role;
/// an agent's attachment service accepts only the host-shim role. A certificate
/// carries exactly one role.
pub mod roles {
    /// A DPU: the controller's `AgentControl` and `Renew`, and the agent's own
    /// attachment listener (server side).
    pub const NODE: &str = "urn:dpu:role:node";
    /// A host's CNI plugin: the agent's attachment API (client side) only.
    pub const HOST_SHIM: &str = "urn:dpu:role:host-shim";
    /// The prefix every role URI starts with.
    pub const PREFIX: &str = "urn:dpu:role:";
}
