//! PostgreSQL, for production: READ COMMITTED transactions that lock the MSISDN's row with
//! `SELECT … FOR UPDATE`, so concurrent requests on one account serialise and requests on
//! different accounts run in parallel. A first insert that races another (same MSISDN or same
//! request_id) fails on the unique index and the whole mutation is retried.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};

use super::StoreError;
use super::sql::impl_account_store;
use crate::lifecycle::Rules;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PostgresStore {
    pool: PgPool,
    rules: Arc<Rules>,
}

impl PostgresStore {
    const LOCK_ROW: &'static str = " FOR UPDATE";

    pub async fn connect(url: &str, pool_size: u32, rules: Arc<Rules>) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Self { pool, rules })
    }

    /// Wraps an existing pool (tests use it to run on a schema of their own).
    pub fn from_pool(pool: PgPool, rules: Arc<Rules>) -> Self {
        Self { pool, rules }
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        MIGRATIONS
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Internal(format!("PostgreSQL migration failed: {e}")))
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }
}

impl_account_store!(PostgresStore, Postgres);
