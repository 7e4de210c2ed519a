//! A server whose shutdown waits for its calls in flight, and the gRPC health `Watch` stream
//! that reports the shutdown (tests/shutdown.rs, tests/health.rs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ocs_lifecycle::config::{ClockMode, Config};
use tonic::Streaming;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::{TestDb, TestServer};

/// Safety bound for anything to happen; tests never assert on elapsed time.
const WAIT: Duration = Duration::from_secs(30);

/// A server whose shutdown waits up to an hour for the calls in flight: one that returns within
/// a test's bounds finished its work, it did not give up on it.
pub async fn patient_server(db: Arc<TestDb>) -> TestServer {
    let config = Config {
        shutdown_timeout_secs: 3_600,
        ..super::test_config(ClockMode::Manual)
    };
    TestServer::start_with(db, config).await
}

/// A health `Watch` of `service` ("" = the whole server).
pub async fn watch(server: &TestServer, service: &str) -> Streaming<HealthCheckResponse> {
    watch_on(server.channel(), service).await
}

/// A health `Watch` of `service` over `channel` (a server run as a process, say).
pub async fn watch_on(
    channel: tonic::transport::Channel,
    service: &str,
) -> Streaming<HealthCheckResponse> {
    tonic_health::pb::health_client::HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("health Watch {service:?}: {e:?}"))
        .into_inner()
}

/// The next status a `Watch` stream sends.
pub async fn next_status(stream: &mut Streaming<HealthCheckResponse>) -> ServingStatus {
    let response = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a health status in time")
        .expect("the Watch stream is healthy")
        .expect("the Watch stream is open");
    ServingStatus::try_from(response.status).expect("a known status")
}

/// Waits until the server task (its shutdown begun) has returned; what it returned. The time
/// it took is printed, not asserted.
pub async fn stopped(server: &mut TestServer) -> Result<(), ocs_lifecycle::server::ServeError> {
    let handle = server.handle.take().expect("a running server");
    let began = Instant::now();
    let returned = tokio::time::timeout(WAIT, handle)
        .await
        .expect("the server stops long before its shutdown timeout")
        .expect("the server task");
    println!(
        "the server returned {:?} after it was awaited",
        began.elapsed()
    );
    returned
}

/// Asserts that a `Watch` stream, its last status sent, ends with UNAVAILABLE (the server's
/// listeners have closed) and then closes.
pub async fn assert_ended_unavailable(stream: &mut Streaming<HealthCheckResponse>) {
    let ended = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the Watch stream ends in time");
    match ended {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        Ok(message) => panic!("the Watch stream goes on: {message:?}"),
    }
}

/// Whether a TCP connection to `addr` is accepted now (false: refused, the listener closed;
/// or reset, the listener closed while the connection waited in its backlog).
pub async fn accepts(addr: std::net::SocketAddr) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    match tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e))
            if matches!(
                e.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted
            ) =>
        {
            false
        }
        Ok(Err(e)) => panic!("connecting to {addr}: {e}"),
        Err(_) => panic!("connecting to {addr}: no answer in time"),
    }
}
