//! A tower layer on the tonic server that counts every gRPC request and times it, by method
//! and status code ([`super::Metrics::record_rpc`]).
//!
//! The code is the response's `grpc-status` header: tonic answers a failed unary call (and a
//! stream refused at its start) "trailers-only", with the status in the headers. A response
//! without it started normally: OK. A stream (`Subscribe`) is counted when it starts; how it
//! ends later is not seen here. A request the client cancels before the answer is not counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};

use super::Metrics;

/// Wraps the gRPC services with [`RpcMetricsService`].
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RpcMetricsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let method = self.metrics.method_label(request.uri().path());
        let started = Instant::now();
        let answer = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let answered = answer.await;
            let code = match &answered {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .map_or(tonic::Code::Ok, |status| {
                        tonic::Code::from_bytes(status.as_bytes())
                    }),
                // The transport answers the caller itself; for the metrics it is an error.
                Err(_) => tonic::Code::Unknown,
            };
            metrics.record_rpc(method, code, started.elapsed());
            answered
        })
    }
}
