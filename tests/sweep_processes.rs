//! The sweep as real `ocs-lifecycle sweep` processes on a database of 20 000 due accounts:
//! a process killed with SIGKILL in the middle of its batches is finished by the next run with
//! every account transitioned exactly once, and three processes sweeping one PostgreSQL at once
//! split the work without a double transition or a duplicate event.
//!
//! Every account is VALID with `valid_until` 200 days before the sweep's `as_of`, so one sweep
//! takes it VALID → GRACE → LOCKED → RECYCLED: 3 STATE_CHANGED and 1 NUMBER_RECYCLED events,
//! 3 STATE_CHANGED history rows, each at its own boundary (00:00 Asia/Shanghai, the default
//! operator time zone, of the day after the last day of the state).
//!
//! The accounts are written with one `INSERT … SELECT` (PostgreSQL `generate_series`, SQLite a
//! recursive CTE), after `ocs-lifecycle migrate` created the schema. Each process runs with
//! `OCS_SWEEP__BATCH_SIZE=200` (100 batches, each one transaction) and no other `OCS_*`
//! variable. PostgreSQL comes from the harness (`tests/common`): without it these tests print
//! `SKIPPED` and pass, unless `CI=true`.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use chrono_tz::Asia::Shanghai;
use common::{Backend, Db, TestDb};
use ocs_lifecycle::proto;
use sqlx::Connection;

const BIN: &str = env!("CARGO_BIN_EXE_ocs-lifecycle");

/// Accounts in the data set.
const N: i64 = 20_000;
/// `sweep.batch_size` of every process: N / BATCH = 100 transactions per full sweep.
const BATCH: i64 = 200;
/// The killed process stops at a barrier after this many batches' events (see [`KILL_AT`]).
const KILL_AFTER_BATCHES: i64 = 25;
/// The instant every sweep runs as of: 2026-06-01 10:00 in Shanghai (in the past, so no
/// `--dry-run` is needed).
const AS_OF: &str = "2026-06-01T02:00:00Z";
/// Days between `valid_until` and the local date of `AS_OF`.
const LATE_DAYS: u64 = 200;
/// Default `lifecycle` periods (spec section 2).
const GRACE_DAYS: u64 = 90;
const LOCK_END_DAYS: u64 = 120;

/// Safety bound on one process (slow CI machines); no test asserts on elapsed time.
const SAFETY: Duration = Duration::from_secs(600);

const VALID: i32 = proto::AccountState::Valid as i32;
const GRACE: i32 = proto::AccountState::Grace as i32;
const LOCKED: i32 = proto::AccountState::Locked as i32;
const RECYCLED: i32 = proto::AccountState::Recycled as i32;
const STATE_CHANGED: i32 = proto::EventType::StateChanged as i32;
const NUMBER_RECYCLED: i32 = proto::EventType::NumberRecycled as i32;
const HISTORY_STATE_CHANGED: i32 = proto::HistoryKind::StateChanged as i32;

/// One outbox event as compared: (event_type, from_state, to_state, reason, effective_at).
type Event = (i32, i32, i32, String, DateTime<Utc>);
/// One STATE_CHANGED history row as compared: (from_state, to_state, at, actor).
type StateChange = (Option<i32>, Option<i32>, DateTime<Utc>, String);

/// The dates of every account of the data set, and the instants they imply.
struct Dates {
    as_of: DateTime<Utc>,
    valid_until: NaiveDate,
    grace_until: NaiveDate,
    lock_until: NaiveDate,
    /// Activation (and provisioning): 180 days before `valid_until`, 10:00 local.
    activated_at: DateTime<Utc>,
}

impl Dates {
    fn new() -> Self {
        let as_of = DateTime::parse_from_rfc3339(AS_OF)
            .expect("AS_OF")
            .with_timezone(&Utc);
        let today = as_of.with_timezone(&Shanghai).date_naive();
        let valid_until = today - Days::new(LATE_DAYS);
        let activation_day = valid_until - Days::new(180);
        let activated_at = Shanghai
            .from_local_datetime(&activation_day.and_hms_opt(10, 0, 0).expect("10:00"))
            .single()
            .expect("an unambiguous local time")
            .with_timezone(&Utc);
        Dates {
            as_of,
            valid_until,
            grace_until: valid_until + Days::new(GRACE_DAYS),
            lock_until: valid_until + Days::new(LOCK_END_DAYS),
            activated_at,
        }
    }

