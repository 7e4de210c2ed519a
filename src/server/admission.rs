//! Admission of gRPC calls (`[grpc]`): at most `max_concurrent_requests` unary calls of the
//! lifecycle services are handled at once; one beyond that is answered at once,
//! RESOURCE_EXHAUSTED with ErrorInfo reason `OVERLOADED`, and counted (`ocs_rpc_shed_total`), so
//! a flood never queues without bound and the calls admitted keep their latency. An admitted
//! call whose client sent no deadline (`grpc-timeout`) gets `default_deadline_ms`, past which
//! it is answered DEADLINE_EXCEEDED (tonic's own server timeout answers CANCELLED, which
//! clients do not read as a deadline).
//!
//! Not admitted here, so never shed nor cut: health and reflection (a load balancer's probe
//! must see an overloaded server answer), and the `Subscribe` stream, which lasts as long as
//! its subscriber does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::Code;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};

use crate::ops::Metrics;
use crate::wire::{BSS_EVENTS_SERVICE, SERVICE_NAMES, error_status};

/// The ErrorInfo reason of a shed call.
pub const OVERLOADED: &str = "OVERLOADED";

/// Wraps the gRPC services with [`AdmissionService`]; the permits are shared by every
/// connection.
#[derive(Clone, Debug)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    limit: u32,
    deadline: Duration,
    metrics: Arc<Metrics>,
}

impl AdmissionLayer {
    pub fn new(limit: u32, deadline: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit as usize)),
            limit,
            deadline,
            metrics,
        }
    }
}

impl<S> tower_layer::Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AdmissionService<S> {
    inner: S,
    layer: AdmissionLayer,
}

/// Whether the call at `path` is limited: a method of the lifecycle services but `Subscribe`.
fn limited(path: &str) -> bool {
    let subscribe = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(BSS_EVENTS_SERVICE))
        .is_some_and(|method| method == "/Subscribe");
    !subscribe
        && SERVICE_NAMES.iter().any(|service| {
            path.strip_prefix('/')
                .and_then(|p| p.strip_prefix(service))
                .is_some_and(|method| method.starts_with('/'))
        })
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AdmissionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !limited(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            self.layer.metrics.record_shed();
            let status = error_status(
                Code::ResourceExhausted,
                OVERLOADED,
                format!(
                    "the server is handling its limit of {} calls at once \
                     (grpc.max_concurrent_requests); this call was not started: retry it later, \
                     with the same request_id",
                    self.layer.limit
                ),
            );
            return Box::pin(async move { Ok(status.into_http()) });
        };
        // A client's own deadline is enforced by tonic; the default is for calls without one.
        let deadline =
            (!request.headers().contains_key("grpc-timeout")).then_some(self.layer.deadline);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let _permit = permit;
            let Some(deadline) = deadline else {
                return answer.await;
            };
            match tokio::time::timeout(deadline, answer).await {
                Ok(answered) => answered,
                Err(_) => Ok(error_status(
                    Code::DeadlineExceeded,
                    "DEADLINE_EXCEEDED",
                    format!(
                        "the call took longer than the server's default deadline of {} ms \
                         (grpc.default_deadline_ms; send a deadline of your own to choose \
                         another); a mutation may still have been applied: retry it with the \
                         same request_id",
                        deadline.as_millis()
                    ),
                )
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::limited;

    #[test]
    fn the_lifecycle_calls_are_limited_but_not_subscribe_health_or_reflection() {
        for path in [
            "/ocs.lifecycle.v1.AccountLifecycle/Recharge",
            "/ocs.lifecycle.v1.BssEvents/ListDeadLetters",
            "/ocs.lifecycle.v1.LifecycleAnalytics/Flows",
            "/ocs.lifecycle.v1.TestClock/AdvanceTime",
        ] {
            assert!(limited(path), "{path}");
        }
        for path in [
            "/ocs.lifecycle.v1.BssEvents/Subscribe",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/ocs.lifecycle.v1.AccountLifecycleX/Recharge",
            "/",
        ] {
            assert!(!limited(path), "{path}");
        }
    }
}
