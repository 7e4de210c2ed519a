//! PostgreSQL, for production: READ COMMITTED transactions that lock the MSISDN's row with
//! `SELECT … FOR UPDATE`, so concurrent requests on one account serialise and requests on
//! different accounts run in parallel. A first insert that races another (same MSISDN or same
//! request_id) fails on the unique index and the whole mutation is retried.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Pool, Postgres, Transaction};

use super::dialect::{Dialect, ErrorClass, SqlDatabase};
use super::sql::{SqlStore, Writes};
use super::{Committed, Decide, MutateFailure, RequestKey, StoreError};
use crate::lifecycle::{Msisdn, Rules};

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL store: the generic store over [`PostgresDialect`].
pub(crate) type PostgresStore = SqlStore<PostgresDialect>;

/// PostgreSQL's side of the backend contract (no state of its own).
pub(crate) struct PostgresDialect;

impl SqlStore<PostgresDialect> {
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
        // One pool for reads and writes: every connection may write.
        Ok(SqlStore::new(PostgresDialect, pool.clone(), pool, rules))
    }
}

/// sqlx's Postgres meets what the shared SQL needs (the compiler checks it here).
impl SqlDatabase for Postgres {}

#[async_trait]
impl Dialect for PostgresDialect {
    type Db = Postgres;

    const NAME: &'static str = "PostgreSQL";

    const LOCK_ROW: &'static str = " FOR UPDATE";

    /// Several instances may sweep at once: each claims the due rows no one else holds, and
    /// re-checks `next_deadline` on rows a concurrent commit just moved (READ COMMITTED
    /// re-evaluates the WHERE clause of a locked row), so no account is advanced twice. It
    /// never waits for a row lock: a claim that waited (`FOR UPDATE`) could hold one row while
    /// waiting for another, and two sweeps whose rows a recharge moved within the order
    /// deadlocked (40P01).
    const CLAIM_DUE: &'static str = " FOR UPDATE SKIP LOCKED";

    /// Two batches at once overlap one batch's round trips and commit with the other's work
    /// (measured in BENCHMARKS.md).
    const SWEEP_WORKERS: usize = 2;

    fn migrator() -> &'static Migrator {
        &MIGRATIONS
    }

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }

    /// disk_full (53100), read_only_sql_transaction (25006) and io_error (58030) cannot write;
    /// serialization failures (40001) and deadlocks (40P01) are transient; connection
    /// exceptions (class 08), admin_shutdown (57P01) and cannot_connect_now (57P03) mean the
    /// server is out of reach.
    fn classify_code(code: &str) -> ErrorClass {
        match code {
            "53100" | "25006" | "58030" => ErrorClass::NotWritable,
            "40001" | "40P01" => ErrorClass::Transient,
            "57P01" | "57P03" => ErrorClass::Unavailable,
            _ if code.starts_with("08") => ErrorClass::Unavailable,
            _ => ErrorClass::Other,
        }
    }

    /// One mutation, one transaction: concurrent commits of other rows proceed in parallel and
    /// PostgreSQL's own group commit shares their WAL flushes.
    async fn mutate_once(
        &self,
        store: &SqlStore<Self>,
        msisdn: &Msisdn,
        key: RequestKey<'_>,
        decide: &Decide,
    ) -> Result<Committed, MutateFailure> {
        let mut tx: Transaction<'static, Postgres> = store.writer.begin().await?;
        let result = Writes::<Self>::apply_in(&mut tx, &store.rules, msisdn, key, decide).await;
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

    async fn begin_batch(
        writer: &Pool<Postgres>,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        writer.begin().await
    }
}
