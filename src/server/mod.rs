//! The composition root: what `ocs-lifecycle serve` builds from its configuration, in the order
//! it happens.
//!
//! 1. **Build** ([`serve_with_listeners`]): rules, clock, store, metrics, health, the gRPC
//!    services of [`crate::api`] behind authentication (`crate::auth`) and optional TLS.
//! 2. **Start**: the operations endpoint (`crate::ops`) and the gRPC server accept at once;
//!    health says NOT_SERVING and requests are UNAVAILABLE (`NOT_READY`).
//! 3. **Ready**: the migrations run; then health says SERVING, and the webhook worker
//!    (`crate::notify`) and the sweep's scheduler (`crate::scheduler`) start.
//!    Before that, the database must take a probe write: a read-only database fails the start
//!    instead of a ready server failing its first write.
//! 4. **Shutdown** (the token is cancelled; the order is the `shutdown` module's): health
//!    NOT_SERVING and `/readyz` 503 for `drain_secs` while both listeners still serve (load
//!    balancers stop sending; [`serve_cutting_drain`]'s second token ends the drain early), then
//!    the listeners close (the gRPC socket with them, so new connections are refused; health
//!    `Watch` and `Subscribe` streams end), in-flight requests finish within
//!    `shutdown_timeout_secs`, a sweep in progress finishes its batches, the webhook worker and
//!    the operations endpoint stop.
//!
//! Every gRPC call passes the admission layer ([`admission`]: concurrency limit, default
//! deadline) inside the metrics layer, so shed calls are counted and logged like the others.
//! [`serve`] (the `serve` command) also holds the SQLite database's [`instance_lock`]; the
//! in-process entries ([`serve_on`], [`serve_with_listeners`]) leave that to their caller, so
//! a test can run two servers on one file.

pub mod admission;
mod exposure;
pub mod instance_lock;
mod shutdown;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::{
    AccountsApi, AnalyticsApi, Context, EventsApi, StorageHealth, TestClockApi, facts,
};
use crate::auth::{self, AuthLayer, Authenticator};
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::config::{ClockMode, Config};
use crate::ops::{self, Metrics, OpsState, RpcMetricsLayer};
use crate::proto::account_lifecycle_server::AccountLifecycleServer;
use crate::proto::bss_events_server::BssEventsServer;
use crate::proto::lifecycle_analytics_server::LifecycleAnalyticsServer;
use crate::proto::test_clock_server::TestClockServer;
use crate::scheduler::Scheduler;
use crate::store;
use admission::AdmissionLayer;
use exposure::{check_exposure, check_http_exposure, warn_about_exposure};

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

use crate::wire::{
    ACCOUNT_LIFECYCLE_SERVICE as ACCOUNT_LIFECYCLE, BSS_EVENTS_SERVICE as BSS_EVENTS,
    LIFECYCLE_ANALYTICS_SERVICE as LIFECYCLE_ANALYTICS, SERVICE_NAMES,
    TEST_CLOCK_SERVICE as TEST_CLOCK,
};

/// Binds `config.listen` and serves until `shutdown` is cancelled, holding the SQLite
/// database's lock ([`claim_database`]) throughout.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    serve_cutting_drain(config, shutdown, CancellationToken::new()).await
}

/// [`serve`], and the drain of the shutdown ends early if `cut_drain` is cancelled (a second
/// SIGTERM or Ctrl-C).
pub async fn serve_cutting_drain(
    config: Config,
    shutdown: CancellationToken,
    cut_drain: CancellationToken,
) -> Result<(), ServeError> {
    check_exposure(&config, config.listen)?;
    let _lock = claim_database(&config.database_url)?;
    if let Some(addr) = config.http_addr {
        check_http_exposure(&config, addr)?;
    }
    let listener = bind(config.listen).await?;
    let http = match config.http_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    serve_listeners_cutting_drain(config, listener, http, shutdown, cut_drain).await
}

