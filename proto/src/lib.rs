//! The gRPC management API of `frr-ingestd` (package `frringest.v1`),
//! generated from `proto/ingest.proto`. Used by the daemon (server) and by
//! `ingestctl` (client).

#![allow(clippy::all)]

/// Generated messages, client and server for `frringest.v1`.
pub mod v1 {
    tonic::include_proto!("frringest.v1");
}
