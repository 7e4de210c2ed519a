//! SQLite, the embedded default: WAL, `synchronous = FULL` (a committed recharge survives a power
//! loss, not only a crash), foreign keys and a busy timeout.
//!
//! SQLite has one writer whatever the pool says, and with `synchronous = FULL` every commit costs
//! an fsync. So every mutation goes to one writer task that owns the write connection and
//! commits the mutations waiting at that moment together (group commit, `super::group`; up to
//! `group_commit_max`, optionally waiting `group_commit_wait_us` for more, see
//! [`GroupCommit`]): one `BEGIN IMMEDIATE` transaction in which the group's keys and accounts
//! are read and its writes made with a few statements for the whole group
//! (`Writes::apply_group`; a refused mutation writes nothing). When one of those statements
//! fails, the group is rolled back and applied again, each mutation inside its own savepoint,
//! so the failing one is rolled back alone. Replies are sent only after the COMMIT, so nobody
//! is told "applied" before it is durable. Reads use a separate read-only pool. The WAL
//! is copied into the database file by a task of its own (`sqlite_wal`), not by the writer.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Acquire, Connection, Pool, Sqlite, SqlitePool, Transaction};

use super::dialect::{Dialect, ErrorClass, SqlDatabase};
use super::group::{CommitGroup, GroupCounters, Job, Writers};
use super::sql::{SqlStore, Writes};
use super::sqlite_wal::{Checkpointer, WRITER_CHECKPOINT_PAGES};
use super::{
    Committed, Decide, GroupCommit, MutateFailure, RequestKey, SqlFailure, StoreError, classify,
};
use crate::lifecycle::{Msisdn, Rules};

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store: the generic store over [`SqliteDialect`].
pub(crate) type SqliteStore = SqlStore<SqliteDialect>;

/// SQLite's side of the backend contract; holds the queue of the writer task.
pub(crate) struct SqliteDialect {
    writer: Writers,
    counters: Arc<GroupCounters>,
    /// Copies the WAL into the database file beside the writer; stops with the store.
    _checkpoints: Checkpointer,
}

