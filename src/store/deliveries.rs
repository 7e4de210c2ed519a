//! Delivery state of the BSS webhook (`webhook_deliveries`, migration 0003), behind a trait of
//! its own that both backends implement with the same SQL.
//!
//! The store only records what the delivery worker (`crate::notify`) decides: which outbox
//! events are to be delivered, which attempt holds which event, and how each attempt ended. It
//! sends nothing and knows no HTTP.
//!
//! Delivery is tracked per event row, never with a single "delivered up to sequence N" cursor:
//! on PostgreSQL an event can commit after one with a higher sequence (see `api::events`), and a
//! cursor would skip it. Here a late event simply has no delivery row yet; the next
//! [`WebhookDeliveries::register_webhook_events`] finds it with an anti-join and adds it.
//!
//! Times in this table are real time (`next_attempt_at` in epoch milliseconds), never the
//! service's manual clock: retry timing is outbound I/O timing.

use chrono::{DateTime, Utc};

use super::dialect::{Dialect, Executes, Param, Reads};
use super::rows;
use super::sql::SqlStore;
use super::{EventType, OutboxEvent, StoreError};

/// An event waiting for its next attempt, with the attempts made so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingDelivery {
    pub event: OutboxEvent,
    pub attempts: u32,
}

/// An event whose delivery exhausted its attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub event: OutboxEvent,
    pub attempts: u32,
    pub last_error: String,
    pub dead_at: DateTime<Utc>,
}

/// What one registration pass found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registered {
    /// Delivery rows added.
    pub added: u64,
    /// Unregistered events found (≥ `added`: another worker may have added some meanwhile).
    pub found: u64,
    /// The highest sequence among them.
    pub last_sequence: Option<i64>,
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; tried again at `next_attempt_at` (epoch ms, real time).
    Retry {
        error: String,
        next_attempt_at: i64,
    },
    /// Failed for the last time: dead-lettered.
    Dead {
        error: String,
    },
}

#[async_trait::async_trait]
pub trait WebhookDeliveries: Send + Sync {
    /// Adds a delivery row (due at `now_ms`) for up to `limit` outbox events of `types` with a
    /// sequence > `after_sequence` that have none yet, in sequence order. The bound keeps the
    /// scan to the recent part of the outbox; the worker decides how far back it must look
    /// (`Registrar` in `crate::notify`'s `registrar.rs`).
    async fn register_webhook_events(
        &self,
        types: &[EventType],
        now_ms: i64,
        after_sequence: i64,
        limit: u32,
    ) -> Result<Registered, StoreError>;

