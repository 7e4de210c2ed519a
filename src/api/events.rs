//! The `BssEvents` gRPC service: streams the transactional outbox to the BSS.
//!
//! This module owns the read side of the outbox: `Subscribe` pages through the events after the
//! client's cursor (`after_sequence`) with [`AccountStore::events_after`], then keeps polling
//! from the last sequence it passed, so the backlog and the live events are one stream in
//! sequence order. Writing events is not done here: the API and the sweep write them in the
//! same transaction as the state change. Type filtering is done server-side; filtered-out
//! events still move the stream's internal cursor, never the client's contract.
//!
//! # The cursor contract
//!
//! `sequence` is strictly increasing over a stream (not contiguous: a rolled-back transaction
//! burns its sequence numbers). A client that processed everything up to sequence `n` and
//! reconnects with `after_sequence = n` receives every later event exactly once, provided the
//! stream never advances past an event that may still commit. That is the subtle part.
//!
//! # Why no event is skipped (gap safety)
//!
//! PostgreSQL assigns `BIGSERIAL` values at INSERT, not at COMMIT: transaction A may take
//! sequence 7, transaction B sequence 8, and B commit first. A reader that then delivers 8 and
//! moves its cursor to 8 would never see 7. So a *gap* (a missing sequence below a visible one)
//! is not passed until it is known to be permanent:
//!
//! - A gap ending at visible row `k` is first observed at real instant `t0` (tokio's monotonic
//!   clock, never the service's manual clock). Every missing sequence `s < k` was taken by
//!   `nextval` before `k` was, and `k` was committed by `t0`, so the transaction that holds `s`
//!   (if any) had inserted its outbox row before `t0`.
//! - The stream holds everything from the gap on until the gap fills (the usual case: the
//!   other transaction commits milliseconds later) or until [`GAP_WINDOW`] has passed since
//!   `t0`. A transaction of this service inserts its outbox rows at the end of its work and
//!   commits right after (`store::sql::Writes::apply_in`: outbox rows, idempotency key, COMMIT),
//!   so one still open [`GAP_WINDOW`] after inserting has been rolled back or is about to be;
//!   a gap that old is a burnt sequence (rollback, retry after a conflict, sequence values
//!   cached by a crashed session) and is passed.
//! - Gaps found permanent are remembered process-wide ([`Horizon`]): every sequence up to
//!   `settled` is either committed and visible or will never exist, so other subscribers (and
//!   reconnecting ones) do not wait for the same gap again.
//!
//! The residual risk is a transaction that stays open more than [`GAP_WINDOW`] between its
//! outbox INSERT and its COMMIT (a stalled commit, e.g. an fsync that hangs for seconds); its
//! event could then be passed by a stream that is already past it. Such a pass is logged
//! (`outbox gap passed`). SQLite has one writer that commits in sequence order and rolls back
//! `AUTOINCREMENT` with the savepoint, so gaps do not arise there and the rule costs nothing.
//! The price on PostgreSQL: an event that follows a burnt sequence is delivered up to
//! [`GAP_WINDOW`] late, once per process.
//!
//! Live delivery polls the outbox every [`POLL_INTERVAL`] (real time, also under the manual
//! clock). A stream ends when the client goes away, when the server shuts down (the server's
//! cancellation token), or with UNAVAILABLE when the storage fails (the client resumes from
//! its cursor).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::Context;
use super::convert::{self, invalid};
use crate::lifecycle::ErrorReason;
use crate::proto;
use crate::proto::bss_events_server::BssEvents;
use crate::store::{AccountStore, EventType, OutboxEvent};

/// Outbox rows read per query.
const PAGE_SIZE: u32 = 500;
/// How often a caught-up stream looks for new events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a gap in the sequence is waited for before it counts as burnt (see module docs).
pub const GAP_WINDOW: Duration = Duration::from_secs(5);
/// Events buffered per subscriber before the reader waits for the client.
const BUFFER: usize = 256;

pub struct EventsApi {
    ctx: Context,
    shutdown: CancellationToken,
    horizon: Arc<Horizon>,
}

