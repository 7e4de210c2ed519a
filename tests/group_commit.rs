//! Group commit (`store::group`): SQLite's one writer, PostgreSQL's `group_commit_writers`, and
//! PostgreSQL without them (every mutation its own transaction), through the real API.
//!
//! - 32 callers at once, each recharge sent twice (the second a replay) between requests that
//!   are refused (an unknown number: refused in the store, inside a group): every recharge is
//!   applied once, balances and history agree, and `generation_values` and `history_totals`
//!   — written once per group — equal the sums of the history.
//! - A mutation that fails in the database (a trigger refuses its history row) fails alone: the
//!   others of its group are applied, each once, and the failing one leaves nothing behind.
//!
//! - One group holding several recharges of one account, the same request sent several times,
//!   and a refused request: each mutation sees the ones before it in the group, the request is
//!   applied once and replayed to the others with the same answer, the refusal writes nothing.
//!
//! - Two servers on one PostgreSQL database provision the same new number at the same moment,
//!   both having read that it has no row: one provisioning is applied, the other refused.
//!
//! (Killing the server while large groups are in flight: tests/faults_crash.rs.)

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::sync::Arc;

use common::api::{Api, activated, on};
use common::{Backend, TestDb, TestServer, test_config};
use ocs_lifecycle::config::ClockMode;
use ocs_lifecycle::lifecycle::HistoryKind;
use ocs_lifecycle::proto::{ProvisionAccountRequest, RechargeChannel, RechargeRequest};
use sqlx::Connection;
use tonic::Code;

both_databases! {
    sqlite, postgres_groups: recharges_at_once_apply_once_and_sum_exactly,
}
both_databases! {
    sqlite_failing, postgres_failing: a_mutation_failing_in_the_database_fails_alone,
}
both_databases! {
    sqlite_own_writes, postgres_own_writes: a_group_sees_its_own_writes,
}
tests_on_backend!(postgres_alone, Postgres, crate::common::on_database: recharges_one_transaction_each);
tests_on_backend!(
    postgres_instances,
    Postgres,
    crate::common::on_database: one_new_number_provisioned_through_two_servers_at_once_is_provisioned_once
);

/// The accounts the callers recharge.
const ACCOUNTS: usize = 6;
const CALLERS: u32 = 32;
const ROUNDS: u32 = 8;

/// A server on `db` with `writers` PostgreSQL group commit writers (SQLite has its one).
async fn start(db: Arc<TestDb>, writers: usize) -> TestServer {
    let mut config = test_config(ClockMode::Manual);
    config.group_commit_writers = Some(writers);
    TestServer::start_with(db, config).await
}

fn number(i: usize) -> String {
    format!("86139000000{i:02}")
}

async fn recharges_at_once_apply_once_and_sum_exactly(db: Arc<TestDb>) {
    let server = start(db, 2).await;
    recharges_at_once(&server).await;
    // The writers took more than one mutation at a time, and no group failed.
    let groups = server.metric("ocs_group_commits_total").await;
    let mutations = server.metric("ocs_group_commit_mutations_total").await;
    println!("{mutations} mutations in {groups} groups");
    assert!(
        groups > 0.0 && mutations > groups,
        "{mutations} in {groups}"
    );
    assert_eq!(server.metric("ocs_group_commit_splits_total").await, 0.0);
    server.stop().await;
}

async fn recharges_one_transaction_each(db: Arc<TestDb>) {
    let server = start(db, 0).await;
    recharges_at_once(&server).await;
    assert_eq!(server.metric("ocs_group_commits_total").await, 0.0);
    server.stop().await;
}