    /// Pending events due at `now_ms` that are the oldest pending event of their MSISDN (a later
    /// event of an MSISDN waits for the earlier one), in sequence order.
    async fn due_webhook_deliveries(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<PendingDelivery>, StoreError>;

    /// One turn of the delivery worker, in one transaction (one commit for many events):
    /// records how the attempts in `outcomes` ended, at `at`; then, of `claim`, the events still
    /// pending and due at `now_ms` get their attempt counted and are held until
    /// `lease_until_ms` (another worker, or this one after a crash, takes them again only then).
    /// Returns `(sequence, attempt number)` of the rows claimed.
    async fn settle_webhook_deliveries(
        &self,
        outcomes: &[(i64, AttemptOutcome)],
        at: DateTime<Utc>,
        claim: &[i64],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Vec<(i64, u32)>, StoreError>;

    /// Dead letters with sequence > `after_sequence`, in sequence order.
    async fn dead_webhook_deliveries(
        &self,
        after_sequence: i64,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// Refreshes the planner statistics of the delivery table (`ANALYZE`), after the worker
    /// registered a burst of events: planned from the statistics of a much smaller table,
    /// PostgreSQL claimed 64 events by sequence with a walk of the whole pending index
    /// (5 ms a claim instead of 0.2) until autovacuum's next analyze.
    async fn analyze_webhook_deliveries(&self) -> Result<(), StoreError>;

    /// Puts the dead letters among `event_ids` back in the queue with fresh attempts, due at
    /// `now_ms`; returns how many were requeued (unknown or not dead-lettered ids count 0).
    async fn requeue_webhook_deliveries(
        &self,
        event_ids: &[String],
        now_ms: i64,
    ) -> Result<u64, StoreError>;
}

/// Pending deliveries read per statement when looking for due ones.
const DUE_SCAN_PAGE: usize = 512;
/// Pending deliveries looked at per call at most: events waiting behind an earlier event of
/// their MSISDN, in flight or waiting for a retry are passed over, and this bounds the walk when
/// thousands of them head the backlog (their turn comes as the head clears).
const DUE_SCAN_MAX: usize = 32_768;

/// Outbox columns qualified for a join with `webhook_deliveries` (`o`), in `OutboxRow` order.
pub(crate) const JOINED_OUTBOX_COLUMNS: &str = "o.sequence, o.event_id, o.event_type, o.msisdn, \
    o.account_id, o.generation, o.from_state, o.to_state, o.reason, o.effective_at, o.emitted_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeadRow {
    #[sqlx(flatten)]
    pub event: super::rows::OutboxRow,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub dead_at: DateTime<Utc>,
}

impl DeadRow {
    pub(crate) fn into_dead_letter(self) -> Result<DeadLetter, StoreError> {
        Ok(DeadLetter {
            attempts: attempt_count(self.attempts),
            last_error: self.last_error.unwrap_or_default(),
            dead_at: self.dead_at,
            event: self.event.into_event()?,
        })
    }
}

fn attempt_count(value: i32) -> u32 {
    u32::try_from(value).unwrap_or_default()
}

/// The `IN (…)` list of sequences: integers only, so safe to inline in SQL.
fn sequence_list(sequences: &[i64]) -> String {
    sequences
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `IN (…)` list of event types: wire numbers only, so safe to inline in SQL.
pub(crate) fn type_list(types: &[EventType]) -> String {
    types
        .iter()
        .map(|t| (*t as i32).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one implementation, over the backend's read and write pools.
#[async_trait::async_trait]
impl<D: Dialect> WebhookDeliveries for SqlStore<D> {
    async fn register_webhook_events(
        &self,
        types: &[EventType],
        now_ms: i64,
        after_sequence: i64,
        limit: u32,
    ) -> Result<Registered, StoreError> {
        if types.is_empty() {
            return Ok(Registered::default());
        }
        let unregistered = format!(
            "FROM outbox o WHERE o.sequence > $1 AND o.event_type IN ({}) \
             AND NOT EXISTS \
             (SELECT 1 FROM webhook_deliveries d WHERE d.sequence = o.sequence)",
            type_list(types)
        );
        // Read first (cheap, on the readers) so an idle poll writes nothing.
        let sql = format!(
            "SELECT count(*), max(sequence) FROM \
             (SELECT o.sequence {unregistered} ORDER BY o.sequence LIMIT $2) AS n"
        );
        let (found, last): (i64, Option<i64>) = D::Db::read(
            &sqlx::query(&sql)
                .param(after_sequence)
                .param(i64::from(limit))
                .fetch_one(D::Db::on_pool(self.reader()))
                .await?,
        )?;
        let Some(last) = last else {
            return Ok(Registered::default());
        };
        // One statement for the lot, bounded by what was read.
        let sql = format!(
            "INSERT INTO webhook_deliveries \
             (sequence, event_id, msisdn, attempts, next_attempt_at) \
             SELECT o.sequence, o.event_id, o.msisdn, 0, $3 {unregistered} \
             AND o.sequence <= $2 ORDER BY o.sequence \
             ON CONFLICT (sequence) DO NOTHING"
        );
        let added = sqlx::query(&sql)
            .param(after_sequence)
            .param(last)
            .param(now_ms)
            .execute(D::Db::on_pool(self.writer()))
            .await
            .map(|done| D::rows_affected(&done))?;
        Ok(Registered {
            added,
            found: u64::try_from(found).unwrap_or_default(),
            last_sequence: Some(last),
        })
    }

    async fn due_webhook_deliveries(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        // The pending backlog in sequence order, from its start: the first row of an
        // MSISDN met on the way is that MSISDN's oldest pending event, so it is picked
        // when due and every later row of the MSISDN is passed over. A plain index
        // range scan — a per-row "oldest of its MSISDN" subquery left the plan to
        // PostgreSQL's statistics, and with a backlog that grew since the last ANALYZE
        // it walked the backlog once per row (20–50 ms per read instead of ~2 ms).
        let page_sql = "SELECT sequence, msisdn, next_attempt_at, attempts \
            FROM webhook_deliveries WHERE delivered_at IS NULL AND dead_at IS NULL \
            AND sequence > $1 ORDER BY sequence LIMIT $2";
        let limit = limit as usize;
        let mut seen = std::collections::HashSet::new();
        let mut picked: Vec<(i64, i32)> = Vec::new();
        let (mut after, mut scanned) = (i64::MIN, 0_usize);
        'scan: while scanned < DUE_SCAN_MAX {
            let page: Vec<(i64, String, i64, i32)> = D::Db::read_all(
                sqlx::query(page_sql)
                    .param(after)
                    .param(DUE_SCAN_PAGE as i64)
                    .fetch_all(D::Db::on_pool(self.reader()))
                    .await?,
            )?;
            let fetched = page.len();
            scanned += fetched;
            for (sequence, msisdn, next_attempt_at, attempts) in page {
                after = sequence;
                if seen.insert(msisdn) && next_attempt_at <= now_ms {
                    picked.push((sequence, attempts));
                    if picked.len() >= limit {
                        break 'scan;
                    }
                }
            }
            if fetched < DUE_SCAN_PAGE {
                break;
            }
        }
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {} FROM outbox WHERE sequence IN ({}) ORDER BY sequence",
            rows::OUTBOX_COLUMNS,
            sequence_list(&picked.iter().map(|(s, _)| *s).collect::<Vec<_>>())
        );
        let rows: Vec<rows::OutboxRow> = D::Db::read_all(
            sqlx::query(&sql)
                .fetch_all(D::Db::on_pool(self.reader()))
                .await?,
        )?;
        let attempts: std::collections::HashMap<i64, i32> = picked.into_iter().collect();
        rows.into_iter()
            .map(|row| {
                let attempts = attempts.get(&row.sequence).copied().unwrap_or_default();
                Ok(PendingDelivery {
                    attempts: attempt_count(attempts),
                    event: row.into_event()?,
                })
            })
            .collect()
    }

    async fn settle_webhook_deliveries(
        &self,
        outcomes: &[(i64, AttemptOutcome)],
        at: chrono::DateTime<chrono::Utc>,
        claim: &[i64],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Vec<(i64, u32)>, StoreError> {
        if outcomes.is_empty() && claim.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.writer().begin().await?;
        let delivered: Vec<i64> = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, AttemptOutcome::Delivered))
            .map(|(sequence, _)| *sequence)
            .collect();
        if !delivered.is_empty() {
            let sql = format!(
                "UPDATE webhook_deliveries SET delivered_at = $1, last_error = NULL \
                 WHERE sequence IN ({})",
                sequence_list(&delivered)
            );
            sqlx::query(&sql)
                .param(at)
                .execute(D::Db::on(&mut *tx))
                .await?;
        }
        for (sequence, outcome) in outcomes {
            let query = match outcome {
                AttemptOutcome::Delivered => continue,
                AttemptOutcome::Retry {
                    error,
                    next_attempt_at,
                } => sqlx::query(
                    "UPDATE webhook_deliveries SET next_attempt_at = $2, last_error = $3 \
                     WHERE sequence = $1 AND delivered_at IS NULL",
                )
                .param(*sequence)
                .param(*next_attempt_at)
                .param(error.as_str()),
                AttemptOutcome::Dead { error } => sqlx::query(
                    "UPDATE webhook_deliveries SET dead_at = $2, last_error = $3 \
                     WHERE sequence = $1 AND delivered_at IS NULL",
                )
                .param(*sequence)
                .param(at)
                .param(error.as_str()),
            };
            query.execute(D::Db::on(&mut *tx)).await?;
        }
        let mut claimed = Vec::new();
        if !claim.is_empty() {
            let sql = format!(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, \
                 next_attempt_at = $2 WHERE sequence IN ({}) \
                 AND delivered_at IS NULL AND dead_at IS NULL \
                 AND next_attempt_at <= $1 RETURNING sequence, attempts",
                sequence_list(claim)
            );
            let rows: Vec<(i64, i32)> = D::Db::read_all(
                sqlx::query(&sql)
                    .param(now_ms)
                    .param(lease_until_ms)
                    .fetch_all(D::Db::on(&mut *tx))
                    .await?,
            )?;
            claimed = rows
                .into_iter()
                .map(|(sequence, attempts)| (sequence, attempt_count(attempts)))
                .collect();
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn dead_webhook_deliveries(
        &self,
        after_sequence: i64,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let sql = format!(
            "SELECT {}, d.attempts, d.last_error, d.dead_at FROM webhook_deliveries d \
             JOIN outbox o ON o.sequence = d.sequence \
             WHERE d.dead_at IS NOT NULL AND d.sequence > $1 \
             ORDER BY d.sequence LIMIT $2",
            JOINED_OUTBOX_COLUMNS
        );
        let rows: Vec<DeadRow> = D::Db::read_all(
            sqlx::query(&sql)
                .param(after_sequence)
                .param(i64::from(limit))
                .fetch_all(D::Db::on_pool(self.reader()))
                .await?,
        )?;
        rows.into_iter().map(DeadRow::into_dead_letter).collect()
    }

    async fn analyze_webhook_deliveries(&self) -> Result<(), StoreError> {
        sqlx::query("ANALYZE webhook_deliveries")
            .execute(D::Db::on_pool(self.writer()))
            .await?;
        Ok(())
    }

    async fn requeue_webhook_deliveries(
        &self,
        event_ids: &[String],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut requeued = 0;
        for event_id in event_ids {
            requeued += sqlx::query(
                "UPDATE webhook_deliveries \
                 SET dead_at = NULL, attempts = 0, next_attempt_at = $2 \
                 WHERE event_id = $1 AND dead_at IS NOT NULL",
            )
            .param(event_id.as_str())
            .param(now_ms)
            .execute(D::Db::on_pool(self.writer()))
            .await
            .map(|done| D::rows_affected(&done))?;
        }
        Ok(requeued)
    }
}
