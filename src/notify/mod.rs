//! The BSS webhook: a worker inside `serve` that POSTs selected outbox events, one JSON event per
//! request, signed with HMAC-SHA256 (`payload`: Standard Webhooks headers and the original
//! `X-Ocs-Signature`), and retries with exponential backoff and jitter, longer when the BSS
//! answers 429/503 with `Retry-After` (`backoff`), until the BSS answers 2xx or the event is
//! dead-lettered. TLS: the public roots, or only `bss.ca_file`; a client certificate with
//! `bss.client_cert`/`bss.client_key`.
//!
//! This module owns the delivery loop (here: start, the loop, claiming and recording attempts)
//! and the HTTP client (`http.rs`: the client and one POST); `registrar.rs` registers new
//! outbox events, `failures.rs` summarises failed attempts for the log, `payload.rs` signs and
//! `backoff.rs` times the retries. The delivery state lives in the
//! database (`webhook_deliveries`, through [`WebhookDeliveries`]), so it survives restarts: a
//! delivered event is never sent again, anything not confirmed is sent again (at-least-once;
//! the BSS deduplicates by `event_id`). It must not write accounts, history or the outbox.
//!
//! # How events move
//!
//! 1. *Register*: every poll, outbox events of the selected types that have no delivery row get
//!    one. Delivery is tracked per event, not by a cursor, so an event that commits late with a
//!    lower sequence (PostgreSQL, see `api::events`) is registered when it appears instead of
//!    being skipped. The scans stay small (`registrar.rs`): each poll looks only above the
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
//! Failed attempts are summarised (`failures.rs`): the first failure after a quiet spell is
//! logged at once, later ones as one line per [`FAILURE_SUMMARY_EVERY`] with their counts (a
//! BSS outage of thousands of attempts is a few lines, not one per attempt), and the recovery
//! as one line. Each attempt is at debug level.

mod backoff;
mod failures;
mod http;
pub mod payload;
mod registrar;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::BssConfig;
use crate::store::{AccountStore, AttemptOutcome, EventType, OutboxEvent};

use failures::{FailureLog, Outcome};
use http::{Failure, http_client};
use registrar::Registrar;

/// How often the worker looks for new and due events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Requests in flight at most (each to a different MSISDN).
const MAX_IN_FLIGHT: usize = 64;
/// Due events read ahead per query.
const READY_WINDOW: u32 = 256;
/// How often, at most, the worker looks for new outbox events.
const REGISTER_EVERY: Duration = Duration::from_millis(50);
/// Added to the request timeout for the lease of a claimed row.
const LEASE_MARGIN: Duration = Duration::from_secs(2);
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
}
