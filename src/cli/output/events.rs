//! What the client prints of events: one JSON object or one aligned line per event of
//! `events tail`, and the dead letters.

use serde_json::{Value, json};

use super::{Document, Table, event_type, instant, instant_json, state};
use crate::proto;

pub fn event_json(e: &proto::LifecycleEvent) -> Value {
    json!({
        "event_id": e.event_id,
        "sequence": e.sequence,
        "type": event_type(e.r#type),
        "msisdn": e.msisdn,
        "account_id": e.account_id,
        "generation": e.generation,
        "from_state": state(e.from_state),
        "to_state": state(e.to_state),
        "reason": e.reason,
        "effective_at": instant_json(e.effective_at.as_ref()),
        "emitted_at": instant_json(e.emitted_at.as_ref()),
    })
}

/// Column widths of a tail line: a stream cannot be measured ahead, so they are fixed.
fn event_cells(cells: [&str; 8]) -> String {
    let [
        sequence,
        kind,
        msisdn,
        from,
        to,
        reason,
        effective_at,
        event_id,
    ] = cells;
    format!(
        "{sequence:>8}  {kind:<17}  {msisdn:<15}  {from:<11}  {to:<11}  {reason:<19}  \
         {effective_at:<27}  {event_id}"
    )
}

pub fn event_line_header() -> String {
    event_cells([
        "SEQUENCE",
        "TYPE",
        "MSISDN",
        "FROM",
        "TO",
        "REASON",
        "EFFECTIVE_AT",
        "EVENT_ID",
    ])
}

pub fn event_line(e: &proto::LifecycleEvent) -> String {
    event_cells([
        &e.sequence.to_string(),
        &event_type(e.r#type),
        &e.msisdn,
        &state(e.from_state),
        &state(e.to_state),
        &e.reason,
        &instant(e.effective_at.as_ref()),
        &e.event_id,
    ])
}

pub fn dead_letters(letters: &[proto::DeadLetter]) -> Document {
    let mut table = Table::new(&[
        "SEQUENCE",
        "EVENT_ID",
        "TYPE",
        "MSISDN",
        "ATTEMPTS",
        "DEAD_AT",
        "LAST_ERROR",
    ]);
    let mut json_letters = Vec::new();
    for d in letters {
        let event = d.event.clone().unwrap_or_default();
        table.row(vec![
            event.sequence.to_string(),
            event.event_id.clone(),
            event_type(event.r#type),
            event.msisdn.clone(),
            d.attempts.to_string(),
            instant(d.dead_at.as_ref()),
            d.last_error
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        ]);
        json_letters.push(json!({
            "event": event_json(&event),
            "attempts": d.attempts,
            "last_error": d.last_error,
            "dead_at": instant_json(d.dead_at.as_ref()),
        }));
    }
    Document {
        json: json!({ "dead_letters": json_letters }),
        table: table.render(),
    }
}
