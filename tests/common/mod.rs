//! The test harness: an in-process server (the real gRPC stack, the real store) on a fresh
//! SQLite file or a fresh PostgreSQL database, its clients, direct access to its database, and
//! `both_backends!`, which runs one test body on both backends (the storage conformance suite).
//!
//! PostgreSQL comes from `OCS_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); every server gets its own database
//! `ocs_t_<uuid>`, dropped when the test ends. Without a reachable PostgreSQL the PostgreSQL
//! variants print `SKIPPED: …` and pass, unless `CI=true`, where they fail loudly.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use ocs_lifecycle::auth::{Role, token_sha256};
use ocs_lifecycle::config::{ClockMode, Config, TokenEntry};
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::test_clock_client::TestClockClient;
use sqlx::Connection;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

pub mod api;
pub mod binary;
pub mod budget;
pub mod dead_letters;
pub mod faults;
pub mod pg_auto_failover;
pub mod pg_cluster;
pub mod process;
pub mod shutdown;
pub mod store_fixtures;

pub use process::free_port;

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Safety bound for start-up and shutdown; tests never assert on elapsed time.
const SAFETY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One database a test owns: a SQLite file in a temporary directory, or a PostgreSQL database
/// created for the test and dropped (`WITH (FORCE)`) when the last handle goes away.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    /// The SQLite file's directory, kept alive as long as the database.
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the server URL the database was created from, and its name.
    pg_admin: Option<(String, String)>,
}

impl TestDb {
    /// A fresh, empty database; `None` when PostgreSQL is unreachable and the test is skipped.
    pub async fn create(backend: Backend) -> Option<Arc<TestDb>> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}", dir.path().join("t.db").display());
                Some(Arc::new(TestDb {
                    backend,
                    url,
                    _dir: Some(dir),
                    pg_admin: None,
                }))
            }
            Backend::Postgres => {
                let base = std::env::var("OCS_TEST_DATABASE_URL")
                    .ok()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| DEFAULT_PG_URL.to_owned());
                let connected = tokio::time::timeout(
                    Duration::from_secs(10),
                    sqlx::PgConnection::connect(&base),
                )
                .await;
                let mut admin = match connected {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => return pg_unreachable(&base, &e.to_string()),
                    Err(_) => return pg_unreachable(&base, "connection timed out"),
                };
                let name = format!("ocs_t_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {base}: {e}"));
                let _ = admin.close().await;
                let url = with_database(&base, &name);
                Some(Arc::new(TestDb {
                    backend,
                    url,
                    _dir: None,
                    pg_admin: Some((base, name)),
                }))
            }
        }
    }

    /// A direct connection to the database, to check what the server wrote.
    pub async fn open(&self) -> Db {
        self.connect(true).await
    }

    /// A direct connection that may write: for tests that arrange the database behind the
    /// server's back (as another process or a slow transaction would).
    pub async fn open_for_writing(&self) -> Db {
        self.connect(false).await
    }

    async fn connect(&self, read_only: bool) -> Db {
        match self.backend {
            Backend::Sqlite => {
                // Generous: a test may write while a sweep process holds the write lock.
                let options = SqliteConnectOptions::from_str(&self.url)
                    .expect("SQLite URL")
                    .busy_timeout(Duration::from_secs(60))
                    .read_only(read_only);
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await
                    .expect("open the test SQLite database");
                Db::Sqlite(pool)
            }
            Backend::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(2)
                    .connect(&self.url)
                    .await
                    .expect("open the test PostgreSQL database");
                Db::Postgres(pool)
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((base, name)) = self.pg_admin.take() else {
            return;
        };
        // Drop runs inside the test's runtime; a thread of its own can block on async I/O.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut admin = sqlx::PgConnection::connect(&base).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("warning: could not drop the test database: {e}");
        }
    }
}

