//! The BSS webhook end to end, on SQLite and PostgreSQL: events made through the real gRPC API
//! (an unactivated card past its life, then ProvisionAccount of the same MSISDN, which
//! materialises the recycle) are POSTed by the real worker to a real HTTP listener
//! (`webhook/hook.rs`), signed, retried, dead-lettered, redelivered, in order per MSISDN, and
//! never lost or repeated across a restart. Delivery state is read from `webhook_deliveries`.
//! `security` (SQLite only: none of it depends on the backend): the Standard Webhooks
//! signature and the documented verifier, `Retry-After`, and HTTPS with a private CA and
//! client certificates.
//!
//! Timeline: cards are provisioned at `T0` (2030-03-01) and die on 2031-08-23; `T1`
//! (2031-09-01) recycles them; the second life dies in early 2033, recycled again at `T2`.

#[macro_use]
mod common;
#[path = "webhook/hook.rs"]
mod hook;
mod pki;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Db, TestDb, TestServer, rid};
use hmac::{Hmac, Mac};
use hook::{CLOSE, Hook, Policy, Received, UNTIL_HANGUP, always_ok, free_addr};
use ocs_lifecycle::config::{BssConfig, ClockMode, Config};
use ocs_lifecycle::proto;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::bss_events_client::BssEventsClient;
use sha2::Sha256;
use tonic::transport::Channel;

const T0: &str = "2030-03-01T02:00:00Z";
const T1: &str = "2031-09-01T02:00:00Z";
const T2: &str = "2033-04-01T02:00:00Z";
const SECRET: &str = "test-webhook-secret";
/// Safety bound for anything to happen; tests never assert on elapsed time.
const WAIT: Duration = Duration::from_secs(30);

both_databases! {
    sqlite, postgres:
    a_recycled_number_is_posted_once_signed_with_its_event_id,
    failed_answers_are_retried_until_the_bss_answers_2xx,
    a_bss_that_is_down_at_first_receives_the_event_once_it_listens,
    timeouts_closed_connections_and_slow_answers_are_retried_until_accepted,
    an_event_committed_below_the_last_seen_sequence_is_still_delivered,
    a_poisoned_event_is_dead_lettered_others_flow_and_redeliver_requeues_it,
    an_msisdns_events_arrive_in_sequence_order_even_when_the_first_fails,
    a_restart_sends_what_was_not_confirmed_and_never_resends_what_was,
    a_keep_alive_bss_is_reached_over_one_connection_reused,
}

/// With no `bss.webhook_url` the worker does not run (the standard server of the harness).
mod off {
    use super::*;

    both_backends! {
        without_a_url_nothing_is_registered_and_there_are_no_dead_letters,
    }

