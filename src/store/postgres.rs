//! PostgreSQL, for production: READ COMMITTED transactions that lock the MSISDN's row with
//! `SELECT … FOR UPDATE`, so concurrent requests on one account serialise and requests on
//! different accounts run in parallel. A first insert that races another (same MSISDN or same
//! request_id) fails on the unique index and the whole mutation is retried.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool, Postgres, Transaction};

use super::sql::impl_account_store;
use super::{Committed, Decide, MutateFailure, RequestKey, StoreError};
use crate::lifecycle::{Msisdn, Rules};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PostgresStore {
    pool: PgPool,
    rules: Arc<Rules>,
}

impl PostgresStore {
    const LOCK_ROW: &'static str = " FOR UPDATE";

    /// `acquire_timeout` bounds how long a request waits for a connection (a pooled one, or a
    /// new one while the server is unreachable) before it is answered UNAVAILABLE.
    pub async fn connect(
        url: &str,
        pool_size: u32,
        acquire_timeout: Duration,
        rules: Arc<Rules>,
    ) -> Result<Self, StoreError> {
        // No JIT compilation: the service runs short queries whose cost estimates can still
        // pass `jit_above_cost` (the webhook's due query, planned from a correlated min(),
        // was estimated at 10^5 and spent 10–35 ms compiling to run in 4 ms).
        let options = url.parse::<PgConnectOptions>()?.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(acquire_timeout)
            // A connection whose failed COMMIT left sqlx counting an open transaction is
            // closed, not reused (see `SqliteStore::connect`).
            .after_release(|conn, _| {
                Box::pin(async move {
                    if conn.is_in_transaction() {
                        conn.ping().await?;
                    }
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self { pool, rules })
    }

    /// Wraps an existing pool (tests use it to run on a schema of their own).
    pub fn from_pool(pool: PgPool, rules: Arc<Rules>) -> Self {
        Self { pool, rules }
    }

    fn connections(&self) -> super::PoolConnections {
        super::PoolConnections::of(&self.pool)
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        MIGRATIONS
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Internal(format!("PostgreSQL migration failed: {e}")))
    }

    /// One mutation, one transaction: concurrent commits of other rows proceed in parallel and
    /// PostgreSQL's own group commit shares their WAL flushes.
    async fn mutate_once(
        &self,
        msisdn: &Msisdn,
        key: RequestKey<'_>,
        decide: &Decide,
    ) -> Result<Committed, MutateFailure> {
        let mut tx: Transaction<'static, Postgres> = self.pool.begin().await?;
        let result = apply_in(&mut tx, &self.rules, Self::LOCK_ROW, msisdn, key, decide).await;
        match &result {
            Ok(Committed::Applied(_)) => tx.commit().await?,
            // Nothing was written.
            Ok(_) => tx.rollback().await?,
            // An error left writes to undo. The error is what the caller is told: when it broke
            // the session (the server ended it, 57P01), the rollback fails too, with a bare
            // end-of-file that would hide why.
            Err(_) => {
                if let Err(e) = tx.rollback().await {
                    tracing::debug!(error = %e, "rollback after a failed statement failed");
                }
            }
        }
        result
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn rules(&self) -> &Rules {
        &self.rules
    }

    fn write_pool(&self) -> &PgPool {
        &self.pool
    }

    /// Several instances may sweep at once: each claims the due rows no one else holds, and
    /// re-checks `next_deadline` on rows a concurrent commit just moved (READ COMMITTED
    /// re-evaluates the WHERE clause of a locked row), so no account is advanced twice.
    const CLAIM_DUE: &'static str = " FOR UPDATE SKIP LOCKED";
    /// The last pass waits for the rows skipped above; a row another transaction advanced
    /// meanwhile no longer matches and is left out.
    const CLAIM_DUE_WAITING: &'static str = " FOR UPDATE";
    /// Batches claimed and written at once by one sweep (1 or 2): two overlap one batch's
    /// round trips and commit with the other's work (measured in BENCHMARKS.md).
    const SWEEP_WORKERS: usize = 2;

    async fn begin_sweep_batch(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }
    fn writer(&self) -> &PgPool {
        &self.pool
    }
}

impl_account_store!(PostgresStore, Postgres);
super::deliveries::impl_webhook_deliveries!(PostgresStore);
