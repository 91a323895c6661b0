//! Generated types for the `dpu.v1` API. Nothing but generated code lives here;
//! conversion into domain types happens in `dpu-model`.
#![allow(missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("dpu.v1");
}
