//! The sweep benchmark: `--sweep-accounts` accounts (default 1M) of which a tenth are due
//! (mixed: VALID→GRACE, GRACE→LOCKED, LOCKED→RECYCLED, UNACTIVATED→RECYCLED), generated in the
//! database with one `INSERT … SELECT`. Two identical databases are generated: on one the
//! baseline runs — one raw bulk `UPDATE` of the due rows' state and deadline, committed — and on
//! the other the service's sweep (`ocs_lifecycle::sweep::run`, batches, history and outbox).
//! The service's sweep runs in a server process (`server::serve_on`, started by this binary, the
//! sweep asked for with `AdvanceStates`); then a second sweep with nothing due, and the server
//! process's RSS before and at its peak (`VmHWM` in /proc/<pid>/status).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, Utc};
use ocs_lifecycle::lifecycle::Rules;

/// Runs `$body` with `$pool` a pool on the database `$url` names: PostgreSQL, or SQLite in WAL
/// with `synchronous = FULL` as the service opens it. One body serves both (sqlx's pool types
/// differ by backend); `$begin` is bound to the statement that opens a write transaction there.
macro_rules! on_pool {
    ($url:expr, |$pool:ident, $begin:ident| $body:expr) => {
        if $url.starts_with("postgres") {
            let $pool = sqlx::PgPool::connect($url).await.expect("pg");
            let $begin = "BEGIN";
            $body
        } else {
            let options: sqlx::sqlite::SqliteConnectOptions = $url.parse().expect("url");
            let options = options
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
            let $pool = sqlx::SqlitePool::connect_with(options)
                .await
                .expect("sqlite");
            // The one writer's lock at once, as the service's write transactions take it.
            let $begin = "BEGIN IMMEDIATE";
            $body
        }
    };
}

pub struct SweepFigures {
    pub accounts: u64,
    pub due: u64,
    pub generate_s: f64,
    pub baseline_s: f64,
    /// [`raw_same_rows`]'s seconds.
    pub same_rows_s: f64,
    pub sweep_s: f64,
    pub transitions: u64,
    pub zero_due_ms: f64,
    pub peak_rss_mib: f64,
    pub rss_before_mib: f64,
}

/// Generates the data set into the database at `url` (migrated first through the store).
pub async fn generate(url: &str, accounts: u64, now: DateTime<Utc>, rules: &Rules) -> u64 {
    generate_from(url, 0, accounts, now, rules).await
}

