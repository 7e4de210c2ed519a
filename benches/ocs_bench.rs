//! `ocs-bench`: throughput of the real gRPC service against a baseline measured in the same run.
//!
//! ```text
//! cargo run --release --bin ocs-bench -- all --backend sqlite
//! cargo run --release --bin ocs-bench -- all --backend postgres --json
//! ```
//!
//! - recharge: 32 gRPC clients recharge random accounts; the baseline issues the same SQL
//!   statements a recharge runs (idempotency lookup, row read, account update, history insert,
//!   idempotency insert, in one write transaction) directly through sqlx, at the same
//!   concurrency, on the same backend with the same durability settings.
//! - authorize: 32 gRPC clients; the baseline is the same point read through sqlx.
//! - overload: a flood of Recharge calls at several times `grpc.max_concurrent_requests`; the
//!   baseline is the same flood against the server without a limit (benches/overload_bench.rs).
//! - analytics: every lifecycle report on 1M accounts and ~10M history rows; the baseline is the
//!   plain SQL aggregate closest to each report's work (benches/analytics_bench.rs).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use sqlx::Connection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use ocs_lifecycle::config::{ClockMode, Config};

#[path = "analytics_bench.rs"]
mod analytics_bench;
#[path = "overload_bench.rs"]
mod overload_bench;
#[path = "soak.rs"]
mod soak;
#[path = "sweep_bench.rs"]
mod sweep_bench;
#[path = "webhook_bench.rs"]
mod webhook_bench;
use ocs_lifecycle::proto;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    All,
    Recharge,
    Authorize,
    Sweep,
    Webhook,
    /// A flood of Recharge calls at `--overload-factor` × `--overload-limit` concurrent
    /// callers, against the limit and without it (benches/overload_bench.rs).
    Overload,
    /// A real `serve` process under steady mixed traffic with faults, then a consistency
    /// check (benches/soak.rs); not part of `all`.
    Soak,
    /// Every lifecycle report on `--analytics-accounts` accounts and ~10 history rows each,
    /// beside the closest plain SQL aggregate (benches/analytics_bench.rs); not part of `all`.
    Analytics,
}

#[derive(Parser, Debug)]
#[command(about = "ocs-lifecycle benchmarks with same-run baselines")]
struct Args {
    #[arg(value_enum, default_value = "all")]
    which: Which,
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// Accounts provisioned and activated before measuring.
    #[arg(long, default_value_t = 10_000)]
    accounts: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds each measurement runs in each round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds; each runs the baseline then the service, so drift of the machine hits both.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// PostgreSQL server (a fresh database is created on it for the run).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Accounts of the sweep benchmark (a tenth of them due).
    #[arg(long, default_value_t = 1_000_000)]
    sweep_accounts: u64,
    /// Accounts of the webhook benchmark (a tenth of them due; every event of the sweep is
    /// delivered).
    #[arg(long, default_value_t = 200_000)]
    webhook_accounts: u64,
    /// Accounts per sweep transaction.
    #[arg(long, default_value_t = 1000)]
    batch_size: u32,
    /// `authorize_cache_ms` of the server under test (default: the service's own).
    #[arg(long, default_value_t = Config::default().authorize_cache_ms)]
    authorize_cache_ms: u64,
    /// `group_commit_max` of the server under test.
    #[arg(long, default_value_t = Config::default().group_commit_max)]
    group_commit_max: usize,
    /// `group_commit_wait_us` of the server under test.
    #[arg(long, default_value_t = Config::default().group_commit_wait_us)]
    group_commit_wait_us: u64,
    /// `group_commit_writers` of the server under test (PostgreSQL; below --clients, the
    /// server's pool size; default: the server's choice, 4 at 16 clients or more).
    #[arg(long)]
    group_commit_writers: Option<usize>,
    /// Overload: the server's `grpc.max_concurrent_requests`.
    #[arg(long, default_value_t = 32)]
    overload_limit: u32,
    /// Overload: concurrent callers of the flood, as a multiple of `--overload-limit`.
    #[arg(long, default_value_t = 8)]
    overload_factor: u32,
    /// Soak: traffic time (`600`, `600s`, `10m`).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Soak: operations per second (open loop).
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Soak: SIGKILL + restarts of the server.
    #[arg(long, default_value_t = 3)]
    kills: u32,
    /// Analytics: accounts simulated (about 10 history rows each).
    #[arg(long, default_value_t = 1_000_000)]
    analytics_accounts: u32,
    /// Analytics: calls of each report (and runs of its baseline); the median is reported.
    #[arg(long, default_value_t = 3)]
    analytics_reps: u32,
    /// Analytics: keep the database afterwards (its URL is printed), e.g. to EXPLAIN queries;
    /// drop or delete it by hand.
    #[arg(long)]
    analytics_keep: bool,
    /// Analytics: measure on this database, loaded by an earlier `--analytics-keep` run,
    /// instead of generating one (kept afterwards).
    #[arg(long)]
    analytics_url: Option<String>,
    /// Print one JSON document instead of tables: the backend, the machine and a section per
    /// measurement run (`recharge`, `authorize`, `sweep`, `webhook`, `overload`), each with its rate
    /// (`per_s`), its same-run `baseline` (`name`, `per_s`) and the `ratio` of the two.
    #[arg(long)]
    json: bool,
}

