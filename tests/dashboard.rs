//! The operations dashboard of a real server: its store queries on SQLite and PostgreSQL,
//! `GET /api/dashboard` after real gRPC requests, clock moves and scheduled sweeps, the page
//! `GET /` as the server renders it (its data without a script), and the page rendered by a
//! real headless Chromium (`--dump-dom`), checked for the numbers; with
//! bearer tokens configured, the data needs an admin or bss token (401/403 otherwise) while
//! the page and the probes stay open, and the page sends the token of its `#token=` fragment.
//!
//! The lifecycle charts: tests/dashboard_charts.rs.
//!
//! Chromium: `chromium` on the PATH, or the program `OCS_CHROMIUM` names (tests/dashboard/
//! browser.rs). Without it the browser test prints `SKIPPED: chromium not found` and passes,
//! unless `CI=true`, where it fails. With `OCS_DASHBOARD_SCREENSHOT=PATH` it also saves a
//! screenshot of the page there (how `docs/dashboard.png` is made).

#[macro_use]
mod common;
#[path = "dashboard/browser.rs"]
mod browser;
#[path = "webhook/hook.rs"]
#[allow(dead_code)]
mod hook;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use browser::{chromium_or_skip, get_html, get_json, run_chromium, text_after};
use chrono::{DateTime, NaiveDate, Utc};
use common::{Backend, TestDb, TestServer, activate, provision, rid};
use hook::{Hook, Policy};
use ocs_lifecycle::auth::{Role, token_sha256};
use ocs_lifecycle::config::{BssConfig, ClockMode, Config, TokenEntry};
use ocs_lifecycle::lifecycle::Rules;
use ocs_lifecycle::lifecycle::TransitionReason::ValidityExpired;
use ocs_lifecycle::proto;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::store::{self, AccountStore};
use serde_json::Value;
use tonic::transport::Channel;

/// Safety bound for anything to happen; tests never assert on elapsed time.
const WAIT: Duration = Duration::from_secs(60);

both_backends! {
    recharges_today_count_from_local_midnight_inclusive_to_the_next_exclusive,
    recycles_are_grouped_by_the_day_after_the_last_day_overdue_ones_included,
    recent_sweep_runs_are_the_latest_first_and_limited,
    no_dead_letters_is_a_zero_count,
}

