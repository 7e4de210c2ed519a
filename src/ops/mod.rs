//! The operations HTTP listener inside `serve` (`http_addr`): `GET /metrics` (Prometheus),
//! `GET /healthz` (the process runs), `GET /readyz` (migrations ran and the database
//! answers; 503 during a shutdown's drain, and the dashboard's readiness line says so too), and
//! the dashboard, `GET /`, `GET /api/dashboard/html` and `GET /api/dashboard` ([`dashboard`],
//! rendered by [`page`], with the lifecycle [`charts`] drawn by [`chart_svg`]). It stops
//! accepting with the gRPC server, after the drain.
//!
//! Who may read what: with bearer tokens configured (`[[auth.tokens]]`, the gRPC server's), the
//! dashboard's data, `GET /api/dashboard` and `GET /api/dashboard/html` (account counts per
//! state, recharges, masked dead letters), needs `Authorization: Bearer <token>` of role `admin`
//! or `bss` ([`DASHBOARD_ROLES`]); 401 without a valid token, 403 for another role. The page
//! `GET /` comes with its data when the request may read it (no tokens configured, or such a
//! header); otherwise it is the page without data, so a browser can open it and send the token
//! on its own fetch. `/metrics`,
//! `/healthz` and `/readyz` stay open: scrapers and probes (Prometheus, the kubelet, a load
//! balancer) reach them without credentials, and they expose counts and up/down, never an
//! account. Without tokens nothing needs one, and `http_addr` keeps to loopback unless
//! `--insecure` (`crate::server::serve`), like `listen`. The listener has no TLS: keep it on
//! loopback or behind a TLS-terminating proxy when tokens are sent to it.
//!
//! This module owns the listener, what the metrics measure ([`Metrics`], the gRPC layer in
//! [`rpc`]) and the dashboard; it only reads the store and never writes.

mod chart_svg;
pub mod charts;
pub mod dashboard;
mod metrics;
mod page;
mod rpc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use dashboard::Dashboard;
pub use metrics::{CONTENT_TYPE, DB_CACHE_TTL, Metrics, SweepMetrics, UNKNOWN_METHOD, code_label};
pub use rpc::{RpcMetricsLayer, RpcMetricsService};

use crate::auth::{Authenticator, Role, TokenRefusal};
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
    /// False while a multi-host PostgreSQL URL has lost its primary and the service searches
    /// for the new one (`crate::api::StorageHealth::follow_primary`).
    pub storage_primary_found: Arc<AtomicBool>,
    pub dashboard: Arc<Dashboard>,
    /// The gRPC server's tokens; `None` (authentication off): the dashboard's data is open.
    pub authenticator: Option<Arc<Authenticator>>,
}

/// The roles whose token may read `GET /api/dashboard`: it shows account counts and dead
/// letters, the administrators' and the BSS's business (the BSS redelivers dead letters).
pub const DASHBOARD_ROLES: [Role; 2] = [Role::Admin, Role::Bss];

/// The routes of the operations listener.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(dashboard_page))
        .route("/api/dashboard", get(dashboard_json))
        .route("/api/dashboard/html", get(dashboard_part))
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

/// [`serve_http`] inside `serve`: while `draining` is set (a shutdown's drain, before the
/// listeners close) `/readyz` answers 503, so load balancers stop sending.
pub async fn serve_http_draining(
    listener: TcpListener,
    state: OpsState,
    draining: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let routes = router(state).layer(axum::middleware::from_fn_with_state(draining, drain_gate));
    axum::serve(listener, routes)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn drain_gate(
    State(draining): State<Arc<AtomicBool>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut request = request;
    if draining.load(Ordering::Acquire) {
        if request.uri().path() == "/readyz" {
            return not_ready(DRAINING).into_response();
        }
        // The dashboard's readiness line says the same as /readyz.
        request.extensions_mut().insert(Draining);
    }
    next.run(request).await
}

/// Why `/readyz` (and the dashboard) say not ready during a shutdown's drain.
const DRAINING: &str = "shutting down: draining before the listeners close";

/// Set on a request by [`serve_http_draining`] during a shutdown's drain.
#[derive(Clone, Copy)]
struct Draining;

/// Whether the request came during a shutdown's drain.
type DrainMark = Option<Extension<Draining>>;

async fn metrics(State(state): State<OpsState>) -> Response {
    let text = state
        .metrics
        .scrape(state.store.as_ref(), state.clock.as_ref())
        .await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The page, with its data when this request may read it (the first view needs no script);
/// without, when the data needs a token it was not sent (the script asks for one).
async fn dashboard_page(
    State(state): State<OpsState>,
    draining: DrainMark,
    headers: HeaderMap,
) -> Response {
    if dashboard_refusal(&state, &headers).is_some() {
        return html(StatusCode::OK, dashboard::PAGE.to_owned());
    }
    let body = match dashboard_view(&state, draining.is_some()).await {
        Ok(view) => page::page(Ok(&page::part(&view))),
        Err((_, message)) => page::page(Err(&message)),
    };
    html(StatusCode::OK, body)
}

/// The data part of the page, which its script fetches (401/403 and 503 as `/api/dashboard`).
async fn dashboard_part(
    State(state): State<OpsState>,
    draining: DrainMark,
    headers: HeaderMap,
) -> Response {
    match readable_dashboard_view(&state, draining.is_some(), &headers).await {
        Ok(view) => html(StatusCode::OK, page::part(&view)),
        Err(refused) => refused,
    }
}

/// The dashboard now for a request that may read its data; else the 401/403 of
/// [`dashboard_refusal`], or the status of why not with `{"error": …}`.
async fn readable_dashboard_view(
    state: &OpsState,
    draining: bool,
    headers: &HeaderMap,
) -> Result<dashboard::DashboardView, Response> {
    if let Some(refusal) = dashboard_refusal(state, headers) {
        return Err(refusal);
    }
    dashboard_view(state, draining)
        .await
        .map_err(|(status, message)| json_error(status, message))
}

/// The dashboard now, or the status and message of why not.
async fn dashboard_view(
    state: &OpsState,
    draining: bool,
) -> Result<dashboard::DashboardView, (StatusCode, String)> {
    if !state.ready.load(Ordering::Acquire) {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the migrations have not run yet".into(),
        ));
    }
    let status = dashboard::ServiceStatus {
        not_ready: if draining {
            Some(DRAINING.to_owned())
        } else {
            readiness(state).await.err()
        },
        last_sweep: state.metrics.sweep.last_duration(),
    };
    state
        .dashboard
        .view(state.store.as_ref(), state.clock.now(), status)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "dashboard: cannot read the database");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the database: {e}"),
            )
        })
}

