//! Overload (issue 15 item 9), on a real server and real clients, SQLite and PostgreSQL: calls
//! beyond `grpc.max_concurrent_requests` are shed at once (RESOURCE_EXHAUSTED, reason
//! OVERLOADED, counted in `ocs_rpc_shed_total`) while the admitted ones finish; a call held past
//! `grpc.default_deadline_ms` is answered DEADLINE_EXCEEDED; a message over
//! `grpc.max_message_bytes` is refused (OUT_OF_RANGE, as tonic answers it); a quiet connection
//! gets keepalive PINGs and is closed when it does not answer them.
//!
//! The admitted calls are held where they cannot be answered before the test lets them: the
//! test holds the database's write lock (SQLite: `BEGIN IMMEDIATE` on a connection of its own;
//! PostgreSQL: `FOR UPDATE` on every account row), so the server's writes wait for it. No test
//! looks at a clock: shed calls are told by their code and by the metric, and the admitted
//! calls are known to be in the server by the `ocs_rpc_in_flight` gauge.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::api::Api;
use common::{Backend, TestDb, TestServer, reason, rid, test_config};
use ocs_lifecycle::config::{ClockMode, Config};
use ocs_lifecycle::proto::{self, RechargeChannel};
use sqlx::Connection;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;

both_databases! {
    sqlite, postgres:
    a_flood_over_the_limit_is_shed_at_once_and_the_admitted_calls_finish,
    a_call_held_past_the_default_deadline_is_answered_deadline_exceeded,
    a_message_over_the_size_limit_is_refused_and_the_server_answers_on,
}

/// Calls admitted at once in these tests.
const LIMIT: u32 = 4;
/// The calls of the flood: several times the limit.
const FLOOD: usize = 40;
/// Bounds of the waits; generous on a loaded machine, never asserted on.
const SAFETY: Duration = Duration::from_secs(60);

fn config(limit: u32, deadline_ms: u64) -> Config {
    let mut config = test_config(ClockMode::Manual);
    config.grpc.max_concurrent_requests = limit;
    config.grpc.default_deadline_ms = deadline_ms;
    config
}

/// The test's hold on the database's writes; released when [`WriteHold::release`]d.
enum WriteHold {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

/// Runs each statement on `conn`, in order.
async fn execute_all<C>(conn: &mut C, statements: &[&str])
where
    for<'e> &'e mut C: sqlx::Executor<'e>,
{
    for sql in statements {
        sqlx::raw_sql(sql)
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl WriteHold {
    /// Holds the write lock (SQLite) or every account row (PostgreSQL).
    async fn take(db: &TestDb) -> WriteHold {
        match db.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&db.url)
                    .await
                    .expect("open SQLite");
                execute_all(&mut conn, &["BEGIN IMMEDIATE"]).await;
                WriteHold::Sqlite(conn)
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&db.url)
                    .await
                    .expect("connect PostgreSQL");
                let lock = ["BEGIN", "SELECT msisdn FROM accounts FOR UPDATE"];
                execute_all(&mut conn, &lock).await;
                WriteHold::Postgres(conn)
            }
        }
    }

    async fn release(self) {
        match self {
            WriteHold::Sqlite(mut conn) => execute_all(&mut conn, &["ROLLBACK"]).await,
            WriteHold::Postgres(mut conn) => execute_all(&mut conn, &["ROLLBACK"]).await,
        }
    }
}

fn recharge(msisdn: &str) -> proto::RechargeRequest {
    proto::RechargeRequest {
        msisdn: msisdn.into(),
        amount: 1000,
        channel: RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: rid(),
    }
}

async fn health_is_serving(server: &TestServer) -> bool {
    let answer = server
        .health()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers");
    answer.into_inner().status == 1
}

