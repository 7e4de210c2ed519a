//! Crashes with real processes and real databases (issue 7): `ocs-lifecycle serve` killed with
//! SIGKILL during concurrent recharges (SQLite: with small groups of the writer's group commit,
//! and while groups of 32 or more are in flight; PostgreSQL: with two group commit writers while
//! groups of 16 or more are in flight) and while webhook deliveries are in flight (SQLite and the
//! shared PostgreSQL), then restarted on the same database.
//!
//! Storage faults are in tests/faults_storage.rs. No test asserts on elapsed time; every wait
//! has a generous safety bound.

#[allow(unused_macros)]
#[macro_use]
mod common;
#[allow(dead_code)]
#[path = "webhook/hook.rs"]
mod hook;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::faults::{
    SAFETY, assert_recharges_applied_once, integrity_check, join_workers, open_sqlite,
    provision_cards, recharge, serve, serve_sqlite, set_time, valid_account, valid_accounts,
    wait_until, webhook_env,
};
use common::process::{Log, ServeCommand, Served};
use common::{Backend, TestDb};
use hook::{Hook, Policy, Received, UNTIL_HANGUP};
use ocs_lifecycle::proto::AdvanceStatesRequest;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;

// ---------------------------------------------------------------------------------------------
// SIGKILL during recharges.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_serve_killed_during_recharges_loses_no_acknowledged_recharge() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db_path = dir.path().join("ocs.db");
    let serve = serve_sqlite(dir.path(), &db_path);
    let database = Database::Sqlite(&db_path);
    killed_during_recharges(&serve, database, 6, 1, |acked, _| acked >= 60).await;
}

/// Mutations committed together at most in the next test: groups that large are in flight.
const LARGE_GROUP: usize = 64;

/// The same with large groups in flight: 96 concurrent callers, a writer that waits 5 ms for
/// more mutations and commits up to 64 at once; the kill comes once the server has logged a
/// group of at least 32 and 60 recharges are acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_serve_killed_while_large_groups_are_in_flight_loses_no_acknowledged_recharge() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db_path = dir.path().join("ocs.db");
    let mut serve = serve_sqlite(dir.path(), &db_path).with_env([
        ("OCS_GROUP_COMMIT_MAX", LARGE_GROUP.to_string()),
        ("OCS_GROUP_COMMIT_WAIT_US", "5000".to_owned()),
    ]);
    serve.rust_log = "info,ocs_lifecycle::store::group=debug";
    let large = |acked: usize, log: &str| acked >= 60 && largest_group(log) >= LARGE_GROUP / 2;
    killed_during_recharges(&serve, Database::Sqlite(&db_path), 24, 4, large).await;
}

/// The same on PostgreSQL with two group commit writers (each MSISDN to one of them): 96
/// callers, writers that wait 5 ms for more and commit up to 64 at once; the kill comes once a
/// group of at least 16 is logged and 60 recharges are acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_serve_killed_while_groups_are_in_flight_loses_no_acknowledged_recharge() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut serve = serve(dir.path(), &db.url).with_env([
        ("OCS_GROUP_COMMIT_WRITERS", "2".to_owned()),
        ("OCS_GROUP_COMMIT_MAX", LARGE_GROUP.to_string()),
        ("OCS_GROUP_COMMIT_WAIT_US", "5000".to_owned()),
    ]);
    serve.rust_log = "info,ocs_lifecycle::store::group=debug";
    let large = |acked: usize, log: &str| acked >= 60 && largest_group(log) >= 16;
    killed_during_recharges(&serve, Database::Postgres(&db), 24, 4, large).await;
}

/// Where the killed server kept its data.
#[derive(Clone, Copy)]
enum Database<'a> {
    Sqlite(&'a Path),
    Postgres(&'a TestDb),
}

impl Database<'_> {
    /// Opens the database directly; a SQLite file must pass its integrity check first (before
    /// any recovery by the service).
    async fn checked(self) -> common::Db {
        match self {
            Database::Sqlite(path) => {
                assert_eq!(integrity_check(path).await, "ok");
                open_sqlite(path).await
            }
            Database::Postgres(db) => db.open().await,
        }
    }
}