fn pg_unreachable(url: &str, error: &str) -> Option<Arc<TestDb>> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but PostgreSQL is unreachable at {url}: {error}");
    }
    // Written to the process's stderr directly: libtest captures `eprintln!` of passing tests,
    // and a skip must be visible in the run's output.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: PostgreSQL not reachable at {url} ({error}); set OCS_TEST_DATABASE_URL"
    );
    None
}

/// `base` (a PostgreSQL URL) naming database `name` instead of its own.
fn with_database(base: &str, name: &str) -> String {
    let (url, query) = match base.split_once('?') {
        Some((url, query)) => (url, format!("?{query}")),
        None => (base, String::new()),
    };
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let server = match url[authority_start..].find('/') {
        Some(slash) => &url[..authority_start + slash],
        None => url,
    };
    format!("{server}/{name}{query}")
}

/// Direct access to a test database (independent of the store's own queries).
pub enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Row counts of every table the service writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub accounts: i64,
    pub archive: i64,
    pub history: i64,
    pub idempotency_keys: i64,
    pub outbox: i64,
}

/// One outbox row, as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxRow {
    pub sequence: i64,
    pub event_type: i32,
    pub msisdn: String,
    pub account_id: String,
    pub generation: i64,
    pub from_state: i32,
    pub to_state: i32,
    pub reason: String,
    pub effective_at: DateTime<Utc>,
}

/// The balance-related columns of an account row, as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredAccount {
    pub state: i32,
    pub balance: i64,
    pub preset_balance: i64,
    pub generation: i64,
    pub valid_until: Option<NaiveDate>,
}

/// Every column of an accounts row as text: a before/after comparison of the whole row.
pub type RawRow = Vec<Option<String>>;

const RAW_ACCOUNT_SQL: &str = "SELECT CAST(msisdn AS TEXT), CAST(account_id AS TEXT), \
    CAST(generation AS TEXT), CAST(state AS TEXT), CAST(balance AS TEXT), \
    CAST(preset_balance AS TEXT), CAST(sold AS TEXT), CAST(initial_validity_days AS TEXT), \
    CAST(provisioned_at AS TEXT), CAST(activated_at AS TEXT), CAST(valid_until AS TEXT), \
    CAST(grace_until AS TEXT), CAST(lock_until AS TEXT), CAST(card_expiry AS TEXT), \
    CAST(recycled_at AS TEXT), CAST(updated_at AS TEXT), CAST(next_deadline AS TEXT) \
    FROM accounts WHERE msisdn = $1";

/// Runs the same sqlx call against whichever pool `db` holds.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

