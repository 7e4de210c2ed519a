//! The shutdown's order, in one place: what [`super::serve_with_listeners`] does once its
//! shutdown token is cancelled.
//!
//! 1. Health says NOT_SERVING (every service and the whole server) and `/readyz` answers 503
//!    (so does the dashboard's readiness line); both listeners still accept and serve.
//! 2. The drain: `drain_secs`, for load balancers to see it and stop sending. A second
//!    SIGTERM or Ctrl-C cuts it short (the `cut_drain` token).
//! 3. The listeners close (the `close` token): the gRPC listening socket is dropped as its
//!    accept loop ends ([`ClosingIncoming`]), so a new connection is refused at once (a client
//!    sees UNAVAILABLE) instead of waiting in the backlog; health `Watch` streams send
//!    NOT_SERVING if they have not yet and end with UNAVAILABLE ([`ClosingHealth`]); `Subscribe`
//!    streams end (`crate::api::EventsApi`); the operations endpoint stops accepting.
//! 4. The calls in flight finish, bounded by `shutdown_timeout_secs`; what they committed is
//!    announced to the other servers on the database (PostgreSQL), then the background tasks
//!    stop and `serve` returns `Ok` (exit code 0).
//!
//! Nothing streams forever through the shutdown: a call still open after step 3 is one that is
//! doing work, which the timeout bounds.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// The drain (step 2): `drain_secs` unless `cut_drain` is cancelled first.
pub(super) async fn drain(drain_secs: u64, cut_drain: &CancellationToken) {
    if drain_secs == 0 {
        return;
    }
    tracing::info!(
        drain_secs,
        "shutting down: health NOT_SERVING and /readyz 503 while the listeners still serve \
         (a second SIGTERM or Ctrl-C ends the drain)"
    );
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(drain_secs)) => {}
        _ = cut_drain.cancelled() => tracing::info!("shutting down: drain cut short"),
    }
}

/// A cancellation future that can be polled from a `poll_*` function.
fn closing(close: &CancellationToken) -> Pin<Box<WaitForCancellationFutureOwned>> {
    Box::pin(close.clone().cancelled_owned())
}

/// The gRPC server's incoming connections until `close` is cancelled: then the listener is
/// dropped (its socket closed, so new connections are refused) and the stream ends, which ends
/// tonic's accept loop and begins its graceful shutdown of the open connections.
///
/// (tonic's own shutdown signal ends the accept loop but keeps the listener until the last
/// connection has closed: a connection made meanwhile waits in the backlog, unaccepted.)
pub(super) struct ClosingIncoming<S> {
    inner: Option<S>,
    close: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> ClosingIncoming<S> {
    pub(super) fn new(inner: S, close: &CancellationToken) -> Self {
        Self {
            inner: Some(inner),
            close: closing(close),
        }
    }
}

impl<S: Stream + Unpin> Stream for ClosingIncoming<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.inner.is_some() && self.close.as_mut().poll(cx).is_ready() {
            // Dropping the listener closes its socket.
            self.inner = None;
            tracing::info!("gRPC listener closed");
        }
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

/// The health service of `reporter` whose `Watch` streams end when `close` is cancelled.
pub(super) fn health_service(
    reporter: HealthReporter,
    close: &CancellationToken,
) -> HealthServer<ClosingHealth> {
    HealthServer::new(ClosingHealth {
        inner: HealthService::from_health_reporter(reporter),
        close: close.clone(),
    })
}

/// tonic-health's service, but a `Watch` stream ends as the listeners close: an open `Watch`
/// would otherwise hold the graceful shutdown for the whole `shutdown_timeout_secs`.
pub(super) struct ClosingHealth {
    inner: HealthService,
    close: CancellationToken,
}

#[tonic::async_trait]
impl Health for ClosingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = ClosingWatch;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<ClosingWatch>, Status> {
        let stream = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(ClosingWatch {
            inner: stream,
            close: closing(&self.close),
            last: None,
            state: WatchState::Open,
        }))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WatchState {
    Open,
    /// The listeners closed: the stream's last message goes.
    Ending,
    Ended,
}

/// A health `Watch` stream that, once the listeners close, sends NOT_SERVING (unless that was
/// its last status already), then ends with UNAVAILABLE.
pub struct ClosingWatch {
    inner: tonic_health::server::WatchStream,
    close: Pin<Box<WaitForCancellationFutureOwned>>,
    last: Option<i32>,
    state: WatchState,
}

impl Stream for ClosingWatch {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let not_serving = ServingStatus::NotServing as i32;
        if self.state == WatchState::Open && self.close.as_mut().poll(cx).is_ready() {
            self.state = WatchState::Ending;
            if self.last != Some(not_serving) {
                self.last = Some(not_serving);
                return Poll::Ready(Some(Ok(HealthCheckResponse {
                    status: not_serving,
                })));
            }
        }
        match self.state {
            WatchState::Open => {
                let polled = Pin::new(&mut self.inner).poll_next(cx);
                if let Poll::Ready(Some(Ok(response))) = &polled {
                    self.last = Some(response.status);
                }
                polled
            }
            WatchState::Ending => {
                self.state = WatchState::Ended;
                Poll::Ready(Some(Err(Status::unavailable(
                    "the server is shutting down: its listeners have closed",
                ))))
            }
            WatchState::Ended => Poll::Ready(None),
        }
    }
}
