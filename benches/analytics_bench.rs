//! `ocs-bench analytics` (issue 18 item 5): every lifecycle report on `--analytics-accounts`
//! accounts (default 1M) and about ten history rows per account, timed through the real gRPC
//! client against the real server in-process, each beside the plain SQL aggregate closest to its
//! work (same run, same database, raw sqlx).
//!
//! The data set is simulated here, one account at a time, with the lifecycle's rules (default
//! configuration, Asia/Shanghai): provisioning spread over two years, a sale, an activation for
//! most cards (the rest expire unactivated and are recycled), recharges (amounts of 10 to 100
//! yuan, the four channels; a quarter of them followed by a charge), validity running out
//! (VALID → GRACE), win-backs (GRACE → VALID by recharge), GRACE → LOCKED, unlocks to VALID
//! (with a recharge) and to GRACE, recycles, and recycled numbers provisioned again
//! (generation 2, the first one archived). Every boundary up to now is written as the sweep writes it (at the boundary
//! instant), so the accounts' stored states are their effective states today. The rows go in
//! in time order (their ids in the order a live service would give them), with an idempotency
//! key for every recharge and unlock (the recharge's channel lives in its fingerprint):
//! PostgreSQL through `COPY`, SQLite through multi-row `INSERT`s, into the schema of migrations
//! 0001–0007; the server applies 0008 when it starts (its backfill of the recharges' channels
//! and of `generation_values`, timed), as on an upgrade of a database with data; then `ANALYZE`
//! (`VACUUM ANALYZE` on PostgreSQL) as after any bulk change.

use std::time::Instant;

use chrono::{DateTime, Days, NaiveDate, Utc};
use ocs_lifecycle::lifecycle::{Account, AccountState, HistoryKind, Msisdn, Rules};
use ocs_lifecycle::proto;
use ocs_lifecycle::proto::lifecycle_analytics_client::LifecycleAnalyticsClient;
use sqlx::Connection;
use tonic::transport::Channel;

use super::{
    Args, Backend, RawPool, ServerUnderTest, fresh_database, machine, raw_pool, remove_database,
    server_config,
};

/// The goal of issue 18 item 5: every report answers within this.
const GOAL_S: f64 = 2.0;

/// Days of history before today.
const SPAN_DAYS: u64 = 730;

/// A small deterministic generator (splitmix64): the same data set on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One history row as generated.
#[derive(Clone, Copy)]
struct Row {
    at: i64,
    account: u32,
    generation: u8,
    kind: u8,
    /// 0: none.
    from: u8,
    to: u8,
    amount: i64,
    /// The recharge's channel (1–4); 0 for other rows.
    channel: u8,
}

/// The generated data set.
struct DataSet {
    rows: Vec<Row>,
    accounts: Vec<Account>,
    archived: Vec<Account>,
}

// History kinds as stored (`HistoryKind`'s wire values).
const PROVISIONED: u8 = HistoryKind::Provisioned as u8;
const SOLD: u8 = HistoryKind::Sold as u8;
const ACTIVATED: u8 = HistoryKind::Activated as u8;
const RECHARGE: u8 = HistoryKind::Recharge as u8;
const CHARGE: u8 = HistoryKind::Charge as u8;
const UNLOCK: u8 = HistoryKind::Unlock as u8;
const STATE_CHANGED: u8 = HistoryKind::StateChanged as u8;

/// The simulation of one account's lives up to now.
struct Life<'a> {
    rules: &'a Rules,
    today: NaiveDate,
    now: i64,
    account: u32,
    rows: Vec<Row>,
}