both_databases! {
    scenario_sqlite, scenario_postgres:
    the_dashboard_json_shows_states_recharges_sweeps_recycles_and_dead_letters,
    before_a_sweep_the_page_shows_effective_states_and_the_webhook_backlog,
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn utc(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().expect("RFC 3339 instant")
}

fn day(s: &str) -> NaiveDate {
    s.parse().expect("date")
}

async fn recharge(api: &mut AccountLifecycleClient<Channel>, msisdn: &str, amount: i64) {
    api.recharge(proto::RechargeRequest {
        msisdn: msisdn.into(),
        amount,
        channel: proto::RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: rid(),
    })
    .await
    .expect("Recharge");
}

async fn sweep_now(api: &mut AccountLifecycleClient<Channel>) {
    api.advance_states(proto::AdvanceStatesRequest {
        as_of: None,
        dry_run: false,
    })
    .await
    .expect("AdvanceStates");
}

/// The server's store, opened beside it on the same database (default rules, as the server).
async fn open_store(server: &TestServer) -> Arc<dyn AccountStore> {
    store::connect(
        &server.database_url,
        2,
        store::DEFAULT_ACQUIRE_TIMEOUT,
        Arc::new(Rules::default()),
    )
    .await
    .expect("open the store")
}

// ---------------------------------------------------------------------------------------------
// The store queries.

async fn recharges_today_count_from_local_midnight_inclusive_to_the_next_exclusive(
    server: TestServer,
) {
    let mut api = server.accounts();
    server.set_time("2030-03-01T02:00:00Z").await;
    provision(&mut api, "8613800000001", 0).await;
    activate(&mut api, "8613800000001").await;
    // 23:59:59 local (Asia/Shanghai) on 2030-03-01, then 00:00:00 local on 2030-03-02.
    server.set_time("2030-03-01T15:59:59Z").await;
    recharge(&mut api, "8613800000001", 1000).await;
    server.set_time("2030-03-01T16:00:00Z").await;
    recharge(&mut api, "8613800000001", 5000).await;
    recharge(&mut api, "8613800000001", 3000).await;
    // An unlock's recharge is not a RECHARGE row; a charge is not a recharge either.
    api.charge(proto::ChargeRequest {
        msisdn: "8613800000001".into(),
        amount: 100,
        request_id: rid(),
    })
    .await
    .expect("Charge");

    let store = open_store(&server).await;
    let rules = Rules::default();
    let march_2 = rules.start_of_day(day("2030-03-02"));
    let totals = store
        .recharge_totals(march_2, rules.end_of_day(day("2030-03-02")))
        .await
        .expect("recharge totals");
    assert_eq!((totals.count, totals.amount), (2, 8000));
    let totals = store
        .recharge_totals(rules.start_of_day(day("2030-03-01")), march_2)
        .await
        .expect("recharge totals");
    assert_eq!(
        (totals.count, totals.amount),
        (1, 1000),
        "the day before ends before its midnight"
    );
    let totals = store
        .recharge_totals(utc("2030-03-01T16:00:01Z"), utc("2030-03-03T00:00:00Z"))
        .await
        .expect("recharge totals");
    assert_eq!((totals.count, totals.amount), (0, 0), "nothing after them");
    server.stop().await;
}

async fn recycles_are_grouped_by_the_day_after_the_last_day_overdue_ones_included(
    server: TestServer,
) {
    let mut api = server.accounts();
    server.set_time("2030-03-01T02:00:00Z").await;
    // Activated with 10 days: valid through 03-11, GRACE through 06-09, LOCKED through 07-09,
    // recycled from 2030-07-10.
    for msisdn in ["8613800000001", "8613800000002"] {
        provision(&mut api, msisdn, 10).await;
        activate(&mut api, msisdn).await;
    }
    // Unactivated: card_expiry = 03-01 + 540 = 2031-08-23, recycled from 2031-08-24.
    provision(&mut api, "8613800000003", 0).await;
    // Activated with 20 days and recharged past the window.
    provision(&mut api, "8613800000004", 20).await;
    activate(&mut api, "8613800000004").await;
    recharge(&mut api, "8613800000004", 30000).await;

    let store = open_store(&server).await;
    let by_day = |through: &str| {
        let store = store.clone();
        let through = day(through);
        async move { store.recycles_by_day(through).await.expect("recycles") }
    };
    assert_eq!(by_day("2030-07-10").await, vec![(day("2030-07-10"), 2)]);
    assert_eq!(
        by_day("2030-07-09").await,
        vec![],
        "the window ends with `through`"
    );
    assert_eq!(
        by_day("2031-08-24").await,
        vec![(day("2030-07-10"), 2), (day("2031-08-24"), 1)]
    );
    assert_eq!(by_day("2031-08-23").await, vec![(day("2030-07-10"), 2)]);

    // No sweep (the test server has no scheduler): on 2030-07-12 both are still stored VALID
    // but past their recycle day; they are still listed (overdue) until a sweep recycles them.
    server.set_time("2030-07-12T02:00:00Z").await;
    assert_eq!(by_day("2030-08-01").await, vec![(day("2030-07-10"), 2)]);
    sweep_now(&mut api).await;
    assert_eq!(by_day("2030-08-01").await, vec![], "recycled by the sweep");
    assert_eq!(by_day("2031-08-24").await, vec![(day("2031-08-24"), 1)]);
    server.stop().await;
}

async fn recent_sweep_runs_are_the_latest_first_and_limited(server: TestServer) {
    let mut api = server.accounts();
    server.set_time("2030-03-01T02:00:00Z").await;
    provision(&mut api, "8613800000001", 10).await;
    activate(&mut api, "8613800000001").await;
    let store = open_store(&server).await;
    assert!(store.recent_sweep_runs(10).await.expect("runs").is_empty());

    sweep_now(&mut api).await;
    server.set_time("2030-03-12T02:00:00Z").await;
    sweep_now(&mut api).await; // VALID → GRACE
    server.set_time("2030-03-13T02:00:00Z").await;
    sweep_now(&mut api).await;

    let runs = store.recent_sweep_runs(2).await.expect("runs");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].as_of, utc("2030-03-13T02:00:00Z"));
    assert_eq!(runs[1].as_of, utc("2030-03-12T02:00:00Z"));
    assert!(runs[0].id > runs[1].id);
    let to_grace = |run: &store::SweepRun| run.counts.transitions_of(ValidityExpired);
    assert_eq!(runs[1].status, store::SweepRunStatus::Succeeded);
    assert_eq!(to_grace(&runs[1]), 1);
    assert_eq!(runs[1].counts.examined, 1);
    assert_eq!(to_grace(&runs[0]), 0);
    assert!(runs[1].finished_at.is_some());
    assert_eq!(runs[1].error, None);
    assert_eq!(store.recent_sweep_runs(10).await.expect("runs").len(), 3);
    server.stop().await;
}