/// [`generate`] for accounts number `first` .. `first + accounts` (`first` a multiple of 40 keeps
/// the mix of due kinds even).
pub async fn generate_from(
    url: &str,
    first: u64,
    accounts: u64,
    now: DateTime<Utc>,
    rules: &Rules,
) -> u64 {
    let store = ocs_lifecycle::store::connect(
        url,
        2,
        ocs_lifecycle::store::DEFAULT_ACQUIRE_TIMEOUT,
        Arc::new(rules.clone()),
    )
    .await
    .expect("store");
    store.migrate().await.expect("migrate");
    drop(store);
    let today = rules.local_date(now);
    let days_ago = |n: u64| today.checked_sub_days(Days::new(n)).expect("date");
    let ahead = |n: u64| today.checked_add_days(Days::new(n)).expect("date");
    let end_of = |d: NaiveDate| rules.end_of_day(d).timestamp();
    let start_of = |d: NaiveDate| rules.start_of_day(d).timestamp();
    let is_postgres = url.starts_with("postgres");
    let rows = if is_postgres {
        "SELECT i FROM generate_series(0, $1 - 1) AS i"
    } else {
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $1) \
         SELECT i FROM n"
    };
    // Every tenth account is due; (i / 10) % 4 picks which boundary it has crossed.
    let sql = format!(
        "INSERT INTO accounts (msisdn, account_id, generation, state, balance, preset_balance, \
           sold, initial_validity_days, provisioned_at, activated_at, valid_until, grace_until, \
           lock_until, card_expiry, recycled_at, updated_at, next_deadline) \
         SELECT '8613' || (100000000 + i), 'bench-' || i, 1, \
           CASE WHEN i % 10 <> 0 THEN 2 ELSE (CASE (i / 10) % 4 WHEN 0 THEN 2 WHEN 1 THEN 3 WHEN 2 THEN 4 ELSE 1 END) END, \
           1000, 0, TRUE, 180, $2, \
           CASE WHEN i % 10 = 0 AND (i / 10) % 4 = 3 THEN NULL ELSE $2 END, \
           CASE WHEN i % 10 <> 0 THEN $3 ELSE (CASE (i / 10) % 4 WHEN 0 THEN $4 WHEN 1 THEN $5 WHEN 2 THEN $6 ELSE NULL END) END, \
           CASE WHEN i % 10 <> 0 THEN $7 ELSE (CASE (i / 10) % 4 WHEN 0 THEN $8 WHEN 1 THEN $9 WHEN 2 THEN $10 ELSE NULL END) END, \
           CASE WHEN i % 10 <> 0 THEN $11 ELSE (CASE (i / 10) % 4 WHEN 0 THEN $12 WHEN 1 THEN $13 WHEN 2 THEN $14 ELSE NULL END) END, \
           CASE WHEN i % 10 = 0 AND (i / 10) % 4 = 3 THEN $15 ELSE NULL END, \
           NULL, $2, \
           CASE WHEN i % 10 <> 0 THEN $16 ELSE (CASE (i / 10) % 4 WHEN 0 THEN $17 WHEN 1 THEN $18 WHEN 2 THEN $19 ELSE $20 END) END \
         FROM (SELECT i + {first} AS i FROM ({rows}) AS r) AS g"
    );
    let (grace, lock) = (
        u64::from(rules.grace_days),
        u64::from(rules.grace_days + rules.lock_days),
    );
    // Not due: VALID until today + 100 (its next deadline is the expiry notice, 7 days before).
    let valid_far = ahead(100);
    // Due, by kind: the boundary crossed was 5 days ago.
    let v0 = days_ago(5);
    let v1 = days_ago(5 + grace);
    let v2 = days_ago(5 + lock);
    let card_expiry = days_ago(5);
    let plus = |d: NaiveDate, n: u64| d.checked_add_days(Days::new(n)).expect("date");
    let params_dates = [
        valid_far,
        v0,
        v1,
        v2, // valid_until
        plus(valid_far, grace),
        plus(v0, grace),
        plus(v1, grace),
        plus(v2, grace), // grace_until
        plus(valid_far, lock),
        plus(v0, lock),
        plus(v1, lock),
        plus(v2, lock), // lock_until
        card_expiry,
    ];
    let deadlines = [
        start_of(valid_far.checked_sub_days(Days::new(7)).expect("date")),
        start_of(v0.checked_sub_days(Days::new(7)).expect("date")),
        end_of(plus(v1, grace)),
        end_of(plus(v2, lock)),
        end_of(card_expiry),
    ];
    macro_rules! bind_all {
        ($q:expr) => {{
            let mut q = $q.bind(accounts as i64).bind(now);
            for d in params_dates {
                q = q.bind(d);
            }
            for d in deadlines {
                q = q.bind(d);
            }
            q
        }};
    }
    let analyze = if is_postgres {
        "ANALYZE accounts"
    } else {
        "ANALYZE"
    };
    on_pool!(url, |pool, _begin| {
        bind_all!(sqlx::query(&sql))
            .execute(&pool)
            .await
            .expect("generate");
        sqlx::query(analyze).execute(&pool).await.expect("analyze");
    });
    accounts / 10
}

/// The due rows' new state and deadline, as [`raw_bulk_update`] and [`raw_same_rows`] write them.
const BULK_UPDATE: &str = "UPDATE accounts SET \
    state = CASE state WHEN 2 THEN 3 WHEN 3 THEN 4 ELSE 5 END, \
    next_deadline = CASE state WHEN 2 THEN next_deadline + 7776000 WHEN 3 THEN next_deadline + 2592000 ELSE NULL END \
    WHERE next_deadline <= $1";