async fn a_flood_over_the_limit_is_shed_at_once_and_the_admitted_calls_finish(db: Arc<TestDb>) {
    // A deadline far beyond the test: the admitted calls wait for the hold, nothing else.
    let server = TestServer::start_with(db.clone(), config(LIMIT, 600_000)).await;
    let (mut api, _db) = Api::at_t0(&server).await;
    let numbers: Vec<String> = (0..LIMIT).map(|i| format!("861380000{i:04}")).collect();
    for m in &numbers {
        api.active(m).await;
    }
    let hold = WriteHold::take(&db).await;

    // LIMIT calls are admitted and wait for the database.
    let mut admitted = Vec::new();
    for m in &numbers {
        let mut client = server.new_accounts_client().await;
        let request = recharge(m);
        admitted.push(tokio::spawn(async move { client.recharge(request).await }));
    }
    let waited = tokio::time::timeout(SAFETY, async {
        while server.metric("ocs_rpc_in_flight").await < f64::from(LIMIT) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "the admitted calls never were all in flight"
    );
    assert_eq!(server.metric("ocs_rpc_shed_total").await, 0.0);

    // The flood: every call is shed, none waits for the database (the hold is still on).
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let mut client = server.accounts();
        let request = recharge(&numbers[i % numbers.len()]);
        flood.push(tokio::spawn(async move { client.recharge(request).await }));
    }
    for call in flood {
        let answered = tokio::time::timeout(SAFETY, call)
            .await
            .expect("a shed call answers while the admitted ones still wait")
            .expect("task");
        let status = answered.expect_err("over the limit: shed");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(reason(&status), "OVERLOADED", "{status:?}");
        assert!(
            status.message().contains("grpc.max_concurrent_requests"),
            "{status:?}"
        );
    }
    assert_eq!(server.metric("ocs_rpc_shed_total").await, FLOOD as f64);
    assert!(
        health_is_serving(&server).await,
        "health is never shed, even at the limit"
    );

    // Let the database go: every admitted call succeeds.
    hold.release().await;
    for call in admitted {
        let answered = tokio::time::timeout(SAFETY, call)
            .await
            .expect("the admitted call answers once the database is free")
            .expect("task");
        let result = answered.expect("admitted: applied").into_inner();
        assert_eq!(
            result.balance_after - result.balance_before,
            1000,
            "{result:?}"
        );
    }
    // And the server answers on.
    let after = api.recharge(&numbers[0], 500).await;
    assert_eq!(after.balance_after - after.balance_before, 500);
    assert_eq!(server.metric("ocs_rpc_shed_total").await, FLOOD as f64);
    server.stop().await;
}

async fn a_call_held_past_the_default_deadline_is_answered_deadline_exceeded(db: Arc<TestDb>) {
    // Shorter than what holds the call: SQLite's busy timeout (10 s) or the row lock (held
    // until released).
    let server = TestServer::start_with(db.clone(), config(LIMIT, 1_500)).await;
    let (mut api, _db) = Api::at_t0(&server).await;
    const M: &str = "8613800009001";
    api.active(M).await;
    let hold = WriteHold::take(&db).await;
    let held = tokio::time::timeout(SAFETY, server.accounts().recharge(recharge(M)))
        .await
        .expect("the deadline answers the call");
    let status = held.expect_err("held past the deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("grpc.default_deadline_ms"),
        "{status:?}"
    );
    hold.release().await;
    // The permit went with the call: the server answers on.
    assert!(api.recharge(M, 700).await.account.is_some());
    server.stop().await;
}

async fn a_message_over_the_size_limit_is_refused_and_the_server_answers_on(db: Arc<TestDb>) {
    let mut config = config(LIMIT, 60_000);
    config.grpc.max_message_bytes = 2048;
    let server = TestServer::start_with(db.clone(), config).await;
    let (mut api, _db) = Api::at_t0(&server).await;
    const M: &str = "8613800009002";
    let before = api.active(M).await;
    let mut oversize = recharge(M);
    oversize.request_id = "x".repeat(4096);
    let status = server
        .accounts()
        .recharge(oversize)
        .await
        .expect_err("over max_message_bytes");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(status.message().contains("too large"), "{status:?}");
    let result = api.recharge(M, 300).await;
    assert_eq!(
        result.balance_before, before.balance,
        "the refused recharge changed nothing"
    );
    server.stop().await;
}

/// Keepalive: on a connection that has said nothing since its HTTP/2 preface, the server sends
/// a PING after `grpc.keepalive_interval_secs`, and closes the connection when the PING is not
/// answered within `grpc.keepalive_timeout_secs` (a peer that vanished is found). Raw HTTP/2
/// frames over TCP, so the test sees exactly what the server sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_connection_gets_keepalive_pings_and_is_closed_when_they_go_unanswered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PING: u8 = 0x6;
    const ACK: u8 = 0x1;
    let Some(db) = TestDb::create(Backend::Sqlite).await else {
        return;
    };
    let mut config = config(LIMIT, 60_000);
    config.grpc.keepalive_interval_secs = 1;
    config.grpc.keepalive_timeout_secs = 1;
    let server = TestServer::start_with(db, config).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    // The client preface and an empty SETTINGS frame; nothing else is ever sent.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let mut pinged = false;
    let closed = tokio::time::timeout(SAFETY, async {
        loop {
            let mut header = [0u8; 9];
            if tcp.read_exact(&mut header).await.is_err() {
                return; // closed by the server
            }
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; length];
            if tcp.read_exact(&mut payload).await.is_err() {
                return;
            }
            if header[3] == PING && header[4] & ACK == 0 {
                pinged = true;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the unanswered connection was never closed");
    assert!(
        pinged,
        "the server sent no PING before closing the connection"
    );
    server.stop().await;
}
