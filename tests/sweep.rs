//! The sweep through the real gRPC API (`AdvanceStates`), on SQLite and on PostgreSQL, with the
//! manual clock: late sweeps land every boundary at its own instant, a second sweep does
//! nothing, the counts, dry-run forecasts, VALIDITY_EXPIRING, the 540-day card life, concurrent
//! sweeps, and the `sweep_runs` record (including a failed run finished by the next one).
//!
//! `T0` is 2030-03-01 10:00 in Shanghai (02:00Z); local midnight is 16:00Z of the day before.
//! An account activated at `T0` is VALID through 2030-08-28, GRACE through 2030-11-26, LOCKED
//! through 2030-12-26 and RECYCLED from 2030-12-27 00:00 local.

#[macro_use]
mod common;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use common::{Backend, Db, TestDb, TestServer, assert_rejected, rid, ts};
use ocs_lifecycle::config::{ClockMode, Config};
use ocs_lifecycle::proto::{self, AdvanceStatesResponse, HistoryKind};
use tonic::Code;

const T0: &str = "2030-03-01T02:00:00Z";

const UNACTIVATED: i32 = proto::AccountState::Unactivated as i32;
const VALID: i32 = proto::AccountState::Valid as i32;
const GRACE: i32 = proto::AccountState::Grace as i32;
const LOCKED: i32 = proto::AccountState::Locked as i32;
const RECYCLED: i32 = proto::AccountState::Recycled as i32;

const NUMBER_RECYCLED: i32 = proto::EventType::NumberRecycled as i32;
const STATE_CHANGED: i32 = proto::EventType::StateChanged as i32;
const VALIDITY_EXPIRING: i32 = proto::EventType::ValidityExpiring as i32;

both_backends! {
    an_account_200_days_late_gets_three_transitions_at_their_own_instants,
    a_second_sweep_at_the_same_instant_changes_nothing,
    counts_are_right_for_a_mixed_population,
    a_dry_run_writes_nothing_and_forecasts_the_recycled_numbers,
    a_sweep_in_the_future_is_refused_unless_dry,
    validity_expiring_is_emitted_exactly_once,
    an_unactivated_card_is_recycled_after_540_days,
    every_run_is_recorded_in_sweep_runs,
}