/// The lock of the SQLite file `database_url` names (none for PostgreSQL): `serve`, `migrate`
/// and `sweep` hold it while they run; a second one on the same file fails here, naming it.
pub fn claim_database(
    database_url: &str,
) -> Result<Option<instance_lock::InstanceLock>, ServeError> {
    instance_lock::claim(database_url).map_err(ServeError::Other)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
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

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, ServeError> {
    listener
        .local_addr()
        .map_err(|e| ServeError::Other(e.to_string()))
}

/// The configured clock; the manual one is also returned as such (the TestClock service and
/// the scheduler drive it).
fn make_clock(mode: ClockMode) -> (Option<Arc<ManualClock>>, Arc<dyn Clock>) {
    match mode {
        ClockMode::System => (None, Arc::new(SystemClock::default())),
        ClockMode::Manual => {
            // In microseconds, like every instant the clocks give (see `SystemClock`).
            let manual = Arc::new(ManualClock::starting_at(SystemClock::default().now()));
            (Some(manual.clone()), manual)
        }
    }
}

async fn set_health(health: &HealthReporter, names: &[&str], status: ServingStatus) {
    for name in names {
        health.set_service_status(*name, status).await;
    }
}

/// The background tasks that run beside the gRPC server; each is stopped by the shutdown
/// token and awaited (bounded) at shutdown.
struct Tasks {
    operations: Option<JoinHandle<std::io::Result<()>>>,
    scheduler: Option<JoinHandle<()>>,
    notifier: Option<crate::notify::Notifier>,
    /// The listener of other servers' commits (PostgreSQL).
    changes: Option<JoinHandle<()>>,
}

impl Tasks {
    /// Stops at once what has started (a start that failed half-way).
    fn abort(&mut self) {
        if let Some(task) = self.operations.take() {
            task.abort();
        }
        if let Some(task) = self.scheduler.take() {
            task.abort();
        }
        if let Some(task) = self.changes.take() {
            task.abort();
        }
    }

    /// Waits for each task to finish what it is doing, at most `grace` each.
    async fn stopped(mut self, grace: Duration) {
        if let Some(scheduler) = self.scheduler.take() {
            // The scheduler stops between sweeps; a sweep in progress finishes its batches.
            if tokio::time::timeout(grace, scheduler).await.is_err() {
                tracing::warn!(
                    grace_secs = grace.as_secs(),
                    "the sweep did not finish in time; stopping anyway"
                );
            }
        }
        if let Some(notifier) = self.notifier.take() {
            notifier.stopped().await;
        }
        if let Some(mut task) = self.changes.take() {
            // It stops at the cancellation, between two notifications.
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                task.abort();
            }
        }
        if let Some(mut task) = self.operations.take() {
            // It stopped accepting at the cancellation; a scrape in progress may finish.
            match tokio::time::timeout(grace, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the operations endpoint failed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "the operations endpoint task failed"),
                Err(_) => {
                    tracing::warn!(
                        grace_secs = grace.as_secs(),
                        "the operations endpoint did not stop in time"
                    );
                    task.abort();
                }
            }
        }
    }
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
    serve_listeners_cutting_drain(config, listener, http, shutdown, CancellationToken::new()).await
}

