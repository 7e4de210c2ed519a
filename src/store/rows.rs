//! Row types shared by both backends and their conversion to and from the domain.

use chrono::{DateTime, NaiveDate, Utc};

use super::sweeps::{RunCounts, SWEPT_REASONS, SweepRun, SweepRunStatus, transition_column};
use super::{EventType, HistoryRecord, OutboxEvent, StoreError};
use crate::lifecycle::{Account, AccountState, HistoryKind, Msisdn, RechargeChannel, Rules};

pub(crate) const ACCOUNT_COLUMNS: &str = "msisdn, account_id, generation, state, balance, \
    preset_balance, sold, initial_validity_days, provisioned_at, activated_at, valid_until, \
    grace_until, lock_until, card_expiry, recycled_at, updated_at, next_deadline, \
    expiring_notified_for";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AccountRow {
    pub msisdn: String,
    pub account_id: String,
    pub generation: i64,
    pub state: i32,
    pub balance: i64,
    pub preset_balance: i64,
    pub sold: bool,
    pub initial_validity_days: i32,
    pub provisioned_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub valid_until: Option<NaiveDate>,
    pub grace_until: Option<NaiveDate>,
    pub lock_until: Option<NaiveDate>,
    pub card_expiry: Option<NaiveDate>,
    pub recycled_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub next_deadline: Option<i64>,
    pub expiring_notified_for: Option<NaiveDate>,
}

fn corrupt(what: &str, value: impl std::fmt::Debug) -> StoreError {
    StoreError::Internal(format!("stored {what} {value:?} is not valid"))
}

pub(crate) fn state(value: i32) -> Result<AccountState, StoreError> {
    AccountState::from_i32(value).ok_or_else(|| corrupt("state", value))
}

impl AccountRow {
    pub fn from_account(account: &Account, rules: &Rules) -> Self {
        Self {
            msisdn: account.msisdn.as_str().to_owned(),
            account_id: account.account_id.clone(),
            generation: i64::from(account.generation),
            state: account.state as i32,
            balance: account.balance,
            preset_balance: account.preset_balance,
            sold: account.sold,
            initial_validity_days: account.initial_validity_days as i32,
            provisioned_at: account.provisioned_at,
            activated_at: account.activated_at,
            valid_until: account.valid_until,
            grace_until: account.grace_until,
            lock_until: account.lock_until,
            card_expiry: account.card_expiry,
            recycled_at: account.recycled_at,
            updated_at: account.updated_at,
            next_deadline: account.next_deadline(rules).map(|d| d.timestamp()),
            expiring_notified_for: account.expiring_notified_for,
        }
    }

    pub fn into_account(self) -> Result<Account, StoreError> {
        Ok(Account {
            msisdn: Msisdn::parse(&self.msisdn).map_err(|_| corrupt("msisdn", &self.msisdn))?,
            account_id: self.account_id,
            generation: u32::try_from(self.generation)
                .map_err(|_| corrupt("generation", self.generation))?,
            state: state(self.state)?,
            balance: self.balance,
            preset_balance: self.preset_balance,
            sold: self.sold,
            initial_validity_days: u32::try_from(self.initial_validity_days)
                .map_err(|_| corrupt("initial_validity_days", self.initial_validity_days))?,
            provisioned_at: self.provisioned_at,
            activated_at: self.activated_at,
            valid_until: self.valid_until,
            grace_until: self.grace_until,
            lock_until: self.lock_until,
            card_expiry: self.card_expiry,
            recycled_at: self.recycled_at,
            updated_at: self.updated_at,
            expiring_notified_for: self.expiring_notified_for,
        })
    }
}

pub(crate) const HISTORY_COLUMNS: &str = "id, msisdn, account_id, generation, at, kind, from_state, to_state, amount, actor, request_id, \
     channel";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct HistoryRow {
    pub id: i64,
    pub msisdn: String,
    pub account_id: String,
    pub generation: i64,
    pub at: DateTime<Utc>,
    pub kind: i32,
    pub from_state: Option<i32>,
    pub to_state: Option<i32>,
    pub amount: i64,
    pub actor: String,
    pub request_id: Option<String>,
    pub channel: Option<i32>,
}

impl HistoryRow {
    pub fn into_record(self) -> Result<HistoryRecord, StoreError> {
        Ok(HistoryRecord {
            id: self.id,
            msisdn: Msisdn::parse(&self.msisdn).map_err(|_| corrupt("msisdn", &self.msisdn))?,
            account_id: self.account_id,
            generation: u32::try_from(self.generation)
                .map_err(|_| corrupt("generation", self.generation))?,
            at: self.at,
            kind: HistoryKind::from_i32(self.kind).ok_or_else(|| corrupt("kind", self.kind))?,
            from_state: self.from_state.map(state).transpose()?,
            to_state: self.to_state.map(state).transpose()?,
            amount: self.amount,
            actor: self.actor,
            request_id: self.request_id,
            channel: self
                .channel
                .map(|c| RechargeChannel::from_i32(c).ok_or_else(|| corrupt("channel", c)))
                .transpose()?,
        })
    }
}

