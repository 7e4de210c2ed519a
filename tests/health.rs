//! gRPC health `Watch` through the real server, on SQLite and PostgreSQL: SERVING first, then
//! NOT_SERVING when the shutdown begins, for the whole server ("") and for each service; then,
//! as the listeners close, each stream ends with UNAVAILABLE, and the server stops cleanly with
//! the watchers still connected (an open `Watch` does not hold the shutdown, whose timeout is
//! an hour here). (`Check` is asserted by the suites that start servers; the shutdown with
//! calls in flight is tests/shutdown.rs.)

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::sync::Arc;

use common::TestDb;
use common::shutdown::{assert_ended_unavailable, next_status, patient_server, stopped, watch};
use tonic_health::pb::health_check_response::ServingStatus;

both_databases! {
    sqlite, postgres:
    health_watch_sees_serving_then_not_serving_when_the_shutdown_begins,
}

both_databases! {
    sqlite_open, postgres_open:
    an_open_health_watch_ends_with_the_listeners_and_does_not_hold_the_shutdown,
}

async fn health_watch_sees_serving_then_not_serving_when_the_shutdown_begins(db: Arc<TestDb>) {
    let mut server = patient_server(db).await;
    let services = [
        "",
        "ocs.lifecycle.v1.AccountLifecycle",
        "ocs.lifecycle.v1.BssEvents",
    ];
    let mut streams = Vec::new();
    for service in services {
        let mut stream = watch(&server, service).await;
        assert_eq!(
            next_status(&mut stream).await,
            ServingStatus::Serving,
            "{service:?}"
        );
        streams.push(stream);
    }

    server.shutdown.cancel();
    for (service, stream) in services.iter().zip(&mut streams) {
        assert_eq!(
            next_status(stream).await,
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    // The watchers stay: their streams end as the listeners close.
    for (service, stream) in services.iter().zip(&mut streams) {
        println!("{service:?}");
        assert_ended_unavailable(stream).await;
    }
    stopped(&mut server).await.expect("a clean stop");
}

/// The client never reads the stream after SERVING: the server ends it anyway and stops.
async fn an_open_health_watch_ends_with_the_listeners_and_does_not_hold_the_shutdown(
    db: Arc<TestDb>,
) {
    let mut server = patient_server(db).await;
    let mut stream = watch(&server, "").await;
    assert_eq!(next_status(&mut stream).await, ServingStatus::Serving);
    server.shutdown.cancel();
    stopped(&mut server)
        .await
        .expect("a clean stop with a Watch open");
    // What the stream got meanwhile: NOT_SERVING, then the end.
    assert_eq!(next_status(&mut stream).await, ServingStatus::NotServing);
    assert_ended_unavailable(&mut stream).await;
}
