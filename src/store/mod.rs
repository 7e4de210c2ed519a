//! Persistence of accounts, history, idempotency keys and the event outbox, behind one trait
//! with a SQLite and a PostgreSQL implementation that share their SQL.
//!
//! The store owns transactions and durability, never the rules: a mutation loads the account,
//! hands it to a pure `decide` function (the lifecycle core, called by the API) and writes what
//! that function returns — account, history rows, outbox events and the idempotency record —
//! in one transaction, or nothing.

mod deliveries;
mod postgres;
mod records;
mod rows;
mod sql;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::lifecycle::{Account, AccountState, DomainError, ErrorReason, Msisdn, Rules};

pub use crate::lifecycle::{EventType, HistoryRecord, OutboxEvent};
pub use deliveries::{AttemptOutcome, DeadLetter, PendingDelivery, Registered, WebhookDeliveries};
pub use postgres::PostgresStore;
pub use records::{
    SWEEP_ACTOR, SweepCounts, SweepReport, SweepRequest, VALIDITY_EXPIRING_REASON, expiring_event,
    new_event_id, record_transitions,
};
pub use sqlite::SqliteStore;

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
    /// The database answers but cannot write: disk full, read-only file, I/O error. The
    /// request may be retried once the operator has fixed the storage; health is NOT_SERVING
    /// until a probe write succeeds (`crate::api::StorageHealth`).
    #[error("storage cannot be written: {0}")]
    NotWritable(String),
    #[error("storage error: {0}")]
    Internal(String),
}

/// One run of the sweep, as `sweep_runs` records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepRun {
    pub id: i64,
    pub as_of: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    /// `None` while it runs.
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// What its committed batches did (a failed run: up to the failure).
    pub counts: SweepCounts,
    pub error: Option<String>,
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

/// Row counts, to check that a rejected request wrote nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableCounts {
    pub accounts: i64,
    pub archived: i64,
    pub history: i64,
    pub idempotency_keys: i64,
    pub outbox: i64,
}

#[async_trait]
pub trait AccountStore: WebhookDeliveries + Send + Sync + 'static {
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

    async fn counts(&self) -> Result<TableCounts, StoreError>;

    /// The sweep (spec section 6): advances every account whose next deadline is ≤ `as_of`
    /// through every boundary it crossed and sends the VALIDITY_EXPIRING notices due, in
    /// batches of `batch_size`, each batch one transaction (accounts, history, outbox). The run
    /// is recorded in `sweep_runs`; a failure rolls back the current batch only, marks the run
    /// failed, and the next run finishes the work. A dry run only reads.
    async fn sweep(&self, request: SweepRequest) -> Result<SweepReport, StoreError>;

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

/// Opens the store a database URL names (`sqlite://…` or `postgres://…`). `acquire_timeout`
/// bounds the wait for a PostgreSQL connection; SQLite keeps its own (its one write connection
/// is also held by sweep batches).
pub async fn connect(
    url: &str,
    pool_size: u32,
    acquire_timeout: std::time::Duration,
    rules: Arc<Rules>,
) -> Result<Arc<dyn AccountStore>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, pool_size, rules).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            PostgresStore::connect(url, pool_size, acquire_timeout, rules).await?,
        ))
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

/// Whether a database error code means "the storage cannot be written": SQLite's FULL (13),
/// READONLY (8) and IOERR (10), with their extended codes (low byte = primary code; SQLite
/// codes have at most 4 digits, SQLSTATEs always 5 characters), or PostgreSQL's disk_full
/// (53100), read_only_sql_transaction (25006) and io_error (58030).
fn not_writable(code: &str) -> bool {
    match code.parse::<i32>() {
        Ok(sqlite) if code.len() < 5 => matches!(sqlite & 0xff, 8 | 10 | 13),
        _ => matches!(code, "53100" | "25006" | "58030"),
    }
}

pub(crate) fn classify(err: sqlx::Error) -> SqlFailure {
    match &err {
        sqlx::Error::Database(db) if not_writable(&db.code().unwrap_or_default()) => {
            SqlFailure::Fatal(StoreError::NotWritable(db.message().to_owned()))
        }
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let retry = db.is_unique_violation()
                // PostgreSQL: serialization failure, deadlock.
                || code == "40001"
                || code == "40P01"
                // SQLite: BUSY, LOCKED and their extended codes.
                || matches!(code.as_ref(), "5" | "6" | "261" | "262" | "517");
            if retry {
                SqlFailure::Retry
            } else if code.starts_with("08") || code == "57P01" || code == "57P03" {
                SqlFailure::Fatal(StoreError::Unavailable(db.message().to_owned()))
            } else {
                SqlFailure::Fatal(StoreError::Internal(err.to_string()))
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => SqlFailure::Fatal(StoreError::Unavailable(err.to_string())),
        _ => SqlFailure::Fatal(StoreError::Internal(err.to_string())),
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match classify(err) {
            SqlFailure::Retry => StoreError::Unavailable("the database is busy".into()),
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
    use super::not_writable;

    #[test]
    fn storage_failures_are_told_apart_from_other_database_errors() {
        // SQLite: FULL, READONLY, IOERR and extended codes (IOERR_WRITE 778, READONLY_DBMOVED 1032).
        for code in ["13", "8", "10", "778", "1032", "6410"] {
            assert!(not_writable(code), "{code}");
        }
        // PostgreSQL: disk_full, read_only_sql_transaction, io_error.
        for code in ["53100", "25006", "58030"] {
            assert!(not_writable(code), "{code}");
        }
        // SQLite BUSY, CONSTRAINT_UNIQUE (2067), CORRUPT (11); PostgreSQL unique violation,
        // connection failure, serialization failure.
        for code in ["5", "2067", "11", "23505", "08006", "40001", ""] {
            assert!(!not_writable(code), "{code}");
        }
    }
}
