//! The API and storage conformance suite, requests as such: a repeated request_id, refused
//! requests, concurrent requests on one account and on two servers, the test clock, the system
//! clock. Every test runs through the real gRPC API against an in-process server, once on SQLite
//! and once on PostgreSQL (`both_backends!`); the account's life is in tests/api.rs.

#[macro_use]
mod common;

use common::api::{Api, T0};
use common::{Backend, TestDb, TestServer, assert_case_rejected, assert_rejected, reason, rid, ts};
use ocs_lifecycle::config::ClockMode;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::{
    self, AccountState, ChargeResult, HistoryKind, RechargeChannel, RechargeResult, ServiceType,
};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

both_backends! {
    a_repeated_request_id_replays_the_first_result_and_applies_once,
    rejected_requests_change_nothing,
    concurrent_requests_on_one_account_serialise_exactly,
    two_servers_on_one_database_apply_each_request_exactly_once,
    the_test_clock_never_goes_backwards_and_health_is_serving,
    an_account_reads_back_exactly_as_it_was_answered,
    a_server_on_the_system_clock_has_no_test_clock,
}

async fn a_repeated_request_id_replays_the_first_result_and_applies_once(server: TestServer) {
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;

    let provision = proto::ProvisionAccountRequest {
        msisdn: "8613800000007".into(),
        preset_balance: 0,
        sold: true,
        initial_validity_days: 0,
        request_id: "prov-7".into(),
    };
    let first = api
        .0
        .provision_account(provision.clone())
        .await
        .unwrap()
        .into_inner();
    let replay = api
        .0
        .provision_account(provision)
        .await
        .expect("replayed provision");
    assert_eq!(
        replay.into_inner(),
        first,
        "a retried provisioning is not ALREADY_EXISTS"
    );
    api.activate("8613800000007").await;

    let recharge = proto::RechargeRequest {
        msisdn: "8613800000007".into(),
        amount: 1000,
        channel: RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: "rch-7".into(),
    };
    let applied = api.0.recharge(recharge.clone()).await.unwrap().into_inner();
    assert!(!applied.replayed);
    let after_first = db.snapshot("8613800000007").await;

    // Later, after other changes, the retry still gets the first result.
    server.set_time("2030-03-05T02:00:00Z").await;
    let replayed = api.0.recharge(recharge.clone()).await.unwrap().into_inner();
    assert!(replayed.replayed);
    assert_eq!(
        RechargeResult {
            replayed: false,
            ..replayed
        },
        applied
    );
    assert_eq!(
        db.snapshot("8613800000007").await,
        after_first,
        "applied once"
    );
    assert_eq!(
        db.history_count("8613800000007", HistoryKind::Recharge as i32)
            .await,
        1
    );
    assert_eq!(db.account("8613800000007").await.unwrap().balance, 1000);

    // The same key with other parameters, or for another method, is refused.
    let reused = [
        Request::Recharge(proto::RechargeRequest {
            amount: 2000,
            ..recharge.clone()
        }),
        Request::Recharge(proto::RechargeRequest {
            channel: RechargeChannel::Bank as i32,
            ..recharge.clone()
        }),
        Request::Charge(proto::ChargeRequest {
            msisdn: "8613800000007".into(),
            amount: 1000,
            request_id: "rch-7".into(),
        }),
        Request::Provision(proto::ProvisionAccountRequest {
            msisdn: "8613800000077".into(),
            sold: true,
            request_id: "rch-7".into(),
            ..Default::default()
        }),
    ];
    for request in reused {
        let case = format!("{request:?}");
        let answer = request.send(&mut api.0).await;
        assert_case_rejected(&case, answer, Code::AlreadyExists, "REQUEST_ID_REUSED");
    }
    assert_eq!(db.raw_account("8613800000077").await, None);
    assert_eq!(db.snapshot("8613800000007").await, after_first);

    let charge = proto::ChargeRequest {
        msisdn: "8613800000007".into(),
        amount: 100,
        request_id: "chg-7".into(),
    };
    let charged = api.0.charge(charge.clone()).await.unwrap().into_inner();
    assert!(!charged.replayed);
    let replayed = api.0.charge(charge.clone()).await.unwrap().into_inner();
    assert!(replayed.replayed);
    assert_eq!(
        ChargeResult {
            replayed: false,
            ..replayed
        },
        charged
    );
    assert_eq!(db.account("8613800000007").await.unwrap().balance, 900);
    let after_charge = db.snapshot("8613800000007").await;
    db.close().await;

    // The keys are in the database: they survive a restart.
    let test_db = server.db.clone();
    server.stop().await;
    let server = TestServer::start_on(test_db, ClockMode::Manual).await;
    server.set_time("2030-03-06T02:00:00Z").await;
    let mut api = Api::of(&server);
    let db = server.db().await;
    let replayed = api
        .0
        .recharge(recharge)
        .await
        .expect("replay after restart")
        .into_inner();
    assert!(replayed.replayed);
    assert_eq!(
        RechargeResult {
            replayed: false,
            ..replayed
        },
        applied
    );
    let replayed = api
        .0
        .charge(charge)
        .await
        .expect("replay after restart")
        .into_inner();
    assert!(replayed.replayed);
    assert_eq!(
        db.snapshot("8613800000007").await,
        after_charge,
        "nothing applied twice"
    );
    db.close().await;
    server.stop().await;
}