#[derive(Debug)]
struct Measured {
    name: &'static str,
    seconds: f64,
    /// Latency of every operation, in µs.
    latencies: Vec<u64>,
}

impl Measured {
    fn empty() -> Self {
        Self {
            name: "",
            seconds: 0.0,
            latencies: Vec::new(),
        }
    }

    /// Adds a round.
    fn add(&mut self, round: Measured) {
        self.name = round.name;
        self.seconds += round.seconds;
        self.latencies.extend(round.latencies);
        self.latencies.sort_unstable();
    }

    fn ops(&self) -> u64 {
        self.latencies.len() as u64
    }

    fn rate(&self) -> f64 {
        self.ops() as f64 / self.seconds
    }

    fn percentile_us(&self, p: f64) -> u64 {
        let last = self.latencies.len().saturating_sub(1);
        let at = ((self.latencies.len() as f64 * p) as usize).min(last);
        self.latencies.get(at).copied().unwrap_or(0)
    }

    /// Its section of the JSON document: name, rate, operations and latencies.
    fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "per_s": self.rate().round(),
            "ops": self.ops(),
            "p50_us": self.percentile_us(0.5),
            "p99_us": self.percentile_us(0.99),
        })
    }
}

/// Runs `op` from `clients` tasks for `duration`; returns throughput and latency percentiles.
async fn measure<F, Fut>(name: &'static str, clients: usize, duration: Duration, op: F) -> Measured
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (seconds, answers) = measure_answers(clients, duration, op).await;
    Measured {
        name,
        seconds,
        latencies: answers.into_iter().map(|((), us)| us).collect(),
    }
}

/// Runs `op` from `clients` tasks for `duration`, each call sent as soon as the task's previous
/// one is answered; returns the seconds taken and each call's answer (what `op` made of it)
/// with its latency in µs.
async fn measure_answers<F, Fut, A>(
    clients: usize,
    duration: Duration,
    op: F,
) -> (f64, Vec<(A, u64)>)
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = A> + Send,
    A: Send + 'static,
{
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let op = op.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let answer = op(n).await;
                answers.push((answer, t.elapsed().as_micros() as u64));
            }
            answers
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("bench task"));
    }
    (started.elapsed().as_secs_f64(), all)
}

fn msisdn(i: u64) -> String {
    format!("86139{:08}", i)
}

/// A small deterministic generator, so runs pick the same sequence of accounts.
fn pick(n: u64, accounts: u32) -> u64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x % u64::from(accounts)
}

async fn database_url(args: &Args, dir: &std::path::Path) -> String {
    match args.backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("bench.db").display()),
        Backend::Postgres => {
            let name = format!("ocs_bench_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&args.postgres_url)
                .await
                .expect("PostgreSQL reachable");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create bench database");
            let base = args
                .postgres_url
                .rsplit_once('/')
                .map_or(args.postgres_url.as_str(), |(b, _)| b);
            format!("{base}/{name}")
        }
    }
}

/// A temporary directory and a fresh database of the run's backend (a file in it, or a new
/// PostgreSQL database): the directory and the database URL.
async fn fresh_database(args: &Args) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("ocs-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let url = database_url(args, &dir).await;
    (dir, url)
}