async fn no_dead_letters_is_a_zero_count(server: TestServer) {
    let store = open_store(&server).await;
    let overview = store.dead_letter_overview(10).await.expect("dead letters");
    assert_eq!(overview.count, 0);
    assert!(overview.latest.is_empty());
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The scenario: one server, the dashboard read through HTTP.

const LOCKED_A: &str = "8613800000001";
const GRACE_B: &str = "8613800000002";
const GRACE_C: &str = "8613800000003";
const VALID_D: &str = "8613800000004";
const RECYCLED_E: &str = "8613800000005";
const UNACTIVATED: [&str; 2] = ["8613800000006", "8613800000007"];

/// A manual-clock server with the scheduler on (`sweep.cron` default, 00:05 Shanghai), a lock
/// period of 10 days and a card life of 130 days (so that GRACE and unactivated accounts fall
/// into the 30-day recycle window), and a BSS webhook that always fails with one attempt, so
/// that every NUMBER_RECYCLED is dead-lettered. The hook must outlive the server.
async fn scenario_server(db: Arc<TestDb>) -> (TestServer, Hook) {
    let failing: Policy = Box::new(|_| (500, Duration::ZERO));
    let hook = Hook::start(failing).await;
    let mut config = Config {
        bss: BssConfig {
            webhook_url: hook.url(),
            webhook_secret: "dashboard-test-secret".into(),
            webhook_events: vec!["NUMBER_RECYCLED".into()],
            initial_backoff_ms: 20,
            max_backoff_ms: 100,
            max_attempts: 1,
            ..BssConfig::default()
        },
        ..common::test_config(ClockMode::Manual)
    };
    config.sweep.scheduler = true;
    config.lifecycle.lock_days = 10;
    config.lifecycle.card_life_days = 130;
    (TestServer::start_with(db, config).await, hook)
}

/// Provisions on 2030-03-01 and moves the clock to 2030-06-15 10:00 local, the scheduler
/// sweeping at each move past 00:05 local:
/// - A (10 days): valid through 03-11, GRACE through 06-09, LOCKED through 06-19 → LOCKED,
///   recycled on 06-20;
/// - B, C (20 days): valid through 03-21, GRACE through 06-19 → GRACE, recycled on 06-30;
/// - D (180 days, recharged): VALID;
/// - E (1 day): valid through 03-02, lock through 06-10 → RECYCLED (its NUMBER_RECYCLED is
///   dead-lettered);
/// - two unactivated cards: card_expiry 03-01 + 130 = 07-09 → recycled on 07-10;
/// - recharges of D: 1000 on 03-01, 100 at 23:59:59 on 06-14, 5000 at 00:00:00 and 3000 at
///   10:00 on 06-15 (today: 2 recharges, 8000 fen).
async fn arrange_scenario(server: &TestServer) {
    let mut api = server.accounts();
    server.set_time("2030-03-01T02:00:00Z").await;
    for (msisdn, days) in [
        (LOCKED_A, 10),
        (GRACE_B, 20),
        (GRACE_C, 20),
        (VALID_D, 0),
        (RECYCLED_E, 1),
    ] {
        provision(&mut api, msisdn, days).await;
        activate(&mut api, msisdn).await;
    }
    for msisdn in UNACTIVATED {
        provision(&mut api, msisdn, 0).await;
    }
    recharge(&mut api, VALID_D, 1000).await;
    server.set_time("2030-06-14T15:59:59Z").await;
    recharge(&mut api, VALID_D, 100).await;
    server.set_time("2030-06-14T16:00:00Z").await;
    recharge(&mut api, VALID_D, 5000).await;
    server.set_time("2030-06-15T02:00:00Z").await;
    recharge(&mut api, VALID_D, 3000).await;

    // E's NUMBER_RECYCLED fails its one attempt (real time) and is dead-lettered.
    let db = server.db().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while db
        .scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE dead_at IS NOT NULL")
        .await
        < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the NUMBER_RECYCLED was never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.close().await;
}

async fn the_dashboard_json_shows_states_recharges_sweeps_recycles_and_dead_letters(
    db: Arc<TestDb>,
) {
    let (server, _hook) = scenario_server(db).await;
    arrange_scenario(&server).await;
    let json = get_json(&server.http_url("/api/dashboard")).await;

    assert_eq!(json["timezone"], "Asia/Shanghai");
    assert_eq!(json["today"], "2030-06-15");
    assert_eq!(json["generated_at"], "2030-06-15T10:00:00+08:00");
    let accounts: Vec<(String, i64)> = json["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| {
            (
                a["state"].as_str().expect("state").to_owned(),
                a["count"].as_i64().expect("count"),
            )
        })
        .collect();
    let expected = [
        ("UNACTIVATED", 2),
        ("VALID", 1),
        ("GRACE", 2),
        ("LOCKED", 1),
        ("RECYCLED", 1),
    ]
    .map(|(s, n)| (s.to_owned(), n));
    assert_eq!(accounts, expected);

    assert_eq!(json["recharges_today"]["count"], 2);
    assert_eq!(json["recharges_today"]["amount"], 8000);
    assert_eq!(
        json["recharges_today"]["since"],
        "2030-06-15T00:00:00+08:00"
    );

    assert_eq!(json["next_sweep"]["scheduler"], true);
    assert_eq!(json["next_sweep"]["cron"], "0 5 0 * * *");
    assert_eq!(json["next_sweep"]["at"], "2030-06-16T00:05:00+08:00");

    // The start-up catch-up, then one per move past 00:05 local (the move to local midnight
    // 06-15 passes none).
    let sweeps = json["recent_sweeps"].as_array().expect("recent sweeps");
    assert_eq!(sweeps.len(), 4, "{sweeps:#?}");
    assert_eq!(sweeps[0]["as_of"], "2030-06-15T10:00:00+08:00");
    assert_eq!(sweeps[0]["to_grace"], 0);
    assert_eq!(sweeps[1]["as_of"], "2030-06-14T23:59:59+08:00");
    assert_eq!(sweeps[1]["status"], "succeeded");
    assert_eq!(sweeps[1]["to_grace"], 4, "A, B, C, E");
    assert_eq!(sweeps[1]["to_locked"], 2, "A, E");
    assert_eq!(sweeps[1]["to_recycled_from_locked"], 1, "E");
    assert_eq!(sweeps[1]["to_recycled_unactivated"], 0);
    assert_eq!(sweeps[2]["as_of"], "2030-03-01T10:00:00+08:00");
    for sweep in sweeps {
        assert_eq!(sweep["status"], "succeeded");
        assert!(sweep["finished_at"].is_string());
    }

    let recycles = &json["upcoming_recycles"];
    assert_eq!(recycles["from"], "2030-06-15");
    assert_eq!(recycles["through"], "2030-07-14");
    assert_eq!(recycles["overdue"], 0);
    let days = recycles["days"].as_array().expect("days");
    assert_eq!(days.len(), 30);
    let nonzero: Vec<(String, i64)> = days
        .iter()
        .filter(|d| d["count"].as_i64() != Some(0))
        .map(|d| {
            (
                d["date"].as_str().expect("date").to_owned(),
                d["count"].as_i64().expect("count"),
            )
        })
        .collect();
    let expected =
        [("2030-06-20", 1), ("2030-06-30", 2), ("2030-07-10", 2)].map(|(d, n)| (d.to_owned(), n));
    assert_eq!(nonzero, expected);

    let dead = &json["dead_letters"];
    assert_eq!(dead["count"], 1);
    let latest = dead["latest"].as_array().expect("latest dead letters");
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0]["event_type"], "NUMBER_RECYCLED");
    assert_eq!(latest[0]["msisdn"], "*********0005", "masked");
    assert_eq!(latest[0]["attempts"], 1);
    assert!(
        latest[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{latest:?}"
    );

    // The service itself: version, the manual clock, readiness, the last sweep's duration.
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["clock"], "manual");
    assert_eq!(
        json["readiness"],
        serde_json::json!({"ready": true, "reason": null})
    );
    assert!(
        json["last_sweep_seconds"]
            .as_f64()
            .is_some_and(|s| s >= 0.0),
        "{json}"
    );
    // Everything was swept as of now: the effective states are the stored ones.
    assert_eq!(json["accounts_now"], json["accounts"]);
    // The webhook's one event was dead-lettered: nothing is waiting.
    assert_eq!(
        json["webhook"],
        serde_json::json!({"lag_seconds": 0.0, "backlog": 0, "oldest_undelivered": null})
    );
    // What the next sweep would do, the VALIDITY_EXPIRING notices last.
    let names: Vec<&str> = json["next_sweep"]["forecast"]
        .as_array()
        .expect("the next sweep's forecast")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "to_grace",
            "to_locked",
            "to_recycled_from_locked",
            "to_recycled_unactivated",
            "expiring_notified"
        ]
    );

    // Read-only: reading the dashboard (JSON, page and part) wrote nothing.
    let before = server.db().await.counts().await;
    get_json(&server.http_url("/api/dashboard")).await;
    get_html(&server.http_url("/")).await;
    get_html(&server.http_url("/api/dashboard/html")).await;
    assert_eq!(server.db().await.counts().await, before);
    server.stop().await;
}