/// One request of any `AccountLifecycle` method, for tables of requests that must be refused.
#[derive(Debug)]
enum Request {
    Provision(proto::ProvisionAccountRequest),
    MarkSold(proto::MarkSoldRequest),
    Activate(proto::ActivateRequest),
    Recharge(proto::RechargeRequest),
    Charge(proto::ChargeRequest),
    Unlock(proto::UnlockRequest),
    Get(proto::GetAccountRequest),
    History(proto::GetAccountHistoryRequest),
    List(proto::ListAccountsRequest),
    Authorize(proto::AuthorizeRequest),
}

/// A response of any method, kept only to show it when a request was not refused.
type Answer = Result<Box<dyn std::fmt::Debug>, tonic::Status>;

impl Request {
    async fn send(self, c: &mut AccountLifecycleClient<Channel>) -> Answer {
        fn boxed<T: std::fmt::Debug + 'static>(r: tonic::Response<T>) -> Box<dyn std::fmt::Debug> {
            Box::new(r.into_inner())
        }
        match self {
            Request::Provision(r) => c.provision_account(r).await.map(boxed),
            Request::MarkSold(r) => c.mark_sold(r).await.map(boxed),
            Request::Activate(r) => c.activate(r).await.map(boxed),
            Request::Recharge(r) => c.recharge(r).await.map(boxed),
            Request::Charge(r) => c.charge(r).await.map(boxed),
            Request::Unlock(r) => c.unlock(r).await.map(boxed),
            Request::Get(r) => c.get_account(r).await.map(boxed),
            Request::History(r) => c.get_account_history(r).await.map(boxed),
            Request::List(r) => c.list_accounts(r).await.map(boxed),
            Request::Authorize(r) => c.authorize(r).await.map(boxed),
        }
    }
}