    /// The first instant after local day `date` (00:00 Asia/Shanghai of `date + 1`).
    fn end_of_day(date: NaiveDate) -> DateTime<Utc> {
        let next = (date + Days::new(1))
            .and_hms_opt(0, 0, 0)
            .expect("midnight");
        Shanghai
            .from_local_datetime(&next)
            .single()
            .expect("Shanghai has no DST gap")
            .with_timezone(&Utc)
    }

    /// The events every account gets, in sequence order: (type, from, to, reason, effective_at).
    fn expected_events(&self) -> Vec<Event> {
        let validity_end = Self::end_of_day(self.valid_until);
        let grace_end = Self::end_of_day(self.grace_until);
        let lock_end = Self::end_of_day(self.lock_until);
        vec![
            (
                STATE_CHANGED,
                VALID,
                GRACE,
                "VALIDITY_EXPIRED".into(),
                validity_end,
            ),
            (
                STATE_CHANGED,
                GRACE,
                LOCKED,
                "GRACE_EXPIRED".into(),
                grace_end,
            ),
            (
                STATE_CHANGED,
                LOCKED,
                RECYCLED,
                "LOCK_EXPIRED".into(),
                lock_end,
            ),
            (
                NUMBER_RECYCLED,
                LOCKED,
                RECYCLED,
                "LOCK_EXPIRED".into(),
                lock_end,
            ),
        ]
    }

    /// The STATE_CHANGED history rows every account gets, in id order: (from, to, at, actor).
    fn expected_history(&self) -> Vec<StateChange> {
        self.expected_events()
            .into_iter()
            .filter(|e| e.0 == STATE_CHANGED)
            .map(|(_, from, to, _, at)| (Some(from), Some(to), at, "sweep".to_owned()))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The binary.

/// The binary, run in `dir`, with the `OCS_*` and `RUST_LOG` variables of the test environment
/// removed: only what the test passes configures it.
fn ocs(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OCS_") {
            command.env_remove(name);
        }
    }
    command
}

