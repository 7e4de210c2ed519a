//! The store's side of the records a lifecycle change writes: the core builds the history rows
//! and outbox events (`crate::lifecycle::Effects`); the writers give them event ids from here.

/// A new event id: a UUID (spec: `event_id` is a UUID string), version 7 — time-ordered, so the
/// unique index on `outbox.event_id` grows at its right edge like the sequence does instead of
/// taking every insert at a random page (measured on the sweep: see BENCHMARKS.md).
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
