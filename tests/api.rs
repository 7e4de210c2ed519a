//! The API and storage conformance suite: every test runs through the real gRPC API against
//! an in-process server, once on SQLite and once on PostgreSQL (`both_backends!`).
//!
//! Time is the server's manual clock, fixed with `SetTime`: `T0` is 2030-03-01 10:00 in
//! Shanghai (02:00Z), so local midnight — where every lifecycle boundary lies — is 16:00Z of
//! the day before. Expected dates are written out, not computed, so they read as the rules.

#[macro_use]
mod common;

use common::{Backend, TestDb, TestServer, assert_rejected, reason, ts};
use ocs_lifecycle::config::ClockMode;
use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::{
    self, Account, AccountState, AuthorizeResponse, ChargeResult, HistoryEntry, HistoryKind,
    RechargeChannel, RechargeResult, ServiceType,
};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

/// 2030-03-01 10:00 Asia/Shanghai.
const T0: &str = "2030-03-01T02:00:00Z";

const STATE_UNACTIVATED: i32 = AccountState::Unactivated as i32;
const STATE_VALID: i32 = AccountState::Valid as i32;
const STATE_GRACE: i32 = AccountState::Grace as i32;
const STATE_LOCKED: i32 = AccountState::Locked as i32;
const STATE_RECYCLED: i32 = AccountState::Recycled as i32;

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A thin, panicking wrapper for the calls a scenario expects to succeed.
struct Api(AccountLifecycleClient<Channel>);

impl Api {
    fn of(server: &TestServer) -> Self {
        Api(server.accounts())
    }

    async fn provision_with(
        &mut self,
        msisdn: &str,
        preset: i64,
        sold: bool,
        days: u32,
    ) -> Account {
        let request = proto::ProvisionAccountRequest {
            msisdn: msisdn.into(),
            preset_balance: preset,
            sold,
            initial_validity_days: days,
            request_id: rid(),
        };
        self.0
            .provision_account(request)
            .await
            .expect("ProvisionAccount")
            .into_inner()
    }

    async fn provision(&mut self, msisdn: &str) -> Account {
        self.provision_with(msisdn, 0, true, 0).await
    }

    async fn mark_sold(&mut self, msisdn: &str) -> Account {
        let request = proto::MarkSoldRequest {
            msisdn: msisdn.into(),
            request_id: rid(),
        };
        self.0
            .mark_sold(request)
            .await
            .expect("MarkSold")
            .into_inner()
    }

    async fn activate(&mut self, msisdn: &str) -> Account {
        let request = proto::ActivateRequest {
            msisdn: msisdn.into(),
            request_id: rid(),
        };
        self.0
            .activate(request)
            .await
            .expect("Activate")
            .into_inner()
    }

    /// Provisions a sold card and activates it now.
    async fn active(&mut self, msisdn: &str) -> Account {
        self.provision(msisdn).await;
        self.activate(msisdn).await
    }

    async fn recharge_days(&mut self, msisdn: &str, amount: i64, days: u32) -> RechargeResult {
        let request = proto::RechargeRequest {
            msisdn: msisdn.into(),
            amount,
            channel: RechargeChannel::Online as i32,
            validity_days: days,
            request_id: rid(),
        };
        self.0
            .recharge(request)
            .await
            .expect("Recharge")
            .into_inner()
    }

    async fn recharge(&mut self, msisdn: &str, amount: i64) -> RechargeResult {
        self.recharge_days(msisdn, amount, 0).await
    }

    async fn charge(&mut self, msisdn: &str, amount: i64) -> ChargeResult {
        let request = proto::ChargeRequest {
            msisdn: msisdn.into(),
            amount,
            request_id: rid(),
        };
        self.0.charge(request).await.expect("Charge").into_inner()
    }

    async fn get(&mut self, msisdn: &str) -> Account {
        let request = proto::GetAccountRequest {
            msisdn: msisdn.into(),
        };
        self.0
            .get_account(request)
            .await
            .expect("GetAccount")
            .into_inner()
    }

    async fn history(&mut self, msisdn: &str) -> Vec<HistoryEntry> {
        let request = proto::GetAccountHistoryRequest {
            msisdn: msisdn.into(),
            page_size: 1000,
            page_token: String::new(),
        };
        let response = self
            .0
            .get_account_history(request)
            .await
            .expect("GetAccountHistory");
        response.into_inner().entries
    }

