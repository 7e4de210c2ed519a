//! The webhook's wire form: the JSON body of one event and its signature. `docs/bss-webhook.md`
//! documents both for the BSS; change them together.

use chrono::SecondsFormat;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::config::bss::event_type_name;
use crate::store::OutboxEvent;

/// The JSON body of one event (field order is the order of this struct).
#[derive(Debug, Serialize)]
struct EventBody<'a> {
    event_id: &'a str,
    sequence: i64,
    #[serde(rename = "type")]
    event_type: &'static str,
    msisdn: &'a str,
    account_id: &'a str,
    generation: u32,
    from_state: &'static str,
    to_state: &'static str,
    reason: &'a str,
    effective_at: String,
    emitted_at: String,
}

/// The exact bytes POSTed for `event`.
pub fn body(event: &OutboxEvent) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&EventBody {
        event_id: &event.event_id,
        sequence: event.sequence,
        event_type: event_type_name(event.event_type),
        msisdn: event.msisdn.as_str(),
        account_id: &event.account_id,
        generation: event.generation,
        from_state: event.from_state.name(),
        to_state: event.to_state.name(),
        reason: &event.reason,
        effective_at: event
            .effective_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        emitted_at: event
            .emitted_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
    })
}

/// The `X-Ocs-Signature` value: `sha256=` and the lower-case hex HMAC-SHA256 of `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts a key of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::lifecycle::{AccountState, Msisdn};
    use crate::store::EventType;

    #[test]
    fn the_signature_is_the_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_body_names_types_and_states() {
        let at = Utc.with_ymd_and_hms(2031, 8, 23, 16, 0, 0).unwrap();
        let event = OutboxEvent {
            sequence: 42,
            event_id: "0b6f3c1e-2a57-4c1e-9d7a-5f1e2d3c4b5a".into(),
            event_type: EventType::NumberRecycled,
            msisdn: Msisdn::parse("8613800000001").unwrap(),
            account_id: "acc-1".into(),
            generation: 1,
            from_state: AccountState::Unactivated,
            to_state: AccountState::Recycled,
            reason: "UNACTIVATED_EXPIRED".into(),
            effective_at: at,
            emitted_at: at,
        };
        let json: serde_json::Value = serde_json::from_slice(&body(&event).unwrap()).unwrap();
        assert_eq!(json["type"], "NUMBER_RECYCLED");
        assert_eq!(json["sequence"], 42);
        assert_eq!(json["from_state"], "UNACTIVATED");
        assert_eq!(json["to_state"], "RECYCLED");
        assert_eq!(json["effective_at"], "2031-08-23T16:00:00Z");
        assert_eq!(json["generation"], 1);
    }
}