async fn recharges_at_once(server: &TestServer) {
    let mut api = Api::of(server);
    on(server, &mut api, "2030-01-10").await;
    let numbers: Vec<String> = (0..ACCOUNTS).map(number).collect();
    for msisdn in &numbers {
        activated(&mut api, msisdn, 30).await;
    }
    // Spawned here, all of them, before any is awaited.
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let mut client = server.accounts();
            let numbers = numbers.clone();
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let request = RechargeRequest {
                        msisdn: numbers[((caller + round) as usize) % ACCOUNTS].clone(),
                        amount: i64::from(1000 + caller),
                        channel: RechargeChannel::Online as i32,
                        validity_days: 0,
                        request_id: format!("values-{caller}-{round}"),
                    };
                    let unknown = RechargeRequest {
                        msisdn: "8613999999999".into(),
                        request_id: format!("unknown-{caller}-{round}"),
                        ..request.clone()
                    };
                    let first = client.recharge(request.clone()).await;
                    let refused = client.recharge(unknown).await;
                    let again = client.recharge(request.clone()).await;
                    let (first, again) = (
                        first.expect("recharge").into_inner(),
                        again.expect("the same recharge again").into_inner(),
                    );
                    assert!(refused.is_err(), "a recharge of an unknown number");
                    assert!(!first.replayed && again.replayed, "{request:?}");
                    assert_eq!(first.account, again.account, "the replay answers the same");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller");
    }

    let db = server.db().await;
    let recharge_rows = |msisdn: &str, what: &str| {
        format!(
            "SELECT {what} FROM account_history WHERE msisdn = '{msisdn}' AND generation = 1 \
             AND kind = {}",
            HistoryKind::Recharge as i32
        )
    };
    let values = |msisdn: &str, what: &str| {
        format!("SELECT {what} FROM generation_values WHERE msisdn = '{msisdn}' AND generation = 1")
    };
    let mut recharges = 0;
    for (i, msisdn) in numbers.iter().enumerate() {
        // Caller c recharges account (c + round) % ACCOUNTS in each round, 1000 + c each time.
        let expected: Vec<i64> = (0..CALLERS)
            .flat_map(|c| (0..ROUNDS).map(move |r| (c, r)))
            .filter(|(c, r)| ((c + r) as usize) % ACCOUNTS == i)
            .map(|(c, _)| i64::from(1000 + c))
            .collect();
        let count = db.scalar(&recharge_rows(msisdn, "COUNT(*)")).await;
        let total = db
            .scalar(&recharge_rows(msisdn, "CAST(SUM(amount) AS BIGINT)"))
            .await;
        assert_eq!(
            count,
            expected.len() as i64,
            "{msisdn}: one row per recharge"
        );
        assert_eq!(total, expected.iter().sum::<i64>(), "{msisdn}");
        let balance = db.account(msisdn).await.expect("account").balance;
        assert_eq!(
            balance, total,
            "{msisdn}: the balance is the recharges' sum"
        );
        assert_eq!(db.scalar(&values(msisdn, "recharge_count")).await, count);
        assert_eq!(db.scalar(&values(msisdn, "recharge_total")).await, total);
        let latest = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM generation_values WHERE msisdn = '{msisdn}' \
                 AND generation = 1 AND activated_at IS NOT NULL AND last_recharge_at = ({})",
                recharge_rows(msisdn, "MAX(at)")
            ))
            .await;
        assert_eq!(
            latest, 1,
            "{msisdn}: activation kept, last recharge the latest"
        );
        recharges += count;
    }
    assert_eq!(recharges, i64::from(CALLERS * ROUNDS));
    db.assert_totals_match_history("32 callers at once").await;
}

/// The number whose history rows the database refuses.
const POISONED: &str = "8613900000099";
/// Requests sent at once in each round of the failing-mutation test, one of them poisoned:
/// the group size the one writer waits for.
const AT_ONCE: usize = 8;
const FAILING_ROUNDS: usize = 6;