/// The baseline: one bulk UPDATE of the due rows' state and deadline, committed. Returns the
/// seconds it took and the rows it updated.
pub async fn raw_bulk_update(url: &str, as_of: DateTime<Utc>) -> (f64, u64) {
    let (seconds, rows) = raw_transaction(url, as_of, &[BULK_UPDATE]).await;
    (seconds, rows[0])
}

/// The second baseline: the rows a sweep of the data set writes besides the accounts — a
/// STATE_CHANGED history row per due account, a STATE_CHANGED event and, for a recycled one, a
/// NUMBER_RECYCLED event — inserted by two `INSERT … SELECT`, then the bulk UPDATE, in one
/// transaction. Not written: the sweep's per-day totals (`history_totals`, `grace_ends`) and
/// per-generation values (`generation_values`). Returns the seconds it took and the history
/// rows and events it wrote.
pub async fn raw_same_rows(url: &str, as_of: DateTime<Utc>) -> (f64, u64, u64) {
    // States: 1 UNACTIVATED, 2 VALID, 3 GRACE, 4 LOCKED, 5 RECYCLED; the kind of history row
    // (7) and the event types (1 NUMBER_RECYCLED, 2 STATE_CHANGED) as the store writes them.
    let next = "CASE state WHEN 2 THEN 3 WHEN 3 THEN 4 ELSE 5 END";
    let history = format!(
        "INSERT INTO account_history (msisdn, account_id, generation, at, kind, from_state, \
           to_state, amount, actor, request_id, channel) \
         SELECT msisdn, account_id, generation, updated_at, 7, state, {next}, 0, 'sweep', NULL, NULL \
         FROM accounts WHERE next_deadline <= $1"
    );
    let events = format!(
        "INSERT INTO outbox (event_id, event_type, msisdn, account_id, generation, from_state, \
           to_state, reason, effective_at, emitted_at) \
         SELECT 'raw-' || t.event_type || '-' || msisdn, t.event_type, msisdn, account_id, \
           generation, state, {next}, \
           CASE state WHEN 2 THEN 'VALIDITY_EXPIRED' WHEN 3 THEN 'GRACE_EXPIRED' \
             WHEN 4 THEN 'LOCK_EXPIRED' ELSE 'UNACTIVATED_EXPIRED' END, updated_at, updated_at \
         FROM accounts JOIN (SELECT 2 AS event_type UNION ALL SELECT 1) AS t \
           ON t.event_type = 2 OR accounts.state IN (1, 4) \
         WHERE next_deadline <= $1"
    );
    let (seconds, rows) = raw_transaction(url, as_of, &[&history, &events, BULK_UPDATE]).await;
    (seconds, rows[0], rows[1])
}

/// Runs `statements` (each binding `as_of` as `$1`) in one transaction on a connection of its
/// own, committed as the service commits (SQLite: WAL, `synchronous = FULL`); returns the
/// seconds from connecting to the end of COMMIT and each statement's rows affected.
async fn raw_transaction(url: &str, as_of: DateTime<Utc>, statements: &[&str]) -> (f64, Vec<u64>) {
    let started = Instant::now();
    let mut rows = Vec::new();
    on_pool!(url, |pool, begin| {
        let mut tx = pool.begin_with(begin).await.expect("begin");
        for sql in statements {
            let done = sqlx::query(sql).bind(as_of.timestamp()).execute(&mut *tx);
            rows.push(done.await.expect(sql).rows_affected());
        }
        tx.commit().await.expect("commit");
    });
    (started.elapsed().as_secs_f64(), rows)
}

/// Writes out what earlier phases left in the log before a timed phase starts, so that no
/// phase pays for another's checkpoint: PostgreSQL `CHECKPOINT` (the whole cluster: generating
/// two copies of the data set writes hundreds of MB of WAL, and a checkpoint it triggers would
/// land in whichever phase runs then), SQLite `wal_checkpoint(TRUNCATE)` of the database.
pub async fn settle(url: &str) {
    let sql = if url.starts_with("postgres") {
        "CHECKPOINT"
    } else {
        "PRAGMA wal_checkpoint(TRUNCATE)"
    };
    on_pool!(url, |pool, _begin| {
        sqlx::query(sql).execute(&pool).await.expect("checkpoint");
    });
}

