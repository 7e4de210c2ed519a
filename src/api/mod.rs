//! The gRPC server: `AccountLifecycle`, `BssEvents`, `TestClock` (manual clock only), health and
//! reflection, behind bearer-token authentication (`crate::auth`) and optional TLS, with a
//! graceful, bounded shutdown; beside it the operations HTTP endpoint (`crate::ops`), which
//! stops with it.

mod accounts;
pub mod codec;
pub mod convert;
mod dead_letters;
mod events;
pub mod facts;
mod storage_health;
mod test_clock;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use crate::store::SWEEP_ACTOR;
pub use accounts::{AccountsApi, Context, REPLAYED_METADATA};
pub use events::EventsApi;
pub use storage_health::{PROBE_INTERVAL, StorageHealth};
pub use test_clock::TestClockApi;

use crate::auth::{self, AuthLayer, Authenticator};
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::config::{ClockMode, Config};
use crate::ops::{self, Metrics, OpsState, RpcMetricsLayer};
use crate::proto::account_lifecycle_server::AccountLifecycleServer;
use crate::proto::bss_events_server::BssEventsServer;
use crate::proto::test_clock_server::TestClockServer;
use crate::scheduler::Scheduler;
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Other(String),
}

const SERVICE_NAMES: [&str; 3] = [
    "ocs.lifecycle.v1.AccountLifecycle",
    "ocs.lifecycle.v1.TestClock",
    "ocs.lifecycle.v1.BssEvents",
];

/// Binds `config.listen` and serves until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    check_exposure(&config, config.listen)?;
    if let Some(addr) = config.http_addr {
        check_http_exposure(&config, addr)?;
    }
    let listener = bind(config.listen).await?;
    let http = match config.http_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    serve_with_listeners(config, listener, http, shutdown).await
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Without tokens every caller is trusted, so the service keeps to loopback unless told
/// otherwise (`--insecure`).
fn check_exposure(config: &Config, addr: SocketAddr) -> Result<(), ServeError> {
    if !config.auth.enabled() && !addr.ip().is_loopback() && !config.insecure {
        return Err(ServeError::Other(format!(
            "no tokens are configured ([[auth.tokens]]), so authentication is off and the \
             server binds loopback only; {addr} is not a loopback address (configure tokens, \
             or pass --insecure to serve it without authentication)"
        )));
    }
    Ok(())
}

/// The operations endpoint likewise: without tokens the dashboard's data is open to whoever
/// reaches it, so `http_addr` keeps to loopback unless `--insecure`.
fn check_http_exposure(config: &Config, addr: SocketAddr) -> Result<(), ServeError> {
    if !config.auth.enabled() && !addr.ip().is_loopback() && !config.insecure {
        return Err(ServeError::Other(format!(
            "no tokens are configured ([[auth.tokens]]), so the operations endpoint's dashboard \
             data has no authentication and http_addr binds loopback only; {addr} is not a \
             loopback address (configure tokens, pass --insecure to serve it without \
             authentication, or --http-addr off)"
        )));
    }
    Ok(())
}

/// Serves gRPC on an already bound listener (tests bind port 0) and the operations endpoint
/// on `config.http_addr` (when set) until `shutdown` is cancelled.
pub async fn serve_on(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let http = match config.http_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    serve_with_listeners(config, listener, http, shutdown).await
}