/// Removes what [`fresh_database`] made.
async fn remove_database(args: &Args, dir: &std::path::Path, url: &str) {
    let _ = std::fs::remove_dir_all(dir);
    if args.backend == Backend::Postgres {
        drop_database(&args.postgres_url, url).await;
    }
}

/// Drops the run's PostgreSQL database, so repeated runs leave nothing behind.
async fn drop_database(admin_url: &str, url: &str) {
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin_url).await {
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        if let Err(e) = sqlx::query(&drop).execute(&mut conn).await {
            eprintln!("could not drop bench database {name}: {e}");
        }
    }
}

async fn client(addr: std::net::SocketAddr) -> AccountLifecycleClient<Channel> {
    for _ in 0..100 {
        if let Ok(c) = AccountLifecycleClient::connect(format!("http://{addr}")).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not come up at {addr}");
}

async fn provision(clients: &[AccountLifecycleClient<Channel>], accounts: u32) {
    eprintln!("setting up {accounts} accounts …");
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in clients.iter().cloned() {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = c;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= u64::from(accounts) {
                    break;
                }
                let m = msisdn(i);
                // Retries are idempotent: a repeated setup run applies nothing twice.
                c.provision_account(proto::ProvisionAccountRequest {
                    msisdn: m.clone(),
                    sold: true,
                    request_id: format!("setup-p-{i}"),
                    ..Default::default()
                })
                .await
                .expect("provision");
                c.activate(proto::ActivateRequest {
                    msisdn: m,
                    request_id: format!("setup-a-{i}"),
                })
                .await
                .expect("activate");
            }
        }));
    }
    for t in tasks {
        t.await.expect("setup task");
    }
}

