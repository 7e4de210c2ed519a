//! Authorize (spec section 5): which services and destinations each state allows.

use super::*;

const OUTGOING: [ServiceType; 3] = [VoiceOut, SmsOut, Data];
const INCOMING: [ServiceType; 2] = [VoiceIn, SmsIn];
const EMERGENCY: [&str; 5] = ["110", "112", "119", "120", "122"];
const ORDINARY: &str = "8613900139000";
/// The verdict of a row of [`assert_auth`] that allows; any other verdict is a denial's reason.
const ALLOWED: &str = "";

/// Checks `authorize` for each row (services, destinations, verdict): every service × destination
/// of the row allowed (`ALLOWED`), or denied with the row's reason; every answer names `state`,
/// the account's effective state.
#[track_caller]
fn assert_auth(
    account: Option<&Account>,
    now: DateTime<Utc>,
    state: Option<AccountState>,
    table: &[(&[ServiceType], &[&str], &str)],
) {
    let rules = shanghai();
    for (services, destinations, verdict) in table {
        let allowed = verdict.is_empty();
        for service in *services {
            for destination in *destinations {
                let auth = authorize(account, *service, destination, now, &rules);
                assert_eq!(
                    (
                        auth.allowed,
                        auth.barring.map_or("", Barring::as_str),
                        auth.state
                    ),
                    (allowed, *verdict, state),
                    "{service:?} to {destination}"
                );
            }
        }
    }
}

fn all_numbers() -> Vec<&'static str> {
    let mut all = EMERGENCY.to_vec();
    all.extend(["10010", "10011", ORDINARY, "+8613900139000", "cmnet"]);
    all
}

fn every_service() -> Vec<ServiceType> {
    [OUTGOING.as_slice(), INCOMING.as_slice()].concat()
}

/// The emergency numbers and `more`.
fn emergency_and(more: &[&'static str]) -> Vec<&'static str> {
    EMERGENCY.iter().chain(more).copied().collect()
}

#[test]
fn authorize_unactivated_sold_card_reaches_special_numbers_only() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
    let account = card(&rules, "2026-02-01", 5000);
    assert_auth(
        Some(&account),
        now,
        Some(Unactivated),
        &[
            (&OUTGOING, &emergency_and(&["10010", "+110"]), ALLOWED),
            (&OUTGOING, &["10011", ORDINARY], "NOT_ACTIVATED"),
            (&INCOMING, &all_numbers(), "NOT_ACTIVATED"),
        ],
    );
}

#[test]
fn authorize_unsold_card_is_denied_everything() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
    let account = provision_at(&rules, at(&rules, "2026-02-01", 9), &params(5000, false, 0));
    assert_auth(
        Some(&account),
        now,
        Some(Unactivated),
        &[(&every_service(), &all_numbers(), "SALE_LOCKED")],
    );
}

#[test]
fn authorize_valid_with_credit_allows_everything() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
    for (balance, preset) in [(1, 0), (0, 1), (5000, 300)] {
        let account = valid_account(&rules, "2026-06-30", balance, preset);
        assert_auth(
            Some(&account),
            now,
            Some(Valid),
            &[(&every_service(), &all_numbers(), ALLOWED)],
        );
    }
}

#[test]
fn authorize_valid_without_credit_reaches_special_numbers_and_10011_only() {
    let (rules, now) = shanghai_at("2026-03-01", 10);
    let account = valid_account(&rules, "2026-06-30", 0, 0);
    assert_auth(
        Some(&account),
        now,
        Some(Valid),
        &[
            (&OUTGOING, &emergency_and(&["10010", "10011"]), ALLOWED),
            (&OUTGOING, &[ORDINARY, "cmnet"], "INSUFFICIENT_BALANCE"),
            (&INCOMING, &all_numbers(), ALLOWED),
        ],
    );
}

#[test]
fn authorize_grace_is_one_way_barred() {
    let (rules, now) = shanghai_at("2026-08-01", 10);
    // Stored VALID with credit, due GRACE: the effective state decides.
    let account = valid_account(&rules, "2026-06-30", 5000, 0);
    assert_auth(
        Some(&account),
        now,
        Some(Grace),
        &[
            (&OUTGOING, &emergency_and(&["10010", "10011"]), ALLOWED),
            (&OUTGOING, &[ORDINARY, "cmnet"], "ONE_WAY_BARRED"),
            (&INCOMING, &all_numbers(), ALLOWED),
        ],
    );
}

#[test]
fn authorize_locked_is_two_way_barred_except_emergency_and_10010() {
    let (rules, now) = shanghai_at("2026-10-08", 10);
    let account = valid_account(&rules, "2026-06-30", 5000, 0);
    assert_auth(
        Some(&account),
        now,
        Some(Locked),
        &[
            (&OUTGOING, &emergency_and(&["10010"]), ALLOWED),
            (&OUTGOING, &["10011", ORDINARY], "TWO_WAY_BARRED"),
            (&INCOMING, &all_numbers(), "TWO_WAY_BARRED"),
        ],
    );
}

#[test]
fn authorize_recycled_and_unknown_numbers_are_denied_everything() {
    let (rules, now) = shanghai_at("2027-01-16", 10);
    let (services, numbers) = (every_service(), all_numbers());
    let recycled = valid_account(&rules, "2026-06-30", 5000, 0);
    let expired_card = card(&rules, "2024-01-01", 5000);
    for (account, state, reason) in [
        (Some(&recycled), Some(Recycled), "ACCOUNT_RECYCLED"),
        (Some(&expired_card), Some(Recycled), "ACCOUNT_RECYCLED"),
        (None, None, "NOT_FOUND"),
    ] {
        assert_auth(account, now, state, &[(&services, &numbers, reason)]);
    }
}

#[test]
fn the_special_numbers_are_configuration() {
    let rules = Rules {
        special_numbers: vec!["999".into()],
        recharge_hotline: "1888".into(),
        ..shanghai()
    };
    let now = at(&rules, "2026-08-01", 10);
    let grace = valid_account(&rules, "2026-06-30", 0, 0);
    for (destination, allowed) in [
        ("999", true),
        ("1888", true),
        ("110", false),
        ("10010", false),
    ] {
        let auth = authorize(Some(&grace), VoiceOut, destination, now, &rules);
        assert_eq!(auth.allowed, allowed, "{destination}");
    }
}