/// Serves gRPC on `listener` and the operations endpoint (`/metrics`, `/healthz`, `/readyz`)
/// on `http` (`None`: no operations endpoint; `config.http_addr` is not looked at) until
/// `shutdown` is cancelled.
pub async fn serve_with_listeners(
    config: Config,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let rules = Arc::new(config.rules()?);
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Other(e.to_string()))?;
    check_exposure(&config, addr)?;
    let http_addr = match &http {
        Some(http) => Some(
            http.local_addr()
                .map_err(|e| ServeError::Other(e.to_string()))?,
        ),
        None => None,
    };
    if let Some(http_addr) = http_addr {
        check_http_exposure(&config, http_addr)?;
    }
    let authenticator = Authenticator::from_config(&config.auth)?.map(Arc::new);
    let (builder, tls_on) = auth::with_tls(Server::builder(), &config.tls)?;
    match &authenticator {
        None => tracing::warn!(
            "authentication is off (no [[auth.tokens]] configured): every caller is trusted \
             (loopback only unless --insecure)"
        ),
        Some(_) if !tls_on && !addr.ip().is_loopback() => tracing::warn!(
            "bearer tokens travel in clear text: configure [tls] to serve beyond loopback"
        ),
        Some(_) => {}
    }
    if let Some(http_addr) = http_addr.filter(|a| authenticator.is_some() && !a.ip().is_loopback())
    {
        tracing::warn!(
            %http_addr,
            "the operations endpoint has no TLS: tokens sent to /api/dashboard travel in clear \
             text; keep http_addr on loopback or put a TLS-terminating proxy in front of it"
        );
    }
    let (manual, clock): (Option<Arc<ManualClock>>, Arc<dyn Clock>) = match config.clock {
        ClockMode::System => (None, Arc::new(SystemClock::default())),
        ClockMode::Manual => {
            // In microseconds, like every instant the clocks give (see `SystemClock`).
            let manual = Arc::new(ManualClock::starting_at(SystemClock::default().now()));
            (Some(manual.clone()), manual)
        }
    };
    let schedule = config.sweep.schedule()?;
    // The manual clock reports its moves to the scheduler, which acknowledges each after the
    // sweep it triggered.
    let (moves, moved) = match (&manual, config.sweep.scheduler) {
        (Some(_), true) => {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    };
    let (store, primary) = store::connect_following_primary(
        &config.database_url,
        config.db_pool_size,
        config.db_acquire_timeout(),
        rules.clone(),
    )
    .await?;
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::new());
    if let Some(primary) = &primary {
        metrics.watch_primary(primary.clone());
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    let storage_health = Arc::new(StorageHealth::new(
        health.clone(),
        store.clone(),
        clock.clone(),
        shutdown.clone(),
    ));
    let ctx = Context {
        store: store.clone(),
        rules: rules.clone(),
        clock: clock.clone(),
        ready: ready.clone(),
        sweep_batch_size: config.sweep.batch_size,
        metrics: metrics.clone(),
        facts: Arc::new(facts::FactCache::new(Duration::from_millis(
            config.authorize_cache_ms,
        ))),
        storage_health: storage_health.clone(),
    };
    // Up before the migrations, so /healthz answers and /readyz says why it is not ready yet.
    let mut operations = match (http, http_addr) {
        (Some(http), Some(http_addr)) => {
            let state = OpsState {
                metrics: metrics.clone(),
                store: store.clone(),
                clock: clock.clone(),
                ready: ready.clone(),
                storage_writable: storage_health.writable(),
                storage_primary_found: storage_health.primary_found(),
                dashboard: Arc::new(ops::Dashboard::new(
                    rules.clone(),
                    config
                        .sweep
                        .scheduler
                        .then(|| (schedule.clone(), config.sweep.cron.clone())),
                )),
                authenticator: authenticator.clone(),
            };
            tracing::info!(%http_addr, "operations endpoint listening (/, /api/dashboard, /metrics, /healthz, /readyz)");
            Some(tokio::spawn(ops::serve_http(http, state, shutdown.clone())))
        }
        _ => {
            tracing::info!("http_addr is off: no dashboard, /metrics, /healthz or /readyz");
            None
        }
    };
    let stop_operations =
        |operations: &mut Option<tokio::task::JoinHandle<std::io::Result<()>>>| {
            if let Some(task) = operations.take() {
                task.abort();
            }
        };

    for name in std::iter::once("").chain(SERVICE_NAMES) {
        health
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Other(format!("reflection: {e}")))?;

    let router = builder
        .layer(RpcMetricsLayer::new(metrics.clone()))
        .layer(AuthLayer::new(authenticator.clone()))
        .trace_fn(|req| tracing::debug_span!("grpc", path = %req.uri().path()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(BssEventsServer::new(EventsApi::new(
            ctx.clone(),
            shutdown.clone(),
        )))
        .add_service(AccountLifecycleServer::new(AccountsApi::new(ctx)));
    let router = match &manual {
        Some(clock) => router.add_service(TestClockServer::new(TestClockApi::new(
            clock.clone(),
            moves,
        ))),
        None => router,
    };
    let stopping = shutdown.clone();
    // Answers are small and latency-bound: no Nagle delay on accepted connections.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let mut server = tokio::spawn(
        router.serve_with_incoming_shutdown(incoming, async move { stopping.cancelled().await }),
    );
    tracing::info!(
        %addr,
        clock = ?config.clock,
        database = %redact(&config.database_url),
        tls = tls_on,
        authentication = authenticator.is_some(),
        "listening"
    );

    // Health says NOT_SERVING until the migrations have run.
    let migrated = tokio::select! {
        migrated = store.migrate() => Some(migrated),
        _ = shutdown.cancelled() => None,
    };
    match migrated {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            server.abort();
            stop_operations(&mut operations);
            return Err(e.into());
        }
        None => {
            tracing::info!("shutdown requested before the migrations finished");
            server.abort();
            stop_operations(&mut operations);
            return Ok(());
        }
    }
    ready.store(true, Ordering::Release);
    let mut serving = vec![""; 1];
    serving.push(SERVICE_NAMES[0]);
    serving.push(SERVICE_NAMES[2]);
    if manual.is_some() {
        serving.push(SERVICE_NAMES[1]);
    }
    for name in serving {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    tracing::info!("migrations done, serving");
    if let Some(primary) = primary {
        storage_health.follow_primary(primary);
    }
    let notifier = match crate::notify::start(&config.bss, store.clone(), shutdown.clone()) {
        Ok(notifier) => notifier,
        Err(e) => {
            server.abort();
            stop_operations(&mut operations);
            return Err(ServeError::Other(e.to_string()));
        }
    };
    if let Some(notifier) = &notifier {
        // `start` has validated the types already.
        let types = config.bss.event_types().unwrap_or_default();
        metrics.watch_webhook(notifier.counters.clone(), types);
    }

    let scheduler = config.sweep.scheduler.then(|| {
        let scheduler = Scheduler::new(
            store.clone(),
            clock.clone(),
            schedule,
            rules.timezone,
            config.sweep.batch_size,
        )
        .with_metrics(metrics.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            scheduler.catch_up_missed().await;
            match moved {
                Some(moved) => scheduler.run_on_manual_clock(moved, stop).await,
                None => scheduler.run_on_system_clock(stop).await,
            }
        })
    });

    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {}
        finished = &mut server => {
            stop_operations(&mut operations);
            return finished.map_err(|e| ServeError::Other(e.to_string()))?.map_err(Into::into);
        }
    }
    tracing::info!("shutting down: finishing in-flight requests");
    for name in std::iter::once("").chain(SERVICE_NAMES) {
        health
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let grace = Duration::from_secs(config.shutdown_timeout_secs);
    match tokio::time::timeout(grace, &mut server).await {
        Ok(finished) => finished.map_err(|e| ServeError::Other(e.to_string()))??,
        Err(_) => {
            tracing::warn!(
                ?grace,
                "in-flight requests did not finish in time; stopping anyway"
            );
            server.abort();
        }
    }
    if let Some(scheduler) = scheduler {
        // The scheduler stops between sweeps; a sweep in progress finishes its batches.
        if tokio::time::timeout(grace, scheduler).await.is_err() {
            tracing::warn!(?grace, "the sweep did not finish in time; stopping anyway");
        }
    }
    if let Some(notifier) = notifier {
        notifier.stopped().await;
    }
    if let Some(mut task) = operations.take() {
        // It stopped accepting at the cancellation; a scrape in progress may finish.
        match tokio::time::timeout(grace, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the operations endpoint failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the operations endpoint task failed"),
            Err(_) => {
                tracing::warn!(?grace, "the operations endpoint did not stop in time");
                task.abort();
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The database URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
