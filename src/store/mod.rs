//! Persistence of accounts, history, idempotency keys, the event outbox, the webhook delivery
//! state and the sweep's run records, behind one trait ([`AccountStore`]).
//!
//! The store owns SQL, transactions and durability, never the rules: a mutation loads the
//! account, hands it to a pure `decide` function (the lifecycle core, called by the API) and
//! writes what that function returns — account, history rows, outbox events and the idempotency
//! record — in one transaction, or nothing. The sweep (`crate::sweep`) drives its own batches
//! over narrow operations ([`SweepBatch`]: claim the due accounts, write what it decided).
//! The lifecycle analytics read through [`AnalyticsStore`] (`analytics/`), read pool only.
//!
//! One generic implementation (`sql::SqlStore`) serves both backends; what differs between
//! them is declared by the `dialect::Dialect` trait and implemented in `sqlite.rs` (group
//! commit through one writer task; its WAL checkpoints in `sqlite_wal.rs`, off the writer) and
//! `postgres.rs` (group commit through writer tasks or one transaction per mutation, row
//! locks).
//! `tests/store_conformance.rs` runs one suite of store-level tests on both.

mod analytics;
mod deliveries;
mod dialect;
mod group;
mod pg_changes;
mod pg_failover;
mod postgres;
mod records;
pub mod reports;
mod rows;
mod sql;
mod sqlite;
mod sqlite_wal;
mod sweeps;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::lifecycle::{Account, AccountState, DomainError, ErrorReason, Msisdn, Rules};

pub use crate::lifecycle::{EventType, HistoryRecord, OutboxEvent};
pub use crate::lifecycle::{SWEEP_ACTOR, VALIDITY_EXPIRING_REASON};
pub use analytics::{AnalyticsStore, ChurnCandidate, ChurnQuery, CohortDay};
pub use deliveries::{AttemptOutcome, DeadLetter, PendingDelivery, Registered, WebhookDeliveries};
pub use pg_changes::{
    CHANNEL as ACCOUNT_CHANGED_CHANNEL,
    LISTENER_APPLICATION_NAME as CHANGES_LISTENER_APPLICATION_NAME,
};
pub use pg_failover::{PgHost, PgTargets, PrimaryStatus, PrimaryWatch, TargetSessionAttrs};
use postgres::{PostgresDialect, PostgresStore};
pub use records::new_event_id;
use sqlite::{SqliteDialect, SqliteStore};
pub use sweeps::{
    DueCursor, DuePage, MsisdnList, RunCounts, RunEnd, SweepBatch, SweepRun, SweepRunStatus,
    SweptBatch,
};

/// Everything one accepted request writes, together.
#[derive(Clone, Debug)]
pub struct Mutation {
    /// A previous generation of the MSISDN retired by this mutation (kept in the archive).
    pub archive: Option<Account>,
    /// The account as it is after the request.
    pub account: Account,
    pub history: Vec<HistoryRecord>,
    pub events: Vec<OutboxEvent>,
    /// The encoded response, returned again to a retry with the same request_id.
    pub response: Vec<u8>,
}

/// Identifies a mutating request for idempotency.
#[derive(Clone, Copy, Debug)]
pub struct RequestKey<'a> {
    pub request_id: &'a str,
    /// The method and its parameters; the same key with another fingerprint is ALREADY_EXISTS.
    pub fingerprint: &'a str,
    pub now: DateTime<Utc>,
}

/// The stored response of a mutation and whether it was applied now or earlier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Committed {
    Applied(Vec<u8>),
    Replayed(Vec<u8>),
}

/// What the feed of account changes committed by other servers on the same database says
/// ([`AccountStore::follow_changes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountChange {
    /// A mutation of this MSISDN committed (through any server, this one included), or may
    /// have.
    Changed(String),
    /// Any account may have changed unheard (a server started listening: it may have died
    /// before announcing its last commits).
    Everything,
    /// The feed is heard from now on; what was committed before was not heard.
    Listening,
    /// The feed is not heard (not yet, or no longer): any account may change unheard until
    /// the next `Listening`.
    Lost,
}

