//! PostgreSQL, for production: READ COMMITTED transactions that lock the MSISDN's row with
//! `SELECT … FOR UPDATE`, so concurrent requests on one account serialise and requests on
//! different accounts run in parallel. A first insert that races another (same MSISDN or same
//! request_id) fails on the unique index and the whole mutation is retried.
//!
//! A multi-host `database_url` (several hosts or `target_session_attrs`) puts the pool under a
//! [`FollowedPrimary`], which points it at the writable host and moves it after a failover;
//! every query takes the pool through [`PostgresStore::pool`].

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool, Postgres, Transaction};

use super::pg_failover::{FollowedPrimary, PgTargets, PrimaryWatch};
use super::sql::impl_account_store;
use super::{Committed, Decide, MutateFailure, RequestKey, StoreError};
use crate::lifecycle::{Msisdn, Rules};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PostgresStore {
    pool: PgPool,
    /// A multi-host `database_url`: owns `pool` and follows the primary.
    primary: Option<Arc<FollowedPrimary>>,
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
        let targets = PgTargets::parse(url)
            .map_err(|e| StoreError::Internal(format!("database_url: {e}")))?;
        let pool_options = PgPoolOptions::new()
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
            });
        // No JIT compilation: the service runs short queries whose cost estimates can still
        // pass `jit_above_cost` (the webhook's due query, planned from a correlated min(),
        // was estimated at 10^5 and spent 10–35 ms compiling to run in 4 ms).
        let no_jit = |options: PgConnectOptions| options.options([("jit", "off")]);
        if targets.follows_primary() {
            let primary = FollowedPrimary::connect(&targets, pool_options, no_jit).await?;
            return Ok(Self {
                pool: primary.pool().clone(),
                primary: Some(primary),
                rules,
            });
        }
        let pool = pool_options
            .connect_with(no_jit(url.parse::<PgConnectOptions>()?))
            .await?;
        Ok(Self {
            pool,
            primary: None,
            rules,
        })
    }

    /// With a multi-host `database_url`: whether the service knows its primary.
    pub fn primary_watch(&self) -> Option<PrimaryWatch> {
        self.primary.as_ref().map(|p| p.watch())
    }

    /// The pool to query now (a multi-host URL: the current primary's).
    fn pool(&self) -> &PgPool {
        match &self.primary {
            Some(primary) => primary.pool(),
            None => &self.pool,
        }
    }

    /// A write transaction (a multi-host URL: on the primary, failing at once while the
    /// service searches for it).
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        match &self.primary {
            Some(primary) => primary.begin().await,
            None => self.pool.begin().await,
        }
    }

    /// Wraps an existing pool (tests use it to run on a schema of their own).
    pub fn from_pool(pool: PgPool, rules: Arc<Rules>) -> Self {
        Self {
            pool,
            primary: None,
            rules,
        }
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        MIGRATIONS
            .run(self.pool())
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
        let outcome = self.mutate_in_transaction(msisdn, key, decide).await;
        // After a failover every attempt would fail the same way: answer now.
        if let (Some(primary), Err(MutateFailure::Sql(err))) = (&self.primary, &outcome)
            && let Some(failover) = primary.failover_error(err)
        {
            return Err(MutateFailure::Store(failover));
        }
        outcome
    }

    async fn mutate_in_transaction(
        &self,
        msisdn: &Msisdn,
        key: RequestKey<'_>,
        decide: &Decide,
    ) -> Result<Committed, MutateFailure> {
        let mut tx: Transaction<'static, Postgres> = self.begin().await?;
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
        self.pool()
    }

    fn rules(&self) -> &Rules {
        &self.rules
    }

    fn write_pool(&self) -> &PgPool {
        self.pool()
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
        self.begin().await
    }
    fn writer(&self) -> &PgPool {
        self.pool()
    }
}

impl_account_store!(PostgresStore, Postgres);
super::deliveries::impl_webhook_deliveries!(PostgresStore);