impl Life<'_> {
    fn start(&self, day: NaiveDate) -> i64 {
        self.rules.start_of_day(day).timestamp()
    }

    fn push(&mut self, at: i64, generation: u32, kind: u8, from: u8, to: u8, amount: i64) {
        self.push_with(at, generation, kind, from, to, amount, 0);
    }

    #[allow(clippy::too_many_arguments)]
    fn push_with(
        &mut self,
        at: i64,
        generation: u32,
        kind: u8,
        from: u8,
        to: u8,
        amount: i64,
        channel: u8,
    ) {
        self.rows.push(Row {
            at,
            account: self.account,
            generation: generation as u8,
            kind,
            from,
            to,
            amount,
            channel,
        });
    }

    /// An instant during day `day` (from `hour` on, within `hours`), or `None` if not yet.
    fn during(&self, day: NaiveDate, hour: i64, hours: i64, rng: &mut Rng) -> Option<i64> {
        let at = self.start(day) + hour * 3600 + rng.below((hours * 3600) as u64) as i64;
        (day <= self.today && at <= self.now).then_some(at)
    }

    /// A recharge (and the charge that follows it) on `day` from state `from`.
    fn recharge(&mut self, day: NaiveDate, generation: u32, from: u8, rng: &mut Rng) -> bool {
        let Some(at) = self.during(day, 8, 14, rng) else {
            return false;
        };
        let amount = [1000, 2000, 3000, 5000, 10_000][rng.below(5) as usize];
        // Channels: online most, then the bank, the 10011 card, the business hall.
        let channel = [4, 4, 4, 2, 2, 1, 3][rng.below(7) as usize];
        self.push_with(at, generation, RECHARGE, from, 2, amount, channel);
        // A quarter of the recharges are followed by a charge (usage) within the hour.
        let charged = at + 60 + rng.below(3600) as i64;
        if rng.chance(25) && charged <= self.now {
            self.push(
                charged,
                generation,
                CHARGE,
                2,
                2,
                100 + rng.below(900) as i64,
            );
        }
        true
    }

    /// Generation `generation`, provisioned on `provisioned`: its rows, and the account as it
    /// stands today.
    fn generation(&mut self, generation: u32, provisioned: NaiveDate, rng: &mut Rng) -> Account {
        let rules = self.rules;
        let today = self.today;
        let day = |d: NaiveDate, n: u64| d.checked_add_days(Days::new(n)).expect("date");
        let at_of = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).expect("instant");
        let provisioned_at = self
            .during(provisioned, 9, 1, rng)
            .unwrap_or(self.now.min(self.start(provisioned)));
        self.push(provisioned_at, generation, PROVISIONED, 0, 1, 0);
        let mut last_at = provisioned_at;
        if let Some(sold) = self.during(day(provisioned, 1), 9, 8, rng) {
            self.push(sold, generation, SOLD, 1, 1, 0);
            last_at = sold;
        }
        let mut account = Account {
            msisdn: Msisdn::parse(&msisdn(self.account)).expect("msisdn"),
            account_id: format!("an-{}-{generation}", self.account),
            generation,
            state: AccountState::Unactivated,
            balance: 0,
            preset_balance: 0,
            sold: true,
            initial_validity_days: rules.initial_validity_days,
            provisioned_at: at_of(provisioned_at),
            activated_at: None,
            valid_until: None,
            grace_until: None,
            lock_until: None,
            card_expiry: Some(day(provisioned, 365)),
            recycled_at: None,
            updated_at: at_of(last_at),
            expiring_notified_for: None,
        };
        let activated_on = day(provisioned, 2 + rng.below(20));
        let activation = if rng.chance(93) {
            self.during(activated_on, 10, 10, rng)
        } else {
            None
        };
        let Some(activated_at) = activation else {
            let expiry = day(provisioned, 365);
            if expiry < today {
                let at = self.start(day(expiry, 1));
                self.push(at, generation, STATE_CHANGED, 1, 5, 0);
                account.state = AccountState::Recycled;
                account.recycled_at = Some(at_of(at));
                account.updated_at = at_of(at);
            }
            return account;
        };
        self.push(activated_at, generation, ACTIVATED, 1, 2, 0);
        account.activated_at = Some(at_of(activated_at));
        account.card_expiry = None;
        let (grace_days, lock_days) = (u64::from(rules.grace_days), u64::from(rules.lock_days));
        let mut state = AccountState::Valid;
        let mut valid_until = day(activated_on, u64::from(rules.initial_validity_days));
        let mut grace_until = day(valid_until, grace_days);
        let mut lock_until = day(grace_until, lock_days);
        let loyal = rng.chance(45);
        let mut recharges_left = if loyal { u64::MAX } else { rng.below(8) };
        let mut current = activated_on;
        loop {
            match state {
                AccountState::Valid => {
                    if recharges_left > 0 {
                        let on = day(current, 25 + rng.below(40));
                        if on <= valid_until {
                            if !self.recharge(on, generation, 2, rng) {
                                break;
                            }
                            valid_until = std::cmp::max(valid_until, on) + Days::new(30);
                            valid_until = valid_until.min(day(on, 540));
                            grace_until = day(valid_until, grace_days);
                            lock_until = day(grace_until, lock_days);
                            recharges_left -= 1;
                            current = on;
                            continue;
                        }
                    }
                    let grace_from = day(valid_until, 1);
                    if grace_from > today {
                        break;
                    }
                    self.push(self.start(grace_from), generation, STATE_CHANGED, 2, 3, 0);
                    state = AccountState::Grace;
                    current = grace_from;
                }
                AccountState::Grace => {
                    if rng.chance(35) {
                        let on = day(
                            current,
                            rng.below((grace_until - current).num_days() as u64),
                        );
                        if !self.recharge(on, generation, 3, rng) {
                            break;
                        }
                        state = AccountState::Valid;
                        valid_until = day(on, 30);
                        grace_until = day(valid_until, grace_days);
                        lock_until = day(grace_until, lock_days);
                        recharges_left = if loyal { u64::MAX } else { rng.below(6) };
                        current = on;
                        continue;
                    }
                    let locked_from = day(grace_until, 1);
                    if locked_from > today {
                        break;
                    }
                    self.push(self.start(locked_from), generation, STATE_CHANGED, 3, 4, 0);
                    state = AccountState::Locked;
                    current = locked_from;
                }
                AccountState::Locked => {
                    if rng.chance(15) {
                        let on = day(current, rng.below((lock_until - current).num_days() as u64));
                        let Some(at) = self.during(on, 9, 9, rng) else {
                            break;
                        };
                        if rng.chance(60) {
                            let amount = [5000, 10_000][rng.below(2) as usize];
                            self.push(at, generation, UNLOCK, 4, 2, amount);
                            state = AccountState::Valid;
                            valid_until = day(on, 30);
                            grace_until = day(valid_until, grace_days);
                            recharges_left = if loyal { u64::MAX } else { rng.below(6) };
                        } else {
                            self.push(at, generation, UNLOCK, 4, 3, 0);
                            state = AccountState::Grace;
                            grace_until = day(on, u64::from(rules.unlock_grace_days));
                        }
                        lock_until = day(grace_until, lock_days);
                        current = on;
                        continue;
                    }
                    let recycled_from = day(lock_until, 1);
                    if recycled_from > today {
                        break;
                    }
                    let at = self.start(recycled_from);
                    self.push(at, generation, STATE_CHANGED, 4, 5, 0);
                    state = AccountState::Recycled;
                    account.recycled_at = Some(at_of(at));
                    break;
                }
                _ => break,
            }
        }
        account.state = state;
        account.valid_until = Some(valid_until);
        account.grace_until = Some(grace_until);
        account.lock_until = Some(lock_until);
        account.balance = 500 + rng.below(5000) as i64;
        // Notices already sent: the bench's server has nothing due.
        account.expiring_notified_for = Some(valid_until);
        account.updated_at = at_of(self.rows.last().map_or(provisioned_at, |r| r.at));
        account
    }
}

