//! PostgreSQL, for production: READ COMMITTED transactions that lock the MSISDN's row with
//! `SELECT … FOR UPDATE`, so concurrent requests on one account serialise and requests on
//! different accounts run in parallel. After each COMMIT the MSISDN is queued for announcement
//! to the other servers on the database (`pg_changes`). A first insert that races another (same MSISDN or same
//! request_id) fails on the unique index and the whole mutation is retried.
//!
//! With `group_commit_writers` above 0, mutations go instead to that many writer tasks
//! (`super::group`, an MSISDN always to the same one), each committing the mutations waiting
//! for it as one transaction: fewer commits and round trips per mutation. A refusal writes
//! nothing, so it does not disturb the group; any database error rolls the group back and its
//! mutations are run again one transaction each, so one bad mutation cannot fail the others.
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
use super::group::{CommitGroup, GroupCounters, Job, Writers};
use super::pg_failover::{FollowedPrimary, PgTargets, PrimaryWatch};
use super::sql::{SqlStore, Writes};
use super::{Committed, Decide, GroupCommit, MutateFailure, RequestKey, StoreError};
use crate::lifecycle::{Msisdn, Rules};

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL store: the generic store over [`PostgresDialect`].
pub(crate) type PostgresStore = SqlStore<PostgresDialect>;

/// PostgreSQL's side of the backend contract; with a multi-host URL it follows the primary.
pub(crate) struct PostgresDialect {
    writes: Arc<PgWrites>,
    /// The group commit writers (`group_commit_writers` > 0).
    group: Option<Writers>,
}

/// Where and how mutations are written: shared by the dialect and the group commit writers.
struct PgWrites {
    primary: Option<Arc<FollowedPrimary>>,
    /// The store's own pool (the primary's, when following one, is `primary`'s).
    own: Pool<Postgres>,
    rules: Arc<Rules>,
    /// Who this store is on the change feed (`pg_changes`): it ignores its own announcements,
    /// since its commits reach its cache directly.
    instance: super::pg_changes::Instance,
    /// Announces to the other servers what the commits changed.
    announcer: super::pg_changes::Announcer,
    counters: Arc<GroupCounters>,
}

impl SqlStore<PostgresDialect> {
    /// `acquire_timeout` bounds how long a request waits for a connection (a pooled one, or a
    /// new one while the server is unreachable) before it is answered UNAVAILABLE.
    pub async fn connect(
        url: &str,
        pool_size: u32,
        acquire_timeout: Duration,
        rules: Arc<Rules>,
        group: GroupCommit,
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
        let instance = super::pg_changes::Instance::new();
        let announcer = instance.announcer(pool_of_the_moment(&primary, &pool));
        let writes = Arc::new(PgWrites {
            primary,
            own: pool.clone(),
            rules: rules.clone(),
            instance,
            announcer,
            counters: Arc::new(GroupCounters::default()),
        });
        let writers = (group.writers > 0).then(|| {
            let committer: Arc<dyn CommitGroup> = writes.clone();
            Writers::start(group.writers, group, committer, writes.counters.clone())
        });
        // One pool for reads and writes: every connection may write.
        Ok(SqlStore::new(
            PostgresDialect {
                writes,
                group: writers,
            },
            pool.clone(),
            pool,
            rules,
        ))
    }

    /// With a multi-host `database_url`: whether the service knows its primary.
    pub fn primary_watch(&self) -> Option<PrimaryWatch> {
        self.dialect.writes.primary.as_ref().map(|p| p.watch())
    }
}

