//! Instances on one database never fail each other (issue 14): two servers on one PostgreSQL
//! database, four `AdvanceStates` at once (two per server) while 16 clients recharge, over many
//! clock steps. No call fails, and every transition and every event is written once.
//!
//! The recharges move accounts within the sweep's claim order (`next_deadline`), which is what
//! made two sweeps that waited for row locks deadlock (40P01, answered `UNAVAILABLE`).

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use common::{Backend, Db, TestDb, TestServer, rid};
use ocs_lifecycle::config::ClockMode;
use ocs_lifecycle::proto;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use tonic::transport::Channel;

type Api = AccountLifecycleClient<Channel>;

/// 2030-03-01 10:00 in Shanghai.
const T0: &str = "2030-03-01T02:00:00Z";
const ACCOUNTS: u32 = 300;
const STEPS: i64 = 40;
const CLIENTS: u32 = 16;
const RECHARGES_PER_CLIENT: u32 = 8;

fn msisdn(n: u32) -> String {
    format!("86137{n:08}")
}

fn at(step: i64) -> String {
    let t0 = DateTime::parse_from_rfc3339(T0)
        .expect("T0")
        .with_timezone(&Utc);
    (t0 + Duration::days(step)).to_rfc3339()
}

async fn start(db: &Arc<TestDb>) -> TestServer {
    let mut config = common::test_config(ClockMode::Manual);
    // Small batches: many claims, many interleavings.
    config.sweep.batch_size = 3;
    TestServer::start_with(db.clone(), config).await
}

/// Cards with validities of 1 to 40 days, so that some are due at every step (a notice or the
/// end of their validity), activated at `T0`.
async fn populate(server: &TestServer) {
    let mut api = server.accounts();
    for n in 0..ACCOUNTS {
        common::provision(&mut api, &msisdn(n), 1 + n % 3).await;
        common::activate(&mut api, &msisdn(n)).await;
    }
}

/// Recharges `RECHARGES_PER_CLIENT` accounts (VALID or GRACE: nothing is LOCKED within the
/// steps); every call must succeed.
async fn recharge(mut api: Api, client: u32, step: i64) {
    for i in 0..RECHARGES_PER_CLIENT {
        let n = (client * 7 + i * 13 + step as u32 * 5) % ACCOUNTS;
        let request = proto::RechargeRequest {
            msisdn: msisdn(n),
            amount: 1000,
            channel: proto::RechargeChannel::Online as i32,
            validity_days: 0,
            request_id: rid(),
        };
        if let Err(status) = api.recharge(request).await {
            panic!("step {step}: recharge of {} failed: {status:?}", msisdn(n));
        }
    }
}

async fn sweep(mut api: Api, step: i64) -> u64 {
    let request = proto::AdvanceStatesRequest {
        as_of: None,
        dry_run: false,
    };
    match api.advance_states(request).await {
        Ok(response) => response.into_inner().to_grace,
        Err(status) => panic!("step {step}: AdvanceStates failed: {status:?}"),
    }
}

/// Rows of `table` that share `columns` with another row.
async fn duplicates(db: &Db, table: &str, filter: &str, columns: &str) -> i64 {
    db.scalar(&format!(
        "SELECT COUNT(*) FROM (SELECT {columns} FROM {table} WHERE {filter} \
         GROUP BY {columns} HAVING COUNT(*) > 1) AS d"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_sweeps_and_recharges_never_fail_each_other() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let (one, two) = (start(&db).await, start(&db).await);
    one.set_time(T0).await;
    populate(&one).await;
    let mut swept = 0;
    for step in 1..=STEPS {
        let now = at(step);
        tokio::join!(one.set_time(&now), two.set_time(&now));
        let mut calls = tokio::task::JoinSet::new();
        for server in [&one, &two, &one, &two] {
            calls.spawn(sweep(server.accounts(), step));
        }
        for client in 0..CLIENTS {
            let server = if client % 2 == 0 { &one } else { &two };
            let api = server.accounts();
            calls.spawn(async move {
                recharge(api, client, step).await;
                0
            });
        }
        while let Some(done) = calls.join_next().await {
            swept += done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        }
    }
    assert!(swept > 0, "the sweeps had work");

    let conn = db.open().await;
    let boundary = format!("kind = {}", proto::HistoryKind::StateChanged as i32);
    let history = duplicates(&conn, "account_history", &boundary, "msisdn, at, to_state").await;
    assert_eq!(history, 0, "a boundary transition recorded twice");
    let events = duplicates(
        &conn,
        "outbox",
        "1 = 1",
        "msisdn, generation, event_type, from_state, to_state, effective_at",
    )
    .await;
    assert_eq!(events, 0, "an event written twice");
    let transitions_sql = format!("SELECT COUNT(*) FROM account_history WHERE {boundary}");
    let transitions = conn.scalar(&transitions_sql);
    let changed = conn.scalar(
        "SELECT COUNT(*) FROM outbox WHERE reason IN \
         ('VALIDITY_EXPIRED', 'GRACE_EXPIRED', 'LOCK_EXPIRED', 'UNACTIVATED_EXPIRED') \
         AND event_type = 2",
    );
    assert_eq!(
        transitions.await,
        changed.await,
        "one STATE_CHANGED per boundary row"
    );
    conn.close().await;
    tokio::join!(one.stop(), two.stop());
}
