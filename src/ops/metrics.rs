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
use prost::Message;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::lifecycle::AccountState;
use crate::notify::WebhookCounters;
use crate::store::{AccountStore, EventType, PrimaryWatch, StoreError, SweepRunStatus};
use crate::sweep::{SweepCounts, SweepObserver, SweepReport};

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
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabel {
    transition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The sweep's metrics: real sweeps only (a dry run is a forecast, not a sweep), recorded by
/// whoever ran it (the scheduler, `AdvanceStates`).
#[derive(Debug, Default)]
pub struct SweepMetrics {
    runs: Family<StatusLabel, Counter>,
    transitions: Family<TransitionLabel, Counter>,
    examined: Counter,
    last_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl SweepMetrics {
    /// Records one real sweep that took `elapsed`: its status and, when it succeeded, its
    /// counts. (A failed run's committed batches are in `sweep_runs`, not counted here.)
    pub fn record(&self, outcome: Result<&SweepReport, &StoreError>, elapsed: Duration) {
        self.last_duration.set(elapsed.as_secs_f64());
        let report = match outcome {
            Ok(report) => report,
            Err(_) => {
                self.runs
                    .get_or_create(&StatusLabel {
                        status: SweepRunStatus::Failed.as_str(),
                    })
                    .inc();
                return;
            }
        };
        self.runs
            .get_or_create(&StatusLabel {
                status: SweepRunStatus::Succeeded.as_str(),
            })
            .inc();
        self.examined.inc_by(report.counts.examined);
        // The `transition` label values are the counts' names.
        for (transition, count) in report.counts.named() {
            self.transitions
                .get_or_create(&TransitionLabel { transition })
                .inc_by(count);
        }
        // Real time, not the service clock: alerts compare it with Prometheus's `time()`.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_success.set(now.as_secs_f64());
    }

    /// How long the last sweep run of this process took; `None` before the first.
    pub fn last_duration(&self) -> Option<Duration> {
        let runs: u64 = ["succeeded", "failed"]
            .into_iter()
            .map(|status| self.runs.get_or_create(&StatusLabel { status }).get())
            .sum();
        (runs > 0).then(|| Duration::from_secs_f64(self.last_duration.get().max(0.0)))
    }

    fn register(&self, registry: &mut Registry) {
        // Every label value from the start, so that rate() and alerts see a 0 before the first.
        for status in [SweepRunStatus::Succeeded, SweepRunStatus::Failed] {
            let status = status.as_str();
            self.runs.get_or_create(&StatusLabel { status }).inc_by(0);
        }
        for (transition, _) in SweepCounts::default().named() {
            self.transitions
                .get_or_create(&TransitionLabel { transition })
                .inc_by(0);
        }
        registry.register(
            "ocs_sweep_runs",
            "Real sweeps run by this process, by status (succeeded, failed)",
            self.runs.clone(),
        );
        registry.register(
            "ocs_sweep_transitions",
            "Boundary transitions and notices of the succeeded sweeps, by transition",
            self.transitions.clone(),
        );
        registry.register(
            "ocs_sweep_accounts_examined",
            "Due accounts the succeeded sweeps looked at",
            self.examined.clone(),
        );
        // A gauge of the last run (not a histogram of all runs): named so.
        registry.register_with_unit(
            "ocs_sweep_last_duration",
            "How long the last sweep run took",
            Unit::Seconds,
            self.last_duration.clone(),
        );
        registry.register_with_unit(
            "ocs_sweep_last_success_timestamp",
            "Unix time at which the last succeeded sweep finished (0: none since start)",
            Unit::Seconds,
            self.last_success.clone(),
        );
    }
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

impl SweepObserver for SweepMetrics {
    fn sweep_finished(&self, outcome: Result<&SweepReport, &StoreError>, elapsed: Duration) {
        self.record(outcome, elapsed);
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
                let last_sequence = Gauge::<i64>::default();
                last_sequence.set(db.last_sequence);
                read.register(
                    "ocs_outbox_last_sequence",
                    "The highest outbox sequence written (0: empty)",
                    last_sequence,
                );
                if let Some(oldest) = db.oldest_undelivered {
                    let lag = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
                    let age = oldest.map_or(0.0, |at| {
                        (clock.now() - at).num_milliseconds().max(0) as f64 / 1000.0
                    });
                    lag.set(age);
                    read.register_with_unit(
                        "ocs_webhook_lag",
                        "Age of the oldest selected event neither delivered nor dead-lettered \
                         (0: none)",
                        Unit::Seconds,
                        lag,
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
                let counter = Counter::<u64>::default();
                counter.inc_by(value);
                read.register(name, help, counter);
            }
        }
        if let Some(primary) = self.primary.get() {
            let status = primary.borrow().clone();
            let found = Gauge::<i64>::default();
            found.set(i64::from(status.primary.is_some()));
            read.register(
                "ocs_storage_primary_found",
                "1 while the service knows the writable host of its multi-host database_url, 0 \
                 while it searches for it after losing the primary",
                found,
            );
            let failovers = Counter::<u64>::default();
            failovers.inc_by(status.failovers);
            read.register(
                "ocs_storage_primary_lost",
                "Times the service lost its PostgreSQL primary and searched for a new one, since \
                 start",
                failovers,
            );
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

/// The `code` label: the status code's name as the Go gRPC libraries (and their Prometheus
/// interceptors, `grpc_code`) spell it.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The `/package.Service/Method` paths of the services in an encoded file descriptor set.
fn method_paths(encoded: &[u8]) -> Vec<String> {
    let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
        tracing::warn!("metrics: a compiled-in file descriptor set does not decode");
        return Vec::new();
    };
    let mut paths = Vec::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            for method in &service.method {
                let service_name = if package.is_empty() {
                    service.name().to_owned()
                } else {
                    format!("{package}.{}", service.name())
                };
                paths.push(format!("/{service_name}/{}", method.name()));
            }
        }
    }
    paths
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

/// Clock ticks per second of `/proc` times: the kernel reports them in USER_HZ, which is 100 on
/// every Linux architecture in use (Prometheus's Go `procfs` assumes the same).
const USER_HZ: f64 = 100.0;

/// What `/proc/self/stat` and `/proc/stat` say of the process.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ProcessTimes {
    /// Unix time the process started, in seconds.
    start_time: f64,
    /// User and system CPU time, in seconds.
    cpu_seconds: f64,
}

/// Parses `/proc/self/stat` (`stat`) with the boot time (`btime` of `/proc/stat`).
fn process_times(stat: &str, boot_time: f64) -> Option<ProcessTimes> {
    // The command name (field 2) is in parentheses and may hold spaces: fields 3… follow the
    // last ')'.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    Some(ProcessTimes {
        cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
        start_time: boot_time + field(22)? / USER_HZ,
    })
}

fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit of open files, from `/proc/self/limits`.
fn max_fds(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The `process_*` metrics, each left out when it cannot be read (not Linux).
fn register_process(read: &mut Registry) {
    let times = std::fs::read_to_string("/proc/stat")
        .ok()
        .as_deref()
        .and_then(boot_time)
        .and_then(|boot| {
            let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
            process_times(&stat, boot)
        });
    if let Some(times) = times {
        let start = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        start.set(times.start_time);
        read.register_with_unit(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            start,
        );
        let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        cpu.inc_by(times.cpu_seconds);
        read.register_with_unit(
            "process_cpu",
            "User and system CPU time spent",
            Unit::Seconds,
            cpu,
        );
    }
    if let Some(bytes) = resident_memory_bytes() {
        let rss = Gauge::<i64>::default();
        rss.set(bytes);
        read.register_with_unit(
            "process_resident_memory",
            "Resident memory of the process",
            Unit::Bytes,
            rss,
        );
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        let open = Gauge::<i64>::default();
        // The directory's own descriptor is one of them while it is read.
        open.set(entries.count().saturating_sub(1) as i64);
        read.register("process_open_fds", "Open file descriptors", open);
    }
    if let Some(limit) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .as_deref()
        .and_then(max_fds)
    {
        let max = Gauge::<i64>::default();
        max.set(limit);
        read.register(
            "process_max_fds",
            "The most file descriptors the process may open",
            max,
        );
    }
}

/// Resident memory from `/proc/self/status` (Linux); `None` elsewhere.
fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
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
    fn process_times_are_read_after_the_command_name() {
        let stat = "4242 (ocs (life) cycle) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 150 0 0 20 0 9 0 360000 100000000 5000 18446744073709551615";
        let times = process_times(stat, 1_700_000_000.0).expect("parsed");
        assert_eq!(times.cpu_seconds, 4.0);
        assert_eq!(times.start_time, 1_700_003_600.0);
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1.7e9)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_fds(limits), Some(1024));
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

    #[test]
    fn resident_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(resident_memory_bytes().is_some_and(|b| b > 0));
        }
    }
}