impl EventsApi {
    /// `shutdown` is the server's: every stream ends when it is cancelled.
    pub fn new(ctx: Context, shutdown: CancellationToken) -> Self {
        Self {
            ctx,
            shutdown,
            horizon: Arc::new(Horizon::new(GAP_WINDOW)),
        }
    }
}

/// What is known about sequence gaps, shared by every stream of the process.
#[derive(Debug)]
pub(crate) struct Horizon {
    window: Duration,
    state: Mutex<HorizonState>,
}

#[derive(Debug, Default)]
struct HorizonState {
    /// Every sequence ≤ `settled` is committed (and visible) or will never exist.
    settled: i64,
    /// Gaps not yet settled, by the first visible sequence after them: when first observed.
    first_seen: BTreeMap<i64, Instant>,
}

impl Horizon {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            state: Mutex::new(HorizonState::default()),
        }
    }

    /// How many events of `page` (read in sequence order after `cursor`) may be delivered now:
    /// all of them up to the first gap that may still fill.
    pub(crate) fn deliverable(&self, cursor: i64, page: &[OutboxEvent], now: Instant) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut expected = cursor.saturating_add(1);
        // Whether everything from `settled` to here has been checked by this call; a client's
        // cursor ahead of `settled` leaves sequences in between that nobody looked at.
        let mut chained = cursor <= state.settled;
        for (index, event) in page.iter().enumerate() {
            let sequence = event.sequence;
            if sequence > expected && sequence - 1 > state.settled {
                let seen = *state.first_seen.entry(sequence).or_insert(now);
                if now.saturating_duration_since(seen) < self.window {
                    return index;
                }
                tracing::warn!(
                    missing_from = expected.max(state.settled + 1),
                    missing_to = sequence - 1,
                    waited_ms = now.saturating_duration_since(seen).as_millis() as u64,
                    "outbox gap passed: those sequences were never committed"
                );
            }
            if chained && sequence > state.settled {
                state.settled = sequence;
                let settled = state.settled;
                state.first_seen.retain(|&k, _| k > settled);
            }
            expected = sequence.saturating_add(1);
            chained = chained || sequence <= state.settled;
        }
        page.len()
    }
}

/// The requested event types; empty = every type.
fn event_types(raw: &[i32]) -> Result<Vec<EventType>, Status> {
    raw.iter()
        .map(|&value| {
            EventType::from_i32(value).ok_or_else(|| {
                invalid(
                    ErrorReason::InvalidArgument,
                    format!(
                        "types: {value} is not a known EventType (UNSPECIFIED is not allowed; \
                         leave types empty for every type)"
                    ),
                )
            })
        })
        .collect()
}

/// One subscription: reads the outbox after `cursor` and sends what the client asked for.
struct Pump {
    store: Arc<dyn AccountStore>,
    horizon: Arc<Horizon>,
    types: Vec<EventType>,
    tx: mpsc::Sender<Result<proto::LifecycleEvent, Status>>,
    shutdown: CancellationToken,
}

impl Pump {
    async fn run(self, mut cursor: i64) {
        loop {
            let page = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = self.tx.closed() => return,
                page = self.store.events_after(cursor, PAGE_SIZE) => page,
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    // The client resumes from the last sequence it received.
                    tokio::select! {
                        biased;
                        _ = self.shutdown.cancelled() => {}
                        _ = self.tx.send(Err(e.into())) => {}
                    }
                    return;
                }
            };
            let full = page.len() == PAGE_SIZE as usize;
            let ready = self.horizon.deliverable(cursor, &page, Instant::now());
            let held = ready < page.len();
            for event in page.into_iter().take(ready) {
                cursor = event.sequence;
                if !self.types.is_empty() && !self.types.contains(&event.event_type) {
                    continue;
                }
                let sent = tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => return,
                    sent = self.tx.send(Ok(convert::lifecycle_event(event))) => sent,
                };
                if sent.is_err() {
                    // The client went away.
                    return;
                }
            }
            if full && !held {
                // More backlog: read on at once.
                continue;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = self.tx.closed() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }
}

