//! Conversions between the wire (proto) and the domain, and the one place where errors become
//! gRPC statuses with a `google.rpc.ErrorInfo`.

use chrono::{DateTime, NaiveDate, Utc};
use tonic::{Code, Status};

use crate::lifecycle::{Account, AccountState, DomainError, ErrorReason, Msisdn, RequestId, Rules};
use crate::proto;
use crate::store::{HistoryRecord, OutboxEvent, StoreError};

pub use crate::wire::ERROR_DOMAIN;

pub use crate::wire::error_status as status;

pub fn invalid(reason: ErrorReason, message: impl Into<String>) -> Status {
    status(Code::InvalidArgument, reason.as_str(), message)
}

impl From<DomainError> for Status {
    fn from(err: DomainError) -> Self {
        let code = match &err {
            DomainError::InvalidArgument { .. } => Code::InvalidArgument,
            DomainError::NotFound { .. } => Code::NotFound,
            DomainError::FailedPrecondition { .. } => Code::FailedPrecondition,
            DomainError::AlreadyExists { .. } => Code::AlreadyExists,
        };
        status(code, err.reason().as_str(), err.message())
    }
}

/// UNAVAILABLE with `reason`: `why` (ending in its punctuation), that a retry with the same
/// request_id is safe, and the storage's own `message`.
fn retry_later(reason: &str, why: &str, message: &str) -> Status {
    let message = format!("{why} retry with the same request_id: {message}");
    status(Code::Unavailable, reason, message)
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Domain(e) => e.into(),
            StoreError::Unavailable(message) | StoreError::Busy(message) => {
                tracing::warn!(%message, "storage unavailable");
                retry_later("STORAGE_UNAVAILABLE", "storage unavailable,", &message)
            }
            StoreError::NotWritable(message) => {
                tracing::warn!(%message, "storage not writable");
                let why = "the database cannot be written (disk full, read-only or I/O error), \
                           nothing was applied;";
                retry_later("STORAGE_NOT_WRITABLE", why, &message)
            }
            StoreError::Failover(message) => {
                // The store logs the loss and the return of the primary once (warn, info);
                // a line per refused request would flood the log during a switch.
                tracing::debug!(%message, "storage failover");
                let why = "the database is failing over to a new primary, nothing was applied;";
                retry_later("STORAGE_FAILOVER", why, &message)
            }
            StoreError::Internal(message) => {
                tracing::error!(%message, "storage error");
                status(
                    Code::Internal,
                    "STORAGE_ERROR",
                    "internal storage error; see the server log",
                )
            }
        }
    }
}

pub fn msisdn(raw: &str) -> Result<Msisdn, Status> {
    Msisdn::parse(raw).map_err(Status::from)
}

pub fn request_id(raw: &str) -> Result<RequestId, Status> {
    RequestId::parse(raw).map_err(Status::from)
}

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

pub fn date(d: Option<NaiveDate>) -> String {
    d.map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

pub fn state(s: AccountState) -> i32 {
    s as i32
}

/// The wire form of `account` as it stands at `now`: boundaries crossed since the last write
/// are applied first, so the state is the effective one.
pub fn account(account: &Account, now: DateTime<Utc>, rules: &Rules) -> proto::Account {
    let mut current = account.clone();
    current.catch_up(now, rules);
    proto::Account {
        msisdn: current.msisdn.to_string(),
        account_id: current.account_id,
        generation: current.generation,
        state: state(current.state),
        balance: current.balance,
        preset_balance: current.preset_balance,
        sold: current.sold,
        provisioned_at: Some(timestamp(current.provisioned_at)),
        activated_at: current.activated_at.map(timestamp),
        valid_until: date(current.valid_until),
        grace_until: date(current.grace_until),
        lock_until: date(current.lock_until),
        card_expiry: date(current.card_expiry),
        recycled_at: current.recycled_at.map(timestamp),
        updated_at: Some(timestamp(current.updated_at)),
    }
}

pub fn history_entry(record: HistoryRecord) -> proto::HistoryEntry {
    proto::HistoryEntry {
        at: Some(timestamp(record.at)),
        kind: record.kind as i32,
        from_state: record.from_state.map_or(0, state),
        to_state: record.to_state.map_or(0, state),
        amount: record.amount,
        actor: record.actor,
        request_id: record.request_id.unwrap_or_default(),
        generation: record.generation,
        account_id: record.account_id,
    }
}

/// Page size: 0 means `default`; more than 1000 is refused.
pub fn page_size(requested: u32, default: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(default),
        1..=1000 => Ok(requested),
        n => Err(invalid(
            ErrorReason::InvalidArgument,
            format!("page_size {n} exceeds 1000"),
        )),
    }
}

/// Cuts a listing read with one item more than `page_size` (to see whether more follow) to its
/// page; the next page's token: `token` of the page's last item, or empty after the last page.
pub fn next_page_token<T>(
    items: &mut Vec<T>,
    page_size: u32,
    token: impl FnOnce(&T) -> String,
) -> String {
    if items.len() <= page_size as usize {
        return String::new();
    }
    items.truncate(page_size as usize);
    items.last().map(token).unwrap_or_default()
}

/// The wire form of an outbox event.
pub fn lifecycle_event(event: OutboxEvent) -> proto::LifecycleEvent {
    proto::LifecycleEvent {
        event_id: event.event_id,
        sequence: u64::try_from(event.sequence).unwrap_or_default(),
        r#type: event.event_type as i32,
        msisdn: event.msisdn.to_string(),
        account_id: event.account_id,
        generation: event.generation,
        from_state: state(event.from_state),
        to_state: state(event.to_state),
        reason: event.reason,
        effective_at: Some(timestamp(event.effective_at)),
        emitted_at: Some(timestamp(event.emitted_at)),
    }
}