/// No sweep runs (scheduler off): on 2030-03-20 an account valid through 03-11 is stored VALID
/// but GRACE now, and its activation's STATE_CHANGED waits for a BSS that answers 500.
async fn before_a_sweep_the_page_shows_effective_states_and_the_webhook_backlog(db: Arc<TestDb>) {
    let failing: Policy = Box::new(|_| (500, Duration::ZERO));
    let hook = Hook::start(failing).await;
    let config = Config {
        bss: BssConfig {
            webhook_url: hook.url(),
            webhook_secret: "dashboard-test-secret".into(),
            webhook_events: vec!["STATE_CHANGED".into()],
            initial_backoff_ms: 60_000,
            max_backoff_ms: 60_000,
            max_attempts: 100,
            ..BssConfig::default()
        },
        ..common::test_config(ClockMode::Manual)
    };
    let server = TestServer::start_with(db, config).await;
    let mut api = server.accounts();
    server.set_time("2030-03-01T02:00:00Z").await;
    provision(&mut api, "8613800000001", 10).await;
    activate(&mut api, "8613800000001").await;
    provision(&mut api, "8613800000002", 0).await;
    server.set_time("2030-03-20T02:00:00Z").await;

    let json = get_json(&server.http_url("/api/dashboard")).await;
    let counts = |key: &str| -> Vec<i64> {
        json[key]
            .as_array()
            .expect(key)
            .iter()
            .map(|c| c["count"].as_i64().expect("count"))
            .collect()
    };
    // UNACTIVATED, VALID, GRACE, LOCKED, RECYCLED.
    assert_eq!(counts("accounts"), [1, 1, 0, 0, 0]);
    assert_eq!(counts("accounts_now"), [1, 0, 1, 0, 0]);
    assert_eq!(json["next_sweep"]["scheduler"], false);
    assert_eq!(json["next_sweep"]["forecast"], Value::Null);
    assert_eq!(json["last_sweep_seconds"], Value::Null);
    // One event waiting since the activation, 19 days ago on the service clock.
    assert_eq!(json["webhook"]["backlog"], 1);
    assert_eq!(json["webhook"]["lag_seconds"], 19.0 * 86_400.0);
    assert_eq!(
        json["webhook"]["oldest_undelivered"],
        "2030-03-01T10:00:00+08:00"
    );

    // The page arrives with the same numbers: no script has to run for the first view.
    let page = get_html(&server.http_url("/")).await;
    assert!(page.contains("<body data-loaded=\"true\">"), "{page}");
    assert!(!page.contains("id=\"waiting\""), "no placeholder: {page}");
    for (marker, text) in [
        ("id=\"state-VALID\"", "1"),
        ("id=\"now-VALID\"", "0"),
        ("id=\"now-GRACE\"", "1"),
        ("id=\"now-total\"", "2"),
        ("id=\"webhook-backlog\"", "1"),
        ("id=\"next-sweep\"", "scheduler off"),
        ("id=\"clock-now\"", "2030-03-20 10:00:00"),
        ("id=\"readiness\"", "ready"),
        ("id=\"version\"", env!("CARGO_PKG_VERSION")),
    ] {
        assert_eq!(text_after(&page, marker), text, "{marker}");
    }
    // The part the script fetches is the page's data part.
    let part = get_html(&server.http_url("/api/dashboard/html")).await;
    assert!(page.contains(&part), "the page holds the part: {part}");
    server.stop().await;
    drop(hook);
}