#[tonic::async_trait]
impl BssEvents for EventsApi {
    type SubscribeStream = ReceiverStream<Result<proto::LifecycleEvent, Status>>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = request.get_ref();
        let cursor = i64::try_from(r.after_sequence).map_err(|_| {
            invalid(
                ErrorReason::InvalidArgument,
                format!("after_sequence {} is out of range", r.after_sequence),
            )
        })?;
        let types = event_types(&r.types)?;
        if !self.ctx.ready.load(Ordering::Acquire) {
            return Err(convert::status(
                tonic::Code::Unavailable,
                "NOT_READY",
                "the service is starting (migrations running); retry shortly",
            ));
        }
        let (tx, rx) = mpsc::channel(BUFFER);
        let pump = Pump {
            store: self.ctx.store.clone(),
            horizon: self.horizon.clone(),
            types,
            tx,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(pump.run(cursor));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_dead_letters(
        &self,
        request: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        super::dead_letters::list(&self.ctx, request.get_ref()).await
    }

    async fn redeliver(
        &self,
        request: Request<proto::RedeliverRequest>,
    ) -> Result<Response<proto::RedeliverResponse>, Status> {
        super::dead_letters::redeliver(&self.ctx, request.get_ref()).await
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::lifecycle::{AccountState, Msisdn};

    fn event(sequence: i64) -> OutboxEvent {
        OutboxEvent {
            sequence,
            event_id: format!("e{sequence}"),
            event_type: EventType::StateChanged,
            msisdn: Msisdn::parse("8613800000001").expect("msisdn"),
            account_id: "a".into(),
            generation: 1,
            from_state: AccountState::Unactivated,
            to_state: AccountState::Valid,
            reason: "ACTIVATED".into(),
            effective_at: Utc::now(),
            emitted_at: Utc::now(),
        }
    }

    fn page(sequences: &[i64]) -> Vec<OutboxEvent> {
        sequences.iter().copied().map(event).collect()
    }

    /// Reads of one horizon with a 5 s window, in order: (cursor, the sequences of the page read,
    /// when (ms after the first read), how many of them are deliverable).
    #[track_caller]
    fn assert_reads(reads: &[(i64, &[i64], u64, usize)]) {
        let horizon = Horizon::new(Duration::from_secs(5));
        let t0 = Instant::now();
        for &(cursor, sequences, after_ms, deliverable) in reads {
            let now = t0 + Duration::from_millis(after_ms);
            assert_eq!(
                horizon.deliverable(cursor, &page(sequences), now),
                deliverable,
                "cursor {cursor}, page {sequences:?}, at {after_ms} ms"
            );
        }
    }

    #[test]
    fn contiguous_sequences_are_delivered_at_once() {
        assert_reads(&[(0, &[1, 2, 3], 0, 3), (3, &[4, 5], 0, 2)]);
    }

    #[test]
    fn a_gap_holds_until_it_fills() {
        assert_reads(&[
            // 3 is taken by a transaction that has not committed yet.
            (0, &[1, 2, 4, 5], 0, 2),
            (2, &[4, 5], 100, 0),
            // It commits: everything goes.
            (2, &[3, 4, 5], 100, 3),
        ]);
    }

    #[test]
    fn a_gap_older_than_the_window_is_passed_once_for_every_stream() {
        assert_reads(&[
            (0, &[1, 4], 0, 1),
            (1, &[4], 4_999, 0),
            (1, &[4, 5], 5_000, 2),
            // Another stream from the start does not wait for the settled gap again.
            (0, &[1, 4, 5], 5_000, 3),
        ]);
    }

    #[test]
    fn a_cursor_ahead_of_what_was_checked_settles_nothing_for_others() {
        assert_reads(&[
            // A client resumes at 10 though nobody has looked at 1..=10.
            (10, &[11, 12], 0, 2),
            // A stream from the start still waits at the gap before 11.
            (0, &[1, 11, 12], 0, 1),
        ]);
    }

    #[test]
    fn a_gap_at_the_cursor_holds_and_a_new_gap_waits_its_own_window() {
        assert_reads(&[
            (0, &[1, 2], 0, 2),
            // 3 missing right after the cursor.
            (2, &[4], 0, 0),
            // 4 passes its gap; 7 is a new gap, first seen now.
            (2, &[4, 7], 6_000, 1),
            (4, &[7], 7_000, 0),
        ]);
    }
}