fn msisdn(account: u32) -> String {
    format!("8613{}", 100_000_000 + u64::from(account))
}

/// Simulates `accounts` accounts' lives up to `now`; the rows sorted by time.
fn generate(accounts: u32, now: DateTime<Utc>, rules: &Rules) -> DataSet {
    let today = rules.local_date(now);
    let first_day = today - Days::new(SPAN_DAYS);
    let mut set = DataSet {
        rows: Vec::with_capacity(accounts as usize * 11),
        accounts: Vec::with_capacity(accounts as usize),
        archived: Vec::new(),
    };
    for account in 0..accounts {
        let mut rng = Rng(u64::from(account).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let mut life = Life {
            rules,
            today,
            now: now.timestamp(),
            account,
            rows: std::mem::take(&mut set.rows),
        };
        let provisioned = first_day + Days::new(rng.below(SPAN_DAYS - 30));
        let mut generation = 1;
        let mut current = life.generation(generation, provisioned, &mut rng);
        // Half of the recycled numbers are provisioned again within 60 days.
        while current.state == AccountState::Recycled && rng.chance(50) {
            let recycled_on = current.recycled_at.map_or(today, |at| rules.local_date(at));
            let again = recycled_on + Days::new(rng.below(60));
            if again > today {
                break;
            }
            generation += 1;
            let next = life.generation(generation, again, &mut rng);
            set.archived.push(std::mem::replace(&mut current, next));
        }
        set.rows = life.rows;
        set.accounts.push(current);
    }
    // Time order, each account's rows in their own order: the ids a live service gives.
    set.rows.sort_by_key(|r| r.at);
    set
}

/// A value of a generated row.
enum Val {
    Int(i64),
    Text(String),
    Time(Option<DateTime<Utc>>),
    Date(Option<NaiveDate>),
    Bool(bool),
    Bytes(Vec<u8>),
    NullInt,
}

impl Val {
    /// Its PostgreSQL `COPY` text form.
    fn copy_text(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Val::Int(v) => {
                let _ = write!(out, "{v}");
            }
            Val::Text(s) => out.push_str(s),
            Val::Time(Some(t)) => {
                let _ = write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S+00"));
            }
            Val::Date(Some(d)) => {
                let _ = write!(out, "{d}");
            }
            Val::Bool(b) => out.push(if *b { 't' } else { 'f' }),
            Val::Bytes(b) => {
                out.push_str("\\\\x");
                for byte in b {
                    let _ = write!(out, "{byte:02x}");
                }
            }
            Val::Time(None) | Val::Date(None) | Val::NullInt => out.push_str("\\N"),
        }
    }
}