macro_rules! raw_recharge_body {
    ($tx:ident, $m:expr, $key:expr) => {
        raw_recharge_body!($tx, $m, $key, "")
    };
    ($tx:ident, $m:expr, $key:expr, $lock:expr) => {{
        let seen: Option<(String,)> =
            sqlx::query_as("SELECT fingerprint FROM idempotency_keys WHERE request_id = $1")
                .bind($key)
                .fetch_optional(&mut *$tx)
                .await
                .expect("idempotency lookup");
        assert!(seen.is_none());
        let sql = format!(
            "SELECT account_id, generation, balance, valid_until FROM accounts WHERE msisdn = $1{}",
            $lock
        );
        let (account_id, generation, balance, valid_until): (
            String,
            i64,
            i64,
            Option<chrono::NaiveDate>,
        ) = sqlx::query_as(&sql)
            .bind($m)
            .fetch_one(&mut *$tx)
            .await
            .expect("account");
        let now = chrono::Utc::now();
        let valid_until = valid_until.map(|d| d + chrono::Days::new(30));
        let grace = valid_until.map(|d| d + chrono::Days::new(90));
        let lock = valid_until.map(|d| d + chrono::Days::new(120));
        sqlx::query(
            "UPDATE accounts SET account_id = $2, generation = $3, state = $4, \
             balance = $5, preset_balance = $6, sold = $7, initial_validity_days = $8, \
             provisioned_at = $9, activated_at = $10, valid_until = $11, \
             grace_until = $12, lock_until = $13, card_expiry = $14, recycled_at = $15, \
             updated_at = $16, next_deadline = $17 WHERE msisdn = $1",
        )
        .bind($m)
        .bind(&account_id)
        .bind(generation)
        .bind(2_i32)
        .bind(balance + 1000)
        .bind(0_i64)
        .bind(true)
        .bind(180_i32)
        .bind(now)
        .bind(Some(now))
        .bind(valid_until)
        .bind(grace)
        .bind(lock)
        .bind(None::<chrono::NaiveDate>)
        .bind(None::<chrono::DateTime<chrono::Utc>>)
        .bind(now)
        .bind(Some(now.timestamp() + 86_400))
        .execute(&mut *$tx)
        .await
        .expect("update");
        sqlx::query(
            "INSERT INTO account_history (msisdn, account_id, generation, at, kind, \
             from_state, to_state, amount, actor, request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind($m)
        .bind(&account_id)
        .bind(generation)
        .bind(now)
        .bind(4_i32)
        .bind(Some(2_i32))
        .bind(Some(2_i32))
        .bind(1000_i64)
        .bind("bench")
        .bind(Some($key))
        .execute(&mut *$tx)
        .await
        .expect("history");
        // A response of the size the API stores (an encoded RechargeResult is ~150 bytes).
        sqlx::query(
            "INSERT INTO idempotency_keys (request_id, fingerprint, response, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind($key)
        .bind(format!("Recharge|{}|1000|4|0", $m))
        .bind(vec![0_u8; 150])
        .bind(now)
        .execute(&mut *$tx)
        .await
        .expect("idempotency insert");
    }};
}

/// The statements one recharge runs, issued directly: the baseline the API is compared with.
async fn raw_recharge_sqlite(pool: &sqlx::SqlitePool, m: &str, key: &str) {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
    raw_recharge_body!(tx, m, key);
    tx.commit().await.expect("commit");
}

async fn raw_recharge_postgres(pool: &sqlx::PgPool, m: &str, key: &str) {
    let mut tx = pool.begin().await.expect("begin");
    raw_recharge_body!(tx, m, key, " FOR UPDATE");
    tx.commit().await.expect("commit");
}

/// The `n`th recharge of a run: 1000 on a random account of the first `accounts`.
fn recharge_request(n: u64, accounts: u32, request_id: String) -> proto::RechargeRequest {
    proto::RechargeRequest {
        msisdn: msisdn(pick(n, accounts)),
        amount: 1000,
        channel: proto::RechargeChannel::Online as i32,
        validity_days: 0,
        request_id,
    }
}

async fn grpc_recharge(
    args: &Args,
    clients: &[AccountLifecycleClient<Channel>],
    round: u32,
) -> Measured {
    let accounts = args.accounts;
    let clients: Arc<Vec<_>> = Arc::new(clients.to_vec());
    measure(
        "recharge gRPC",
        args.clients,
        Duration::from_secs(args.seconds),
        move |n| {
            let mut c = clients[n as usize % clients.len()].clone();
            async move {
                c.recharge(recharge_request(
                    n,
                    accounts,
                    format!("bench-g-{round}-{n}"),
                ))
                .await
                .expect("recharge");
            }
        },
    )
    .await
}

async fn grpc_health(args: &Args, addr: std::net::SocketAddr) -> Measured {
    let mut clients = Vec::new();
    for _ in 0..args.clients.div_ceil(4) {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        clients.push(tonic_health::pb::health_client::HealthClient::new(channel));
    }
    let clients = Arc::new(clients);
    measure(
        "gRPC floor (health Check)",
        args.clients,
        Duration::from_secs(args.seconds),
        move |n| {
            let mut c = clients[n as usize % clients.len()].clone();
            async move {
                c.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("health");
            }
        },
    )
    .await
}

async fn grpc_authorize(args: &Args, clients: &[AccountLifecycleClient<Channel>]) -> Measured {
    let accounts = args.accounts;
    let clients: Arc<Vec<_>> = Arc::new(clients.to_vec());
    measure(
        "authorize gRPC",
        args.clients,
        Duration::from_secs(args.seconds),
        move |n| {
            let mut c = clients[n as usize % clients.len()].clone();
            async move {
                let r = c
                    .authorize(proto::AuthorizeRequest {
                        msisdn: msisdn(pick(n, accounts)),
                        service: proto::ServiceType::VoiceOut as i32,
                        destination: "8613800000000".into(),
                    })
                    .await
                    .expect("authorize");
                assert!(r.get_ref().allowed || !r.get_ref().reason.is_empty());
            }
        },
    )
    .await
}

enum RawPool {
    Sqlite {
        writer: sqlx::SqlitePool,
        readers: sqlx::SqlitePool,
    },
    Postgres(sqlx::PgPool),
}

async fn raw_pool(backend: Backend, url: &str, pool_size: u32) -> RawPool {
    match backend {
        Backend::Sqlite => {
            // The same settings as the service's store: WAL, synchronous FULL, one writer.
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .expect("sqlite url")
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            let writer = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await
                .expect("sqlite writer");
            let readers = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(pool_size)
                .connect_with(options.read_only(true))
                .await
                .expect("sqlite readers");
            RawPool::Sqlite { writer, readers }
        }
        Backend::Postgres => RawPool::Postgres(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(pool_size)
                .connect(url)
                .await
                .expect("postgres pool"),
        ),
    }
}

async fn raw_recharge(args: &Args, pool: Arc<RawPool>, round: u32) -> Measured {
    let accounts = args.accounts;
    measure(
        "recharge raw SQL",
        args.clients,
        Duration::from_secs(args.seconds),
        move |n| {
            let pool = pool.clone();
            async move {
                let m = msisdn(pick(n, accounts));
                let key = format!("bench-r-{round}-{n}");
                match &*pool {
                    RawPool::Sqlite { writer, .. } => raw_recharge_sqlite(writer, &m, &key).await,
                    RawPool::Postgres(p) => raw_recharge_postgres(p, &m, &key).await,
                }
            }
        },
    )
    .await
}

async fn raw_authorize(args: &Args, pool: Arc<RawPool>) -> Measured {
    let accounts = args.accounts;
    measure(
        "authorize raw SQL",
        args.clients,
        Duration::from_secs(args.seconds),
        move |n| {
            let pool = pool.clone();
            async move {
                let m = msisdn(pick(n, accounts));
                let sql = "SELECT msisdn, account_id, generation, state, balance, preset_balance, \
                       sold, initial_validity_days, provisioned_at, activated_at, valid_until, \
                       grace_until, lock_until, card_expiry, recycled_at, updated_at, \
                       next_deadline FROM accounts WHERE msisdn = $1";
                let found = match &*pool {
                    RawPool::Sqlite { readers, .. } => sqlx::query(sql)
                        .bind(&m)
                        .fetch_optional(readers)
                        .await
                        .expect("read")
                        .is_some(),
                    RawPool::Postgres(p) => sqlx::query(sql)
                        .bind(&m)
                        .fetch_optional(p)
                        .await
                        .expect("read")
                        .is_some(),
                };
                assert!(found);
            }
        },
    )
    .await
}

fn main() {
    let args = Args::parse();
    if let Ok(url) = std::env::var(sweep_bench::SERVER_CHILD_ENV) {
        return sweep_bench::server_child(url, args.batch_size);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(args));
}

/// Runs the chosen measurements; each prints its table, or with `--json` the run prints one
/// JSON document with a section per measurement.
async fn run(args: Args) {
    if args.which == Which::Soak {
        run_soak(&args).await;
        return;
    }
    let mut report = serde_json::Map::new();
    report.insert("backend".into(), format!("{:?}", args.backend).into());
    report.insert("machine".into(), machine().into());
    if matches!(args.which, Which::All | Which::Recharge | Which::Authorize) {
        report.extend(run_rpc(&args).await);
    }
    if matches!(args.which, Which::All | Which::Sweep) {
        report.insert("sweep".into(), run_sweep(&args).await);
    }
    if matches!(args.which, Which::All | Which::Webhook) {
        report.insert("webhook".into(), run_webhook(&args).await);
    }
    if matches!(args.which, Which::All | Which::Overload) {
        report.insert("overload".into(), overload_bench::run(&args).await);
    }
    if args.which == Which::Analytics {
        report.insert("analytics".into(), analytics_bench::run(&args).await);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("JSON report")
        );
    }
}

async fn run_webhook(args: &Args) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("ocs-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let rules = Config::default().rules().expect("default rules");
    let url = match args.backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("webhook.db").display()),
        Backend::Postgres => database_url(args, &dir).await,
    };
    let f = webhook_bench::run(&url, args.webhook_accounts, chrono::Utc::now(), &rules).await;
    if args.backend == Backend::Postgres {
        drop_database(&args.postgres_url, &url).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (baseline_rate, service_rate) = (
        f.events as f64 / f.baseline_s,
        f.events as f64 / f.service_s,
    );
    let ratio = service_rate / baseline_rate;
    if !args.json {
        println!(
            "webhook, backend {:?}: {} events to a local listener; {}",
            args.backend,
            f.events,
            machine()
        );
        println!("| measurement | value |");
        println!("|---|---:|");
        println!(
            "| direct POSTs, 64 at a time (baseline) | {:.0} events/s ({:.2} s) |",
            baseline_rate, f.baseline_s
        );
        println!(
            "| delivery worker (register, claim, POST, record) | {:.0} events/s ({:.2} s) |",
            service_rate, f.service_s
        );
        println!("| worker ÷ baseline | {ratio:.2} |");
        println!(
            "| sweep commit → listener, {} events: p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
            f.latency_events, f.p50_ms, f.p99_ms, f.max_ms
        );
    }
    serde_json::json!({
        "per_s": service_rate.round(),
        "baseline": {
            "name": "direct POSTs, 64 at a time",
            "per_s": baseline_rate.round(),
        },
        "ratio": ratio,
        "events": f.events,
        "latency_events": f.latency_events,
        "latency_p50_ms": f.p50_ms,
        "latency_p99_ms": f.p99_ms,
        "latency_max_ms": f.max_ms,
    })
}