/// `{"error": message}` with `status`.
fn json_error(status: StatusCode, message: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// A JSON refusal of the dashboard's data: `{"error": …, "reason": …}`.
fn refused(status: StatusCode, reason: &str, message: String) -> Response {
    let body = serde_json::json!({ "error": message, "reason": reason }).to_string();
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        // RFC 6750: a 401 names the scheme it wants.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ocs-lifecycle\""),
        );
    }
    response
}

/// The refusal of a request that may not read the dashboard's data; `None`: it may (always
/// without tokens configured; otherwise with a bearer token of one of [`DASHBOARD_ROLES`]).
/// 401 / 403 carry the same reasons as the gRPC refusals.
fn dashboard_refusal(state: &OpsState, headers: &HeaderMap) -> Option<Response> {
    let authenticator = state.authenticator.as_ref()?;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let caller = match authenticator.identify(authorization) {
        Ok(caller) => caller,
        Err(refusal) => {
            let message = match refusal {
                TokenRefusal::Missing => {
                    "the dashboard's data needs a bearer token of role admin or bss: send the \
                     header `Authorization: Bearer <token>` (in a browser: open the page as \
                     /#token=<token>, or enter the token in the form)"
                }
                TokenRefusal::Malformed => "the Authorization header must be `Bearer <token>`",
                TokenRefusal::Invalid => "the bearer token is not valid (unknown or revoked)",
            };
            return Some(refused(
                StatusCode::UNAUTHORIZED,
                refusal.reason(),
                message.into(),
            ));
        }
    };
    if DASHBOARD_ROLES.contains(&caller.role) {
        return None;
    }
    tracing::info!(caller = %caller.name, role = %caller.role, "dashboard: permission denied");
    Some(refused(
        StatusCode::FORBIDDEN,
        "ROLE_NOT_ALLOWED",
        format!(
            "token {:?} has role {}; the dashboard's data needs role admin or bss",
            caller.name, caller.role
        ),
    ))
}

/// The dashboard's JSON; 401/403 without a token of [`DASHBOARD_ROLES`] when tokens are
/// configured; 503 with `{"error": …}` when the database cannot be read (before the
/// migrations, too).
async fn dashboard_json(
    State(state): State<OpsState>,
    draining: DrainMark,
    headers: HeaderMap,
) -> Response {
    let view = match readable_dashboard_view(&state, draining.is_some(), &headers).await {
        Ok(view) => view,
        Err(refused) => return refused,
    };
    // Serialized from the struct, so the fields keep their documented order.
    match serde_json::to_string(&view) {
        Ok(json) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            json,
        )
            .into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<OpsState>) -> (StatusCode, String) {
    match readiness(&state).await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => not_ready(&reason),
    }
}

/// Ready, or why not: the migrations ran, the storage can be written, the database answers.
async fn readiness(state: &OpsState) -> Result<(), String> {
    if !state.ready.load(Ordering::Acquire) {
        return Err("the migrations have not run yet".into());
    }
    if !state.storage_writable.load(Ordering::Acquire) {
        return Err(
            "the database cannot be written (disk full, read-only or I/O error); \
             a probe retries every second"
                .into(),
        );
    }
    if !state.storage_primary_found.load(Ordering::Acquire) {
        return Err(
            "the database primary is lost: searching for the writable host of database_url \
             (failover)"
                .into(),
        );
    }
    match tokio::time::timeout(READY_QUERY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the database does not answer: {e}")),
        Err(_) => Err(format!(
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
