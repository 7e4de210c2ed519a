//! ocs-lifecycle: the account lifecycle engine of a prepaid online charging system.
//!
//! One request takes one straight path: `api` validates it into a `lifecycle` command, the
//! store runs the core's decision on the stored account in one transaction (the account, its
//! history rows and outbox events, the idempotency key), and the answer goes back; the outbox
//! feeds the webhook (`notify`) and the event stream (`api`). The nightly `sweep` advances
//! accounts past their deadlines through the same core and the same records.
//!
//! Layers, lowest first; a module names only modules of its own layer or lower ones (checked
//! by `tests/layering.rs`):
//!
//! 1. [`clock`] (the injected clock), [`wire`] (names on the wire), [`logging`] (what a call's
//!    log line says), [`proto`] (generated), and
//!    [`lifecycle`]: the pure rules, and the history rows and outbox events a change writes;
//!    [`analytics`]: what the history's rows count for in reports (periods, flows, cohorts).
//! 2. [`store`]: persistence — SQL and transactions, SQLite and PostgreSQL behind one trait.
//! 3. [`config`]: layered configuration.
//! 4. [`auth`] (bearer tokens, roles, TLS), [`sweep`] (one sweep run over the store's
//!    batches) and [`notify`] (the BSS webhook delivery worker).
//! 5. [`scheduler`]: when the sweep runs inside `serve` (cron, driven by the clock).
//! 6. [`ops`]: the operations HTTP listener (`/metrics`, `/healthz`, `/readyz`, dashboard).
//! 7. [`api`]: the gRPC services.
//! 8. [`server`]: the composition root — build, start, ready, drain, shutdown — with the gRPC
//!    admission layer (concurrency limit, default deadline) and the SQLite instance lock.
//! 9. [`cli`]: the command-line client (gRPC to a running server) and the bulk card import;
//!    `main.rs` on top.

pub mod analytics;
pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod lifecycle;
pub mod logging;
pub mod notify;
pub mod ops;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod sweep;
pub mod wire;

pub mod proto {
    #![allow(clippy::all)]
    // The messages and the servers (with `crate::api::codec::RequestCodec`, see build.rs).
    tonic::include_proto!("ocs.lifecycle.v1");
    // The clients, generated apart with tonic-prost's own codec.
    include!(concat!(env!("OUT_DIR"), "/clients/ocs.lifecycle.v1.rs"));

    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("ocs_lifecycle_descriptor");
}
