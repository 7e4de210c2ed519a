//! The operations HTTP listener inside `serve` (`http_addr`): `GET /metrics` (Prometheus),
//! `GET /healthz` (the process runs), `GET /readyz` (migrations ran and the database
//! answers), and the dashboard, `GET /` and `GET /api/dashboard` ([`dashboard`]). It stops with
//! the gRPC server (the shutdown token).
//!
//! This module owns the listener, what the metrics measure ([`Metrics`], the gRPC layer in
//! [`rpc`]) and the dashboard; it only reads the store and never writes.

pub mod dashboard;
mod metrics;
mod rpc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use dashboard::Dashboard;
pub use metrics::{CONTENT_TYPE, DB_CACHE_TTL, Metrics, SweepMetrics, UNKNOWN_METHOD, code_label};
pub use rpc::{RpcMetricsLayer, RpcMetricsService};

use crate::clock::Clock;
use crate::store::AccountStore;

/// How long `/readyz` waits for the database's answer.
const READY_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn AccountStore>,
    pub clock: Arc<dyn Clock>,
    /// True once the migrations have run.
    pub ready: Arc<AtomicBool>,
    /// False while a write has found the storage not writable and no probe write has
    /// succeeded since (`crate::api::StorageHealth`).
    pub storage_writable: Arc<AtomicBool>,
    pub dashboard: Arc<Dashboard>,
}

/// The routes of the operations listener.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(dashboard_page))
        .route("/api/dashboard", get(dashboard_json))
        .with_state(state)
}

/// Serves the operations routes on `listener` until `shutdown` is cancelled.
pub async fn serve_http(
    listener: TcpListener,
    state: OpsState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let text = state
        .metrics
        .scrape(state.store.as_ref(), state.clock.as_ref())
        .await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

async fn dashboard_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        dashboard::PAGE,
    )
        .into_response()
}

/// The dashboard's JSON; 503 with `{"error": …}` when the database cannot be read (before the
/// migrations, too).
async fn dashboard_json(State(state): State<OpsState>) -> Response {
    let error = |status: StatusCode, message: String| {
        (status, serde_json::json!({ "error": message }).to_string())
    };
    let (status, body) = if !state.ready.load(Ordering::Acquire) {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the migrations have not run yet".into(),
        )
    } else {
        match state
            .dashboard
            .view(state.store.as_ref(), state.clock.now())
            .await
        {
            // Serialized from the struct, so the fields keep their documented order.
            Ok(view) => match serde_json::to_string(&view) {
                Ok(json) => (StatusCode::OK, json),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: cannot read the database");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read the database: {e}"),
                )
            }
        }
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<OpsState>) -> (StatusCode, String) {
    if !state.ready.load(Ordering::Acquire) {
        return not_ready("the migrations have not run yet");
    }
    if !state.storage_writable.load(Ordering::Acquire) {
        return not_ready(
            "the database cannot be written (disk full, read-only or I/O error); \
             a probe retries every second",
        );
    }
    match tokio::time::timeout(READY_QUERY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Err(e)) => not_ready(&format!("the database does not answer: {e}")),
        Err(_) => not_ready(&format!(
            "the database did not answer within {} s",
            READY_QUERY_TIMEOUT.as_secs()
        )),
    }
}

/// 503 with the reason on one line.
fn not_ready(reason: &str) -> (StatusCode, String) {
    let line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {line}\n"),
    )
}