/// Called by the feed for each [`AccountChange`], in order, on its own task.
pub type OnChange = Arc<dyn Fn(AccountChange) + Send + Sync>;

/// The pure decision a mutation carries out: the current account (if any) in, the writes out.
/// Shared and `'static`, so a backend may hand it to a writer task and call it again on retry.
pub type Decide = Arc<dyn Fn(Option<&Account>) -> Result<Mutation, DomainError> + Send + Sync>;

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The database cannot be reached or is overloaded; the request may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A transient conflict with a concurrent transaction (a deadlock, a serialization failure,
    /// a busy database): nothing was written and the same work may be tried again at once. The
    /// caller sees it as [`StoreError::Unavailable`].
    #[error("storage unavailable: {0}")]
    Busy(String),
    /// The database answers but cannot write: disk full, read-only file, I/O error. The
    /// request may be retried once the operator has fixed the storage; health is NOT_SERVING
    /// until a probe write succeeds (`crate::api::StorageHealth`).
    #[error("storage cannot be written: {0}")]
    NotWritable(String),
    /// PostgreSQL with a multi-host `database_url`: the primary is lost and the service is
    /// searching for the new one (`pg_failover`). Nothing was written; retry with the same
    /// request_id.
    #[error("storage failover: {0}")]
    Failover(String),
    #[error("storage error: {0}")]
    Internal(String),
}

/// The RECHARGE history rows of a period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RechargeTotals {
    pub count: i64,
    /// Their amounts summed, in fen.
    pub amount: i64,
}

/// The dead-lettered webhook deliveries: how many, and the most recent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterOverview {
    pub count: i64,
    /// The latest dead-lettered first.
    pub latest: Vec<DeadLetter>,
}