/// Where the rows go: a PostgreSQL or a SQLite connection.
enum Loader {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl Loader {
    async fn insert(&mut self, table: &str, columns: &str, rows: Vec<Vec<Val>>) {
        if rows.is_empty() {
            return;
        }
        match self {
            Loader::Postgres(conn) => {
                let mut text = String::with_capacity(rows.len() * 120);
                for row in &rows {
                    for (i, value) in row.iter().enumerate() {
                        if i > 0 {
                            text.push('\t');
                        }
                        value.copy_text(&mut text);
                    }
                    text.push('\n');
                }
                let mut copy = conn
                    .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
                    .await
                    .expect("COPY");
                copy.send(text.into_bytes()).await.expect("COPY data");
                copy.finish().await.expect("COPY end");
            }
            Loader::Sqlite(conn) => {
                let width = rows[0].len();
                let per_statement = 30_000 / width;
                let mut tx = conn.begin().await.expect("begin");
                for chunk in rows.chunks(per_statement) {
                    let one = format!("({})", vec!["?"; width].join(", "));
                    let sql = format!(
                        "INSERT INTO {table} ({columns}) VALUES {}",
                        vec![one.as_str(); chunk.len()].join(", ")
                    );
                    let mut query = sqlx::query(&sql);
                    for row in chunk {
                        for value in row {
                            query = match value {
                                Val::Int(v) => query.bind(*v),
                                Val::Text(s) => query.bind(s.as_str()),
                                Val::Time(t) => query.bind(*t),
                                Val::Date(d) => query.bind(*d),
                                Val::Bool(b) => query.bind(*b),
                                Val::Bytes(b) => query.bind(b.as_slice()),
                                Val::NullInt => query.bind(None::<i64>),
                            };
                        }
                    }
                    query.execute(&mut *tx).await.expect("INSERT");
                }
                tx.commit().await.expect("commit");
            }
        }
    }
}

const ACCOUNT_COLUMNS: &str = "msisdn, account_id, generation, state, balance, preset_balance, \
    sold, initial_validity_days, provisioned_at, activated_at, valid_until, grace_until, \
    lock_until, card_expiry, recycled_at, updated_at, next_deadline, expiring_notified_for";

fn account_values(a: &Account, rules: &Rules) -> Vec<Val> {
    vec![
        Val::Text(a.msisdn.as_str().to_owned()),
        Val::Text(a.account_id.clone()),
        Val::Int(i64::from(a.generation)),
        Val::Int(a.state as i64),
        Val::Int(a.balance),
        Val::Int(a.preset_balance),
        Val::Bool(a.sold),
        Val::Int(i64::from(a.initial_validity_days)),
        Val::Time(Some(a.provisioned_at)),
        Val::Time(a.activated_at),
        Val::Date(a.valid_until),
        Val::Date(a.grace_until),
        Val::Date(a.lock_until),
        Val::Date(a.card_expiry),
        Val::Time(a.recycled_at),
        Val::Time(Some(a.updated_at)),
        a.next_deadline(rules)
            .map_or(Val::NullInt, |d| Val::Int(d.timestamp())),
        Val::Date(a.expiring_notified_for),
    ]
}

/// Writes the data set into the (migrated) database at `url`.
async fn load(url: &str, backend: Backend, set: &DataSet, rules: &Rules) {
    let mut loader = match backend {
        Backend::Postgres => Loader::Postgres(sqlx::PgConnection::connect(url).await.expect("pg")),
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
            sqlx::query("PRAGMA synchronous = OFF")
                .execute(&mut conn)
                .await
                .expect("pragma");
            Loader::Sqlite(conn)
        }
    };
    for (table, accounts) in [
        ("accounts", &set.accounts),
        ("account_archive", &set.archived),
    ] {
        for chunk in accounts.chunks(100_000) {
            let rows = chunk.iter().map(|a| account_values(a, rules)).collect();
            loader.insert(table, ACCOUNT_COLUMNS, rows).await;
        }
    }
    let account_ids = |row: &Row| format!("an-{}-{}", row.account, row.generation);
    for (n, chunk) in set.rows.chunks(100_000).enumerate() {
        let mut history = Vec::with_capacity(chunk.len());
        let mut keys = Vec::new();
        for (i, row) in chunk.iter().enumerate() {
            let at = DateTime::<Utc>::from_timestamp(row.at, 0).expect("instant");
            let number = msisdn(row.account);
            let (actor, request_id) = match row.kind {
                STATE_CHANGED => ("sweep".to_owned(), None),
                _ => ("bench".to_owned(), Some(format!("an-{n}-{i}"))),
            };
            if let Some(id) = &request_id
                && (row.kind == RECHARGE || row.kind == UNLOCK)
            {
                let fingerprint = if row.kind == RECHARGE {
                    format!("Recharge|{number}|{}|{}|30", row.amount, row.channel)
                } else {
                    format!("Unlock|{number}|op-1|branch-1|{}", row.amount)
                };
                keys.push(vec![
                    Val::Text(id.clone()),
                    Val::Text(fingerprint),
                    Val::Bytes(vec![0; 96]),
                    Val::Time(Some(at)),
                ]);
            }
            history.push(vec![
                Val::Text(number),
                Val::Text(account_ids(row)),
                Val::Int(i64::from(row.generation)),
                Val::Time(Some(at)),
                Val::Int(i64::from(row.kind)),
                if row.from == 0 {
                    Val::NullInt
                } else {
                    Val::Int(i64::from(row.from))
                },
                Val::Int(i64::from(row.to)),
                Val::Int(row.amount),
                Val::Text(actor),
                request_id.map_or(Val::NullInt, Val::Text),
            ]);
        }
        loader
            .insert(
                "account_history",
                "msisdn, account_id, generation, at, kind, from_state, to_state, amount, actor, \
                 request_id",
                history,
            )
            .await;
        loader
            .insert(
                "idempotency_keys",
                "request_id, fingerprint, response, created_at",
                keys,
            )
            .await;
    }
    drop(loader);
    analyze(url, backend).await;
}

