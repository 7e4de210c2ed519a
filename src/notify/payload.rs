//! The webhook's wire form: the JSON body of one event and its signatures. `docs/bss-webhook.md`
//! documents them for the BSS; change them together.
//!
//! Two signatures go with every request:
//! - `webhook-signature` (Standard Webhooks): `v1,` and the base64 HMAC-SHA256 of
//!   `{webhook-id}.{webhook-timestamp}.{body}`. The timestamp is the attempt's, so a receiver
//!   that checks it against its clock refuses a captured request replayed later.
//! - `X-Ocs-Signature` (the original scheme, kept for existing receivers): `sha256=` and the
//!   hex HMAC-SHA256 of the body alone, which a replay does not change.

use base64::Engine;
use chrono::SecondsFormat;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

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
        event_type: event.event_type.name(),
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

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts a key of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The `X-Ocs-Signature` value: `sha256=` and the lower-case hex HMAC-SHA256 of `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, &[body])))
}

/// The `webhook-signature` value (Standard Webhooks): `v1,` and the base64 (standard
/// alphabet, padded) HMAC-SHA256 of `{id}.{timestamp}.{body}` with `key` (the decoded key of
/// a `whsec_` secret, see [`crate::config::BssConfig::standard_signing_key`]).
pub fn standard_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let mac = hmac_sha256(
        key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac)
    )
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
    fn the_standard_signature_reproduces_the_standard_webhooks_test_vector() {
        // The reference libraries' vector: secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw.
        let config = crate::config::BssConfig {
            webhook_secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            ..Default::default()
        };
        let key = config.standard_signing_key().unwrap();
        assert_eq!(
            standard_signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // A secret without the prefix is the key as it is.
        let plain = crate::config::BssConfig {
            webhook_secret: "Jefe".into(),
            ..Default::default()
        };
        assert_eq!(plain.standard_signing_key().unwrap(), b"Jefe");
        let broken = crate::config::BssConfig {
            webhook_secret: "whsec_not base64!".into(),
            ..Default::default()
        };
        assert!(broken.standard_signing_key().is_err());
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
