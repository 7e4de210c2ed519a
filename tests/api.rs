//! The API and storage conformance suite, the account's life: every test runs through the real
//! gRPC API against an in-process server, once on SQLite and once on PostgreSQL
//! (`both_backends!`). Requests as such (idempotency, validation, concurrency, several servers,
//! the test clock) are in tests/api_requests.rs.
//!
//! Time is the server's manual clock, fixed with `SetTime`: `T0` is 2030-03-01 10:00 in
//! Shanghai (02:00Z), so local midnight — where every lifecycle boundary lies — is 16:00Z of
//! the day before. Expected dates are written out, not computed, so they read as the rules.

#[macro_use]
mod common;

use common::api::{Api, T0, answer};
use common::{TestServer, assert_rejected, rid, ts};
use ocs_lifecycle::config::ClockMode;
use ocs_lifecycle::proto::{
    self, AccountState, HistoryEntry, HistoryKind, RechargeChannel, ServiceType,
};
use tonic::Code;

const STATE_UNACTIVATED: i32 = AccountState::Unactivated as i32;
const STATE_VALID: i32 = AccountState::Valid as i32;
const STATE_GRACE: i32 = AccountState::Grace as i32;
const STATE_LOCKED: i32 = AccountState::Locked as i32;
const STATE_RECYCLED: i32 = AccountState::Recycled as i32;

