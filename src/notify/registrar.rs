//! Registering outbox events for delivery: [`Registrar`] finds the outbox events of the selected
//! types that have no delivery row yet and gives them one, without rescanning the whole outbox
//! (step 1 of the module docs of `notify`). It writes delivery rows only, through the store.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::store::{AccountStore, EventType, Registered, StoreError};

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
pub(super) struct Registrar {
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
    pub(super) fn new(types: Vec<EventType>) -> Self {
        Self {
            types,
            seen: 0,
            settled: 0,
            marks: VecDeque::new(),
            last_look_back: None,
            unanalyzed: 0,
        }
    }

    pub(super) async fn poll(
        &mut self,
        store: &dyn AccountStore,
        now_ms: i64,
    ) -> Result<(), StoreError> {
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
