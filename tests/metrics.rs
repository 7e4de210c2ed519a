//! The operations HTTP endpoint of a real server, read with a real HTTP client: `/healthz`,
//! `/readyz`, and `/metrics` parsed line by line after real gRPC requests, sweeps and webhook
//! deliveries, on SQLite and PostgreSQL. (`--http-addr` of the binary: `tests/cli.rs`.)

#[macro_use]
mod common;
#[path = "webhook/hook.rs"]
#[allow(dead_code)]
mod hook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{TestDb, TestServer, activate, provision, rid};
use hook::{Hook, Policy};
use ocs_lifecycle::config::{BssConfig, ClockMode, Config};
use ocs_lifecycle::proto;
use tonic::transport::Channel;

/// Safety bound for anything to happen; tests never assert on elapsed time.
const WAIT: Duration = Duration::from_secs(30);
const T0: &str = "2030-03-01T02:00:00Z";
const RECHARGE: &str = "ocs.lifecycle.v1.AccountLifecycle/Recharge";

both_backends! {
    healthz_and_readyz_answer_200_once_serving,
    recharges_are_counted_by_method_and_status_code,
    accounts_are_counted_per_stored_state_with_the_last_outbox_sequence,
    advance_states_counts_its_sweep_and_a_forecast_counts_nothing,
}

both_databases! {
    db_sqlite, db_postgres:
    webhook_counters_and_lag_follow_a_failing_then_answering_bss,
    readyz_is_503_with_a_reason_until_the_migrations_ran,
}

// ---------------------------------------------------------------------------------------------
// The exposition, parsed.

/// One sample line: `name{label="value",…} value`.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, every line checked.
#[derive(Debug)]
struct Exposition {
    samples: Vec<Sample>,
    text: String,
}

