//! The BSS webhook: a worker inside `serve` that POSTs selected outbox events, one JSON event per
//! request, signed with HMAC-SHA256 (`payload`: Standard Webhooks headers and the original
//! `X-Ocs-Signature`), and retries with exponential backoff and jitter, longer when the BSS
//! answers 429/503 with `Retry-After` (`backoff`), until the BSS answers 2xx or the event is
//! dead-lettered. TLS: the public roots, or only `bss.ca_file`; a client certificate with
//! `bss.client_cert`/`bss.client_key`.
//!
//! This module owns the delivery loop and the HTTP client. The delivery state lives in the
//! database (`webhook_deliveries`, through [`WebhookDeliveries`]), so it survives restarts: a
//! delivered event is never sent again, anything not confirmed is sent again (at-least-once;
//! the BSS deduplicates by `event_id`). It must not write accounts, history or the outbox.
//!
//! # How events move
//!
//! 1. *Register*: every poll, outbox events of the selected types that have no delivery row get
//!    one. Delivery is tracked per event, not by a cursor, so an event that commits late with a
//!    lower sequence (PostgreSQL, see `api::events`) is registered when it appears instead of
//!    being skipped. The scans stay small ([`Registrar`]): each poll looks only above the
//!    highest sequence seen, and a slower pass looks back over the recent past for late commits.
//! 2. *Pick*: the due events that are the oldest undelivered, not dead-lettered event of their
//!    MSISDN. An MSISDN's later event waits for its earlier one; other MSISDNs are not held up.
//!    Events of one MSISDN commit in sequence order (the account row is locked before the
//!    outbox sequence is drawn), so "oldest registered" is "oldest".
//! 3. *Claim and send*: an attempt claims its row with a conditional UPDATE that counts the
//!    attempt and leases the row for the request timeout plus a margin (so a second server on
//!    the same PostgreSQL, or this one after a crash, waits for the lease), then POSTs.
//! 4. *Record*: 2xx → delivered; otherwise the next attempt is due after the backoff, or, after
//!    `bss.max_attempts`, the event is dead-lettered. A dead letter no longer holds up its
//!    MSISDN's later events; `Redeliver` puts it back in the queue with fresh attempts.
//!
//! Retry timing and timeouts run on real time (tokio and the system clock), also when the
//! service runs on the manual clock.
//!
//! # What it logs
//!
//! Failed attempts are summarised ([`FailureLog`]): the first failure after a quiet spell is
//! logged at once, later ones as one line per [`FAILURE_SUMMARY_EVERY`] with their counts (a
//! BSS outage of thousands of attempts is a few lines, not one per attempt), and the recovery
//! as one line. Each attempt is at debug level.

mod backoff;
pub mod payload;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::auth::error_chain;
use crate::config::BssConfig;
use crate::store::{AccountStore, AttemptOutcome, EventType, OutboxEvent, Registered, StoreError};

/// How often the worker looks for new and due events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Requests in flight at most (each to a different MSISDN).
const MAX_IN_FLIGHT: usize = 64;
/// Due events read ahead per query.
const READY_WINDOW: u32 = 256;
/// How often, at most, the worker looks for new outbox events.
const REGISTER_EVERY: Duration = Duration::from_millis(50);
/// Outbox events registered per statement at most.
const REGISTER_BATCH: u32 = 1000;
/// Register statements per poll at most (so a large backlog does not starve sending).
const REGISTER_ROUNDS: u32 = 8;
/// How often the look-back pass runs.
const LOOK_BACK_EVERY: Duration = Duration::from_secs(5);
/// How long a transaction can hold an outbox sequence before committing it. A sequence seen
/// this long ago has no uncommitted sequence below it any more, so the look-back pass stops
/// there. A sweep batch or a request commits in far less; should one take longer, its late
/// events are still found by the full pass that every start makes.
const SETTLE_AFTER: Duration = Duration::from_secs(120);
/// Events registered since the last statistics refresh that trigger the next one
/// ([`crate::store::WebhookDeliveries::analyze_webhook_deliveries`]): a burst this large
/// changes the table enough for the planner to need to know.
const ANALYZE_AFTER: u64 = 5_000;
/// Added to the request timeout for the lease of a claimed row.
const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// `last_error` is kept to this many characters.
const MAX_ERROR_CHARS: usize = 500;
/// Failed attempts are logged as one line per this interval at most (per endpoint; there is
/// one, `bss.webhook_url`).
pub const FAILURE_SUMMARY_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// What the worker has done since start; the future metrics read these.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// Events the BSS confirmed (2xx).
    pub delivered: AtomicU64,
    /// Failed attempts that will be tried again.
    pub retried: AtomicU64,
    /// Events that exhausted their attempts.
    pub dead_lettered: AtomicU64,
}