/// A running `ocs-lifecycle` process whose stdout and stderr go to files in the test directory.
struct Process {
    label: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Process {
    fn spawn(dir: &Path, label: &str, mut command: Command) -> Process {
        let stdout = dir.join(format!("{label}.stdout"));
        let stderr = dir.join(format!("{label}.stderr"));
        let child = command
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        Process {
            label: label.to_owned(),
            child,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    /// `ocs-lifecycle sweep --database-url URL --as-of AS_OF` with batches of BATCH.
    fn sweep(dir: &Path, label: &str, url: &str) -> Process {
        let mut command = ocs(dir);
        command
            .args(["sweep", "--database-url", url, "--as-of", AS_OF])
            .env("OCS_SWEEP__BATCH_SIZE", BATCH.to_string());
        Self::spawn(dir, label, command)
    }

    fn output(&self) -> (String, String) {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        (read(&self.stdout), read(&self.stderr))
    }

    /// Waits (without blocking the runtime) until the process exits; kills it and panics when
    /// it outlives the safety bound.
    async fn wait(&mut self) -> ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if self.started.elapsed() > SAFETY {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let (stdout, stderr) = self.output();
                panic!(
                    "{} did not exit within {SAFETY:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
                    self.label
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for a successful exit; returns stdout and the time since the spawn.
    async fn succeed(mut self) -> (String, Duration) {
        let status = self.wait().await;
        let elapsed = self.started.elapsed();
        let (stdout, stderr) = self.output();
        assert!(
            status.success(),
            "{} failed: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            self.label
        );
        (stdout, elapsed)
    }
}

async fn migrate(dir: &Path, url: &str) {
    let mut command = ocs(dir);
    command.args(["migrate", "--database-url", url]);
    Process::spawn(dir, "migrate", command).succeed().await;
}

/// Runs one sweep to completion; returns its printed counts and its run time.
async fn sweep_to_completion(dir: &Path, label: &str, url: &str) -> (SweepCounts, Duration) {
    let (stdout, elapsed) = Process::sweep(dir, label, url).succeed().await;
    (SweepCounts::parse(&stdout), elapsed)
}

/// The counts `ocs-lifecycle sweep` prints.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SweepCounts {
    examined: i64,
    to_grace: i64,
    to_locked: i64,
    to_recycled_from_locked: i64,
    to_recycled_unactivated: i64,
    expiring_notified: i64,
}

impl SweepCounts {
    fn parse(stdout: &str) -> Self {
        let field = |name: &str| -> i64 {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
                .unwrap_or_else(|| panic!("no {name:?} line in the sweep output:\n{stdout}"))
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{name} in {stdout:?}: {e}"))
        };
        SweepCounts {
            examined: field("examined"),
            to_grace: field("to_grace"),
            to_locked: field("to_locked"),
            to_recycled_from_locked: field("to_recycled_from_locked"),
            to_recycled_unactivated: field("to_recycled_unactivated"),
            expiring_notified: field("expiring_notified"),
        }
    }

    /// What a sweep that took `accounts` accounts of the data set all the way prints.
    fn all_the_way(accounts: i64) -> Self {
        SweepCounts {
            examined: accounts,
            to_grace: accounts,
            to_locked: accounts,
            to_recycled_from_locked: accounts,
            ..Self::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The database.

const ACCOUNT_INSERT_COLUMNS: &str = "msisdn, account_id, generation, state, balance, \
    preset_balance, sold, initial_validity_days, provisioned_at, activated_at, valid_until, \
    grace_until, lock_until, card_expiry, recycled_at, updated_at, next_deadline, \
    expiring_notified_for";

/// Writes the N accounts of the data set with one statement: MSISDN `86139` + i (8 digits),
/// VALID, activated, every NOT NULL column filled, `next_deadline` = the end of validity
/// (≤ as_of), no VALIDITY_EXPIRING notice sent yet.
async fn insert_accounts(db: &Db, dates: &Dates) {
    let next_deadline = Dates::end_of_day(dates.valid_until).timestamp();
    assert!(next_deadline <= dates.as_of.timestamp());
    let inserted = match db {
        Db::Postgres(pool) => {
            let sql = format!(
                "INSERT INTO accounts ({ACCOUNT_INSERT_COLUMNS}) \
                 SELECT '86139' || lpad(i::text, 8, '0'), 'acc-sweep-' || i::text, 1, $1, \
                        1000, 0, TRUE, 180, $2, $2, $3, $4, $5, NULL, NULL, $2, $6, NULL \
                 FROM generate_series(1, $7::bigint) AS i"
            );
            sqlx::query(&sql)
                .bind(VALID)
                .bind(dates.activated_at)
                .bind(dates.valid_until)
                .bind(dates.grace_until)
                .bind(dates.lock_until)
                .bind(next_deadline)
                .bind(N)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        }
        Db::Sqlite(pool) => {
            // Timestamps as RFC 3339 text, dates as YYYY-MM-DD, booleans as 0/1.
            let at = dates
                .activated_at
                .format("%Y-%m-%dT%H:%M:%S+00:00")
                .to_string();
            let date = |d: NaiveDate| d.format("%Y-%m-%d").to_string();
            let sql = format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $7) \
                 INSERT INTO accounts ({ACCOUNT_INSERT_COLUMNS}) \
                 SELECT '86139' || substr('00000000' || i, -8, 8), 'acc-sweep-' || i, 1, $1, \
                        1000, 0, 1, 180, $2, $2, $3, $4, $5, NULL, NULL, $2, $6, NULL \
                 FROM n"
            );
            sqlx::query(&sql)
                .bind(VALID)
                .bind(at)
                .bind(date(dates.valid_until))
                .bind(date(dates.grace_until))
                .bind(date(dates.lock_until))
                .bind(next_deadline)
                .bind(N)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        }
    };
    let inserted = inserted.expect("insert the accounts");
    assert_eq!(inserted, N as u64);
    assert_eq!(db.count("accounts").await, N);
}

async fn scalar(db: &Db, sql: &str) -> i64 {
    let value: Result<i64, sqlx::Error> =
        on_pool!(db, |pool| sqlx::query_scalar(sql).fetch_one(pool).await);
    value.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// What the sweep has committed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    outbox: i64,
    history: i64,
    recycled: i64,
    /// Accounts whose `next_deadline` is gone (the sweep has finished with them).
    done: i64,
}

/// The four counts in one statement, so one snapshot: a batch committing meanwhile is seen in
/// all of them or in none.
async fn progress(db: &Db) -> Progress {
    let sql = format!(
        "SELECT (SELECT COUNT(*) FROM outbox), (SELECT COUNT(*) FROM account_history), \
         (SELECT COUNT(*) FROM accounts WHERE state = {RECYCLED}), \
         (SELECT COUNT(*) FROM accounts WHERE next_deadline IS NULL)"
    );
    let row: Result<(i64, i64, i64, i64), sqlx::Error> =
        on_pool!(db, |pool| sqlx::query_as(&sql).fetch_one(pool).await);
    let (outbox, history, recycled, done) = row.unwrap_or_else(|e| panic!("{sql}: {e}"));
    Progress {
        outbox,
        history,
        recycled,
        done,
    }
}

/// After a SIGKILL, PostgreSQL may still be finishing a COMMIT the process sent before it died,
/// or rolling back the transaction it had open. Waits (bounded) until no other session on the
/// test's database is running a statement or holds a transaction, so what is read next is final.
/// SQLite has no server: the file is final when the process is gone.
async fn wait_until_orphaned_sessions_end(db: &Db) {
    let Db::Postgres(_) = db else {
        return;
    };
    let sql = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
               AND pid <> pg_backend_pid() AND state IS NOT NULL AND state <> 'idle'";
    let deadline = tokio::time::Instant::now() + SAFETY;
    while scalar(db, sql).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the killed process's sessions did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every `sweep_runs` row as (status, examined), oldest first.
async fn sweep_runs(db: &Db) -> Vec<(String, i64)> {
    let sql = "SELECT status, examined FROM sweep_runs ORDER BY id";
    let rows: Result<Vec<(String, i64)>, sqlx::Error> =
        on_pool!(db, |pool| sqlx::query_as(sql).fetch_all(pool).await);
    rows.expect("read sweep_runs")
}

/// Every accounts row as text, by MSISDN: what "a run changed nothing" compares.
type AccountsSnapshot = Vec<Vec<Option<String>>>;

async fn accounts_snapshot(db: &Db) -> AccountsSnapshot {
    let sql = "SELECT CAST(msisdn AS TEXT), CAST(state AS TEXT), CAST(valid_until AS TEXT), \
               CAST(grace_until AS TEXT), CAST(lock_until AS TEXT), \
               CAST(recycled_at AS TEXT), CAST(updated_at AS TEXT), \
               CAST(next_deadline AS TEXT), CAST(expiring_notified_for AS TEXT) \
               FROM accounts ORDER BY msisdn";
    let rows = on_pool!(db, |pool| {
        sqlx::query(sql).fetch_all(pool).await.map(|rows| {
            rows.into_iter()
                .map(|row| {
                    use sqlx::Row;
                    (0..9).map(|i| row.get::<Option<String>, _>(i)).collect()
                })
                .collect::<AccountsSnapshot>()
        })
    });
    rows.expect("read the accounts")
}

/// The exactly-once checks once every account is swept: every account RECYCLED at its lock
/// boundary with nothing left due; exactly 4 events per MSISDN (3 STATE_CHANGED, 1
/// NUMBER_RECYCLED, in that sequence order, each at its own boundary, none duplicated), 4N in
/// all; exactly 3 STATE_CHANGED history rows per MSISDN, 3N in all.
async fn assert_each_account_transitioned_exactly_once(db: &Db, dates: &Dates) {
    // Accounts.
    let sql = "SELECT msisdn, state, recycled_at, lock_until, next_deadline FROM accounts";
    type AccountRow = (
        String,
        i32,
        Option<DateTime<Utc>>,
        Option<NaiveDate>,
        Option<i64>,
    );
    let accounts: Result<Vec<AccountRow>, sqlx::Error> =
        on_pool!(db, |pool| sqlx::query_as(sql).fetch_all(pool).await);
    let accounts = accounts.expect("read the accounts");
    assert_eq!(accounts.len() as i64, N);
    let lock_end = Dates::end_of_day(dates.lock_until);
    let wrong: Vec<&AccountRow> = accounts
        .iter()
        .filter(|(_, state, recycled_at, lock_until, next_deadline)| {
            *state != RECYCLED
                || *recycled_at != Some(lock_end)
                || *lock_until != Some(dates.lock_until)
                || next_deadline.is_some()
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} accounts are not RECYCLED at their lock boundary {lock_end} with nothing due, \
         e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );

    // Outbox: no duplicate (msisdn, from_state, to_state, event_type), checked in SQL, then
    // the exact sequence of every MSISDN.
    let duplicates = scalar(
        db,
        "SELECT COUNT(*) FROM (SELECT msisdn, from_state, to_state, event_type FROM outbox \
         GROUP BY msisdn, from_state, to_state, event_type HAVING COUNT(*) > 1) AS d",
    )
    .await;
    assert_eq!(
        duplicates, 0,
        "duplicate (msisdn, from_state, to_state, event_type) events"
    );
    assert_eq!(
        scalar(db, "SELECT COUNT(DISTINCT event_id) FROM outbox").await,
        4 * N
    );
    let outbox = db.outbox().await;
    assert_eq!(outbox.len() as i64, 4 * N, "4 events per account in all");
    let mut events: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    for e in &outbox {
        assert_eq!(
            (e.generation, e.account_id.starts_with("acc-sweep-")),
            (1, true)
        );
        events.entry(e.msisdn.as_str()).or_default().push((
            e.event_type,
            e.from_state,
            e.to_state,
            e.reason.clone(),
            e.effective_at,
        ));
    }
    assert_eq!(events.len() as i64, N, "events for every MSISDN");
    let expected = dates.expected_events();
    let wrong: Vec<_> = events.iter().filter(|(_, e)| **e != expected).collect();
    assert!(
        wrong.is_empty(),
        "{} MSISDNs do not have exactly {expected:?} in sequence order, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );

    // History.
    assert_eq!(db.count("account_history").await, 3 * N);
    let sql = "SELECT msisdn, from_state, to_state, at, actor FROM account_history \
               WHERE kind = $1 ORDER BY id";
    type HistoryRow = (String, Option<i32>, Option<i32>, DateTime<Utc>, String);
    let rows: Result<Vec<HistoryRow>, sqlx::Error> = on_pool!(db, |pool| {
        sqlx::query_as(sql)
            .bind(HISTORY_STATE_CHANGED)
            .fetch_all(pool)
            .await
    });
    let rows = rows.expect("read the history");
    assert_eq!(rows.len() as i64, 3 * N, "3 STATE_CHANGED rows per account");
    let mut history: BTreeMap<String, Vec<StateChange>> = BTreeMap::new();
    for (msisdn, from, to, at, actor) in rows {
        history
            .entry(msisdn)
            .or_default()
            .push((from, to, at, actor));
    }
    assert_eq!(history.len() as i64, N, "history for every MSISDN");
    let expected = dates.expected_history();
    let wrong: Vec<_> = history.iter().filter(|(_, h)| **h != expected).collect();
    assert!(
        wrong.is_empty(),
        "{} MSISDNs do not have exactly {expected:?}, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
}

/// A fresh database of `backend` with the schema (`ocs-lifecycle migrate`) and the data set;
/// `None` when the harness skips PostgreSQL.
async fn prepared(
    backend: Backend,
    dir: &Path,
    dates: &Dates,
) -> Option<(std::sync::Arc<TestDb>, Db)> {
    let test_db = TestDb::create(backend).await?;
    migrate(dir, &test_db.url).await;
    let db = test_db.open_for_writing().await;
    let started = Instant::now();
    insert_accounts(&db, dates).await;
    eprintln!(
        "[{backend:?}] {N} accounts inserted in {:?}",
        started.elapsed()
    );
    Some((test_db, db))
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// The barrier the killed sweep cannot pass, installed before it starts: an `outbox` trigger on
/// every event past the first `KILL_AT` (by `sequence`, from 1) stops that batch's transaction
/// before it can commit. On PostgreSQL the trigger waits for an advisory lock the test holds
/// (seen as a lock wait in `pg_locks`); SQLite cannot wait in a trigger, so there the trigger
/// runs a query that would take hours (a triple cross join of the accounts). Either way at most
/// `KILL_AT` events commit before the kill, however slowly the test runs beside the process.
const KILL_AT: i64 = 4 * BATCH * KILL_AFTER_BATCHES;
const BARRIER_LOCK: i64 = 0x0c5_4b11;

/// The test's side of the barrier: on PostgreSQL the connection holding the advisory lock.
struct Barrier {
    holder: Option<sqlx::PgConnection>,
}

impl Barrier {
    async fn install(test_db: &TestDb, db: &Db) -> Barrier {
        match db {
            Db::Postgres(_) => {
                let mut holder = sqlx::PgConnection::connect(&test_db.url)
                    .await
                    .unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}"));
                sqlx::query(&format!("SELECT pg_advisory_lock({BARRIER_LOCK})"))
                    .execute(&mut holder)
                    .await
                    .expect("take the barrier's lock");
                db.execute(&format!(
                    "CREATE FUNCTION kill_barrier() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN PERFORM pg_advisory_xact_lock_shared({BARRIER_LOCK}); \
                     RETURN NULL; END $$"
                ))
                .await;
                db.execute(&format!(
                    "CREATE TRIGGER kill_barrier AFTER INSERT ON outbox FOR EACH ROW \
                     WHEN (NEW.sequence > {KILL_AT}) EXECUTE FUNCTION kill_barrier()"
                ))
                .await;
                Barrier {
                    holder: Some(holder),
                }
            }
            Db::Sqlite(_) => {
                db.execute(&format!(
                    "CREATE TRIGGER kill_barrier AFTER INSERT ON outbox \
                     WHEN NEW.sequence > {KILL_AT} BEGIN \
                     SELECT RAISE(ABORT, 'unreachable') WHERE (SELECT SUM(a.rowid + b.rowid + \
                     c.rowid) FROM accounts a, accounts b, accounts c) < 0; END"
                ))
                .await;
                Barrier { holder: None }
            }
        }
    }

    /// Whether the sweep has reached the barrier: on PostgreSQL a session waits for its lock;
    /// on SQLite every event up to it is committed (one writer at a time, and `AUTOINCREMENT`
    /// numbers without gaps, so the next one is past it).
    async fn reached(&mut self, db: &Db) -> bool {
        match &mut self.holder {
            Some(holder) => {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                     AND database = (SELECT oid FROM pg_database \
                     WHERE datname = current_database())",
                )
                .fetch_one(&mut *holder)
                .await
                .expect("pg_locks");
                waiting > 0
            }
            None => db.count("outbox").await == KILL_AT,
        }
    }

    /// Once the process is dead: lets its orphaned PostgreSQL sessions go on (they find their
    /// client gone and roll back), waits until they end, and removes the trigger.
    async fn remove(self, db: &Db) {
        if let Some(holder) = self.holder {
            holder.close().await.expect("let go of the barrier's lock");
        }
        wait_until_orphaned_sessions_end(db).await;
        match db {
            Db::Postgres(_) => {
                db.execute("DROP TRIGGER kill_barrier ON outbox").await;
                db.execute("DROP FUNCTION kill_barrier()").await;
            }
            Db::Sqlite(_) => db.execute("DROP TRIGGER kill_barrier").await,
        }
    }
}

/// Kills a sweep with SIGKILL once it is stopped at a barrier after a few of its batches,
/// checks that exactly whole batches were committed, then lets the next run finish the work
/// and a third run find nothing to do.
async fn a_sweep_killed_with_sigkill_is_finished_by_the_next_run_exactly_once(backend: Backend) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let dates = Dates::new();
    let Some((test_db, db)) = prepared(backend, dir.path(), &dates).await else {
        return;
    };
    let url = test_db.url.clone();

    // The first run, killed once it waits at the barrier.
    let mut barrier = Barrier::install(&test_db, &db).await;
    let mut first = Process::sweep(dir.path(), "killed-sweep", &url);
    while !barrier.reached(&db).await {
        if let Some(status) = first.child.try_wait().expect("try_wait") {
            let (stdout, stderr) = first.output();
            panic!(
                "the first sweep exited ({status}) before the barrier, after {:?} with {} \
                 outbox rows\nstdout:\n{stdout}\nstderr:\n{stderr}",
                first.started.elapsed(),
                db.count("outbox").await
            );
        }
        assert!(
            first.started.elapsed() < SAFETY,
            "the first sweep did not reach the barrier in {SAFETY:?}: {} events",
            db.count("outbox").await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ran_for = first.started.elapsed();
    first.child.kill().expect("SIGKILL the first sweep");
    let status = first.wait().await;
    assert_eq!(
        status.signal(),
        Some(9),
        "the first sweep was killed by SIGKILL, not exited: {status}"
    );
    barrier.remove(&db).await;

    // Exactly whole batches are committed: each is one transaction of BATCH accounts with
    // their 4 events and 3 history rows.
    let at_kill = progress(&db).await;
    eprintln!(
        "[{backend:?}] SIGKILL at the barrier after {ran_for:?}: committed at death \
         {at_kill:?} = {} of {} batches",
        at_kill.outbox / (4 * BATCH),
        N / BATCH
    );
    assert!(
        at_kill.outbox > 0 && at_kill.outbox <= KILL_AT,
        "the kill happened mid-way, at the barrier: {at_kill:?}"
    );
    if matches!(backend, Backend::Sqlite) {
        assert_eq!(
            at_kill.outbox, KILL_AT,
            "every batch before the barrier committed"
        );
    }
    assert_eq!(
        at_kill.outbox % (4 * BATCH),
        0,
        "a batch is one transaction: {at_kill:?}"
    );
    let accounts_done = at_kill.outbox / 4;
    assert_eq!(
        at_kill,
        Progress {
            outbox: 4 * accounts_done,
            history: 3 * accounts_done,
            recycled: accounts_done,
            done: accounts_done,
        },
        "accounts, history and outbox are committed together"
    );
    let runs = sweep_runs(&db).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        runs[0].0, "running",
        "the killed run never recorded an end: {runs:?}"
    );

    // The next run finishes exactly the accounts the killed one did not.
    let (counts, second_took) = sweep_to_completion(dir.path(), "second-sweep", &url).await;
    eprintln!("[{backend:?}] the second sweep took {second_took:?}: {counts:?}");
    assert_eq!(counts, SweepCounts::all_the_way(N - accounts_done));
    assert_each_account_transitioned_exactly_once(&db, &dates).await;

    // A third run at the same instant changes nothing.
    let before = (db.counts().await, accounts_snapshot(&db).await);
    let (counts, third_took) = sweep_to_completion(dir.path(), "third-sweep", &url).await;
    eprintln!("[{backend:?}] the third sweep took {third_took:?}: {counts:?}");
    assert_eq!(counts, SweepCounts::default(), "nothing is due any more");
    let after = (db.counts().await, accounts_snapshot(&db).await);
    assert!(before == after, "the third run changed the database");
    let runs = sweep_runs(&db).await;
    assert_eq!(
        runs,
        vec![
            ("running".to_owned(), 0),
            ("succeeded".to_owned(), N - accounts_done),
            ("succeeded".to_owned(), 0),
        ]
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_sweep_killed_with_sigkill_is_finished_by_the_next_run_exactly_once() {
    a_sweep_killed_with_sigkill_is_finished_by_the_next_run_exactly_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_sweep_killed_with_sigkill_is_finished_by_the_next_run_exactly_once() {
    a_sweep_killed_with_sigkill_is_finished_by_the_next_run_exactly_once(Backend::Postgres).await;
}

/// `url` with `application_name=name`, so that `pg_stat_activity` tells which process a
/// session belongs to.
fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

/// Waits until a session of every process in `processes` (by its `application_name`, its
/// label) waits for a table lock in a write to `outbox`; panics with the output of a process
/// that exits first, or past [`SAFETY`].
async fn wait_until_each_holds_a_batch(locker: &mut sqlx::PgConnection, processes: &mut [Process]) {
    let labels: BTreeSet<String> = processes.iter().map(|p| p.label.clone()).collect();
    let started = Instant::now();
    loop {
        // Inside a transaction the statistics views hold still: a fresh snapshot each time.
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *locker)
            .await
            .expect("pg_stat_clear_snapshot");
        let waiting: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT application_name FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
             AND query LIKE 'INSERT INTO outbox%'",
        )
        .fetch_all(&mut *locker)
        .await
        .expect("pg_stat_activity");
        if labels.iter().all(|label| waiting.contains(label)) {
            eprintln!(
                "[Postgres] every process held a claimed batch after {:?}",
                started.elapsed()
            );
            return;
        }
        for process in processes.iter_mut() {
            if let Some(status) = process.child.try_wait().expect("try_wait") {
                let (stdout, stderr) = process.output();
                panic!(
                    "{} exited ({status}) while the outbox was locked\nstdout:\n{stdout}\n\
                     stderr:\n{stderr}",
                    process.label
                );
            }
        }
        assert!(
            started.elapsed() < SAFETY,
            "not every process reached its first batch's write: waiting {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three sweep processes started together on one PostgreSQL database: each exits 0, together
/// they examine every account exactly once, and every account has exactly its 4 events and 3
/// history rows.
///
/// The sweeps overlap by construction: the test locks the `outbox` table (EXCLUSIVE: plain
/// reads pass, writes wait) before it starts them, so each process claims a batch (its rows
/// locked, `SKIP LOCKED` by the others) and then waits in that batch's transaction to write the
/// batch's events; once a session of every process waits so, the test lets go. No process can
/// commit a batch before every process holds one of its own, and each of those batches then
/// commits: every process examines at least `BATCH` accounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sweep_processes_on_one_postgresql_transition_each_account_exactly_once() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let dates = Dates::new();
    let Some((test_db, db)) = prepared(Backend::Postgres, dir.path(), &dates).await else {
        return;
    };
    let mut locker = common::pg_transaction(&test_db.url).await;
    sqlx::query("LOCK TABLE outbox IN EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .expect("lock the outbox");
    let started = Instant::now();
    let mut processes: Vec<Process> = (1..=3)
        .map(|i| {
            let label = format!("sweep-{i}");
            let url = with_application_name(&test_db.url, &label);
            Process::sweep(dir.path(), &label, &url)
        })
        .collect();
    wait_until_each_holds_a_batch(&mut locker, &mut processes).await;
    sqlx::query("ROLLBACK")
        .execute(&mut locker)
        .await
        .expect("let go of the outbox");
    locker.close().await.expect("close the outbox locker");
    let mut counts = Vec::new();
    for process in processes {
        let label = process.label.clone();
        let (stdout, took) = process.succeed().await;
        let c = SweepCounts::parse(&stdout);
        eprintln!("[Postgres] {label} exited 0 after {took:?}: {c:?}");
        counts.push(c);
    }
    eprintln!(
        "[Postgres] three concurrent sweeps done in {:?}",
        started.elapsed()
    );

    // Together they examined and transitioned every account once.
    let total = counts
        .iter()
        .fold(SweepCounts::default(), |sum, c| SweepCounts {
            examined: sum.examined + c.examined,
            to_grace: sum.to_grace + c.to_grace,
            to_locked: sum.to_locked + c.to_locked,
            to_recycled_from_locked: sum.to_recycled_from_locked + c.to_recycled_from_locked,
            to_recycled_unactivated: sum.to_recycled_unactivated + c.to_recycled_unactivated,
            expiring_notified: sum.expiring_notified + c.expiring_notified,
        });
    assert_eq!(
        total,
        SweepCounts::all_the_way(N),
        "per process: {counts:?}"
    );
    // Each committed at least the batch it held while the outbox was locked.
    assert!(
        counts.iter().all(|c| c.examined >= BATCH),
        "every process examined at least one batch: {counts:?}"
    );
    let mut runs = sweep_runs(&db).await;
    runs.sort();
    let mut expected: Vec<(String, i64)> = counts
        .iter()
        .map(|c| ("succeeded".to_owned(), c.examined))
        .collect();
    expected.sort();
    assert_eq!(runs, expected);

    assert_each_account_transitioned_exactly_once(&db, &dates).await;
    db.close().await;
}
