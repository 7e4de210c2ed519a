//! The webhook benchmark: how fast the delivery worker (`ocs_lifecycle::notify`) empties a
//! backlog into a local listener that answers 200 at once, against a baseline measured in the
//! same run — the same signed requests POSTed by the same HTTP client at the same concurrency
//! (32), with no durable queue behind them — and how long a recycle committed by a sweep takes
//! to reach the listener while the listener is up.
//!
//! 1. Backlog: `--webhook-accounts` accounts (default 200k, a tenth due, as in the sweep
//!    benchmark) are swept once; every event of every type goes to the webhook. The baseline
//!    POSTs the same events, then the worker starts and delivers them all (registration, claim,
//!    POST, record, per-MSISDN order).
//! 2. Latency: with the worker idle and running, 20 small sweeps a fifth of a second apart each
//!    commit about 150 events; each event's latency is its arrival at the listener minus the
//!    end of the sweep that committed it (so it includes the worker's poll interval).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ocs_lifecycle::config::BssConfig;
use ocs_lifecycle::lifecycle::Rules;
use ocs_lifecycle::notify::payload;
use ocs_lifecycle::store::{AccountStore, OutboxEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::sweep_bench;

const SECRET: &str = "bench-secret";
/// Concurrency of the baseline: the worker's own limit of requests in flight.
const BASELINE_CLIENTS: usize = 64;
const LATENCY_SWEEPS: u64 = 20;
const LATENCY_ACCOUNTS_PER_SWEEP: u64 = 1000;

pub struct WebhookFigures {
    pub events: u64,
    pub baseline_s: f64,
    pub service_s: f64,
    pub latency_events: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What the listener received: a count, and the arrival of each event id while `record` is on.
#[derive(Default)]
struct Sink {
    count: AtomicU64,
    record: AtomicBool,
    arrivals: Mutex<HashMap<String, Instant>>,
}

/// A keep-alive HTTP/1.1 listener that answers every request `200` with an empty body.
async fn listen(sink: Arc<Sink>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, sink.clone()));
        }
    });
    addr
}

async fn serve(mut stream: TcpStream, sink: Arc<Sink>) {
    let mut buffer: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let length: usize = header("content-length:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let event_id = header("x-ocs-event-id:").unwrap_or_default();
        while buffer.len() < head_end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..head_end + length);
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        if sink.record.load(Ordering::Relaxed) {
            sink.arrivals
                .lock()
                .expect("arrivals")
                .insert(event_id, Instant::now());
        }
        sink.count.fetch_add(1, Ordering::Relaxed);
    }
}

fn bss_config(addr: SocketAddr) -> BssConfig {
    BssConfig {
        webhook_url: format!("http://{addr}/bss/events"),
        webhook_secret: SECRET.into(),
        webhook_events: vec![
            "NUMBER_RECYCLED".into(),
            "STATE_CHANGED".into(),
            "VALIDITY_EXPIRING".into(),
        ],
        ..BssConfig::default()
    }
}

/// The baseline: the same signed requests, the same client settings, 64 at a time.
async fn post_directly(addr: SocketAddr, events: Arc<Vec<OutboxEvent>>) -> f64 {
    let config = bss_config(addr);
    let client = reqwest::Client::builder()
        .timeout(config.timeout())
        .connect_timeout(config.timeout())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..BASELINE_CLIENTS {
        let (client, events, next, url) = (
            client.clone(),
            events.clone(),
            next.clone(),
            config.webhook_url.clone(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(event) = events.get(i) else { break };
                let body = payload::body(event).expect("body");
                let signature = payload::signature(SECRET.as_bytes(), &body);
                let response = client
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("X-Ocs-Event-Id", &event.event_id)
                    .header("X-Ocs-Signature", signature)
                    .body(body)
                    .send()
                    .await
                    .expect("POST");
                assert!(response.status().is_success());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    started.elapsed().as_secs_f64()
}

async fn wait_count(sink: &Sink, expected: u64) {
    while sink.count.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn run(url: &str, accounts: u64, now: DateTime<Utc>, rules: &Rules) -> WebhookFigures {
    eprintln!("webhook: generating {accounts} accounts and sweeping them …");
    sweep_bench::generate(url, accounts, now, rules).await;
    let store: Arc<dyn AccountStore> = ocs_lifecycle::store::connect(
        url,
        8,
        ocs_lifecycle::store::DEFAULT_ACQUIRE_TIMEOUT,
        Arc::new(rules.clone()),
    )
    .await
    .expect("store");
    ocs_lifecycle::sweep::run(&*store, 1000, Some(now), now, false)
        .await
        .expect("sweep");
    let events = Arc::new(store.events_after(0, u32::MAX).await.expect("events"));
    let n = events.len() as u64;

    let sink = Arc::new(Sink::default());
    let addr = listen(sink.clone()).await;
    eprintln!("webhook: {n} events; baseline (direct POSTs) …");
    let baseline_s = post_directly(addr, events.clone()).await;
    assert_eq!(sink.count.load(Ordering::Relaxed), n);

    eprintln!("webhook: the delivery worker …");
    sink.count.store(0, Ordering::Relaxed);
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let notifier = ocs_lifecycle::notify::start(&bss_config(addr), store.clone(), shutdown.clone())
        .expect("notifier")
        .expect("a webhook URL is configured");
    wait_count(&sink, n).await;
    let service_s = started.elapsed().as_secs_f64();
    // The listener counts a request once it has answered it; the worker counts it once the
    // answer reached it, a moment later. Reading the worker's count right away raced the last
    // answers (the occasional "the worker counted … of …" panic of sessions 2 and 3).
    let deadline = Instant::now() + Duration::from_secs(10);
    while notifier.counters.snapshot().delivered < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered = notifier.counters.snapshot().delivered;

    eprintln!("webhook: latency of {LATENCY_SWEEPS} small sweeps …");
    sink.count.store(0, Ordering::Relaxed);
    sink.record.store(true, Ordering::Relaxed);
    let mut committed: HashMap<String, Instant> = HashMap::new();
    let mut last_sequence = events.last().map_or(0, |e| e.sequence);
    for round in 0..LATENCY_SWEEPS {
        let first = accounts + round * LATENCY_ACCOUNTS_PER_SWEEP;
        sweep_bench::generate_from(url, first, LATENCY_ACCOUNTS_PER_SWEEP, now, rules).await;
        let as_of = Utc::now();
        ocs_lifecycle::sweep::run(&*store, 1000, Some(as_of), as_of, false)
            .await
            .expect("sweep");
        let done = Instant::now();
        let new = store
            .events_after(last_sequence, u32::MAX)
            .await
            .expect("events");
        if let Some(last) = new.last() {
            last_sequence = last.sequence;
        }
        committed.extend(new.into_iter().map(|e| (e.event_id, done)));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_count(&sink, committed.len() as u64).await;
    shutdown.cancel();
    notifier.stopped().await;
    assert!(delivered >= n, "the worker counted {delivered} of {n}");

    let arrivals = sink.arrivals.lock().expect("arrivals").clone();
    let mut latencies: Vec<f64> = committed
        .iter()
        .map(|(id, done)| {
            let arrived = arrivals.get(id).expect("every committed event arrived");
            arrived.saturating_duration_since(*done).as_secs_f64() * 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    WebhookFigures {
        events: n,
        baseline_s,
        service_s,
        latency_events: latencies.len(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}
