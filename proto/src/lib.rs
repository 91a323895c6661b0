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