/// A point-in-time copy of [`WebhookCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

impl WebhookCounters {
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            delivered: self.delivered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
        }
    }
}

/// The running worker.
pub struct Notifier {
    pub counters: Arc<WebhookCounters>,
    task: JoinHandle<()>,
}

impl Notifier {
    /// Waits until the worker has stopped (after the shutdown token is cancelled). Requests in
    /// flight are abandoned: their leases expire and they are sent again later.
    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the webhook worker failed");
        }
    }
}

/// Starts the worker when `config` names a webhook URL; `None` otherwise.
pub fn start(
    config: &BssConfig,
    store: Arc<dyn AccountStore>,
    shutdown: CancellationToken,
) -> Result<Option<Notifier>, NotifyError> {
    if !config.enabled() {
        tracing::info!("no bss.webhook_url: webhook delivery is off");
        return Ok(None);
    }
    config.validate()?;
    let client = http_client(config)?;
    let counters = Arc::new(WebhookCounters::default());
    let sender = Arc::new(Sender {
        store,
        client,
        url: config.webhook_url.trim().to_owned(),
        secret: config.webhook_secret.as_bytes().to_vec(),
        signing_key: config.standard_signing_key()?,
        initial_backoff: config.initial_backoff(),
        max_backoff: config.max_backoff(),
        lease: config.timeout() + LEASE_MARGIN,
        max_attempts: config.max_attempts,
        counters: counters.clone(),
        // Without a password or query values: the URL may carry credentials.
        failures: FailureLog::new(
            crate::config::redact::url(config.webhook_url.trim()),
            FAILURE_SUMMARY_EVERY,
        ),
    });
    let types = config.event_types()?;
    let type_names: Vec<&str> = types.iter().map(|t| t.name()).collect();
    tracing::info!(
        url = %sender.failures.endpoint,
        types = %type_names.join(","),
        max_attempts = config.max_attempts,
        private_ca = config.ca_file.is_some(),
        client_certificate = config.client_cert.is_some(),
        "webhook delivery on"
    );
    let task = tokio::spawn(run(sender, types, shutdown));
    Ok(Some(Notifier { counters, task }))
}

/// The webhook's HTTP client: its timeouts, no redirects, and the TLS of `config`.
fn http_client(config: &BssConfig) -> Result<reqwest::Client, NotifyError> {
    let tls = config.tls_files()?;
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout())
        .connect_timeout(config.timeout())
        // A redirect is an answer other than 2xx: retried, never followed with the signature.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ocs-lifecycle/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &tls.ca {
        // A private CA replaces the public roots: only the BSS's own certificates are trusted.
        builder = builder.tls_built_in_root_certs(false);
        for certificate in reqwest::Certificate::from_pem_bundle(ca)
            .map_err(|e| crate::config::ConfigError(format!("bss.ca_file: {}", error_chain(&e))))?
        {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some(identity) = &tls.identity {
        let identity = reqwest::Identity::from_pem(identity).map_err(|e| {
            crate::config::ConfigError(format!(
                "bss.client_cert / bss.client_key: {}",
                error_chain(&e)
            ))
        })?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|e| {
        // Where a key that does not fit its certificate shows.
        NotifyError::Config(crate::config::ConfigError(format!(
            "bss TLS settings (ca_file, client_cert, client_key): {}",
            error_chain(&e)
        )))
    })
}