/// The largest group the writer logged ("group committed mutations=N").
fn largest_group(log: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("group committed"))
        .filter_map(|line| line.split("mutations=").nth(1))
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// `serve` killed with SIGKILL while `accounts × per_account` callers recharge (each stops at its
/// first error), once `kill_when(acknowledged so far, the server's log)` holds: every
/// acknowledged recharge is in the file exactly once, each balance is the sum of its recharges,
/// and after a restart an acknowledged recharge is a replay.
async fn killed_during_recharges(
    serve: &ServeCommand,
    database: Database<'_>,
    accounts: usize,
    per_account: usize,
    kill_when: impl Fn(usize, &str) -> bool,
) {
    let mut served = Served::spawn(serve, Log::Collected);
    let channel = served.serving(SAFETY).await;
    let mut client = AccountLifecycleClient::new(channel.clone());
    let accounts = valid_accounts(&mut client, "861380000", accounts).await;

    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..accounts.len() * per_account)
        .map(|worker| {
            let mut client = AccountLifecycleClient::new(channel.clone());
            let msisdn = accounts[worker % accounts.len()].clone();
            let (acked, acked_count) = (acked.clone(), acked_count.clone());
            tokio::spawn(async move {
                for i in 1.. {
                    let request_id = format!("k{worker}-{i}");
                    let amount = 1000 + i64::from(i % 500);
                    match client
                        .recharge(recharge(&msisdn, amount, &request_id))
                        .await
                    {
                        Ok(_) => {
                            acked
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(request_id, (msisdn.clone(), amount));
                            acked_count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let progressed = || kill_when(acked_count.load(Ordering::Relaxed), &served.log());
    let what = "the recharges did not progress";
    wait_until(what, Duration::from_millis(10), || served.log(), progressed).await;
    served.kill();
    join_workers(workers, "a worker did not stop after the kill", "worker").await;
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();

    // The database opens cleanly, before any recovery by the service.
    let direct = database.checked().await;
    assert_recharges_applied_once(&direct, &acked, &accounts).await;
    direct.close().await;

    // The restarted service serves the same data: an acknowledged recharge is a replay.
    let mut served = Served::spawn(serve, Log::Collected);
    let channel = served.serving(SAFETY).await;
    let mut client = AccountLifecycleClient::new(channel);
    let (request_id, (msisdn, amount)) = acked.iter().next().expect("a recharge was acked");
    let replay = client
        .recharge(recharge(msisdn, *amount, request_id))
        .await
        .expect("replay after the restart")
        .into_inner();
    assert!(
        replay.replayed,
        "{request_id} was committed before the kill"
    );
    let direct = database.checked().await;
    assert_recharges_applied_once(&direct, &acked, &accounts).await;
    direct.close().await;
    served.kill();
    database.checked().await.close().await;
}

// ---------------------------------------------------------------------------------------------
// SIGKILL during webhook delivery.

/// Unactivated cards provisioned at `CARD_T0` die after 540 days; the sweep at `CARD_T1`
/// recycles them: one STATE_CHANGED and one NUMBER_RECYCLED event each.
const CARD_T0: &str = "2030-03-01T02:00:00Z";
const CARD_T1: &str = "2031-09-01T02:00:00Z";
/// Cards recycled: twice as many events.
const WEBHOOK_CARDS: usize = 200;
/// The hook answers each POST after this delay, so deliveries are in flight at the kill.
const HOOK_DELAY: Duration = Duration::from_millis(80);
/// Before the kill the hook answers this many POSTs (3/4 of the events) and holds the later
/// ones until the client hangs up, so the kill comes before every event is delivered however
/// late it comes; the test kills once a quarter is answered.
const ANSWERED_BEFORE_THE_KILL: usize = 2 * WEBHOOK_CARDS * 3 / 4;
/// A generous bound on the hook finishing the requests it was handling at the kill (each takes
/// `HOOK_DELAY` and a probe of the connection).
const HOOK_IDLE_LIMIT: Duration = Duration::from_secs(30);
/// A card activated after everything is delivered: its one STATE_CHANGED event.
const MARKER_MSISDN: &str = "8613690000000";

/// Answers after [`HOOK_DELAY`], the first `answers` POSTs only; holds the later ones.
fn answering_at_most(answers: usize) -> Policy {
    let mut calls = 0;
    Box::new(move |_| {
        calls += 1;
        if calls <= answers {
            (200, HOOK_DELAY)
        } else {
            (200, UNTIL_HANGUP)
        }
    })
}

/// (sequence, event_id, msisdn) of the outbox events the webhook sends.
async fn webhook_events(db: &common::Db) -> Vec<(i64, String, String)> {
    let (recycled, changed) = (
        ocs_lifecycle::proto::EventType::NumberRecycled as i32,
        ocs_lifecycle::proto::EventType::StateChanged as i32,
    );
    db.rows(&format!(
        "SELECT sequence, event_id, msisdn FROM outbox WHERE event_type IN ({recycled}, \
         {changed}) ORDER BY sequence"
    ))
    .await
}

/// event_id → delivered, of every `webhook_deliveries` row.
async fn delivery_rows(db: &common::Db) -> BTreeMap<String, bool> {
    let sql = "SELECT event_id, delivered_at IS NOT NULL FROM webhook_deliveries";
    db.rows::<(String, bool)>(sql).await.into_iter().collect()
}

fn counts(ids: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id.clone()).or_insert(0) += 1;
    }
    counts
}

/// `serve --clock manual` on `database_url` with its webhook pointed at `hook`.
fn serve_with_webhook(dir: &Path, database_url: &str, hook: &Hook) -> ServeCommand {
    ServeCommand {
        clock: "manual",
        ..serve(dir, database_url)
    }
    .with_env(webhook_env(hook.url()))
}

async fn serve_killed_during_webhook_delivery_loses_no_event(db: Arc<TestDb>) {
    let hook = Hook::start(answering_at_most(ANSWERED_BEFORE_THE_KILL)).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let serve = serve_with_webhook(dir.path(), &db.url, &hook);
    let mut served = Served::spawn(&serve, Log::Collected);
    let channel = served.serving(SAFETY).await;
    set_time(&channel, CARD_T0).await;
    provision_cards(&channel, WEBHOOK_CARDS).await;
    set_time(&channel, CARD_T1).await;
    let swept = AccountLifecycleClient::new(channel.clone())
        .advance_states(AdvanceStatesRequest {
            as_of: None,
            dry_run: false,
        })
        .await
        .expect("AdvanceStates")
        .into_inner();
    assert_eq!(swept.to_recycled_unactivated, WEBHOOK_CARDS as u64);
    let check = db.open().await;
    let events = webhook_events(&check).await;
    assert_eq!(events.len(), 2 * WEBHOOK_CARDS, "two events per card");
    let all: BTreeSet<String> = events.iter().map(|e| e.1.clone()).collect();

    // Kill once a quarter has been answered: deliveries are in flight then (posted and not
    // answered, or answered and not yet recorded; the test prints how many).
    let quarter = || hook.answered().len() >= all.len() / 4;
    let what = "the webhook did not deliver";
    wait_until(what, Duration::from_millis(5), || served.log(), quarter).await;
    served.kill();
    // The hook finishes what it was handling: an answer written before the kill is recorded
    // by then; a request of the dead client (one handled now, or one still arriving) finds
    // its connection closed after `HOOK_DELAY` and is not answered. So the snapshot is final.
    let idle_after_kill = hook.wait_idle(HOOK_IDLE_LIMIT).await;
    let answered_at_kill = counts(&hook.answered());
    let seen_at_kill: BTreeSet<String> = hook.seen().iter().map(Received::event_id).collect();
    let delivered_at_kill: BTreeSet<String> = delivery_rows(&check)
        .await
        .into_iter()
        .filter_map(|(id, delivered)| delivered.then_some(id))
        .collect();
    assert!(
        delivered_at_kill.len() < all.len(),
        "the kill came after every delivery"
    );
    for id in &delivered_at_kill {
        assert!(
            answered_at_kill.contains_key(id),
            "{id} recorded as delivered but never answered by the BSS"
        );
    }
    // Confirmed by the BSS, not yet recorded: the only events that may arrive twice.
    let unrecorded: BTreeSet<String> = answered_at_kill
        .keys()
        .filter(|id| !delivered_at_kill.contains(*id))
        .cloned()
        .collect();
    // Posted but not answered before the kill.
    let unanswered = seen_at_kill
        .iter()
        .filter(|id| !answered_at_kill.contains_key(*id))
        .count();

    // A new process on the same database delivers the rest.
    hook.set_policy(answering_at_most(usize::MAX));
    let serve = serve_with_webhook(dir.path(), &db.url, &hook);
    let mut served = Served::spawn(&serve, Log::Collected);
    let channel = served.serving(SAFETY).await;
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        let received: BTreeSet<String> = hook.answered().into_iter().collect();
        let rows = delivery_rows(&check).await;
        let done = received.is_superset(&all)
            && rows.len() == all.len()
            && rows.values().all(|delivered| *delivered);
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every event was delivered after the restart: {} of {} answered, {} of {} rows \
             delivered\n{}",
            received.intersection(&all).count(),
            all.len(),
            rows.values().filter(|d| **d).count(),
            rows.len(),
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more is sent: a marker event emitted now is delivered by a later turn of the
    // worker, which would have sent anything still due with it or before it.
    let settled = hook.seen().len();
    valid_account(&mut AccountLifecycleClient::new(channel), MARKER_MSISDN).await;
    let marker: Vec<(String,)> = check
        .rows(&format!(
            "SELECT event_id FROM outbox WHERE msisdn = '{MARKER_MSISDN}'"
        ))
        .await;
    let [(marker,)] = &marker[..] else {
        panic!("one event (STATE_CHANGED) for the activation of the marker, not {marker:?}");
    };
    let marker_answered = |answered: &[Received]| {
        answered
            .iter()
            .any(|r| r.event_id() == *marker && (200..300).contains(&r.status))
    };
    hook.wait_for(SAFETY, marker_answered).await;
    let after: Vec<String> = hook.seen()[settled..]
        .iter()
        .map(Received::event_id)
        .collect();
    assert!(
        after.iter().all(|id| id == marker),
        "nothing but the marker is sent after all is delivered: {after:?}"
    );

    let mut order = hook.answered();
    order.retain(|id| id != marker);
    let final_counts = counts(&order);
    let unknown: Vec<_> = final_counts
        .keys()
        .filter(|id| !all.contains(*id))
        .collect();
    assert!(unknown.is_empty(), "events nobody emitted: {unknown:?}");
    let duplicates: BTreeSet<String> = final_counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    for id in &duplicates {
        assert!(
            unrecorded.contains(id),
            "{id} was sent again although its delivery was recorded before the kill"
        );
        assert_eq!(
            final_counts[id], 2,
            "{id}: once before the kill, once after"
        );
    }
    // Per MSISDN, the first answers come in sequence order.
    let first_answer: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .rev()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut last_of_msisdn: BTreeMap<&str, (i64, usize)> = BTreeMap::new();
    for (sequence, id, msisdn) in &events {
        let at = first_answer[id.as_str()];
        if let Some((previous, previous_at)) = last_of_msisdn.get(msisdn.as_str()) {
            assert!(
                *previous_at < at,
                "{msisdn}: event {sequence} was answered before event {previous}"
            );
        }
        last_of_msisdn.insert(msisdn, (*sequence, at));
    }
    eprintln!(
        "webhook kill ({:?}): {} events; at the kill {} answered and recorded, {} answered but \
         not recorded, {} posted and unanswered; the hook idle {:?} after the kill; duplicates \
         after the restart: {}",
        db.backend,
        all.len(),
        delivered_at_kill.len(),
        unrecorded.len(),
        unanswered,
        idle_after_kill,
        duplicates.len()
    );
    check.close().await;
    served.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_serve_killed_during_webhook_delivery_loses_no_event() {
    let db = TestDb::create(Backend::Sqlite).await.expect("SQLite");
    serve_killed_during_webhook_delivery_loses_no_event(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_serve_killed_during_webhook_delivery_loses_no_event() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    serve_killed_during_webhook_delivery_loses_no_event(db).await;
}