fn instant(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

async fn provision(server: &TestServer, msisdn: &str) {
    server
        .accounts()
        .provision_account(proto::ProvisionAccountRequest {
            msisdn: msisdn.into(),
            sold: true,
            request_id: rid(),
            ..Default::default()
        })
        .await
        .expect("ProvisionAccount");
}

/// Provisions a sold card and activates it at the clock's current time.
async fn active(server: &TestServer, msisdn: &str) {
    provision(server, msisdn).await;
    server
        .accounts()
        .activate(proto::ActivateRequest {
            msisdn: msisdn.into(),
            request_id: rid(),
        })
        .await
        .expect("Activate");
}

async fn advance(server: &TestServer, as_of: Option<&str>, dry_run: bool) -> AdvanceStatesResponse {
    server
        .accounts()
        .advance_states(proto::AdvanceStatesRequest {
            as_of: as_of.map(ts),
            dry_run,
        })
        .await
        .unwrap_or_else(|e| panic!("AdvanceStates as of {as_of:?}: {e:?}"))
        .into_inner()
}

/// The counts of a response as (examined, to_grace, to_locked, from_locked, unactivated,
/// expiring).
fn counts(r: &AdvanceStatesResponse) -> (u64, u64, u64, u64, u64, u64) {
    (
        r.examined,
        r.to_grace,
        r.to_locked,
        r.to_recycled_from_locked,
        r.to_recycled_unactivated,
        r.expiring_notified,
    )
}

async fn state_of(server: &TestServer, msisdn: &str) -> i32 {
    let db = server.db().await;
    let stored = db.account(msisdn).await.expect("the account row");
    db.close().await;
    stored.state
}

/// Outbox rows of `msisdn` written after sequence `after`.
async fn events_of(db: &Db, msisdn: &str, after: i64) -> Vec<common::OutboxRow> {
    db.outbox()
        .await
        .into_iter()
        .filter(|e| e.msisdn == msisdn && e.sequence > after)
        .collect()
}

async fn last_sequence(db: &Db) -> i64 {
    db.outbox().await.last().map_or(0, |e| e.sequence)
}

/// Every `sweep_runs` row as (status, dry_run, examined), oldest first.
async fn sweep_runs(db: &Db) -> Vec<(String, bool, i64)> {
    let sql = "SELECT status, dry_run, examined FROM sweep_runs ORDER BY id";
    let rows: Result<Vec<(String, bool, i64)>, sqlx::Error> =
        on_pool!(db, |pool| sqlx::query_as(sql).fetch_all(pool).await);
    rows.expect("read sweep_runs")
}

async fn an_account_200_days_late_gets_three_transitions_at_their_own_instants(server: TestServer) {
    server.set_time(T0).await;
    active(&server, "8613800000001").await;
    let db = server.db().await;
    let before = last_sequence(&db).await;
    let history_before = db
        .history_count("8613800000001", HistoryKind::StateChanged as i32)
        .await;

    // valid_until 2030-08-28 + 200 days.
    server.set_time("2031-03-16T02:00:00Z").await;
    let r = advance(&server, None, false).await;
    assert_eq!(
        r.as_of,
        Some(ts("2031-03-16T02:00:00Z")),
        "unset as_of = now"
    );
    assert_eq!(counts(&r), (1, 1, 1, 1, 0, 0));
    assert_eq!(state_of(&server, "8613800000001").await, RECYCLED);

    let events = events_of(&db, "8613800000001", before).await;
    let seen: Vec<(i32, i32, i32, &str, DateTime<Utc>)> = events
        .iter()
        .map(|e| {
            (
                e.event_type,
                e.from_state,
                e.to_state,
                e.reason.as_str(),
                e.effective_at,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                STATE_CHANGED,
                VALID,
                GRACE,
                "VALIDITY_EXPIRED",
                instant("2030-08-28T16:00:00Z")
            ),
            (
                STATE_CHANGED,
                GRACE,
                LOCKED,
                "GRACE_EXPIRED",
                instant("2030-11-26T16:00:00Z")
            ),
            (
                STATE_CHANGED,
                LOCKED,
                RECYCLED,
                "LOCK_EXPIRED",
                instant("2030-12-26T16:00:00Z")
            ),
            (
                NUMBER_RECYCLED,
                LOCKED,
                RECYCLED,
                "LOCK_EXPIRED",
                instant("2030-12-26T16:00:00Z")
            ),
        ]
    );

    let history = server
        .accounts()
        .get_account_history(proto::GetAccountHistoryRequest {
            msisdn: "8613800000001".into(),
            ..Default::default()
        })
        .await
        .expect("GetAccountHistory")
        .into_inner()
        .entries;
    let swept: Vec<(i32, i32, prost_types::Timestamp, &str)> = history
        .iter()
        .filter(|h| h.kind == HistoryKind::StateChanged as i32)
        .map(|h| {
            (
                h.from_state,
                h.to_state,
                h.at.expect("at"),
                h.actor.as_str(),
            )
        })
        .collect();
    assert_eq!(
        swept,
        vec![
            (VALID, GRACE, ts("2030-08-28T16:00:00Z"), "sweep"),
            (GRACE, LOCKED, ts("2030-11-26T16:00:00Z"), "sweep"),
            (LOCKED, RECYCLED, ts("2030-12-26T16:00:00Z"), "sweep"),
        ]
    );
    assert_eq!(
        db.history_count("8613800000001", HistoryKind::StateChanged as i32)
            .await,
        history_before + 3
    );
    db.close().await;
}

async fn a_second_sweep_at_the_same_instant_changes_nothing(server: TestServer) {
    server.set_time(T0).await;
    active(&server, "8613800000001").await;
    provision(&server, "8613800000002").await;
    server.set_time("2031-09-01T02:00:00Z").await;
    let first = advance(&server, None, false).await;
    assert_eq!(counts(&first), (2, 1, 1, 1, 1, 0));

    let db = server.db().await;
    let after_first = db.counts().await;
    let rows = (
        db.raw_account("8613800000001").await,
        db.raw_account("8613800000002").await,
    );
    let again = advance(&server, Some("2031-09-01T02:00:00Z"), false).await;
    assert_eq!(
        counts(&again),
        (0, 0, 0, 0, 0, 0),
        "nothing is due any more"
    );
    assert_eq!(db.counts().await, after_first, "no history, no outbox rows");
    assert_eq!(
        (
            db.raw_account("8613800000001").await,
            db.raw_account("8613800000002").await,
        ),
        rows,
        "the accounts are untouched"
    );
    db.close().await;
}

/// A: activated at T0 (RECYCLED by S); U: an unactivated card of T0 (540 days over by S);
/// B: activated 2031-02-01 (GRACE at S); E: activated 2031-03-10 (VALID through 2031-09-06,
/// its VALIDITY_EXPIRING due 2031-08-30 00:00); F: activated 2031-08-01 (nothing due).
/// S is 2031-09-01 10:00 local.
async fn mixed_population(server: &TestServer) {
    server.set_time(T0).await;
    active(server, "8613800000001").await;
    provision(server, "8613800000002").await;
    server.set_time("2031-02-01T02:00:00Z").await;
    active(server, "8613800000003").await;
    server.set_time("2031-03-10T02:00:00Z").await;
    active(server, "8613800000004").await;
    server.set_time("2031-08-01T02:00:00Z").await;
    active(server, "8613800000005").await;
    server.set_time("2031-09-01T02:00:00Z").await;
}

async fn counts_are_right_for_a_mixed_population(server: TestServer) {
    mixed_population(&server).await;
    let r = advance(&server, None, false).await;
    // examined A U B E; to_grace A B; to_locked A; from locked A; unactivated U; expiring E.
    assert_eq!(counts(&r), (4, 2, 1, 1, 1, 1));
    assert!(r.recycled_msisdns.is_empty(), "the list is for forecasts");
    let states = [
        ("8613800000001", RECYCLED),
        ("8613800000002", RECYCLED),
        ("8613800000003", GRACE),
        ("8613800000004", VALID),
        ("8613800000005", VALID),
    ];
    for (msisdn, state) in states {
        assert_eq!(state_of(&server, msisdn).await, state, "{msisdn}");
    }
    // Per account and type, the events the counts promise, once each.
    let db = server.db().await;
    let mut by_account: BTreeMap<(String, i32), usize> = BTreeMap::new();
    for e in db.outbox().await {
        if e.event_type != STATE_CHANGED || e.from_state != UNACTIVATED || e.reason != "ACTIVATED" {
            *by_account.entry((e.msisdn, e.event_type)).or_default() += 1;
        }
    }
    let expected: BTreeMap<(String, i32), usize> = [
        (("8613800000001".to_owned(), STATE_CHANGED), 3),
        (("8613800000001".to_owned(), NUMBER_RECYCLED), 1),
        (("8613800000002".to_owned(), STATE_CHANGED), 1),
        (("8613800000002".to_owned(), NUMBER_RECYCLED), 1),
        (("8613800000003".to_owned(), STATE_CHANGED), 1),
        (("8613800000004".to_owned(), VALIDITY_EXPIRING), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_account, expected);
    db.close().await;
}

async fn a_dry_run_writes_nothing_and_forecasts_the_recycled_numbers(server: TestServer) {
    mixed_population(&server).await;
    let db = server.db().await;
    let before = (db.counts().await, sweep_runs(&db).await);
    let rows = db.raw_account("8613800000001").await;

    let forecast = advance(&server, None, true).await;
    assert!(forecast.dry_run);
    assert_eq!(
        counts(&forecast),
        (4, 2, 1, 1, 1, 1),
        "what the sweep would do"
    );
    let mut listed = forecast.recycled_msisdns.clone();
    listed.sort();
    assert_eq!(listed, vec!["8613800000001", "8613800000002"]);
    assert_eq!(
        (db.counts().await, sweep_runs(&db).await),
        before,
        "a dry run writes nothing, not even a sweep_runs row"
    );
    assert_eq!(db.raw_account("8613800000001").await, rows);

    // The real sweep agrees with the forecast.
    let real = advance(&server, None, false).await;
    assert_eq!(counts(&real), counts(&forecast));

    // A forecast of the future: by 2032-01-01 B is recycled (lock ends 2031-11-28); E is
    // not yet (lock ends 2032-01-04).
    let before = db.counts().await;
    let future = advance(&server, Some("2032-01-01T02:00:00Z"), true).await;
    assert_eq!(future.recycled_msisdns, vec!["8613800000003"]);
    assert_eq!(future.to_recycled_from_locked, 1);
    assert_eq!(db.counts().await, before);
    db.close().await;
}

async fn a_sweep_in_the_future_is_refused_unless_dry(server: TestServer) {
    server.set_time(T0).await;
    active(&server, "8613800000001").await;
    let db = server.db().await;
    let before = (db.counts().await, sweep_runs(&db).await);
    let refused = server
        .accounts()
        .advance_states(proto::AdvanceStatesRequest {
            as_of: Some(ts("2031-01-01T00:00:00Z")),
            dry_run: false,
        })
        .await;
    assert_rejected(refused, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!((db.counts().await, sweep_runs(&db).await), before);
    assert_eq!(state_of(&server, "8613800000001").await, VALID);
    let forecast = advance(&server, Some("2031-01-01T00:00:00Z"), true).await;
    assert_eq!(forecast.recycled_msisdns, vec!["8613800000001"]);
    db.close().await;
}

async fn validity_expiring_is_emitted_exactly_once(server: TestServer) {
    server.set_time(T0).await;
    active(&server, "8613800000001").await;
    // valid_until 2030-08-28: due from 2030-08-21 00:00 local = 2030-08-20T16:00Z.
    server.set_time("2030-08-20T15:59:59Z").await;
    assert_eq!(advance(&server, None, false).await.expiring_notified, 0);
    server.set_time("2030-08-20T16:00:00Z").await;
    assert_eq!(advance(&server, None, false).await.expiring_notified, 1);
    assert_eq!(advance(&server, None, false).await.expiring_notified, 0);
    server.set_time("2030-08-25T02:00:00Z").await;
    assert_eq!(advance(&server, None, false).await.expiring_notified, 0);

    let db = server.db().await;
    let notices: Vec<_> = db
        .outbox()
        .await
        .into_iter()
        .filter(|e| e.event_type == VALIDITY_EXPIRING)
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].msisdn, "8613800000001");
    assert_eq!(notices[0].effective_at, instant("2030-08-20T16:00:00Z"));
    assert_eq!((notices[0].from_state, notices[0].to_state), (VALID, VALID));
    assert_eq!(state_of(&server, "8613800000001").await, VALID);
    db.close().await;
}

async fn an_unactivated_card_is_recycled_after_540_days(server: TestServer) {
    server.set_time(T0).await;
    provision(&server, "8613800000001").await;
    // card_expiry 2031-08-23: RECYCLED from 2031-08-24 00:00 local.
    server.set_time("2031-08-23T15:59:59Z").await;
    assert_eq!(
        counts(&advance(&server, None, false).await),
        (0, 0, 0, 0, 0, 0)
    );
    server.set_time("2031-08-24T02:00:00Z").await;
    assert_eq!(
        counts(&advance(&server, None, false).await),
        (1, 0, 0, 0, 1, 0)
    );
    let db = server.db().await;
    let events = events_of(&db, "8613800000001", 0).await;
    let recycled: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == NUMBER_RECYCLED)
        .collect();
    assert_eq!(recycled.len(), 1, "{events:?}");
    assert_eq!(recycled[0].reason, "UNACTIVATED_EXPIRED");
    assert_eq!(
        (recycled[0].from_state, recycled[0].to_state),
        (UNACTIVATED, RECYCLED)
    );
    assert_eq!(recycled[0].effective_at, instant("2031-08-23T16:00:00Z"));
    assert_eq!(state_of(&server, "8613800000001").await, RECYCLED);
    db.close().await;
}