/// Real time in epoch milliseconds (retry timing never follows the manual clock).
fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Everything one attempt needs, shared by the attempts in flight.
struct Sender {
    store: Arc<dyn AccountStore>,
    client: reqwest::Client,
    url: String,
    /// The key of `X-Ocs-Signature`: the secret as configured.
    secret: Vec<u8>,
    /// The key of `webhook-signature`: the decoded key of a `whsec_` secret, else the secret.
    signing_key: Vec<u8>,
    initial_backoff: Duration,
    max_backoff: Duration,
    lease: Duration,
    max_attempts: u32,
    counters: Arc<WebhookCounters>,
    failures: FailureLog,
}

/// The delivery loop: record what finished, register, pick and claim, send; until `shutdown`.
///
/// Attempts only POST; the loop writes their outcomes and the next claims in one transaction
/// per turn, so a commit — an fsync on SQLite with `synchronous = FULL` — serves many
/// events.
async fn run(sender: Arc<Sender>, types: Vec<EventType>, shutdown: CancellationToken) {
    let mut in_flight: JoinSet<(i64, AttemptOutcome)> = JoinSet::new();
    let mut busy: HashSet<i64> = HashSet::new();
    let mut done: Vec<(i64, AttemptOutcome)> = Vec::new();
    let mut ready = Ready::default();
    let mut registrar = Registrar::new(types);
    let mut registered_at: Option<Instant> = None;
    loop {
        let now = now_ms();
        // Under load the loop turns every few milliseconds; registering in batches a few
        // times per poll interval keeps plenty of work ahead without a query per turn.
        if registered_at.is_none_or(|at| at.elapsed() >= REGISTER_EVERY) {
            if let Err(e) = registrar.poll(sender.store.as_ref(), now).await {
                tracing::warn!(error = %e, "webhook: cannot read new outbox events; retrying");
            }
            registered_at = Some(Instant::now());
        }
        // The attempts in `done` leave `busy` this turn.
        let free = MAX_IN_FLIGHT.saturating_sub(busy.len().saturating_sub(done.len()));
        if free > 0 && ready.len() < free {
            sender.refill(&mut ready, now, &busy).await;
        }
        for (event, attempt) in sender
            .settle(&mut done, &mut busy, &mut ready, now, free)
            .await
        {
            busy.insert(event.sequence);
            in_flight.spawn(sender.clone().attempt(event, attempt));
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                collect(&mut done, &mut busy, finished);
                while let Some(finished) = in_flight.try_join_next() {
                    collect(&mut done, &mut busy, finished);
                }
            }
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        sender.failures.flush(Instant::now(), false);
    }
    sender.failures.flush(Instant::now(), true);
    // What was confirmed is recorded, so it is not sent again; the rest waits for its lease.
    sender
        .settle(&mut done, &mut busy, &mut Ready::default(), now_ms(), 0)
        .await;
    in_flight.abort_all();
    tracing::info!(
        abandoned = busy.len(),
        "webhook worker stopped; abandoned attempts are sent again after their lease"
    );
}

fn collect(
    done: &mut Vec<(i64, AttemptOutcome)>,
    busy: &mut HashSet<i64>,
    finished: Result<(i64, AttemptOutcome), tokio::task::JoinError>,
) {
    match finished {
        Ok(outcome) => done.push(outcome),
        Err(e) => {
            // An attempt task panicked: its row's lease expires and it is picked up again.
            // Which row it held is unknown, so forget them all (rows in flight stay leased).
            tracing::error!(error = %e, "webhook attempt failed unexpectedly");
            busy.clear();
        }
    }
}

/// Due events read ahead of their claim, oldest first. Safe to hold: the due query returns an
/// event only when no earlier event of its MSISDN is pending, and that stays true until this
/// event is delivered or dead-lettered.
#[derive(Default)]
struct Ready {
    events: VecDeque<OutboxEvent>,
    queued: HashSet<i64>,
}

impl Ready {
    fn len(&self) -> usize {
        self.events.len()
    }
}