impl SqlStore<SqliteDialect> {
    /// Opens (creating if missing) the database `url` names, e.g. `sqlite://ocs-lifecycle.db`.
    pub async fn connect(
        url: &str,
        pool_size: u32,
        rules: Arc<Rules>,
        group: GroupCommit,
    ) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Internal(format!("bad SQLite URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // The write connection: its statement journals and savepoints in memory (a sweep
        // batch's multi-row statements journal a page each; on disk that was ~a tenth of the
        // batch), and its WAL checkpoints left to the checkpoint task (`sqlite_wal`).
        let write_options = options
            .clone()
            .pragma("temp_store", "memory")
            .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES.to_string());
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            // A COMMIT that fails on a full disk or an I/O error is rolled back by SQLite
            // itself, so sqlx's own ROLLBACK fails and the connection would stay "in a
            // transaction" for sqlx: every later BEGIN on the one write connection would fail
            // until a restart. Such a connection is closed and replaced instead.
            .after_release(|conn, _| {
                Box::pin(async move {
                    if conn.is_in_transaction() {
                        // Flushes a rollback still queued by a dropped transaction.
                        conn.ping().await?;
                    }
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(write_options)
            .await
            .map_err(|e| open_error(&options, e))?;
        let checkpoints = Checkpointer::start(&options)
            .await
            .map_err(|e| open_error(&options, e))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(|e| open_error(&options, e))?;
        let counters = Arc::new(GroupCounters::default());
        let committer = Arc::new(SqliteGroups {
            pool: writer.clone(),
            rules: rules.clone(),
            counters: counters.clone(),
        });
        Ok(SqlStore::new(
            SqliteDialect {
                writer: Writers::start(1, group, committer, counters.clone()),
                counters,
                _checkpoints: checkpoints,
            },
            readers,
            writer,
            rules,
        ))
    }
}

/// Why the database file cannot be opened, naming the file and what to do.
fn open_error(options: &SqliteConnectOptions, err: sqlx::Error) -> StoreError {
    let file = options.get_filename();
    let directory = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => std::path::Path::new("."),
    };
    let text = err.to_string();
    let access = ["unable to open", "readonly", "permission"];
    let hint = if !directory.is_dir() {
        format!(
            "; the directory {} does not exist: create it, or correct database_url",
            directory.display()
        )
    } else if access.iter().any(|word| text.contains(word)) {
        format!(
            "; the file and its directory {} must be readable and writable by this user",
            directory.display()
        )
    } else {
        String::new()
    };
    match StoreError::from(err) {
        StoreError::Internal(e) | StoreError::Unavailable(e) | StoreError::NotWritable(e) => {
            StoreError::Unavailable(format!(
                "cannot open the SQLite database {}: {e}{hint}",
                file.display()
            ))
        }
        other => other,
    }
}

/// sqlx's Sqlite meets what the shared SQL needs (the compiler checks it here).
impl SqlDatabase for Sqlite {}

#[async_trait]
impl Dialect for SqliteDialect {
    type Db = Sqlite;

    const NAME: &'static str = "SQLite";

    /// Row locks are implicit: `BEGIN IMMEDIATE` holds the database's write lock.
    const LOCK_ROW: &'static str = "";

    /// The sweep claims every due row by holding the database's write lock.
    const CLAIM_DUE: &'static str = "";

    /// One batch at a time: the database has one writer.
    const SWEEP_WORKERS: usize = 1;
    /// One batch writes a table page once for all its due accounts (measured in
    /// BENCHMARKS.md: +15 % sweep rate on average against deadline order).
    const SWEEP_IN_MSISDN_ORDER: bool = true;
    const NAMES_INDEXES: bool = true;

    fn migrator() -> &'static Migrator {
        &MIGRATIONS
    }

    fn rows_affected(done: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    /// FULL (13), READONLY (8) and IOERR (10) with their extended codes (low byte = primary
    /// code) cannot write; BUSY (5), LOCKED (6) and their extended codes are transient.
    fn classify_code(code: &str) -> ErrorClass {
        match code.parse::<i32>() {
            Ok(primary) if matches!(primary & 0xff, 8 | 10 | 13) => ErrorClass::NotWritable,
            _ if matches!(code, "5" | "6" | "261" | "262" | "517") => ErrorClass::Transient,
            _ => ErrorClass::Other,
        }
    }

    /// The mutation goes to the writer task, which commits it with the others waiting at that
    /// moment and answers after the COMMIT.
    async fn mutate_once(
        &self,
        _store: &SqlStore<Self>,
        msisdn: &Msisdn,
        key: RequestKey<'_>,
        decide: &Decide,
    ) -> Result<Committed, MutateFailure> {
        self.writer.submit(msisdn, key, decide).await
    }

    fn group_commits(&self) -> super::GroupCommitCounts {
        self.counters.snapshot()
    }

    /// A sweep batch takes the write connection (the pool has exactly one) under
    /// `BEGIN IMMEDIATE`: the writer task waits for it, so the batch and the group commits
    /// serialise, and requests resume between batches.
    async fn begin_batch(
        &self,
        writer: &Pool<Sqlite>,
    ) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        writer.begin_with("BEGIN IMMEDIATE").await
    }
}

/// The one write connection and the rules, for the writer task.
struct SqliteGroups {
    pool: SqlitePool,
    rules: Arc<Rules>,
    counters: Arc<GroupCounters>,
}

#[async_trait]
impl CommitGroup for SqliteGroups {
    /// The group's statements written together (`Writes::apply_group`); when one of them fails,
    /// the group again, each mutation under its own savepoint, so that the one the database
    /// refuses fails alone.
    async fn commit_group(&self, group: &[Job]) -> Vec<Result<Committed, MutateFailure>> {
        match together(&self.pool, &self.rules, group).await {
            Ok(results) => results,
            Err(err) => {
                tracing::debug!(mutations = group.len(), error = %err, "a group failed; its mutations run under savepoints");
                self.counters.count_split();
                one_by_one(&self.pool, &self.rules, group).await
            }
        }
    }
}

/// Applies `group` in one transaction with a few statements for all of it; `Err` (nothing
/// committed) at the first database error.
async fn together(
    pool: &SqlitePool,
    rules: &Rules,
    group: &[Job],
) -> Result<Vec<Result<Committed, MutateFailure>>, sqlx::Error> {
    let mut tx: Transaction<'static, Sqlite> = pool.begin_with("BEGIN IMMEDIATE").await?;
    let written = Writes::<SqliteDialect>::apply_group(&mut tx, rules, group).await;
    match written {
        Ok(results) => {
            tx.commit().await?;
            Ok(results)
        }
        Err(err) => {
            if let Err(e) = tx.rollback().await {
                tracing::debug!(error = %e, "rollback after a failed group failed");
            }
            Err(err)
        }
    }
}

/// Applies `group` in one transaction, each mutation under its own savepoint; one result per
/// job, in order.
async fn one_by_one(
    pool: &SqlitePool,
    rules: &Rules,
    group: &[Job],
) -> Vec<Result<Committed, MutateFailure>> {
    let mut results = Vec::with_capacity(group.len());
    let outcome: Result<(), sqlx::Error> = async {
        let mut tx: Transaction<'static, Sqlite> = pool.begin_with("BEGIN IMMEDIATE").await?;
        for job in group {
            let mut savepoint = tx.begin().await?;
            let conn = savepoint.acquire().await?;
            let result =
                Writes::<SqliteDialect>::apply_in(conn, rules, &job.msisdn, job.key(), &job.decide)
                    .await;
            match result {
                Ok(Committed::Applied(_)) => savepoint.commit().await?,
                _ => savepoint.rollback().await?,
            }
            results.push(result);
        }
        tx.commit().await
    }
    .await;
    match outcome {
        Ok(()) => results,
        Err(err) => {
            // Nothing of the group is committed: every job gets the same answer.
            let failure = classify(err);
            group
                .iter()
                .map(|_| match &failure {
                    SqlFailure::Retry => Err(MutateFailure::Retry),
                    SqlFailure::Fatal(e) => Err(MutateFailure::Store(e.clone())),
                })
                .collect()
        }
    }
}