/// Refreshes the planner's statistics (and on PostgreSQL the visibility map), as autovacuum or
/// an operator's `ANALYZE` would after a bulk load or a migration.
async fn analyze(url: &str, backend: Backend) {
    let sql = match backend {
        Backend::Postgres => "VACUUM ANALYZE",
        Backend::Sqlite => "ANALYZE",
    };
    match backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("pg");
            sqlx::query(sql).execute(&mut conn).await.map(|_| ())
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
            sqlx::query(sql).execute(&mut conn).await.map(|_| ())
        }
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The first migration of the analytics at scale: the data set is loaded into the schema
/// before it, and the server applies it (and its backfill) when it starts, as on an upgrade.
const FIRST_SCALE_MIGRATION: i64 = 8;

/// Applies the project's migrations before version `first` to the database at `url`.
async fn migrate_before(url: &str, backend: Backend, first: i64) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(match backend {
        Backend::Postgres => "migrations/postgres",
        Backend::Sqlite => "migrations/sqlite",
    });
    let mut migrator = sqlx::migrate::Migrator::new(dir)
        .await
        .expect("the migrations");
    migrator.migrations.to_mut().retain(|m| m.version < first);
    match backend {
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.expect("pg");
            migrator.run(&pool).await
        }
        Backend::Sqlite => {
            let options = url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .expect("sqlite url")
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
            let pool = sqlx::SqlitePool::connect_with(options)
                .await
                .expect("sqlite");
            migrator.run(&pool).await
        }
    }
    .expect("migrate");
}

