//! gRPC health `Watch` through the real server, on SQLite and PostgreSQL: SERVING first, then
//! NOT_SERVING when the shutdown begins, for the whole server ("") and for each service; the
//! server then stops cleanly once the watchers have gone. (`Check` is asserted by the suites
//! that start servers; the shutdown with calls in flight is tests/shutdown.rs.)

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::sync::Arc;

use common::TestDb;
use common::shutdown::{next_status, patient_server, stopped, watch};
use tonic_health::pb::health_check_response::ServingStatus;

both_databases! {
    sqlite, postgres:
    health_watch_sees_serving_then_not_serving_when_the_shutdown_begins,
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
    // The watchers go away (an open Watch is a call in flight the drain would wait for).
    drop(streams);
    stopped(&mut server).await.expect("a clean stop");
}