    async fn authorize(
        &mut self,
        msisdn: &str,
        service: ServiceType,
        destination: &str,
    ) -> AuthorizeResponse {
        let request = proto::AuthorizeRequest {
            msisdn: msisdn.into(),
            service: service as i32,
            destination: destination.into(),
        };
        self.0
            .authorize(request)
            .await
            .expect("Authorize")
            .into_inner()
    }

    /// One page of ListAccounts: the MSISDNs and the next page token.
    async fn list(&mut self, state: i32, page_size: u32, token: &str) -> (Vec<String>, String) {
        let request = proto::ListAccountsRequest {
            state,
            page_size,
            page_token: token.into(),
        };
        let page = self
            .0
            .list_accounts(request)
            .await
            .expect("ListAccounts")
            .into_inner();
        (
            page.accounts.into_iter().map(|a| a.msisdn).collect(),
            page.next_page_token,
        )
    }

    /// Every page of ListAccounts with `state`.
    async fn list_all(&mut self, state: i32, page_size: u32) -> Vec<String> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = self.list(state, page_size, &token).await;
            all.extend(page);
            if next.is_empty() {
                return all;
            }
            token = next;
        }
    }
}

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
    a_repeated_request_id_replays_the_first_result_and_applies_once,
    rejected_requests_change_nothing,
    an_unactivated_card_is_recycled_after_540_days_and_the_number_reprovisioned,
    an_account_left_alone_passes_grace_and_lock_and_is_recycled_at_each_boundary,
    list_accounts_pages_by_msisdn_and_filters_by_effective_state,
    authorize_bars_services_per_effective_state,
    concurrent_requests_on_one_account_serialise_exactly,
    two_servers_on_one_database_apply_each_request_exactly_once,
    the_test_clock_never_goes_backwards_and_health_is_serving,
    an_account_reads_back_exactly_as_it_was_answered,
    a_server_on_the_system_clock_has_no_test_clock,
    authorize_reuses_cached_facts_yet_turns_at_the_exact_second_and_after_mutations,
}

async fn provisioned_card_activates_recharges_and_charges_with_exact_dates(server: TestServer) {
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;

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
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;
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
    let result = api
        .0
        .recharge(request)
        .await
        .expect("Recharge")
        .into_inner();
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
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;
    api.active("8613800000003").await;
    api.active("8613800000004").await;

    // valid_until 2030-08-28: GRACE through 2030-11-26, LOCKED from 2030-11-27.
    server.set_time("2030-11-26T15:59:59Z").await;
    assert_eq!(api.get("8613800000003").await.state(), AccountState::Grace);
    server.set_time("2030-12-01T02:00:00Z").await;
    assert_eq!(api.get("8613800000003").await.state(), AccountState::Locked);

    let before = db.snapshot("8613800000003").await;
    for channel in [RechargeChannel::Card10011, RechargeChannel::BusinessHall] {
        let request = proto::RechargeRequest {
            msisdn: "8613800000003".into(),
            amount: 5000,
            channel: channel as i32,
            validity_days: 0,
            request_id: rid(),
        };
        assert_rejected(
            api.0.recharge(request).await,
            Code::FailedPrecondition,
            "ACCOUNT_LOCKED",
        );
    }
    let charge = proto::ChargeRequest {
        msisdn: "8613800000003".into(),
        amount: 1,
        request_id: rid(),
    };
    assert_rejected(
        api.0.charge(charge).await,
        Code::FailedPrecondition,
        "ACCOUNT_LOCKED",
    );
    assert_eq!(
        db.snapshot("8613800000003").await,
        before,
        "a refused recharge changes nothing"
    );

    // Unlock without a recharge: GRACE again, for 90 days from today, then 30 locked.
    let unlock = proto::UnlockRequest {
        msisdn: "8613800000003".into(),
        operator_id: "op7".into(),
        branch_id: "bh01".into(),
        recharge_amount: 0,
        request_id: rid(),
    };
    let unlocked = api.0.unlock(unlock).await.expect("Unlock").into_inner();
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
    let again = proto::UnlockRequest {
        msisdn: "8613800000003".into(),
        operator_id: "op7".into(),
        branch_id: "bh01".into(),
        recharge_amount: 0,
        request_id: rid(),
    };
    assert_rejected(
        api.0.unlock(again).await,
        Code::FailedPrecondition,
        "ACCOUNT_NOT_LOCKED",
    );

    // Unlock with a recharge: VALID, as a recharge from GRACE (180 days from today).
    let unlock = proto::UnlockRequest {
        msisdn: "8613800000004".into(),
        operator_id: "op8".into(),
        branch_id: "bh02".into(),
        recharge_amount: 5000,
        request_id: rid(),
    };
    let unlocked = api
        .0
        .unlock(unlock)
        .await
        .expect("Unlock with recharge")
        .into_inner();
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
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;
    let card = api.provision_with("8613800000005", 2000, false, 0).await;
    assert!(!card.sold);

    let before = db.snapshot("8613800000005").await;
    let activate = proto::ActivateRequest {
        msisdn: "8613800000005".into(),
        request_id: rid(),
    };
    assert_rejected(
        api.0.activate(activate).await,
        Code::FailedPrecondition,
        "SALE_LOCKED",
    );
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
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;
    api.provision_with("8613800000006", 300, true, 0).await;

    // Only a VALID account is charged.
    let early = proto::ChargeRequest {
        msisdn: "8613800000006".into(),
        amount: 1,
        request_id: rid(),
    };
    assert_rejected(
        api.0.charge(early).await,
        Code::FailedPrecondition,
        "NOT_ACTIVATED",
    );

    api.activate("8613800000006").await;
    api.recharge("8613800000006", 1000).await;

    let first = api.charge("8613800000006", 200).await;
    assert_eq!((first.charged_preset, first.charged_balance), (200, 0));
    let second = api.charge("8613800000006", 500).await;
    assert_eq!((second.charged_preset, second.charged_balance), (100, 400));
    let account = second.account.expect("account");
    assert_eq!((account.balance, account.preset_balance), (600, 0));

    let before = db.snapshot("8613800000006").await;
    let short = proto::ChargeRequest {
        msisdn: "8613800000006".into(),
        amount: 601,
        request_id: rid(),
    };
    assert_rejected(
        api.0.charge(short).await,
        Code::FailedPrecondition,
        "INSUFFICIENT_BALANCE",
    );
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
    let grace = proto::ChargeRequest {
        msisdn: "8613800000006".into(),
        amount: 1,
        request_id: rid(),
    };
    assert_rejected(
        api.0.charge(grace).await,
        Code::FailedPrecondition,
        "ACCOUNT_IN_GRACE",
    );
    db.close().await;
}

