//! The gRPC contract between the faultlab controller and its agents.
//!
//! `faultlab.proto` is the source of truth; this crate only compiles it (with
//! protox, so no system `protoc` is needed) and re-exports the generated
//! tonic client, server and prost messages. Keep these types at the edges:
//! the agent and the controller convert them into their own domain types.
//! The few words both sides share beyond the messages (close modes, the
//! framed message header, capabilities) are defined once, in `vocabulary`;
//! the rules an impairment keeps, in [`impairment`].

#![allow(missing_docs, clippy::all)]

/// Metadata key of a scheduled start: the moment (the agent host's
/// monotonic ns, in decimal) at which the agent acts on the request.
pub const START_AT_METADATA: &str = "faultlab-start-at";

pub mod errno;
pub mod impairment;
mod vocabulary;

pub use vocabulary::{Capability, CloseMode, MESSAGE_HEADER_BYTES};

/// Version 1 of the contract (protobuf package `faultlab.v1`).
pub mod v1 {
    tonic::include_proto!("faultlab.v1");
}
