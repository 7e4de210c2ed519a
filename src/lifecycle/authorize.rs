//! Service barring per state (spec section 5). A read: it decides, it changes nothing.

use chrono::{DateTime, Utc};

use super::account::Account;
use super::error::{DomainError, ErrorReason};
use super::rules::Rules;
use super::types::{AccountState, ServiceType};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub allowed: bool,
    /// Why the service is barred; empty when allowed.
    pub reason: &'static str,
    /// The effective state; `None` for an unknown MSISDN.
    pub state: Option<AccountState>,
}

/// Longest destination Authorize takes.
pub const MAX_DESTINATION_DIGITS: usize = 32;

/// A destination as Authorize takes it: up to 32 digits with an optional leading '+' (returned
/// without it), or empty (a service with no called number, e.g. data).
pub fn parse_destination(raw: &str) -> Result<&str, DomainError> {
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    if digits.len() > MAX_DESTINATION_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DomainError::invalid(
            ErrorReason::InvalidArgument,
            "destination must be up to 32 digits (optional leading '+'), or empty",
        ));
    }
    Ok(digits)
}

/// Decides whether `service` towards `destination` is allowed for `account` at `now`.
pub fn authorize(
    account: Option<&Account>,
    service: ServiceType,
    destination: &str,
    now: DateTime<Utc>,
    rules: &Rules,
) -> Authorization {
    let Some(account) = account else {
        return Authorization {
            allowed: false,
            reason: "NOT_FOUND",
            state: None,
        };
    };
    let state = account.effective_state(now, rules);
    let destination = destination.strip_prefix('+').unwrap_or(destination);
    let special = rules.special_numbers.iter().any(|n| n == destination);
    let hotline = destination == rules.recharge_hotline;
    let incoming = service.is_incoming();
    // An outgoing service towards one of the numbers a state still allows.
    let outgoing_to = |allowed: bool| !incoming && allowed;

    let (allowed, reason) = match state {
        AccountState::Unactivated if !account.sold => (false, "SALE_LOCKED"),
        AccountState::Unactivated => (outgoing_to(special), "NOT_ACTIVATED"),
        AccountState::Valid if incoming || account.total_balance() > 0 => (true, ""),
        AccountState::Valid => (outgoing_to(special || hotline), "INSUFFICIENT_BALANCE"),
        AccountState::Grace if incoming => (true, ""),
        AccountState::Grace => (special || hotline, "ONE_WAY_BARRED"),
        AccountState::Locked => (outgoing_to(special && !hotline), "TWO_WAY_BARRED"),
        AccountState::Recycled => (false, "ACCOUNT_RECYCLED"),
    };
    Authorization {
        allowed,
        reason: if allowed { "" } else { reason },
        state: Some(state),
    }
}