/// Finds the outbox events that need a delivery row, without rescanning the whole outbox.
///
/// Sequences are drawn in order but can commit out of order on PostgreSQL, so "everything up
/// to the highest sequence seen" is not yet "everything below it". Two bounds:
/// - `seen`: the highest sequence found. Each poll looks above it (new events).
/// - `settled`: everything at or below it has a row. The look-back pass, every
///   [`LOOK_BACK_EVERY`], scans above it for late commits, then moves it up to the `seen` of
///   at least [`SETTLE_AFTER`] ago.
///
/// At start `settled` is 0: the first pass checks the whole outbox once (after a crash or an
/// upgrade nothing is missed).
struct Registrar {
    types: Vec<EventType>,
    seen: i64,
    settled: i64,
    /// `seen` as it was at past look-back passes, oldest first: candidates for `settled`.
    marks: VecDeque<(Instant, i64)>,
    last_look_back: Option<Instant>,
    /// Events registered since the statistics were last refreshed.
    unanalyzed: u64,
}

impl Registrar {
    fn new(types: Vec<EventType>) -> Self {
        Self {
            types,
            seen: 0,
            settled: 0,
            marks: VecDeque::new(),
            last_look_back: None,
            unanalyzed: 0,
        }
    }

    async fn poll(&mut self, store: &dyn AccountStore, now_ms: i64) -> Result<(), StoreError> {
        let due = self
            .last_look_back
            .is_none_or(|at| at.elapsed() >= LOOK_BACK_EVERY);
        if due {
            self.look_back(store, now_ms).await?;
        }
        for _ in 0..REGISTER_ROUNDS {
            let found = self.register_after(store, self.seen, now_ms).await?;
            if found.found < u64::from(REGISTER_BATCH) {
                break;
            }
        }
        if self.unanalyzed >= ANALYZE_AFTER {
            self.unanalyzed = 0;
            let started = Instant::now();
            store.analyze_webhook_deliveries().await?;
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "webhook: delivery table statistics refreshed after a burst"
            );
        }
        Ok(())
    }

    /// Registers what is missing above `settled`, then settles what is old enough.
    async fn look_back(&mut self, store: &dyn AccountStore, now_ms: i64) -> Result<(), StoreError> {
        let started = Instant::now();
        if self.last_look_back.is_none() {
            // Polls look above this; this pass (from 0) and the next ones look below it.
            self.seen = store.last_outbox_sequence().await?;
        }
        let seen_before = self.seen;
        let mut after = self.settled;
        loop {
            let found = self.register_after(store, after, now_ms).await?;
            match found.last_sequence {
                Some(last) if found.found >= u64::from(REGISTER_BATCH) => after = last,
                _ => break,
            }
        }
        self.marks.push_back((started, seen_before));
        // A mark taken SETTLE_AFTER before this pass started had nothing uncommitted below it
        // when the pass began, and the pass scanned above `settled`: it is settled now.
        while let Some(&(at, mark)) = self.marks.front() {
            if started.duration_since(at) < SETTLE_AFTER {
                break;
            }
            self.settled = self.settled.max(mark);
            self.marks.pop_front();
        }
        self.marks.push_back((started, seen_before));
        self.last_look_back = Some(started);
        Ok(())
    }

    async fn register_after(
        &mut self,
        store: &dyn AccountStore,
        after: i64,
        now_ms: i64,
    ) -> Result<Registered, StoreError> {
        let found = store
            .register_webhook_events(&self.types, now_ms, after, REGISTER_BATCH)
            .await?;
        if let Some(last) = found.last_sequence {
            self.seen = self.seen.max(last);
        }
        self.unanalyzed += found.added;
        if found.added > 0 {
            tracing::debug!(added = found.added, after, "webhook: events registered");
        }
        Ok(found)
    }
}