// ---------------------------------------------------------------------------------------------
// The page in a real browser.

/// The `<g class="recycle-day" …>…</g>` element of `date`.
fn recycle_bar<'a>(dom: &'a str, date: &str) -> &'a str {
    let marker = format!("data-date=\"{date}\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no bar for {date}:\n{dom}"));
    let end = start + dom[start..].find("</g>").expect("end of the bar");
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_the_numbers_in_a_real_browser() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let db = TestDb::create(Backend::Sqlite).await.expect("SQLite");
    let (server, _hook) = scenario_server(db).await;
    arrange_scenario(&server).await;
    let url = server.http_url("/");

    let dom = run_chromium(
        chromium.clone(),
        vec!["--virtual-time-budget=5000".into(), "--dump-dom".into()],
        url.clone(),
    )
    .await;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load its data:\n{dom}"
    );
    assert_eq!(
        text_after(&dom, "id=\"error\""),
        "",
        "the error banner is empty"
    );

    for (state, count) in [
        ("UNACTIVATED", "2"),
        ("VALID", "1"),
        ("GRACE", "2"),
        ("LOCKED", "1"),
        ("RECYCLED", "1"),
    ] {
        assert_eq!(
            text_after(&dom, &format!("id=\"state-{state}\"")),
            count,
            "{state}"
        );
    }
    assert_eq!(text_after(&dom, "id=\"state-total\""), "7");
    assert_eq!(text_after(&dom, "id=\"recharges-count\""), "2");
    assert_eq!(text_after(&dom, "id=\"recharges-amount\""), "80.00 CNY");
    assert_eq!(text_after(&dom, "id=\"next-sweep\""), "2030-06-16 00:05:00");
    assert_eq!(text_after(&dom, "id=\"timezone\""), "Asia/Shanghai");
    assert_eq!(text_after(&dom, "id=\"today\""), "2030-06-15");

    // The recent sweeps, the latest first.
    assert_eq!(dom.matches("class=\"sweep-row\"").count(), 4, "{dom}");
    let first_sweep = &dom[dom.find("class=\"sweep-row\"").expect("a sweep row")..];
    let first_sweep = &first_sweep[..first_sweep.find("</tr>").expect("end of row")];
    assert!(first_sweep.contains("2030-06-15 10:00:00"), "{first_sweep}");
    assert!(first_sweep.contains("succeeded"), "{first_sweep}");

    // The recycle chart: 30 days, three bars with their counts.
    assert_eq!(dom.matches("class=\"recycle-day\"").count(), 30);
    assert_eq!(dom.matches("class=\"bar\"").count(), 3, "{dom}");
    for (date, count) in [
        ("2030-06-20", "1"),
        ("2030-06-30", "2"),
        ("2030-07-10", "2"),
    ] {
        let bar = recycle_bar(&dom, date);
        assert!(bar.contains(&format!("data-count=\"{count}\"")), "{bar}");
        assert!(bar.contains("class=\"bar\""), "{bar}");
        assert_eq!(text_after(bar, "class=\"bar-count\""), count, "{bar}");
    }
    let empty = recycle_bar(&dom, "2030-06-21");
    assert!(empty.contains("data-count=\"0\"") && !empty.contains("class=\"bar\""));
    assert_eq!(text_after(&dom, "id=\"recycles-total\""), "5");
    assert_eq!(text_after(&dom, "id=\"recycles-overdue\""), "0");

    assert_eq!(text_after(&dom, "id=\"dead-count\""), "1");
    assert_eq!(dom.matches("class=\"dead-letter-row\"").count(), 1);
    assert!(dom.contains("*********0005"));
    // The manual clock says so, with its time.
    assert_eq!(text_after(&dom, "id=\"clock-now\""), "2030-06-15 10:00:00");

    // A plain headless run (no time for the page's own fetches) sees the same first view:
    // the server rendered it.
    let static_dom = run_chromium(chromium.clone(), vec!["--dump-dom".into()], url.clone()).await;
    for marker in [
        "id=\"state-total\"",
        "id=\"recharges-count\"",
        "id=\"dead-count\"",
    ] {
        assert_eq!(
            text_after(&static_dom, marker),
            text_after(&dom, marker),
            "{marker}"
        );
    }
    assert_eq!(static_dom.matches("class=\"recycle-day\"").count(), 30);
    assert!(!static_dom.contains("id=\"waiting\""), "{static_dom}");
    // The lifecycle charts are in the first view too (their figures: tests/dashboard_charts.rs).
    assert_eq!(static_dom.matches("class=\"composition-day\"").count(), 30);
    assert_eq!(static_dom.matches("class=\"flow-week\"").count(), 12);
    assert_eq!(text_after(&static_dom, "id=\"latest-GRACE\""), "2");

    if let Some(path) = std::env::var_os("OCS_DASHBOARD_SCREENSHOT").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        let path = std::path::absolute(&path).expect("screenshot path");
        run_chromium(
            chromium,
            vec![
                "--virtual-time-budget=5000".into(),
                "--hide-scrollbars".into(),
                "--window-size=1400,2200".into(),
                // Every tile painted before the shot (a plain run can cut the last rows).
                "--run-all-compositor-stages-before-draw".into(),
                format!("--screenshot={}", path.display()),
            ],
            url,
        )
        .await;
        assert!(path.is_file(), "no screenshot at {}", path.display());
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// With bearer tokens configured.