/// One report measured, and its baseline.
#[derive(Clone, Copy, Debug)]
enum Case {
    CompositionNow,
    /// Per day over the last N days.
    CompositionDays(u64),
    /// Flows per granularity (1 day, 2 week, 3 month) over the last 365 days.
    Flows(i32),
    /// The first page (100) of VALID accounts ending within 30 days without a recharge in 30,
    /// or of GRACE accounts ending within 30 days.
    Churn(AccountState),
    /// Every activation month of the last 24.
    Cohorts,
}

impl Case {
    fn name(&self) -> String {
        match self {
            Case::CompositionNow => "StageComposition now".into(),
            Case::CompositionDays(n) => format!("StageComposition per day, {n} days"),
            Case::Flows(g) => format!(
                "Flows per {}, 365 days",
                ["", "day", "week", "month"][*g as usize]
            ),
            Case::Churn(AccountState::Valid) => {
                "ChurnWarnings VALID ≤ 30 d, no recharge 30 d, page 1".into()
            }
            Case::Churn(_) => "ChurnWarnings GRACE ≤ 30 d, page 1".into(),
            Case::Cohorts => "Cohorts, 24 months".into(),
        }
    }

    fn key(&self) -> String {
        match self {
            Case::CompositionNow => "composition_now".into(),
            Case::CompositionDays(n) => format!("composition_days_{n}"),
            Case::Flows(g) => format!("flows_{}", ["", "day", "week", "month"][*g as usize]),
            Case::Churn(AccountState::Valid) => "churn_valid".into(),
            Case::Churn(_) => "churn_grace".into(),
            Case::Cohorts => "cohorts".into(),
        }
    }

    /// The first day the report covers.
    fn first_day(&self, today: NaiveDate) -> NaiveDate {
        match self {
            Case::CompositionDays(n) => today - Days::new(n - 1),
            Case::Cohorts => today - Days::new(SPAN_DAYS),
            _ => today - Days::new(364),
        }
    }