impl Db {
    /// Runs one statement (tests that arrange the database directly).
    pub async fn execute(&self, sql: &str) {
        let done: Result<_, sqlx::Error> = on_pool!(self, |pool| sqlx::query(sql)
            .execute(pool)
            .await
            .map(|_| ()));
        done.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The one `BIGINT` value a query returns.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let value: Result<i64, sqlx::Error> =
            on_pool!(self, |pool| sqlx::query_scalar(sql).fetch_one(pool).await);
        value.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let counted: Result<i64, sqlx::Error> =
            on_pool!(self, |pool| sqlx::query_scalar(&sql).fetch_one(pool).await);
        counted.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn counts(&self) -> Counts {
        Counts {
            accounts: self.count("accounts").await,
            archive: self.count("account_archive").await,
            history: self.count("account_history").await,
            idempotency_keys: self.count("idempotency_keys").await,
            outbox: self.count("outbox").await,
        }
    }

    /// The whole accounts row of `msisdn`, every column as text.
    pub async fn raw_account(&self, msisdn: &str) -> Option<RawRow> {
        let row = on_pool!(self, |pool| {
            sqlx::query(RAW_ACCOUNT_SQL)
                .bind(msisdn)
                .fetch_optional(pool)
                .await
                .map(|row| {
                    row.map(|row| {
                        use sqlx::Row;
                        (0..17)
                            .map(|i| row.get::<Option<String>, _>(i))
                            .collect::<RawRow>()
                    })
                })
        });
        row.expect("read the accounts row")
    }

    pub async fn account(&self, msisdn: &str) -> Option<StoredAccount> {
        let sql = "SELECT state, balance, preset_balance, generation, valid_until \
                   FROM accounts WHERE msisdn = $1";
        let row: Result<Option<StoredAccount>, sqlx::Error> = on_pool!(self, |pool| {
            sqlx::query_as(sql).bind(msisdn).fetch_optional(pool).await
        });
        row.expect("read the accounts row")
    }

    /// History rows of `msisdn` of one kind (the wire number of `HistoryKind`).
    pub async fn history_count(&self, msisdn: &str, kind: i32) -> i64 {
        let sql = "SELECT COUNT(*) FROM account_history WHERE msisdn = $1 AND kind = $2";
        let counted: Result<i64, sqlx::Error> = on_pool!(self, |pool| {
            sqlx::query_scalar(sql)
                .bind(msisdn)
                .bind(kind)
                .fetch_one(pool)
                .await
        });
        counted.expect("count history rows")
    }

    /// Every row `sql` (a query without parameters) returns, as `T`.
    pub async fn rows<T>(&self, sql: &str) -> Vec<T>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + Send
            + Unpin,
    {
        let rows: Result<Vec<T>, sqlx::Error> =
            on_pool!(self, |pool| sqlx::query_as(sql).fetch_all(pool).await);
        rows.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Checks the aggregates of migrations 0009 and 0010, written with the history rows, against
    /// the history rows themselves, counted with the migrations' own definitions: every row
    /// that moves an MSISDN or recharges it is in `history_totals` once; every stay in GRACE
    /// entered from VALID that ended is in `grace_ends` once, under its entry's quarter hour and
    /// by how it ended; every open one is marked in `generation_values`, and so are each
    /// generation's first lock and unlock. `what` names the
    /// test's writes in the messages; at least one row must count.
    pub async fn assert_totals_match_history(&self, what: &str) {
        let slot = |at: &str| match self {
            Db::Sqlite(_) => format!("CAST(strftime('%s', {at}) AS INTEGER) / 900 * 900"),
            Db::Postgres(_) => {
                format!("CAST(floor(extract(epoch FROM {at}) / 900) AS BIGINT) * 900")
            }
        };
        let recount: Vec<(i64, i64, i64, i64)> = self
            .rows(&format!(
                "SELECT {}, CAST(COALESCE(channel, 0) * 100000 + kind * 10000 \
                 + CASE WHEN generation > 1 THEN 1000 ELSE 0 END \
                 + CASE WHEN amount > 0 THEN 100 ELSE 0 END \
                 + COALESCE(from_state, 0) * 10 + COALESCE(to_state, 0) AS BIGINT), \
                 COUNT(*), CAST(SUM(amount) AS BIGINT) FROM account_history \
                 WHERE kind = 1 OR kind = 4 OR from_state <> to_state GROUP BY 1, 2 ORDER BY 1, 2",
                slot("at")
            ))
            .await;
        let totals: Vec<(i64, i64, i64, i64)> = self
            .rows(
                "SELECT slot, code, CAST(SUM(row_count) AS BIGINT), \
                 CAST(SUM(amount_total) AS BIGINT) FROM history_totals \
                 GROUP BY slot, code HAVING SUM(row_count) <> 0 ORDER BY slot, code",
            )
            .await;
        assert!(!recount.is_empty(), "{what}: no history row counts");
        assert_eq!(
            totals, recount,
            "{what}: history_totals against the history rows"
        );
        // Each VALID -> GRACE row and the kind of the next row of its generation leaving GRACE.
        let stays = "SELECT h.at AS at, (SELECT r.kind FROM account_history r \
             WHERE r.msisdn = h.msisdn AND r.generation = h.generation AND r.id > h.id \
             AND r.from_state = 3 ORDER BY r.id LIMIT 1) AS exit_kind FROM account_history h \
             WHERE h.kind = 7 AND h.from_state = 2 AND h.to_state = 3";
        let ended: Vec<(i64, i64, i64)> = self
            .rows(&format!(
                "SELECT {}, CAST(CASE WHEN s.exit_kind = 4 THEN 1 ELSE 2 END AS BIGINT), \
                 COUNT(*) FROM ({stays}) s WHERE s.exit_kind IS NOT NULL \
                 GROUP BY 1, 2 ORDER BY 1, 2",
                slot("s.at")
            ))
            .await;
        let ends: Vec<(i64, i64, i64)> = self
            .rows(
                "SELECT slot, CAST(ended AS BIGINT), CAST(SUM(stays) AS BIGINT) FROM grace_ends \
                 GROUP BY slot, ended HAVING SUM(stays) <> 0 ORDER BY slot, ended",
            )
            .await;
        assert_eq!(ends, ended, "{what}: grace_ends against the history rows");
        let open = self
            .scalar(&format!(
                "SELECT COUNT(*) FROM ({stays}) s WHERE s.exit_kind IS NULL"
            ))
            .await;
        let marked = self
            .scalar("SELECT COUNT(*) FROM generation_values WHERE grace_entered_at IS NOT NULL")
            .await;
        assert_eq!(marked, open, "{what}: the open stays in GRACE marked");
        // Each generation's first row to LOCKED or RECYCLED (not from UNACTIVATED) and whether
        // a row took it out of LOCKED again, against `generation_values` (migration 0010).
        let wrong = self
            .scalar(
                "SELECT COUNT(*) FROM generation_values v LEFT JOIN (\
                   SELECT msisdn, generation, \
                     MIN(CASE WHEN to_state IN (4, 5) THEN at END) AS first_out_at, \
                     MAX(CASE WHEN from_state = 4 AND to_state NOT IN (4, 5) THEN 1 ELSE 0 END) \
                       AS unlocked \
                   FROM account_history WHERE (to_state IN (4, 5) OR from_state = 4) \
                   AND from_state <> 1 GROUP BY msisdn, generation\
                 ) o ON o.msisdn = v.msisdn AND o.generation = v.generation \
                 WHERE NOT ((v.first_out_at = o.first_out_at \
                   OR (v.first_out_at IS NULL AND o.first_out_at IS NULL)) \
                   AND v.unlocked = COALESCE(o.unlocked, 0))",
            )
            .await;
        assert_eq!(
            wrong, 0,
            "{what}: generations whose first_out_at or unlocked is wrong"
        );
    }

    pub async fn outbox(&self) -> Vec<OutboxRow> {
        let sql = "SELECT sequence, event_type, msisdn, account_id, generation, from_state, \
                   to_state, reason, effective_at FROM outbox ORDER BY sequence";
        let rows: Result<Vec<OutboxRow>, sqlx::Error> =
            on_pool!(self, |pool| sqlx::query_as(sql).fetch_all(pool).await);
        rows.expect("read the outbox")
    }

    /// Counts and the account row: what "a rejected request changes nothing" compares.
    pub async fn snapshot(&self, msisdn: &str) -> (Counts, Option<RawRow>) {
        (self.counts().await, self.raw_account(msisdn).await)
    }

    pub async fn close(self) {
        on_pool!(self, |pool| pool.close().await)
    }
}

/// The configuration of a test server: `clock`, a small pool, the operations endpoint on an
/// ephemeral port (never the fixed default), and no scheduler, so the clock moves without
/// sweeping and a test sees exactly the sweeps it asks for (`AdvanceStates`). Scheduler tests
/// turn `sweep.scheduler` back on.
pub fn test_config(clock: ClockMode) -> Config {
    let mut config = Config {
        clock,
        db_pool_size: 4,
        shutdown_timeout_secs: 10,
        http_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Config::default()
    };
    config.sweep.scheduler = false;
    // `OCS_GROUP_COMMIT_WRITERS=N cargo test` runs every suite's PostgreSQL servers with N group
    // commit writers: the in-process ones through this, the `serve` processes through the
    // inherited variable.
    if let Some(writers) = std::env::var("OCS_GROUP_COMMIT_WRITERS")
        .ok()
        .and_then(|w| w.parse().ok())
    {
        config.group_commit_writers = Some(writers);
    }
    config
}

/// [`test_config`] (manual clock) with one group commit writer that waits (up to a 10 s safety
/// bound) until `at_once` mutations are queued: requests sent together commit together,
/// whatever the machine's speed.
pub fn one_writer_waiting_for(at_once: usize) -> Config {
    let mut config = test_config(ClockMode::Manual);
    config.group_commit_writers = Some(1);
    config.group_commit_max = at_once;
    config.group_commit_wait_us = 10_000_000;
    config
}

/// `config` with bearer tokens, each `(token, configured name, role)` (stored as its hash).
pub fn with_tokens(mut config: Config, tokens: &[(&str, &str, Role)]) -> Config {
    config.auth.tokens = tokens
        .iter()
        .map(|(token, name, role)| TokenEntry {
            name: (*name).into(),
            role: *role,
            sha256: token_sha256(token),
        })
        .collect();
    config
}

/// A server running in-process on 127.0.0.1:<ephemeral>.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The operations endpoint (`/metrics`, `/healthz`, `/readyz`); `None` when
    /// `http_addr` is off.
    pub http_addr: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub handle: Option<JoinHandle<Result<(), ocs_lifecycle::server::ServeError>>>,
    pub database_url: String,
    pub db: Arc<TestDb>,
    channel: Channel,
}

impl TestServer {
    /// A server with the manual clock on a fresh database of `backend`; `None` = skipped.
    pub async fn start(backend: Backend) -> Option<TestServer> {
        let db = TestDb::create(backend).await?;
        Some(Self::start_on(db, ClockMode::Manual).await)
    }