/// The configuration of the server under test on the database at `url`.
fn server_config(args: &Args, url: &str) -> Config {
    Config {
        database_url: url.to_owned(),
        clock: ClockMode::System,
        db_pool_size: args.clients as u32,
        http_addr: None,
        authorize_cache_ms: args.authorize_cache_ms,
        group_commit_max: args.group_commit_max,
        group_commit_wait_us: args.group_commit_wait_us,
        group_commit_writers: args.group_commit_writers,
        ..Config::default()
    }
}

/// The real server in-process on port 0, with clients for `callers` concurrent callers.
struct ServerUnderTest {
    addr: std::net::SocketAddr,
    clients: Vec<AccountLifecycleClient<Channel>>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), ocs_lifecycle::server::ServeError>>,
}

impl ServerUnderTest {
    /// Starts the server and returns once it answers (its migrations ran).
    async fn start(config: Config, callers: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(ocs_lifecycle::server::serve_on(
            config,
            listener,
            shutdown.clone(),
        ));
        // One HTTP/2 connection per 4 callers, as a billing front end would hold a few channels.
        let mut clients = Vec::new();
        for _ in 0..callers.div_ceil(4) {
            clients.push(client(addr).await);
        }
        // Requests before the migrations ran are UNAVAILABLE.
        let mut probe = clients[0].clone();
        while probe
            .get_account(proto::GetAccountRequest { msisdn: msisdn(0) })
            .await
            .is_err_and(|s| s.code() == tonic::Code::Unavailable)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            addr,
            clients,
            shutdown,
            server,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}

/// The recharge and authorize measurements against the in-process server: their sections of
/// the JSON document.
async fn run_rpc(args: &Args) -> serde_json::Map<String, serde_json::Value> {
    let (dir, url) = fresh_database(args).await;
    let server = ServerUnderTest::start(server_config(args, &url), args.clients).await;
    let (addr, clients) = (server.addr, server.clients.clone());
    provision(&clients, args.accounts).await;
    let pool = Arc::new(raw_pool(args.backend, &url, args.clients as u32).await);

    // (section, service, baseline, goal: the ratio or the rate to reach)
    let mut pairs = Vec::new();
    let mut floors = Vec::new();
    if matches!(args.which, Which::All | Which::Recharge) {
        let (mut service, mut baseline) = (Measured::empty(), Measured::empty());
        for round in 0..args.rounds {
            baseline.add(raw_recharge(args, pool.clone(), round).await);
            service.add(grpc_recharge(args, &clients, round).await);
        }
        pairs.push(("recharge", service, baseline, ("goal_ratio", 0.8)));
    }
    if matches!(args.which, Which::All | Which::Authorize) {
        // The floor: a unary gRPC call that does no work (grpc.health Check), same clients.
        let mut floor = Measured::empty();
        for _ in 0..args.rounds {
            floor.add(grpc_health(args, addr).await);
        }
        floors.push(floor);
        let (mut service, mut baseline) = (Measured::empty(), Measured::empty());
        for _ in 0..args.rounds {
            baseline.add(raw_authorize(args, pool.clone()).await);
            service.add(grpc_authorize(args, &clients).await);
        }
        pairs.push(("authorize", service, baseline, ("goal_per_s", 20_000.0)));
    }
    server.stop().await;
    drop(pool);
    remove_database(args, &dir, &url).await;

    let machine = machine();
    if !args.json {
        println!(
            "backend {:?}, {} accounts, {} clients, {} rounds of {} s each; {machine}",
            args.backend, args.accounts, args.clients, args.rounds, args.seconds
        );
        println!("| measurement | rate /s | p50 µs | p99 µs | baseline | baseline /s | ratio |");
        println!("|---|---:|---:|---:|---|---:|---:|");
        for f in &floors {
            println!(
                "| {} | {:.0} | {} | {} | | | |",
                f.name,
                f.rate(),
                f.percentile_us(0.5),
                f.percentile_us(0.99)
            );
        }
        for (_, s, b, _) in &pairs {
            println!(
                "| {} | {:.0} | {} | {} | {} | {:.0} | {:.2} |",
                s.name,
                s.rate(),
                s.percentile_us(0.5),
                s.percentile_us(0.99),
                b.name,
                b.rate(),
                s.rate() / b.rate()
            );
        }
    }
    let mut sections = serde_json::Map::new();
    for (section, s, b, (goal, value)) in &pairs {
        let mut row = s.summary();
        row["baseline"] = serde_json::json!({ "name": b.name, "per_s": b.rate().round() });
        row["ratio"] = (s.rate() / b.rate()).into();
        row[*goal] = (*value).into();
        row["accounts"] = args.accounts.into();
        row["clients"] = args.clients.into();
        row["rounds"] = args.rounds.into();
        row["seconds"] = args.seconds.into();
        if *section == "recharge" {
            row["group_commit_max"] = args.group_commit_max.into();
            row["group_commit_wait_us"] = args.group_commit_wait_us.into();
            row["group_commit_writers"] = server_config(args, "").group_commit_writers().into();
        }
        if *section == "authorize" {
            row["authorize_cache_ms"] = args.authorize_cache_ms.into();
            if let Some(floor) = floors.first() {
                row["floor"] = floor.summary();
            }
        }
        sections.insert((*section).to_owned(), row);
    }
    sections
}

async fn run_sweep(args: &Args) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("ocs-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let rules = Config::default().rules().expect("default rules");
    let now = chrono::Utc::now();
    let (baseline_url, same_rows_url, service_url) = match args.backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.join("baseline.db").display()),
            format!("sqlite://{}", dir.join("same_rows.db").display()),
            format!("sqlite://{}", dir.join("service.db").display()),
        ),
        Backend::Postgres => (
            database_url(args, &dir).await,
            database_url(args, &dir).await,
            database_url(args, &dir).await,
        ),
    };
    eprintln!(
        "generating 2 × {} accounts on {:?} …",
        args.sweep_accounts, args.backend
    );
    let started = Instant::now();
    let due = sweep_bench::generate(&baseline_url, args.sweep_accounts, now, &rules).await;
    sweep_bench::generate(&service_url, args.sweep_accounts, now, &rules).await;
    let generate_s = started.elapsed().as_secs_f64() / 2.0;
    sweep_bench::settle(&baseline_url).await;
    let (baseline_s, updated) = sweep_bench::raw_bulk_update(&baseline_url, now).await;
    assert_eq!(updated, due, "the bulk UPDATE touched the due rows");
    sweep_bench::settle(&service_url).await;
    let (sweep_s, transitions, zero_due_ms, peak_rss_mib, rss_before_mib) =
        sweep_bench::sweep(&service_url, now, args.batch_size).await;
    // The third copy only now: generated beside the other two before the sweep, it took
    // PostgreSQL's buffers from the sweep's rows (the sweep measured ~10 % slower).
    if args.backend == Backend::Postgres {
        drop_database(&args.postgres_url, &baseline_url).await;
    }
    sweep_bench::generate(&same_rows_url, args.sweep_accounts, now, &rules).await;
    sweep_bench::settle(&same_rows_url).await;
    let (same_rows_s, history, events) = sweep_bench::raw_same_rows(&same_rows_url, now).await;
    assert_eq!(
        sweep_bench::sweep_rows(&service_url).await,
        (history, events),
        "the raw SQL wrote the history rows and events the sweep wrote"
    );
    let f = sweep_bench::SweepFigures {
        accounts: args.sweep_accounts,
        due,
        generate_s,
        baseline_s,
        same_rows_s,
        sweep_s,
        transitions,
        zero_due_ms,
        peak_rss_mib,
        rss_before_mib,
    };
    if args.backend == Backend::Postgres {
        drop_database(&args.postgres_url, &same_rows_url).await;
        drop_database(&args.postgres_url, &service_url).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ratio = f.baseline_s / f.sweep_s;
    let ratio_same_rows = f.same_rows_s / f.sweep_s;
    if !args.json {
        println!(
            "sweep, backend {:?}: {} accounts, {} due, batches of {}; {}",
            args.backend,
            f.accounts,
            f.due,
            args.batch_size,
            machine()
        );
        println!("| measurement | value |");
        println!("|---|---:|");
        println!("| generate (per copy) | {:.1} s |", f.generate_s);
        println!(
            "| raw bulk UPDATE of the due rows (baseline) | {:.3} s ({:.0} rows/s) |",
            f.baseline_s,
            f.due as f64 / f.baseline_s
        );
        println!(
            "| sweep (accounts, history, outbox, batches) | {:.3} s ({:.0} accounts/s, {} transitions) |",
            f.sweep_s,
            f.due as f64 / f.sweep_s,
            f.transitions
        );
        println!(
            "| raw SQL writing the sweep's history rows and events too, one transaction | {:.3} s ({:.0} accounts/s) |",
            f.same_rows_s,
            f.due as f64 / f.same_rows_s
        );
        println!("| sweep throughput ÷ baseline | {ratio:.2} |");
        println!("| sweep throughput ÷ the same rows in raw SQL | {ratio_same_rows:.2} |");
        println!("| sweep with 0 due | {:.1} ms |", f.zero_due_ms);
        println!(
            "| server process RSS: peak (VmHWM) / before the sweep | {:.1} / {:.1} MiB |",
            f.peak_rss_mib, f.rss_before_mib
        );
    }
    serde_json::json!({
        "per_s": (f.due as f64 / f.sweep_s).round(),
        "baseline": {
            "name": "raw bulk UPDATE",
            "per_s": (f.due as f64 / f.baseline_s).round(),
        },
        "ratio": ratio,
        "same_rows": {
            "name": "raw SQL: the sweep's history rows and events, then the bulk UPDATE, one transaction",
            "per_s": (f.due as f64 / f.same_rows_s).round(),
            "seconds": f.same_rows_s,
            "ratio": ratio_same_rows,
        },
        "goal_ratio": match args.backend {
            Backend::Sqlite => 0.5,
            Backend::Postgres => 0.8,
        },
        "accounts": f.accounts,
        "due": f.due,
        "batch_size": args.batch_size,
        "generate_s": f.generate_s,
        "baseline_s": f.baseline_s,
        "sweep_s": f.sweep_s,
        "transitions": f.transitions,
        "zero_due_ms": f.zero_due_ms,
        "server_peak_rss_mib": f.peak_rss_mib,
        "server_rss_before_mib": f.rss_before_mib,
    })
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    let (number, unit) = match raw.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (raw.strip_suffix('s').unwrap_or(raw), 1),
    };
    number
        .parse::<u64>()
        .map(|n| Duration::from_secs(n * unit))
        .map_err(|_| format!("{raw:?} is not a duration like 600, 600s or 10m"))
}