pub(crate) const OUTBOX_COLUMNS: &str = "sequence, event_id, event_type, msisdn, account_id, \
    generation, from_state, to_state, reason, effective_at, emitted_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OutboxRow {
    pub sequence: i64,
    pub event_id: String,
    pub event_type: i32,
    pub msisdn: String,
    pub account_id: String,
    pub generation: i64,
    pub from_state: i32,
    pub to_state: i32,
    pub reason: String,
    pub effective_at: DateTime<Utc>,
    pub emitted_at: DateTime<Utc>,
}

impl OutboxRow {
    pub fn into_event(self) -> Result<OutboxEvent, StoreError> {
        Ok(OutboxEvent {
            sequence: self.sequence,
            event_id: self.event_id,
            event_type: EventType::from_i32(self.event_type)
                .ok_or_else(|| corrupt("event_type", self.event_type))?,
            msisdn: Msisdn::parse(&self.msisdn).map_err(|_| corrupt("msisdn", &self.msisdn))?,
            account_id: self.account_id,
            generation: u32::try_from(self.generation)
                .map_err(|_| corrupt("generation", self.generation))?,
            from_state: state(self.from_state)?,
            to_state: state(self.to_state)?,
            reason: self.reason,
            effective_at: self.effective_at,
            emitted_at: self.emitted_at,
        })
    }
}

/// The SQL expression of the effective state on local date `$1`: `Account::state_on` in SQL, so
/// that listing by state uses no Rust per row. ISO dates compare correctly as text in SQLite and
/// as DATE in PostgreSQL. The conformance suite (`tests/store_conformance.rs`) proves it equal to
/// `state_on` on both backends for random accounts and days.
pub(crate) const EFFECTIVE_STATE_SQL: &str = "CASE \
    WHEN state = 5 THEN 5 \
    WHEN activated_at IS NULL THEN (CASE WHEN card_expiry < $1 THEN 5 ELSE 1 END) \
    WHEN valid_until >= $1 THEN 2 \
    WHEN grace_until >= $1 THEN 3 \
    WHEN lock_until >= $1 THEN 4 \
    ELSE 5 END";

/// The SQL expression of an account's last day before it is recycled (it is RECYCLED from the
/// next day on, as `Account::state_on` says): `lock_until`, or `card_expiry` while unactivated.
/// Checked against `state_on` by the conformance suite, like [`EFFECTIVE_STATE_SQL`].
pub(crate) const LAST_DAY_BEFORE_RECYCLING_SQL: &str =
    "CASE WHEN activated_at IS NULL THEN card_expiry ELSE lock_until END";

pub(crate) const SWEEP_RUN_COLUMNS: &str = "id, as_of, started_at, finished_at, status, examined, \
    to_grace, to_locked, to_recycled_from_locked, to_recycled_unactivated, expiring_notified, \
    error";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SweepRunRow {
    pub id: i64,
    pub as_of: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: String,
    pub examined: i64,
    pub to_grace: i64,
    pub to_locked: i64,
    pub to_recycled_from_locked: i64,
    pub to_recycled_unactivated: i64,
    pub expiring_notified: i64,
    pub error: Option<String>,
}

impl SweepRunRow {
    pub fn into_run(self) -> Result<SweepRun, StoreError> {
        let count = |what: &str, value: i64| u64::try_from(value).map_err(|_| corrupt(what, value));
        // In `SWEPT_REASONS` order.
        let transitions = [
            self.to_grace,
            self.to_locked,
            self.to_recycled_from_locked,
            self.to_recycled_unactivated,
        ];
        Ok(SweepRun {
            id: self.id,
            as_of: self.as_of,
            started_at: self.started_at,
            finished_at: self.finished_at,
            status: SweepRunStatus::parse(&self.status)
                .ok_or_else(|| corrupt("status", &self.status))?,
            counts: RunCounts {
                examined: count("examined", self.examined)?,
                transitions: SWEPT_REASONS
                    .into_iter()
                    .zip(transitions)
                    .map(|(reason, value)| {
                        let column = transition_column(reason).unwrap_or("transitions");
                        Ok((reason, count(column, value)?))
                    })
                    .collect::<Result<_, StoreError>>()?,
                expiring_notified: count("expiring_notified", self.expiring_notified)?,
            },
            error: self.error,
        })
    }
}
