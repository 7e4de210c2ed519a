//! The TestClock service against the real gRPC server (manual clock, SQLite): moves that would
//! leave years 1–9999 — the range of protobuf's `Timestamp` — are INVALID_ARGUMENT
//! `TIME_OUT_OF_RANGE` with a message saying so, never a panic (which the client saw as
//! CANCELLED) nor TIME_BACKWARDS; the clock stays where it was and the server keeps serving.

#[macro_use]
#[allow(unused_macros)]
mod common;

use common::{Backend, TestServer, assert_rejected, ts};
use ocs_lifecycle::proto::{self, AdvanceTimeRequest, GetTimeRequest, SetTimeRequest};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

/// 9999-12-31T23:59:59Z, the last whole second of protobuf's range.
const LAST_SECOND: i64 = 253_402_300_799;
/// 0001-01-01T00:00:00Z, the first.
const FIRST_SECOND: i64 = -62_135_596_800;

async fn now(server: &TestServer) -> prost_types::Timestamp {
    server
        .clock()
        .get_time(GetTimeRequest {})
        .await
        .expect("GetTime")
        .into_inner()
        .now
        .expect("now")
}

async fn advance(
    server: &TestServer,
    seconds: i64,
) -> Result<proto::GetTimeResponse, tonic::Status> {
    server
        .clock()
        .advance_time(AdvanceTimeRequest { seconds })
        .await
        .map(|r| r.into_inner())
}

async fn set(
    server: &TestServer,
    time: prost_types::Timestamp,
) -> Result<proto::GetTimeResponse, tonic::Status> {
    server
        .clock()
        .set_time(SetTimeRequest { time: Some(time) })
        .await
        .map(|r| r.into_inner())
}

async fn assert_serving(server: &TestServer) {
    let status = server
        .health()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_beyond_years_1_to_9999_are_invalid_argument_and_leave_the_clock() {
    let server = TestServer::start(Backend::Sqlite).await.expect("SQLite");
    let start = now(&server).await;
    for seconds in [
        i64::MAX,
        i64::MIN,
        1_000_000_000_000_000,
        -1_000_000_000_000_000,
        // From today: past 9999, and before year 1 (not merely backwards).
        LAST_SECOND,
        2 * FIRST_SECOND,
    ] {
        let status = assert_rejected(
            advance(&server, seconds).await,
            Code::InvalidArgument,
            "TIME_OUT_OF_RANGE",
        );
        assert!(
            status.message().contains("9999-12-31T23:59:59Z")
                && status.message().contains(&seconds.to_string()),
            "{seconds}: {status:?}"
        );
        assert_eq!(now(&server).await, start, "a refused move leaves the clock");
    }
    // A step back that stays within the range is still TIME_BACKWARDS.
    for seconds in [-1, FIRST_SECOND] {
        assert_rejected(
            advance(&server, seconds).await,
            Code::FailedPrecondition,
            "TIME_BACKWARDS",
        );
    }

    let out_of_range = [
        (LAST_SECOND + 1, 0),
        (i64::MAX, 0),
        (i64::MIN, 0),
        (FIRST_SECOND - 1, 0),
        (LAST_SECOND, -1),
        (LAST_SECOND, 1_000_000_000),
        (LAST_SECOND, i32::MAX),
    ];
    for (seconds, nanos) in out_of_range {
        let status = assert_rejected(
            set(&server, prost_types::Timestamp { seconds, nanos }).await,
            Code::InvalidArgument,
            "TIME_OUT_OF_RANGE",
        );
        assert!(
            status.message().contains("9999-12-31T23:59:59Z"),
            "{seconds}.{nanos}: {status:?}"
        );
        assert_eq!(now(&server).await, start);
    }
    let missing = server.clock().set_time(SetTimeRequest { time: None }).await;
    assert_rejected(missing, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_serving(&server).await;

    // The last second itself is fine, and then the clock can go no further.
    let at_the_end = set(&server, ts("9999-12-31T23:59:59.999999Z"))
        .await
        .expect("SetTime to the last microsecond")
        .now
        .expect("now");
    assert_eq!(
        (at_the_end.seconds, at_the_end.nanos),
        (LAST_SECOND, 999_999_000)
    );
    assert_rejected(
        advance(&server, 1).await,
        Code::InvalidArgument,
        "TIME_OUT_OF_RANGE",
    );
    assert_eq!(
        advance(&server, 0).await.expect("AdvanceTime(0)").now,
        Some(at_the_end)
    );
    assert_serving(&server).await;
    server.stop().await;
}
