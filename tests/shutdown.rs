//! Graceful shutdown through the real server.
//!
//! In-process (PostgreSQL), with a unary call in flight: the call finishes and its write is
//! committed; the health `Watch`, left open, says NOT_SERVING and then ends (UNAVAILABLE) as
//! the listeners close; the listening socket is closed then, so a connection made during the
//! shutdown is refused at once and its call fails UNAVAILABLE, writing nothing; and the server
//! returns `Ok` (what `ocs-lifecycle serve` turns into exit code 0) by itself.
//!
//! The binary (SQLite), with a drain of an hour: after SIGTERM `/readyz` answers 503 and the
//! dashboard's readiness line says the server is shutting down; a second SIGTERM cuts the drain
//! short and the process exits 0 with a health `Watch` still open.
//!
//! Nothing here rests on timing:
//! - the call is held in flight by a row lock the test takes on its account (the store reads
//!   an account `FOR UPDATE`), and the test sees it waiting on that lock in
//!   `pg_stat_activity` before it starts the shutdown;
//! - "stopped accepting" is seen as a refused TCP connection to the gRPC address;
//! - the shutdown timeout is an hour (and the drain, in the binary), so a server that returns
//!   within the test's bounds finished its work rather than gave up on it. Durations are
//!   printed, never asserted.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::time::Duration;

use common::api::Api;
use common::binary::{self, BIN, SAFETY};
use common::process::{Log, ServeCommand, Served};
use common::shutdown::{
    accepts, assert_ended_unavailable, next_status, patient_server, stopped, watch, watch_on,
};
use common::{Backend, Db, TestDb};
use ocs_lifecycle::proto::RechargeChannel;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// Safety bound for anything to happen; tests never assert on elapsed time.
const WAIT: Duration = Duration::from_secs(30);
/// The account whose recharge is in flight during the shutdown.
const HELD: &str = "8613800000501";
/// The account of a call begun after the server stopped accepting.
const LATE: &str = "8613800000502";
/// Waits until `condition` holds (bounded by [`WAIT`]).
async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_shutdown_finishes_the_calls_in_flight_refuses_new_ones_and_returns_ok() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let mut server = patient_server(db).await;
    let (mut api, check) = Api::at_t0(&server).await;
    api.active(HELD).await;
    api.active(LATE).await;
    let held_before = api.get(HELD).await.balance;
    let (counts_before, late_before) = check.snapshot(LATE).await;
    let mut health = watch(&server, "").await;
    assert_eq!(next_status(&mut health).await, ServingStatus::Serving);

    // The test holds the account's row: a recharge of it waits in the database.
    let Db::Postgres(pool) = &check else {
        unreachable!("a PostgreSQL server");
    };
    let mut lock = pool.begin().await.expect("BEGIN");
    sqlx::query("SELECT 1 FROM accounts WHERE msisdn = $1 FOR UPDATE")
        .bind(HELD)
        .execute(&mut *lock)
        .await
        .expect("lock the account's row");
    let mut caller = Api(server.new_accounts_client().await);
    let in_flight = tokio::spawn(async move {
        caller
            .try_recharge(HELD, 5_000, RechargeChannel::Online)
            .await
    });
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    wait_until("the recharge waits for the row lock", async || {
        check.scalar(waiting).await > 0
    })
    .await;

    // The shutdown begins while the call waits. The health Watch stays open: it says
    // NOT_SERVING, then ends as the listeners close (it does not hold the shutdown).
    assert!(accepts(server.addr).await, "the listener accepts before");
    server.shutdown.cancel();
    assert_eq!(next_status(&mut health).await, ServingStatus::NotServing);
    assert_ended_unavailable(&mut health).await;
    wait_until("the gRPC listener is closed", async || {
        !accepts(server.addr).await
    })
    .await;
    // A call begun now, on a new connection, is not served: the connection is refused.
    let late_channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect_lazy();
    let late = tokio::spawn(async move {
        Api(AccountLifecycleClient::new(late_channel))
            .try_recharge(LATE, 5_000, RechargeChannel::Online)
            .await
    });
    assert!(
        !in_flight.is_finished(),
        "the call in flight waits for the row the test holds"
    );

    lock.commit().await.expect("release the row");
    let answered = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the call in flight finishes")
        .expect("the caller's task")
        .expect("the call in flight is answered OK")
        .into_inner();
    assert_eq!(
        (answered.balance_before, answered.balance_after),
        (held_before, held_before + 5_000)
    );
    stopped(&mut server)
        .await
        .expect("a clean stop: exit code 0");

    let refused = tokio::time::timeout(WAIT, late)
        .await
        .expect("the late call ends with the server")
        .expect("the late caller's task")
        .expect_err("a call begun during the shutdown is not served");
    println!("the call begun during the shutdown ended with {refused:?}");
    assert_eq!(
        refused.code(),
        tonic::Code::Unavailable,
        "refused for want of a listener: {refused:?}"
    );
    // The late call wrote nothing: the account is as it was, and the only new request and
    // history entry are the answered call's.
    let (counts, late_after) = check.snapshot(LATE).await;
    assert_eq!(late_after, late_before, "the late call wrote nothing");
    assert_eq!(
        (counts.idempotency_keys, counts.history),
        (
            counts_before.idempotency_keys + 1,
            counts_before.history + 1
        ),
        "only the call in flight wrote"
    );
    let held_after = check.account(HELD).await.expect("the held account").balance;
    assert_eq!(
        held_after,
        held_before + 5_000,
        "the answered call is committed"
    );
    check.close().await;
}

