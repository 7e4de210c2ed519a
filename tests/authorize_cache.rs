//! The Authorize facts cache kept coherent by the commits (issue 17.2), through the real gRPC
//! API: a server's own commits are seen by its next Authorize, cached facts still turn at
//! midnight to the second with the default (long) window, and on PostgreSQL a commit through
//! another server reaches this server's cache through LISTEN/NOTIFY; a lost listener turns the
//! cache off, and it starts empty once listening again.
//!
//! Delays are measured and printed (`cargo test --test authorize_cache -- --nocapture`), never
//! asserted: the tests wait for each outcome with a bounded poll. Before warming a cache they
//! wait for its server to say it is on (`ocs_authorize_cache_enabled 1`): on PostgreSQL it is
//! off until the server's listener listens and has heard its own announcement back.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{Api, T0};
use common::{Backend, TestDb, TestServer, rid};
use ocs_lifecycle::config::ClockMode;
use ocs_lifecycle::proto::{self, AccountState, ServiceType};

const M: &str = "8613800000171";
const N: &str = "8613800000172";
/// An ordinary destination: an outgoing call to it needs a balance.
const OTHER: &str = "13900000000";
/// How long a test waits for an outcome before it fails.
const PATIENCE: Duration = Duration::from_secs(30);

both_backends! {
    the_servers_own_commits_are_seen_by_its_next_authorize,
    cached_facts_still_turn_at_midnight_to_the_second_with_the_default_window,
}

/// Whether `msisdn` may call out to an ordinary number now, per `api`'s server.
async fn may_call_out(api: &mut Api, msisdn: &str) -> bool {
    api.authorize(msisdn, ServiceType::VoiceOut, OTHER)
        .await
        .allowed
}