const BILLING: &str = "ocs_test-billing-token";
const HALL: &str = "ocs_test-business-hall-token";
const BSS: &str = "ocs_test-bss-token";
const ADMIN: &str = "ocs_test-admin-token";

/// A manual-clock server with one token per role, on a fresh SQLite database.
async fn server_with_tokens() -> TestServer {
    let mut config = common::test_config(ClockMode::Manual);
    config.auth.tokens = [
        (BILLING, "billing-gw", Role::Billing),
        (HALL, "hall-7", Role::BusinessHall),
        (BSS, "bss-1", Role::Bss),
        (ADMIN, "ops", Role::Admin),
    ]
    .into_iter()
    .map(|(token, name, role)| TokenEntry {
        name: name.into(),
        role,
        sha256: token_sha256(token),
    })
    .collect();
    let db = TestDb::create(Backend::Sqlite).await.expect("SQLite");
    TestServer::start_with(db, config).await
}

/// GET `url` with `authorization` as the header: (status, WWW-Authenticate, body).
async fn get_authorized(url: &str, authorization: Option<&str>) -> (u16, String, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(value) = authorization {
        request = request.header(reqwest::header::AUTHORIZATION, value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, challenge, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_data_needs_an_admin_or_bss_token_and_the_page_and_probes_stay_open() {
    let server = server_with_tokens().await;
    let data = server.http_url("/api/dashboard");
    let refusals = [
        (None, 401, "TOKEN_MISSING"),
        (
            Some("Basic dXNlcjpwdw==".to_owned()),
            401,
            "TOKEN_MALFORMED",
        ),
        (
            Some("Bearer ocs_test-unknown".to_owned()),
            401,
            "TOKEN_INVALID",
        ),
        (Some(format!("Bearer {BILLING}")), 403, "ROLE_NOT_ALLOWED"),
        (Some(format!("Bearer {HALL}")), 403, "ROLE_NOT_ALLOWED"),
    ];
    for (authorization, expected, reason) in refusals {
        let (status, challenge, body) = get_authorized(&data, authorization.as_deref()).await;
        assert_eq!(status, expected, "{authorization:?}: {body}");
        let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(json["reason"], reason, "{authorization:?}: {body}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        assert!(
            json.get("accounts").is_none(),
            "no data in a refusal: {body}"
        );
        let expected_challenge = if expected == 401 {
            "Bearer realm=\"ocs-lifecycle\""
        } else {
            ""
        };
        assert_eq!(challenge, expected_challenge, "{authorization:?}");
    }
    for token in [ADMIN, BSS] {
        let (status, _, body) = get_authorized(&data, Some(&format!("Bearer {token}"))).await;
        assert_eq!(status, 200, "{token}: {body}");
        let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(json["accounts"].as_array().map(Vec::len), Some(5), "{body}");
    }
    // The page is static code without data; the probes and the metrics need no token.
    let (status, _, page) = get_authorized(&server.http_url("/"), None).await;
    assert_eq!(status, 200);
    assert_eq!(page, ocs_lifecycle::ops::dashboard::PAGE);
    for (path, starts_with) in [
        ("/healthz", "ok"),
        ("/readyz", "ready"),
        ("/metrics", "# HELP"),
    ] {
        let (status, _, body) = get_authorized(&server.http_url(path), None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.starts_with(starts_with), "{path}: {body}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_sends_the_token_of_its_fragment_and_asks_for_one_without() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let server = server_with_tokens().await;
    let mut request = tonic::Request::new(proto::ProvisionAccountRequest {
        msisdn: "8613900000042".into(),
        sold: true,
        request_id: rid(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("metadata"),
    );
    server
        .accounts()
        .provision_account(request)
        .await
        .expect("provision");
    let dump = |url: String| {
        run_chromium(
            chromium.clone(),
            vec!["--virtual-time-budget=5000".into(), "--dump-dom".into()],
            url,
        )
    };

    let dom = dump(server.http_url(&format!("/#token={BSS}"))).await;
    assert!(dom.contains("data-loaded=\"true\""), "not loaded:\n{dom}");
    assert_eq!(text_after(&dom, "id=\"state-UNACTIVATED\""), "1");
    assert!(dom.contains("<form id=\"login\" hidden"), "{dom}");
    assert!(!dom.contains(BSS), "the token is not in the page");

    let dom = dump(server.http_url("/")).await;
    assert!(!dom.contains("data-loaded"), "{dom}");
    assert!(dom.contains("data-auth=\"TOKEN_MISSING\""), "{dom}");
    assert!(
        !dom.contains("<form id=\"login\" hidden"),
        "the form is shown: {dom}"
    );
    assert!(
        text_after(&dom, "id=\"error\"").contains("bearer token"),
        "{dom}"
    );

    let dom = dump(server.http_url(&format!("/#token={BILLING}"))).await;
    assert!(!dom.contains("data-loaded"), "{dom}");
    assert!(dom.contains("data-auth=\"ROLE_NOT_ALLOWED\""), "{dom}");
    server.stop().await;
}