impl Sender {
    /// Adds due events to `ready` (those not in flight here and not queued yet).
    async fn refill(&self, ready: &mut Ready, now: i64, busy: &HashSet<i64>) {
        match self.store.due_webhook_deliveries(now, READY_WINDOW).await {
            Ok(due) => {
                for pending in due {
                    let sequence = pending.event.sequence;
                    if !busy.contains(&sequence) && ready.queued.insert(sequence) {
                        ready.events.push_back(pending.event);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "webhook: cannot read due deliveries; retrying"),
        }
    }

    /// One transaction for the turn: writes the outcomes in `done` (and frees their events),
    /// then claims up to `free` events from the front of `ready`; returns the claimed events
    /// with their attempt numbers. Events someone else claimed meanwhile (or that were
    /// delivered) are dropped from the queue.
    async fn settle(
        &self,
        done: &mut Vec<(i64, AttemptOutcome)>,
        busy: &mut HashSet<i64>,
        ready: &mut Ready,
        now: i64,
        free: usize,
    ) -> Vec<(OutboxEvent, u32)> {
        let take = free.min(ready.len());
        if take == 0 && done.is_empty() {
            return Vec::new();
        }
        let picked: Vec<OutboxEvent> = ready.events.drain(..take).collect();
        for event in &picked {
            ready.queued.remove(&event.sequence);
        }
        let sequences: Vec<i64> = picked.iter().map(|event| event.sequence).collect();
        let lease_until = now.saturating_add(millis(self.lease));
        let settled = self
            .store
            .settle_webhook_deliveries(done, Utc::now(), &sequences, now, lease_until)
            .await;
        let claimed: HashMap<i64, u32> = match settled {
            Ok(claimed) => {
                for (sequence, _) in done.drain(..) {
                    busy.remove(&sequence);
                }
                claimed.into_iter().collect()
            }
            Err(e) => {
                // The outcomes stay in `done` and their events stay busy: the next turn that
                // reaches the database (after a failover: the new primary) records them, so an
                // event the BSS confirmed is not sent again. Recording twice is harmless (a
                // failed attempt's update skips a delivered row). The events picked here were
                // not claimed; they are read again.
                tracing::warn!(
                    error = %e,
                    kept = done.len(),
                    "webhook: cannot record attempts or claim events; the outcomes are \
                     recorded by a later turn"
                );
                return Vec::new();
            }
        };
        picked
            .into_iter()
            .filter_map(|event| {
                let attempt = *claimed.get(&event.sequence)?;
                Some((event, attempt))
            })
            .collect()
    }

    /// One attempt at one claimed event: POSTs it and decides what follows.
    async fn attempt(self: Arc<Self>, event: OutboxEvent, attempt: u32) -> (i64, AttemptOutcome) {
        /// A log line of this attempt at `level`: the event, the attempt, and `rest`.
        macro_rules! log_attempt {
            ($level:ident, $($rest:tt)+) => {
                tracing::$level!(
                    sequence = event.sequence,
                    event_id = %event.event_id,
                    msisdn = %event.msisdn,
                    attempt,
                    $($rest)+
                )
            };
        }
        let outcome = match self.post(&event).await {
            Ok(()) => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                self.failures.delivered(Instant::now());
                // Debug: at thousands per second an info line each would drown the log; the
                // delivery is recorded in `webhook_deliveries.delivered_at`.
                log_attempt!(debug, "webhook: delivered");
                AttemptOutcome::Delivered
            }
            Err(Failure { error, .. }) if attempt >= self.max_attempts => {
                self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.failures.failed(
                    event.sequence,
                    Outcome::DeadLettered,
                    &error,
                    Instant::now(),
                );
                log_attempt!(debug, %error, "webhook: dead-lettered after the last attempt");
                AttemptOutcome::Dead { error }
            }
            Err(Failure { error, retry_after }) => {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                let delay = backoff::next_delay(
                    backoff::jittered(attempt, self.initial_backoff, self.max_backoff),
                    retry_after,
                );
                self.failures
                    .failed(event.sequence, Outcome::WillRetry, &error, Instant::now());
                log_attempt!(
                    debug,
                    retry_in_ms = millis(delay),
                    retry_after_ms = retry_after.map(millis),
                    %error,
                    "webhook: attempt failed; will retry"
                );
                AttemptOutcome::Retry {
                    error,
                    next_attempt_at: now_ms().saturating_add(millis(delay)),
                }
            }
        };
        (event.sequence, outcome)
    }

    /// POSTs one event; `Err` describes why it was not accepted.
    async fn post(&self, event: &OutboxEvent) -> Result<(), Failure> {
        let body = payload::body(event).map_err(|e| Failure {
            error: format!("cannot encode the event: {e}"),
            retry_after: None,
        })?;
        // The attempt's own time (real time, also on the manual clock): a receiver compares it
        // with its clock to refuse replays.
        let timestamp = Utc::now().timestamp();
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &event.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                payload::standard_signature(&self.signing_key, &event.event_id, timestamp, &body),
            )
            .header("X-Ocs-Event-Id", &event.event_id)
            .header("X-Ocs-Signature", payload::signature(&self.secret, &body))
            .body(body)
            .send()
            .await
            // Without the URL: it may carry credentials, and the error is stored and listed.
            .map_err(|e| Failure {
                error: truncate(error_chain(&e.without_url())),
                retry_after: None,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = match status {
            reqwest::StatusCode::TOO_MANY_REQUESTS | reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| backoff::retry_after(v, std::time::SystemTime::now()))
            }
            _ => None,
        };
        let text = response.text().await.unwrap_or_default();
        let text = text.trim();
        Err(Failure {
            error: truncate(if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            }),
            retry_after,
        })
    }
}