/// [`serve_with_listeners`], and the drain ends early if `cut_drain` is cancelled.
async fn serve_listeners_cutting_drain(
    config: Config,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
    cut_drain: CancellationToken,
) -> Result<(), ServeError> {
    // 1. Build.
    let rules = Arc::new(config.rules()?);
    let addr = local_addr(&listener)?;
    check_exposure(&config, addr)?;
    let http_addr = http.as_ref().map(local_addr).transpose()?;
    if let Some(http_addr) = http_addr {
        check_http_exposure(&config, http_addr)?;
    }
    let authenticator = Authenticator::from_config(&config.auth)?.map(Arc::new);
    let (builder, tls_on) = auth::with_tls(
        Server::builder()
            .http2_keepalive_interval(config.grpc.keepalive_interval())
            .http2_keepalive_timeout(Some(config.grpc.keepalive_timeout())),
        &config.tls,
    )?;
    warn_about_exposure(authenticator.is_some(), tls_on, addr, http_addr);
    let (manual, clock) = make_clock(config.clock);
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
    // `primary`: a PostgreSQL store that follows the primary of a multi-host URL.
    let group = store::GroupCommit {
        max: config.group_commit_max,
        wait: Duration::from_micros(config.group_commit_wait_us),
        writers: config.group_commit_writers(),
    };
    let (store, primary) = store::connect_following_primary(
        &config.database_url,
        config.db_pool_size,
        config.db_acquire_timeout(),
        rules.clone(),
        group,
    )
    .await?;
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::new());
    if let Some(primary) = &primary {
        metrics.watch_primary(primary.clone());
    }
    // Closes both listeners: at shutdown, after the drain (see the `shutdown` module).
    let close = CancellationToken::new();
    let health = HealthReporter::new();
    let health_service = shutdown::health_service(health.clone(), &close);
    let storage_health = Arc::new(StorageHealth::new(
        health.clone(),
        store.clone(),
        clock.clone(),
        shutdown.clone(),
    ));
    let facts = Arc::new(facts::FactCache::new(Duration::from_millis(
        config.authorize_cache_ms,
    )));
    // What other servers commit to the same database evicts from the Authorize cache (on
    // PostgreSQL; the cache is off while that feed is not heard).
    metrics.authorize_cache_enabled.set(facts.enabled().into());
    let changes = (config.authorize_cache_ms > 0)
        .then(|| {
            let (facts, metrics) = (facts.clone(), metrics.clone());
            let on = move |change| {
                facts.hear(change);
                metrics.authorize_cache_enabled.set(facts.enabled().into());
            };
            store.follow_changes(Arc::new(on), shutdown.clone())
        })
        .flatten();
    let ctx = Context {
        store: store.clone(),
        rules: rules.clone(),
        clock: clock.clone(),
        ready: ready.clone(),
        sweep_batch_size: config.sweep.batch_size,
        metrics: metrics.clone(),
        facts,
        storage_health: storage_health.clone(),
    };

    // 2. Start: the operations endpoint first, so /healthz answers and /readyz says why it is
    // not ready yet while the migrations run.
    let draining = Arc::new(AtomicBool::new(false));
    let mut tasks = Tasks {
        operations: None,
        scheduler: None,
        notifier: None,
        changes,
    };
    match (http, http_addr) {
        (Some(http), Some(http_addr)) => {
            let state = OpsState {
                metrics: metrics.clone(),
                store: store.clone(),
                clock: clock.clone(),
                ready: ready.clone(),
                storage_writable: storage_health.writable(),
                storage_primary_found: storage_health.primary_found(),
                dashboard: Arc::new({
                    let dashboard = ops::Dashboard::new(
                        rules.clone(),
                        config
                            .sweep
                            .scheduler
                            .then(|| (schedule.clone(), config.sweep.cron.clone())),
                    )
                    .with_manual_clock(manual.is_some());
                    // `notify::start` refuses unknown types before anything is delivered.
                    match config.bss.event_types() {
                        Ok(types) if config.bss.enabled() => dashboard.with_webhook(types),
                        _ => dashboard,
                    }
                }),
                authenticator: authenticator.clone(),
            };
            tracing::info!(%http_addr, "operations endpoint listening (/, /api/dashboard, /metrics, /healthz, /readyz)");
            tasks.operations = Some(tokio::spawn(ops::serve_http_draining(
                http,
                state,
                draining.clone(),
                close.clone(),
            )));
        }
        _ => tracing::info!("http_addr is off: no dashboard, /metrics, /healthz or /readyz"),
    }
    let all_services: Vec<&str> = std::iter::once("").chain(SERVICE_NAMES).collect();
    set_health(&health, &all_services, ServingStatus::NotServing).await;
    // Both reflection versions: grpcurl builds and other tools that speak only v1alpha exist.
    let reflection_error = |e| ServeError::Other(format!("reflection: {e}"));
    let reflection = reflection_builder().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(reflection_error)?;
    let max_message = config.grpc.max_message_size();
    let router = builder
        .layer(RpcMetricsLayer::new(metrics.clone()).with_full_msisdn(config.log_full_msisdn))
        .layer(AdmissionLayer::new(
            config.grpc.max_concurrent_requests,
            config.grpc.default_deadline(),
            metrics.clone(),
        ))
        .layer(AuthLayer::new(authenticator.clone()))
        .trace_fn(|req| tracing::debug_span!("grpc", path = %req.uri().path()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            // Subscribe streams last through the drain and end as the listeners close.
            BssEventsServer::new(EventsApi::new(ctx.clone(), close.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            LifecycleAnalyticsServer::new(AnalyticsApi::new(ctx.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            AccountLifecycleServer::new(AccountsApi::new(ctx))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        );
    let router = match &manual {
        Some(clock) => router.add_service(
            TestClockServer::new(TestClockApi::new(clock.clone(), moves))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        ),
        None => router,
    };
    // Answers are small and latency-bound: no Nagle delay on accepted connections.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    // The incoming stream ends (and drops the listener) at `close`: that ends the accept loop
    // and starts tonic's graceful shutdown, so its own signal never fires.
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(
        shutdown::ClosingIncoming::new(incoming, &close),
        std::future::pending::<()>(),
    ));
    tracing::info!(
        %addr,
        clock = if manual.is_some() { "manual" } else { "system" },
        database = %redact(&config.database_url),
        tls = tls_on,
        authentication = authenticator.is_some(),
        "listening"
    );

    // 3. Ready: health says NOT_SERVING until the migrations have run.
    let migrated = tokio::select! {
        migrated = store.migrate() => Some(migrated),
        _ = shutdown.cancelled() => None,
    };
    let failed = |mut tasks: Tasks, server: JoinHandle<_>| {
        server.abort();
        tasks.abort();
    };
    let migrated = match migrated {
        Some(Ok(())) => tokio::select! {
            probed = probe_writable(store.as_ref(), clock.as_ref(), &config.database_url) => {
                Some(probed)
            }
            _ = shutdown.cancelled() => None,
        },
        Some(Err(e)) => Some(Err(e.into())),
        None => None,
    };
    match migrated {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            failed(tasks, server);
            return Err(e);
        }
        None => {
            tracing::info!("shutdown requested before the migrations finished");
            failed(tasks, server);
            return Ok(());
        }
    }
    ready.store(true, Ordering::Release);
    let mut serving = vec!["", ACCOUNT_LIFECYCLE, BSS_EVENTS, LIFECYCLE_ANALYTICS];
    if manual.is_some() {
        serving.push(TEST_CLOCK);
    }
    set_health(&health, &serving, ServingStatus::Serving).await;
    tracing::info!("migrations done, serving");
    if let Some(primary) = primary {
        storage_health.follow_primary(primary);
    }
    tasks.notifier = match crate::notify::start(&config.bss, store.clone(), shutdown.clone()) {
        Ok(notifier) => notifier,
        Err(e) => {
            failed(tasks, server);
            return Err(ServeError::Other(e.to_string()));
        }
    };
    if let Some(notifier) = &tasks.notifier {
        // `start` has validated the types already.
        let types = config.bss.event_types().unwrap_or_default();
        metrics.watch_webhook(notifier.counters.clone(), types);
    }
    tasks.scheduler = config.sweep.scheduler.then(|| {
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
            tasks.abort();
            return finished.map_err(|e| ServeError::Other(e.to_string()))?.map_err(Into::into);
        }
    }

    // 4. Shutdown, in the order the `shutdown` module describes: NOT_SERVING and /readyz 503,
    // the drain, then the listeners close.
    set_health(&health, &all_services, ServingStatus::NotServing).await;
    draining.store(true, Ordering::Release);
    shutdown::drain(config.drain_secs, &cut_drain).await;
    tracing::info!("shutting down: listeners closed, finishing in-flight requests");
    close.cancel();
    let grace = Duration::from_secs(config.shutdown_timeout_secs);
    match tokio::time::timeout(grace, &mut server).await {
        Ok(finished) => finished.map_err(|e| ServeError::Other(e.to_string()))??,
        Err(_) => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight requests did not finish in time; stopping anyway"
            );
            server.abort();
        }
    }
    // What the last calls committed reaches the other servers' caches before this one goes.
    if tokio::time::timeout(grace, store.changes_announced())
        .await
        .is_err()
    {
        tracing::warn!("the last commits could not be announced to the other servers in time");
    }
    tasks.stopped(grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// One write at start: a database the server cannot write (a read-only file, a read-only
/// PostgreSQL user or replica) fails the start with the reason, so `/readyz` never says ready
/// on it.
async fn probe_writable(
    store: &dyn store::AccountStore,
    clock: &dyn Clock,
    database_url: &str,
) -> Result<(), ServeError> {
    store.probe_write(clock.now()).await.map_err(|e| {
        let database = match instance_lock::sqlite_file(database_url) {
            Some(file) => format!("the SQLite database {}", file.display()),
            None => format!("the database {}", redact(database_url)),
        };
        ServeError::Other(format!(
            "{database} cannot be written ({e}): make it writable by this user (the file and \
             its directory for SQLite; a read-write user on the primary for PostgreSQL)"
        ))
    })
}

/// Reflection over the lifecycle contract, health, and `google.rpc` error details (so a
/// reflection client can decode the ErrorInfo of an error).
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// The database URL without its password (in the user information or `?password=`), for logs.
fn redact(url: &str) -> String {
    crate::config::redact::url(url)
}