    /// Calls the report; returns how many entries it answered.
    async fn call(
        &self,
        client: &mut LifecycleAnalyticsClient<Channel>,
        today: NaiveDate,
    ) -> Result<usize, tonic::Status> {
        let from = self.first_day(today).to_string();
        let to = today.to_string();
        Ok(match self {
            Case::CompositionNow => {
                client
                    .stage_composition(proto::StageCompositionRequest::default())
                    .await?;
                1
            }
            Case::CompositionDays(_) => client
                .stage_composition(proto::StageCompositionRequest {
                    from_date: from,
                    to_date: to,
                })
                .await?
                .into_inner()
                .days
                .len(),
            Case::Flows(granularity) => client
                .flows(proto::FlowsRequest {
                    granularity: *granularity,
                    from_date: from,
                    to_date: to,
                })
                .await?
                .into_inner()
                .periods
                .len(),
            Case::Churn(stage) => client
                .churn_warnings(proto::ChurnWarningsRequest {
                    stage: *stage as i32,
                    within_days: 30,
                    no_recharge_days: if *stage == AccountState::Valid { 30 } else { 0 },
                    page_size: 100,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .warnings
                .len(),
            Case::Cohorts => client
                .cohorts(proto::CohortsRequest {
                    from_month: from[..7].to_owned(),
                    to_month: to[..7].to_owned(),
                })
                .await?
                .into_inner()
                .cohorts
                .len(),
        })
    }

    /// The baseline: the plain SQL aggregate closest to the report's work, with its
    /// parameters (the range's instants, or the churn window's dates).
    fn baseline(&self, today: NaiveDate, rules: &Rules) -> (&'static str, Vec<Val>) {
        let first = self.first_day(today);
        let range = vec![
            Val::Time(Some(rules.start_of_day(first))),
            Val::Time(Some(rules.end_of_day(today))),
        ];
        match self {
            Case::CompositionNow => (
                "SELECT state, COUNT(*) FROM accounts GROUP BY state",
                vec![],
            ),
            Case::CompositionDays(_) | Case::Flows(_) => (
                "SELECT kind, from_state, to_state, COUNT(*), SUM(amount) FROM account_history \
                 WHERE at >= $1 AND at < $2 GROUP BY kind, from_state, to_state",
                range,
            ),
            Case::Churn(stage) => (
                if *stage == AccountState::Valid {
                    "SELECT a.msisdn, SUM(h.amount) AS v FROM accounts a JOIN account_history h \
                     ON h.msisdn = a.msisdn AND h.generation = a.generation AND h.kind = 4 \
                     WHERE a.state = 2 AND a.valid_until >= $1 AND a.valid_until <= $2 \
                     GROUP BY a.msisdn ORDER BY v DESC, a.msisdn LIMIT 101"
                } else {
                    "SELECT a.msisdn, SUM(h.amount) AS v FROM accounts a JOIN account_history h \
                     ON h.msisdn = a.msisdn AND h.generation = a.generation AND h.kind = 4 \
                     WHERE a.state = 3 AND a.grace_until >= $1 AND a.grace_until <= $2 \
                     GROUP BY a.msisdn ORDER BY v DESC, a.msisdn LIMIT 101"
                },
                vec![
                    Val::Date(Some(today)),
                    Val::Date(Some(today + Days::new(30))),
                ],
            ),
            // The recharges of the span: what the cohorts' values add up (a join of each
            // activation to its generation's recharges takes minutes on SQLite).
            Case::Cohorts => (
                "SELECT COUNT(*), SUM(amount) FROM account_history \
                 WHERE kind = 4 AND at >= $1 AND at < $2",
                range,
            ),
        }
    }
}

/// The one number `sql` answers.
async fn count(pool: &RawPool, sql: &'static str) -> i64 {
    match pool {
        RawPool::Sqlite { readers, .. } => sqlx::query_scalar(sql).fetch_one(readers).await,
        RawPool::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs the baseline once; its seconds.
async fn run_baseline(pool: &RawPool, sql: &str, params: &[Val]) -> f64 {
    macro_rules! bound {
        ($q:expr) => {{
            let mut q = $q;
            for value in params {
                q = match value {
                    Val::Time(t) => q.bind(*t),
                    Val::Date(d) => q.bind(*d),
                    Val::Int(v) => q.bind(*v),
                    _ => unreachable!("baseline parameters are instants, dates and numbers"),
                };
            }
            q
        }};
    }
    let started = Instant::now();
    match pool {
        RawPool::Sqlite { readers, .. } => bound!(sqlx::query(sql))
            .fetch_all(readers)
            .await
            .map(|_| ()),
        RawPool::Postgres(p) => bound!(sqlx::query(sql)).fetch_all(p).await.map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("baseline {sql}: {e}"));
    started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// What generating and loading the data set took and made.
struct Loaded {
    simulate_s: f64,
    load_s: f64,
}

/// Simulates the data set and loads it into the database at `url`, migrated up to 0007.
async fn generate_and_load(args: &Args, url: &str, now: DateTime<Utc>, rules: &Rules) -> Loaded {
    eprintln!("simulating {} accounts …", args.analytics_accounts);
    let started = Instant::now();
    let set = generate(args.analytics_accounts, now, rules);
    let simulate_s = started.elapsed().as_secs_f64();
    eprintln!(
        "{} history rows, {} archived generations in {simulate_s:.1} s; loading into {:?} …",
        set.rows.len(),
        set.archived.len(),
        args.backend
    );
    migrate_before(url, args.backend, FIRST_SCALE_MIGRATION).await;
    let started = Instant::now();
    load(url, args.backend, &set, rules).await;
    let load_s = started.elapsed().as_secs_f64();
    eprintln!("loaded in {load_s:.1} s; starting the server (it migrates the rest) …");
    Loaded { simulate_s, load_s }
}

/// `ocs-bench analytics`: generate, load, serve, time every report; its JSON section.
pub async fn run(args: &Args) -> serde_json::Value {
    let rules = super::Config::default().rules().expect("default rules");
    let now = chrono::Utc::now();
    let today = rules.local_date(now);
    let (dir, url, loaded) = match &args.analytics_url {
        Some(url) => (None, url.clone(), None),
        None => {
            let (dir, url) = fresh_database(args).await;
            let loaded = generate_and_load(args, &url, now, &rules).await;
            (Some(dir), url, Some(loaded))
        }
    };
    let mut config = server_config(args, &url);
    config.sweep.scheduler = false;
    let started = Instant::now();
    let server = ServerUnderTest::start(config, 1).await;
    let migrate_s = started.elapsed().as_secs_f64();
    analyze(&url, args.backend).await;
    eprintln!("the server answered after {migrate_s:.1} s (migrations); statistics refreshed");
    let mut client = LifecycleAnalyticsClient::connect(format!("http://{}", server.addr))
        .await
        .expect("analytics client")
        .max_decoding_message_size(64 << 20);
    let pool = raw_pool(args.backend, &url, 2).await;
    let [accounts, archived, history_rows] = [
        "SELECT COUNT(*) FROM accounts",
        "SELECT COUNT(*) FROM account_archive",
        "SELECT COUNT(*) FROM account_history",
    ]
    .map(|sql| count(&pool, sql));
    let (accounts, archived, history_rows) = (accounts.await, archived.await, history_rows.await);
    let cases = [
        Case::CompositionNow,
        Case::CompositionDays(90),
        Case::CompositionDays(365),
        Case::Flows(1),
        Case::Flows(2),
        Case::Flows(3),
        Case::Churn(AccountState::Valid),
        Case::Churn(AccountState::Grace),
        Case::Cohorts,
    ];
    let load_before = load_average();
    let mut results = Vec::new();
    let mut failed = false;
    for case in cases {
        let (sql, params) = case.baseline(today, &rules);
        let (mut service, mut baseline, mut entries) = (Vec::new(), Vec::new(), 0);
        for _ in 0..args.analytics_reps {
            baseline.push(run_baseline(&pool, sql, &params).await);
            let started = Instant::now();
            match case.call(&mut client, today).await {
                Ok(n) => entries = n,
                Err(status) => {
                    eprintln!("{}: {status:?}", case.name());
                    failed = true;
                }
            }
            service.push(started.elapsed().as_secs_f64());
        }
        let (service_s, baseline_s) = (median(service), median(baseline));
        eprintln!(
            "{}: {service_s:.3} s (baseline {baseline_s:.3} s, {entries} entries)",
            case.name()
        );
        results.push((case, service_s, baseline_s, entries, sql));
    }
    let load_after = load_average();
    assert!(!failed, "a report failed (above)");
    // The generator's check: today's figure of the per-day composition is "now".
    let check = client
        .stage_composition(proto::StageCompositionRequest {
            from_date: today.to_string(),
            to_date: today.to_string(),
        })
        .await
        .expect("composition")
        .into_inner();
    let today_counts = check.days.first().and_then(|d| d.counts.as_ref());
    let consistent = today_counts == check.now.as_ref();
    if !consistent {
        eprintln!(
            "warning: today's per-day composition {today_counts:?} is not the composition now {:?}",
            check.now
        );
    }
    server.stop().await;
    drop(pool);
    match &dir {
        Some(dir) if !args.analytics_keep => remove_database(args, dir, &url).await,
        _ => eprintln!("kept: {url}"),
    }

    if !args.json {
        println!(
            "analytics, backend {:?}: {accounts} accounts ({archived} earlier generations \
             archived), {history_rows} history rows over {SPAN_DAYS} days; {}; median of {} \
             calls each; load average {load_before} before, {load_after} after; {}",
            args.backend,
            match &loaded {
                Some(l) => format!(
                    "simulated in {:.1} s, loaded in {:.1} s (schema 0001–0007), migrated by \
                     the server's start in {migrate_s:.1} s",
                    l.simulate_s, l.load_s
                ),
                None =>
                    format!("an earlier run's database; the server started in {migrate_s:.1} s"),
            },
            args.analytics_reps,
            machine()
        );
        println!("| report | service | baseline | ratio | < 2 s |");
        println!("|---|---:|---:|---:|---|");
        for (case, service_s, baseline_s, _, _) in &results {
            println!(
                "| {} | {service_s:.3} s | {baseline_s:.3} s | {:.2} | {} |",
                case.name(),
                service_s / baseline_s,
                if *service_s < GOAL_S { "yes" } else { "no" }
            );
        }
    }
    let reports: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(case, service_s, baseline_s, entries, sql)| {
            (
                case.key(),
                serde_json::json!({
                    "name": case.name(),
                    "service_s": service_s,
                    "baseline": { "sql": sql, "s": baseline_s },
                    "ratio": service_s / baseline_s,
                    "entries": entries,
                    "under_goal": *service_s < GOAL_S,
                }),
            )
        })
        .collect();
    serde_json::json!({
        "goal_s": GOAL_S,
        "accounts": accounts,
        "archived_generations": archived,
        "history_rows": history_rows,
        "span_days": SPAN_DAYS,
        "simulate_s": loaded.as_ref().map(|l| l.simulate_s),
        "load_s": loaded.as_ref().map(|l| l.load_s),
        "migrate_s": migrate_s,
        "reps": args.analytics_reps,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "today_matches_now": consistent,
        "reports": reports,
    })
}
