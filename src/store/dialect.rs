//! The backend contract: what differs between SQLite and PostgreSQL, declared once. Everything
//! else — the SQL text, the row mapping, the retries — is one generic implementation over a
//! [`Dialect`] (`super::sql::SqlStore`).
//!
//! Both backends accept `$N` placeholders, `RETURNING`, `ON CONFLICT`, multi-row `VALUES` and
//! the same column types, so the SQL text itself is shared; a backend that differs there would
//! add a method here, not a branch in the generic code.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::query::Query;
use sqlx::{Arguments, Database, Encode, Executor, FromRow, Pool, Transaction, Type};

use super::deliveries::DeadRow;
use super::rows::{AccountRow, HistoryRow, OutboxRow, SweepRunRow};
use super::sql::SqlStore;
use super::{Committed, Decide, MutateFailure, RequestKey};
use crate::lifecycle::Msisdn;

/// What one database error code means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// A transient conflict (busy, deadlock, serialization failure): the same work may be
    /// tried again.
    Transient,
    /// The database answers but cannot write (disk full, read-only, I/O error).
    NotWritable,
    /// The connection is lost or the server is shutting down.
    Unavailable,
    /// Anything else: a bug or a corrupt database.
    Other,
}

/// The differences between the SQL backends. Implemented by `SqliteDialect` and
/// `PostgresDialect`; a value of it is the backend's own state (SQLite: its writer task).
#[async_trait]
pub(crate) trait Dialect: Send + Sync + Sized + 'static {
    /// The sqlx database, with what the shared SQL needs of it.
    type Db: SqlDatabase;

    /// The backend's name, in messages.
    const NAME: &'static str;

    /// Appended to the `SELECT` of the MSISDN's row in a mutation: how that row is locked
    /// until the mutation commits.
    const LOCK_ROW: &'static str;

    /// Appended to the sweep's claim of due rows: locks them without ever waiting for a row
    /// another transaction holds (that row is left out; the sweep comes back for it).
    const CLAIM_DUE: &'static str;

    /// Sweep batches claimed and written at once by one sweep (1 or 2).
    const SWEEP_WORKERS: usize;

    /// Whether the sweep takes the due accounts in MSISDN order
    /// ([`crate::store::AccountStore::sweep_in_msisdn_order`]).
    const SWEEP_IN_MSISDN_ORDER: bool = false;

    /// Whether a query names the partial index it must read (`INDEXED BY`): SQLite's planner
    /// may otherwise build an automatic index over the whole table for a join.
    const NAMES_INDEXES: bool = false;

    /// Whether the reports' joins of periods to rows must read each period's rows as a
    /// subquery of its own (`LATERAL … OFFSET 0`, PostgreSQL): the planner would otherwise
    /// compare every row with every period. SQLite keeps `CROSS JOIN`'s order.
    const RANGES_PER_BUCKET: bool = false;

    /// The `shard` of the `history_totals` rows a transaction adds to (an SQL expression):
    /// writers that commit at once add to different rows of one slot and code, instead of
    /// waiting for each other's row lock until the other commits. `0` where one writer commits
    /// at a time.
    const TOTALS_SHARD: &'static str = "0";

    /// Writes statements (their parameters numbered across all of them, in this order) as one
    /// query string, so that they cost one call: SQLite runs several statements of one string
    /// in turn; PostgreSQL binds parameters to one statement only, so it is given the first
    /// ones as data-modifying `WITH` queries of the last (run together, on one snapshot: none
    /// of them may read what another writes).
    fn join_statements(statements: Vec<String>) -> String {
        statements.join(";\n")
    }

    fn migrator() -> &'static Migrator;

    /// What a database error code of this backend means.
    fn classify_code(code: &str) -> ErrorClass;

    /// One attempt at a mutation: how it gets its transaction (its own, or a share of a group
    /// commit), runs `Writes::apply_in` in it and commits, and tells the other servers on the
    /// database (if they can share it) that the MSISDN changed. Retries are the caller's.
    async fn mutate_once(
        &self,
        store: &SqlStore<Self>,
        msisdn: &Msisdn,
        key: RequestKey<'_>,
        decide: &Decide,
    ) -> Result<Committed, MutateFailure>;

    /// Rows an `INSERT`, `UPDATE` or `DELETE` wrote (sqlx has no trait for it).
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;

    /// Opens the transaction of one sweep batch on the write pool.
    async fn begin_batch(
        &self,
        writer: &Pool<Self::Db>,
    ) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;

    /// The pool to query now, given the store's own (`reader` or `writer`). A backend whose
    /// server can move (PostgreSQL following the primary of a multi-host URL) answers its
    /// current one.
    fn pool<'a>(&'a self, own: &'a Pool<Self::Db>) -> &'a Pool<Self::Db> {
        own
    }

    /// Starts following what other servers commit ([`super::AccountStore::follow_changes`]);
    /// `None` for a backend without such a feed.
    fn follow_changes(
        &self,
        _store: &SqlStore<Self>,
        _on: super::OnChange,
        _shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    /// Waits until the commits so far are announced to the other servers
    /// ([`super::AccountStore::changes_announced`]); at once for a backend without a feed.
    async fn changes_announced(&self) {}

    /// What group commit did since start (all zero without it).
    fn group_commits(&self) -> super::GroupCommitCounts {
        super::GroupCommitCounts::default()
    }

    /// What a write reports for `err` when the error says the server may have moved (a
    /// failover): `None` for every other error, and for backends that do not move.
    fn failover(&self, _err: &sqlx::Error) -> Option<super::StoreError> {
        None
    }
}