/// `ocs-bench soak`: the `ocs-lifecycle` binary next to this one, a fresh database, the report;
/// exits 1 when a check failed (the server logs are kept then).
async fn run_soak(args: &Args) {
    let server_bin = std::env::current_exe()
        .expect("own path")
        .with_file_name("ocs-lifecycle");
    if !server_bin.exists() {
        eprintln!(
            "{} not found: build it first (cargo build --release --bins)",
            server_bin.display()
        );
        std::process::exit(2);
    }
    let dir = std::env::temp_dir().join(format!("ocs-soak-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("soak directory");
    let url = database_url(args, &dir).await;
    let report = soak::run(soak::SoakOptions {
        database_url: url.clone(),
        server_bin,
        work_dir: dir.clone(),
        duration: args.duration,
        rate: args.rate,
        accounts: args.accounts,
        kills: args.kills,
        rss_every: Duration::from_secs(2),
        judge_memory: args.duration >= Duration::from_secs(120),
        progress: true,
    })
    .await;
    if args.backend == Backend::Postgres {
        drop_database(&args.postgres_url, &url).await;
    }
    if args.json {
        println!("{}", report.json(&machine()));
    } else {
        println!("{}machine: {}", report.table(), machine());
    }
    if report.passed() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("soak FAILED; server logs in {}", dir.display());
        std::process::exit(1);
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}