async fn a_mutation_failing_in_the_database_fails_alone(db: Arc<TestDb>) {
    let postgres = db.backend == Backend::Postgres;
    let setup = start(db.clone(), 0).await;
    let mut api = Api::of(&setup);
    on(&setup, &mut api, "2030-01-10").await;
    let numbers: Vec<String> = (0..ACCOUNTS).map(number).collect();
    for msisdn in numbers.iter().chain([&POISONED.to_owned()]) {
        activated(&mut api, msisdn, 30).await;
    }
    setup.stop().await;
    let raw = db.open_for_writing().await;
    if postgres {
        raw.execute(
            "CREATE FUNCTION refuse_row() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'refused by a test trigger'; END $$",
        )
        .await;
        raw.execute(&format!(
            "CREATE TRIGGER poisoned BEFORE INSERT ON account_history FOR EACH ROW \
             WHEN (NEW.msisdn = '{POISONED}') EXECUTE FUNCTION refuse_row()"
        ))
        .await;
    } else {
        raw.execute(&format!(
            "CREATE TRIGGER poisoned BEFORE INSERT ON account_history \
             WHEN NEW.msisdn = '{POISONED}' BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
        ))
        .await;
    }
    let before = raw.account(POISONED).await.expect("account");
    // One writer that waits (up to a safety bound) until a round's requests are all queued,
    // so that the poisoned one is committed with the others, whatever the machine's speed.
    let server = TestServer::start_with(db, common::one_writer_waiting_for(AT_ONCE)).await;
    server.set_time("2030-01-10T04:00:00Z").await;

    let mut applied = 0;
    for round in 0..FAILING_ROUNDS {
        let requests: Vec<_> = (0..AT_ONCE)
            .map(|i| {
                let mut client = server.accounts();
                let msisdn = match i {
                    0 => POISONED.to_owned(),
                    i => number((round + i) % ACCOUNTS),
                };
                let request = RechargeRequest {
                    msisdn,
                    amount: 1000,
                    channel: RechargeChannel::Bank as i32,
                    validity_days: 0,
                    request_id: format!("poison-{round}-{i}"),
                };
                tokio::spawn(async move { (i, client.recharge(request).await) })
            })
            .collect();
        for request in requests {
            match request.await.expect("caller") {
                (0, answer) => assert!(answer.is_err(), "the poisoned recharge: {answer:?}"),
                (_, answer) => {
                    answer.expect("a recharge in the same group");
                    applied += 1;
                }
            }
        }
    }
    assert_eq!(applied, (FAILING_ROUNDS * (AT_ONCE - 1)) as i64);
    let groups = server.metric("ocs_group_commits_total").await;
    let db = server.db().await;
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM account_history WHERE kind = {}",
            HistoryKind::Recharge as i32
        ))
        .await,
        applied,
        "every recharge answered OK is there once"
    );
    let mut balances = 0;
    for msisdn in &numbers {
        balances += db.account(msisdn).await.expect("account").balance;
    }
    assert_eq!(balances, applied * 1000);
    assert_eq!(
        db.account(POISONED).await.expect("account"),
        before,
        "the failing mutation wrote nothing"
    );
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM idempotency_keys WHERE request_id LIKE 'poison-%'")
            .await,
        applied,
        "no idempotency key for a failed mutation"
    );
    db.assert_totals_match_history("groups with a failing mutation")
        .await;
    // The group's statements failed together; each backend rolled the group back and ran it
    // again mutation by mutation (PostgreSQL one transaction each, SQLite under savepoints).
    let splits = server.metric("ocs_group_commit_splits_total").await;
    println!("{groups} groups, {splits} split");
    assert!(splits >= 1.0, "no group was split");
    server.stop().await;
}

/// Requests of the one group in `a_group_sees_its_own_writes`.
const IN_ONE_GROUP: usize = 12;