#[async_trait]
pub trait AccountStore: WebhookDeliveries + AnalyticsStore + Send + Sync + 'static {
    /// Runs the backend's migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Applies one mutating request exactly once: replays the stored response for a known
    /// request_id, otherwise locks the MSISDN's row, calls `decide`, and commits its writes.
    async fn mutate(
        &self,
        msisdn: &Msisdn,
        key: RequestKey<'_>,
        decide: Decide,
    ) -> Result<Committed, StoreError>;

    async fn get(&self, msisdn: &Msisdn) -> Result<Option<Account>, StoreError>;

    /// Follows the mutations other servers commit to the same database, reporting them to `on`
    /// until `shutdown` (PostgreSQL: LISTEN/NOTIFY, on a connection of its own beside the
    /// pool). `None` where there is no such feed (SQLite: one server per database file).
    fn follow_changes(
        &self,
        on: OnChange,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>>;

    /// Waits until every mutation committed so far is announced to the other servers on the
    /// feed (PostgreSQL announces after each COMMIT, from a task of its own); at once where
    /// there is no feed. A server that stops calls it once its calls in flight have finished.
    async fn changes_announced(&self);

    /// Accounts ordered by MSISDN after `after`, optionally only those whose effective state on
    /// local date `today` is `state`.
    async fn list(
        &self,
        state: Option<AccountState>,
        today: NaiveDate,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Account>, StoreError>;

    /// History rows of an MSISDN (all generations), oldest first, with id > `after_id`.
    async fn history(
        &self,
        msisdn: &Msisdn,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<HistoryRecord>, StoreError>;

    /// Outbox events with sequence > `after_sequence`, in sequence order.
    async fn events_after(
        &self,
        after_sequence: i64,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError>;

    /// The rules the store computes `next_deadline` with (a sweep decides with the same).
    fn rules(&self) -> &Rules;

    /// Sweep batches one sweep may claim and write at once (the backend's concurrency).
    fn sweep_workers(&self) -> usize;

    /// Whether the sweep takes the due accounts in MSISDN order ([`Self::due_msisdns`], then
    /// [`SweepBatch::claim_listed`]) rather than in deadline order ([`SweepBatch::claim_due`]).
    fn sweep_in_msisdn_order(&self) -> bool;

    /// Opens one sweep batch (spec section 6): a transaction on the write path in which the
    /// sweep claims due accounts and writes what it decided for them, committed as one.
    async fn begin_sweep_batch(&self) -> Result<Box<dyn SweepBatch>, StoreError>;

    /// Up to `limit` MSISDNs of accounts due by `as_of`, in MSISDN order, after `after` (`""`:
    /// from the first), read without locks or a transaction: the sweep writes its batches in
    /// this order, so that the accounts one batch writes sit together in the table and its
    /// indexes ([`SweepBatch::claim_listed`]).
    async fn due_msisdns(
        &self,
        as_of: DateTime<Utc>,
        after: &str,
        limit: u32,
    ) -> Result<MsisdnList, StoreError>;

    /// Up to `limit` accounts due by `as_of` after `after` (in `next_deadline`, MSISDN order),
    /// read without locks or a transaction: the pages of a forecast.
    async fn due_accounts(
        &self,
        as_of: DateTime<Utc>,
        after: &DueCursor,
        limit: u32,
    ) -> Result<DuePage, StoreError>;

    /// Records the start of a (real) sweep run as of `as_of`; returns its id.
    async fn start_sweep_run(
        &self,
        as_of: DateTime<Utc>,
        started_at: DateTime<Utc>,
    ) -> Result<i64, StoreError>;

    /// Records how run `id` ended.
    async fn finish_sweep_run(&self, id: i64, end: &RunEnd) -> Result<(), StoreError>;

    /// `as_of` of the latest succeeded sweep run, if any.
    async fn last_sweep_as_of(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// A cheap round trip, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// One small committed write (the single row of `storage_probe`), through the write path:
    /// tells whether the database can be written again after a `NotWritable` failure.
    async fn probe_write(&self, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Accounts per stored state (not the effective state at "now": what the sweep last
    /// materialised), for the metrics. States without accounts are left out.
    async fn accounts_by_state(&self) -> Result<Vec<(AccountState, i64)>, StoreError>;

    /// The RECHARGE history rows with `from ≤ at < until` (an unlock's recharge is an UNLOCK
    /// row, not counted).
    async fn recharge_totals(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<RechargeTotals, StoreError>;

    /// The last `limit` rows of `sweep_runs`, the latest first.
    async fn recent_sweep_runs(&self, limit: u32) -> Result<Vec<SweepRun>, StoreError>;

    /// Accounts not yet recycled (stored state) per local day on which they become RECYCLED
    /// (its 00:00 is the recycle instant), for every such day up to `through`, in day order. An
    /// activated account is recycled the day after `lock_until` (GRACE: `grace_until` + the
    /// lock period, which is what `lock_until` holds), an unactivated card the day after
    /// `card_expiry`. Days before today are included: accounts the sweep has not recycled yet.
    async fn recycles_by_day(
        &self,
        through: NaiveDate,
    ) -> Result<Vec<(NaiveDate, i64)>, StoreError>;

    /// How many webhook deliveries are dead-lettered, and the `limit` latest (by `dead_at`).
    async fn dead_letter_overview(&self, limit: u32) -> Result<DeadLetterOverview, StoreError>;

    /// The highest outbox sequence written so far (0 while the outbox is empty).
    async fn last_outbox_sequence(&self) -> Result<i64, StoreError>;

    /// `emitted_at` of the oldest outbox event of `types` that is neither delivered to the
    /// webhook nor dead-lettered (registered for delivery or not yet); `None` when there is none.
    async fn oldest_undelivered_event(
        &self,
        types: &[EventType],
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// How many outbox events of `types` are neither delivered to the webhook nor
    /// dead-lettered (the webhook's backlog); 0 without types.
    async fn undelivered_event_count(&self, types: &[EventType]) -> Result<i64, StoreError>;

    /// The connections the store's pools hold now, for the metrics (reads no database).
    fn pool_connections(&self) -> PoolConnections;

    /// What group commit did since start (all zero without it), for the metrics.
    fn group_commits(&self) -> GroupCommitCounts {
        GroupCommitCounts::default()
    }
}

/// Group commit since start: groups committed (a group of one included), the mutations in
/// them, and the groups that failed and were run again one mutation at a time (PostgreSQL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitCounts {
    pub groups: u64,
    pub mutations: u64,
    pub split: u64,
}

/// Connections of a store's pools (SQLite: the write connection and the readers together).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolConnections {
    /// Open connections, in use or idle.
    pub open: u32,
    /// Open connections no one holds.
    pub idle: u32,
}

impl PoolConnections {
    /// What `pool` holds now.
    pub fn of<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Self {
        Self {
            open: pool.size(),
            idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
        }
    }

    /// Connections held by someone.
    pub fn in_use(&self) -> u32 {
        self.open.saturating_sub(self.idle)
    }
}

/// How long a PostgreSQL request waits for a pooled connection (or a new one) before it is
/// answered UNAVAILABLE, unless configured (`db_acquire_timeout_ms`).
pub const DEFAULT_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How a writer groups the mutations it commits together (`group_commit_max`,
/// `group_commit_wait_us`, `group_commit_writers`; `group`): it takes every mutation waiting,
/// up to `max` (at least 1), and when that is fewer than `max` and `wait` is not zero it waits
/// up to `wait` for more (rounded up to the runtime's timer, 1 ms). Every mutation of the group
/// is answered after the one COMMIT. SQLite always has one writer; PostgreSQL has `writers`
/// of them, or with 0 commits each mutation in its own transaction (PostgreSQL's own group
/// commit then shares the WAL flushes of concurrent commits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommit {
    pub max: usize,
    pub wait: std::time::Duration,
    pub writers: usize,
}

impl Default for GroupCommit {
    fn default() -> Self {
        Self {
            max: 128,
            wait: std::time::Duration::ZERO,
            writers: 0,
        }
    }
}

/// Opens the store a database URL names (`sqlite://…` or `postgres://…`). `acquire_timeout`
/// bounds the wait for a PostgreSQL connection; SQLite keeps its own (its one write connection
/// is also held by sweep batches).
pub async fn connect(
    url: &str,
    pool_size: u32,
    acquire_timeout: std::time::Duration,
    rules: Arc<Rules>,
) -> Result<Arc<dyn AccountStore>, StoreError> {
    Ok(connect_following_primary(
        url,
        pool_size,
        acquire_timeout,
        rules,
        GroupCommit::default(),
    )
    .await?
    .0)
}

/// [`connect`], and with a multi-host PostgreSQL URL the [`PrimaryWatch`] that says whether
/// the service knows its primary (`serve` turns health NOT_SERVING while it does not).
pub async fn connect_following_primary(
    url: &str,
    pool_size: u32,
    acquire_timeout: std::time::Duration,
    rules: Arc<Rules>,
    group: GroupCommit,
) -> Result<(Arc<dyn AccountStore>, Option<PrimaryWatch>), StoreError> {
    if url.starts_with("sqlite:") {
        Ok((
            Arc::new(SqliteStore::connect(url, pool_size, rules, group).await?),
            None,
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::connect(url, pool_size, acquire_timeout, rules, group).await?;
        let watch = store.primary_watch();
        Ok((Arc::new(store), watch))
    } else {
        Err(StoreError::Internal(format!(
            "unsupported database URL {url:?}: use sqlite://PATH or postgres://…"
        )))
    }
}

/// Why one attempt at a mutation failed: a database error (classified, maybe retried), a
/// transient failure to retry, or a final answer.
pub(crate) enum MutateFailure {
    Sql(sqlx::Error),
    Retry,
    Store(StoreError),
}

impl From<sqlx::Error> for MutateFailure {
    fn from(err: sqlx::Error) -> Self {
        MutateFailure::Sql(err)
    }
}

/// How an sqlx error is reported: transient ones are retried, connection loss is UNAVAILABLE.
pub(crate) enum SqlFailure {
    Retry,
    Fatal(StoreError),
}

/// Classifies a database error by its backend's codes ([`dialect::Dialect::classify_code`]); a
/// unique violation is a race with a concurrent first insert, retried like a transient conflict.
pub(crate) fn classify(err: sqlx::Error) -> SqlFailure {
    use dialect::{Dialect, ErrorClass};
    match &err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let class = if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                PostgresDialect::classify_code(&code)
            } else {
                SqliteDialect::classify_code(&code)
            };
            match class {
                ErrorClass::NotWritable => {
                    SqlFailure::Fatal(StoreError::NotWritable(db.message().to_owned()))
                }
                ErrorClass::Transient => SqlFailure::Retry,
                _ if db.is_unique_violation() => SqlFailure::Retry,
                ErrorClass::Unavailable => {
                    SqlFailure::Fatal(StoreError::Unavailable(db.message().to_owned()))
                }
                ErrorClass::Other => SqlFailure::Fatal(StoreError::Internal(err.to_string())),
            }
        }
        // The service never closes its pools: a closed one is the stand-in of a multi-host
        // URL while no primary is known (`pg_failover`).
        sqlx::Error::PoolClosed => SqlFailure::Fatal(StoreError::Failover(
            "no database primary: searching for the writable host of database_url".into(),
        )),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => SqlFailure::Fatal(StoreError::Unavailable(err.to_string())),
        _ => SqlFailure::Fatal(StoreError::Internal(err.to_string())),
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match classify(err) {
            SqlFailure::Retry => StoreError::Busy("the database is busy".into()),
            SqlFailure::Fatal(e) => e,
        }
    }
}

pub(crate) fn request_id_reused(request_id: &str) -> StoreError {
    StoreError::Domain(DomainError::AlreadyExists {
        reason: ErrorReason::RequestIdReused,
        message: format!(
            "request_id {request_id:?} was already used for a different request; \
             use a new request_id for a new request"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::dialect::{Dialect, ErrorClass};
    use super::{PostgresDialect, SqliteDialect};

    #[test]
    fn storage_failures_are_told_apart_from_other_database_errors() {
        let sqlite = SqliteDialect::classify_code;
        let postgres = PostgresDialect::classify_code;
        // SQLite: FULL, READONLY, IOERR and extended codes (IOERR_WRITE 778, READONLY_DBMOVED 1032).
        for code in ["13", "8", "10", "778", "1032", "6410"] {
            assert_eq!(sqlite(code), ErrorClass::NotWritable, "{code}");
        }
        // PostgreSQL: disk_full, read_only_sql_transaction, io_error.
        for code in ["53100", "25006", "58030"] {
            assert_eq!(postgres(code), ErrorClass::NotWritable, "{code}");
        }
        // SQLite BUSY, CONSTRAINT_UNIQUE (2067), CORRUPT (11); PostgreSQL unique violation,
        // connection failure, serialization failure.
        for code in ["5", "2067", "11", ""] {
            assert_ne!(sqlite(code), ErrorClass::NotWritable, "{code}");
        }
        for code in ["23505", "08006", "40001", ""] {
            assert_ne!(postgres(code), ErrorClass::NotWritable, "{code}");
        }
    }

    #[test]
    fn conflicts_are_transient_and_a_lost_connection_is_unavailable() {
        for code in ["5", "6", "261", "262", "517"] {
            assert_eq!(
                SqliteDialect::classify_code(code),
                ErrorClass::Transient,
                "{code}"
            );
        }
        for code in ["40001", "40P01"] {
            assert_eq!(
                PostgresDialect::classify_code(code),
                ErrorClass::Transient,
                "{code}"
            );
        }
        for code in ["08006", "08001", "57P01", "57P03"] {
            assert_eq!(
                PostgresDialect::classify_code(code),
                ErrorClass::Unavailable,
                "{code}"
            );
        }
    }
}
