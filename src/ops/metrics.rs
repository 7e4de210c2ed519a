//! The service's metrics and their Prometheus exposition (OpenMetrics text, through the
//! Prometheus project's `prometheus-client`).
//!
//! Two kinds of metric:
//! - *recorded* as things happen, in memory: gRPC requests and those in flight (the
//!   [`super::rpc`] layer), sweeps ([`SweepMetrics`]), the build;
//! - *read at scrape*: accounts per state, the last outbox sequence and the webhook lag from the
//!   database (cached for [`DB_CACHE_TTL`], so frequent scrapes cannot hammer it), the database
//!   pool's connections, the webhook worker's counters (`notify::WebhookCounters`), and the
//!   process (`process_*`, as Prometheus's own clients name them: start time, CPU, memory, file
//!   descriptors, from `/proc/self` on Linux). They are encoded into a registry made for each
//!   scrape, so a value that cannot be read is left out rather than repeated stale.
//!
//! Here: [`Metrics`] (the registry, the gRPC metrics, the scrape). `sweep.rs`: the sweep's
//! metrics; `process.rs`: the `process_*` ones from `/proc`; `labels.rs`: the gRPC label values.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::lifecycle::AccountState;
use crate::notify::WebhookCounters;
use crate::store::{AccountStore, EventType, PrimaryWatch, StoreError};
use crate::sweep::{SweepObserver, SweepReport};

mod labels;
mod process;
mod sweep;

pub use labels::code_label;
use labels::method_paths;
use process::register_process;
pub use sweep::SweepMetrics;

/// How long the database-derived values of a scrape are reused.
pub const DB_CACHE_TTL: Duration = Duration::from_secs(5);

/// The `Content-Type` of [`Metrics::scrape`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `method` label of a request to a path the server does not serve.
pub const UNKNOWN_METHOD: &str = "unknown";

/// Latency buckets of the gRPC requests, in seconds (0.5 ms to 10 s).
const RPC_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// What the webhook worker shares with the metrics once it runs.
struct WebhookSource {
    counters: Arc<WebhookCounters>,
    types: Vec<EventType>,
}

/// What a scrape reads from the database.
#[derive(Clone, Debug)]
struct DbSnapshot {
    accounts: Vec<(AccountState, i64)>,
    last_sequence: i64,
    /// The oldest undelivered webhook event; `None` when the webhook is off.
    oldest_undelivered: Option<Option<DateTime<Utc>>>,
}