    /// A server on an existing test database (a restart, or a second server).
    pub async fn start_on(db: Arc<TestDb>, clock: ClockMode) -> TestServer {
        Self::start_with(db, test_config(clock)).await
    }

    /// A server with `config` (its `database_url` is replaced by the test database's).
    pub async fn start_with(db: Arc<TestDb>, config: Config) -> TestServer {
        Self::start_with_channel(db, config, plaintext).await
    }

    /// A server with `config` as it is, its `database_url` included: `db`'s database reached
    /// another way (through a proxy, say).
    pub async fn start_through(db: Arc<TestDb>, config: Config) -> TestServer {
        Self::launch(db, config, plaintext).await
    }

    /// A server with `config` whose clients use the channel `connect` makes for its address
    /// (e.g. TLS); start-up waits until health answers SERVING over it.
    pub async fn start_with_channel(
        db: Arc<TestDb>,
        mut config: Config,
        connect: impl FnOnce(SocketAddr) -> Channel,
    ) -> TestServer {
        config.database_url = db.url.clone();
        Self::launch(db, config, connect).await
    }

    async fn launch(
        db: Arc<TestDb>,
        config: Config,
        connect: impl FnOnce(SocketAddr) -> Channel,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local address");
        // Bound here, so the test knows the port of `127.0.0.1:0`.
        let http = match config.http_addr {
            Some(http_addr) => Some(
                tokio::net::TcpListener::bind(http_addr)
                    .await
                    .expect("bind the operations endpoint"),
            ),
            None => None,
        };
        let http_addr = http
            .as_ref()
            .map(|l| l.local_addr().expect("operations address"));
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(ocs_lifecycle::server::serve_with_listeners(
            config,
            listener,
            http,
            shutdown.clone(),
        ));
        let channel = connect(addr);
        let mut server = TestServer {
            addr,
            http_addr,
            shutdown,
            handle: Some(handle),
            database_url: db.url.clone(),
            db,
            channel,
        };
        server.wait_until_serving().await;
        server
    }