async fn rejected_requests_change_nothing(server: TestServer) {
    use Request::*;
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;
    const M: &str = "8613800000008";
    const NEW: &str = "8613800000099";
    const UNKNOWN: &str = "8613899999999";
    api.active(M).await;
    api.recharge(M, 1000).await;
    let before = db.snapshot(M).await;

    let online = RechargeChannel::Online as i32;
    let recharge = |msisdn: &str, amount: i64, channel: i32, request_id: &str| {
        Recharge(proto::RechargeRequest {
            msisdn: msisdn.into(),
            amount,
            channel,
            validity_days: 0,
            request_id: request_id.into(),
        })
    };
    let provision = |msisdn: &str, preset_balance: i64, days: u32, request_id: &str| {
        Provision(proto::ProvisionAccountRequest {
            msisdn: msisdn.into(),
            preset_balance,
            sold: true,
            initial_validity_days: days,
            request_id: request_id.into(),
        })
    };
    let charge = |amount: i64, request_id: &str| {
        Charge(proto::ChargeRequest {
            msisdn: M.into(),
            amount,
            request_id: request_id.into(),
        })
    };
    let unlock = |operator_id: &str, request_id: &str| {
        Unlock(proto::UnlockRequest {
            msisdn: M.into(),
            operator_id: operator_id.into(),
            branch_id: "bh".into(),
            recharge_amount: 0,
            request_id: request_id.into(),
        })
    };
    let authorize = |msisdn: &str, service: i32, destination: &str| {
        Authorize(proto::AuthorizeRequest {
            msisdn: msisdn.into(),
            service,
            destination: destination.into(),
        })
    };
    let voice_out = ServiceType::VoiceOut as i32;
    let list = |state: i32, page_size: u32| {
        List(proto::ListAccountsRequest {
            state,
            page_size,
            page_token: String::new(),
        })
    };
    let history = |msisdn: &str, page_size: u32| {
        History(proto::GetAccountHistoryRequest {
            msisdn: msisdn.into(),
            page_size,
            page_token: String::new(),
        })
    };
    let get = |msisdn: &str| {
        Get(proto::GetAccountRequest {
            msisdn: msisdn.into(),
        })
    };

    let bad_msisdns = [
        "",
        "123",
        "abc12345678",
        "1234567890123456",
        "+",
        "8613 800000008",
    ];
    let invalid_msisdn = bad_msisdns.into_iter().flat_map(|bad| {
        [
            provision(bad, 0, 0, &rid()),
            recharge(bad, 1000, online, &rid()),
            get(bad),
            authorize(bad, voice_out, "110"),
        ]
    });
    let invalid_amount = [0, -1, i64::MIN]
        .into_iter()
        .flat_map(|amount| [recharge(M, amount, online, &rid()), charge(amount, &rid())])
        .chain([provision(NEW, -1, 0, &rid())]);
    let invalid_argument = [0, 99, -1]
        .into_iter()
        .map(|channel| recharge(M, 1000, channel, &rid()))
        .chain([
            authorize(M, 0, "110"),
            authorize(M, 6, "110"),
            list(0, 1001),
            list(9, 10),
            history(M, 1001),
            provision(NEW, 0, 541, &rid()),
            Recharge(proto::RechargeRequest {
                msisdn: M.into(),
                amount: 1000,
                channel: online,
                validity_days: 36_501,
                request_id: rid(),
            }),
            authorize(M, voice_out, "10010abc"),
            recharge(M, 1000, online, &"k".repeat(129)),
            unlock("", &rid()),
        ]);
    // Every mutating request needs its idempotency key.
    let missing_request_id = [
        recharge(M, 1000, online, ""),
        charge(1, ""),
        provision(NEW, 0, 0, ""),
        MarkSold(proto::MarkSoldRequest {
            msisdn: M.into(),
            request_id: String::new(),
        }),
        Activate(proto::ActivateRequest {
            msisdn: M.into(),
            request_id: String::new(),
        }),
        unlock("op", ""),
    ];
    // An unknown MSISDN is NOT_FOUND, for reads and writes alike.
    let not_found = [
        get(UNKNOWN),
        recharge(UNKNOWN, 1000, online, &rid()),
        history(UNKNOWN, 0),
    ];
    // A live MSISDN cannot be provisioned again.
    let exists = [provision(M, 0, 0, &rid())];

    let table: Vec<(Code, &str, Vec<Request>)> = vec![
        (
            Code::InvalidArgument,
            "INVALID_MSISDN",
            invalid_msisdn.collect(),
        ),
        (
            Code::InvalidArgument,
            "INVALID_AMOUNT",
            invalid_amount.collect(),
        ),
        (
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            invalid_argument.collect(),
        ),
        (
            Code::InvalidArgument,
            "MISSING_REQUEST_ID",
            missing_request_id.into(),
        ),
        (Code::NotFound, "ACCOUNT_NOT_FOUND", not_found.into()),
        (Code::AlreadyExists, "ACCOUNT_EXISTS", exists.into()),
    ];
    for (code, expected_reason, requests) in table {
        for request in requests {
            let case = format!("{request:?}");
            let answer = request.send(&mut api.0).await;
            assert_case_rejected(&case, answer, code, expected_reason);
        }
    }

    assert_eq!(
        db.snapshot(M).await,
        before,
        "the rejected requests wrote nothing"
    );
    assert_eq!(db.raw_account(NEW).await, None);
    assert_eq!(db.raw_account(UNKNOWN).await, None);

    // A balance that would overflow is refused; the first recharge stands.
    const BIG: &str = "8613800000009";
    api.active(BIG).await;
    let max = api.recharge(BIG, i64::MAX).await;
    assert_eq!(max.balance_after, i64::MAX);
    let before = db.snapshot(BIG).await;
    for amount in [i64::MAX, 1] {
        let answer = recharge(BIG, amount, online, &rid()).send(&mut api.0).await;
        assert_case_rejected(
            &format!("{amount}"),
            answer,
            Code::InvalidArgument,
            "AMOUNT_OVERFLOW",
        );
    }
    assert_eq!(db.snapshot(BIG).await, before);
    assert_eq!(db.account(BIG).await.unwrap().balance, i64::MAX);
    db.close().await;
}

