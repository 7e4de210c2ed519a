//! A tower layer on the tonic server that counts every gRPC request and times it, by method
//! and status code ([`super::Metrics::record_rpc`]), and logs one line per call (target
//! `ocs_lifecycle::rpc`, level info; a refused call at warn when the server failed): method,
//! status code, ErrorInfo reason, caller, peer, MSISDN (masked unless `log_full_msisdn`),
//! request_id, latency. The inner layers note what they learn in the call's
//! [`CallNote`](crate::logging::CallNote).
//!
//! The code is the response's `grpc-status` header: tonic answers a failed unary call (and a
//! stream refused at its start) "trailers-only", with the status in the headers. A response
//! without it started normally: OK. A stream (`Subscribe`) is counted when it starts; how it
//! ends later is not seen here. A request the client cancels before the answer is not counted.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic_types::StatusExt;

use super::{Metrics, code_label};
use crate::logging::{CallNote, Noted, mask_msisdn};

/// Wraps the gRPC services with [`RpcMetricsService`].
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
    full_msisdn: bool,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            full_msisdn: false,
        }
    }

    /// Logs MSISDNs whole instead of masked (`log_full_msisdn`).
    pub fn with_full_msisdn(mut self, full: bool) -> Self {
        self.full_msisdn = full;
        self
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
            full_msisdn: self.full_msisdn,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    full_msisdn: bool,
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

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let method = self.metrics.method_label(request.uri().path());
        let started = Instant::now();
        let note = Arc::new(CallNote::default());
        request.extensions_mut().insert(note.clone());
        let peer = peer_of(&request);
        let full_msisdn = self.full_msisdn;
        let answer = self.inner.call(request);
        let metrics = self.metrics.clone();
        // Counted in flight from now; the guard goes with the future, so a call the client
        // gives up on (the future dropped) is counted out too.
        let in_flight = metrics.rpc_started();
        Box::pin(async move {
            let answered = answer.await;
            drop(in_flight);
            let (code, reason) = match &answered {
                Ok(response) => status_of(response.headers()),
                // The transport answers the caller itself; for the metrics it is an error.
                Err(_) => (tonic::Code::Unknown, None),
            };
            let elapsed = started.elapsed();
            log_call(
                &method,
                code,
                reason,
                peer,
                note.take(),
                full_msisdn,
                elapsed,
            );
            metrics.record_rpc(method, code, elapsed);
            answered
        })
    }
}

/// The caller's address, over TCP or TLS.
fn peer_of<B>(request: &Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// The status code of an answer (`grpc-status` of a trailers-only answer; none: OK) and the
/// ErrorInfo reason its details carry.
fn status_of(headers: &tonic::codegen::http::HeaderMap) -> (tonic::Code, Option<String>) {
    let Some(code) = headers.get("grpc-status") else {
        return (tonic::Code::Ok, None);
    };
    let code = tonic::Code::from_bytes(code.as_bytes());
    let reason = tonic::Status::from_header_map(headers)
        .and_then(|status| status.get_error_details().error_info().cloned())
        .map(|info| info.reason);
    (code, reason)
}

fn log_call(
    method: &str,
    code: tonic::Code,
    reason: Option<String>,
    peer: Option<SocketAddr>,
    noted: Noted,
    full_msisdn: bool,
    elapsed: Duration,
) {
    let msisdn = noted
        .msisdn
        .map(|m| if full_msisdn { m } else { mask_msisdn(&m) });
    let fields = (
        reason.as_deref().unwrap_or(""),
        noted.caller.as_deref().unwrap_or(""),
        msisdn.as_deref().unwrap_or(""),
        noted.request_id.as_deref().unwrap_or(""),
    );
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    let server_failed = matches!(
        code,
        tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss
    );
    if server_failed {
        tracing::warn!(
            target: "ocs_lifecycle::rpc",
            method, code = code_label(code), reason = fields.0, caller = fields.1, peer,
            msisdn = fields.2, request_id = fields.3, latency_ms, "rpc"
        );
    } else {
        tracing::info!(
            target: "ocs_lifecycle::rpc",
            method, code = code_label(code), reason = fields.0, caller = fields.1, peer,
            msisdn = fields.2, request_id = fields.3, latency_ms, "rpc"
        );
    }
}