/// Every metric of one server.
pub struct Metrics {
    /// The recorded metrics.
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabel, Histogram>,
    rpc_in_flight: Gauge,
    rpc_shed: Counter,
    /// 1 while Authorize answers from its facts cache (set by `crate::server`).
    pub authorize_cache_enabled: Gauge,
    pub sweep: SweepMetrics,
    /// `/package.Service/Method` paths the server serves (other paths count as "unknown", so a
    /// caller cannot make up label values).
    methods: HashSet<String>,
    webhook: OnceLock<WebhookSource>,
    /// A multi-host PostgreSQL URL: the primary the store follows.
    primary: OnceLock<PrimaryWatch>,
    db_cache: Mutex<Option<(Instant, DbSnapshot)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The scheduler reports to the service's metrics as a whole.
impl SweepObserver for Metrics {
    fn sweep_finished(&self, outcome: Result<&SweepReport, &StoreError>, elapsed: Duration) {
        self.sweep.record(outcome, elapsed);
    }
}

impl Metrics {
    pub fn new() -> Self {
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_duration =
            Family::<MethodLabel, Histogram>::new_with_constructor(|| -> Histogram {
                Histogram::new(RPC_BUCKETS)
            });
        let rpc_in_flight = Gauge::default();
        let sweep = SweepMetrics::default();
        let mut registry = Registry::default();
        registry.register(
            "ocs_rpc_in_flight",
            "gRPC requests received and not answered yet (a stream counts until it starts)",
            rpc_in_flight.clone(),
        );
        registry.register(
            "ocs_rpc_requests",
            "gRPC requests answered, by method and status code (streams count when they start)",
            rpc_requests.clone(),
        );
        registry.register_with_unit(
            "ocs_rpc_duration",
            "Time from a gRPC request to its response headers, by method",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let rpc_shed = Counter::default();
        let shed_help = "gRPC calls refused at once over grpc.max_concurrent_requests (OVERLOADED)";
        registry.register("ocs_rpc_shed", shed_help, rpc_shed.clone());
        sweep.register(&mut registry);
        let authorize_cache_enabled = Gauge::default();
        registry.register(
            "ocs_authorize_cache_enabled",
            "1 while Authorize answers from its facts cache, 0 while it is off (authorize_cache_ms 0, or another server's changes cannot be followed)",
            authorize_cache_enabled.clone(),
        );
        registry.register(
            "ocs_build",
            "The running build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let mut methods = HashSet::new();
        for set in [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ] {
            methods.extend(method_paths(set));
        }
        Self {
            registry,
            rpc_requests,
            rpc_duration,
            rpc_in_flight,
            rpc_shed,
            authorize_cache_enabled,
            sweep,
            methods,
            webhook: OnceLock::new(),
            primary: OnceLock::new(),
            db_cache: Mutex::new(None),
        }
    }

    /// The `method` label of a request path: `package.Service/Method` for a method the server
    /// serves, [`UNKNOWN_METHOD`] otherwise.
    pub fn method_label(&self, path: &str) -> String {
        if self.methods.contains(path) {
            path.trim_start_matches('/').to_owned()
        } else {
            UNKNOWN_METHOD.to_owned()
        }
    }

    /// A gRPC request came in: counted in flight until the guard is dropped (answered, or
    /// given up by the caller).
    pub fn rpc_started(&self) -> InFlight {
        self.rpc_in_flight.inc();
        InFlight(self.rpc_in_flight.clone())
    }

    /// Counts a call shed by the concurrency limit (`crate::server`'s admission).
    pub fn record_shed(&self) {
        self.rpc_shed.inc();
    }

    /// Records one answered gRPC request.
    pub fn record_rpc(&self, method: String, code: tonic::Code, elapsed: Duration) {
        self.rpc_duration
            .get_or_create(&MethodLabel {
                method: method.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.rpc_requests
            .get_or_create(&RpcLabels {
                method,
                code: code_label(code),
            })
            .inc();
    }

    /// Exposes the webhook worker's counters and lag (called once, when the worker starts).
    pub fn watch_webhook(&self, counters: Arc<WebhookCounters>, types: Vec<EventType>) {
        let _ = self.webhook.set(WebhookSource { counters, types });
    }

    /// Exposes whether the store knows its primary and how many it lost (a multi-host
    /// PostgreSQL URL; called once, at start).
    pub fn watch_primary(&self, primary: PrimaryWatch) {
        let _ = self.primary.set(primary);
    }

    /// The exposition: the recorded metrics and what is read now.
    pub async fn scrape(&self, store: &dyn AccountStore, clock: &dyn Clock) -> String {
        let mut read = Registry::default();
        match self.db_snapshot(store).await {
            Ok(db) => {
                let accounts = Family::<StateLabel, Gauge>::default();
                for state in AccountState::ALL {
                    let count = db
                        .accounts
                        .iter()
                        .find(|(s, _)| *s == state)
                        .map_or(0, |(_, n)| *n);
                    accounts
                        .get_or_create(&StateLabel {
                            state: state.name(),
                        })
                        .set(count);
                }
                read.register(
                    "ocs_accounts",
                    "Accounts per stored state (as the sweep and the requests left them)",
                    accounts,
                );
                read_gauge(
                    &mut read,
                    "ocs_outbox_last_sequence",
                    "The highest outbox sequence written (0: empty)",
                    None,
                    db.last_sequence,
                );
                if let Some(oldest) = db.oldest_undelivered {
                    let age = oldest.map_or(0.0, |at| {
                        (clock.now() - at).num_milliseconds().max(0) as f64 / 1000.0
                    });
                    read_seconds(
                        &mut read,
                        "ocs_webhook_lag",
                        "Age of the oldest selected event neither delivered nor dead-lettered \
                         (0: none)",
                        age,
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the database; its metrics are left out");
            }
        }
        if let Some(webhook) = self.webhook.get() {
            let counted = webhook.counters.snapshot();
            for (name, help, value) in [
                (
                    "ocs_webhook_delivered",
                    "Events the BSS confirmed (2xx) since start",
                    counted.delivered,
                ),
                (
                    "ocs_webhook_retries",
                    "Failed webhook attempts that will be tried again, since start",
                    counted.retried,
                ),
                (
                    "ocs_webhook_dead_lettered",
                    "Events dead-lettered after their last attempt, since start",
                    counted.dead_lettered,
                ),
            ] {
                read_counter(&mut read, name, help, value);
            }
        }
        if let Some(primary) = self.primary.get() {
            let status = primary.borrow().clone();
            read_gauge(
                &mut read,
                "ocs_storage_primary_found",
                "1 while the service knows the writable host of its multi-host database_url, 0 \
                 while it searches for it after losing the primary",
                None,
                i64::from(status.primary.is_some()),
            );
            read_counter(
                &mut read,
                "ocs_storage_primary_lost",
                "Times the service lost its PostgreSQL primary and searched for a new one, since \
                 start",
                status.failovers,
            );
        }
        let groups = store.group_commits();
        for (name, help, value) in [
            (
                "ocs_group_commits",
                "Transactions the group commit writers committed (a group of one included), \
                 since start",
                groups.groups,
            ),
            (
                "ocs_group_commit_mutations",
                "Mutations in those transactions (÷ ocs_group_commits: the mean group size), \
                 since start",
                groups.mutations,
            ),
            (
                "ocs_group_commit_splits",
                "PostgreSQL groups rolled back by a database error and run again one mutation \
                 per transaction, since start",
                groups.split,
            ),
        ] {
            read_counter(&mut read, name, help, value);
        }
        let pool = store.pool_connections();
        let connections = Family::<ConnectionLabel, Gauge>::default();
        for (state, count) in [("in_use", pool.in_use()), ("idle", pool.idle)] {
            connections
                .get_or_create(&ConnectionLabel { state })
                .set(i64::from(count));
        }
        read.register(
            "ocs_db_pool_connections",
            "Open database connections of the pool, by state (in_use, idle)",
            connections,
        );
        register_process(&mut read);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut text, &self.registry);
        let _ = encode_registry(&mut text, &read);
        let _ = encode_eof(&mut text);
        text
    }

    /// The database's values, read at most once per [`DB_CACHE_TTL`]; concurrent scrapes wait
    /// for one read.
    async fn db_snapshot(&self, store: &dyn AccountStore) -> Result<DbSnapshot, StoreError> {
        let mut cache = self.db_cache.lock().await;
        if let Some((at, snapshot)) = cache.as_ref()
            && at.elapsed() < DB_CACHE_TTL
        {
            return Ok(snapshot.clone());
        }
        let oldest_undelivered = match self.webhook.get() {
            Some(webhook) => Some(store.oldest_undelivered_event(&webhook.types).await?),
            None => None,
        };
        let snapshot = DbSnapshot {
            accounts: store.accounts_by_state().await?,
            last_sequence: store.last_outbox_sequence().await?,
            oldest_undelivered,
        };
        *cache = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }
}

/// Registers a value read at this scrape as an integer gauge, with its unit if it has one.
fn read_gauge(read: &mut Registry, name: &str, help: &str, unit: Option<Unit>, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    match unit {
        Some(unit) => read.register_with_unit(name, help, unit, gauge),
        None => read.register(name, help, gauge),
    }
}

/// Registers a value read at this scrape as a gauge in seconds.
fn read_seconds(read: &mut Registry, name: &str, help: &str, seconds: f64) {
    let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    gauge.set(seconds);
    read.register_with_unit(name, help, Unit::Seconds, gauge);
}

/// Registers a total read at this scrape (a count since start) as a counter.
fn read_counter(read: &mut Registry, name: &str, help: &str, total: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(total);
    read.register(name, help, counter);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabel {
    state: &'static str,
}

/// A gRPC request in flight; dropping it counts it out.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_are_labelled_by_name_and_anything_else_is_unknown() {
        let metrics = Metrics::new();
        assert_eq!(
            metrics.method_label("/ocs.lifecycle.v1.AccountLifecycle/Recharge"),
            "ocs.lifecycle.v1.AccountLifecycle/Recharge"
        );
        assert_eq!(
            metrics.method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(
            metrics.method_label("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        );
        for made_up in [
            "/ocs.lifecycle.v1.AccountLifecycle/NoSuchMethod",
            "/x/y",
            "/",
            "",
        ] {
            assert_eq!(metrics.method_label(made_up), UNKNOWN_METHOD, "{made_up:?}");
        }
    }

    #[test]
    fn an_rpc_is_in_flight_until_its_guard_is_dropped() {
        let metrics = Metrics::new();
        let first = metrics.rpc_started();
        let second = metrics.rpc_started();
        assert_eq!(metrics.rpc_in_flight.get(), 2);
        drop(first);
        drop(second);
        assert_eq!(metrics.rpc_in_flight.get(), 0);
    }
}
