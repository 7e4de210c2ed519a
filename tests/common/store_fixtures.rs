//! Accounts, history rows, events and mutations to put in a store, for the storage
//! conformance suite (`tests/store_conformance.rs`).

use std::sync::Arc;

use chrono::{DateTime, Days, NaiveDate, Utc};
use ocs_lifecycle::lifecycle::{
    Account, AccountState, HistoryKind, Msisdn, Rules, TransitionReason,
};
use ocs_lifecycle::store::{
    self, AccountStore, Committed, Decide, EventType, HistoryRecord, Mutation, OutboxEvent,
    RequestKey,
};

use super::{TestDb, rid};

pub async fn open(db: &TestDb) -> Arc<dyn AccountStore> {
    let rules = Arc::new(Rules::default());
    let store = store::connect(&db.url, 2, store::DEFAULT_ACQUIRE_TIMEOUT, rules)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

pub fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

pub fn day(iso: &str) -> NaiveDate {
    iso.parse().expect("ISO date")
}

pub fn plus(date: NaiveDate, days: u64) -> NaiveDate {
    date.checked_add_days(Days::new(days)).expect("date")
}

/// 2030-03-01 10:00 in Shanghai.
pub fn t0() -> DateTime<Utc> {
    at("2030-03-01T02:00:00Z")
}

pub fn msisdn(n: u32) -> Msisdn {
    Msisdn::parse(&format!("86138{n:08}")).expect("msisdn")
}

/// An activated account, VALID through `valid_until`, then GRACE and LOCKED by the default
/// rules' periods; its VALIDITY_EXPIRING notice is already sent.
pub fn active(n: u32, valid_until: NaiveDate) -> Account {
    let rules = Rules::default();
    let grace_until = plus(valid_until, rules.grace_days.into());
    Account {
        msisdn: msisdn(n),
        account_id: format!("acc-{n}"),
        generation: 1,
        state: AccountState::Valid,
        balance: 1000,
        preset_balance: 0,
        sold: true,
        initial_validity_days: 180,
        provisioned_at: t0(),
        activated_at: Some(t0()),
        valid_until: Some(valid_until),
        grace_until: Some(grace_until),
        lock_until: Some(plus(grace_until, rules.lock_days.into())),
        card_expiry: None,
        recycled_at: None,
        updated_at: t0(),
        expiring_notified_for: Some(valid_until),
    }
}

/// A sold card never activated, recycled after `card_expiry`.
pub fn unactivated(n: u32, card_expiry: NaiveDate) -> Account {
    Account {
        state: AccountState::Unactivated,
        activated_at: None,
        valid_until: None,
        grace_until: None,
        lock_until: None,
        card_expiry: Some(card_expiry),
        expiring_notified_for: None,
        ..active(n, card_expiry)
    }
}

pub fn recycled(n: u32) -> Account {
    Account {
        state: AccountState::Recycled,
        recycled_at: Some(t0()),
        ..active(n, day("2029-01-01"))
    }
}

pub fn history(
    account: &Account,
    kind: HistoryKind,
    at: DateTime<Utc>,
    amount: i64,
) -> HistoryRecord {
    HistoryRecord {
        id: 0,
        msisdn: account.msisdn.clone(),
        account_id: account.account_id.clone(),
        generation: account.generation,
        at,
        kind,
        from_state: None,
        to_state: None,
        amount,
        actor: "billing".into(),
        request_id: Some(rid()),
        channel: None,
    }
}

pub fn event(account: &Account, emitted_at: DateTime<Utc>) -> OutboxEvent {
    OutboxEvent {
        sequence: 0,
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: EventType::StateChanged,
        msisdn: account.msisdn.clone(),
        account_id: account.account_id.clone(),
        generation: account.generation,
        from_state: AccountState::Valid,
        to_state: AccountState::Grace,
        reason: TransitionReason::ValidityExpired.as_str().into(),
        effective_at: emitted_at,
        emitted_at,
    }
}

/// A decision that writes `mutation` whatever the current account is.
pub fn writes(mutation: Mutation) -> Decide {
    Arc::new(move |_| Ok(mutation.clone()))
}

pub fn only(account: Account) -> Mutation {
    Mutation {
        archive: None,
        account,
        history: Vec::new(),
        events: Vec::new(),
        response: b"ok".to_vec(),
    }
}

pub fn key<'a>(request_id: &'a str, fingerprint: &'a str) -> RequestKey<'a> {
    RequestKey {
        request_id,
        fingerprint,
        now: t0(),
    }
}

/// Commits `mutation` under a fresh request_id.
pub async fn put(store: &dyn AccountStore, mutation: Mutation) -> Committed {
    let request_id = rid();
    let msisdn = mutation.account.msisdn.clone();
    store
        .mutate(&msisdn, key(&request_id, "put"), writes(mutation))
        .await
        .expect("mutate")
}

pub async fn put_all(store: &dyn AccountStore, accounts: impl IntoIterator<Item = Account>) {
    for account in accounts {
        put(store, only(account)).await;
    }
}

pub fn msisdns(accounts: &[Account]) -> Vec<String> {
    accounts.iter().map(|a| a.msisdn.to_string()).collect()
}

/// The row without the id the store assigned.
pub fn unnumbered(mut record: HistoryRecord) -> HistoryRecord {
    record.id = 0;
    record
}