    async fn without_a_url_nothing_is_registered_and_there_are_no_dead_letters(server: TestServer) {
        let check = server.db().await;
        recycle_at_t1(&server, &["8613800000001"]).await;
        assert_eq!(recycled(&check).await.len(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(deliveries(&check).await.is_empty());
        let mut events_api = events_client(&server);
        let dead = events_api
            .list_dead_letters(proto::ListDeadLettersRequest {
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .expect("ListDeadLetters")
            .into_inner();
        assert!(dead.events.is_empty() && dead.next_page_token.is_empty());
        let too_big = events_api
            .list_dead_letters(proto::ListDeadLettersRequest {
                page_size: 1001,
                page_token: String::new(),
            })
            .await;
        common::assert_rejected(too_big, tonic::Code::InvalidArgument, "INVALID_ARGUMENT");
        let bad_token = events_api
            .list_dead_letters(proto::ListDeadLettersRequest {
                page_size: 10,
                page_token: "x".into(),
            })
            .await;
        common::assert_rejected(bad_token, tonic::Code::InvalidArgument, "INVALID_ARGUMENT");
        check.close().await;
    }
}

fn bss(url: &str) -> BssConfig {
    BssConfig {
        webhook_url: url.to_owned(),
        webhook_secret: SECRET.to_owned(),
        initial_backoff_ms: 20,
        max_backoff_ms: 100,
        timeout_ms: 1_000,
        max_attempts: 30,
        ..BssConfig::default()
    }
}

async fn start(db: &Arc<TestDb>, bss: BssConfig) -> TestServer {
    // The scheduler stays off (as in every API test): events come only from the requests made.
    let config = Config {
        bss,
        ..common::test_config(ClockMode::Manual)
    };
    TestServer::start_with(db.clone(), config).await
}

fn events_client(server: &TestServer) -> BssEventsClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect_lazy();
    BssEventsClient::new(channel)
}

async fn provision(api: &mut AccountLifecycleClient<Channel>, msisdn: &str) -> proto::Account {
    api.provision_account(proto::ProvisionAccountRequest {
        msisdn: msisdn.into(),
        preset_balance: 0,
        sold: true,
        initial_validity_days: 0,
        request_id: rid(),
    })
    .await
    .expect("ProvisionAccount")
    .into_inner()
}

/// Provisions `msisdns` at T0 and again at T1: one NUMBER_RECYCLED each.
async fn recycle_at_t1(server: &TestServer, msisdns: &[&str]) {
    let mut api = server.accounts();
    server.set_time(T0).await;
    for msisdn in msisdns {
        provision(&mut api, msisdn).await;
    }
    server.set_time(T1).await;
    for msisdn in msisdns {
        assert_eq!(provision(&mut api, msisdn).await.generation, 2);
    }
}

/// One outbox event: (sequence, event_id, event_type, msisdn).
type Event = (i64, String, i32, String);

async fn outbox(db: &Db) -> Vec<Event> {
    let sql = "SELECT sequence, event_id, event_type, msisdn FROM outbox ORDER BY sequence";
    let rows: Result<Vec<Event>, sqlx::Error> = match db {
        Db::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await,
        Db::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await,
    };
    rows.expect("read the outbox")
}

async fn recycled(db: &Db) -> Vec<Event> {
    outbox(db)
        .await
        .into_iter()
        .filter(|e| e.2 == proto::EventType::NumberRecycled as i32)
        .collect()
}

/// A delivery row: attempts, delivered, dead, last_error.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Delivery {
    attempts: i32,
    delivered: bool,
    dead: bool,
    last_error: Option<String>,
}

async fn deliveries(db: &Db) -> HashMap<String, Delivery> {
    let sql = "SELECT event_id, attempts, delivered_at IS NOT NULL, dead_at IS NOT NULL, \
               last_error FROM webhook_deliveries";
    type Row = (String, i32, bool, bool, Option<String>);
    let rows: Result<Vec<Row>, sqlx::Error> = match db {
        Db::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await,
        Db::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await,
    };
    rows.expect("read webhook_deliveries")
        .into_iter()
        .map(|(id, attempts, delivered, dead, last_error)| {
            (
                id,
                Delivery {
                    attempts,
                    delivered,
                    dead,
                    last_error,
                },
            )
        })
        .collect()
}

/// Waits until the delivery rows satisfy `done`.
async fn wait_deliveries(db: &Db, done: impl Fn(&HashMap<String, Delivery>) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = deliveries(db).await;
        if done(&rows) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery state not reached in time: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn msisdn_of(r: &Received) -> String {
    r.json()["msisdn"].as_str().unwrap_or_default().to_owned()
}

/// Successful (2xx) deliveries per event id.
fn successes(received: &[Received]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in received.iter().filter(|r| (200..300).contains(&r.status)) {
        *counts.entry(r.event_id()).or_insert(0) += 1;
    }
    counts
}

/// Answers `status` for requests about `msisdn`, 200 otherwise.
fn failing_for(msisdn: &'static str, status: u16) -> Policy {
    Box::new(move |r| {
        let code = if msisdn_of(r) == msisdn { status } else { 200 };
        (code, Duration::ZERO)
    })
}

/// Nothing more arrives for a while.
async fn assert_quiet(hook: &Hook, expected: usize) {
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hook.seen().len(), expected, "{:#?}", hook.seen());
}

fn hmac_hex(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn a_recycled_number_is_posted_once_signed_with_its_event_id(db: Arc<TestDb>) {
    let hook = Hook::start(always_ok()).await;
    let server = start(&db, bss(&hook.url())).await;
    let check = server.db().await;
    recycle_at_t1(&server, &["8613800000101", "8613800000102"]).await;
    let expected = recycled(&check).await;
    assert_eq!(expected.len(), 2, "{:?}", outbox(&check).await);
    assert!(
        outbox(&check).await.len() > expected.len(),
        "STATE_CHANGED events exist too, and are not selected by default"
    );

    hook.wait_for(WAIT, |r| r.len() >= 2).await;
    wait_deliveries(&check, |d| d.len() == 2 && d.values().all(|d| d.delivered)).await;
    assert_quiet(&hook, 2).await;

    let mut received = hook.received();
    received.sort_by_key(|r| r.json()["sequence"].as_i64());
    for (r, (sequence, id, _, msisdn)) in received.iter().zip(&expected) {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/bss/events")
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-ocs-event-id"), Some(id.as_str()));
        let signature = r.header("x-ocs-signature").expect("X-Ocs-Signature");
        assert_eq!(signature, format!("sha256={}", hmac_hex(&r.body)));
        let json = r.json();
        assert_eq!(json["event_id"], id.as_str());
        assert_eq!(json["sequence"], *sequence);
        assert_eq!(json["type"], "NUMBER_RECYCLED");
        assert_eq!(json["msisdn"], msisdn.as_str());
        assert_eq!(json["generation"], 1);
        assert_eq!(json["from_state"], "UNACTIVATED");
        assert_eq!(json["to_state"], "RECYCLED");
        assert_eq!(json["reason"], "UNACTIVATED_EXPIRED");
        assert!(
            json["effective_at"]
                .as_str()
                .is_some_and(|s| s.ends_with('Z'))
        );
        assert!(json["emitted_at"].is_string() && json["account_id"].is_string());
    }
    let rows = deliveries(&check).await;
    assert!(
        rows.values().all(|d| d.attempts == 1 && !d.dead),
        "{rows:?}"
    );
    check.close().await;
    server.stop().await;
}

async fn failed_answers_are_retried_until_the_bss_answers_2xx(db: Arc<TestDb>) {
    // 500, 503, 500, then 200.
    let mut answers = vec![500, 503, 500].into_iter();
    let hook = Hook::start(Box::new(move |_| {
        (answers.next().unwrap_or(200), Duration::ZERO)
    }))
    .await;
    let server = start(&db, bss(&hook.url())).await;
    let check = server.db().await;
    recycle_at_t1(&server, &["8613800000201"]).await;
    let expected = recycled(&check).await;

    hook.wait_for(WAIT, |r| r.iter().any(|r| r.status == 200))
        .await;
    wait_deliveries(&check, |d| d.values().all(|d| d.delivered) && !d.is_empty()).await;
    assert_quiet(&hook, 4).await;
    let received = hook.received();
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 503, 500, 200]
    );
    // Every attempt is the same event, byte for byte.
    assert!(received.iter().all(|r| r.event_id() == expected[0].1
        && r.body == received[0].body
        && r.header("x-ocs-signature") == received[0].header("x-ocs-signature")));
    let row = &deliveries(&check).await[&expected[0].1];
    assert_eq!((row.attempts, row.delivered, row.dead), (4, true, false));
    check.close().await;
    server.stop().await;
}

async fn a_bss_that_is_down_at_first_receives_the_event_once_it_listens(db: Arc<TestDb>) {
    let addr = free_addr().await;
    let server = start(&db, bss(&format!("http://{addr}/bss/events"))).await;
    let check = server.db().await;
    recycle_at_t1(&server, &["8613800000301"]).await;
    let expected = recycled(&check).await;

    // Connection refused, twice at least, recorded.
    wait_deliveries(&check, |d| {
        d.values()
            .any(|d| d.attempts >= 2 && d.last_error.is_some() && !d.delivered)
    })
    .await;
    let hook = Hook::start_at(addr, always_ok()).await;
    hook.wait_for(WAIT, |r| !r.is_empty()).await;
    wait_deliveries(&check, |d| d.values().all(|d| d.delivered)).await;
    assert_quiet(&hook, 1).await;
    assert_eq!(hook.received()[0].event_id(), expected[0].1);
    check.close().await;
    server.stop().await;
}

async fn timeouts_closed_connections_and_slow_answers_are_retried_until_accepted(db: Arc<TestDb>) {
    // The first attempt is never answered: the listener holds it until the client gives up
    // (its request timeout, whatever time that takes); the second finds the connection closed
    // without an answer; the third is answered 200 slowly but in time: 100 ms against a 10 s
    // timeout, a margin no machine running this suite misses.
    let mut answers = vec![
        (200, UNTIL_HANGUP),
        (CLOSE, Duration::ZERO),
        (200, Duration::from_millis(100)),
    ]
    .into_iter();
    let hook = Hook::start(Box::new(move |_| {
        answers.next().unwrap_or((200, Duration::ZERO))
    }))
    .await;
    let timeout_ms = 10_000;
    let server = start(
        &db,
        BssConfig {
            timeout_ms,
            ..bss(&hook.url())
        },
    )
    .await;
    let check = server.db().await;
    recycle_at_t1(&server, &["8613800000251"]).await;
    let expected = recycled(&check).await;

    wait_deliveries(&check, |d| d.values().any(|d| d.delivered)).await;
    assert_quiet(&hook, 3).await;
    let seen = hook.seen();
    assert!(
        seen.iter()
            .all(|r| r.event_id() == expected[0].1 && r.body == seen[0].body),
        "every attempt is the same event"
    );
    // Only the slow answer in time counts; the one after the timeout was never written.
    let received = hook.received();
    assert_eq!(received.len(), 1, "{received:#?}");
    assert_eq!(received[0].status, 200);
    let row = &deliveries(&check).await[&expected[0].1];
    assert_eq!((row.attempts, row.delivered, row.dead), (3, true, false));
    // The held attempt ended when the client gave up: not before its timeout.
    let held = seen[1].arrived.duration_since(seen[0].arrived);
    println!("the unanswered attempt was given up after {held:?} (timeout {timeout_ms} ms)");
    assert!(held >= Duration::from_millis(timeout_ms));
    check.close().await;
    server.stop().await;
}

async fn an_event_committed_below_the_last_seen_sequence_is_still_delivered(db: Arc<TestDb>) {
    // On PostgreSQL a transaction can commit an outbox sequence lower than one the worker has
    // already registered. Here such an event is written directly (as a slow transaction would
    // leave it): a sequence below the highest registered one, after the worker saw that one.
    let hook = Hook::start(always_ok()).await;
    let server = start(&db, bss(&hook.url())).await;
    let check = server.db().await;
    recycle_at_t1(&server, &["8613800000261"]).await;
    hook.wait_for(WAIT, |r| r.len() == 1).await;
    let first = recycled(&check).await;
    // A STATE_CHANGED row below the registered recycle becomes a recycle of another number.
    let late_sequence: i64 = check
        .scalar(&format!(
            "SELECT max(sequence) FROM outbox WHERE event_type = 2 AND sequence < {}",
            first[0].0
        ))
        .await;
    let late_id = uuid::Uuid::new_v4().to_string();
    let writer = db.open_for_writing().await;
    writer
        .execute(&format!(
            "UPDATE outbox SET event_type = 1, event_id = '{late_id}', msisdn = '8613800000262' \
             WHERE sequence = {late_sequence}"
        ))
        .await;
    writer.close().await;
    hook.wait_for(WAIT, |r| r.iter().any(|r| r.event_id() == late_id))
        .await;
    wait_deliveries(&check, |d| d.len() == 2 && d.values().all(|d| d.delivered)).await;
    // Each of the two was delivered exactly once: the late one did not make the worker send
    // the other again.
    assert_quiet(&hook, 2).await;
    let delivered = successes(&hook.received());
    assert_eq!(delivered.get(&late_id), Some(&1), "{delivered:?}");
    assert_eq!(delivered.get(&first[0].1), Some(&1), "{delivered:?}");
    let rows = deliveries(&check).await;
    assert!(rows.values().all(|d| d.attempts == 1), "{rows:?}");
    check.close().await;
    server.stop().await;
}

async fn a_keep_alive_bss_is_reached_over_one_connection_reused(db: Arc<TestDb>) {
    // A BSS that keeps connections open (HTTP/1.1 keep-alive); events one at a time, each
    // delivered before the next exists, so the worker's pool has an idle connection to reuse.
    const NUMBERS: [&str; 4] = [
        "8613800000271",
        "8613800000272",
        "8613800000273",
        "8613800000274",
    ];
    let hook = Hook::start_keep_alive(always_ok()).await;
    let server = start(&db, bss(&hook.url())).await;
    let check = server.db().await;
    let mut api = server.accounts();
    server.set_time(T0).await;
    for msisdn in NUMBERS {
        provision(&mut api, msisdn).await;
    }
    server.set_time(T1).await;
    for (i, msisdn) in NUMBERS.iter().enumerate() {
        assert_eq!(provision(&mut api, msisdn).await.generation, 2);
        hook.wait_for(WAIT, |r| r.len() == i + 1).await;
    }
    wait_deliveries(&check, |d| {
        d.len() == NUMBERS.len() && d.values().all(|d| d.delivered)
    })
    .await;
    assert_quiet(&hook, NUMBERS.len()).await;
    let requests = hook.received().len();
    let connections = hook.connections();
    println!("{requests} deliveries over {connections} connection(s)");
    assert!(
        connections < requests,
        "the worker opened a connection per delivery: {connections} for {requests}"
    );
    let delivered = successes(&hook.received());
    assert!(delivered.values().all(|&n| n == 1), "{delivered:?}");
    check.close().await;
    server.stop().await;
}

async fn a_poisoned_event_is_dead_lettered_others_flow_and_redeliver_requeues_it(db: Arc<TestDb>) {
    const POISONED: &str = "8613800000401";
    let hook = Hook::start(failing_for(POISONED, 500)).await;
    let server = start(
        &db,
        BssConfig {
            max_attempts: 3,
            ..bss(&hook.url())
        },
    )
    .await;
    let check = server.db().await;
    let mut api = server.accounts();
    server.set_time(T0).await;
    for msisdn in [POISONED, "8613800000402", "8613800000403", "8613800000404"] {
        provision(&mut api, msisdn).await;
    }
    server.set_time(T1).await;
    for msisdn in [POISONED, "8613800000402", "8613800000403"] {
        provision(&mut api, msisdn).await;
    }
    let events = recycled(&check).await;
    let poisoned_id = events
        .iter()
        .find(|e| e.3 == POISONED)
        .expect("the poisoned event")
        .1
        .clone();

    wait_deliveries(&check, |d| {
        d.len() == 3 && d.values().filter(|d| d.delivered).count() == 2 && d[&poisoned_id].dead
    })
    .await;
    let row = &deliveries(&check).await[&poisoned_id];
    assert_eq!(row.attempts, 3);
    assert!(
        row.last_error.as_deref().is_some_and(|e| e.contains("500")),
        "{row:?}"
    );
    assert_eq!(
        hook.received()
            .iter()
            .filter(|r| r.event_id() == poisoned_id)
            .count(),
        3
    );

    // A dead letter does not hold up anything: a later event still flows.
    provision(&mut api, "8613800000404").await;
    hook.wait_for(WAIT, |r| r.iter().any(|r| msisdn_of(r) == "8613800000404"))
        .await;

    let mut events_api = events_client(&server);
    let dead = events_api
        .list_dead_letters(proto::ListDeadLettersRequest::default())
        .await
        .expect("ListDeadLetters")
        .into_inner();
    assert_eq!(dead.events.len(), 1, "{dead:?}");
    assert!(dead.next_page_token.is_empty());
    let letter = &dead.events[0];
    let event = letter.event.as_ref().expect("event");
    assert_eq!(
        (event.event_id.as_str(), event.msisdn.as_str()),
        (poisoned_id.as_str(), POISONED)
    );
    assert_eq!(event.r#type(), proto::EventType::NumberRecycled);
    assert_eq!(letter.attempts, 3);
    assert!(letter.last_error.contains("500") && letter.dead_at.is_some());

    // The BSS is fixed; the operator redelivers (an unknown id counts nothing).
    hook.set_policy(always_ok());
    let requeued = events_api
        .redeliver(proto::RedeliverRequest {
            event_ids: vec![poisoned_id.clone(), rid()],
        })
        .await
        .expect("Redeliver")
        .into_inner()
        .requeued;
    assert_eq!(requeued, 1);
    wait_deliveries(&check, |d| d[&poisoned_id].delivered).await;
    assert_eq!(successes(&hook.received())[&poisoned_id], 1);
    let dead = events_api
        .list_dead_letters(proto::ListDeadLettersRequest::default())
        .await
        .expect("ListDeadLetters")
        .into_inner();
    assert!(dead.events.is_empty(), "{dead:?}");
    let again = events_api
        .redeliver(proto::RedeliverRequest {
            event_ids: vec![poisoned_id.clone()],
        })
        .await
        .expect("Redeliver")
        .into_inner();
    assert_eq!(again.requeued, 0, "a delivered event is not requeued");
    let bad = events_api
        .redeliver(proto::RedeliverRequest {
            event_ids: vec!["not-a-uuid".into()],
        })
        .await;
    common::assert_rejected(bad, tonic::Code::InvalidArgument, "INVALID_ARGUMENT");
    check.close().await;
    server.stop().await;
}

async fn an_msisdns_events_arrive_in_sequence_order_even_when_the_first_fails(db: Arc<TestDb>) {
    const ORDERED: &str = "8613800000501";
    const OTHER: &str = "8613800000502";
    // The first five requests about ORDERED fail; everything else is accepted.
    let mut failures = 5;
    let hook = Hook::start(Box::new(move |r| {
        let code = if msisdn_of(r) == ORDERED && failures > 0 {
            failures -= 1;
            503
        } else {
            200
        };
        (code, Duration::ZERO)
    }))
    .await;
    let server = start(
        &db,
        BssConfig {
            webhook_events: vec!["NUMBER_RECYCLED".into(), "STATE_CHANGED".into()],
            ..bss(&hook.url())
        },
    )
    .await;
    let check = server.db().await;
    let mut api = server.accounts();
    // Life 1 of both ends unactivated (STATE_CHANGED + NUMBER_RECYCLED each at T1); ORDERED's
    // second life ends too (two more at T2); OTHER is activated in its second life.
    server.set_time(T0).await;
    provision(&mut api, ORDERED).await;
    provision(&mut api, OTHER).await;
    server.set_time(T1).await;
    provision(&mut api, ORDERED).await;
    provision(&mut api, OTHER).await;
    api.activate(proto::ActivateRequest {
        msisdn: OTHER.into(),
        request_id: rid(),
    })
    .await
    .expect("Activate");
    server.set_time(T2).await;
    assert_eq!(provision(&mut api, ORDERED).await.generation, 3);

    let all = outbox(&check).await;
    let of = |msisdn: &str| -> Vec<String> {
        all.iter()
            .filter(|e| e.3 == msisdn)
            .map(|e| e.1.clone())
            .collect()
    };
    let (ordered, other) = (of(ORDERED), of(OTHER));
    assert!(ordered.len() >= 4 && other.len() >= 3, "{all:?}");
    wait_deliveries(&check, |d| {
        d.len() == all.len() && d.values().all(|d| d.delivered)
    })
    .await;

    let received = hook.received();
    // Every request about ORDERED, failed or not, follows the sequence: a later event was never
    // tried before the earlier one was confirmed.
    let tried: Vec<String> = received
        .iter()
        .filter(|r| msisdn_of(r) == ORDERED)
        .map(Received::event_id)
        .collect();
    let mut expected_tries = vec![ordered[0].clone(); 6];
    expected_tries.extend(ordered[1..].iter().cloned());
    assert_eq!(tried, expected_tries);
    // OTHER was not held up by ORDERED's failures, and is in order too.
    let other_tried: Vec<String> = received
        .iter()
        .filter(|r| msisdn_of(r) == OTHER)
        .map(Received::event_id)
        .collect();
    assert_eq!(other_tried, other);
    let first_ok = received
        .iter()
        .position(|r| msisdn_of(r) == ORDERED && r.status == 200)
        .expect("ORDERED delivered");
    assert!(
        received[..first_ok]
            .iter()
            .any(|r| msisdn_of(r) == OTHER && r.status == 200),
        "OTHER's events went while ORDERED's first was being retried"
    );
    check.close().await;
    server.stop().await;
}

async fn a_restart_sends_what_was_not_confirmed_and_never_resends_what_was(db: Arc<TestDb>) {
    const DONE: &str = "8613800000601";
    const RETRYING: &str = "8613800000602";
    const IN_FLIGHT: &str = "8613800000603";
    // DONE is accepted; RETRYING fails; IN_FLIGHT's answer never comes before the stop.
    let hook = Hook::start(Box::new(|r| match msisdn_of(r).as_str() {
        DONE => (200, Duration::ZERO),
        RETRYING => (503, Duration::ZERO),
        _ => (200, Duration::from_secs(30)),
    }))
    .await;
    let config = bss(&hook.url());
    let server = start(&db, config.clone()).await;
    let check = server.db().await;
    recycle_at_t1(&server, &[DONE, RETRYING, IN_FLIGHT]).await;
    let events = recycled(&check).await;
    let id = |msisdn: &str| {
        events
            .iter()
            .find(|e| e.3 == msisdn)
            .expect("event")
            .1
            .clone()
    };
    let (done, retrying, in_flight) = (id(DONE), id(RETRYING), id(IN_FLIGHT));

    wait_deliveries(&check, |d| {
        d.len() == 3 && d[&done].delivered && d[&retrying].attempts >= 2
    })
    .await;
    hook.wait_seen(WAIT, |r| r.iter().any(|r| r.event_id() == in_flight))
        .await;
    server.stop().await;
    check.close().await;

    // The BSS recovers; a new server on the same database finishes the job.
    hook.set_policy(always_ok());
    let before = successes(&hook.received());
    assert_eq!(before.get(&done), Some(&1));
    let server = start(&db, config).await;
    let check = server.db().await;
    wait_deliveries(&check, |d| d.values().all(|d| d.delivered)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = successes(&hook.received());
    assert_eq!(
        after.get(&done),
        Some(&1),
        "a delivered event is never sent again"
    );
    assert_eq!(after.get(&retrying), Some(&1));
    assert_eq!(after.get(&in_flight), Some(&1));
    check.close().await;
    server.stop().await;
}

/// Signatures, `Retry-After` and TLS: SQLite only (the backend plays no part).
mod security {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use base64::Engine;
    use common::Backend;
    use pki::Pki;

    use super::*;

    const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/bss-webhook.md");

    async fn sqlite() -> Arc<TestDb> {
        TestDb::create(Backend::Sqlite).await.expect("SQLite")
    }

    fn unix_now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as i64
    }

    fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC key");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// `v1,` and the base64 HMAC of `id.timestamp.body`, computed here from the received bytes.
    fn standard_signature(key: &[u8], r: &Received) -> String {
        let id = r.header("webhook-id").expect("webhook-id");
        let timestamp = r.header("webhook-timestamp").expect("webhook-timestamp");
        let mac = hmac(
            key,
            &[id.as_bytes(), b".", timestamp.as_bytes(), b".", &r.body],
        );
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac)
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_attempt_is_signed_over_its_id_its_own_timestamp_and_the_body() {
        let db = sqlite().await;
        let mut answers = vec![500].into_iter();
        let hook = Hook::start(Box::new(move |_| {
            (answers.next().unwrap_or(200), Duration::ZERO)
        }))
        .await;
        let config = BssConfig {
            webhook_secret: STANDARD_SECRET.into(),
            ..bss(&hook.url())
        };
        let server = start(&db, config).await;
        let check = server.db().await;
        let before = unix_now();
        recycle_at_t1(&server, &["8613800000701"]).await;
        let expected = recycled(&check).await;
        hook.wait_for(WAIT, |r| r.iter().any(|r| r.status == 200))
            .await;
        let after = unix_now();
        let received = hook.received();
        assert_eq!(received.len(), 2, "{received:#?}");
        let key = base64::engine::general_purpose::STANDARD
            .decode(STANDARD_SECRET.trim_start_matches("whsec_"))
            .expect("base64");
        for r in &received {
            assert_eq!(r.header("webhook-id"), Some(expected[0].1.as_str()));
            let timestamp: i64 = r
                .header("webhook-timestamp")
                .expect("webhook-timestamp")
                .parse()
                .expect("integer Unix seconds");
            assert!(
                (before..=after).contains(&timestamp),
                "the attempt's real time: {before} <= {timestamp} <= {after}"
            );
            assert_eq!(
                r.header("webhook-signature"),
                Some(standard_signature(&key, r).as_str())
            );
            // The original header stays, keyed with the secret as written.
            assert_eq!(
                r.header("x-ocs-signature"),
                Some(
                    format!(
                        "sha256={}",
                        hex::encode(hmac(STANDARD_SECRET.as_bytes(), &[&r.body]))
                    )
                    .as_str()
                )
            );
            assert_eq!(r.header("x-ocs-event-id"), Some(expected[0].1.as_str()));
        }
        check.close().await;
        server.stop().await;
    }

    /// The `<!-- tested -->` ```python blocks of docs/bss-webhook.md, in order.
    fn documented_python() -> String {
        let doc = std::fs::read_to_string(DOC).expect("docs/bss-webhook.md");
        let lines: Vec<&str> = doc.lines().collect();
        let mut code = String::new();
        let mut blocks = 0;
        for (i, line) in lines.iter().enumerate() {
            if line.trim() != "```python" {
                continue;
            }
            let previous = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
            if previous.map(|l| l.trim()) != Some("<!-- tested -->") {
                continue;
            }
            blocks += 1;
            for body in lines[i + 1..].iter().take_while(|l| l.trim() != "```") {
                code.push_str(body);
                code.push('\n');
            }
        }
        assert_eq!(blocks, 2, "the two tested verifiers of docs/bss-webhook.md");
        code
    }

    /// Runs the documented verifiers over `cases` (JSON); their answers in order.
    fn run_python(code: &str, cases: &serde_json::Value) -> Option<Vec<bool>> {
        let driver = r#"
import json, sys
for case in json.load(open(sys.argv[1])):
    body = base64.b64decode(case["body"])
    if case["scheme"] == "standard":
        print(json.dumps(verify(case["secret"], case["headers"], body, now=case["now"])))
    else:
        print(json.dumps(verify_ocs_signature(
            case["secret"].encode(), body, case["headers"].get("x-ocs-signature", ""))))
"#;
        let dir = tempfile::tempdir().expect("temporary directory");
        let script = dir.path().join("verify.py");
        std::fs::write(&script, format!("{code}\n{driver}")).expect("write the script");
        let input = dir.path().join("cases.json");
        std::fs::write(&input, cases.to_string()).expect("write the cases");
        let output = match std::process::Command::new("python3")
            .arg(&script)
            .arg(&input)
            .output()
        {
            Ok(output) => output,
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                println!("SKIPPED: python3 is not available ({e})");
                return None;
            }
            Err(e) => panic!("python3 is needed to run the documented verifier: {e}"),
        };
        assert!(
            output.status.success(),
            "the documented verifier failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).expect("true or false"))
                .collect(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_documented_verifier_accepts_a_real_delivery_and_refuses_replays_and_forgeries() {
        let code = documented_python();
        let db = sqlite().await;
        let hook = Hook::start(always_ok()).await;
        for secret in [SECRET, STANDARD_SECRET] {
            let config = BssConfig {
                webhook_secret: secret.into(),
                ..bss(&hook.url())
            };
            let server = start(&db, config).await;
            let msisdn = if secret == SECRET {
                "8613800000711"
            } else {
                "8613800000712"
            };
            recycle_at_t1(&server, &[msisdn]).await;
            hook.wait_for(WAIT, |r| r.iter().any(|r| msisdn_of(r) == msisdn))
                .await;
            server.stop().await;
        }
        let mut cases = Vec::new();
        let mut expected = Vec::new();
        for (r, secret) in hook.received().iter().zip([SECRET, STANDARD_SECRET]) {
            let sent_at: i64 = r
                .header("webhook-timestamp")
                .expect("ts")
                .parse()
                .expect("int");
            let body = base64::engine::general_purpose::STANDARD.encode(&r.body);
            let mut tampered = r.body.clone();
            tampered[0] = b' ';
            let tampered = base64::engine::general_purpose::STANDARD.encode(&tampered);
            let headers = serde_json::to_value(&r.headers).expect("headers");
            let mut without_signature = r.headers.clone();
            without_signature.remove("webhook-signature");
            let mut other_id = r.headers.clone();
            other_id.insert("webhook-id".into(), uuid::Uuid::new_v4().to_string());
            let standard = |secret: &str, headers: serde_json::Value, body: &str, now: i64| {
                serde_json::json!({
                    "scheme": "standard", "secret": secret, "headers": headers,
                    "body": body, "now": now
                })
            };
            let mut case = |c: serde_json::Value, accepted: bool| {
                cases.push(c);
                expected.push(accepted);
            };
            // As delivered, and within the tolerance either way.
            case(standard(secret, headers.clone(), &body, sent_at), true);
            case(
                standard(secret, headers.clone(), &body, sent_at + 299),
                true,
            );
            case(
                standard(secret, headers.clone(), &body, sent_at - 299),
                true,
            );
            // Replayed after the tolerance, or "from the future".
            case(
                standard(secret, headers.clone(), &body, sent_at + 301),
                false,
            );
            case(
                standard(secret, headers.clone(), &body, sent_at - 301),
                false,
            );
            // Forgeries: another body, another id, another secret, no signature.
            case(standard(secret, headers.clone(), &tampered, sent_at), false);
            case(
                standard(
                    secret,
                    serde_json::to_value(&other_id).unwrap(),
                    &body,
                    sent_at,
                ),
                false,
            );
            case(
                standard("whsec_b3RoZXI=", headers.clone(), &body, sent_at),
                false,
            );
            case(
                standard(
                    secret,
                    serde_json::to_value(&without_signature).unwrap(),
                    &body,
                    sent_at,
                ),
                false,
            );
            // The original header: the body only.
            let legacy = |body: &str| {
                serde_json::json!({
                    "scheme": "legacy", "secret": secret, "headers": headers, "body": body
                })
            };
            case(legacy(&body), true);
            case(legacy(&tampered), false);
        }
        assert_eq!(cases.len(), 22);
        let Some(answers) = run_python(&code, &serde_json::Value::Array(cases)) else {
            return;
        };
        assert_eq!(answers, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retry_after_on_429_and_503_delays_the_next_attempt_and_is_ignored_otherwise() {
        let db = sqlite().await;
        // 500 (its Retry-After ignored), 429 with Retry-After in seconds, 503 with an HTTP
        // date, then 200. The backoff alone would retry after 20-100 ms.
        let mut answers = vec![500, 429, 503].into_iter();
        let hook = Hook::start(Box::new(move |_| {
            (answers.next().unwrap_or(200), Duration::ZERO)
        }))
        .await;
        let started = Instant::now();
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(5));
        hook.set_response_headers(500, &[("Retry-After", "3600")]);
        hook.set_response_headers(429, &[("Retry-After", "2")]);
        hook.set_response_headers(503, &[("Retry-After", &date)]);
        let server = start(&db, bss(&hook.url())).await;
        let check = server.db().await;
        recycle_at_t1(&server, &["8613800000721"]).await;
        hook.wait_for(WAIT, |r| r.iter().any(|r| r.status == 200))
            .await;
        let received = hook.received();
        let statuses: Vec<u16> = received.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [500, 429, 503, 200]);
        let gap = |i: usize| received[i + 1].arrived - received[i].arrived;
        assert!(
            gap(0) < Duration::from_secs(600),
            "500's Retry-After ignored"
        );
        assert!(
            gap(1) >= Duration::from_secs(2),
            "429 Retry-After: 2, waited {:?}",
            gap(1)
        );
        // The date has whole seconds: at least 4 s after the start.
        let waited = received[3].arrived - started;
        assert!(
            waited >= Duration::from_millis(3900),
            "503 Retry-After: {date}, next attempt {waited:?} after the start"
        );
        wait_deliveries(&check, |d| {
            !d.is_empty() && d.values().all(|d| d.delivered && d.attempts == 4)
        })
        .await;
        check.close().await;
        server.stop().await;
    }

    fn tls_bss(hook: &Hook, pki: &Pki, ca: bool, client_cert: bool) -> BssConfig {
        BssConfig {
            ca_file: ca.then(|| pki.path("ca.pem")),
            client_cert: client_cert.then(|| pki.path("client.pem")),
            client_key: client_cert.then(|| pki.path("client.key")),
            ..bss(&hook.url())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bss_with_a_private_ca_is_reached_only_with_bss_ca_file() {
        let pki = Pki::make();
        let db = sqlite().await;
        let hook = Hook::start_tls(always_ok(), pki.rustls_server(false)).await;
        assert!(hook.url().starts_with("https://"));

        // The public roots do not know the private CA: every attempt fails its handshake.
        let server = start(&db, tls_bss(&hook, &pki, false, false)).await;
        let check = server.db().await;
        recycle_at_t1(&server, &["8613800000731"]).await;
        wait_deliveries(&check, |d| {
            d.values().any(|d| {
                d.attempts >= 2
                    && !d.delivered
                    && d.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("certificate"))
            })
        })
        .await;
        assert!(hook.seen().is_empty(), "nothing was sent without TLS");
        assert!(!hook.failed_handshakes().is_empty());
        println!(
            "without bss.ca_file: {:?}; the BSS saw {:?}",
            deliveries(&check).await,
            hook.failed_handshakes()
        );
        server.stop().await;

        // With the CA the same event goes through, signed as ever.
        let server = start(&db, tls_bss(&hook, &pki, true, false)).await;
        hook.wait_for(WAIT, |r| !r.is_empty()).await;
        wait_deliveries(&check, |d| d.values().all(|d| d.delivered)).await;
        let received = hook.received();
        assert_eq!(received.len(), 1);
        assert!(!received[0].client_certificate);
        assert_eq!(
            received[0].header("x-ocs-signature"),
            Some(format!("sha256={}", hmac_hex(&received[0].body)).as_str())
        );
        check.close().await;
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bss_requiring_client_certificates_accepts_only_bss_client_cert() {
        let pki = Pki::make();
        let db = sqlite().await;
        let hook = Hook::start_tls(always_ok(), pki.rustls_server(true)).await;

        // Without a client certificate the BSS refuses the handshake.
        let server = start(&db, tls_bss(&hook, &pki, true, false)).await;
        let check = server.db().await;
        recycle_at_t1(&server, &["8613800000741"]).await;
        wait_deliveries(&check, |d| {
            d.values()
                .any(|d| d.attempts >= 2 && !d.delivered && d.last_error.is_some())
        })
        .await;
        hook.wait_failed_handshakes(WAIT, |f| !f.is_empty()).await;
        assert!(hook.seen().is_empty(), "{:#?}", hook.seen());
        println!(
            "without bss.client_cert: {:?}; the BSS saw {:?}",
            deliveries(&check).await,
            hook.failed_handshakes()
        );
        server.stop().await;

        // With it, the event is delivered, and the BSS saw the certificate.
        let server = start(&db, tls_bss(&hook, &pki, true, true)).await;
        hook.wait_for(WAIT, |r| !r.is_empty()).await;
        wait_deliveries(&check, |d| d.values().all(|d| d.delivered)).await;
        let received = hook.received();
        assert_eq!(received.len(), 1);
        assert!(received[0].client_certificate);
        check.close().await;
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unusable_webhook_tls_files_stop_the_start_naming_the_key() {
        let pki = Pki::make();
        let hook = Hook::start_tls(always_ok(), pki.rustls_server(false)).await;
        let cases = [
            (
                BssConfig {
                    client_key: Some(pki.path("server.pem")),
                    ..tls_bss(&hook, &pki, true, true)
                },
                "bss.client_key",
            ),
            (
                BssConfig {
                    client_key: None,
                    ..tls_bss(&hook, &pki, true, true)
                },
                "bss.client_key: missing",
            ),
            (
                BssConfig {
                    ca_file: Some(pki.path("no-such.pem")),
                    ..tls_bss(&hook, &pki, true, false)
                },
                "bss.ca_file",
            ),
            (
                BssConfig {
                    webhook_url: format!("http://{}/bss/events", hook.addr),
                    ..tls_bss(&hook, &pki, true, false)
                },
                "bss.ca_file: needs an https://",
            ),
        ];
        for (bss, expected) in cases {
            let config = Config {
                bss,
                ..common::test_config(ClockMode::Manual)
            };
            let err = config.validate().expect_err(expected).to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