/// The dashboard's readiness line: ready, and why not.
async fn dashboard_readiness(http: std::net::SocketAddr) -> (bool, Option<String>) {
    let body = reqwest::get(format!("http://{http}/api/dashboard"))
        .await
        .expect("GET /api/dashboard")
        .text()
        .await
        .expect("the dashboard's body");
    let view: serde_json::Value = serde_json::from_str(&body).expect("the dashboard's JSON");
    let readiness = &view["readiness"];
    (
        readiness["ready"].as_bool().expect("readiness.ready"),
        readiness["reason"].as_str().map(str::to_owned),
    )
}

async fn readyz(http: std::net::SocketAddr) -> u16 {
    reqwest::get(format!("http://{http}/readyz"))
        .await
        .expect("GET /readyz")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_second_sigterm_cuts_the_drain_and_the_dashboard_says_shutting_down() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let database_url = format!("sqlite://{}", dir.path().join("d.db").display());
    // An hour of drain and of shutdown timeout: an exit within the test's bounds is the second
    // signal's doing.
    let mut serve = ServeCommand::new(BIN, dir.path(), database_url).with_env([
        ("OCS_DRAIN_SECS", "3600"),
        ("OCS_SHUTDOWN_TIMEOUT_SECS", "3600"),
    ]);
    serve.http_addr = "127.0.0.1:0";
    let mut served = Served::spawn(&serve, Log::File(dir.path().join("server.log")));
    let channel = served.serving(SAFETY).await;
    let http = served.http_addr();
    assert_eq!(dashboard_readiness(http).await, (true, None));
    let mut health = watch_on(channel, "").await;
    assert_eq!(next_status(&mut health).await, ServingStatus::Serving);

    let sent = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(served.pid().to_string())
        .status()
        .expect("kill");
    assert!(sent.success());
    assert_eq!(next_status(&mut health).await, ServingStatus::NotServing);
    wait_until("/readyz answers 503", async || readyz(http).await == 503).await;
    let (ready, reason) = dashboard_readiness(http).await;
    assert!(!ready, "the dashboard says not ready during the drain");
    let reason = reason.expect("a reason");
    assert!(reason.contains("shutting down"), "{reason}");
    assert!(served.running(), "draining:\n{}", served.log());

    // The second SIGTERM: the drain ends, the listeners close, the process exits 0.
    let began = std::time::Instant::now();
    let log = binary::stop_cleanly(served, dir.path()).await;
    println!("exited {:?} after the second SIGTERM", began.elapsed());
    assert!(log.contains("drain cut short"), "{log}");
    assert_ended_unavailable(&mut health).await;
}