    async fn wait_until_serving(&mut self) {
        let deadline = tokio::time::Instant::now() + SAFETY;
        while process::health_status(&self.channel).await != Some(ServingStatus::Serving as i32) {
            if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
                let handle = self.handle.take().expect("handle");
                panic!("the server stopped during start-up: {:?}", handle.await);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never became SERVING"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn accounts(&self) -> AccountLifecycleClient<Channel> {
        AccountLifecycleClient::new(self.channel.clone())
    }

    /// A client on a connection of its own (for concurrent callers).
    pub async fn new_accounts_client(&self) -> AccountLifecycleClient<Channel> {
        AccountLifecycleClient::new(self.new_channel().await)
    }

    /// A connection of its own to the server.
    pub async fn new_channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    /// The server's channel (shared by `accounts()`, `clock()` and `health()`).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn clock(&self) -> TestClockClient<Channel> {
        TestClockClient::new(self.channel.clone())
    }

    /// `http://<operations endpoint><path>`; panics when `http_addr` is off.
    pub fn http_url(&self, path: &str) -> String {
        let addr = self.http_addr.expect("the operations endpoint is on");
        format!("http://{addr}{path}")
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// Waits (at most [`SAFETY`]) until the server says on `/metrics` that Authorize answers
    /// from its facts cache (`ocs_authorize_cache_enabled 1`); on PostgreSQL it is off until
    /// the server listens for the changes of other servers.
    pub async fn authorize_cache_on(&self) {
        let start = std::time::Instant::now();
        loop {
            let body = self.metrics_text().await;
            if body.lines().any(|l| l == "ocs_authorize_cache_enabled 1") {
                return;
            }
            assert!(
                start.elapsed() < SAFETY,
                "the Authorize cache never came on"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A scrape of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let url = self.http_url("/metrics");
        reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of the metric `name` (a line `name value`) in a scrape of `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the scrape:\n{text}"))
    }

    /// Direct access to this server's database.
    pub async fn db(&self) -> Db {
        self.db.open().await
    }

    /// Sets the manual clock.
    pub async fn set_time(&self, rfc3339: &str) {
        self.clock()
            .set_time(ocs_lifecycle::proto::SetTimeRequest {
                time: Some(ts(rfc3339)),
            })
            .await
            .unwrap_or_else(|e| panic!("SetTime {rfc3339}: {e:?}"));
    }

    /// Cancels the server and waits until it has stopped; the database stays.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let finished = tokio::time::timeout(SAFETY, handle)
                .await
                .expect("the server did not stop in time");
            finished.expect("server task").expect("server result");
        }
    }
}

/// A plaintext channel to `addr`, connected on first use.
fn plaintext(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy()
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A timestamp from RFC 3339 text.
pub fn ts(rfc3339: &str) -> prost_types::Timestamp {
    let at = DateTime::parse_from_rfc3339(rfc3339)
        .expect("RFC 3339 instant")
        .with_timezone(&Utc);
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// The `google.rpc.ErrorInfo.reason` of an error, or "" when it carries none.
pub fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// Asserts that `result` failed with `code` and (when not empty) ErrorInfo `expected_reason`.
#[track_caller]
pub fn assert_rejected<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    expected_reason: &str,
) -> Status {
    assert_case_rejected("", result, code, expected_reason)
}

/// [`assert_rejected`] for one case of a table: `case` (what was sent) heads each failure
/// message.
#[track_caller]
pub fn assert_case_rejected<T: std::fmt::Debug>(
    case: &str,
    result: Result<T, Status>,
    code: Code,
    expected_reason: &str,
) -> Status {
    let case = if case.is_empty() {
        String::new()
    } else {
        format!("{case}: ")
    };
    let status = match result {
        Ok(value) => panic!("{case}expected {code:?} {expected_reason}, got Ok({value:?})"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{case}unexpected status: {status:?}");
    if !expected_reason.is_empty() {
        assert_eq!(
            reason(&status),
            expected_reason,
            "{case}unexpected ErrorInfo: {status:?}"
        );
    }
    // (UNIMPLEMENTED comes from the transport for a service that is not registered.)
    if code != Code::Unimplemented {
        assert!(
            !status.message().is_empty(),
            "{case}an error needs a message a person understands"
        );
    }
    status
}

/// Runs `body` with a fresh manual-clock server on a fresh database of `backend`; skipped when
/// PostgreSQL is unreachable (see [`TestDb::create`]).
pub async fn on_server<F: Future<Output = ()>>(
    backend: Backend,
    body: impl FnOnce(TestServer) -> F,
) {
    if let Some(server) = TestServer::start(backend).await {
        body(server).await;
    }
}

/// Runs `body` on a fresh database of `backend`; skipped when PostgreSQL is unreachable.
pub async fn on_database<F: Future<Output = ()>>(
    backend: Backend,
    body: impl FnOnce(Arc<TestDb>) -> F,
) {
    if let Some(db) = TestDb::create(backend).await {
        body(db).await;
    }
}

/// A module `$module` of tests, one per body `$name`, each run on `$backend` by `$run`
/// ([`on_server`] or [`on_database`]).
#[allow(unused_macros)] // through both_backends! and both_databases!, which not all suites use
macro_rules! tests_on_backend {
    ($module:ident, $backend:ident, $run:path: $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $run($crate::common::Backend::$backend, super::$name).await;
                }
            )*
        }
    };
}

/// Runs each named test body on SQLite and on PostgreSQL (the conformance suite):
///
/// ```ignore
/// both_backends! {
///     a_rule_of_the_operator,
/// }
///
/// async fn a_rule_of_the_operator(server: TestServer) { ... }
/// ```
///
/// generates `sqlite::a_rule_of_the_operator` and `postgres::a_rule_of_the_operator`, each
/// calling the body with a fresh manual-clock server on a fresh database of its backend. (A
/// body left out of the list is dead code, which `clippy -D warnings` refuses.)
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        tests_on_backend!(sqlite, Sqlite, $crate::common::on_server: $($name),*);
        tests_on_backend!(postgres, Postgres, $crate::common::on_server: $($name),*);
    };
}

/// Runs each body `async fn name(db: Arc<TestDb>)` on a fresh SQLite and a fresh PostgreSQL
/// database (for tests that start their own servers), in the modules named first:
/// `both_databases! { sqlite, postgres: test_a, test_b }`.
#[allow(unused_macros)] // used by the suites that start their own servers, not by all
macro_rules! both_databases {
    ($sqlite:ident, $postgres:ident: $($name:ident),* $(,)?) => {
        tests_on_backend!($sqlite, Sqlite, $crate::common::on_database: $($name),*);
        tests_on_backend!($postgres, Postgres, $crate::common::on_database: $($name),*);
    };
}

/// Every method of the `AccountLifecycle` service.
pub const ACCOUNT_LIFECYCLE_METHODS: [&str; 11] = [
    "ProvisionAccount",
    "MarkSold",
    "Activate",
    "Recharge",
    "Charge",
    "Unlock",
    "GetAccount",
    "ListAccounts",
    "GetAccountHistory",
    "Authorize",
    "AdvanceStates",
];

/// A fresh idempotency key.
pub fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Provisions a sold card (`initial_validity_days` 0 = the configured default).
pub async fn provision(
    api: &mut AccountLifecycleClient<Channel>,
    msisdn: &str,
    initial_validity_days: u32,
) {
    api.provision_account(ocs_lifecycle::proto::ProvisionAccountRequest {
        msisdn: msisdn.into(),
        sold: true,
        initial_validity_days,
        request_id: rid(),
        ..Default::default()
    })
    .await
    .expect("ProvisionAccount");
}

pub async fn activate(api: &mut AccountLifecycleClient<Channel>, msisdn: &str) {
    api.activate(ocs_lifecycle::proto::ActivateRequest {
        msisdn: msisdn.into(),
        request_id: rid(),
    })
    .await
    .expect("Activate");
}

/// A connection of its own to the PostgreSQL database `url`, inside a transaction (`BEGIN`):
/// for a test that holds locks while the code under test runs.
pub async fn pg_transaction(url: &str) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}"));
    sqlx::query("BEGIN")
        .execute(&mut conn)
        .await
        .expect("BEGIN");
    conn
}