impl Exposition {
    /// Parses the OpenMetrics text: `# HELP|TYPE|UNIT` lines, samples, and `# EOF` last.
    fn parse(text: &str) -> Exposition {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.last(),
            Some(&"# EOF"),
            "the exposition ends with # EOF:\n{text}"
        );
        let mut samples = Vec::new();
        for line in &lines[..lines.len() - 1] {
            if let Some(comment) = line.strip_prefix("# ") {
                let kind = comment.split(' ').next().unwrap_or_default();
                assert!(
                    ["HELP", "TYPE", "UNIT"].contains(&kind),
                    "unexpected comment line {line:?}"
                );
                continue;
            }
            samples.push(parse_sample(line));
        }
        Exposition {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of the sample `name` whose labels are exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    #[track_caller]
    fn expect(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{}", self.text))
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

#[track_caller]
fn parse_sample(line: &str) -> Sample {
    let bad = || -> ! { panic!("not a sample line: {line:?}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad());
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        bad();
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end = loop {
            let start = match chars.peek() {
                Some((i, '}')) => break *i,
                Some((i, _)) => *i,
                None => bad(),
            };
            let eq = chars
                .by_ref()
                .find(|(_, c)| *c == '=')
                .map_or_else(|| bad(), |(i, _)| i);
            let key = inner[start..eq].to_owned();
            if chars.next().map(|(_, c)| c) != Some('"') {
                bad();
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bad(),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => bad(),
                }
            }
            labels.insert(key, value);
            if let Some((_, ',')) = chars.peek() {
                chars.next();
            }
        };
        rest = &inner[end + 1..];
    }
    let value_text = rest.strip_prefix(' ').unwrap_or_else(|| bad());
    let value: f64 = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().unwrap_or_else(|_| bad()),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

async fn get(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await.expect("body");
    (status, content_type, body)
}

async fn scrape(server: &TestServer) -> Exposition {
    let (status, content_type, body) = get(&server.http_url("/metrics")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    Exposition::parse(&body)
}

fn recharge(msisdn: &str, amount: i64) -> proto::RechargeRequest {
    proto::RechargeRequest {
        msisdn: msisdn.into(),
        amount,
        channel: proto::RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: rid(),
    }
}

/// The pool's (in use, idle) connections of one scrape.
fn pool_connections(metrics: &Exposition) -> (f64, f64) {
    (
        metrics.expect("ocs_db_pool_connections", &[("state", "in_use")]),
        metrics.expect("ocs_db_pool_connections", &[("state", "idle")]),
    )
}

async fn max_outbox_sequence(server: &TestServer) -> i64 {
    server
        .db()
        .await
        .outbox()
        .await
        .last()
        .map_or(0, |e| e.sequence)
}

// ---------------------------------------------------------------------------------------------
// The tests.

async fn healthz_and_readyz_answer_200_once_serving(server: TestServer) {
    let (status, _, body) = get(&server.http_url("/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = get(&server.http_url("/readyz")).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, _, body) = get(&server.http_url("/api/dashboard")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|json| json["next_sweep"]["scheduler"] == false),
        "{body}"
    );
    let (status, _, _) = get(&server.http_url("/nothing-here")).await;
    assert_eq!(status, 404);
    let metrics = scrape(&server).await;
    assert_eq!(
        metrics.expect("ocs_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    assert!(metrics.expect("process_resident_memory_bytes", &[]) > 0.0);
    // The process, as Prometheus's own clients name it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = metrics.expect("process_start_time_seconds", &[]);
    assert!(
        started > now - 86_400.0 && started <= now + 1.0,
        "{started} vs {now}"
    );
    assert!(metrics.expect("process_cpu_seconds_total", &[]) > 0.0);
    let open_fds = metrics.expect("process_open_fds", &[]);
    assert!(open_fds > 0.0);
    assert!(metrics.expect("process_max_fds", &[]) >= open_fds);
    // The database pool: the server holds connections, and they go back to idle between
    // requests. A connection released a moment ago counts as in use until the pool's own task
    // has taken it back (sqlx returns connections asynchronously), so a scrape right after the
    // database values were read may still see them: later scrapes (answered from the values
    // the server caches for a few seconds, so reading no database) must see them idle.
    let mut pool = pool_connections(&metrics);
    for _ in 0..100 {
        if pool.0 == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        pool = pool_connections(&scrape(&server).await);
    }
    let (in_use, idle) = pool;
    assert!(in_use == 0.0 && idle >= 1.0, "in_use {in_use}, idle {idle}");
    // No gRPC request is in flight while /metrics is read.
    assert_eq!(metrics.expect("ocs_rpc_in_flight", &[]), 0.0);
    // No webhook configured: no webhook metrics.
    assert!(!metrics.has("ocs_webhook_delivered_total"));
    assert!(!metrics.has("ocs_webhook_lag_seconds"));
    server.stop().await;
}

async fn recharges_are_counted_by_method_and_status_code(server: TestServer) {
    let mut api = server.accounts();
    provision(&mut api, "8613800000001", 0).await;
    activate(&mut api, "8613800000001").await;
    api.recharge(recharge("8613800000001", 5000))
        .await
        .expect("Recharge");
    api.recharge(recharge("8613800000001", 1000))
        .await
        .expect("Recharge");
    let refused = api.recharge(recharge("8613800000001", 0)).await;
    assert_eq!(
        refused.expect_err("amount 0").code(),
        tonic::Code::InvalidArgument
    );
    let missing = api.recharge(recharge("8613899999999", 1000)).await;
    assert_eq!(
        missing.expect_err("no such account").code(),
        tonic::Code::NotFound
    );

    let metrics = scrape(&server).await;
    let requests = |method: &str, code: &str| {
        metrics
            .value(
                "ocs_rpc_requests_total",
                &[("method", method), ("code", code)],
            )
            .unwrap_or(0.0)
    };
    assert_eq!(requests(RECHARGE, "OK"), 2.0);
    assert_eq!(requests(RECHARGE, "InvalidArgument"), 1.0);
    assert_eq!(requests(RECHARGE, "NotFound"), 1.0);
    assert_eq!(
        requests("ocs.lifecycle.v1.AccountLifecycle/ProvisionAccount", "OK"),
        1.0
    );
    assert_eq!(
        requests("ocs.lifecycle.v1.AccountLifecycle/Activate", "OK"),
        1.0
    );
    // The harness waited for SERVING through gRPC health: those checks are counted too.
    assert!(requests("grpc.health.v1.Health/Check", "OK") >= 1.0);
    // Every Recharge is in its histogram, whatever its code.
    assert_eq!(
        metrics.expect("ocs_rpc_duration_seconds_count", &[("method", RECHARGE)]),
        4.0
    );
    assert_eq!(
        metrics.expect(
            "ocs_rpc_duration_seconds_bucket",
            &[("method", RECHARGE), ("le", "+Inf")]
        ),
        4.0
    );
    assert!(metrics.expect("ocs_rpc_duration_seconds_sum", &[("method", RECHARGE)]) > 0.0);

    // A method the server does not serve is counted as "unknown", not under a made-up name.
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/ocs.lifecycle.v1.AccountLifecycle/NoSuchMethod",
    );
    let codec = tonic_prost::ProstCodec::<proto::GetAccountRequest, proto::Account>::default();
    let unknown = grpc
        .unary(
            tonic::Request::new(proto::GetAccountRequest::default()),
            path,
            codec,
        )
        .await;
    assert_eq!(
        unknown.expect_err("no such method").code(),
        tonic::Code::Unimplemented
    );
    let metrics = scrape(&server).await;
    assert_eq!(
        metrics.expect(
            "ocs_rpc_requests_total",
            &[("method", "unknown"), ("code", "Unimplemented")]
        ),
        1.0
    );
    assert!(!metrics.text.contains("NoSuchMethod"));
    server.stop().await;
}

async fn accounts_are_counted_per_stored_state_with_the_last_outbox_sequence(server: TestServer) {
    let mut api = server.accounts();
    for msisdn in ["8613800000001", "8613800000002", "8613800000003"] {
        provision(&mut api, msisdn, 0).await;
    }
    activate(&mut api, "8613800000001").await;
    activate(&mut api, "8613800000002").await;
    let last_sequence = max_outbox_sequence(&server).await;
    assert!(last_sequence > 0, "activations write events");

    let metrics = scrape(&server).await;
    let accounts = |state: &str| metrics.expect("ocs_accounts", &[("state", state)]);
    assert_eq!(accounts("UNACTIVATED"), 1.0);
    assert_eq!(accounts("VALID"), 2.0);
    for state in ["GRACE", "LOCKED", "RECYCLED"] {
        assert_eq!(accounts(state), 0.0, "{state}");
    }
    assert_eq!(
        metrics.expect("ocs_outbox_last_sequence", &[]),
        last_sequence as f64
    );
    server.stop().await;
}

async fn advance_states_counts_its_sweep_and_a_forecast_counts_nothing(server: TestServer) {
    let mut api = server.accounts();
    server.set_time(T0).await;
    for msisdn in ["8613800000001", "8613800000002", "8613800000003"] {
        provision(&mut api, msisdn, 0).await;
    }
    activate(&mut api, "8613800000001").await;
    activate(&mut api, "8613800000002").await;
    // 2030-03-01 + 180 days of validity, then GRACE: a year later both are in GRACE or past.
    server.set_time("2030-10-01T02:00:00Z").await;

    let forecast = api
        .advance_states(proto::AdvanceStatesRequest {
            as_of: None,
            dry_run: true,
        })
        .await
        .expect("AdvanceStates dry run")
        .into_inner();
    assert_eq!(forecast.to_grace, 2);
    let metrics = scrape(&server).await;
    assert_eq!(
        metrics.expect("ocs_sweep_runs_total", &[("status", "succeeded")]),
        0.0,
        "a forecast is not a sweep run"
    );
    assert_eq!(
        metrics.expect("ocs_sweep_transitions_total", &[("transition", "to_grace")]),
        0.0
    );
    assert_eq!(
        metrics.expect("ocs_sweep_accounts_examined_total", &[]),
        0.0
    );
    assert_eq!(
        metrics.expect("ocs_sweep_last_success_timestamp_seconds", &[]),
        0.0
    );
    assert_eq!(
        metrics.expect("ocs_sweep_last_duration_seconds", &[]),
        0.0,
        "no sweep has run: the last duration is still its initial value"
    );

    let swept = api
        .advance_states(proto::AdvanceStatesRequest {
            as_of: None,
            dry_run: false,
        })
        .await
        .expect("AdvanceStates")
        .into_inner();
    assert_eq!(swept.to_grace, 2);
    let refused = api
        .advance_states(proto::AdvanceStatesRequest {
            as_of: Some(common::ts("2040-01-01T00:00:00Z")),
            dry_run: false,
        })
        .await;
    assert_eq!(
        refused.expect_err("future as_of").code(),
        tonic::Code::InvalidArgument
    );

    let metrics = scrape(&server).await;
    assert_eq!(
        metrics.expect("ocs_sweep_runs_total", &[("status", "succeeded")]),
        1.0
    );
    assert_eq!(
        metrics.expect("ocs_sweep_runs_total", &[("status", "failed")]),
        0.0
    );
    let transitions = |t: &str| metrics.expect("ocs_sweep_transitions_total", &[("transition", t)]);
    assert_eq!(transitions("to_grace"), 2.0);
    assert_eq!(transitions("to_locked"), 0.0);
    assert_eq!(transitions("to_recycled_from_locked"), 0.0);
    assert_eq!(transitions("to_recycled_unactivated"), 0.0);
    assert_eq!(
        transitions("expiring_notified"),
        swept.expiring_notified as f64
    );
    assert_eq!(
        metrics.expect("ocs_sweep_accounts_examined_total", &[]),
        swept.examined as f64
    );
    assert!(metrics.expect("ocs_sweep_last_success_timestamp_seconds", &[]) > 1.0e9);
    // A gauge of the last run, named so (issue 16.7; was ocs_sweep_duration_seconds).
    // It moved: the sweep's own duration (its value only printed: the time is the machine's).
    let last_duration = metrics.expect("ocs_sweep_last_duration_seconds", &[]);
    println!("ocs_sweep_last_duration_seconds after one sweep: {last_duration}");
    assert!(
        last_duration > 0.0,
        "the sweep recorded its duration: {last_duration}"
    );
    assert!(!metrics.has("ocs_sweep_duration_seconds"));
    assert_eq!(
        metrics.expect(
            "ocs_rpc_requests_total",
            &[
                ("method", "ocs.lifecycle.v1.AccountLifecycle/AdvanceStates"),
                ("code", "OK")
            ]
        ),
        2.0
    );
    // The stored states are the swept ones once the cached read of the database (taken at the
    // first scrape, before the sweep) has expired.
    let metrics = wait_for_scrape(&server, |m| {
        m.value("ocs_accounts", &[("state", "GRACE")]) == Some(2.0)
    })
    .await;
    assert_eq!(metrics.expect("ocs_accounts", &[("state", "VALID")]), 0.0);
    assert_eq!(
        metrics.expect("ocs_accounts", &[("state", "UNACTIVATED")]),
        1.0
    );
    server.stop().await;
}

/// The BSS first answers 500: the event is retried and its lag grows with the clock; once the
/// BSS answers 200 it is delivered and the lag falls to 0.
async fn webhook_counters_and_lag_follow_a_failing_then_answering_bss(db: Arc<TestDb>) {
    let failing: Policy = Box::new(|_| (500, Duration::ZERO));
    let hook = Hook::start(failing).await;
    let config = Config {
        bss: BssConfig {
            webhook_url: hook.url(),
            webhook_secret: "metrics-test-secret".into(),
            webhook_events: vec!["STATE_CHANGED".into()],
            initial_backoff_ms: 20,
            max_backoff_ms: 100,
            max_attempts: 1_000,
            ..BssConfig::default()
        },
        ..common::test_config(ClockMode::Manual)
    };
    let server = TestServer::start_with(db, config).await;
    let metrics = scrape(&server).await;
    assert_eq!(metrics.expect("ocs_webhook_delivered_total", &[]), 0.0);
    assert_eq!(metrics.expect("ocs_webhook_lag_seconds", &[]), 0.0);

    let mut api = server.accounts();
    provision(&mut api, "8613800000001", 0).await;
    activate(&mut api, "8613800000001").await; // STATE_CHANGED UNACTIVATED → VALID
    hook.wait_for(WAIT, |answered| answered.len() >= 2).await;
    server
        .clock()
        .advance_time(proto::AdvanceTimeRequest { seconds: 3_600 })
        .await
        .expect("AdvanceTime");
    let metrics = wait_for_scrape(&server, |m| {
        m.value("ocs_webhook_retries_total", &[]) >= Some(2.0)
            && m.value("ocs_webhook_lag_seconds", &[]) >= Some(3_600.0)
    })
    .await;
    assert_eq!(metrics.expect("ocs_webhook_delivered_total", &[]), 0.0);
    assert_eq!(metrics.expect("ocs_webhook_dead_lettered_total", &[]), 0.0);

    let state_changes = server
        .db()
        .await
        .outbox()
        .await
        .iter()
        .filter(|e| e.event_type == proto::EventType::StateChanged as i32)
        .count() as f64;
    assert!(state_changes >= 1.0);
    hook.set_policy(hook::always_ok());
    // The lag is read from the database at most every few seconds; wait for it (bounded).
    let metrics = wait_for_scrape(&server, |m| {
        m.value("ocs_webhook_delivered_total", &[]) == Some(state_changes)
            && m.value("ocs_webhook_lag_seconds", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(metrics.expect("ocs_webhook_dead_lettered_total", &[]), 0.0);
    server.stop().await;
}

/// Scrapes until `done` holds (at most [`WAIT`]).
async fn wait_for_scrape(server: &TestServer, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = scrape(server).await;
        if done(&metrics) {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the metrics never showed what was expected:\n{}",
            metrics.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/readyz` of the endpoint alone (no gRPC server): 503 with its reason while the migrations
/// have not run, 200 once they have and the database answers.
async fn readyz_is_503_with_a_reason_until_the_migrations_ran(db: Arc<TestDb>) {
    use ocs_lifecycle::clock::SystemClock;
    use ocs_lifecycle::ops::{Metrics, OpsState};
    use std::sync::atomic::Ordering;

    let rules = Arc::new(ocs_lifecycle::lifecycle::Rules::default());
    let store = ocs_lifecycle::store::connect(
        &db.url,
        2,
        ocs_lifecycle::store::DEFAULT_ACQUIRE_TIMEOUT,
        rules.clone(),
    )
    .await
    .expect("connect");
    let ready = Arc::new(AtomicBool::new(false));
    let state = OpsState {
        metrics: Arc::new(Metrics::new()),
        store: store.clone(),
        clock: Arc::new(SystemClock::default()),
        ready: ready.clone(),
        storage_writable: Arc::new(AtomicBool::new(true)),
        storage_primary_found: Arc::new(AtomicBool::new(true)),
        dashboard: Arc::new(ocs_lifecycle::ops::Dashboard::new(rules, None)),
        authenticator: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(ocs_lifecycle::ops::serve_http(
        listener,
        state,
        shutdown.clone(),
    ));

    let (status, _, body) = get(&format!("http://{addr}/readyz")).await;
    assert_eq!(status, 503);
    assert_eq!(body, "not ready: the migrations have not run yet\n");
    let (status, _, _) = get(&format!("http://{addr}/healthz")).await;
    assert_eq!(status, 200, "alive while not ready");
    let (status, content_type, body) = get(&format!("http://{addr}/api/dashboard")).await;
    assert_eq!((status, content_type.as_str()), (503, "application/json"));
    assert_eq!(body, r#"{"error":"the migrations have not run yet"}"#);

    store.migrate().await.expect("migrate");
    ready.store(true, Ordering::Release);
    let (status, _, body) = get(&format!("http://{addr}/readyz")).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, _, body) = get(&format!("http://{addr}/api/dashboard")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|json| json["next_sweep"]["scheduler"] == false),
        "{body}"
    );

    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the endpoint stops with the token")
        .expect("task")
        .expect("serve_http");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after the shutdown"
    );
}

mod scheduler {
    use super::*;

    both_backends! {
        the_scheduler_records_its_sweeps,
    }

    /// The scheduler's sweeps (the one missed before the start, then each one a move of the
    /// manual clock passes) are recorded like AdvanceStates'.
    async fn the_scheduler_records_its_sweeps(server: TestServer) {
        let db = server.db.clone();
        server.stop().await;
        let mut config = common::test_config(ClockMode::Manual);
        config.sweep.scheduler = true;
        let server = TestServer::start_with(db, config).await;
        // The catch-up sweep at start-up runs in the background: wait for it (bounded).
        wait_for_scrape(&server, |m| {
            m.value("ocs_sweep_runs_total", &[("status", "succeeded")]) == Some(1.0)
        })
        .await;
        // A day later the 00:05 occurrence has passed; AdvanceTime returns after its sweep.
        server
            .clock()
            .advance_time(proto::AdvanceTimeRequest { seconds: 86_400 })
            .await
            .expect("AdvanceTime");
        let metrics = scrape(&server).await;
        assert_eq!(
            metrics.expect("ocs_sweep_runs_total", &[("status", "succeeded")]),
            2.0
        );
        assert!(metrics.expect("ocs_sweep_last_success_timestamp_seconds", &[]) > 1.0e9);
        server.stop().await;
    }
}