async fn a_group_sees_its_own_writes(db: Arc<TestDb>) {
    let setup = start(db.clone(), 0).await;
    let mut api = Api::of(&setup);
    on(&setup, &mut api, "2030-01-10").await;
    let msisdn = number(0);
    activated(&mut api, &msisdn, 30).await;
    setup.stop().await;
    // One writer that waits until all the requests are queued: they are one group.
    let server = TestServer::start_with(db, common::one_writer_waiting_for(IN_ONE_GROUP)).await;
    server.set_time("2030-01-10T04:00:00Z").await;
    let groups_before = server.metric("ocs_group_commits_total").await;
    let splits_before = server.metric("ocs_group_commit_splits_total").await;
    let recharge = |amount: i64, request_id: &str| RechargeRequest {
        msisdn: msisdn.clone(),
        amount,
        channel: RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: request_id.into(),
    };
    // 0..4: distinct recharges of one account; 4..11: one request sent 7 times; 11: an unknown
    // number, refused by the store inside the group.
    let requests: Vec<_> = (0..IN_ONE_GROUP)
        .map(|i| {
            let mut client = server.accounts();
            let request = match i {
                0..4 => recharge(100 * (i as i64 + 1), &format!("own-{i}")),
                4..11 => recharge(5000, "own-repeated"),
                _ => RechargeRequest {
                    msisdn: "8613999999999".into(),
                    ..recharge(100, "own-refused")
                },
            };
            tokio::spawn(async move { (i, client.recharge(request).await) })
        })
        .collect();
    let (mut repeated, mut applied) = (Vec::new(), Vec::new());
    for request in requests {
        match request.await.expect("caller") {
            (11, answer) => assert!(answer.is_err(), "an unknown number: {answer:?}"),
            (i, answer) => {
                let answer = answer.expect("recharge").into_inner();
                if i >= 4 {
                    repeated.push(answer.clone());
                }
                if !answer.replayed {
                    applied.push(answer);
                }
            }
        }
    }
    assert_eq!(
        server.metric("ocs_group_commits_total").await - groups_before,
        1.0,
        "the requests were committed as one group"
    );
    assert_eq!(
        server.metric("ocs_group_commit_splits_total").await - splits_before,
        0.0,
        "the group's own statements applied it (it was not split)"
    );
    assert_eq!(
        repeated.iter().filter(|a| !a.replayed).count(),
        1,
        "the repeated request is applied once: {repeated:?}"
    );
    let first = repeated.iter().find(|a| !a.replayed).expect("applied");
    for again in &repeated {
        assert_eq!(
            again.account, first.account,
            "every replay answers the same"
        );
        assert_eq!(again.balance_after, first.balance_after);
    }
    let db = server.db().await;
    let expected = 100 + 200 + 300 + 400 + 5000;
    assert_eq!(
        db.account(&msisdn).await.expect("account").balance,
        expected
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM account_history WHERE msisdn = '{msisdn}' AND kind = {}",
            HistoryKind::Recharge as i32
        ))
        .await,
        5,
        "one history row per applied recharge"
    );
    // Each recharge saw the balance the ones before it in the group left: the balances before
    // and after chain up to the stored one.
    applied.sort_by_key(|a| a.balance_before);
    assert_eq!(applied.len(), 5);
    for pair in applied.windows(2) {
        assert_eq!(pair[0].balance_after, pair[1].balance_before, "{applied:?}");
    }
    assert_eq!(applied[4].balance_after, expected);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM idempotency_keys WHERE request_id LIKE 'own-%'")
            .await,
        5,
        "a key per applied request, none for the refused one"
    );
    db.assert_totals_match_history("one group with its own writes")
        .await;
    server.stop().await;
}