/// What the shared SQL needs from a backend's sqlx database, stated once: it runs migrations,
/// executes on a pool and on a connection, binds the parameter types the SQL uses and reads its
/// row types. `sqlx::Sqlite` and `sqlx::Postgres` meet it (checked by the empty impls in
/// `sqlite.rs` and `postgres.rs`).
///
/// Generic code goes through this trait instead of sqlx's own `bind`, `query_as` and executor
/// impls, whose bounds are about the bound types (`i64: Encode<DB>`), not about the database:
/// Rust does not carry such `where` clauses from a trait to its users, so every generic `impl`
/// would have to repeat them. Bounds on `Self` carry over.
pub(crate) trait SqlDatabase:
    Database<Connection: Migrate>
    + for<'q> DatabaseArgs<'q>
    + Executes
    + for<'q> Binds<'q, i64>
    + for<'q> Binds<'q, Option<i64>>
    + for<'q> Binds<'q, i32>
    + for<'q> Binds<'q, Option<i32>>
    + for<'q> Binds<'q, bool>
    + for<'q> Binds<'q, &'q str>
    + for<'q> Binds<'q, Option<&'q str>>
    + for<'q> Binds<'q, &'q [u8]>
    + for<'q> Binds<'q, DateTime<Utc>>
    + for<'q> Binds<'q, Option<DateTime<Utc>>>
    + for<'q> Binds<'q, NaiveDate>
    + for<'q> Binds<'q, Option<NaiveDate>>
    + Reads<AccountRow>
    + Reads<HistoryRow>
    + Reads<OutboxRow>
    + Reads<SweepRunRow>
    + Reads<DeadRow>
    + Reads<(i64,)>
    + Reads<(Option<i64>,)>
    + Reads<(i64, i64)>
    + Reads<(i64, Option<i64>)>
    + Reads<(i32, i64)>
    + Reads<(i64, i32)>
    + Reads<(i64, String, i64, i32)>
    + Reads<(i64, i64, i64)>
    + Reads<(i64, i64, i64, i64)>
    + Reads<(i64, i64, i64, i64, i64)>
    + Reads<(String, i64, DateTime<Utc>, DateTime<Utc>, i64)>
    + Reads<(String, i64, Option<DateTime<Utc>>)>
    + Reads<(String,)>
    + Reads<(String, Vec<u8>)>
    + Reads<(String, String, Vec<u8>)>
    + Reads<(DateTime<Utc>,)>
    + Reads<(NaiveDate, i64)>
{
}