async fn a_repeated_request_id_replays_the_first_result_and_applies_once(server: TestServer) {
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;

    let provision = proto::ProvisionAccountRequest {
        msisdn: "8613800000007".into(),
        preset_balance: 0,
        sold: true,
        initial_validity_days: 0,
        request_id: "prov-7".into(),
    };
    let first = api
        .0
        .provision_account(provision.clone())
        .await
        .unwrap()
        .into_inner();
    let replay = api
        .0
        .provision_account(provision)
        .await
        .expect("replayed provision");
    assert_eq!(
        replay.into_inner(),
        first,
        "a retried provisioning is not ALREADY_EXISTS"
    );
    api.activate("8613800000007").await;

    let recharge = proto::RechargeRequest {
        msisdn: "8613800000007".into(),
        amount: 1000,
        channel: RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: "rch-7".into(),
    };
    let applied = api.0.recharge(recharge.clone()).await.unwrap().into_inner();
    assert!(!applied.replayed);
    let after_first = db.snapshot("8613800000007").await;

    // Later, after other changes, the retry still gets the first result.
    server.set_time("2030-03-05T02:00:00Z").await;
    let replayed = api.0.recharge(recharge.clone()).await.unwrap().into_inner();
    assert!(replayed.replayed);
    assert_eq!(
        RechargeResult {
            replayed: false,
            ..replayed
        },
        applied
    );
    assert_eq!(
        db.snapshot("8613800000007").await,
        after_first,
        "applied once"
    );
    assert_eq!(
        db.history_count("8613800000007", HistoryKind::Recharge as i32)
            .await,
        1
    );
    assert_eq!(db.account("8613800000007").await.unwrap().balance, 1000);

    // The same key with other parameters, or for another method, is refused.
    let other_amount = proto::RechargeRequest {
        amount: 2000,
        ..recharge.clone()
    };
    assert_rejected(
        api.0.recharge(other_amount).await,
        Code::AlreadyExists,
        "REQUEST_ID_REUSED",
    );
    let other_channel = proto::RechargeRequest {
        channel: RechargeChannel::Bank as i32,
        ..recharge.clone()
    };
    assert_rejected(
        api.0.recharge(other_channel).await,
        Code::AlreadyExists,
        "REQUEST_ID_REUSED",
    );
    let charge = proto::ChargeRequest {
        msisdn: "8613800000007".into(),
        amount: 1000,
        request_id: "rch-7".into(),
    };
    assert_rejected(
        api.0.charge(charge).await,
        Code::AlreadyExists,
        "REQUEST_ID_REUSED",
    );
    let provision = proto::ProvisionAccountRequest {
        msisdn: "8613800000077".into(),
        sold: true,
        request_id: "rch-7".into(),
        ..Default::default()
    };
    assert_rejected(
        api.0.provision_account(provision).await,
        Code::AlreadyExists,
        "REQUEST_ID_REUSED",
    );
    assert_eq!(db.raw_account("8613800000077").await, None);
    assert_eq!(db.snapshot("8613800000007").await, after_first);

    let charge = proto::ChargeRequest {
        msisdn: "8613800000007".into(),
        amount: 100,
        request_id: "chg-7".into(),
    };
    let charged = api.0.charge(charge.clone()).await.unwrap().into_inner();
    assert!(!charged.replayed);
    let replayed = api.0.charge(charge.clone()).await.unwrap().into_inner();
    assert!(replayed.replayed);
    assert_eq!(
        ChargeResult {
            replayed: false,
            ..replayed
        },
        charged
    );
    assert_eq!(db.account("8613800000007").await.unwrap().balance, 900);
    let after_charge = db.snapshot("8613800000007").await;
    db.close().await;

    // The keys are in the database: they survive a restart.
    let test_db = server.db.clone();
    server.stop().await;
    let server = TestServer::start_on(test_db, ClockMode::Manual).await;
    server.set_time("2030-03-06T02:00:00Z").await;
    let mut api = Api::of(&server);
    let db = server.db().await;
    let replayed = api
        .0
        .recharge(recharge)
        .await
        .expect("replay after restart")
        .into_inner();
    assert!(replayed.replayed);
    assert_eq!(
        RechargeResult {
            replayed: false,
            ..replayed
        },
        applied
    );
    let replayed = api
        .0
        .charge(charge)
        .await
        .expect("replay after restart")
        .into_inner();
    assert!(replayed.replayed);
    assert_eq!(
        db.snapshot("8613800000007").await,
        after_charge,
        "nothing applied twice"
    );
    db.close().await;
    server.stop().await;
}