async fn every_run_is_recorded_in_sweep_runs(server: TestServer) {
    server.set_time(T0).await;
    active(&server, "8613800000001").await;
    server.set_time("2030-09-01T02:00:00Z").await;
    advance(&server, None, false).await;
    advance(&server, None, false).await;
    advance(&server, None, true).await;
    let db = server.db().await;
    assert_eq!(
        sweep_runs(&db).await,
        vec![
            ("succeeded".to_owned(), false, 1),
            ("succeeded".to_owned(), false, 0),
        ]
    );
    db.close().await;
}

// ---------------------------------------------------------------------------------------------
// Several sweeps at once, and a sweep that fails half-way
// ---------------------------------------------------------------------------------------------

fn config_with_batch(batch_size: u32) -> Config {
    let mut config = common::test_config(ClockMode::Manual);
    config.sweep.batch_size = batch_size;
    config
}

/// Two servers on one database sweep at once, in small batches: every account gets exactly
/// one transition and one event.
async fn concurrent_sweeps_transition_each_account_once(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let one = TestServer::start_with(db.clone(), config_with_batch(7)).await;
    let two = TestServer::start_with(db.clone(), config_with_batch(7)).await;
    one.set_time(T0).await;
    let accounts: Vec<String> = (0..120).map(|i| format!("86139{i:08}")).collect();
    for msisdn in &accounts {
        active(&one, msisdn).await;
    }
    // In GRACE, past the notice: one STATE_CHANGED each.
    one.set_time("2030-09-01T02:00:00Z").await;
    two.set_time("2030-09-01T02:00:00Z").await;
    let (a, b) = tokio::join!(advance(&one, None, false), advance(&two, None, false));
    assert_eq!(
        a.to_grace + b.to_grace,
        accounts.len() as u64,
        "{a:?} {b:?}"
    );
    assert_eq!(a.expiring_notified + b.expiring_notified, 0);

    let conn = db.open().await;
    let mut per_account: BTreeMap<String, usize> = BTreeMap::new();
    for e in conn.outbox().await {
        if e.event_type == STATE_CHANGED && e.from_state == VALID && e.to_state == GRACE {
            *per_account.entry(e.msisdn).or_default() += 1;
        }
    }
    assert_eq!(per_account.len(), accounts.len());
    assert!(per_account.values().all(|n| *n == 1), "{per_account:?}");
    for msisdn in &accounts {
        assert_eq!(
            conn.history_count(msisdn, HistoryKind::StateChanged as i32)
                .await,
            1
        );
    }
    conn.close().await;
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_sweeps_transition_each_account_once() {
    concurrent_sweeps_transition_each_account_once(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_sweeps_transition_each_account_once() {
    concurrent_sweeps_transition_each_account_once(Backend::Sqlite).await;
}

/// Makes every outbox insert for `msisdn` fail (a database error in the middle of a sweep).
async fn break_outbox_for(db: &TestDb, msisdn: &str) {
    let statements = match db.backend {
        Backend::Sqlite => vec![format!(
            "CREATE TRIGGER break_outbox BEFORE INSERT ON outbox WHEN NEW.msisdn = '{msisdn}' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )],
        Backend::Postgres => vec![
            format!(
                "CREATE FUNCTION break_outbox() RETURNS trigger AS $$ BEGIN \
                 IF NEW.msisdn = '{msisdn}' THEN RAISE EXCEPTION 'injected failure'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql"
            ),
            "CREATE TRIGGER break_outbox BEFORE INSERT ON outbox \
             FOR EACH ROW EXECUTE FUNCTION break_outbox()"
                .to_owned(),
        ],
    };
    execute_as_admin(db, &statements).await;
}

async fn repair_outbox(db: &TestDb) {
    let statements = match db.backend {
        Backend::Sqlite => vec!["DROP TRIGGER break_outbox".to_owned()],
        Backend::Postgres => vec!["DROP TRIGGER break_outbox ON outbox".to_owned()],
    };
    execute_as_admin(db, &statements).await;
}

async fn execute_as_admin(db: &TestDb, statements: &[String]) {
    use sqlx::Connection;
    match db.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("open SQLite read-write");
            for sql in statements {
                sqlx::query(sql).execute(&mut conn).await.expect(sql);
            }
            conn.close().await.expect("close");
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url)
                .await
                .expect("open PostgreSQL");
            for sql in statements {
                sqlx::query(sql).execute(&mut conn).await.expect(sql);
            }
            conn.close().await.expect("close");
        }
    }
}

/// A database error in the second batch: the first batch stays committed, the second is rolled
/// back, the run is marked failed, and the next run finishes the work, each event once.
async fn a_failed_sweep_rolls_back_its_batch_and_the_next_run_finishes(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let server = TestServer::start_with(db.clone(), config_with_batch(2)).await;
    server.set_time(T0).await;
    let accounts = [
        "8613800000001",
        "8613800000002",
        "8613800000003",
        "8613800000004",
    ];
    for msisdn in accounts {
        active(&server, msisdn).await;
    }
    server.set_time("2030-09-01T02:00:00Z").await;
    // Batches go in (next_deadline, msisdn) order: 1 and 2 first, then 3 and 4.
    break_outbox_for(&db, "8613800000004").await;
    let failed = server
        .accounts()
        .advance_states(proto::AdvanceStatesRequest::default())
        .await;
    assert!(failed.is_err(), "{failed:?}");
    let conn = db.open().await;
    assert_eq!(
        sweep_runs(&conn).await,
        vec![("failed".to_owned(), false, 2)],
        "the committed batch is counted"
    );
    let states = [GRACE, GRACE, VALID, VALID];
    for (msisdn, state) in accounts.iter().zip(states) {
        assert_eq!(state_of(&server, msisdn).await, state, "{msisdn}");
    }

    repair_outbox(&db).await;
    let finished = advance(&server, None, false).await;
    assert_eq!(counts(&finished), (2, 2, 0, 0, 0, 0));
    for msisdn in accounts {
        assert_eq!(state_of(&server, msisdn).await, GRACE, "{msisdn}");
        let grace_events = events_of(&conn, msisdn, 0)
            .await
            .into_iter()
            .filter(|e| e.event_type == STATE_CHANGED && e.to_state == GRACE)
            .count();
        assert_eq!(grace_events, 1, "{msisdn}");
    }
    assert_eq!(
        sweep_runs(&conn).await,
        vec![
            ("failed".to_owned(), false, 2),
            ("succeeded".to_owned(), false, 2),
        ]
    );
    // The metrics count both runs; only the succeeded one's transitions.
    let metrics = server.metrics_text().await;
    for line in [
        r#"ocs_sweep_runs_total{status="failed"} 1"#,
        r#"ocs_sweep_runs_total{status="succeeded"} 1"#,
        r#"ocs_sweep_transitions_total{transition="to_grace"} 2"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    conn.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failed_sweep_rolls_back_its_batch_and_the_next_run_finishes() {
    a_failed_sweep_rolls_back_its_batch_and_the_next_run_finishes(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failed_sweep_rolls_back_its_batch_and_the_next_run_finishes() {
    a_failed_sweep_rolls_back_its_batch_and_the_next_run_finishes(Backend::Sqlite).await;
}

// ---------------------------------------------------------------------------------------------
// The scheduler (`sweep.cron`, default 00:05 local) driven by the manual clock
// ---------------------------------------------------------------------------------------------

fn config_with_scheduler() -> Config {
    let mut config = common::test_config(ClockMode::Manual);
    config.sweep.scheduler = true;
    config
}

/// Moves the manual clock by `seconds`; returns once any sweep the move triggered committed.
async fn advance_time(server: &TestServer, seconds: i64) {
    server
        .clock()
        .advance_time(proto::AdvanceTimeRequest { seconds })
        .await
        .expect("AdvanceTime");
}

/// Crossing a boundary does nothing by itself; AdvanceTime over 00:05 local returns after the
/// sweep committed, with its events in the outbox.
async fn advance_time_over_00_05_sweeps_before_returning(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    let server = TestServer::start_with(db.clone(), config_with_scheduler()).await;
    server.set_time(T0).await;
    active(&server, "8613800000001").await;
    let conn = db.open().await;

    // 2030-08-28 00:06 local: the 00:05 sweep of that day ran (the notice, due since 08-21).
    server.set_time("2030-08-27T16:06:00Z").await;
    let notices = events_of(&conn, "8613800000001", 0)
        .await
        .into_iter()
        .filter(|e| e.event_type == VALIDITY_EXPIRING)
        .count();
    assert_eq!(notices, 1, "the catch-up sweep of the move sent the notice");

    // 2030-08-29 00:04 local: GRACE since 00:00, but no sweep yet.
    server.set_time("2030-08-28T16:04:00Z").await;
    let before = last_sequence(&conn).await;
    assert_eq!(state_of(&server, "8613800000001").await, VALID);
    assert!(events_of(&conn, "8613800000001", before).await.is_empty());

    // Over 00:05: the sweep runs and commits before AdvanceTime returns.
    advance_time(&server, 120).await;
    let events = events_of(&conn, "8613800000001", before).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.event_type, e.from_state, e.to_state, e.effective_at))
        .collect();
    assert_eq!(
        seen,
        vec![(STATE_CHANGED, VALID, GRACE, instant("2030-08-28T16:00:00Z"))]
    );
    assert_eq!(state_of(&server, "8613800000001").await, GRACE);
    let runs = sweep_runs(&conn).await;
    assert!(
        runs.iter()
            .all(|(status, dry, _)| status == "succeeded" && !dry),
        "{runs:?}"
    );
    conn.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_advance_time_over_00_05_sweeps_before_returning() {
    advance_time_over_00_05_sweeps_before_returning(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_advance_time_over_00_05_sweeps_before_returning() {
    advance_time_over_00_05_sweeps_before_returning(Backend::Postgres).await;
}

/// A sweep missed while the server was down runs at start-up; once it has run, a restart
/// before the next occurrence runs none.
async fn a_missed_sweep_runs_at_start_up(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else {
        return;
    };
    // No scheduler: a one-day validity makes the notice due at once.
    let first = TestServer::start_on(db.clone(), ClockMode::Manual).await;
    first
        .accounts()
        .provision_account(proto::ProvisionAccountRequest {
            msisdn: "8613800000001".into(),
            sold: true,
            initial_validity_days: 1,
            request_id: rid(),
            ..Default::default()
        })
        .await
        .expect("ProvisionAccount");
    first
        .accounts()
        .activate(proto::ActivateRequest {
            msisdn: "8613800000001".into(),
            request_id: rid(),
        })
        .await
        .expect("Activate");
    first.stop().await;
    let conn = db.open().await;
    assert!(sweep_runs(&conn).await.is_empty());

    let second = TestServer::start_with(db.clone(), config_with_scheduler()).await;
    // A move of zero seconds is acknowledged after the start-up catch-up has finished.
    advance_time(&second, 0).await;
    let runs = sweep_runs(&conn).await;
    assert_eq!(runs, vec![("succeeded".to_owned(), false, 1)]);
    let notices = events_of(&conn, "8613800000001", 0)
        .await
        .into_iter()
        .filter(|e| e.event_type == VALIDITY_EXPIRING)
        .count();
    assert_eq!(notices, 1);
    second.stop().await;

    let third = TestServer::start_with(db.clone(), config_with_scheduler()).await;
    advance_time(&third, 0).await;
    assert_eq!(sweep_runs(&conn).await.len(), 1, "nothing was missed");
    conn.close().await;
    third.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_missed_sweep_runs_at_start_up() {
    a_missed_sweep_runs_at_start_up(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_missed_sweep_runs_at_start_up() {
    a_missed_sweep_runs_at_start_up(Backend::Postgres).await;
}