/// The pool of the server written to at each call (a multi-host URL: the primary of the moment).
fn pool_of_the_moment(
    primary: &Option<Arc<FollowedPrimary>>,
    own: &Pool<Postgres>,
) -> impl Fn() -> Pool<Postgres> + Send + Sync + 'static {
    let (primary, own) = (primary.clone(), own.clone());
    move || match &primary {
        Some(primary) => primary.pool().clone(),
        None => own.clone(),
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

impl PgWrites {
    /// A write transaction (a multi-host URL: on the primary, failing at once while the
    /// service searches for it).
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        match &self.primary {
            Some(primary) => primary.begin().await,
            None => self.own.begin().await,
        }
    }

    /// Queues `msisdns` for announcement to the other servers. Also when the COMMIT's answer
    /// was lost: a change that did not happen only costs the other servers a read.
    fn announce(&self, msisdns: &[&Msisdn]) {
        self.announcer.changed(msisdns.iter().map(|m| m.as_str()));
    }

    /// One mutation, one transaction: concurrent commits of other rows proceed in parallel and
    /// PostgreSQL's own group commit shares their WAL flushes.
    async fn alone(
        &self,
        msisdn: &Msisdn,
        key: RequestKey<'_>,
        decide: &Decide,
    ) -> Result<Committed, MutateFailure> {
        let mut tx = self.begin().await?;
        let result =
            Writes::<PostgresDialect>::apply_in(&mut tx, &self.rules, msisdn, key, decide).await;
        match &result {
            Ok(Committed::Applied(_)) => {
                let committed = tx.commit().await;
                self.announce(&[msisdn]);
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

    /// `group` in one transaction: refusals (which write nothing) answered as such, every
    /// other mutation applied; `Err` at the first database error, nothing committed.
    async fn together(
        &self,
        group: &[Job],
    ) -> Result<Vec<Result<Committed, MutateFailure>>, MutateFailure> {
        let mut tx = self.begin().await?;
        // On an error, dropping the transaction rolls it back.
        let results = Writes::<PostgresDialect>::apply_group(&mut tx, &self.rules, group).await?;
        tx.commit().await?;
        Ok(results)
    }
}

#[async_trait]
impl CommitGroup for PgWrites {
    async fn commit_group(&self, group: &[Job]) -> Vec<Result<Committed, MutateFailure>> {
        if let [job] = group {
            return vec![self.alone(&job.msisdn, job.key(), &job.decide).await];
        }
        match self.together(group).await {
            Ok(results) => {
                let applied: Vec<&Msisdn> = group
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| matches!(r, Ok(Committed::Applied(_))))
                    .map(|(job, _)| &job.msisdn)
                    .collect();
                self.announce(&applied);
                results
            }
            Err(failed) => {
                // Also after a COMMIT whose answer was lost: a mutation that did commit finds
                // its idempotency key and is answered as replayed.
                let why = match &failed {
                    MutateFailure::Sql(e) => e.to_string(),
                    MutateFailure::Retry => "transient".into(),
                    MutateFailure::Store(e) => e.to_string(),
                };
                tracing::debug!(mutations = group.len(), error = %why, "a group failed; its mutations run one by one");
                self.counters.count_split();
                let mut results = Vec::with_capacity(group.len());
                for job in group {
                    results.push(self.alone(&job.msisdn, job.key(), &job.decide).await);
                }
                results
            }
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
    // The sweep keeps deadline order: MSISDN order measured slower here (BENCHMARKS.md,
    // "The sweep in MSISDN order").
    /// Each connection's own (its server process id), folded into 64 rows.
    const TOTALS_SHARD: &'static str = "pg_backend_pid() % 64";
    const RANGES_PER_BUCKET: bool = true;

    fn join_statements(mut statements: Vec<String>) -> String {
        let Some(last) = statements.pop() else {
            return String::new();
        };
        if statements.is_empty() {
            return last;
        }
        let with: Vec<String> = statements
            .iter()
            .enumerate()
            .map(|(i, statement)| format!("w{i} AS ({statement})"))
            .collect();
        format!("WITH {} {last}", with.join(", "))
    }

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

    /// Through the group commit writers when there are any, else in a transaction of its own.
    async fn mutate_once(
        &self,
        _store: &SqlStore<Self>,
        msisdn: &Msisdn,
        key: RequestKey<'_>,
        decide: &Decide,
    ) -> Result<Committed, MutateFailure> {
        match &self.group {
            Some(writers) => writers.submit(msisdn, key, decide).await,
            None => self.writes.alone(msisdn, key, decide).await,
        }
    }

    async fn begin_batch(
        &self,
        _writer: &Pool<Postgres>,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.writes.begin().await
    }

    fn pool<'a>(&'a self, own: &'a Pool<Postgres>) -> &'a Pool<Postgres> {
        match &self.writes.primary {
            Some(primary) => primary.pool(),
            None => own,
        }
    }

    fn group_commits(&self) -> super::GroupCommitCounts {
        self.writes.counters.snapshot()
    }

    async fn changes_announced(&self) {
        self.writes.announcer.flushed().await;
    }

    fn failover(&self, err: &sqlx::Error) -> Option<StoreError> {
        self.writes.primary.as_ref()?.failover_error(err)
    }

    /// LISTEN on a connection of its own, to the primary of the moment.
    fn follow_changes(
        &self,
        store: &SqlStore<Self>,
        on: super::OnChange,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let current_pool = pool_of_the_moment(&self.writes.primary, &store.writer);
        Some(self.writes.instance.follow(current_pool, on, shutdown))
    }
}