/// `INDEXED BY index` where the dialect names indexes, nothing elsewhere.
pub(crate) fn indexed_by<D: Dialect>(index: &str) -> String {
    if D::NAMES_INDEXES {
        format!(" INDEXED BY {index}")
    } else {
        String::new()
    }
}

/// Runs queries on a pool and on a connection (sqlx's executor impls, whose bound is about
/// `&mut Connection`).
pub(crate) trait Executes: Database {
    fn on<'c>(conn: &'c mut Self::Connection) -> impl Executor<'c, Database = Self>;
    fn on_pool<'p>(pool: &'p Pool<Self>) -> impl Executor<'p, Database = Self>;
}

impl<DB: Database> Executes for DB
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    fn on<'c>(conn: &'c mut DB::Connection) -> impl Executor<'c, Database = DB> {
        conn
    }

    fn on_pool<'p>(pool: &'p Pool<DB>) -> impl Executor<'p, Database = DB> {
        pool
    }
}

/// Binds a `T` as a query parameter (sqlx's `bind`, whose bound is about `T`).
pub(crate) trait Binds<'q, T>: Database {
    fn bind(
        query: Query<'q, Self, Self::Arguments<'q>>,
        value: T,
    ) -> Query<'q, Self, Self::Arguments<'q>>;
    fn add(arguments: &mut Self::Arguments<'q>, value: T) -> Result<(), BoxDynError>;
}

impl<'q, DB: Database, T: 'q + Encode<'q, DB> + Type<DB>> Binds<'q, T> for DB {
    fn bind(query: Query<'q, DB, DB::Arguments<'q>>, value: T) -> Query<'q, DB, DB::Arguments<'q>> {
        query.bind(value)
    }

    fn add(arguments: &mut DB::Arguments<'q>, value: T) -> Result<(), BoxDynError> {
        arguments.add(value)
    }
}

/// Reads a row as a `T` (sqlx's `FromRow`, whose bound is about `T`).
pub(crate) trait Reads<T>: Database {
    fn read(row: &Self::Row) -> Result<T, sqlx::Error>;

    fn read_optional(row: Option<Self::Row>) -> Result<Option<T>, sqlx::Error> {
        row.as_ref().map(Self::read).transpose()
    }

    fn read_all(rows: Vec<Self::Row>) -> Result<Vec<T>, sqlx::Error> {
        rows.iter().map(Self::read).collect()
    }
}

impl<DB: Database, T: for<'r> FromRow<'r, DB::Row>> Reads<T> for DB {
    fn read(row: &DB::Row) -> Result<T, sqlx::Error> {
        T::from_row(row)
    }
}

/// A parameter of `SqlDatabase`'s types: `sqlx::query(sql).param(a).param(b)`.
pub(crate) trait Param<'q, DB: Database>: Sized {
    fn param<T>(self, value: T) -> Self
    where
        DB: Binds<'q, T>;
}

impl<'q, DB: Database> Param<'q, DB> for Query<'q, DB, DB::Arguments<'q>> {
    fn param<T>(self, value: T) -> Self
    where
        DB: Binds<'q, T>,
    {
        DB::bind(self, value)
    }
}

/// The database of a dialect, its connection, its row and its bound arguments.
pub(crate) type Db<D> = <D as Dialect>::Db;
pub(crate) type Args<'q, D> = <Db<D> as Database>::Arguments<'q>;
pub(crate) type Conn<D> = <Db<D> as Database>::Connection;

/// `Database::Arguments<'q>` can be bound into a query of `'q` (sqlx states it per backend).
pub(crate) trait DatabaseArgs<'q>:
    Database<Arguments<'q>: sqlx::IntoArguments<'q, Self>>
{
}

impl<'q, DB> DatabaseArgs<'q> for DB where DB: Database<Arguments<'q>: sqlx::IntoArguments<'q, DB>> {}