/// Two servers on one PostgreSQL database, one group commit writer each, provision the same
/// new number at once, each in a group with the provisioning of a number of its own (a group of
/// one runs alone, with its own statements). A row that does not exist cannot be locked, so
/// both groups read that the number is free; the test holds their writes (a lock on the
/// history table, which both groups' write statements wait for) until both have read and
/// decided, then lets them go. One provisioning of the number is applied; the other group fails
/// on the primary key, its mutations run again one by one, and that provisioning finds the
/// number taken and is refused with ALREADY_EXISTS, as if the two had come one after the other.
/// The account, its history and its events are those of one provisioning.
async fn one_new_number_provisioned_through_two_servers_at_once_is_provisioned_once(
    db: Arc<TestDb>,
) {
    let servers = [
        TestServer::start_with(db.clone(), common::one_writer_waiting_for(2)).await,
        TestServer::start_with(db.clone(), common::one_writer_waiting_for(2)).await,
    ];
    for server in &servers {
        server.set_time("2030-01-10T04:00:00Z").await;
    }
    let provision = |msisdn: &str, request_id: String| ProvisionAccountRequest {
        msisdn: msisdn.into(),
        preset_balance: 0,
        sold: true,
        initial_validity_days: 0,
        request_id,
    };
    // What one provisioning writes, for comparison (a group of two on the first server).
    let alone = [number(41), number(42)];
    let calls: Vec<_> = alone
        .iter()
        .map(|msisdn| {
            let mut client = servers[0].accounts();
            let request = provision(msisdn, format!("alone-{msisdn}"));
            tokio::spawn(async move { client.provision_account(request).await })
        })
        .collect();
    for call in calls {
        call.await.expect("caller").expect("provisioned");
    }
    let mut holder = sqlx::PgConnection::connect(&db.url)
        .await
        .expect("a connection of the test's own");
    sqlx::raw_sql("BEGIN; LOCK TABLE account_history IN SHARE MODE")
        .execute(&mut holder)
        .await
        .expect("lock the history table");
    let msisdn = number(40);
    let calls: Vec<_> = servers
        .iter()
        .enumerate()
        .flat_map(|(i, server)| {
            let own = number(43 + i);
            [
                provision(&msisdn, format!("at-once-{i}")),
                provision(&own, format!("own-{i}")),
            ]
            .map(|request| {
                let mut client = server.accounts();
                tokio::spawn(async move { client.provision_account(request).await })
            })
        })
        .collect();
    let direct = db.open().await;
    let waiting = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND wait_event_type = 'Lock'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while direct.scalar(waiting).await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "both servers' groups never waited for the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sqlx::raw_sql("COMMIT")
        .execute(&mut holder)
        .await
        .expect("release the lock");
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.expect("caller"));
    }
    // In order: server 0's shared and own, server 1's shared and own.
    assert!(answers[1].is_ok() && answers[3].is_ok(), "{answers:?}");
    let shared = [&answers[0], &answers[2]];
    let applied = shared.iter().filter(|answer| answer.is_ok()).count();
    assert_eq!(
        applied, 1,
        "one provisioning of the number applied: {answers:?}"
    );
    let refused = shared
        .iter()
        .find_map(|answer| answer.as_ref().err())
        .expect("one refused");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    let mut splits = 0.0;
    for server in &servers {
        splits += server.metric("ocs_group_commit_splits_total").await;
    }
    assert_eq!(
        splits, 1.0,
        "the losing group failed whole and ran one by one"
    );
    let rows_of = |table: &str, number: &str| {
        format!("SELECT COUNT(*) FROM {table} WHERE msisdn = '{number}'")
    };
    for table in ["account_history", "outbox", "accounts"] {
        assert_eq!(
            direct.scalar(&rows_of(table, &msisdn)).await,
            direct.scalar(&rows_of(table, &alone[0])).await,
            "{table}: the rows of one provisioning"
        );
    }
    assert_eq!(
        direct
            .scalar("SELECT COUNT(*) FROM idempotency_keys WHERE request_id LIKE 'at-once-%'")
            .await,
        1,
        "the refused request keeps no key"
    );
    direct
        .assert_totals_match_history("two servers, one number")
        .await;
    direct.close().await;
    for server in servers {
        server.stop().await;
    }
}
