//! The backend contract: what differs between SQLite and PostgreSQL, declared once. Everything
//! else — the SQL text, the row mapping, the retries — is one generic implementation over a
//! [`Dialect`] (`super::sql::SqlStore`).
//!
//! Both backends accept `$N` placeholders, `RETURNING`, `ON CONFLICT`, multi-row `VALUES` and
//! the same column types, so the SQL text itself is shared; a backend that differs there would
//! add a method here, not a branch in the generic code.

use async_trait::async_trait;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::{Database, Decode, Encode, Pool, Transaction, Type};

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
    /// The sqlx database; its connection runs the migrations and its arguments make queries.
    type Db: Database<Connection: Migrate> + for<'q> DatabaseArgs<'q>;

    /// The backend's name, in messages.
    const NAME: &'static str;

    /// Appended to the `SELECT` of the MSISDN's row in a mutation: how that row is locked
    /// until the mutation commits.
    const LOCK_ROW: &'static str;

    /// Appended to the sweep's claim of due rows on its first passes: rows another
    /// transaction holds are left for the last pass.
    const CLAIM_DUE: &'static str;

    /// Appended to the claim of the sweep's last pass, which waits for the rows skipped above.
    const CLAIM_DUE_WAITING: &'static str;

    /// Sweep batches claimed and written at once by one sweep (1 or 2).
    const SWEEP_WORKERS: usize;

    fn migrator() -> &'static Migrator;

    /// What a database error code of this backend means.
    fn classify_code(code: &str) -> ErrorClass;

    /// One attempt at a mutation: how it gets its transaction (its own, or a share of a group
    /// commit), runs [`super::sql::apply_in`] in it and commits. Retries are the caller's.
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

    /// What a write reports for `err` when the error says the server may have moved (a
    /// failover): `None` for every other error, and for backends that do not move.
    fn failover(&self, _err: &sqlx::Error) -> Option<super::StoreError> {
        None
    }
}

/// A Rust type a backend binds as a parameter and reads from a column.
pub(crate) trait Value<DB: Database>:
    for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send + Sync
{
}

impl<DB: Database, T> Value<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send + Sync
{
}

/// The database of a dialect, its connection, its row and its bound arguments.
pub(crate) type Db<D> = <D as Dialect>::Db;
pub(crate) type Args<'q, D> = <Db<D> as Database>::Arguments<'q>;
pub(crate) type Conn<D> = <Db<D> as Database>::Connection;
pub(crate) type Row<D> = <Db<D> as Database>::Row;

/// `Database::Arguments<'q>` can be bound into a query of `'q` (sqlx states it per backend).
pub(crate) trait DatabaseArgs<'q>:
    Database<Arguments<'q>: sqlx::IntoArguments<'q, Self>>
{
}

impl<'q, DB> DatabaseArgs<'q> for DB where DB: Database<Arguments<'q>: sqlx::IntoArguments<'q, DB>> {}
