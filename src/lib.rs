//! ocs-lifecycle: the account lifecycle engine of a prepaid online charging system.
//!
//! - [`lifecycle`]: the pure rules (no I/O).
//! - [`store`]: persistence behind one trait, SQLite and PostgreSQL.
//! - [`api`]: the gRPC services on top.
//! - [`auth`]: bearer tokens, roles and TLS of the gRPC server.
//! - [`cli`]: the command-line client (gRPC to a running server) and the bulk card import.
//! - [`config`]: layered configuration.
//! - [`clock`]: the injected clock (system or manual).
//! - [`scheduler`]: when the sweep runs inside `serve` (cron, driven by the clock).
//! - [`sweep`]: one sweep run (AdvanceStates, the `sweep` command, the scheduler).
//! - [`notify`]: the BSS webhook delivery worker.
//! - [`ops`]: the operations HTTP listener (`/metrics`, `/healthz`, `/readyz`) and the metrics.

pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod lifecycle;
pub mod notify;
pub mod ops;
pub mod scheduler;
pub mod store;
pub mod sweep;

pub mod proto {
    #![allow(clippy::all)]
    // The messages and the servers (with `crate::api::codec::RequestCodec`, see build.rs).
    tonic::include_proto!("ocs.lifecycle.v1");
    // The clients, generated apart with tonic-prost's own codec.
    include!(concat!(env!("OUT_DIR"), "/clients/ocs.lifecycle.v1.rs"));

    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("ocs_lifecycle_descriptor");
}