/// The sweep's history rows and events in the database at `url`: `(history, events)`.
pub async fn sweep_rows(url: &str) -> (u64, u64) {
    let history = "SELECT COUNT(*) FROM account_history WHERE actor = 'sweep'";
    let events = "SELECT COUNT(*) FROM outbox WHERE event_type IN (1, 2)";
    on_pool!(url, |pool, _begin| {
        let mut counts = [0; 2];
        for (count, sql) in counts.iter_mut().zip([history, events]) {
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.expect("count");
            *count = n as u64;
        }
        (counts[0], counts[1])
    })
}

/// The `field` (`VmRSS:`, `VmHWM:`) of process `pid`'s status, in KiB; 0 if unreadable.
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The environment variable that turns `ocs-bench` into the server process of the sweep
/// measurement; its value is the database URL.
pub const SERVER_CHILD_ENV: &str = "OCS_BENCH_SERVER_DATABASE_URL";

/// The server process: `server::serve_on` (the code `ocs-lifecycle serve` runs) on the database
/// in [`SERVER_CHILD_ENV`], no scheduler, no operations endpoint; prints its gRPC port on
/// stdout and stops when its stdin closes (so it never outlives the benchmark).
pub fn server_child(url: String, batch_size: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let config = ocs_lifecycle::config::Config {
            database_url: url,
            http_addr: None,
            sweep: ocs_lifecycle::config::SweepConfig {
                batch_size,
                scheduler: false,
                ..Default::default()
            },
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("port={}", listener.local_addr().expect("addr").port());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop.cancel();
        });
        ocs_lifecycle::server::serve_on(config, listener, shutdown)
            .await
            .expect("serve");
    });
}

/// Runs the service's sweep on `url` in a server process (this binary as [`server_child`])
/// through `AdvanceStates`, then a 0-due sweep; reads the process's RSS before and its peak
/// (`VmHWM`) after, from /proc.
pub async fn sweep(url: &str, as_of: DateTime<Utc>, batch_size: u32) -> (f64, u64, f64, f64, f64) {
    use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env(SERVER_CHILD_ENV, url)
        .arg("--batch-size")
        .arg(batch_size.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the server process");
    let pid = child.id();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the server's port");
    let port: u16 = line
        .trim()
        .strip_prefix("port=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the server printed {line:?}, not its port"));
    let mut api = loop {
        match AccountLifecycleClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(api) => break api,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    // Ready once migrations ran (requests before that answer UNAVAILABLE).
    while api
        .get_account(ocs_lifecycle::proto::GetAccountRequest {
            msisdn: "8613100000000".into(),
        })
        .await
        .is_err_and(|s| s.code() == tonic::Code::Unavailable)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = rss_kib(pid, "VmRSS:");
    let request = || ocs_lifecycle::proto::AdvanceStatesRequest {
        as_of: Some(prost_types::Timestamp {
            seconds: as_of.timestamp(),
            nanos: 0,
        }),
        dry_run: false,
    };
    let started = Instant::now();
    let report = api
        .advance_states(request())
        .await
        .expect("sweep")
        .into_inner();
    let sweep_s = started.elapsed().as_secs_f64();
    let transitions = report.to_grace
        + report.to_locked
        + report.to_recycled_from_locked
        + report.to_recycled_unactivated;
    let started = Instant::now();
    let again = api
        .advance_states(request())
        .await
        .expect("sweep")
        .into_inner();
    let zero_due_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(again.examined, 0, "the second sweep found due accounts");
    let peak = rss_kib(pid, "VmHWM:");
    drop(child.stdin.take());
    let _ = child.wait();
    (
        sweep_s,
        transitions,
        zero_due_ms,
        peak as f64 / 1024.0,
        before as f64 / 1024.0,
    )
}