/// What became of a failed attempt's event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    WillRetry,
    DeadLettered,
}

/// The failed attempts of one endpoint, logged as one line per interval with their counts.
struct FailureLog {
    /// The endpoint's URL without credentials.
    endpoint: String,
    every: Duration,
    /// Whether failures were logged and no delivery has succeeded since (checked on every
    /// delivery without the lock).
    failing: std::sync::atomic::AtomicBool,
    window: std::sync::Mutex<FailureWindow>,
}

/// The failures not logged yet.
#[derive(Debug, Default)]
struct FailureWindow {
    /// When the last failure line was written; `None`: none since the last quiet spell.
    logged_at: Option<Instant>,
    /// Since when the counts below run.
    since: Option<Instant>,
    will_retry: u64,
    dead_lettered: u64,
    /// Distinct events (by sequence) among them.
    events: HashSet<i64>,
    last_error: String,
}

/// What one failure line said.
#[derive(Clone, Debug, PartialEq)]
struct FailureSummary {
    will_retry: u64,
    dead_lettered: u64,
    /// Distinct events among the failed attempts.
    events: usize,
    last_error: String,
    /// From the first failure counted to the line.
    over: Duration,
}

impl FailureLog {
    fn new(endpoint: String, every: Duration) -> Self {
        Self {
            endpoint,
            every,
            failing: std::sync::atomic::AtomicBool::new(false),
            window: std::sync::Mutex::new(FailureWindow::default()),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, FailureWindow> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One failed attempt: logged at once after a quiet spell, else counted for the summary.
    /// Returns what was logged.
    fn failed(
        &self,
        sequence: i64,
        outcome: Outcome,
        error: &str,
        now: Instant,
    ) -> Option<FailureSummary> {
        let mut window = self.window();
        window.since.get_or_insert(now);
        match outcome {
            Outcome::WillRetry => window.will_retry += 1,
            Outcome::DeadLettered => window.dead_lettered += 1,
        }
        window.events.insert(sequence);
        error.clone_into(&mut window.last_error);
        self.failing.store(true, Ordering::Relaxed);
        let due = window.logged_at.is_none_or(|at| now >= at + self.every);
        due.then(|| self.log(&mut window, now))
    }

    /// A delivery succeeded: the failures not logged yet are, and that the BSS accepts
    /// deliveries again. Returns the failures logged.
    fn delivered(&self, now: Instant) -> Option<FailureSummary> {
        if !self.failing.swap(false, Ordering::Relaxed) {
            return None;
        }
        let mut window = self.window();
        let pending =
            (window.will_retry + window.dead_lettered > 0).then(|| self.log(&mut window, now));
        window.logged_at = None;
        tracing::info!(endpoint = %self.endpoint, "webhook: the BSS accepts deliveries again");
        pending
    }

    /// Logs the failures counted since the last line once the interval has passed (`force`:
    /// now, e.g. at shutdown). Returns what was logged.
    fn flush(&self, now: Instant, force: bool) -> Option<FailureSummary> {
        let mut window = self.window();
        let due = force || window.logged_at.is_none_or(|at| now >= at + self.every);
        (due && window.will_retry + window.dead_lettered > 0).then(|| self.log(&mut window, now))
    }

    /// One line for the failures in `window`, which starts afresh.
    fn log(&self, window: &mut FailureWindow, now: Instant) -> FailureSummary {
        let summary = FailureSummary {
            will_retry: window.will_retry,
            dead_lettered: window.dead_lettered,
            events: window.events.len(),
            last_error: std::mem::take(&mut window.last_error),
            over: window.since.map_or(Duration::ZERO, |since| now - since),
        };
        *window = FailureWindow {
            logged_at: Some(now),
            ..FailureWindow::default()
        };
        let FailureSummary {
            will_retry,
            dead_lettered,
            events,
            last_error,
            over,
        } = &summary;
        let (endpoint, failed, over_secs) = (
            &self.endpoint,
            will_retry + dead_lettered,
            over.as_secs_f64(),
        );
        if *dead_lettered > 0 {
            tracing::error!(
                %endpoint, failed, will_retry, dead_lettered, events, over_secs, %last_error,
                "webhook: attempts failed; events dead-lettered (ocs-lifecycle dead-letters list)"
            );
        } else {
            tracing::warn!(
                %endpoint, failed, will_retry, dead_lettered, events, over_secs, %last_error,
                "webhook: attempts failed; will retry"
            );
        }
        summary
    }
}

/// Why an attempt was not accepted, and how long the BSS asked us to wait (`Retry-After` on
/// 429 or 503).
struct Failure {
    error: String,
    retry_after: Option<Duration>,
}

fn truncate(mut text: String) -> String {
    if let Some((index, _)) = text.char_indices().nth(MAX_ERROR_CHARS) {
        text.truncate(index);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_one_line_at_once_then_one_per_interval_with_their_counts() {
        let log = FailureLog::new("https://bss.example/hook".into(), Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // The first failure after a quiet spell: at once.
        let first = log
            .failed(1, Outcome::WillRetry, "HTTP 503", at(0))
            .expect("logged at once");
        assert_eq!((first.will_retry, first.events), (1, 1));
        // Thirty more within the interval: counted, not logged.
        for n in 0..30 {
            let outcome = if n == 29 {
                Outcome::DeadLettered
            } else {
                Outcome::WillRetry
            };
            let error = format!("HTTP 503 #{n}");
            assert_eq!(
                log.failed(1 + n % 3, outcome, &error, at(1 + n as u64)),
                None
            );
            assert_eq!(log.flush(at(1 + n as u64), false), None);
        }
        // The interval is over: one line with the counts.
        let summary = log.flush(at(60), false).expect("the summary");
        assert_eq!(
            summary,
            FailureSummary {
                will_retry: 29,
                dead_lettered: 1,
                events: 3,
                last_error: "HTTP 503 #29".into(),
                over: Duration::from_secs(59),
            }
        );
        assert_eq!(log.flush(at(200), false), None, "nothing new");
        // A failure right after the summary waits for the next interval; a delivery logs it.
        assert_eq!(log.failed(4, Outcome::WillRetry, "reset", at(61)), None);
        let pending = log
            .delivered(at(62))
            .expect("the failures before the recovery");
        assert_eq!((pending.will_retry, pending.events), (1, 1));
        assert_eq!(log.delivered(at(63)), None, "already recovered");
        // Quiet again: the next failure is logged at once.
        assert!(log.failed(5, Outcome::WillRetry, "down", at(64)).is_some());
        assert!(log.failed(5, Outcome::WillRetry, "down", at(65)).is_none());
        assert!(
            log.flush(at(66), true).is_some(),
            "shutdown logs what is left"
        );
    }
}