async fn rejected_requests_change_nothing(server: TestServer) {
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;
    const M: &str = "8613800000008";
    api.active(M).await;
    api.recharge(M, 1000).await;
    let before = db.snapshot(M).await;
    let c = &mut api.0;

    for bad in [
        "",
        "123",
        "abc12345678",
        "1234567890123456",
        "+",
        "8613 800000008",
    ] {
        let provision = proto::ProvisionAccountRequest {
            msisdn: bad.into(),
            sold: true,
            request_id: rid(),
            ..Default::default()
        };
        assert_rejected(
            c.provision_account(provision).await,
            Code::InvalidArgument,
            "INVALID_MSISDN",
        );
        let recharge = proto::RechargeRequest {
            msisdn: bad.into(),
            amount: 1000,
            channel: RechargeChannel::Online as i32,
            validity_days: 0,
            request_id: rid(),
        };
        assert_rejected(
            c.recharge(recharge).await,
            Code::InvalidArgument,
            "INVALID_MSISDN",
        );
        let get = proto::GetAccountRequest { msisdn: bad.into() };
        assert_rejected(
            c.get_account(get).await,
            Code::InvalidArgument,
            "INVALID_MSISDN",
        );
        let authorize = proto::AuthorizeRequest {
            msisdn: bad.into(),
            service: ServiceType::VoiceOut as i32,
            destination: "110".into(),
        };
        assert_rejected(
            c.authorize(authorize).await,
            Code::InvalidArgument,
            "INVALID_MSISDN",
        );
    }

    let recharge = |amount: i64, channel: i32, request_id: &str| proto::RechargeRequest {
        msisdn: M.into(),
        amount,
        channel,
        validity_days: 0,
        request_id: request_id.into(),
    };
    let online = RechargeChannel::Online as i32;
    for amount in [0, -1, i64::MIN] {
        assert_rejected(
            c.recharge(recharge(amount, online, &rid())).await,
            Code::InvalidArgument,
            "INVALID_AMOUNT",
        );
        let charge = proto::ChargeRequest {
            msisdn: M.into(),
            amount,
            request_id: rid(),
        };
        assert_rejected(
            c.charge(charge).await,
            Code::InvalidArgument,
            "INVALID_AMOUNT",
        );
    }
    let provision = proto::ProvisionAccountRequest {
        msisdn: "8613800000099".into(),
        preset_balance: -1,
        sold: true,
        initial_validity_days: 0,
        request_id: rid(),
    };
    assert_rejected(
        c.provision_account(provision).await,
        Code::InvalidArgument,
        "INVALID_AMOUNT",
    );
    for channel in [0, 99, -1] {
        assert_rejected(
            c.recharge(recharge(1000, channel, &rid())).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }
    let authorize = proto::AuthorizeRequest {
        msisdn: M.into(),
        service: 0,
        destination: "110".into(),
    };
    assert_rejected(
        c.authorize(authorize).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let authorize = proto::AuthorizeRequest {
        msisdn: M.into(),
        service: 6,
        destination: "110".into(),
    };
    assert_rejected(
        c.authorize(authorize).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let list = proto::ListAccountsRequest {
        state: 0,
        page_size: 1001,
        page_token: String::new(),
    };
    assert_rejected(
        c.list_accounts(list).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let list = proto::ListAccountsRequest {
        state: 9,
        page_size: 10,
        page_token: String::new(),
    };
    assert_rejected(
        c.list_accounts(list).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let history = proto::GetAccountHistoryRequest {
        msisdn: M.into(),
        page_size: 1001,
        page_token: String::new(),
    };
    assert_rejected(
        c.get_account_history(history).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );

    let provision = proto::ProvisionAccountRequest {
        msisdn: "8613800000099".into(),
        sold: true,
        initial_validity_days: 541,
        request_id: rid(),
        ..Default::default()
    };
    assert_rejected(
        c.provision_account(provision).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let printed = proto::RechargeRequest {
        validity_days: 36_501,
        ..recharge(1000, online, &rid())
    };
    assert_rejected(
        c.recharge(printed).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let authorize = proto::AuthorizeRequest {
        msisdn: M.into(),
        service: ServiceType::VoiceOut as i32,
        destination: "10010abc".into(),
    };
    assert_rejected(
        c.authorize(authorize).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let long_key = "k".repeat(129);
    assert_rejected(
        c.recharge(recharge(1000, online, &long_key)).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );

    // Every mutating request needs its idempotency key.
    assert_rejected(
        c.recharge(recharge(1000, online, "")).await,
        Code::InvalidArgument,
        "MISSING_REQUEST_ID",
    );
    let charge = proto::ChargeRequest {
        msisdn: M.into(),
        amount: 1,
        request_id: String::new(),
    };
    assert_rejected(
        c.charge(charge).await,
        Code::InvalidArgument,
        "MISSING_REQUEST_ID",
    );
    let provision = proto::ProvisionAccountRequest {
        msisdn: "8613800000099".into(),
        sold: true,
        ..Default::default()
    };
    assert_rejected(
        c.provision_account(provision).await,
        Code::InvalidArgument,
        "MISSING_REQUEST_ID",
    );
    let sold = proto::MarkSoldRequest {
        msisdn: M.into(),
        request_id: String::new(),
    };
    assert_rejected(
        c.mark_sold(sold).await,
        Code::InvalidArgument,
        "MISSING_REQUEST_ID",
    );
    let activate = proto::ActivateRequest {
        msisdn: M.into(),
        request_id: String::new(),
    };
    assert_rejected(
        c.activate(activate).await,
        Code::InvalidArgument,
        "MISSING_REQUEST_ID",
    );
    let unlock = proto::UnlockRequest {
        msisdn: M.into(),
        operator_id: "op".into(),
        branch_id: "bh".into(),
        recharge_amount: 0,
        request_id: String::new(),
    };
    assert_rejected(
        c.unlock(unlock).await,
        Code::InvalidArgument,
        "MISSING_REQUEST_ID",
    );
    let unlock = proto::UnlockRequest {
        msisdn: M.into(),
        operator_id: String::new(),
        branch_id: "bh".into(),
        recharge_amount: 0,
        request_id: rid(),
    };
    assert_rejected(
        c.unlock(unlock).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );

    // An unknown MSISDN is NOT_FOUND, for reads and writes alike.
    let get = proto::GetAccountRequest {
        msisdn: "8613899999999".into(),
    };
    assert_rejected(
        c.get_account(get).await,
        Code::NotFound,
        "ACCOUNT_NOT_FOUND",
    );
    let unknown = proto::RechargeRequest {
        msisdn: "8613899999999".into(),
        ..recharge(1000, online, &rid())
    };
    assert_rejected(
        c.recharge(unknown).await,
        Code::NotFound,
        "ACCOUNT_NOT_FOUND",
    );
    let history = proto::GetAccountHistoryRequest {
        msisdn: "8613899999999".into(),
        ..Default::default()
    };
    assert_rejected(
        c.get_account_history(history).await,
        Code::NotFound,
        "ACCOUNT_NOT_FOUND",
    );

    // A live MSISDN cannot be provisioned again.
    let provision = proto::ProvisionAccountRequest {
        msisdn: M.into(),
        sold: true,
        request_id: rid(),
        ..Default::default()
    };
    assert_rejected(
        c.provision_account(provision).await,
        Code::AlreadyExists,
        "ACCOUNT_EXISTS",
    );

    assert_eq!(
        db.snapshot(M).await,
        before,
        "the rejected requests wrote nothing"
    );
    assert_eq!(db.raw_account("8613800000099").await, None);
    assert_eq!(db.raw_account("8613899999999").await, None);

    // A balance that would overflow is refused; the first recharge stands.
    const BIG: &str = "8613800000009";
    api.active(BIG).await;
    let max = api.recharge(BIG, i64::MAX).await;
    assert_eq!(max.balance_after, i64::MAX);
    let before = db.snapshot(BIG).await;
    let overflow = proto::RechargeRequest {
        msisdn: BIG.into(),
        ..recharge(i64::MAX, online, &rid())
    };
    assert_rejected(
        api.0.recharge(overflow).await,
        Code::InvalidArgument,
        "AMOUNT_OVERFLOW",
    );
    let one_more = proto::RechargeRequest {
        msisdn: BIG.into(),
        ..recharge(1, online, &rid())
    };
    assert_rejected(
        api.0.recharge(one_more).await,
        Code::InvalidArgument,
        "AMOUNT_OVERFLOW",
    );
    assert_eq!(db.snapshot(BIG).await, before);
    assert_eq!(db.account(BIG).await.unwrap().balance, i64::MAX);
    db.close().await;
}

async fn an_unactivated_card_is_recycled_after_540_days_and_the_number_reprovisioned(
    server: TestServer,
) {
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;
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
    let activate = proto::ActivateRequest {
        msisdn: M.into(),
        request_id: rid(),
    };
    assert_rejected(
        api.0.activate(activate).await,
        Code::FailedPrecondition,
        "ACCOUNT_RECYCLED",
    );
    let recharge = proto::RechargeRequest {
        msisdn: M.into(),
        amount: 1000,
        channel: RechargeChannel::Online as i32,
        validity_days: 0,
        request_id: rid(),
    };
    assert_rejected(
        api.0.recharge(recharge).await,
        Code::FailedPrecondition,
        "ACCOUNT_RECYCLED",
    );
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
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;
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
    let unlock = proto::UnlockRequest {
        msisdn: M.into(),
        operator_id: "op".into(),
        branch_id: "bh".into(),
        recharge_amount: 0,
        request_id: rid(),
    };
    assert_rejected(
        api.0.unlock(unlock).await,
        Code::FailedPrecondition,
        "ACCOUNT_RECYCLED",
    );
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
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;
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
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;
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

async fn concurrent_requests_on_one_account_serialise_exactly(server: TestServer) {
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    let db = server.db().await;
    const M: &str = "8613800000040";
    api.active(M).await;

    // 64 recharges with distinct keys from 8 clients, each on its own connection.
    let mut tasks = Vec::new();
    for task in 0..8i64 {
        let mut client = server.new_accounts_client().await;
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..8i64 {
                let amount = 100 + task * 8 + i;
                let request = proto::RechargeRequest {
                    msisdn: M.into(),
                    amount,
                    channel: RechargeChannel::Bank as i32,
                    validity_days: 1,
                    request_id: format!("par-{task}-{i}"),
                };
                let result = client.recharge(request).await.expect("parallel recharge");
                results.push((amount, result.into_inner()));
            }
            results
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.extend(task.await.expect("task"));
    }
    let total: i64 = (0..64).map(|i| 100 + i).sum();
    assert_eq!(results.len(), 64);
    assert!(results.iter().all(|(_, r)| !r.replayed));
    // No lost update: the recharges form one chain of balances from 0 to the total.
    results.sort_by_key(|(_, r)| r.balance_before);
    let mut expected_before = 0;
    for (amount, result) in &results {
        assert_eq!(result.balance_before, expected_before, "{result:?}");
        assert_eq!(result.balance_after, expected_before + amount, "{result:?}");
        expected_before = result.balance_after;
    }
    assert_eq!(expected_before, total);
    assert_eq!(api.get(M).await.balance, total);
    assert_eq!(db.account(M).await.unwrap().balance, total);
    assert_eq!(db.history_count(M, HistoryKind::Recharge as i32).await, 64);

    // The same request_id sent 8 times at once is applied once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = server.new_accounts_client().await;
        tasks.push(tokio::spawn(async move {
            let request = proto::RechargeRequest {
                msisdn: M.into(),
                amount: 777,
                channel: RechargeChannel::Online as i32,
                validity_days: 0,
                request_id: "same-key".into(),
            };
            client
                .recharge(request)
                .await
                .map(tonic::Response::into_inner)
        }));
    }
    let mut same = Vec::new();
    for task in tasks {
        same.push(task.await.expect("task").expect("same-key recharge"));
    }
    assert_eq!(same.iter().filter(|r| !r.replayed).count(), 1, "{same:?}");
    assert!(same.iter().all(|r| r.balance_after == total + 777));
    assert_eq!(db.account(M).await.unwrap().balance, total + 777);
    assert_eq!(db.history_count(M, HistoryKind::Recharge as i32).await, 65);

    // A new MSISDN provisioned at once by 8 callers: one wins, the others see it exists.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut client = server.new_accounts_client().await;
        tasks.push(tokio::spawn(async move {
            let request = proto::ProvisionAccountRequest {
                msisdn: "8613800000041".into(),
                preset_balance: 0,
                sold: true,
                initial_validity_days: 0,
                request_id: format!("prov-race-{i}"),
            };
            client
                .provision_account(request)
                .await
                .map(tonic::Response::into_inner)
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(account) => {
                won += 1;
                assert_eq!(account.generation, 1);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
                assert_eq!(reason(&status), "ACCOUNT_EXISTS");
            }
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        db.history_count("8613800000041", HistoryKind::Provisioned as i32)
            .await,
        1
    );
    assert_eq!(db.counts().await.accounts, 2);
    db.close().await;
}

async fn two_servers_on_one_database_apply_each_request_exactly_once(server: TestServer) {
    server.set_time(T0).await;
    let other = TestServer::start_on(server.db.clone(), ClockMode::Manual).await;
    other.set_time(T0).await;
    let db = server.db().await;
    const M: &str = "8613800000045";
    Api::of(&server).active(M).await;

    // Each recharge is sent to both servers at once, under the same key.
    let mut tasks = Vec::new();
    for (n, target) in [&server, &other, &server, &other].into_iter().enumerate() {
        let mut client = target.new_accounts_client().await;
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..16i64 {
                let request = proto::RechargeRequest {
                    msisdn: M.into(),
                    amount: 1000 + i,
                    channel: RechargeChannel::Online as i32,
                    validity_days: 0,
                    // Tasks 0/1 share keys, and so do tasks 2/3.
                    request_id: format!("two-{}-{i}", n / 2),
                };
                let result = client
                    .recharge(request)
                    .await
                    .expect("recharge")
                    .into_inner();
                results.push(result);
            }
            results
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.extend(task.await.expect("task"));
    }
    assert_eq!(
        results.iter().filter(|r| !r.replayed).count(),
        32,
        "each key applied once"
    );
    let total: i64 = 2 * (0..16).map(|i| 1000 + i).sum::<i64>();
    assert_eq!(db.account(M).await.unwrap().balance, total);
    assert_eq!(db.history_count(M, HistoryKind::Recharge as i32).await, 32);
    assert_eq!(
        db.count("idempotency_keys").await,
        2 + 32,
        "provision, activate, 32 recharges"
    );
    assert_eq!(Api::of(&other).get(M).await.balance, total);
    db.close().await;
    other.stop().await;
    server.stop().await;
}

async fn the_test_clock_never_goes_backwards_and_health_is_serving(server: TestServer) {
    let mut clock = server.clock();
    let now = clock
        .set_time(proto::SetTimeRequest { time: Some(ts(T0)) })
        .await
        .unwrap();
    assert_eq!(now.into_inner().now, Some(ts(T0)));
    let backwards = clock
        .set_time(proto::SetTimeRequest {
            time: Some(ts("2030-03-01T01:59:59Z")),
        })
        .await;
    assert_rejected(backwards, Code::FailedPrecondition, "");
    let backwards = clock
        .advance_time(proto::AdvanceTimeRequest { seconds: -1 })
        .await;
    assert_rejected(backwards, Code::FailedPrecondition, "");
    let got = clock
        .get_time(proto::GetTimeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.now,
        Some(ts(T0)),
        "a refused move leaves the clock where it was"
    );
    let advanced = clock
        .advance_time(proto::AdvanceTimeRequest { seconds: 86_400 })
        .await
        .unwrap();
    assert_eq!(advanced.into_inner().now, Some(ts("2030-03-02T02:00:00Z")));

    // The clock is the one the lifecycle uses.
    let mut api = Api::of(&server);
    let card = api.provision("8613800000050").await;
    assert_eq!(card.provisioned_at, Some(ts("2030-03-02T02:00:00Z")));

    let mut health = server.health();
    for service in [
        "",
        "ocs.lifecycle.v1.AccountLifecycle",
        "ocs.lifecycle.v1.TestClock",
    ] {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let status = health
            .check(request)
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
}

async fn an_account_reads_back_exactly_as_it_was_answered(server: TestServer) {
    let mut api = Api::of(&server);
    // The manual clock as it starts (the real time)...
    let provisioned = api.provision("8613800000070").await;
    assert_eq!(api.get("8613800000070").await, provisioned);
    // ...and set to an instant finer than PostgreSQL's microseconds.
    server.set_time("2030-03-01T02:00:00.123456789Z").await;
    let provisioned = api.provision("8613800000071").await;
    assert_eq!(api.get("8613800000071").await, provisioned);
    let activated = api.activate("8613800000071").await;
    assert_eq!(api.get("8613800000071").await, activated);
    let now = server
        .clock()
        .get_time(proto::GetTimeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        now.now,
        Some(ts("2030-03-01T02:00:00.123456Z")),
        "the clock keeps microseconds"
    );
}

async fn a_server_on_the_system_clock_has_no_test_clock(server: TestServer) {
    server.set_time(T0).await;
    let mut api = Api::of(&server);
    api.provision("8613800000060").await;

    let system = TestServer::start_on(server.db.clone(), ClockMode::System).await;
    let missing = system.clock().get_time(proto::GetTimeRequest {}).await;
    assert_rejected(missing, Code::Unimplemented, "");
    let missing = system
        .clock()
        .set_time(proto::SetTimeRequest { time: Some(ts(T0)) })
        .await;
    assert_rejected(missing, Code::Unimplemented, "");
    // The same database, served on the real clock.
    let mut system_api = Api::of(&system);
    assert_eq!(
        system_api.get("8613800000060").await.state(),
        AccountState::Unactivated
    );
    let mut health = system.health();
    let request = HealthCheckRequest {
        service: "ocs.lifecycle.v1.AccountLifecycle".into(),
    };
    let status = health
        .check(request)
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let request = HealthCheckRequest {
        service: "ocs.lifecycle.v1.TestClock".into(),
    };
    let test_clock = health.check(request).await.map(|r| r.into_inner().status);
    assert_ne!(
        test_clock.ok(),
        Some(ServingStatus::Serving as i32),
        "no TestClock to serve"
    );
    system.stop().await;
    server.stop().await;
}

/// The harness itself: a PostgreSQL test database is created fresh and dropped afterwards.
#[tokio::test]
async fn postgres_test_databases_are_created_fresh_and_dropped() {
    let Some(db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let name = db.url.rsplit('/').next().expect("database name").to_owned();
    assert!(name.starts_with("ocs_t_"), "{name}");
    let base = std::env::var("OCS_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| common::DEFAULT_PG_URL.to_owned());
    let exists = |base: String, name: String| async move {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&base).await.expect("connect");
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_optional(&mut conn)
            .await
            .expect("query pg_database");
        found.is_some()
    };
    assert!(exists(base.clone(), name.clone()).await);
    drop(db);
    assert!(
        !exists(base, name).await,
        "the test database is dropped with its last handle"
    );
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

    // Another server on the same database spends the whole balance: this server's warm entry
    // still allows the call (the documented bound), a server without that entry refuses it.
    server.set_time(&next).await;
    let mut elsewhere = Api::of(&server);
    elsewhere.charge(M, 1500).await;
    assert_eq!(
        elsewhere.authorize(M, VoiceOut, OTHER).await.reason,
        "INSUFFICIENT_BALANCE"
    );
    assert!(
        api.authorize(M, VoiceOut, OTHER).await.allowed,
        "served from the cache: the other server's write is seen within authorize_cache_ms"
    );
    // Any mutation request through this server evicts the entry, even one it refuses.
    let refused = api
        .0
        .charge(proto::ChargeRequest {
            msisdn: M.into(),
            amount: 1,
            request_id: rid(),
        })
        .await;
    assert_rejected(refused, Code::FailedPrecondition, "INSUFFICIENT_BALANCE");
    assert_eq!(
        api.authorize(M, VoiceOut, OTHER).await.reason,
        "INSUFFICIENT_BALANCE"
    );
    cached.stop().await;
}