/// An outbox row in one line: type, transition, reason and effective instant.
fn event_line(event: &common::OutboxRow) -> String {
    let state = |s: i32| {
        AccountState::try_from(s).map_or("?", |s| {
            s.as_str_name().trim_start_matches("ACCOUNT_STATE_")
        })
    };
    let kind = proto::EventType::try_from(event.event_type)
        .map_or("?", |t| t.as_str_name().trim_start_matches("EVENT_TYPE_"));
    format!(
        "{kind} {}→{} {} {}",
        state(event.from_state),
        state(event.to_state),
        event.reason,
        event
            .effective_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// The history entry kinds, in order.
fn kinds(history: &[HistoryEntry]) -> Vec<HistoryKind> {
    history.iter().map(HistoryEntry::kind).collect()
}

/// Asserts a boundary transition recorded by the (virtual) sweep at its boundary instant.
#[track_caller]
fn assert_boundary(entry: &HistoryEntry, from: AccountState, to: AccountState, at: &str) {
    assert_eq!(entry.kind(), HistoryKind::StateChanged, "{entry:?}");
    assert_eq!(
        (entry.from_state(), entry.to_state()),
        (from, to),
        "{entry:?}"
    );
    assert_eq!(
        entry.at,
        Some(ts(at)),
        "a boundary transition is dated at its boundary: {entry:?}"
    );
    assert_eq!(entry.actor, "sweep", "{entry:?}");
    assert_eq!(entry.request_id, "", "{entry:?}");
}

/// Asserts that `result` was refused FAILED_PRECONDITION with `reason`.
#[track_caller]
fn assert_precondition<T: std::fmt::Debug>(result: Result<T, tonic::Status>, reason: &str) {
    assert_rejected(result, Code::FailedPrecondition, reason);
}

/// Asserts a request's history entry: the caller as actor, its request_id.
#[track_caller]
fn assert_caller_entry(entry: &HistoryEntry, kind: HistoryKind, amount: i64) {
    assert_eq!(entry.kind(), kind, "{entry:?}");
    assert_eq!(entry.amount, amount, "{entry:?}");
    assert!(
        !entry.request_id.is_empty(),
        "a request's history row keeps its request_id: {entry:?}"
    );
    assert!(
        !entry.actor.is_empty() && entry.actor != "sweep" && !entry.actor.contains('@'),
        "a request's history row names its caller: {entry:?}"
    );
}

both_backends! {
    provisioned_card_activates_recharges_and_charges_with_exact_dates,
    an_expired_account_is_in_grace_without_a_sweep_and_a_recharge_counts_from_today,
    a_locked_account_refuses_recharge_and_the_business_hall_unlocks_it,
    an_unsold_card_is_sale_locked_until_marked_sold,
    charges_use_the_preset_first_and_never_overdraw,
    an_unactivated_card_is_recycled_after_540_days_and_the_number_reprovisioned,
    an_account_left_alone_passes_grace_and_lock_and_is_recycled_at_each_boundary,
    list_accounts_pages_by_msisdn_and_filters_by_effective_state,
    authorize_bars_services_per_effective_state,
    authorize_reuses_cached_facts_yet_turns_at_the_exact_second_and_after_mutations,
}

async fn provisioned_card_activates_recharges_and_charges_with_exact_dates(server: TestServer) {
    let (mut api, db) = Api::at_t0(&server).await;

    // The leading '+' of E.164 is accepted and not stored.
    let card = api.provision_with("+8613800000001", 500, true, 0).await;
    assert_eq!(card.msisdn, "8613800000001");
    assert_eq!(card.generation, 1);
    assert!(!card.account_id.is_empty());
    assert_eq!(card.state(), AccountState::Unactivated);
    assert_eq!(
        (card.balance, card.preset_balance, card.sold),
        (0, 500, true)
    );
    assert_eq!(card.provisioned_at, Some(ts(T0)));
    assert_eq!(card.activated_at, None);
    // An unactivated card lives 540 days from its provisioning date.
    assert_eq!(card.card_expiry, "2031-08-23");
    assert_eq!(
        (card.valid_until.as_str(), card.grace_until.as_str()),
        ("", "")
    );

    let active = api.activate("8613800000001").await;
    assert_eq!(active.state(), AccountState::Valid);
    assert_eq!(active.account_id, card.account_id);
    assert_eq!(active.activated_at, Some(ts(T0)));
    // Validity starts at activation: 180 days, then 90 days of grace, then 30 locked.
    assert_eq!(active.valid_until, "2030-08-28");
    assert_eq!(active.grace_until, "2030-11-26");
    assert_eq!(active.lock_until, "2030-12-26");
    assert_eq!(
        active.card_expiry, "",
        "card_expiry is only for unactivated cards"
    );

    // 50 CNY grants 180 days, added to the remainder (the card carried preset credit).
    let recharged = api.recharge("8613800000001", 5000).await;
    assert!(!recharged.replayed);
    assert_eq!(recharged.valid_until_before, "2030-08-28");
    assert_eq!(recharged.valid_until_after, "2031-02-24");
    assert_eq!((recharged.days_granted, recharged.capped), (180, false));
    assert_eq!(
        (recharged.balance_before, recharged.balance_after),
        (0, 5000)
    );
    let account = recharged.account.expect("account");
    assert_eq!((account.balance, account.preset_balance), (5000, 500));
    assert_eq!(account.valid_until, "2031-02-24");
    assert_eq!(account.grace_until, "2031-05-25");

    // The validity never reaches past today + 540; the recharge still succeeds.
    let capped = api.recharge("8613800000001", 30000).await;
    assert_eq!((capped.days_granted, capped.capped), (540, true));
    assert_eq!(capped.valid_until_after, "2031-08-23");
    assert_eq!(capped.balance_after, 35000);

    // The preset bucket is used first.
    let charged = api.charge("8613800000001", 800).await;
    assert!(!charged.replayed);
    assert_eq!(
        (charged.charged_preset, charged.charged_balance),
        (500, 300)
    );
    let account = charged.account.expect("account");
    assert_eq!((account.balance, account.preset_balance), (34700, 0));

    let stored = db.account("8613800000001").await.expect("stored account");
    assert_eq!(
        (stored.state, stored.balance, stored.preset_balance),
        (STATE_VALID, 34700, 0)
    );
    assert_eq!(stored.valid_until, Some("2031-08-23".parse().unwrap()));
    assert_eq!(api.get("8613800000001").await, account);

    let history = api.history("8613800000001").await;
    assert_eq!(
        kinds(&history),
        [
            HistoryKind::Provisioned,
            HistoryKind::Activated,
            HistoryKind::Recharge,
            HistoryKind::Recharge,
            HistoryKind::Charge,
        ]
    );
    assert_caller_entry(&history[0], HistoryKind::Provisioned, 500);
    assert_caller_entry(&history[2], HistoryKind::Recharge, 5000);
    assert_caller_entry(&history[4], HistoryKind::Charge, 800);
    assert_eq!(
        (history[1].from_state(), history[1].to_state()),
        (AccountState::Unactivated, AccountState::Valid)
    );
    assert!(
        history
            .iter()
            .all(|e| e.at == Some(ts(T0)) && e.generation == 1)
    );
    assert!(history.iter().all(|e| e.account_id == card.account_id));
    db.close().await;
}

async fn an_expired_account_is_in_grace_without_a_sweep_and_a_recharge_counts_from_today(
    server: TestServer,
) {
    let (mut api, db) = Api::at_t0(&server).await;
    api.active("8613800000002").await;

    // The last valid day, to its last second.
    server.set_time("2030-08-28T15:59:59Z").await;
    assert_eq!(api.get("8613800000002").await.state(), AccountState::Valid);
    // Local midnight after valid_until: GRACE, though no sweep has run.
    server.set_time("2030-08-28T16:00:00Z").await;
    assert_eq!(api.get("8613800000002").await.state(), AccountState::Grace);
    assert_eq!(
        db.account("8613800000002").await.unwrap().state,
        STATE_VALID,
        "no sweep ran"
    );

    server.set_time("2030-09-10T02:00:00Z").await;
    let grace = api.get("8613800000002").await;
    assert_eq!(grace.state(), AccountState::Grace);
    assert_eq!(grace.valid_until, "2030-08-28");
    assert_eq!(grace.grace_until, "2030-11-26");

    // A recharge in GRACE acts as GRACE: VALID again, validity from today.
    let request_id = rid();
    let request = proto::RechargeRequest {
        msisdn: "8613800000002".into(),
        amount: 1000,
        channel: RechargeChannel::Bank as i32,
        validity_days: 0,
        request_id: request_id.clone(),
    };
    let result = answer("Recharge", api.0.recharge(request).await);
    assert_eq!(result.valid_until_before, "2030-08-28");
    assert_eq!(result.valid_until_after, "2030-10-10");
    assert_eq!(result.days_granted, 30);
    let account = result.account.expect("account");
    assert_eq!(account.state(), AccountState::Valid);
    assert_eq!(
        (account.valid_until.as_str(), account.grace_until.as_str()),
        ("2030-10-10", "2031-01-08")
    );
    assert_eq!(account.balance, 1000);

    let history = api.history("8613800000002").await;
    assert_eq!(
        kinds(&history),
        [
            HistoryKind::Provisioned,
            HistoryKind::Activated,
            HistoryKind::StateChanged,
            HistoryKind::Recharge,
        ]
    );
    assert_boundary(
        &history[2],
        AccountState::Valid,
        AccountState::Grace,
        "2030-08-28T16:00:00Z",
    );
    assert_caller_entry(&history[3], HistoryKind::Recharge, 1000);
    assert_eq!(history[3].request_id, request_id);
    assert_eq!(
        (history[3].from_state(), history[3].to_state()),
        (AccountState::Grace, AccountState::Valid)
    );
    assert_eq!(history[3].at, Some(ts("2030-09-10T02:00:00Z")));

    let events = db.outbox().await;
    let boundary = events
        .iter()
        .find(|e| (e.from_state, e.to_state) == (STATE_VALID, STATE_GRACE))
        .expect("a STATE_CHANGED event for VALID → GRACE");
    assert_eq!(boundary.event_type, proto::EventType::StateChanged as i32);
    assert_eq!(
        boundary.effective_at.to_rfc3339(),
        "2030-08-28T16:00:00+00:00"
    );
    db.close().await;
}

async fn a_locked_account_refuses_recharge_and_the_business_hall_unlocks_it(server: TestServer) {
    let (mut api, db) = Api::at_t0(&server).await;
    for msisdn in ["8613800000003", "8613800000004"] {
        api.active(msisdn).await;
    }

    // valid_until 2030-08-28: GRACE through 2030-11-26, LOCKED from 2030-11-27.
    server.set_time("2030-11-26T15:59:59Z").await;
    assert_eq!(api.get("8613800000003").await.state(), AccountState::Grace);
    server.set_time("2030-12-01T02:00:00Z").await;
    assert_eq!(api.get("8613800000003").await.state(), AccountState::Locked);

    let before = db.snapshot("8613800000003").await;
    for channel in [RechargeChannel::Card10011, RechargeChannel::BusinessHall] {
        let refused = api.try_recharge("8613800000003", 5000, channel).await;
        assert_precondition(refused, "ACCOUNT_LOCKED");
    }
    assert_precondition(api.try_charge("8613800000003", 1).await, "ACCOUNT_LOCKED");
    assert_eq!(
        db.snapshot("8613800000003").await,
        before,
        "a refused recharge changes nothing"
    );

    // Unlock without a recharge: GRACE again, for 90 days from today, then 30 locked.
    let unlocked = api.unlock("8613800000003", ("op7", "bh01"), 0).await;
    assert_eq!(unlocked.state(), AccountState::Grace);
    assert_eq!(unlocked.grace_until, "2031-03-01");
    assert_eq!(unlocked.lock_until, "2031-03-31");
    assert_eq!(api.get("8613800000003").await.state(), AccountState::Grace);

    let history = api.history("8613800000003").await;
    assert_eq!(
        kinds(&history),
        [
            HistoryKind::Provisioned,
            HistoryKind::Activated,
            HistoryKind::StateChanged,
            HistoryKind::StateChanged,
            HistoryKind::Unlock,
        ]
    );
    assert_boundary(
        &history[2],
        AccountState::Valid,
        AccountState::Grace,
        "2030-08-28T16:00:00Z",
    );
    assert_boundary(
        &history[3],
        AccountState::Grace,
        AccountState::Locked,
        "2030-11-26T16:00:00Z",
    );
    assert_eq!(history[4].actor, "op7@bh01");
    assert_eq!(
        (history[4].from_state(), history[4].to_state()),
        (AccountState::Locked, AccountState::Grace)
    );

    // The account ages again from the unlock's dates.
    let stored_state = db.account("8613800000003").await.unwrap().state;
    assert_eq!(
        stored_state, STATE_GRACE,
        "the unlock materialised its state"
    );

    // Only a LOCKED account is unlocked.
    let again = api.try_unlock("8613800000003", ("op7", "bh01"), 0).await;
    assert_precondition(again, "ACCOUNT_NOT_LOCKED");

    // Unlock with a recharge: VALID, as a recharge from GRACE (180 days from today).
    let unlocked = api.unlock("8613800000004", ("op8", "bh02"), 5000).await;
    assert_eq!(unlocked.state(), AccountState::Valid);
    assert_eq!(unlocked.balance, 5000);
    assert_eq!(unlocked.valid_until, "2031-05-30");
    assert_eq!(unlocked.grace_until, "2031-08-28");
    assert_eq!(unlocked.lock_until, "2031-09-27");
    let history = api.history("8613800000004").await;
    let last = history.last().expect("history");
    assert_eq!(last.kind(), HistoryKind::Unlock);
    assert_eq!((last.actor.as_str(), last.amount), ("op8@bh02", 5000));
    assert_eq!(
        (last.from_state(), last.to_state()),
        (AccountState::Locked, AccountState::Valid)
    );
    let stored = db.account("8613800000004").await.unwrap();
    assert_eq!((stored.state, stored.balance), (STATE_VALID, 5000));

    // Unlocked without a recharge, the account locks again after its new grace_until.
    server.set_time("2031-03-01T15:59:59Z").await;
    assert_eq!(api.get("8613800000003").await.state(), AccountState::Grace);
    server.set_time("2031-03-01T16:00:00Z").await;
    assert_eq!(api.get("8613800000003").await.state(), AccountState::Locked);
    assert_eq!(api.list_all(STATE_LOCKED, 10).await, ["8613800000003"]);
    server.set_time("2031-03-31T16:00:00Z").await;
    let recycled = api.get("8613800000003").await;
    assert_eq!(recycled.state(), AccountState::Recycled);
    assert_eq!(recycled.recycled_at, Some(ts("2031-03-31T16:00:00Z")));
    db.close().await;
}

async fn an_unsold_card_is_sale_locked_until_marked_sold(server: TestServer) {
    let (mut api, db) = Api::at_t0(&server).await;
    let card = api.provision_with("8613800000005", 2000, false, 0).await;
    assert!(!card.sold);

    let before = db.snapshot("8613800000005").await;
    assert_precondition(api.try_activate("8613800000005").await, "SALE_LOCKED");
    assert_eq!(db.snapshot("8613800000005").await, before);
    // Preset credit cannot be used before the sale: everything is denied.
    for (service, destination) in [
        (ServiceType::VoiceOut, "110"),
        (ServiceType::VoiceIn, ""),
        (ServiceType::Data, ""),
    ] {
        let decision = api.authorize("8613800000005", service, destination).await;
        assert!(!decision.allowed, "{service:?}");
        assert_eq!(decision.reason, "SALE_LOCKED");
        assert_eq!(decision.state(), AccountState::Unactivated);
    }

    let sold = api.mark_sold("8613800000005").await;
    assert!(sold.sold);
    assert_eq!(sold.state(), AccountState::Unactivated);
    // Sold but unactivated: special numbers only.
    assert!(
        api.authorize("8613800000005", ServiceType::VoiceOut, "10010")
            .await
            .allowed
    );
    let other = api
        .authorize("8613800000005", ServiceType::VoiceOut, "13900000000")
        .await;
    assert_eq!(
        (other.allowed, other.reason.as_str()),
        (false, "NOT_ACTIVATED")
    );

    let active = api.activate("8613800000005").await;
    assert_eq!(active.state(), AccountState::Valid);
    assert_eq!(active.valid_until, "2030-08-28");
    let history_rows = db.count("account_history").await;

    // The first call of a race activates; a later one gets the account unchanged.
    server.set_time("2030-03-02T02:00:00Z").await;
    let again = api.activate("8613800000005").await;
    assert_eq!(
        again, active,
        "a second Activate returns the account unchanged"
    );
    assert_eq!(
        db.count("account_history").await,
        history_rows,
        "and records nothing"
    );
    assert_eq!(
        kinds(&api.history("8613800000005").await),
        [
            HistoryKind::Provisioned,
            HistoryKind::Sold,
            HistoryKind::Activated
        ]
    );
    db.close().await;
}

async fn charges_use_the_preset_first_and_never_overdraw(server: TestServer) {
    let (mut api, db) = Api::at_t0(&server).await;
    api.provision_with("8613800000006", 300, true, 0).await;

    // Only a VALID account is charged.
    let early = api.try_charge("8613800000006", 1).await;
    assert_precondition(early, "NOT_ACTIVATED");

    api.activate("8613800000006").await;
    api.recharge("8613800000006", 1000).await;

    let first = api.charge("8613800000006", 200).await;
    assert_eq!((first.charged_preset, first.charged_balance), (200, 0));
    let second = api.charge("8613800000006", 500).await;
    assert_eq!((second.charged_preset, second.charged_balance), (100, 400));
    let account = second.account.expect("account");
    assert_eq!((account.balance, account.preset_balance), (600, 0));

    let before = db.snapshot("8613800000006").await;
    let short = api.try_charge("8613800000006", 601).await;
    assert_precondition(short, "INSUFFICIENT_BALANCE");
    assert_eq!(
        db.snapshot("8613800000006").await,
        before,
        "nothing debited"
    );
    let stored = db.account("8613800000006").await.unwrap();
    assert_eq!((stored.balance, stored.preset_balance), (600, 0));

    // The whole balance can be charged, down to zero.
    let all = api.charge("8613800000006", 600).await;
    assert_eq!((all.charged_preset, all.charged_balance), (0, 600));
    assert_eq!(db.account("8613800000006").await.unwrap().balance, 0);

    // In GRACE (the 30 days of the recharge ran out on 2030-09-27) nothing is charged.
    server.set_time("2030-09-28T02:00:00Z").await;
    let grace = api.try_charge("8613800000006", 1).await;
    assert_precondition(grace, "ACCOUNT_IN_GRACE");
    db.close().await;
}

async fn an_unactivated_card_is_recycled_after_540_days_and_the_number_reprovisioned(
    server: TestServer,
) {
    let (mut api, db) = Api::at_t0(&server).await;
    const M: &str = "8613800000010";
    let first = api.provision_with(M, 1000, true, 0).await;
    assert_eq!(first.card_expiry, "2031-08-23");

    server.set_time("2031-08-23T15:59:59Z").await;
    assert_eq!(api.get(M).await.state(), AccountState::Unactivated);
    server.set_time("2031-08-23T16:00:00Z").await;
    let recycled = api.get(M).await;
    assert_eq!(recycled.state(), AccountState::Recycled);
    assert_eq!(recycled.recycled_at, Some(ts("2031-08-23T16:00:00Z")));

    // A recycled number takes nothing and allows nothing.
    let before = db.snapshot(M).await;
    assert_precondition(api.try_activate(M).await, "ACCOUNT_RECYCLED");
    let recharge = api.try_recharge(M, 1000, RechargeChannel::Online).await;
    assert_precondition(recharge, "ACCOUNT_RECYCLED");
    assert_eq!(db.snapshot(M).await, before);
    let decision = api.authorize(M, ServiceType::VoiceOut, "110").await;
    assert_eq!(
        (decision.allowed, decision.reason.as_str()),
        (false, "ACCOUNT_RECYCLED")
    );
    assert_eq!(decision.state(), AccountState::Recycled);

    server.set_time("2031-09-01T02:00:00Z").await;
    assert_eq!(api.list_all(STATE_RECYCLED, 10).await, [M]);
    let second = api.provision(M).await;
    assert_eq!(second.generation, 2);
    assert_ne!(second.account_id, first.account_id);
    assert_eq!(second.state(), AccountState::Unactivated);
    assert_eq!((second.balance, second.preset_balance), (0, 0));
    assert_eq!(second.card_expiry, "2033-02-22");
    assert_eq!(api.get(M).await, second);

    // The BSS is told: a STATE_CHANGED and a NUMBER_RECYCLED of the first life, dated at
    // the boundary.
    let events = db.outbox().await;
    assert_eq!(
        events.iter().map(event_line).collect::<Vec<_>>(),
        [
            "STATE_CHANGED UNACTIVATED→RECYCLED UNACTIVATED_EXPIRED 2031-08-23T16:00:00Z",
            "NUMBER_RECYCLED UNACTIVATED→RECYCLED UNACTIVATED_EXPIRED 2031-08-23T16:00:00Z",
        ]
    );
    for event in &events {
        assert_eq!(event.msisdn, M);
        assert_eq!(event.account_id, first.account_id);
        assert_eq!(event.generation, 1);
    }
    let counts = db.counts().await;
    assert_eq!(
        (counts.accounts, counts.archive),
        (1, 1),
        "the first life is archived"
    );

    let history = api.history(M).await;
    assert_eq!(
        kinds(&history),
        [
            HistoryKind::Provisioned,
            HistoryKind::StateChanged,
            HistoryKind::Provisioned
        ]
    );
    assert_boundary(
        &history[1],
        AccountState::Unactivated,
        AccountState::Recycled,
        "2031-08-23T16:00:00Z",
    );
    assert_eq!(
        history
            .iter()
            .map(|e| (e.generation, e.account_id.clone()))
            .collect::<Vec<_>>(),
        [
            (1, first.account_id.clone()),
            (1, first.account_id.clone()),
            (2, second.account_id.clone())
        ]
    );
    db.close().await;
}

async fn an_account_left_alone_passes_grace_and_lock_and_is_recycled_at_each_boundary(
    server: TestServer,
) {
    let (mut api, db) = Api::at_t0(&server).await;
    const M: &str = "8613800000011";
    let first = api.active(M).await;
    assert_eq!(
        (
            first.valid_until.as_str(),
            first.grace_until.as_str(),
            first.lock_until.as_str()
        ),
        ("2030-08-28", "2030-11-26", "2030-12-26")
    );

    server.set_time("2030-12-26T15:59:59Z").await;
    assert_eq!(api.get(M).await.state(), AccountState::Locked);
    server.set_time("2030-12-26T16:00:00Z").await;
    let recycled = api.get(M).await;
    assert_eq!(recycled.state(), AccountState::Recycled);
    assert_eq!(recycled.recycled_at, Some(ts("2030-12-26T16:00:00Z")));
    assert_eq!(api.list_all(STATE_RECYCLED, 10).await, [M]);
    let unlock = api.try_unlock(M, ("op", "bh"), 0).await;
    assert_precondition(unlock, "ACCOUNT_RECYCLED");
    // So far the outbox holds the activation only: no sweep ran, nothing is materialised.
    let activation = db.outbox().await;
    assert_eq!(activation.len(), 1, "{activation:?}");
    assert_eq!(
        (activation[0].from_state, activation[0].to_state),
        (STATE_UNACTIVATED, STATE_VALID)
    );
    assert_eq!(activation[0].reason, "ACTIVATED");
    assert_eq!(
        activation[0].effective_at.to_rfc3339(),
        "2030-03-01T02:00:00+00:00"
    );

    // Months later the number is provisioned again: the first life's three boundaries
    // are materialised, each at its own instant, and the BSS is told of the recycle.
    server.set_time("2031-02-01T02:00:00Z").await;
    let second = api.provision(M).await;
    assert_eq!(second.generation, 2);
    let events = db.outbox().await.split_off(1);
    assert_eq!(
        events.iter().map(event_line).collect::<Vec<_>>(),
        [
            "STATE_CHANGED VALID→GRACE VALIDITY_EXPIRED 2030-08-28T16:00:00Z",
            "STATE_CHANGED GRACE→LOCKED GRACE_EXPIRED 2030-11-26T16:00:00Z",
            "STATE_CHANGED LOCKED→RECYCLED LOCK_EXPIRED 2030-12-26T16:00:00Z",
            "NUMBER_RECYCLED LOCKED→RECYCLED LOCK_EXPIRED 2030-12-26T16:00:00Z",
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e.account_id == first.account_id && e.generation == 1)
    );
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));

    // The history, read in pages of two.
    let mut history = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let request = proto::GetAccountHistoryRequest {
            msisdn: M.into(),
            page_size: 2,
            page_token: token,
        };
        let page = api
            .0
            .get_account_history(request)
            .await
            .expect("history page")
            .into_inner();
        assert!(page.entries.len() <= 2);
        history.extend(page.entries);
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(
        kinds(&history),
        [
            HistoryKind::Provisioned,
            HistoryKind::Activated,
            HistoryKind::StateChanged,
            HistoryKind::StateChanged,
            HistoryKind::StateChanged,
            HistoryKind::Provisioned,
        ]
    );
    assert_boundary(
        &history[2],
        AccountState::Valid,
        AccountState::Grace,
        "2030-08-28T16:00:00Z",
    );
    assert_boundary(
        &history[3],
        AccountState::Grace,
        AccountState::Locked,
        "2030-11-26T16:00:00Z",
    );
    assert_boundary(
        &history[4],
        AccountState::Locked,
        AccountState::Recycled,
        "2030-12-26T16:00:00Z",
    );
    assert_eq!(
        (history[5].generation, &history[5].account_id),
        (2, &second.account_id)
    );
    let bad = proto::GetAccountHistoryRequest {
        msisdn: M.into(),
        page_size: 2,
        page_token: "x".into(),
    };
    assert_rejected(
        api.0.get_account_history(bad).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    db.close().await;
}

async fn list_accounts_pages_by_msisdn_and_filters_by_effective_state(server: TestServer) {
    let (mut api, db) = Api::at_t0(&server).await;
    for m in [
        "8613800000025",
        "8613800000021",
        "8613800000023",
        "8613800000022",
        "8613800000024",
    ] {
        api.provision(m).await;
    }
    api.activate("8613800000021").await;
    api.activate("8613800000022").await;
    api.recharge_days("8613800000023", 100, 300).await;
    api.activate("8613800000023").await;
    api.recharge_days("8613800000023", 100, 300).await;

    let (page, token) = api.list(0, 2, "").await;
    assert_eq!(page, ["8613800000021", "8613800000022"]);
    let (page, token) = api.list(0, 2, &token).await;
    assert_eq!(page, ["8613800000023", "8613800000024"]);
    let (page, token) = api.list(0, 2, &token).await;
    assert_eq!(
        (page, token.as_str()),
        (vec!["8613800000025".to_owned()], "")
    );
    assert_eq!(
        api.list_all(0, 0).await.len(),
        5,
        "page_size 0 is the default"
    );

    // Past valid_until, 21 and 22 are listed under GRACE although no sweep has run.
    server.set_time("2030-09-07T02:00:00Z").await;
    assert_eq!(
        db.account("8613800000021").await.unwrap().state,
        STATE_VALID
    );
    assert_eq!(
        api.list_all(STATE_GRACE, 1).await,
        ["8613800000021", "8613800000022"]
    );
    assert_eq!(api.list_all(STATE_VALID, 1).await, ["8613800000023"]);
    assert_eq!(
        api.list_all(STATE_UNACTIVATED, 10).await,
        ["8613800000024", "8613800000025"]
    );
    assert_eq!(api.list_all(STATE_LOCKED, 10).await, Vec::<String>::new());
    let page = api
        .0
        .list_accounts(proto::ListAccountsRequest {
            state: STATE_GRACE,
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        page.accounts
            .iter()
            .all(|a| a.state() == AccountState::Grace)
    );

    let bad = proto::ListAccountsRequest {
        state: 0,
        page_size: 10,
        page_token: "not-a-token".into(),
    };
    assert_rejected(
        api.0.list_accounts(bad).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    db.close().await;
}

async fn authorize_bars_services_per_effective_state(server: TestServer) {
    use AccountState::{Grace, Locked, Unspecified, Valid};
    use ServiceType::{Data, SmsIn, SmsOut, VoiceIn, VoiceOut};
    let (mut api, db) = Api::at_t0(&server).await;
    const FUNDED: &str = "8613800000031"; // VALID with a balance
    const EMPTY: &str = "8613800000032"; // VALID, nothing to spend
    const GRACE: &str = "8613800000033"; // valid until 2030-04-30: GRACE from 2030-05-01
    const LOCKED: &str = "8613800000034"; // valid until 2030-03-08: LOCKED from 2030-06-07
    api.active(FUNDED).await;
    api.recharge_days(FUNDED, 1000, 400).await;
    api.active(EMPTY).await;
    api.provision_with(GRACE, 0, true, 60).await;
    api.activate(GRACE).await;
    api.provision_with(LOCKED, 0, true, 7).await;
    api.activate(LOCKED).await;
    server.set_time("2030-06-20T02:00:00Z").await;
    let before = db.counts().await;

    const OTHER: &str = "13900000000";
    // (MSISDN, service, destination, the refusal's reason or "" when allowed, state)
    #[rustfmt::skip]
    let cases: &[(&str, ServiceType, &str, &str, AccountState)] = &[
        (FUNDED, VoiceOut, OTHER, "", Valid),
        (FUNDED, Data, "", "", Valid),
        (FUNDED, SmsIn, "", "", Valid),
        (EMPTY, VoiceOut, OTHER, "INSUFFICIENT_BALANCE", Valid),
        (EMPTY, SmsOut, OTHER, "INSUFFICIENT_BALANCE", Valid),
        (EMPTY, VoiceOut, "10011", "", Valid),
        (EMPTY, VoiceIn, "", "", Valid),
        (GRACE, VoiceOut, "10010", "", Grace),
        (GRACE, VoiceOut, "+10010", "", Grace),
        (GRACE, VoiceOut, "120", "", Grace),
        (GRACE, VoiceOut, "10011", "", Grace),
        (GRACE, VoiceOut, OTHER, "ONE_WAY_BARRED", Grace),
        (GRACE, SmsOut, OTHER, "ONE_WAY_BARRED", Grace),
        (GRACE, Data, "", "ONE_WAY_BARRED", Grace),
        (GRACE, VoiceIn, "", "", Grace),
        (GRACE, SmsIn, "", "", Grace),
        (LOCKED, VoiceOut, "10011", "TWO_WAY_BARRED", Locked),
        (LOCKED, VoiceOut, OTHER, "TWO_WAY_BARRED", Locked),
        (LOCKED, VoiceOut, "110", "", Locked),
        (LOCKED, VoiceOut, "10010", "", Locked),
        (LOCKED, VoiceIn, "", "TWO_WAY_BARRED", Locked),
        (LOCKED, SmsIn, "", "TWO_WAY_BARRED", Locked),
        ("8613899999999", VoiceOut, "110", "NOT_FOUND", Unspecified),
        ("8613899999999", VoiceIn, "", "NOT_FOUND", Unspecified),
    ];
    for &(msisdn, service, destination, why, state) in cases {
        let decision = api.authorize(msisdn, service, destination).await;
        let case = format!("{msisdn} {service:?} → {destination:?}");
        assert_eq!(decision.allowed, why.is_empty(), "{case}: {decision:?}");
        assert_eq!(decision.reason, why, "{case}: {decision:?}");
        assert_eq!(decision.state(), state, "{case}: {decision:?}");
    }
    assert_eq!(db.counts().await, before, "Authorize is a read");
    assert_eq!(
        db.account(GRACE).await.unwrap().state,
        STATE_VALID,
        "and materialises nothing"
    );
    db.close().await;
}

/// Authorize caches account facts (`authorize_cache_ms`), never decisions: a warm entry still
/// turns GRACE at local midnight to the second, a mutation through the server evicts it, and
/// only a write through *another* server is seen late (bounded by the setting).
async fn authorize_reuses_cached_facts_yet_turns_at_the_exact_second_and_after_mutations(
    server: TestServer,
) {
    use ServiceType::VoiceOut;
    const M: &str = "8613800000071";
    const OTHER: &str = "13900000000";
    let config = ocs_lifecycle::config::Config {
        authorize_cache_ms: 600_000,
        ..common::test_config(ClockMode::Manual)
    };
    let cached = TestServer::start_with(server.db.clone(), config).await;
    // On PostgreSQL the cache is on once the server listens for other servers' changes.
    cached.authorize_cache_on().await;
    cached.set_time(T0).await;
    let mut api = Api::of(&cached);
    api.active(M).await;
    let valid_until = api.recharge_days(M, 1000, 10).await.valid_until_after;
    // Asia/Shanghai: the last second of the last valid day, then the first second after it.
    let last = format!("{valid_until}T23:59:59+08:00");
    let day = chrono::NaiveDate::parse_from_str(&valid_until, "%Y-%m-%d").unwrap();
    let next = format!("{}T00:00:00+08:00", day.succ_opt().unwrap());

    cached.set_time(&last).await;
    let decision = api.authorize(M, VoiceOut, OTHER).await;
    assert_eq!(
        (decision.allowed, decision.state()),
        (true, AccountState::Valid)
    );
    cached.set_time(&next).await;
    let decision = api.authorize(M, VoiceOut, OTHER).await;
    assert_eq!(
        (decision.allowed, decision.reason.as_str(), decision.state()),
        (false, "ONE_WAY_BARRED", AccountState::Grace),
        "the cached facts are evaluated at the new second"
    );

    // A recharge through this server is seen at once.
    api.recharge_days(M, 500, 10).await;
    let decision = api.authorize(M, VoiceOut, OTHER).await;
    assert_eq!(
        (decision.allowed, decision.state()),
        (true, AccountState::Valid)
    );

    // A write no server announces (SQL by hand; on SQLite also another server's) is seen only
    // within authorize_cache_ms: the entry the recharge's commit filled answers from the
    // balance underneath it. (On PostgreSQL this server ignores its own announcements.)
    let writer = server.db.open_for_writing().await;
    let set_balance =
        |balance: i64| format!("UPDATE accounts SET balance = {balance} WHERE msisdn = '{M}'");
    writer.execute(&set_balance(0)).await;
    assert!(
        api.authorize(M, VoiceOut, OTHER).await.allowed,
        "served from the cache: a write no server announces is seen within authorize_cache_ms"
    );
    writer.execute(&set_balance(1500)).await;
    writer.close().await;

    // Another server on the same database spends the whole balance: a server without this
    // server's entry refuses the call at once (this server's entry is stale until the entry
    // expires on SQLite, until the NOTIFY evicts it on PostgreSQL: tests/authorize_cache.rs).
    server.set_time(&next).await;
    let mut elsewhere = Api::of(&server);
    elsewhere.charge(M, 1500).await;
    assert_eq!(
        elsewhere.authorize(M, VoiceOut, OTHER).await.reason,
        "INSUFFICIENT_BALANCE"
    );
    // Any mutation request through this server evicts the entry, even one it refuses.
    assert_precondition(api.try_charge(M, 1).await, "INSUFFICIENT_BALANCE");
    assert_eq!(
        api.authorize(M, VoiceOut, OTHER).await.reason,
        "INSUFFICIENT_BALANCE"
    );
    cached.stop().await;
}
