//! PostgreSQL, for production: READ COMMITTED transactions that lock the MSISDN's row with
//! `SELECT … FOR UPDATE`, so concurrent requests on one account serialise and requests on
//! different accounts run in parallel. After each COMMIT the MSISDN is announced to the other
//! servers on the database (`pg_changes`). A first insert that races another (same MSISDN or same
//! request_id) fails on the unique index and the whole mutation is retried.
//!
//! A multi-host `database_url` (several hosts or `target_session_attrs`) gives the dialect a
//! [`FollowedPrimary`], which points the pool at the writable host and moves it after a
//! failover; every query takes its pool through [`Dialect::pool`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, Pool, Postgres, Transaction};

use super::dialect::{Dialect, ErrorClass, SqlDatabase};
use super::pg_failover::{FollowedPrimary, PgTargets, PrimaryWatch};
use super::sql::{SqlStore, Writes};
use super::{Committed, Decide, MutateFailure, RequestKey, StoreError};
use crate::lifecycle::{Msisdn, Rules};

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL store: the generic store over [`PostgresDialect`].
pub(crate) type PostgresStore = SqlStore<PostgresDialect>;

/// PostgreSQL's side of the backend contract; with a multi-host URL it follows the primary.
pub(crate) struct PostgresDialect {
    primary: Option<Arc<FollowedPrimary>>,
    /// Who this store is on the change feed (`pg_changes`): it ignores its own announcements,
    /// since its commits reach its cache directly.
    instance: super::pg_changes::Instance,
}

impl SqlStore<PostgresDialect> {
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
        let (pool, primary) = if targets.follows_primary() {
            let primary = FollowedPrimary::connect(&targets, pool_options, no_jit).await?;
            (primary.pool().clone(), Some(primary))
        } else {
            let options = no_jit(url.parse::<PgConnectOptions>()?);
            probe_connect(&options, acquire_timeout).await?;
            (pool_options.connect_with(options).await?, None)
        };
        // One pool for reads and writes: every connection may write.
        Ok(SqlStore::new(
            PostgresDialect {
                primary,
                instance: super::pg_changes::Instance::new(),
            },
            pool.clone(),
            pool,
            rules,
        ))
    }

    /// With a multi-host `database_url`: whether the service knows its primary.
    pub fn primary_watch(&self) -> Option<PrimaryWatch> {
        self.dialect.primary.as_ref().map(|p| p.watch())
    }
}

/// One connection before the pool opens, for its error: the pool retries a failed connect until
/// its acquire timeout and then says only that it timed out.
async fn probe_connect(options: &PgConnectOptions, timeout: Duration) -> Result<(), StoreError> {
    let at = format!("{}:{}", options.get_host(), options.get_port());
    match tokio::time::timeout(timeout, PgConnection::connect_with(options)).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(StoreError::Unavailable(connect_error(&at, options, &e))),
        Err(_) => Err(StoreError::Unavailable(format!(
            "PostgreSQL at {at} did not answer within {} ms (db_acquire_timeout_ms): check the \
             host and port in database_url, and that no firewall drops the connection",
            timeout.as_millis()
        ))),
    }
}

/// What failed connecting to `at`, and what to do, in one line without the password.
fn connect_error(at: &str, options: &PgConnectOptions, err: &sqlx::Error) -> String {
    let user = options.get_username();
    let database = options.get_database().unwrap_or(user);
    match err {
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => format!(
            "cannot connect to PostgreSQL at {at}: connection refused: start PostgreSQL there, \
             or correct the host and port in database_url"
        ),
        sqlx::Error::Io(e) if e.to_string().contains("lookup address") => format!(
            "cannot connect to PostgreSQL at {at}: unknown host {:?} ({e}): correct the host \
             in database_url",
            options.get_host()
        ),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("3D000") => format!(
                "PostgreSQL at {at} has no database {database:?}: create it (createdb -h {} -p \
                 {} -U {user} {database}) or correct database_url",
                options.get_host(),
                options.get_port()
            ),
            Some("28P01" | "28000") => format!(
                "PostgreSQL at {at} refused user {user:?}: {}: check the user and password in \
                 database_url (and the server's pg_hba.conf)",
                db.message()
            ),
            _ => format!("cannot connect to PostgreSQL at {at}: {}", db.message()),
        },
        other => format!("cannot connect to PostgreSQL at {at}: {other}"),
    }
}

impl PostgresDialect {
    /// A write transaction (a multi-host URL: on the primary, failing at once while the
    /// service searches for it).
    async fn begin(
        &self,
        own: &Pool<Postgres>,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        match &self.primary {
            Some(primary) => primary.begin().await,
            None => own.begin().await,
        }
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
    /// exceptions (class 08), admin_shutdown (57P01), crash_shutdown (57P02) and
    /// cannot_connect_now (57P03) mean the server is out of reach.
    fn classify_code(code: &str) -> ErrorClass {
        match code {
            "53100" | "25006" | "58030" => ErrorClass::NotWritable,
            "40001" | "40P01" => ErrorClass::Transient,
            "57P01" | "57P02" | "57P03" => ErrorClass::Unavailable,
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
        let mut tx: Transaction<'static, Postgres> = self.begin(&store.writer).await?;
        let result = Writes::<Self>::apply_in(&mut tx, &store.rules, msisdn, key, decide).await;
        match &result {
            Ok(Committed::Applied(_)) => {
                let committed = tx.commit().await;
                // Also when the COMMIT's answer was lost: a change that did not happen only
                // costs the other servers a read.
                if let Err(e) = self
                    .instance
                    .announce(store.writer(), msisdn.as_str())
                    .await
                {
                    tracing::warn!(error = %e, %msisdn, "could not announce a committed change to the other servers");
                }
                committed?
            }
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
        &self,
        writer: &Pool<Postgres>,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin(writer).await
    }

    fn pool<'a>(&'a self, own: &'a Pool<Postgres>) -> &'a Pool<Postgres> {
        match &self.primary {
            Some(primary) => primary.pool(),
            None => own,
        }
    }

    fn failover(&self, err: &sqlx::Error) -> Option<StoreError> {
        self.primary.as_ref()?.failover_error(err)
    }

    /// LISTEN on a connection of its own, to the primary of the moment.
    fn follow_changes(
        &self,
        store: &SqlStore<Self>,
        on: super::OnChange,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (primary, own) = (self.primary.clone(), store.writer.clone());
        let current_pool = move || match &primary {
            Some(primary) => primary.pool().clone(),
            None => own.clone(),
        };
        Some(self.instance.follow(current_pool, on, shutdown))
    }
}