async fn concurrent_requests_on_one_account_serialise_exactly(server: TestServer) {
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;
    const M: &str = "8613800000040";
    api.active(M).await;

    // 64 recharges with distinct keys from 8 clients, each on its own connection.
    let mut tasks = Vec::new();
    for task in 0..8i64 {
        let mut client = server.new_accounts_client().await;
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..8i64 {
                let amount = 100 + task * 8 + i;
                let request = proto::RechargeRequest {
                    msisdn: M.into(),
                    amount,
                    channel: RechargeChannel::Bank as i32,
                    validity_days: 1,
                    request_id: format!("par-{task}-{i}"),
                };
                let result = client.recharge(request).await.expect("parallel recharge");
                results.push((amount, result.into_inner()));
            }
            results
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.extend(task.await.expect("task"));
    }
    let total: i64 = (0..64).map(|i| 100 + i).sum();
    assert_eq!(results.len(), 64);
    assert!(results.iter().all(|(_, r)| !r.replayed));
    // No lost update: the recharges form one chain of balances from 0 to the total.
    results.sort_by_key(|(_, r)| r.balance_before);
    let mut expected_before = 0;
    for (amount, result) in &results {
        assert_eq!(result.balance_before, expected_before, "{result:?}");
        assert_eq!(result.balance_after, expected_before + amount, "{result:?}");
        expected_before = result.balance_after;
    }
    assert_eq!(expected_before, total);
    assert_eq!(api.get(M).await.balance, total);
    assert_eq!(db.account(M).await.unwrap().balance, total);
    assert_eq!(db.history_count(M, HistoryKind::Recharge as i32).await, 64);

    // The same request_id sent 8 times at once is applied once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = server.new_accounts_client().await;
        tasks.push(tokio::spawn(async move {
            let request = proto::RechargeRequest {
                msisdn: M.into(),
                amount: 777,
                channel: RechargeChannel::Online as i32,
                validity_days: 0,
                request_id: "same-key".into(),
            };
            client
                .recharge(request)
                .await
                .map(tonic::Response::into_inner)
        }));
    }
    let mut same = Vec::new();
    for task in tasks {
        same.push(task.await.expect("task").expect("same-key recharge"));
    }
    assert_eq!(same.iter().filter(|r| !r.replayed).count(), 1, "{same:?}");
    assert!(same.iter().all(|r| r.balance_after == total + 777));
    assert_eq!(db.account(M).await.unwrap().balance, total + 777);
    assert_eq!(db.history_count(M, HistoryKind::Recharge as i32).await, 65);

    // A new MSISDN provisioned at once by 8 callers: one wins, the others see it exists.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut client = server.new_accounts_client().await;
        tasks.push(tokio::spawn(async move {
            let request = proto::ProvisionAccountRequest {
                msisdn: "8613800000041".into(),
                preset_balance: 0,
                sold: true,
                initial_validity_days: 0,
                request_id: format!("prov-race-{i}"),
            };
            client
                .provision_account(request)
                .await
                .map(tonic::Response::into_inner)
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(account) => {
                won += 1;
                assert_eq!(account.generation, 1);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
                assert_eq!(reason(&status), "ACCOUNT_EXISTS");
            }
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        db.history_count("8613800000041", HistoryKind::Provisioned as i32)
            .await,
        1
    );
    assert_eq!(db.counts().await.accounts, 2);
    db.close().await;
}

async fn two_servers_on_one_database_apply_each_request_exactly_once(server: TestServer) {
    server.set_time(T0).await;
    let other = TestServer::start_on(server.db.clone(), ClockMode::Manual).await;
    other.set_time(T0).await;
    let db = server.db().await;
    const M: &str = "8613800000045";
    Api::of(&server).active(M).await;

    // Each recharge is sent to both servers at once, under the same key.
    let mut tasks = Vec::new();
    for (n, target) in [&server, &other, &server, &other].into_iter().enumerate() {
        let mut client = target.new_accounts_client().await;
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..16i64 {
                let request = proto::RechargeRequest {
                    msisdn: M.into(),
                    amount: 1000 + i,
                    channel: RechargeChannel::Online as i32,
                    validity_days: 0,
                    // Tasks 0/1 share keys, and so do tasks 2/3.
                    request_id: format!("two-{}-{i}", n / 2),
                };
                let result = client
                    .recharge(request)
                    .await
                    .expect("recharge")
                    .into_inner();
                results.push(result);
            }
            results
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.extend(task.await.expect("task"));
    }
    assert_eq!(
        results.iter().filter(|r| !r.replayed).count(),
        32,
        "each key applied once"
    );
    let total: i64 = 2 * (0..16).map(|i| 1000 + i).sum::<i64>();
    assert_eq!(db.account(M).await.unwrap().balance, total);
    assert_eq!(db.history_count(M, HistoryKind::Recharge as i32).await, 32);
    assert_eq!(
        db.count("idempotency_keys").await,
        2 + 32,
        "provision, activate, 32 recharges"
    );
    assert_eq!(Api::of(&other).get(M).await.balance, total);
    db.close().await;
    other.stop().await;
    server.stop().await;
}

async fn the_test_clock_never_goes_backwards_and_health_is_serving(server: TestServer) {
    let mut clock = server.clock();
    let now = clock
        .set_time(proto::SetTimeRequest { time: Some(ts(T0)) })
        .await
        .unwrap();
    assert_eq!(now.into_inner().now, Some(ts(T0)));
    let backwards = clock
        .set_time(proto::SetTimeRequest {
            time: Some(ts("2030-03-01T01:59:59Z")),
        })
        .await;
    assert_rejected(backwards, Code::FailedPrecondition, "");
    let backwards = clock
        .advance_time(proto::AdvanceTimeRequest { seconds: -1 })
        .await;
    assert_rejected(backwards, Code::FailedPrecondition, "");
    let got = clock
        .get_time(proto::GetTimeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.now,
        Some(ts(T0)),
        "a refused move leaves the clock where it was"
    );
    let advanced = clock
        .advance_time(proto::AdvanceTimeRequest { seconds: 86_400 })
        .await
        .unwrap();
    assert_eq!(advanced.into_inner().now, Some(ts("2030-03-02T02:00:00Z")));

    // The clock is the one the lifecycle uses.
    let mut api = Api::of(&server);
    let card = api.provision("8613800000050").await;
    assert_eq!(card.provisioned_at, Some(ts("2030-03-02T02:00:00Z")));

    let mut health = server.health();
    for service in [
        "",
        "ocs.lifecycle.v1.AccountLifecycle",
        "ocs.lifecycle.v1.TestClock",
    ] {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let status = health
            .check(request)
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
}

async fn an_account_reads_back_exactly_as_it_was_answered(server: TestServer) {
    let mut api = Api::of(&server);
    // The manual clock as it starts (the real time)...
    let provisioned = api.provision("8613800000070").await;
    assert_eq!(api.get("8613800000070").await, provisioned);
    // ...and set to an instant finer than PostgreSQL's microseconds.
    server.set_time("2030-03-01T02:00:00.123456789Z").await;
    let provisioned = api.provision("8613800000071").await;
    assert_eq!(api.get("8613800000071").await, provisioned);
    let activated = api.activate("8613800000071").await;
    assert_eq!(api.get("8613800000071").await, activated);
    let now = server
        .clock()
        .get_time(proto::GetTimeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        now.now,
        Some(ts("2030-03-01T02:00:00.123456Z")),
        "the clock keeps microseconds"
    );
}

async fn a_server_on_the_system_clock_has_no_test_clock(server: TestServer) {
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    api.provision("8613800000060").await;

    let system = TestServer::start_on(server.db.clone(), ClockMode::System).await;
    let missing = system.clock().get_time(proto::GetTimeRequest {}).await;
    assert_rejected(missing, Code::Unimplemented, "");
    let missing = system
        .clock()
        .set_time(proto::SetTimeRequest { time: Some(ts(T0)) })
        .await;
    assert_rejected(missing, Code::Unimplemented, "");
    // The same database, served on the real clock.
    let mut system_api = Api::of(&system);
    assert_eq!(
        system_api.get("8613800000060").await.state(),
        AccountState::Unactivated
    );
    let mut health = system.health();
    let request = HealthCheckRequest {
        service: "ocs.lifecycle.v1.AccountLifecycle".into(),
    };
    let status = health
        .check(request)
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let request = HealthCheckRequest {
        service: "ocs.lifecycle.v1.TestClock".into(),
    };
    let test_clock = health.check(request).await.map(|r| r.into_inner().status);
    assert_ne!(
        test_clock.ok(),
        Some(ServingStatus::Serving as i32),
        "no TestClock to serve"
    );
    system.stop().await;
    server.stop().await;
}

/// The harness itself: a PostgreSQL test database is created fresh and dropped afterwards.
#[tokio::test]
async fn postgres_test_databases_are_created_fresh_and_dropped() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let name = db.url.rsplit('/').next().expect("database name").to_owned();
    assert!(name.starts_with("ocs_t_"), "{name}");
    let base = std::env::var("OCS_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| common::DEFAULT_PG_URL.to_owned());
    let exists = |base: String, name: String| async move {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&base).await.expect("connect");
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_optional(&mut conn)
            .await
            .expect("query pg_database");
        found.is_some()
    };
    assert!(exists(base.clone(), name.clone()).await);
    drop(db);
    assert!(
        !exists(base, name).await,
        "the test database is dropped with its last handle"
    );
}
