//! SQLite, the embedded default: WAL, `synchronous = FULL` (a committed recharge survives a power
//! loss, not only a crash), foreign keys, a busy timeout, and every write through one connection
//! that starts its transactions with `BEGIN IMMEDIATE`: SQLite has one writer whatever the pool
//! says, so writers queue in the pool (FIFO, no busy-wait) and readers use their own pool.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::StoreError;
use super::sql::impl_account_store;
use crate::lifecycle::Rules;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    rules: Arc<Rules>,
}

impl SqliteStore {
    /// Row locks are implicit: `BEGIN IMMEDIATE` holds the database's write lock.
    const LOCK_ROW: &'static str = "";

    /// Opens (creating if missing) the database `url` names, e.g. `sqlite://ocs-lifecycle.db`.
    pub async fn connect(url: &str, pool_size: u32, rules: Arc<Rules>) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Internal(format!("bad SQLite URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            writer,
            readers,
            rules,
        })
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        MIGRATIONS
            .run(&self.writer)
            .await
            .map_err(|e| StoreError::Internal(format!("SQLite migration failed: {e}")))
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    fn reader(&self) -> &SqlitePool {
        &self.readers
    }
}

impl_account_store!(SqliteStore, Sqlite);
