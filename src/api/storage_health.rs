//! Health after a storage failure. A write that fails because the database cannot be written
//! (disk full, read-only file, I/O error: `StoreError::NotWritable`) turns gRPC health
//! NOT_SERVING (`""` and `AccountLifecycle`) and `/readyz` 503; a probe then writes one row
//! (`AccountStore::probe_write`) every [`PROBE_INTERVAL`] until it commits, and health is
//! SERVING again. Requests are not refused meanwhile: each one tries the database and answers
//! UNAVAILABLE (`STORAGE_NOT_WRITABLE`) while it still cannot be written.
//!
//! With a multi-host PostgreSQL URL the store follows its primary ([`PrimaryWatch`]): health is
//! NOT_SERVING and `/readyz` 503 from the moment the primary is lost until a new one is found
//! ([`StorageHealth::follow_primary`]); requests meanwhile answer UNAVAILABLE
//! (`STORAGE_FAILOVER`) at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::clock::Clock;
use crate::store::{AccountStore, PrimaryWatch, StoreError};

/// How often the probe tries a write while the storage is not writable.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The services whose health a storage failure turns NOT_SERVING.
const SERVICES: [&str; 2] = ["", "ocs.lifecycle.v1.AccountLifecycle"];

pub struct StorageHealth {
    reporter: HealthReporter,
    store: Arc<dyn AccountStore>,
    clock: Arc<dyn Clock>,
    /// False from a storage failure until a probe write succeeds (shared with `/readyz`).
    writable: Arc<AtomicBool>,
    /// False while a multi-host PostgreSQL URL has no primary (shared with `/readyz`).
    primary_found: Arc<AtomicBool>,
    shutdown: CancellationToken,
}

impl StorageHealth {
    pub fn new(
        reporter: HealthReporter,
        store: Arc<dyn AccountStore>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            reporter,
            store,
            clock,
            writable: Arc::new(AtomicBool::new(true)),
            primary_found: Arc::new(AtomicBool::new(true)),
            shutdown,
        }
    }

    /// The flag `/readyz` reads: false while the storage is known not to be writable.
    pub fn writable(&self) -> Arc<AtomicBool> {
        self.writable.clone()
    }

    /// The flag `/readyz` reads: false while the store searches for its primary.
    pub fn primary_found(&self) -> Arc<AtomicBool> {
        self.primary_found.clone()
    }

    /// Follows the store's primary (called once health is SERVING): NOT_SERVING while it is
    /// lost, SERVING again once found (unless the storage is not writable: the probe decides).
    pub fn follow_primary(&self, mut primary: PrimaryWatch) {
        let reporter = self.reporter.clone();
        let writable = self.writable.clone();
        let primary_found = self.primary_found.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let found = primary.borrow_and_update().primary.is_some();
                if primary_found.swap(found, Ordering::AcqRel) != found {
                    // Shutdown sets NOT_SERVING itself; do not undo it.
                    if shutdown.is_cancelled() {
                        return;
                    }
                    let status = if found && writable.load(Ordering::Acquire) {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    for name in SERVICES {
                        reporter.set_service_status(name, status).await;
                    }
                    tracing::info!(?status, "health follows the database primary");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = primary.changed() => if changed.is_err() { return },
                }
            }
        });
    }

    /// Called with every error of a write: a storage failure turns health NOT_SERVING and
    /// starts the probe (once; later failures while it runs change nothing).
    pub fn observe(&self, err: &StoreError) {
        let StoreError::NotWritable(message) = err else {
            return;
        };
        if self
            .writable
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        tracing::error!(%message, "the database cannot be written: health is NOT_SERVING until a probe write succeeds");
        let reporter = self.reporter.clone();
        let store = self.store.clone();
        let clock = self.clock.clone();
        let writable = self.writable.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            for name in SERVICES {
                reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                }
                match store.probe_write(clock.now()).await {
                    Ok(()) => break,
                    Err(e) => tracing::warn!(error = %e, "storage probe write failed"),
                }
            }
            // Shutdown sets NOT_SERVING itself; do not undo it.
            if shutdown.is_cancelled() {
                return;
            }
            for name in SERVICES {
                reporter
                    .set_service_status(name, ServingStatus::Serving)
                    .await;
            }
            writable.store(true, Ordering::Release);
            tracing::info!("the database can be written again: health is SERVING");
        });
    }
}
