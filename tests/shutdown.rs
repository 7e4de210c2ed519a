//! Graceful shutdown with a unary call in flight, through the real server (PostgreSQL): the call
//! finishes and its write is committed, the health stream says NOT_SERVING, a call begun once
//! the server has stopped accepting is never served (and writes nothing), and the server then
//! returns `Ok` (what `ocs-lifecycle serve` turns into exit code 0) by itself.
//!
//! Nothing here rests on timing:
//! - the call is held in flight by a row lock the test takes on its account (the store reads
//!   an account `FOR UPDATE`), and the test sees it waiting on that lock in
//!   `pg_stat_activity` before it starts the shutdown;
//! - "stopped accepting" is tonic's own event (`signal received, shutting down`, when its
//!   accept loop ends), caught by a tracing layer. Health says NOT_SERVING from another task,
//!   so it can come first: a connection made right after NOT_SERVING can still be accepted
//!   (and served) while tonic's task has not yet run. This binary holds one test, so the event
//!   is this server's;
//! - the shutdown timeout is an hour, so a server that returns within the test's bounds
//!   finished its work rather than gave up on it. Durations are printed, never asserted.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::api::Api;
use common::shutdown::{next_status, patient_server, stopped, watch};
use common::{Backend, Db, TestDb};
use ocs_lifecycle::proto::RechargeChannel;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Safety bound for anything to happen; tests never assert on elapsed time.
const WAIT: Duration = Duration::from_secs(30);
/// The account whose recharge is in flight during the shutdown.
const HELD: &str = "8613800000501";
/// The account of a call begun after the server stopped accepting.
const LATE: &str = "8613800000502";
/// What tonic logs (at TRACE) when its accept loop ends on the shutdown signal.
const ACCEPT_LOOP_ENDED: &str = "signal received, shutting down";

/// How many times tonic's accept loop has ended in this process (a global tracing layer).
fn accept_loops_ended() -> &'static AtomicUsize {
    static ENDED: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    ENDED.get_or_init(|| {
        let ended = Arc::new(AtomicUsize::new(0));
        let layer = AcceptLoopEnded(ended.clone());
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only tracing subscriber of this test binary");
        ended
    })
}

struct AcceptLoopEnded(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AcceptLoopEnded {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if !event
            .metadata()
            .target()
            .starts_with("tonic::transport::server")
        {
            return;
        }
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Whether an event's message is [`ACCEPT_LOOP_ENDED`].
struct Message(bool);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && format!("{value:?}").contains(ACCEPT_LOOP_ENDED) {
            self.0 = true;
        }
    }
}

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
    let ended = accept_loops_ended();
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

    // The shutdown begins while the call waits.
    assert_eq!(ended.load(Ordering::SeqCst), 0);
    server.shutdown.cancel();
    assert_eq!(next_status(&mut health).await, ServingStatus::NotServing);
    drop(health);
    wait_until("tonic's accept loop ends", async || {
        ended.load(Ordering::SeqCst) == 1
    })
    .await;
    // A call begun now, on a new connection, is not served: the connection waits, unaccepted,
    // until the server closes its socket.
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
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown
        ),
        "refused for want of a server (reset, refused, closed): {refused:?}"
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
