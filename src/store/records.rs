//! The history rows and outbox events a lifecycle change writes, built in one place for every
//! writer (the API's mutations and the sweep).

use chrono::{DateTime, Utc};

use super::{EventType, HistoryRecord, OutboxEvent};
use crate::lifecycle::{
    Account, AccountState, ExpiringNotice, HistoryKind, Transition, TransitionReason,
};

/// The actor recorded for boundary transitions, whoever happened to materialise them: the
/// history reads the same whether the nightly sweep or a request crossed the boundary first.
pub const SWEEP_ACTOR: &str = "sweep";

/// The outbox `reason` of a VALIDITY_EXPIRING notice.
pub const VALIDITY_EXPIRING_REASON: &str = "VALIDITY_EXPIRING";

/// History rows and outbox events for `transitions` of `account`, emitted at `now`: a
/// STATE_CHANGED history row (actor `sweep`, at the boundary instant) for every boundary
/// crossing, a STATE_CHANGED event for every transition, and NUMBER_RECYCLED for every recycle.
pub fn record_transitions(
    account: &Account,
    transitions: &[Transition],
    now: DateTime<Utc>,
    history: &mut Vec<HistoryRecord>,
    events: &mut Vec<OutboxEvent>,
) {
    for t in transitions {
        let boundary = !matches!(
            t.reason,
            TransitionReason::Activated | TransitionReason::Recharged | TransitionReason::Unlocked
        );
        if boundary {
            history.push(HistoryRecord {
                id: 0,
                msisdn: account.msisdn.clone(),
                account_id: account.account_id.clone(),
                generation: account.generation,
                at: t.effective_at,
                kind: HistoryKind::StateChanged,
                from_state: Some(t.from),
                to_state: Some(t.to),
                amount: 0,
                actor: SWEEP_ACTOR.to_owned(),
                request_id: None,
            });
        }
        let event = |event_type| OutboxEvent {
            sequence: 0,
            event_id: new_event_id(),
            event_type,
            msisdn: account.msisdn.clone(),
            account_id: account.account_id.clone(),
            generation: account.generation,
            from_state: t.from,
            to_state: t.to,
            reason: t.reason.as_str().to_owned(),
            effective_at: t.effective_at,
            emitted_at: now,
        };
        events.push(event(EventType::StateChanged));
        if t.to == AccountState::Recycled {
            events.push(event(EventType::NumberRecycled));
        }
    }
}

/// The VALIDITY_EXPIRING event of `notice` (from and to state VALID, effective at the instant
/// the notice became due).
pub fn expiring_event(
    account: &Account,
    notice: &ExpiringNotice,
    now: DateTime<Utc>,
) -> OutboxEvent {
    OutboxEvent {
        sequence: 0,
        event_id: new_event_id(),
        event_type: EventType::ValidityExpiring,
        msisdn: account.msisdn.clone(),
        account_id: account.account_id.clone(),
        generation: account.generation,
        from_state: AccountState::Valid,
        to_state: AccountState::Valid,
        reason: VALIDITY_EXPIRING_REASON.to_owned(),
        effective_at: notice.due_at,
        emitted_at: now,
    }
}

/// A new event id: a UUID (spec: `event_id` is a UUID string), version 7 — time-ordered, so the
/// unique index on `outbox.event_id` grows at its right edge like the sequence does instead of
/// taking every insert at a random page (measured on the sweep: see BENCHMARKS.md).
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