/// Asks `api` until `msisdn`'s answer is `allowed`; how long that took.
async fn until_seen(api: &mut Api, msisdn: &str, allowed: bool) -> Duration {
    let start = Instant::now();
    while may_call_out(api, msisdn).await != allowed {
        assert!(
            start.elapsed() < PATIENCE,
            "{msisdn}: allowed = {allowed} was never seen"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

/// A server on `db` whose cache is on.
async fn serving_from_its_cache(db: &Arc<TestDb>) -> TestServer {
    let server = TestServer::start_on(db.clone(), ClockMode::Manual).await;
    server.authorize_cache_on().await;
    server.set_time(T0).await;
    server
}

async fn set_balance_behind_the_servers_back(db: &TestDb, msisdn: &str, balance: i64) {
    let direct = db.open_for_writing().await;
    direct
        .execute(&format!(
            "UPDATE accounts SET balance = {balance} WHERE msisdn = '{msisdn}'"
        ))
        .await;
    direct.close().await;
}

async fn the_servers_own_commits_are_seen_by_its_next_authorize(server: TestServer) {
    server.authorize_cache_on().await;
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    api.active(M).await;
    assert!(!may_call_out(&mut api, M).await, "no balance yet");
    for _ in 0..3 {
        api.recharge(M, 1000).await;
        assert!(may_call_out(&mut api, M).await, "the recharge, at once");
        api.charge(M, 1000).await;
        assert!(!may_call_out(&mut api, M).await, "the charge, at once");
    }
    // A replay changes nothing and a refused charge writes nothing: the answers stay right.
    let recharge = proto::RechargeRequest {
        msisdn: M.into(),
        amount: 500,
        channel: proto::RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: rid(),
    };
    api.0.recharge(recharge.clone()).await.expect("Recharge");
    assert!(may_call_out(&mut api, M).await);
    let replayed = api.0.recharge(recharge).await.expect("replay").into_inner();
    assert!(replayed.replayed);
    assert!(may_call_out(&mut api, M).await);
    let refused = api
        .0
        .charge(proto::ChargeRequest {
            msisdn: M.into(),
            amount: 501,
            request_id: rid(),
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(may_call_out(&mut api, M).await);
    api.charge(M, 500).await;
    assert!(!may_call_out(&mut api, M).await);

    // The answers above come from the cache, filled by the commits themselves (on PostgreSQL
    // the server does not evict what it announced itself): a write behind the server's back
    // (which no server hears) is not seen within the window.
    api.recharge(M, 1000).await;
    set_balance_behind_the_servers_back(&server.db, M, 0).await;
    assert!(
        may_call_out(&mut api, M).await,
        "the recharge's own facts, served from the cache"
    );
}

async fn cached_facts_still_turn_at_midnight_to_the_second_with_the_default_window(
    server: TestServer,
) {
    use ServiceType::VoiceOut;
    server.authorize_cache_on().await;
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    api.active(M).await;
    // The recharge's commit fills the cache; the clock then runs to the last second of the
    // validity and one second past it, with no write in between.
    let valid_until = api.recharge_days(M, 1000, 10).await.valid_until_after;
    let day = chrono::NaiveDate::parse_from_str(&valid_until, "%Y-%m-%d").unwrap();
    let last = format!("{valid_until}T23:59:59+08:00");
    let next = format!("{}T00:00:00+08:00", day.succ_opt().unwrap());
    server.set_time(&last).await;
    let decision = api.authorize(M, VoiceOut, OTHER).await;
    assert_eq!(
        (decision.allowed, decision.state()),
        (true, AccountState::Valid)
    );
    server.set_time(&next).await;
    let decision = api.authorize(M, VoiceOut, OTHER).await;
    assert_eq!(
        (decision.allowed, decision.reason.as_str(), decision.state()),
        (false, "ONE_WAY_BARRED", AccountState::Grace),
        "the cached facts are evaluated at the new second"
    );
}

/// Two servers on one PostgreSQL database with the default configuration, their caches on;
/// `None`: skipped. `there` starts first: the announcement of its start (which empties every
/// cache) was sent before `here` listened, so it cannot empty `here`'s cache later.
async fn two_servers() -> Option<(Arc<TestDb>, TestServer, TestServer)> {
    let db = TestDb::create(Backend::Postgres).await?;
    let there = serving_from_its_cache(&db).await;
    let here = serving_from_its_cache(&db).await;
    Some((db, here, there))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_commit_through_another_server_is_seen_here_within_moments() {
    let Some((db, here, there)) = two_servers().await else {
        return;
    };
    let (mut api, mut elsewhere) = (Api::of(&here), Api::of(&there));
    // Activated through this server: no announcement of another server is on its way here.
    api.active(M).await;
    assert!(!may_call_out(&mut api, M).await);
    // This server's entry is warm: a write no server announces is not seen here.
    set_balance_behind_the_servers_back(&db, M, 1).await;
    assert!(!may_call_out(&mut api, M).await, "served from the cache");
    set_balance_behind_the_servers_back(&db, M, 0).await;

    // Each commit through the other server, from its answer to this server's first Authorize
    // that reflects it (the entry is warm again before each one).
    let mut delays = Vec::new();
    for round in 0..20 {
        let recharging = round % 2 == 0;
        if recharging {
            elsewhere.recharge(M, 1000).await;
        } else {
            elsewhere.charge(M, 1000).await;
        }
        delays.push(until_seen(&mut api, M, recharging).await);
    }
    delays.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "a commit through another server seen by Authorize here after (20 commits): \
         min {:.1} ms, median {:.1} ms, max {:.1} ms (goal < 100 ms)",
        ms(delays[0]),
        ms(delays[delays.len() / 2]),
        ms(delays[delays.len() - 1])
    );
    there.stop().await;
    here.stop().await;
}

/// A group commit of the other server (`group_commit_writers`; its one writer waits for all
/// eight recharges, so they commit together) is announced whole: each recharged account's
/// cached facts here are replaced, though the cache window (60 s) is far longer than the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_group_committed_through_another_server_is_announced_for_every_account() {
    const AT_ONCE: usize = 8;
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let config = common::one_writer_waiting_for(AT_ONCE);
    let there = TestServer::start_with(db.clone(), config).await;
    there.authorize_cache_on().await;
    there.set_time(T0).await;
    let here = serving_from_its_cache(&db).await;
    let mut api = Api::of(&here);
    let numbers: Vec<String> = (0..AT_ONCE).map(|i| format!("86138000002{i:02}")).collect();
    for msisdn in &numbers {
        // Activated here (one at a time: no group elsewhere) with no balance: no call out.
        api.active(msisdn).await;
        assert!(!may_call_out(&mut api, msisdn).await, "cached here");
    }
    let recharges: Vec<_> = numbers
        .iter()
        .map(|msisdn| {
            let mut elsewhere = Api::of(&there);
            let msisdn = msisdn.clone();
            tokio::spawn(async move { elsewhere.recharge(&msisdn, 1000).await })
        })
        .collect();
    for recharge in recharges {
        recharge.await.expect("recharge through the other server");
    }
    assert!(there.metric("ocs_group_commit_mutations_total").await >= AT_ONCE as f64);
    for msisdn in &numbers {
        until_seen(&mut api, msisdn, true).await;
    }
    there.stop().await;
    here.stop().await;
}

/// The backend of this server's listener (its `application_name`), once it is connected.
async fn listener_pid(db: &TestDb) -> Option<i64> {
    let direct = db.open().await;
    let sql = format!(
        "SELECT COALESCE(MAX(CAST(pid AS BIGINT)), 0) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = '{}'",
        ocs_lifecycle::store::CHANGES_LISTENER_APPLICATION_NAME
    );
    let pid = direct.scalar(&sql).await;
    direct.close().await;
    (pid != 0).then_some(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_lost_listener_turns_the_cache_off_and_it_starts_empty_once_listening() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let server = serving_from_its_cache(&db).await;
    let mut api = Api::of(&server);
    for msisdn in [M, N] {
        api.active(msisdn).await;
        assert!(!may_call_out(&mut api, msisdn).await);
    }
    // Warm entries: writes behind the server's back are not heard.
    set_balance_behind_the_servers_back(&db, N, 500).await;
    assert!(!may_call_out(&mut api, N).await, "served from the cache");

    let start = Instant::now();
    let old = loop {
        if let Some(pid) = listener_pid(&db).await {
            break pid;
        }
        assert!(start.elapsed() < PATIENCE, "the listener never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let direct = db.open_for_writing().await;
    direct
        .execute(&format!("SELECT pg_terminate_backend({old})"))
        .await;
    direct.close().await;
    // A commit the listener cannot hear: made while it is gone (or just after it is back).
    set_balance_behind_the_servers_back(&db, M, 500).await;
    let cut = Instant::now();
    loop {
        match listener_pid(&db).await {
            Some(pid) if pid != old => break,
            _ => {}
        }
        assert!(cut.elapsed() < PATIENCE, "the listener never reconnected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "the listener was connected again {:.1} ms after its backend was terminated",
        cut.elapsed().as_secs_f64() * 1000.0
    );
    assert!(
        may_call_out(&mut api, M).await,
        "a change made while the listener was lost is seen"
    );
    assert!(
        may_call_out(&mut api, N).await,
        "an entry from before the loss is gone"
    );
    // Cached again once it listens: a read fills the entry, and a write behind the server's
    // back is then not seen.
    server.authorize_cache_on().await;
    assert!(may_call_out(&mut api, M).await);
    set_balance_behind_the_servers_back(&db, M, 0).await;
    assert!(
        may_call_out(&mut api, M).await,
        "served from the cache once it is on again"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_server_that_starts_empties_the_caches_of_the_others() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let server = serving_from_its_cache(&db).await;
    let mut api = Api::of(&server);
    api.active(M).await;
    assert!(!may_call_out(&mut api, M).await);
    // A commit no server announced (as if its server had been killed right after it).
    set_balance_behind_the_servers_back(&db, M, 500).await;
    assert!(!may_call_out(&mut api, M).await, "served from the cache");
    let started = Instant::now();
    let newcomer = TestServer::start_on(db.clone(), ClockMode::Manual).await;
    let seen = until_seen(&mut api, M, true).await;
    eprintln!(
        "a server's start emptied this server's cache {:.1} ms after it was SERVING \
         ({:.1} ms after its start began)",
        seen.as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64() * 1000.0
    );
    newcomer.stop().await;
    server.stop().await;
}
